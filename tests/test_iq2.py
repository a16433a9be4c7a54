"""IQ2_XXS, IQ2_XS, IQ2_S: the numpy reference against llama.cpp, byte for byte.

Default suite: the exact shortcut of the neighbour search (``iq2_search.best_neighbours`` against the C
search term by term), dequantization against gguf-py, all-zero input, the imatrix requirement. Oracle
suite: random rows, the edge-case kinds of ``tests/golden/cases.py``, importance-weight kinds and
NaN/Inf inputs against ``ggml_quantize_chunk``; dequantization against ``dequantize_row_iq2_*``.

ggml aborts the process on some inputs (``GGML_ASSERT`` in ``iq2_find_best_neighbour`` when every
distance is NaN or not below FLT_MAX, ``GGML_ASSERT(scale >= 0)`` on a NaN scale, IQ2_XXS's "Oops:
found point not on grid"): gpuquant raises ``GGMLAbort`` there. Inputs that may make ggml abort are given
to the oracle in a forked child: rows gpuquant quantizes must come back with the same bytes, rows it
refuses must kill the child with SIGABRT.
"""
from __future__ import annotations

import ctypes

import gguf.quants as gq
import numpy as np
import pytest

from gpuquant.quants import QUANT_SIZES, T, get, quantize
from gpuquant.quants import iq2_search
from gpuquant.quants.grids import iq2_grid
from gpuquant.quants import GGMLAbort
from tests.golden.cases import IMATRIX_KINDS, build_cases, imatrix
from tests.helpers import assert_bytes, check_abort_aware, nonfinite_rows
from tests.oracle import available, forked_oracle, lib_dir, oracle_quantize, requires_oracle

TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S"]
F32 = np.float32


def weight_options(qtype: str, im: np.ndarray) -> list[np.ndarray | None]:
    """IQ2_XXS and IQ2_XS require weights (ggml asserts without them); IQ2_S takes both."""
    return [None, im] if qtype == "IQ2_S" else [im]


# ----------------------------------------------------------------------------- default suite


def random_requests(grid, rng, m: int, ties: bool) -> iq2_search.Requests:
    """Off-grid rounded points with octets near them; ``ties``: weights with zeros and values on the
    midpoints between levels (many exactly or nearly equal distances)."""
    lv = rng.integers(0, 3, (4 * m, 8))
    u = (lv << (2 * np.arange(8))).sum(axis=1)
    off = grid.map[u] < 0
    lv, u = lv[off][:m], u[off][:m]
    scale = (10.0 ** rng.uniform(-3, 3, len(u))).astype(F32)
    x = ((2 * lv + 1) + rng.uniform(-1, 1, lv.shape)) * scale[:, None]
    w = rng.exponential(1.0, lv.shape)
    if ties:
        x = (2 * lv + 1 + rng.choice([-1.0, 0.0, 1.0], lv.shape)) * scale[:, None]
        w = np.where(rng.random(lv.shape) < 0.3, 0.0, rng.choice([1.0, 2.0], lv.shape))
    x, w = np.abs(x).astype(F32), w.astype(F32)
    return iq2_search.Requests(u, np.arange(len(u)), scale, x, w)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
def test_fast_search_equals_c_search(qtype, ties, monkeypatch):
    """The grouped, ranked search picks the neighbour the C loop picks, ties (first index) included."""
    grid = iq2_grid(T[qtype])
    req = random_requests(grid, np.random.default_rng([len(qtype), ties]), 60000, ties)
    sizes = []
    orig = iq2_search._exact_neighbours
    monkeypatch.setattr(iq2_search, "_exact_neighbours", lambda g, u, t: sizes.append(len(u)) or orig(g, u, t))
    gi, found = iq2_search.best_neighbours(grid, req)
    want_gi, want_found = orig(grid, req.u, req.terms(np.arange(len(req.u))))
    assert found.all() and want_found.all()
    term_by_term = sum(sizes) / len(req.u)  # small groups and ties
    assert (0.1 < term_by_term < 0.9) if ties else (term_by_term < 0.1), term_by_term
    bad = np.flatnonzero(gi != want_gi)
    assert bad.size == 0, f"{bad.size} of {len(gi)} differ, first u={req.u[bad[0]]}: {gi[bad[0]]} != {want_gi[bad[0]]}"


def test_search_reports_no_neighbour():
    """All distances NaN (or not below FLT_MAX): ggml's assert, reported as not found."""
    grid = iq2_grid(T.IQ2_XS)
    u = np.flatnonzero(grid.map < 0)[:4]
    x = np.ones((4, 8), F32)
    x[0, 3] = np.nan
    x[1, 0] = 3e38
    w = np.ones((4, 8), F32)
    w[2] = np.inf
    _, found = iq2_search.best_neighbours(grid, iq2_search.Requests(u, np.arange(4), np.ones(4, F32), x, w))
    assert found.tolist() == [False, False, False, True]


@pytest.mark.parametrize("qtype", TYPES)
def test_all_zero_input(qtype):
    x = np.zeros((2, 512), F32)
    x[1, ::3] = -0.0
    assert not quantize(x, qtype, np.ones(512, F32)).any()


@pytest.mark.parametrize("qtype", ["IQ2_XXS", "IQ2_XS"])
def test_weights_required(qtype):
    assert get(qtype).requires_imatrix
    with pytest.raises(ValueError, match="importance"):
        quantize(np.ones((1, 256), F32), qtype)
    with pytest.raises(ValueError, match="importance"):
        get(qtype).quantize_rows(np.ones((1, 256), F32), None)


def test_iq2_s_weights_optional():
    assert not get("IQ2_S").requires_imatrix
    assert quantize(np.ones((1, 256), F32), "IQ2_S").shape == (1, 82)


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_equals_gguf(qtype):
    """Finite scales: the same values as gguf-py's dequantizer (NaN scales are checked against ggml)."""
    cls = get(qtype)
    rng = np.random.default_rng(len(qtype))
    raw = rng.integers(0, 256, (5, 8 * cls.type_size), dtype=np.uint8)
    blocks = raw.reshape(-1, cls.type_size)
    blocks[:, :2] = (rng.standard_normal(len(blocks)) * 3).astype(np.float16).view(np.uint8).reshape(-1, 2)
    want = gq.dequantize(raw, gq.GGMLQuantizationType[qtype]).astype(F32)
    np.testing.assert_array_equal(cls.dequantize_rows(raw), want)


@pytest.mark.parametrize("qtype", TYPES)
def test_round_trip_error(qtype):
    """Quantized then dequantized Gaussian rows keep most of their energy (2 bits per value)."""
    x = np.random.default_rng(3).standard_normal((8, 512)).astype(F32)
    y = get(qtype).dequantize_rows(quantize(x, qtype, np.ones(512, F32)))
    rel = np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean())
    assert 0.05 < rel < 0.45, rel


# ----------------------------------------------------------------------------- oracle


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_requires_imatrix_matches_ggml(qtype):
    lib = ctypes.CDLL(str(lib_dir() / "libggml-base.so"))
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    assert bool(lib.ggml_quantize_requires_imatrix(int(T[qtype]))) == get(qtype).requires_imatrix




@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_random_scales_against_oracle(qtype):
    """Per-row scales from 1e-12 to 1e12 (x*x stays finite) and per-block scales within rows."""
    rng = np.random.default_rng([len(qtype), 7])
    x = rng.standard_normal((24, 512)) * 10.0 ** rng.uniform(-12, 12, (24, 1))
    x[::3] *= np.repeat(10.0 ** rng.uniform(-3, 3, (8, 16)), 32, axis=1)
    x = x.astype(F32)
    w = (rng.standard_normal(512) ** 2).astype(F32)
    for qw in weight_options(qtype, w):
        assert_bytes(quantize(x, qtype, qw), oracle_quantize(x, qtype, qw), qtype, x, "scales")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("kind", IMATRIX_KINDS)
def test_imatrix_kinds_against_oracle(qtype, kind):
    rng = np.random.default_rng([len(qtype), len(kind)])
    x = (rng.standard_normal((6, 768)) * rng.uniform(0.01, 10, (6, 1))).astype(F32)
    x[5, 256:512] = 0
    w = imatrix(kind, rng, 768)
    assert_bytes(quantize(x, qtype, w), oracle_quantize(x, qtype, w), qtype, x, f"imatrix {kind}")


def nan_inf_rows(seed: int) -> np.ndarray:
    """Super-blocks with one NaN/Inf at a random place, a NaN/Inf octet, all NaN, all Inf, huge values."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((24, 256)) * rng.uniform(0.1, 10, (24, 1))).astype(F32)
    specials = [np.nan, np.inf, -np.inf]
    for r in range(12):
        x[r, rng.integers(256)] = specials[r % 3]
    for r in range(12, 18):
        o = 8 * rng.integers(32)
        x[r, o:o + 8] = specials[r % 3]
    x[18] = np.nan
    x[19] = np.inf
    x[20, ::2] = -np.inf
    x[21, 255] = np.nan  # the last value: the group maximum becomes NaN
    x[22] = (rng.standard_normal(256) * 1e19).astype(F32)  # x*x overflows
    x[23] = np.where(rng.random(256) < 0.5, np.nan, 1.0)
    return x


@requires_oracle
@pytest.mark.extended  # more seeds of what test_conformance checks in the default run
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_nan_inf_inputs_against_oracle(qtype, seed):
    x = np.concatenate([nan_inf_rows(seed), nonfinite_rows(seed, nrows=8, n=256)])
    w = np.abs(np.random.default_rng(seed).standard_normal(256)).astype(F32)
    w[:40] = 0
    for qw in weight_options(qtype, w):
        check_abort_aware(qtype, x, qw, f"NaN/Inf seed {seed}")


@requires_oracle
def test_known_aborts():
    """Inputs on which ggml aborts, one per kind of abort, raise GGMLAbort saying which."""
    rng = np.random.default_rng(5)
    huge = (rng.standard_normal((1, 256)) * 1e20).astype(F32)  # x*x = inf: infinite weights
    with pytest.raises(GGMLAbort, match="no neighbour"):
        quantize(huge, "IQ2_S")
    assert forked_oracle(huge, "IQ2_S", None)[0] is None
    # IQ2_XXS: with infinite weights make_qp_quants' scale is NaN and its levels (0..4 or negative) are
    # kept: off the grid ("Oops") or past the map (an out-of-bounds read in C, whose result decides
    # between "Oops" and the NaN-scale assert): about one super-block of values near FLT_MAX in eight
    kinds = set()
    for _ in range(60):
        big = (rng.uniform(-1, 1, (1, 256)) * 3e38).astype(F32)
        w = rng.chisquare(1.0, 256).astype(F32)
        try:
            quantize(big, "IQ2_XXS", w)
            continue
        except GGMLAbort as e:
            past = "past the grid map" in str(e)
            assert past or "not on grid" in str(e), str(e)
        want, text = forked_oracle(big, "IQ2_XXS", w)
        assert want is None
        assert "not on grid" in text or (past and "scale >= 0" in text), text
        kinds.add(past)
    case = {c: (r, w) for c, r, w in build_cases("b256", seed=11)}["large/n768/chi2"]
    x, w = case[0][4:5, 512:], case[1][512:]  # octet 0 of group 2 past the map (65535), octet 1 off the grid
    with pytest.raises(GGMLAbort, match="past the grid map"):
        quantize(x, "IQ2_XXS", w)
    want, text = forked_oracle(x, "IQ2_XXS", w)
    # what C prints depends on the memory it reads past its map: "Oops" for 65535, for 39931, or the assert
    assert want is None and ("not on grid" in text or "scale >= 0" in text), text
    assert kinds
    nan_max = np.ones((1, 256), F32)
    nan_max[0, 15] = np.nan  # the last value of the first group: its maximum is NaN, and so its scale
    with pytest.raises(GGMLAbort, match="NaN scale"):
        quantize(nan_max, "IQ2_S")
    assert forked_oracle(nan_max, "IQ2_S", None)[0] is None


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_against_oracle(qtype):
    """dequantize_row_* on random bytes with finite, infinite and NaN scales, bit for bit."""
    cls = get(qtype)
    fn = getattr(ctypes.CDLL(str(lib_dir() / "libggml-base.so")), f"dequantize_row_{qtype.lower()}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    rng = np.random.default_rng(int(T[qtype]))
    raw = rng.integers(0, 256, (6, 8 * cls.type_size), dtype=np.uint8)
    blocks = raw.reshape(-1, cls.type_size)
    h = (rng.standard_normal(len(blocks)) * 10).astype(np.float16).view(np.uint16)
    h[::5], h[1::7], h[2::6], h[3::9], h[4::11] = 0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x8000
    blocks[:, :2] = h.view(np.uint8).reshape(-1, 2)
    want = np.zeros((6, 8 * QUANT_SIZES[T[qtype]][0]), F32)
    fn(raw.ctypes.data, want.ctypes.data, want.size)
    with np.errstate(all="raise"):
        got = cls.dequantize_rows(raw)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.skipif(not available(), reason="oracle unavailable")
def test_forked_oracle_sees_aborts():
    """The helper itself: a clean call returns bytes, an aborting one None."""
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(F32)
    got, _ = forked_oracle(x, "IQ2_S", None)
    assert np.array_equal(got, oracle_quantize(x, "IQ2_S", None))
    x[1, 7] = np.nan
    assert forked_oracle(x, "IQ2_S", None)[0] is None


# ----------------------------------------------------------------------------- kernels/iq2.cu


def test_kernel_tables_are_the_grid_search_tables():
    """kernel_tables(): every base-3 code's grid index and neighbour list are those of grids.iq2_grid."""
    from gpuquant.quants.iq2 import kernel_tables

    tabs = kernel_tables()
    assert np.array_equal(tabs["gq_iq2_ksigns"], np.frombuffer(gq.IQ2_XXS.ksigns, np.uint8))
    levels = (np.arange(3 ** 8)[:, None] // 3 ** np.arange(8)) % 3
    u = (levels << (2 * np.arange(8))).sum(axis=1)
    for qtype in TYPES:
        g, name = iq2_grid(T[qtype]), "gq_" + qtype.lower().replace("_", "")
        assert np.array_equal(tabs[name + "_kgrid"], g.kgrid)
        map3, off, lists = tabs[name + "_map3"], tabs[name + "_nb_off"], tabs[name + "_nb_list"]
        assert np.array_equal(map3, np.where(g.map[u] >= 0, g.map[u], -1))
        assert (map3 < 0).sum() == 6561 - g.grid_size  # every grid point has levels 0..2
        for c in np.flatnonzero(map3 < 0)[::37]:
            assert np.array_equal(lists[off[c]:off[c + 1]], g.neighbour_list(int(u[c]))) and off[c + 1] > off[c]
        assert np.all(off[1:][map3 >= 0] == off[:-1][map3 >= 0])  # no list on the grid


def test_kernel_geometry_matches_the_cu_file():
    """The threads per block of each type in iq2.cu (a thread per scale group) are its Kernel(...)'s."""
    import re

    from gpuquant.backends.kernels import kernel_dir

    text = (kernel_dir() / "iq2.cu").read_text()
    for qtype, struct in (("IQ2_XXS", "GqIq2xxs"), ("IQ2_XS", "GqIq2xs"), ("IQ2_S", "GqIq2s")):
        body = re.search(r"struct %s \{(.*?)\n\};" % struct, text, re.S).group(1)
        n = int(re.search(r"int N = (\d+);", body).group(1))
        threads = int(re.search(r"int THREADS = (\d+);", body).group(1))
        k = get(qtype).kernel
        assert (k.threads, k.item_elems, k.items_per_block, k.sync) == (threads, 256, threads // (256 // n), True)
        assert n == get(qtype).group
