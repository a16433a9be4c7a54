"""3-bit grid types IQ3_XXS and IQ3_S (256-element super-blocks of 8 x 32, groups of 4 on a grid).

``ggml_quantize_chunk`` runs ``quantize_row_iq3_xxs_impl(256, ...)`` / ``quantize_row_iq3_s_impl(32, ...)``
per row, with or without importance weights. Per 32-block: the signs are split off (IQ3_XXS flips the
least important element of every 8 with an odd number of negatives, so that 7 sign bits suffice), then
a scale search over 31 (IQ3_XXS) / 19 (IQ3_S) trial scales maps each group of 4 magnitudes to 3-bit
levels; a level vector that is not on the grid (256 / 512 of the 4096) is replaced by its best grid
neighbour (``iq3_find_best_neighbour``); the best trial is refined once at its own scale. The block
scales are then quantized to 4 bits against one fp16 super-block scale.

Speed: the trials of a block are independent until the best one is picked, so all of them are evaluated
together, on ``(trials, 32, blocks)`` arrays of a chunk of blocks; the C scan over the trials then runs
on the per-trial sums (``_pick_best``). The neighbour searches of all the off-grid groups of a chunk run
at once: sorted by the length of their neighbour list (bucketed, padded with the list's last entry: an
equal distance never wins under the C's strict ``<``), each bucket evaluates every entry of every list
in one ``(entries, groups, 4)`` pass (``_search_bucket``). Work buffers are reused (``_Scratch``).

Where the C code aborts (``GGML_ASSERT(grid_index >= 0)`` when every neighbour's distance is NaN or
``>= FLT_MAX``, ``GGML_ASSERT(scale >= 0)`` on a NaN scale) ``quantize_rows`` raises :class:`GGMLAbort`.
"""
from __future__ import annotations

import functools
import math
import threading

import numpy as np
import gguf.quants as _gq

from . import GGMLQuantizationType as T
from . import GGMLAbort, Kernel, QuantType, grids
from .common import F32, below_exact, fp16_bits, fp16_to_fp32, levels_f32, levels_int, quantize_superblocks, seq_sum

QK_K = 256
KMAXQ = 8
_FLT_MAX = F32(np.finfo(np.float32).max)
_BLOCKS_PER_CHUNK = 512  # x 32 elements x up to 31 trials: 2 MiB per float32 temporary
_ROWS_ELEMS = 1 << 17  # elements per outer chunk of rows (the trial picks run on all its blocks)
_CANDIDATES_PER_STEP = 1 << 18  # neighbour-list entries per search step: 4 MiB per work array
_PAD_CLASSES = (3, 4, 5, 6, 8, 10, 13, 18, 26, 40)  # neighbour-list lengths are padded to one of these


# ----------------------------------------------------------------------------- grid tables


class _Grid:
    """An IQ3 grid of ``grids.iq3_grid`` prepared for the vectorized searches.

    ``kmap``: level vector ``u`` (3 bits per element) -> grid index, -1 off the grid. ``q`` ``(grid_size,
    4)`` (and its columns ``qcol``): float ``2*level + 1`` of every grid point. The off-grid points are
    bucketed by the length of their neighbour list: ``bucket[u]`` (255 on the grid) and ``slot[u]``, the
    point's place in its bucket, together the uint16 sort key ``code[u] = bucket << 11 | slot``;
    ``lookup[u]`` is ``kmap[u]`` on the grid and ``-1 - code[u]`` off it. For bucket ``c`` of padded length
    ``M``, ``nb[c]`` ``(M, points)`` holds the lists (padded with their last entry), ``nq[c]`` ``(M, points,
    4)`` the ``q`` of those grid points (compact, so the gathers stay in cache) and ``rank[c]`` ``(M, 1)``
    uint8 ``M - m`` (first-minimum search).
    """

    def __init__(self, src: grids.Grid) -> None:
        self.kmap = np.where(src.map >= 0, src.map, -1).astype(np.int32)
        self.q = np.ascontiguousarray(src.grid.astype(F32))  # (grid_size, 4)
        self.qcol = [np.ascontiguousarray(self.q[:, j]) for j in range(4)]
        lens = src.nb_count
        pads = [p for p in _PAD_CLASSES if p < lens.max()] + [int(lens.max())]
        self.bucket = np.full(4096, 255, np.uint8)
        self.slot = np.zeros(4096, np.intp)
        self.nb, self.nq, self.rank = [], [], []
        lo = 0
        for M in pads:
            inb = np.flatnonzero((lens > lo) & (lens <= M))
            lo = M
            if not inb.size:
                continue
            c = len(self.nb)
            lists = src.padded_lists(inb)
            nb = np.concatenate([lists, np.repeat(lists[:, -1:], M - lists.shape[1], axis=1)], axis=1).T
            self.bucket[inb] = c
            self.slot[inb] = np.arange(len(inb))
            self.nb.append(np.ascontiguousarray(nb, dtype=np.int32))
            self.nq.append(np.ascontiguousarray(self.q[nb]))
            self.rank.append((M - np.arange(M, dtype=np.uint8))[:, None])
        assert len(self.nb) <= 32 and max(nb.shape[1] for nb in self.nb) <= 1 << 11
        # the sort key of a point: bucket, then slot (sorted slots make the table gathers sequential)
        self.code = np.where(self.bucket < 255, (self.bucket.astype(np.uint16) << 11) | self.slot, 0xFFFF)
        self.code = self.code.astype(np.uint16)
        # one lookup per group: the grid index (>= 0) or, off the grid, -1 - code
        self.lookup = np.where(self.kmap >= 0, self.kmap, -1 - self.code.astype(np.int32)).astype(np.int32)


@functools.lru_cache(maxsize=None)
def grid(grid_size: int) -> _Grid:
    """The IQ3 grid of 256 (IQ3_XXS) or 512 points (IQ3_S) with its bucketed neighbour tables, cached."""
    return _Grid(grids.iq3_grid(grid_size))


# ----------------------------------------------------------------------------- the searches


class _Chunk:
    """The per-block data of a chunk of ``nb`` blocks, in the layouts the searches read.

    ``xv`` ``(32, nb)``: the magnitudes ``xval`` (element-major); ``amax``: max |xval| per block;
    ``x4``, ``wa4`` ``(8*nb, 4)``: ``xval`` and ``waux`` of group ``k`` of block ``b`` in row ``k*nb + b``;
    ``wx``, ``w`` ``(32, nb)``: ``weight*xval`` and ``weight``, for the sums."""

    def __init__(self, xv: np.ndarray, w: np.ndarray) -> None:
        nb = xv.shape[1]
        self.nb = nb
        self.xv = xv
        self.amax = np.abs(xv).max(axis=0)

        def groups(v):
            return np.ascontiguousarray(v.reshape(8, 4, nb).transpose(0, 2, 1))

        self.x4 = groups(xv).reshape(8 * nb, 4)
        self.wa4 = groups(np.sqrt(w)).reshape(8 * nb, 4)
        self.wx = w * xv
        self.w = w

    def set_scales(self, sv: np.ndarray) -> None:
        """``s4`` ``(T*nb, 4)``: the scale of trial ``t`` and block ``b`` in row ``t*nb + b``, 4 times."""
        self.s4 = np.repeat(sv.reshape(-1), 4).reshape(-1, 4)


class _Scratch(threading.local):
    """Reused work buffers, one set per thread: fresh large arrays cost a page fault per 4 KiB."""

    def __init__(self) -> None:
        self.bufs: dict[tuple[str, str], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=F32) -> np.ndarray:
        size = math.prod(shape)
        key = (name, np.dtype(dtype).str)
        b = self.bufs.get(key)
        if b is None or b.size < size:
            b = self.bufs[key] = np.empty(max(size, 1 << 16), dtype)
        return b[:size].reshape(shape)


_scratch = _Scratch()


def _best_neighbours(g: _Grid, code: np.ndarray, f: np.ndarray, nb: int,
                     ch: _Chunk) -> tuple[np.ndarray, np.ndarray]:
    """``iq3_find_best_neighbour`` for many groups: the off-grid points' sort keys ``code`` (``_Grid.code``)
    and the groups' flat indices ``f`` into ``(T, 8, nb)`` -> (``f`` reordered, their grid indices).

    The groups are sorted by (bucket, slot) once; each bucket is then a contiguous run, searched in
    cache-sized steps by ``_search_bucket``.
    """
    order = np.argsort(code, kind="stable")  # radix sort of uint16
    code, f = np.take(code, order), np.take(f, order)
    tk = (f / nb).astype(np.intp)  # exact: float64 division of integers below 2**31
    b = f - tk * nb
    rows = (tk & 7) * nb + b  # group k of block b: its row of x4 / wa4
    srow = (tk >> 3) * nb + b  # trial t of block b: its row of s4
    bounds = np.searchsorted(code >> 11, np.arange(len(g.nb) + 1))
    res = np.empty(f.shape, np.int32)
    for c in range(len(g.nb)):
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        step = max(1, _CANDIDATES_PER_STEP // g.nb[c].shape[0])
        for i in range(lo, hi, step):
            sl = slice(i, min(hi, i + step))
            res[sl] = _search_bucket(g, c, (code[sl] & 0x7FF).astype(np.intp), rows[sl], srow[sl], ch)
    return f, res


def _search_bucket(g: _Grid, c: int, uu: np.ndarray, rows: np.ndarray, srow: np.ndarray,
                   ch: _Chunk) -> np.ndarray:
    """``iq3_find_best_neighbour`` for the points of slots ``uu`` of bucket ``c`` (padded length ``M``).

    ``d2 = sum_i w[i]*(s*q[i] - x[i])^2`` in the C order, for every entry at once ``(M, n, 4)``; the first
    entry of smallest ``d2`` wins (C: ``d2 < best_d2`` from ``FLT_MAX``, which skips NaN: the first
    entry equal to the ``fmin`` of the list). Raises :class:`GGMLAbort` where no entry qualifies.
    """
    sc = _scratch
    n = uu.size
    M = g.nb[c].shape[0]
    t = np.take(g.nq[c], uu, axis=1, out=sc.get("t", (M, n, 4)), mode="clip")  # 2*l+1 of every entry
    v = np.take(ch.s4, srow, axis=0, out=sc.get("v", (n, 4)), mode="clip")
    t *= v  # scale*q
    np.take(ch.x4, rows, axis=0, out=v, mode="clip")
    t -= v  # diff = scale*q - xval
    np.take(ch.wa4, rows, axis=0, out=v, mode="clip")
    e = np.multiply(t, v, out=sc.get("e", (M, n, 4)))
    e *= t  # weight*diff*diff
    ej = sc.get("ej", (4, M, n))
    np.copyto(ej.transpose(1, 2, 0), e)  # element-major: the sums below run on contiguous rows
    d2 = np.add(ej[0], ej[1], out=sc.get("d2", (M, n)))
    d2 += ej[2]
    d2 += ej[3]
    mn = np.fmin.reduce(d2, axis=0)
    if not (mn < _FLT_MAX).all():
        raise GGMLAbort("iq3_find_best_neighbour: no neighbour at a distance below FLT_MAX "
                        "(GGML_ASSERT(grid_index >= 0) fails in ggml-quants.c)")
    eq = np.equal(d2, mn, out=sc.get("eq", (M, n), bool)).view(np.uint8)
    eq *= g.rank[c]
    first = np.maximum.reduce(eq, axis=0).astype(np.intp)
    np.subtract(M, first, out=first)
    first *= g.nb[c].shape[1]
    first += uu
    return np.take(g.nb[c], first)


def _grid_indices(g: _Grid, ch: _Chunk, idv: np.ndarray, sv: np.ndarray,
                  want: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Levels of every group at every trial and the grid point that replaces them.

    ``idv``, ``sv``: the trial's inverse scale and scale ``(T, nb)``. Per element
    ``l = MAX(0, MIN(7, nearest_int(0.5f*(id*xval - 1))))``; per group of 4 the level vector ``u``, its
    grid index ``kmap[u]`` or, off the grid, ``iq3_find_best_neighbour`` at scale ``sv``. ``want``
    (``(T, 8, nb)`` bool) restricts the neighbour searches to some groups. Returns the grid index and
    the on-grid flag, ``(T, 8, nb)``.
    """
    T_, nb = idv.shape
    t = np.multiply(idv[:, None, :], ch.xv[None, :, :], out=_scratch.get("lv", (T_, 32, nb)))
    t -= F32(1)
    t *= F32(0.5)
    bound = np.abs(idv) * ch.amax[None, :]
    lf = levels_f32(t, 0, KMAXQ - 1, below_exact(bound))  # |t| < bound when bound >= 1
    lf = lf.reshape(T_, 8, 4, nb)
    uf = np.multiply(lf[:, :, 3], F32(8), out=_scratch.get("uf", (T_, 8, nb)))  # u = l0 | l1<<3 | l2<<6 | l3<<9
    uf += lf[:, :, 2]
    uf *= F32(8)
    uf += lf[:, :, 1]
    uf *= F32(8)
    uf += lf[:, :, 0]
    gi = np.take(g.lookup, uf.astype(np.int32))  # (T, 8, nb): grid index, or -1 - the search key
    on = gi >= 0
    todo = ~on if want is None else (~on & want)
    f = np.flatnonzero(todo)
    if f.size:
        ch.set_scales(sv)
        code = (-1 - np.take(gi, f)).astype(np.uint16)
        np.put(gi, *_best_neighbours(g, code, f, nb, ch))
    return gi, on


def _sums(g: _Grid, gi: np.ndarray, ch: _Chunk) -> tuple[np.ndarray, np.ndarray]:
    """``sumqx += w*xval[i]*q; sumq2 += w*q*q`` over the 32 elements in order, ``q = 2*L + 1`` of the
    grid points ``gi`` ``(T, 8, nb)``. Returns ``(T, nb)`` each."""
    T_, _, nb = gi.shape
    q = _scratch.get("q", (T_, 8, 4, nb))
    for j in range(4):
        np.take(g.qcol[j], gi, out=q[:, :, j], mode="clip")
    q = q.reshape(T_, 32, nb)
    prod = _scratch.get("prod", q.shape)
    out = []
    for a, square in ((ch.wx, False), (ch.w, True)):
        np.multiply(a[None], q, out=prod)
        if square:
            prod *= q
        acc = np.zeros((T_, nb), F32)  # float sum = 0; for (i < 32) sum += ... (in order)
        for i in range(32):
            acc += prod[:, i]
        out.append(acc)
    return out[0], out[1]


def _pick_best(sumqx: np.ndarray, sumq2: np.ndarray, scale0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The C scan over the trials: ``if (sumq2 > 0 && sumqx*sumqx > best*sumq2) { scale = sumqx/sumq2;
    best = scale*sumqx; }`` from ``best = 0``, ``scale = scale0``. Returns (scale, best trial or -1)."""
    scale = scale0.copy()
    best = np.zeros_like(scale)
    pick = np.full(scale.shape, -1, np.intp)
    for t in range(sumqx.shape[0]):
        sx, s2 = sumqx[t], sumq2[t]
        upd = (s2 > 0) & (sx * sx > best * s2)
        np.copyto(scale, sx / s2, where=upd)
        np.copyto(best, scale * sx, where=upd)
        np.copyto(pick, t, where=upd)
    return scale, pick


def _signs(x: np.ndarray, w: np.ndarray, parity: bool) -> tuple[np.ndarray, np.ndarray]:
    """``xval = x >= 0 ? x : -x`` and the sign byte of each 8 elements ``(4, nb)`` uint8.

    ``parity`` (IQ3_XXS): where an 8 has an odd number of negatives, the element of smallest
    ``weight*x*x`` (the first one, strict ``<``) is negated in ``xval`` and its sign bit flipped; the
    byte keeps 7 bits (``s & 127``)."""
    neg = ~(x >= 0)  # NaN counts as negative
    xv = np.where(neg, -x, x)
    s = np.packbits(neg.reshape(4, 8, -1), axis=1, bitorder="little")[:, 0, :]
    if parity:
        odd = np.bitwise_count(s) & 1 == 1
        ax = (w * x * x).reshape(4, 8, -1)
        mn, imin = ax[:, 0].copy(), np.zeros(s.shape, np.uint8)
        for i in range(1, 8):
            lt = ax[:, i] < mn
            np.copyto(mn, ax[:, i], where=lt)
            np.copyto(imin, i, where=lt)
        k, b = np.nonzero(odd)
        e = 8 * k + imin[k, b]
        xv[e, b] = -xv[e, b]
        s[k, b] ^= (np.uint8(1) << imin[k, b]).astype(np.uint8)
        s &= np.uint8(127)
    return xv, s


def _running_max(v: np.ndarray) -> np.ndarray:
    """``max = v[0]; for (i = 1..) max = MAX(max, v[i]);`` with ``MAX(a, b) = a > b ? a : b`` (a NaN
    is kept only when it is the last element; a NaN ``max`` gives way to the next element)."""
    m = v.max(axis=0)
    nan = np.flatnonzero(np.isnan(m))
    if nan.size:
        sub = v[:, nan]
        r = sub[0].copy()
        for i in range(1, v.shape[0]):
            r = np.where(r > sub[i], r, sub[i])
        m[nan] = r
    return m


class _Search:
    """The per-type constants of ``quantize_row_iq3_{xxs,s}_impl``'s 32-block search."""

    def __init__(self, grid_size: int, ntry: int, parity: bool, refine_all: bool) -> None:
        self.grid_size = grid_size
        self.trials = np.arange(-ntry, ntry + 1)
        self.parity = parity  # IQ3_XXS: 7 sign bits per 8, is_on_grid starts true, MAX < 1e-8 skips
        self.refine_all = refine_all  # IQ3_S: the refinement re-maps every group, on the grid or not

    def blocks(self, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Blocks ``x``, ``weight`` ``(32, nb)`` -> (scale ``(nb,)``, grid index ``(8, nb)``, sign bytes
        ``(4, nb)``, active ``(nb,)``: the blocks not skipped as all-zero, whose scale and indices are
        set)."""
        g = grid(self.grid_size)
        xv, signs = _signs(x, w, self.parity)
        vmax = _running_max(xv)
        active = ~(vmax < F32(1e-8)) if self.parity else vmax != 0
        nb = x.shape[1]
        scale = np.zeros(nb, F32)
        gi = np.full((8, nb), g.kmap[0], np.int32)
        a = np.flatnonzero(active)
        if a.size:
            s, gia, flip = self._search(g, *(np.ascontiguousarray(v[..., a]) for v in (xv, w, vmax)))
            scale[a], gi[:, a] = s, gia
            sa = signs[:, a]
            sa[:, flip] = ~sa[:, flip] & np.uint8(127 if self.parity else 255)
            signs[:, a] = sa
        signs[:, ~active] = 0
        return scale, gi, signs, active

    def _search(self, g: _Grid, xv: np.ndarray, w: np.ndarray, vmax: np.ndarray):
        """The trial scales, the pick and the refinement of the active blocks -> (scale ``(nb,)``, grid
        index ``(8, nb)``, whether the C flips the block's signs (a negative scale))."""
        nb = xv.shape[1]
        tr = self.trials.astype(F32)[:, None]
        idv = (F32(2 * KMAXQ - 1) + tr * F32(0.2)) / vmax[None, :]  # (T, nb)
        sv = F32(1) / idv
        T_ = len(self.trials)
        gi_all = np.empty((T_, 8, nb), np.int16)
        on_all = np.empty((T_, 8, nb), bool)
        sumqx = np.empty((T_, nb), F32)
        sumq2 = np.empty((T_, nb), F32)
        for b0 in range(0, nb, _BLOCKS_PER_CHUNK):
            c = slice(b0, min(nb, b0 + _BLOCKS_PER_CHUNK))
            ch = _Chunk(np.ascontiguousarray(xv[:, c]), np.ascontiguousarray(w[:, c]))
            gi, on = _grid_indices(g, ch, idv[:, c], sv[:, c])
            gi_all[:, :, c], on_all[:, :, c] = gi, on
            sumqx[:, c], sumq2[:, c] = _sums(g, gi, ch)
        scale, pick = _pick_best(sumqx, sumq2, vmax / F32(2 * KMAXQ - 1))
        cols = np.arange(nb)
        picked = pick >= 0
        gi = np.where(picked, gi_all[np.maximum(pick, 0), :, cols].T, g.kmap[0]).astype(np.int32)
        on = np.where(picked, on_all[np.maximum(pick, 0), :, cols].T, self.parity)
        # refinement at the picked scale of the blocks with groups off the grid
        r = np.flatnonzero((~on).any(axis=0) & (scale > 0))
        if r.size:
            sc = scale[r]
            ch = _Chunk(np.ascontiguousarray(xv[:, r]), np.ascontiguousarray(w[:, r]))
            want = np.ones((1, 8, r.size), bool) if self.refine_all else ~on[None, :, r]
            gr, _ = _grid_indices(g, ch, (F32(1) / sc)[None, :], sc[None, :], want)
            sub = gi[:, r]
            upd = want[0]
            sub[upd] = gr[0][upd]
            gi[:, r] = sub
            sx, s2 = _sums(g, sub[None], ch)
            scale[r] = np.where(s2[0] > 0, sx[0] / s2[0], sc)
        flip = scale < 0
        scale = np.where(flip, -scale, scale)
        if not (scale >= 0).all():
            raise GGMLAbort("quantize_row_iq3: a NaN block scale (GGML_ASSERT(scale >= 0) fails in ggml-quants.c)")
        return scale, gi, flip


# ----------------------------------------------------------------------------- the types


def _block_columns(v: np.ndarray) -> np.ndarray:
    """Super-blocks ``(S, 256)`` -> element-major blocks ``(32, 8*S)``, column ``8*s + ib``."""
    return np.ascontiguousarray(v.reshape(-1, 32).T)


def _scale_levels(scales: np.ndarray, max_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``d = max_scale/31; id = 1/d; l = MAX(0, MIN(15, nearest_int(0.5f*(id*scale - 1))))`` per block
    ``(S, 8)`` -> (d ``(S,)``, l ``(S, 8)`` int32)."""
    d = max_scale / F32(31)
    idd = F32(1) / d
    return d, levels_int(F32(0.5) * (idd[:, None] * scales - F32(1)), 0, 15)


class _IQ3(QuantType):
    ggml_aborts = True  # iq3_find_best_neighbour's GGML_ASSERT(grid_index >= 0), GGML_ASSERT(scale >= 0)
    """Shared row driver: rows -> super-blocks -> chunks; subclasses pack the blocks."""

    fp16_fields = {"d": 0}
    kernel = Kernel(threads=32, items_per_block=1, sync=True)  # kernels/iq3.cu: a warp per super-block
    search: _Search

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        return quantize_superblocks(cls, rows, quant_weights, max(1, _ROWS_ELEMS // QK_K), cls._superblocks)

    @classmethod
    def _superblocks(cls, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        """``(S, 256)`` values and weights -> ``(S, type_size)`` blocks."""
        S = x.shape[0]
        xb = _block_columns(x)
        if qw is None:
            w = xb * xb
        else:
            sumx2 = seq_sum(np.ascontiguousarray((x * x).T))  # for (i < QK_K) sumx2 += x*x
            sigma2 = F32(2) * sumx2 / F32(QK_K)
            w = _block_columns(qw) * np.sqrt(np.repeat(sigma2, 8)[None, :] + xb * xb)
        scale, gi, signs, active = cls.search.blocks(xb, w)
        sc = scale.reshape(S, 8)
        max_scale = sc.max(axis=1)
        d, l = _scale_levels(sc, max_scale)
        out = np.zeros((S, cls.type_size), np.uint8)
        cls._pack(out, d, l, gi.reshape(8, S, 8), signs.reshape(4, S, 8), active.reshape(S, 8))
        cls._zero_superblocks(out, max_scale == 0)
        return out

    @classmethod
    def _pack(cls, out, d, l, gi, signs, active) -> None:
        """Fill ``out`` ``(S, type_size)``; ``gi`` ``(8, S, 8)`` / ``signs`` ``(4, S, 8)``: [k, s, ib]."""
        raise NotImplementedError

    @classmethod
    def _zero_superblocks(cls, out: np.ndarray, zero: np.ndarray) -> None:
        """``if (!max_scale)``: what the C leaves of a super-block whose block scales are all 0."""
        raise NotImplementedError


@functools.lru_cache(maxsize=None)
def _dequant_grid(gguf_cls) -> np.ndarray:
    """The ``iq3xxs_grid`` / ``iq3s_grid`` of ggml-common.h as float ``(grid_size, 4)`` (from gguf)."""
    gguf_cls.init_grid()
    return np.ascontiguousarray(np.asarray(gguf_cls.grid, dtype=F32).reshape(-1, 4))


#: ggml-common.h ``ksigns_iq2xs``: 7 sign bits -> the byte with the parity bit in bit 7
KSIGNS = np.frombuffer(_gq.IQ2_XXS.ksigns, dtype=np.uint8)


def _apply(db: np.ndarray, grid_vals: np.ndarray, sign_bytes: np.ndarray) -> np.ndarray:
    """``y[j] = db * grid[j] * (signs & kmask_iq2xs[j] ? -1.f : 1.f)`` for ``(nb, 8, 32)`` grid values,
    ``db`` ``(nb, 8)``, the sign bytes ``(nb, 8, 4)`` (bit j of byte l: element ``8*l + j``). The compiled
    C negates (a NaN's sign bit flips too), so the sign is a negation here."""
    bits = np.unpackbits(sign_bytes[..., None], axis=-1, bitorder="little").reshape(grid_vals.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        y = db[..., None] * grid_vals
    return np.negative(y, out=y, where=bits.astype(bool))


def _fp16_le(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(fp16_bits(v), dtype="<u2").view(np.uint8).reshape(-1, 2)


class IQ3_XXS(_IQ3, qtype=T.IQ3_XXS):
    """``quantize_iq3_xxs``: ``quantize_row_iq3_xxs_impl(256, ...)`` per row.

    ``block_iq3_xxs``: fp16 ``d``; ``qs[64]`` the grid index of every group; 8 uint32
    ``scales_and_signs``: 4 x 7 sign bits and the 4-bit block scale in bits 28..31."""

    search = _Search(256, 15, parity=True, refine_all=False)

    @classmethod
    def dequantize_rows(cls, raw):  # dequantize_row_iq3_xxs
        nrows = raw.shape[0]
        b = np.ascontiguousarray(raw).reshape(-1, cls.type_size)
        d = fp16_to_fp32(b[:, 0:2].copy().view("<u2")[:, 0])
        aux = b[:, 66:98].copy().view("<u4")  # (nb, 8)
        with np.errstate(invalid="ignore", over="ignore"):
            db = (d[:, None] * (F32(0.5) + (aux >> 28).astype(F32))) * F32(0.5)
        signs = KSIGNS[(aux[..., None] >> (7 * np.arange(4, dtype=np.uint32))) & 127]  # (nb, 8, 4)
        vals = _dequant_grid(_gq.IQ3_XXS)[b[:, 2:66]].reshape(-1, 8, 32)
        return _apply(db, vals, signs).reshape(nrows, -1)

    @classmethod
    def _pack(cls, out, d, l, gi, signs, active):
        S = out.shape[0]
        out[:, 0:2] = _fp16_le(d * F32(1.0125))
        out[:, 2:66] = gi.transpose(1, 2, 0).reshape(S, 64).astype(np.uint8)
        s = signs.astype(np.uint32)
        ss = s[0] | (s[1] << 7) | (s[2] << 14) | (s[3] << 21) | (l.astype(np.uint32) << 28)
        out[:, 66:98] = np.ascontiguousarray(ss, dtype="<u4").view(np.uint8).reshape(S, 32)

    @classmethod
    def _zero_superblocks(cls, out, zero):
        out[zero] = 0  # d = fp16(0), memset(qs, 0, quant_size)


class IQ3_S(_IQ3, qtype=T.IQ3_S):
    """``quantize_iq3_s``: ``quantize_row_iq3_s_impl(32, ...)`` per row.

    ``block_iq3_s``: fp16 ``d``; ``qs[64]`` the low 8 bits of the grid indices, ``qh[8]`` their 9th bits
    (bit k of ``qh[ib]``), ``signs[32]`` one bit per element, ``scales[4]`` two 4-bit block scales each.
    The C advances ``qs`` and ``signs`` only past blocks it quantized: those of a skipped all-zero block
    go to the next block's place, and the last places stay 0."""

    search = _Search(512, 9, parity=False, refine_all=True)

    @classmethod
    def dequantize_rows(cls, raw):  # dequantize_row_iq3_s
        nrows = raw.shape[0]
        b = np.ascontiguousarray(raw).reshape(-1, cls.type_size)
        d = fp16_to_fp32(b[:, 0:2].copy().view("<u2")[:, 0])
        sc = b[:, 106:110]
        ls = np.stack([sc & 15, sc >> 4], axis=-1).reshape(-1, 8).astype(np.int32)
        with np.errstate(invalid="ignore", over="ignore"):
            db = d[:, None] * (1 + 2 * ls).astype(F32)
        hi = (b[:, 66:74, None] >> np.arange(8, dtype=np.uint8)) & 1  # (nb, 8 blocks, 8 groups)
        idx = b[:, 2:66].reshape(-1, 8, 8).astype(np.intp) | (hi.astype(np.intp) << 8)
        vals = _dequant_grid(_gq.IQ3_S)[idx].reshape(-1, 8, 32)
        return _apply(db, vals, b[:, 74:106].reshape(-1, 8, 4)).reshape(nrows, -1)

    @classmethod
    def _pack(cls, out, d, l, gi, signs, active):
        S = out.shape[0]
        out[:, 0:2] = _fp16_le(d * F32(1.033))
        slot = np.cumsum(active, axis=1) - 1  # (S, 8): where block ib's qs and signs go
        s_idx, ib = np.nonzero(active)
        dst = slot[s_idx, ib]
        qs = out[:, 2:66].reshape(S, 8, 8)
        qs[s_idx, dst] = (gi[:, s_idx, ib] & 255).T.astype(np.uint8)
        sg = out[:, 74:106].reshape(S, 8, 4)
        sg[s_idx, dst] = signs[:, s_idx, ib].T
        hi = (gi >> 8).astype(np.uint8) << np.arange(8, dtype=np.uint8)[:, None, None]
        out[:, 66:74] = np.where(active, np.bitwise_or.reduce(hi, axis=0), 0)
        out[:, 106:110] = (l[:, 0::2] | (l[:, 1::2] << 4)).astype(np.uint8)

    @classmethod
    def _zero_superblocks(cls, out, zero):
        out[zero, 0:2] = 0  # d = fp16(0); qs, qh and signs as written; scales 0
        out[zero, 106:110] = 0



# ----------------------------------------------------------------------------- kernel tables


def kernel_tables() -> dict[str, np.ndarray]:
    """The lookup tables of kernels/iq3.cu, from the grids above (``iq3xs_init_impl``'s layout) and gguf's
    dequantize grids: per grid (``iq3xxs``: 256 points, ``iq3s``: 512) ``gq_<g>_qgrid`` the points
    ``2*l + 1`` as 4 floats (C ``kgrid_q3xs``, converted), ``gq_<g>_map`` (C ``kmap_q3xs``: a grid index, or
    ``-(offset + 1)`` of a neighbour list in ``gq_<g>_nb``), ``gq_<g>_nb`` (C ``kneighbors_q3xs``: each
    list's length, then the list); ``gq_iq3xxs_grid`` (ggml-common.h ``iq3xxs_grid``; ``iq3s_grid`` is
    ``gq_iq3s_qgrid`` itself) and ``gq_ksigns_iq2xs``."""
    out = {}
    for name, size in (("iq3xxs", 256), ("iq3s", 512)):
        g = grids.iq3_grid(size)
        assert g.neighbours.size < 1 << 15  # int16 map offsets
        out[f"gq_{name}_qgrid"] = g.grid.astype(F32).reshape(-1)
        out[f"gq_{name}_map"] = g.map.astype(np.int16)
        out[f"gq_{name}_nb"] = g.neighbours
    out["gq_iq3xxs_grid"] = np.ascontiguousarray(_dequant_grid(_gq.IQ3_XXS).astype(np.uint8)).view("<u4").reshape(-1)
    # iq3s_grid holds 2*l + 1 itself: the kernels dequantize IQ3_S from gq_iq3s_qgrid
    assert np.array_equal(_dequant_grid(_gq.IQ3_S).reshape(-1), out["gq_iq3s_qgrid"])
    out["gq_ksigns_iq2xs"] = KSIGNS
    return out
