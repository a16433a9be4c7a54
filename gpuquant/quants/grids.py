"""The lattice grids of the i-quants and their search tables (ggml-quants.c ``iq2xs_init_impl``, ``iq3xs_init_impl``).

A grid point is a vector of ``dim`` small odd integers ``2*l + 1`` (``l`` a ``bits``-bit level). The
quantizers round a group of ``dim`` values to levels, pack them into an index ``u = sum(l[i] << bits*i)``
and look ``u`` up in ``map``: a grid index, or (for a ``u`` off the grid) a list of neighbouring grid points
to search. The tables here are those ``ggml_quantize_init`` builds, in the same layout, so that a numpy
search and a CUDA kernel (which copies the flat arrays into its own tables) read the very same lists:

* ``grid``: ``(grid_size, dim)`` int8, the C ``the_grid`` bytes (``2*l + 1``), in the C ``kgrid`` order;
* ``kgrid``: ``(grid_size,)`` uint16, the packed level index of every grid point (the C ``kgrid_*`` table);
* ``map``: ``(kmap_size,)`` int32, the C ``kmap``: ``>= 0`` a grid index; ``< 0`` ``-(offset + 1)``, where
  ``neighbours[offset]`` is the list length and ``neighbours[offset + 1:...]`` the list;
* ``neighbours``: flat uint16, the C ``kneighbors`` array (lists of the off-grid indices in index order);
* ``nb_first``, ``nb_count``: ``(kmap_size,)`` int32, where each list starts in ``neighbours`` (after its
  length) and how long it is (``-1`` and ``0`` on the grid); ``padded_lists(u)`` gathers the lists of
  many indices into one rectangular array for a vectorized search.

A list holds every grid point within the ``nwant`` smallest distinct squared distances to the point
``2*l + 1`` of ``u``, sorted by (distance, grid index): C's qsort with ``iq2_compare_func``.

The grids themselves come from the ``gguf`` package (``grid_hex`` holds the level indices into
``grid_map``); their packed order is the C ``kgrid`` order. ``iq2_grid(qtype)`` serves IQ2_XXS, IQ2_XS,
IQ2_S, IQ1_S and IQ1_M (the last two share one table), ``iq3_grid(256 or 512)`` IQ3_XXS and IQ3_S. Each
is built once per process (vectorized, well under a second) and cached.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import gguf.quants as gq

from . import GGMLQuantizationType as T

__all__ = ["Grid", "iq2_grid", "iq3_grid", "pack_levels"]

# iq2_data_index: IQ1_S and IQ1_M share a table
_IQ2_SHARED = {T.IQ1_M: T.IQ1_S}
# (gguf grid class, nwant) per type: iq2xs_init_impl's nwant
_IQ2_SOURCES = {
    T.IQ2_XXS: (gq.IQ2_XXS, 2),
    T.IQ2_XS: (gq.IQ2_XS, 2),
    T.IQ2_S: (gq.IQ2_S, 1),
    T.IQ1_S: (gq.IQ1_S, 3),
}
_IQ2_KMAP_SIZE = 43692  # every 8 x 2-bit index up to 0xAAAA (all levels 2)
_IQ3_SOURCES = {256: (gq.IQ3_XXS, 2), 512: (gq.IQ3_S, 3)}  # iq3xs_init_impl: nwant by grid size
_IQ3_KMAP_SIZE = 4096  # 4 x 3 bits


@dataclass(frozen=True, eq=False)
class Grid:
    """One grid and its search tables (see the module notes for each array)."""

    name: str
    dim: int
    bits: int
    nwant: int
    grid: np.ndarray
    kgrid: np.ndarray
    map: np.ndarray
    neighbours: np.ndarray
    nb_first: np.ndarray
    nb_count: np.ndarray

    @property
    def grid_size(self) -> int:
        return len(self.kgrid)

    @property
    def kmap_size(self) -> int:
        return len(self.map)

    def padded_lists(self, u: np.ndarray) -> np.ndarray:
        """The neighbour lists of off-grid indices ``u`` as int32 ``(len(u), longest)``, each padded by
        repeating its last entry (a search keeping the first strict minimum picks the same point)."""
        u = np.asarray(u)
        cnt = self.nb_count[u]
        width = int(cnt.max()) if cnt.size else 0
        col = np.minimum(np.arange(width, dtype=np.int32)[None, :], cnt[:, None] - 1)
        return self.neighbours[self.nb_first[u][:, None] + col].astype(np.int32)

    def neighbour_list(self, u: int) -> np.ndarray:
        """The neighbour list of an off-grid index ``u`` (empty for a point on the grid)."""
        s = int(self.nb_first[u])
        return self.neighbours[s:s + int(self.nb_count[u])] if s >= 0 else self.neighbours[:0]


def pack_levels(levels: np.ndarray, bits: int) -> np.ndarray:
    """``u = sum(levels[..., i] << bits*i)`` over the last axis (int32)."""
    lv = np.asarray(levels).astype(np.int32)
    shifts = (bits * np.arange(lv.shape[-1])).astype(np.int32)
    return np.bitwise_or.reduce(lv << shifts, axis=-1)


def _gguf_levels(cls) -> np.ndarray:
    """The level indices of a gguf grid class: ``grid_hex`` decoded into indices into ``grid_map`` (each byte
    holds ``8 // bits`` of them, equally spaced from bit 0: four 2-bit or two 3-bit-in-a-nibble levels)."""
    bits = int(np.ceil(np.log2(len(cls.grid_map))))
    per_byte = 8 // bits
    h = np.frombuffer(cls.grid_hex, dtype=np.uint8).reshape(-1, 2)
    nib = np.where(h > 0x40, h + 9, h) & 0x0F  # hex digit values
    byte = (nib[:, 0] << 4) | nib[:, 1]
    lv = (byte[:, None] >> ((8 // per_byte) * np.arange(per_byte, dtype=np.uint8))) & ((1 << bits) - 1)
    return lv.reshape(cls.grid_shape).astype(np.uint8)


def _half_distances(levels: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared level distances split in two halves of the dimensions: ``(lo[a, j], hi[b, j])`` uint8, ``a``
    (``b``) the packed levels of the first (second) ``dim/2`` coordinates of a point. A point's squared
    distance to grid point ``j`` is ``4 * (lo[a, j] + hi[b, j])`` (``pos = 2*l + 1``)."""
    half = levels.shape[1] // 2
    a = np.arange(1 << (bits * half))
    la = (a[:, None] >> (bits * np.arange(half))) & ((1 << bits) - 1)  # (2**(bits*half), half)
    out = []
    for gh in (levels[:, :half], levels[:, half:]):
        acc = np.zeros((len(a), len(levels)), dtype=np.uint8)
        for i in range(half):
            diff = np.subtract(la[:, i, None], gh[None, :, i], dtype=np.int16)
            acc += (diff * diff).astype(np.uint8)
        out.append(acc)
    return out[0], out[1]


def _nonzero_sparse(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a sparse C-contiguous 2-d bool array whose rows are a multiple of 8 long: the
    nonzero 8-byte words first (numpy scans bools a byte at a time), then the bytes within them."""
    words = np.flatnonzero(mask.reshape(-1).view(np.uint64))
    w, b = np.nonzero(mask.reshape(-1, 8)[words])
    return np.divmod(words[w] * 8 + b, mask.shape[1])


def _sorted_neighbours(off: np.ndarray, levels: np.ndarray, bits: int, nwant: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """For each packed index of ``off``, the grid indices within its ``nwant`` smallest distinct squared
    distances, sorted by (distance, index). Returns (counts per index, the lists concatenated)."""
    lo, hi = _half_distances(levels, bits)
    shift = bits * (levels.shape[1] // 2)
    ia, ib = off & ((1 << shift) - 1), off >> shift
    wrap = int(lo.max()) + int(hi.max()) < 128
    counts, lists = [], []
    step = max(1, (1 << 23) // levels.shape[0])  # indices per chunk: ~8 MiB of distances
    for c0 in range(0, len(off), step):
        d = lo[ia[c0:c0 + step]]
        d += hi[ib[c0:c0 + step]]
        level = d.min(axis=1)
        for _ in range(nwant - 1):  # the next distinct distance (255: there is none, keep everything)
            if wrap:  # all d < 128: d - (level + 1) wraps the distances <= level above every larger one
                gap = np.subtract(d, (level + 1)[:, None], dtype=np.uint8).min(axis=1)
                level = np.where((level < 255) & (gap < 128), level + 1 + gap, 255).astype(np.uint8)
            else:
                level = np.minimum.reduce(d, axis=1, where=d > level[:, None], initial=255)
        r, j = _nonzero_sparse(d <= level[:, None])  # row-major: j ascending within a row
        order = np.argsort(r.astype(np.int32) * 256 + d[r, j], kind="stable")
        counts.append(np.bincount(r, minlength=len(d)))
        lists.append(j[order])
    return np.concatenate(counts), np.concatenate(lists)


def _build(name: str, levels: np.ndarray, bits: int, nwant: int, kmap_size: int) -> Grid:
    grid_size, dim = levels.shape
    grid = (2 * levels.astype(np.int8) + 1).astype(np.int8)
    kgrid = pack_levels(levels, bits).astype(np.uint16)
    kmap = np.full(kmap_size, -1, dtype=np.int32)
    kmap[kgrid] = np.arange(grid_size, dtype=np.int32)
    off = np.flatnonzero(kmap < 0)
    counts, flat = _sorted_neighbours(off, levels, bits, nwant)
    # C layout: for each off-grid index in order, [count, list...]
    offsets = np.zeros(len(off), dtype=np.int64)
    np.cumsum(1 + counts[:-1], out=offsets[1:])
    neighbours = np.empty(int(offsets[-1] + 1 + counts[-1]), dtype=np.uint16)
    neighbours[offsets] = counts
    starts = np.repeat(offsets + 1, counts)
    rank = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    neighbours[starts + rank] = flat
    kmap[off] = -(offsets + 1).astype(np.int32)
    nb_first = np.full(kmap_size, -1, dtype=np.int32)
    nb_count = np.zeros(kmap_size, dtype=np.int32)
    nb_first[off] = offsets + 1
    nb_count[off] = counts
    for a in (grid, kgrid, kmap, neighbours, nb_first, nb_count):
        a.setflags(write=False)
    return Grid(name, dim, bits, nwant, grid, kgrid, kmap, neighbours, nb_first, nb_count)


@functools.cache
def _iq2(qtype: T) -> Grid:
    cls, nwant = _IQ2_SOURCES[qtype]
    return _build(qtype.name, _gguf_levels(cls), 2, nwant, _IQ2_KMAP_SIZE)


def iq2_grid(qtype) -> Grid:
    """``iq2xs_init_impl(type)``: the grid of IQ2_XXS (256), IQ2_XS (512), IQ2_S (1024), IQ1_S/IQ1_M (2048)."""
    t = T(int(qtype))
    if t not in _IQ2_SOURCES and t not in _IQ2_SHARED:
        raise ValueError(f"no iq2xs grid for {t.name}")
    return _iq2(_IQ2_SHARED.get(t, t))


@functools.cache
def iq3_grid(grid_size: int) -> Grid:
    """``iq3xs_init_impl(grid_size)``: the grid of IQ3_XXS (256) or IQ3_S (512)."""
    if grid_size not in _IQ3_SOURCES:
        raise ValueError(f"iq3 grid size must be 256 or 512, got {grid_size}")
    cls, nwant = _IQ3_SOURCES[grid_size]
    return _build(f"IQ3_{grid_size}", _gguf_levels(cls), 3, nwant, _IQ3_KMAP_SIZE)
