"""The i-quant grid tables (gpuquant.quants.grids) against a brute-force recomputation of the C init code.

``iq2xs_init_impl`` / ``iq3xs_init_impl``: for every packed index off the grid, all squared distances to
the grid, sorted by (distance, grid index), cut after ``nwant`` distinct distances; the lists laid out in
index order as ``[count, list...]`` with ``map[u] = -(offset + 1)``. Here that is recomputed the slow way
(explicit differences, a full stable sort of every row) and compared entry by entry, order included.
"""
from __future__ import annotations

import re
from pathlib import Path

import gguf.quants as gq
import numpy as np
import pytest

from gpuquant.quants import T
from gpuquant.quants.grids import iq2_grid, iq3_grid, pack_levels

REF_C = Path("/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp/ggml/src/ggml-quants.c")

# (name, grid getter, gguf class, C kgrid table, bits, dim, nwant, kmap_size)
CASES = {
    "IQ2_XXS": (lambda: iq2_grid(T.IQ2_XXS), gq.IQ2_XXS, "kgrid_2bit_256", 2, 8, 2, 43692),
    "IQ2_XS": (lambda: iq2_grid(T.IQ2_XS), gq.IQ2_XS, "kgrid_2bit_512", 2, 8, 2, 43692),
    "IQ2_S": (lambda: iq2_grid(T.IQ2_S), gq.IQ2_S, "kgrid_2bit_1024", 2, 8, 1, 43692),
    "IQ1_S": (lambda: iq2_grid(T.IQ1_S), gq.IQ1_S, "kgrid_1bit_2048", 2, 8, 3, 43692),
    "IQ3_XXS": (lambda: iq3_grid(256), gq.IQ3_XXS, "kgrid_256", 3, 4, 2, 4096),
    "IQ3_S": (lambda: iq3_grid(512), gq.IQ3_S, "kgrid_512", 3, 4, 3, 4096),
}


def c_table(name: str) -> np.ndarray:
    """A ``static const uint16_t <name>[...] = {...};`` table of the reference ggml-quants.c."""
    m = re.search(r"static const uint16_t %s\[[^\]]*\] = \{(.*?)\};" % name, REF_C.read_text(), re.S)
    assert m, name
    return np.array([int(v) for v in m.group(1).split(",") if v.strip()], dtype=np.int64)


def brute_force_lists(grid: np.ndarray, u: np.ndarray, bits: int, nwant: int) -> list[np.ndarray]:
    """The C neighbour search of every index in ``u``, literally: all distances, sorted, cut by levels."""
    dim = grid.shape[1]
    g = grid.astype(np.int32)
    out = []
    for c0 in range(0, len(u), 256):
        uu = u[c0:c0 + 256]
        pos = np.stack([2 * ((uu >> (bits * k)) & ((1 << bits) - 1)) + 1 for k in range(dim)], axis=1)
        d2 = ((g[None, :, :] - pos[:, None, :]) ** 2).sum(axis=2)  # (n, grid_size)
        order = np.argsort(d2, axis=1, kind="stable")  # ties keep the grid index order
        ds = np.take_along_axis(d2, order, axis=1)
        rank = np.concatenate([np.zeros((len(uu), 1), int), np.cumsum(ds[:, 1:] > ds[:, :-1], axis=1)], axis=1)
        for r in range(len(uu)):
            out.append(order[r, rank[r] < nwant])
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_grid_order_and_values(name):
    get, cls, table, bits, dim, nwant, kmap_size = CASES[name]
    g = get()
    assert g.grid.shape == (len(g.kgrid), dim) and g.grid.dtype == np.int8
    assert (g.dim, g.bits, g.nwant, g.kmap_size) == (dim, bits, nwant, kmap_size)
    # the values gguf dequantizes with are grid_map[l]: the same levels, point 2*l + 1
    cls.init_grid()
    lv = (g.grid.astype(np.int32) - 1) // 2
    want = np.array(cls.grid_map, dtype=np.float32)[lv]
    assert np.array_equal(cls.grid.reshape(-1, dim), want)
    assert np.array_equal(g.kgrid, pack_levels(lv, bits))
    on = np.flatnonzero(g.map >= 0)
    assert np.array_equal(np.sort(on), np.sort(g.kgrid.astype(np.int64)))
    assert np.array_equal(g.map[g.kgrid], np.arange(len(g.kgrid)))
    if REF_C.is_file():  # the packed order is the C kgrid table's
        assert np.array_equal(g.kgrid.astype(np.int64), c_table(table))


@pytest.mark.parametrize("name", list(CASES))
def test_neighbour_lists_equal_brute_force(name):
    get, _, _, bits, _, nwant, kmap_size = CASES[name]
    g = get()
    off = np.flatnonzero(g.map < 0)
    assert len(off) == kmap_size - len(g.kgrid)
    want = brute_force_lists(g.grid, off, bits, nwant)
    # the C layout: lists in index order, [count, list...], map = -(offset + 1)
    offset = 0
    for u, lst in zip(off, want):
        assert g.map[u] == -(offset + 1), u
        assert g.neighbours[offset] == len(lst), u
        got = g.neighbours[offset + 1:offset + 1 + len(lst)]
        assert np.array_equal(got, lst), f"{name} u={u}: {got} != {lst}"
        assert g.nb_first[u] == offset + 1 and g.nb_count[u] == len(lst)
        offset += 1 + len(lst)
    assert offset == len(g.neighbours)
    # padded_lists repeats the last entry
    pad = g.padded_lists(off[:500])
    for r, lst in enumerate(want[:500]):
        assert np.array_equal(pad[r, :len(lst)], lst) and (pad[r, len(lst):] == lst[-1]).all()


def test_shared_and_cached():
    assert iq2_grid(T.IQ1_M) is iq2_grid(T.IQ1_S)
    assert iq2_grid(T.IQ2_XS) is iq2_grid(int(T.IQ2_XS))
    assert iq3_grid(256) is iq3_grid(256)
    with pytest.raises(ValueError):
        iq2_grid(T.Q4_0)
    with pytest.raises(ValueError):
        iq3_grid(1024)
