"""IQ3_XXS and IQ3_S: the numpy reference against llama.cpp, byte for byte.

ggml-quants.c aborts the process on some inputs (``GGML_ASSERT(grid_index >= 0)`` in
``iq3_find_best_neighbour`` when every neighbour's distance is NaN or ``>= FLT_MAX``, which finite values
whose squares overflow reach too; ``GGML_ASSERT(scale >= 0)`` on a NaN block scale). The oracle therefore
runs in a forked child here (``oracle_or_abort``): where it aborts, ``quantize`` must raise
:class:`GGMLAbort`, and where it returns, the bytes must be equal. Calls that abort are retried row by row,
so the decision is checked for every row.

Default suite: structural checks that need no oracle. Oracle suite: random rows of many scales and row
lengths, the golden edge-case kinds, importance-weight kinds, NaN/Inf inputs, and ``dequantize_rows``
against ``dequantize_row_iq3_*`` on random bytes with finite, inf and NaN scales.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from gpuquant.quants import get, quantize
from gpuquant.quants import GGMLAbort
from gpuquant.quants.iq3 import grid
from tests.golden.cases import IMATRIX_KINDS, build_cases, imatrix
from tests.oracle import lib_dir, requires_oracle
from tests.helpers import check_vs_oracle, nonfinite_rows, random_imatrix, random_rows

TYPES = ["IQ3_XXS", "IQ3_S"]
F32 = np.float32


def check_or_abort(qtype: str, rows: np.ndarray, w: np.ndarray | None, what: str) -> bool:
    """Bytes equal to the oracle's, or both abort on the same rows. Returns True if some row aborted."""
    def ours(r):
        with np.errstate(all="raise"):  # no float warning may escape quantize
            return quantize(r, qtype, w)
    return check_vs_oracle(ours, rows, qtype, w, what) > 0


def check_random(qtype: str, shape: tuple[int, int], imat: str) -> None:
    rng = np.random.default_rng([sum(map(ord, qtype)), shape[1], len(imat)])
    x = random_rows(rng, *shape)
    check_or_abort(qtype, x, random_imatrix(rng, shape[1], imat), f"random {shape} {imat}")


# ----------------------------------------------------------------------------- no oracle


@pytest.mark.parametrize("qtype", TYPES)
def test_registry_facts(qtype):
    cls = get(qtype)
    assert cls.fp16_fields == {"d": 0}
    assert cls.requires_imatrix is False  # ggml_quantize_requires_imatrix: IQ2_XXS, IQ2_XS, IQ1_S only
    assert cls.kernel.sync and cls.kernel.threads == 32 and cls.kernel.items_per_block == 1  # kernels/iq3.cu
    assert cls.type_size == {"IQ3_XXS": 98, "IQ3_S": 110}[qtype]


@pytest.mark.parametrize("qtype", TYPES)
def test_all_zero_input(qtype):
    """All-zero blocks are skipped: every byte 0 (d = 0, grid index 0 is the all-zero-level point)."""
    x = np.zeros((2, 512), F32)
    x[1, ::3] = -0.0
    assert grid(256 if qtype == "IQ3_XXS" else 512).kmap[0] == 0
    assert not quantize(x, qtype).any()
    assert not quantize(x, qtype, np.ones(512, F32)).any()


def test_iq3_s_skipped_block_shifts_the_later_ones():
    """quantize_row_iq3_s_impl advances qs/signs only past the blocks it quantizes: with block 0 zero,
    blocks 1..7's grid indices and signs land in slots 0..6, slot 7 stays 0; qh is indexed by block.
    (Without weights a block's indices and signs depend on its own values only.)"""
    x = np.random.default_rng(3).standard_normal((1, 256)).astype(F32)
    ref = quantize(x, "IQ3_S")[0]
    x[0, :32] = 0
    q = quantize(x, "IQ3_S")[0]
    qs, qh, sg = (lambda b: b[2:66].reshape(8, 8)), (lambda b: b[66:74]), (lambda b: b[74:106].reshape(8, 4))
    assert np.array_equal(qs(q)[:7], qs(ref)[1:]) and not qs(q)[7].any()
    assert np.array_equal(sg(q)[:7], sg(ref)[1:]) and not sg(q)[7].any()
    assert qh(q)[0] == 0 and np.array_equal(qh(q)[1:], qh(ref)[1:])
    assert q[106] & 0x0F == 0  # block 0's scale nibble


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_roundtrip_is_close(qtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 1024)).astype(F32)
    y = get(qtype).dequantize_rows(quantize(x, qtype))
    assert y.shape == x.shape and y.dtype == F32
    assert np.sqrt(np.mean((y - x) ** 2)) < 0.3 * np.sqrt(np.mean(x ** 2))


@pytest.mark.parametrize("qtype", TYPES)
def test_threads_give_the_same_bytes(qtype):
    """The work buffers are per thread: concurrent calls (the numpy backend's pool) cannot mix."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((6, 1024)).astype(F32) * F32(s) for s in (0.1, 1, 10, 100)]
    want = [quantize(x, qtype) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: quantize(x, qtype), xs * 2))
    assert all(np.array_equal(g, w) for g, w in zip(got, want * 2))


@pytest.mark.parametrize("qtype", TYPES)
def test_overflowing_squares_raise(qtype):
    """|x| ~ 1e20: x*x is inf, every neighbour distance inf or NaN: llama.cpp aborts (checked against the
    oracle in test_edge_cases_against_oracle's "large" kind)."""
    x = (np.random.default_rng(1).standard_normal((1, 256)) * 1e20).astype(F32)
    with pytest.raises(GGMLAbort):
        quantize(x, qtype)


# ----------------------------------------------------------------------------- oracle


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("imat", ["none", "imatrix"])
def test_many_chunks_against_oracle(qtype, imat):
    """Enough rows for several outer row chunks and inner block batches (their seams), and a last
    partial batch."""
    check_random(qtype, (70, 4096), imat)


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_scales_against_oracle(qtype):
    """Normal rows at magnitudes from 1e-30 to 1e18 (tiny blocks skipped, squares near overflow)."""
    rng = np.random.default_rng(21)
    for scale in (1e-30, 1e-12, 1e-8, 3e-8, 1e-4, 1.0, 1e4, 1e9, 1e15, 1e18):
        x = (rng.standard_normal((3, 512)) * scale).astype(F32)
        for w in (None, (rng.standard_normal(512) ** 2).astype(F32)):
            check_or_abort(qtype, x, w, f"scale {scale:g} {'imatrix' if w is not None else 'plain'}")


@requires_oracle
@pytest.mark.extended  # more seeds of what test_conformance checks in the default run
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("seed", [0, 11])
def test_edge_cases_against_oracle(qtype, seed):
    """The golden edge-case kinds of group b256 (seed 0: the golden inputs themselves), with and without
    their weights. The "large" kind's rows at 1e20 and 3e38 make llama.cpp abort."""
    aborted = []
    for case_id, rows, w in build_cases("b256", seed=seed):
        for qw in (None, w):
            what = f"{case_id} {'imatrix' if qw is not None else 'plain'}"
            if check_or_abort(qtype, rows, qw, what):
                aborted.append(what)
    assert all(a.startswith("large/") for a in aborted), aborted


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("kind", IMATRIX_KINDS)
def test_imatrix_kinds_against_oracle(qtype, kind):
    rng = np.random.default_rng([5, len(kind)])
    x = (rng.standard_normal((6, 768)) * rng.uniform(0.01, 10, (6, 1))).astype(F32)
    x[1, 256:512] = 0  # an all-zero super-block among weighted ones
    check_or_abort(qtype, x, imatrix(kind, rng, 768), kind)


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nan_inf_inputs_against_oracle(qtype, seed):
    """tests/quant_checks.nonfinite_rows, with and without weights (some zero): nearly every row aborts
    in llama.cpp; each row's outcome and bytes must match."""
    x = nonfinite_rows(seed)
    w = np.abs(np.random.default_rng(seed).standard_normal(x.shape[1])).astype(F32)
    w[:100] = 0
    for qw in (None, w):
        check_or_abort(qtype, x, qw, f"NaN/Inf seed {seed} {'imatrix' if qw is not None else 'plain'}")


@requires_oracle
@pytest.mark.extended  # more seeds of what test_conformance checks in the default run
@pytest.mark.parametrize("qtype", TYPES)
def test_lone_nonfinite_values_against_oracle(qtype):
    """One NaN/Inf per row at several places, and NaN among zeros (a skipped block: bytes, no abort)."""
    rng = np.random.default_rng(9)
    base = rng.standard_normal(256).astype(F32)
    rows = []
    for pos in (0, 5, 31, 100, 255):
        for v in (np.inf, -np.inf, np.nan):
            r = base.copy()
            r[pos] = v
            rows.append(r)
    z = np.zeros(256, F32)
    z[[3, 40, 77]] = np.nan  # never last in its block: MAX() forgets it, the blocks are all-zero
    rows.append(z)
    t = np.full(256, 1e-9, F32)
    t[[3, 40]] = np.nan
    rows.append(t)
    x = np.stack(rows)
    for qw in (None, np.ones(256, F32)):
        for i in range(x.shape[0]):
            check_or_abort(qtype, x[i:i + 1], qw, f"row {i} {'imatrix' if qw is not None else 'plain'}")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_against_oracle(qtype):
    """dequantize_rows against dequantize_row_iq3_*, bit for bit, on random bytes whose scales are random
    fp16 values plus +-inf, NaNs of both signs and a NaN with a payload."""
    cls = get(qtype)
    fn = getattr(ctypes.CDLL(str(lib_dir() / "libggml-base.so")), f"dequantize_row_{qtype.lower()}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    rng = np.random.default_rng(17)
    raw = rng.integers(0, 256, (5, 8 * cls.type_size), dtype=np.uint8)
    blocks = raw.reshape(-1, cls.type_size)
    d = (rng.standard_normal(len(blocks)) * 10.0 ** rng.uniform(-6, 4, len(blocks))).astype(np.float16)
    d[:5] = [np.inf, -np.inf, np.nan, -np.nan, 0.0]
    blocks[:, :2] = d.view(np.uint8).reshape(-1, 2)
    blocks[5, :2] = [0x01, 0x7C]  # a signalling NaN with a payload
    blocks[6, :2] = [0x00, 0x04]  # the smallest normal fp16
    blocks[7, :2] = [0x01, 0x00]  # an fp16 subnormal
    want = np.zeros((5, 8 * 256), F32)
    fn(raw.ctypes.data, want.ctypes.data, want.size)
    got = cls.dequantize_rows(raw)
    assert got.dtype == F32 and got.shape == want.shape
    bad = np.flatnonzero(got.view(np.uint32).ravel() != want.view(np.uint32).ravel())
    assert bad.size == 0, (f"{bad.size} values differ; first at {bad[0]} (block {bad[0] // 256}): "
                           f"got {got.ravel()[bad[0]]!r} want {want.ravel()[bad[0]]!r}")
