"""K-quants Q2_K..Q6_K: the numpy reference against llama.cpp, byte for byte.

Default suite: committed golden vectors, invariants the C code fixes (all-zero input), and the exact
shortcuts of ``kquants_search`` against the plain element-by-element C loop.  Oracle suite: random and
edge-case tensors against ``ggml_quantize_chunk`` with and without importance weights.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant.quants import QUANT_SIZES, GGMLQuantizationType, quantize
from gpuquant.quants import kquants, kquants_search
from gpuquant.quants.common import F32, nearest_int
from tests.oracle import oracle_quantize, requires_oracle

TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
QK_K = 256


def assert_same_bytes(got: np.ndarray, want: np.ndarray, qtype: str, x: np.ndarray) -> None:
    """Byte equality; on mismatch name the first differing super-block, its bytes and its input."""
    assert got.shape == want.shape, f"{qtype}: shape {got.shape}, expected {want.shape}"
    if np.array_equal(got, want):
        return
    type_size = QUANT_SIZES[GGMLQuantizationType[qtype]][1]
    g = got.reshape(-1, type_size)
    w = want.reshape(-1, type_size)
    bad = np.flatnonzero((g != w).any(axis=1))
    sb = int(bad[0])
    nb = x.shape[-1] // QK_K
    cols = np.flatnonzero(g[sb] != w[sb])
    xs = x.reshape(-1, QK_K)[sb]
    raise AssertionError(
        f"{qtype}: {bad.size}/{g.shape[0]} super-blocks differ; first: row {sb // nb} block {sb % nb}, "
        f"bytes {cols[:16].tolist()}\n got  {g[sb][cols[:16]].tolist()}\n want {w[sb][cols[:16]].tolist()}\n"
        f" input min {xs.min():.6g} max {xs.max():.6g} first {xs[:8].tolist()}"
    )


# ----------------------------------------------------------------------------- inputs

def _random(rng, nrows, n_per_row):
    return rng.standard_normal((nrows, n_per_row)).astype(F32)


def _imatrix(rng, n_per_row, kind):
    if kind == "none":
        return None
    if kind == "imatrix":  # squared activations, as llama-imatrix collects
        return (rng.standard_normal(n_per_row) ** 2).astype(F32)
    # sparse: many zero weights, the rest spread over decades
    w = (10.0 ** rng.uniform(-3, 2, n_per_row)).astype(F32)
    w[rng.random(n_per_row) < 0.4] = 0
    return w


def _edge(case: str, rng) -> np.ndarray:
    """Four rows of 1024 values stressing one corner of the C code each."""
    x = rng.standard_normal((4, 1024)).astype(F32)
    if case == "zeros":
        x[:] = 0
    elif case == "zero_blocks":  # whole super-blocks and single sub-blocks of zeros
        x[:, :256] = 0
        x[:, 512:528] = 0
        x[:, 800:832] = 0
    elif case == "tiny":  # below and around GROUP_MAX_EPS
        x[0] *= F32(1e-16)
        x[1] *= F32(1e-14)
        x[2, :256] = F32(1e-15)
        x[3] *= F32(1e-30)
    elif case == "denormal":
        x *= F32(1e-39)
    elif case == "huge":  # x*x overflows to inf
        x[0] *= F32(1e30)
        x[1] *= F32(3e38) / np.abs(x[1]).max()
        x[2, :256] *= F32(1e20)
        x[3] *= F32(1e4)
    elif case == "constant":  # max == min, one repeated value
        x[0] = 1.5
        x[1] = -2.0
        x[2, :512] = 0.25
        x[3, ::2] = 3.0
    elif case == "one_sided":
        x[0] = np.abs(x[0])
        x[1] = -np.abs(x[1])
        x[2] = np.abs(x[2]) + 10
        x[3] = -np.abs(x[3]) - 10
    elif case == "outliers":  # one large value per sub-block, heavy tails
        x = (rng.standard_t(1.5, (4, 1024)) * 0.01).astype(F32)
        x[:, ::16] *= 100
    elif case == "mixed_scales":  # neighbouring blocks differ by decades
        x *= (10.0 ** rng.integers(-8, 4, (4, 64))).repeat(16, axis=1).astype(F32)
    elif case == "integers":  # exact ties for the rounding
        x = rng.integers(-8, 8, (4, 1024)).astype(F32) * F32(0.5)
    else:
        raise ValueError(case)
    return np.ascontiguousarray(x, dtype=F32)


EDGE_CASES = ["zeros", "zero_blocks", "tiny", "denormal", "huge", "constant", "one_sided", "outliers",
              "mixed_scales", "integers"]


# ----------------------------------------------------------------------------- default suite

@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_all_zero_input_is_all_zero_bytes(qtype, weighted):
    # every K-quant writes d = dmin = 0, zero scales and zero levels for an all-zero super-block
    x = np.zeros((2, 512), F32)
    qw = np.ones(512, F32) if weighted else None
    q = quantize(x, qtype, qw)
    assert q.shape == (2, 2 * QUANT_SIZES[GGMLQuantizationType[qtype]][1])
    assert not q.any()


@pytest.mark.parametrize("qtype", TYPES)
def test_chunk_boundaries_inside_rows(qtype, monkeypatch):
    # imatrix weights are indexed by the super-block's place in its row, also across chunk boundaries
    rng = np.random.default_rng(7)
    x = _random(rng, 5, 768)
    qw = _imatrix(rng, 768, "imatrix")
    whole = quantize(x, qtype, qw)
    monkeypatch.setattr(kquants, "CHUNK_SUPERBLOCKS", 4)
    assert_same_bytes(quantize(x, qtype, qw), whole, qtype, x)


def test_float_rounding_equals_nearest_int():
    rng = np.random.default_rng(3)
    t = np.concatenate([
        rng.uniform(-40, 40, 4096),
        np.arange(-64, 64) + 0.5,  # ties go to even
        rng.uniform(-4194302.9, 4194302.9, 4096),
        [-0.5, -0.0, 0.0, 0.49999997, 4194302.5, -4194302.5, 4194302.75],
    ]).astype(F32)
    for lo, hi in ((-32, 31), (0, 15), (-4194304, 4194303)):
        want = np.clip(nearest_int(t), lo, hi).astype(F32)
        got = kquants_search._levels_f32(t.copy(), lo, hi, exact=True)
        np.testing.assert_array_equal(got, want)  # equal values; -0.0 for 0 is allowed (see the module doc)
    # 4194303.5 rounds to 2**22, where the magic-number trick wraps: the float path must not be used
    assert not kquants_search._below_exact(np.array([4194303.5, 1.0], F32))
    assert np.clip(nearest_int(np.array([4194303.5], F32)), 0, 2**23)[0] == 0
    assert not kquants_search._below_exact(np.array([np.nan], F32))


def _refine_sequential(x, w, wx, L, sumlx, suml2, lo, hi, qp):
    """The itry loop of make_q3_quants / make_qp_quants written as C writes it (vectors across groups)."""
    L = L.copy()
    sumlx, suml2 = sumlx.copy(), suml2.copy()
    done = np.zeros(x.shape[1], bool)
    passes = np.zeros(x.shape[1], int)  # passes that changed something
    for _ in range(5):
        n_changed = np.zeros(x.shape[1], int)
        for i in range(x.shape[0]):
            li = L[i].astype(F32)
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            ok = ((slx > 0) & (sl2 > 0)) if qp else (slx > 0)
            new_l = nearest_int(x[i] * sl2 / slx)
            new_l = np.minimum(new_l, hi) if qp else np.clip(new_l, lo, hi)
            nl = new_l.astype(F32)
            slx2 = slx + wx[i] * nl
            sl22 = sl2 + w[i] * nl * nl
            acc = ok & (new_l != L[i]) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22) & ~done
            if not qp:
                acc &= sl22 > 0
            L[i] = np.where(acc, (new_l & 0xFF) if qp else new_l, L[i])
            sumlx = np.where(acc, slx2, sumlx)
            suml2 = np.where(acc, sl22, suml2)
            n_changed += acc
        done |= n_changed == 0
        passes += n_changed > 0
    return L, sumlx, suml2, passes


@pytest.mark.parametrize("qp", [False, True])
def test_round_based_itry_passes_equal_the_c_loop(qp):
    rng = np.random.default_rng(11)
    n, m = 16, 20000
    x = (rng.uniform(-1, 1, (n, m)) * 10.0 ** rng.integers(-3, 3, m)).astype(F32)
    if qp:
        x = np.abs(x)
        w = rng.random((n, m)).astype(F32)
        lo, hi = 0, 15
        L = np.minimum(nearest_int((F32(15) / x.max(0)) * x), hi) & 0xFF
    else:
        w = x * x
        lo, hi = -4, 3
        L = np.clip(nearest_int((F32(-4) / x[np.abs(x).argmax(0), np.arange(m)]) * x), lo, hi)
    wx = w * x
    Lf = L.astype(F32)
    sumlx = kquants_search.seq_sum(wx * Lf)
    suml2 = kquants_search.seq_sum(w * Lf * Lf)
    with np.errstate(all="ignore"):
        want = _refine_sequential(x, w, wx, L, sumlx, suml2, lo, hi, qp)
    got_L = L.copy()
    s1, s2 = kquants_search._refine(x, w, wx, got_L, sumlx.copy(), suml2.copy(), wx * Lf, w * Lf * Lf, lo, hi, qp)
    np.testing.assert_array_equal(got_L, want[0])
    np.testing.assert_array_equal(s1.view(np.int32), want[1].view(np.int32))
    np.testing.assert_array_equal(s2.view(np.int32), want[2].view(np.int32))
    # the data exercised every pass, including groups still changing in the fifth
    assert np.bincount(want[3], minlength=6)[1:].min() > 0, np.bincount(want[3])


# ----------------------------------------------------------------------------- oracle suite

@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("n_per_row", [256, 1280, 4096])
@pytest.mark.parametrize("weights", ["none", "imatrix", "sparse"])
def test_random_vs_oracle(qtype, n_per_row, weights):
    rng = np.random.default_rng(n_per_row + len(weights) + TYPES.index(qtype))
    x = _random(rng, 6, n_per_row)
    qw = _imatrix(rng, n_per_row, weights)
    assert_same_bytes(quantize(x, qtype, qw), oracle_quantize(x, qtype, qw), qtype, x)


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("case", EDGE_CASES)
@pytest.mark.parametrize("weights", ["none", "sparse"])
def test_edge_cases_vs_oracle(qtype, case, weights):
    rng = np.random.default_rng(EDGE_CASES.index(case))
    x = _edge(case, rng)
    qw = _imatrix(rng, x.shape[1], weights)
    assert_same_bytes(quantize(x, qtype, qw), oracle_quantize(x, qtype, qw), qtype, x)


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_weight_like_tensor_vs_oracle(qtype):
    # a realistic weight matrix: per-row scales, heavy tails, imatrix with a few dominant channels
    rng = np.random.default_rng(5)
    x = (rng.standard_t(4, (16, 2048)) * rng.uniform(0.005, 0.05, (16, 1))).astype(F32)
    qw = (rng.gamma(0.5, 1.0, 2048) * (1 + 50 * (rng.random(2048) < 0.01))).astype(F32)
    for w in (None, qw):
        assert_same_bytes(quantize(x, qtype, w), oracle_quantize(x, qtype, w), qtype, x)
