"""K-quants Q2_K..Q6_K: what is particular to the K-quant numpy reference.

Invariants the C code fixes (all-zero input, chunking), the exact shortcuts of the searches (``common``,
``kquants_search``) against the plain element-by-element C loop, and inputs aimed at the sub-block and
super-block scale searches against llama.cpp. Byte identity on every device is test_conformance.py's.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gpuquant.quants import QUANT_SIZES, GGMLQuantizationType, quantize
from gpuquant.quants import common, kquants, kquants_search
from gpuquant.quants.common import F32, nearest_int, seq_sum
from tests.oracle import oracle_quantize, requires_oracle
from tests import helpers as H
from tests.helpers import assert_bytes

TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def _imatrix(rng, n_per_row, kind):
    if kind == "none":
        return None
    if kind == "imatrix":  # squared activations, as llama-imatrix collects
        return (rng.standard_normal(n_per_row) ** 2).astype(F32)
    # sparse: many zero weights, the rest spread over decades
    w = (10.0 ** rng.uniform(-3, 2, n_per_row)).astype(F32)
    w[rng.random(n_per_row) < 0.4] = 0
    return w


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
    x = rng.standard_normal((5, 768)).astype(F32)
    qw = _imatrix(rng, 768, "imatrix")
    whole = quantize(x, qtype, qw)
    monkeypatch.setattr(kquants, "CHUNK_SUPERBLOCKS", 4)
    assert_bytes(quantize(x, qtype, qw), whole, qtype, x, "chunks of 4 super-blocks")


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
        got = common.levels_f32(t.copy(), lo, hi, exact=True)
        np.testing.assert_array_equal(got, want)  # equal values; -0.0 for 0 is allowed (see the module doc)
    # 4194303.5 rounds to 2**22, where the magic-number trick wraps: the float path must not be used
    assert not common.below_exact(np.array([4194303.5, 1.0], F32))
    assert np.clip(nearest_int(np.array([4194303.5], F32)), 0, 2**23)[0] == 0
    assert not common.below_exact(np.array([np.nan], F32))


def test_first_absmax_equals_the_c_loop():
    # ``if (fabsf(x) > amax) { amax = fabsf(x); max = x; }``: ties of +a and -a, signed zeros, NaN
    rng = np.random.default_rng(4)
    x = rng.integers(-3, 4, (16, 3000)).astype(F32)
    x[:, :10] = 0
    x[:, 10:20] = -0.0
    x[5, 20:30] = -0.0
    for data in (x, np.where(np.arange(3000) == 40, np.nan, x).astype(F32)):  # NaN: the loop fallback
        amax = np.zeros(3000, F32)
        vmax = np.zeros(3000, F32)
        for i in range(16):
            gt = np.abs(data[i]) > amax
            amax = np.where(gt, np.abs(data[i]), amax)
            vmax = np.where(gt, data[i], vmax)
        got = common.absmax_first(data)
        np.testing.assert_array_equal(got[0].view(np.int32), amax.view(np.int32))
        np.testing.assert_array_equal(got[1].view(np.int32), vmax.view(np.int32))


def test_first_min_max_equals_the_c_loop():
    # ``min = max = x[0]; if (x[i] < min) min = x[i]; if (x[i] > max) max = x[i];`` (make_qkx2/3_quants):
    # the sign of a zero minimum is the first zero's (it is written out as Q4_1/Q5_1's m)
    rng = np.random.default_rng(6)
    x = rng.integers(0, 3, (32, 4000)).astype(F32)
    x[rng.random(x.shape) < 0.3] = -0.0
    x[:, :10] = 0
    x[:, 10:20] = -0.0
    x[:, 20:40] = rng.integers(-2, 3, (32, 20))
    later_nan, first_nan = x.copy(), x.copy()
    later_nan[7, 50] = np.nan  # skipped by the comparisons (the loop fallback)
    first_nan[0, 60] = np.nan  # a NaN first element sticks
    for data in (x, later_nan, first_nan):
        mn, mx = data[0].copy(), data[0].copy()
        for v in data[1:]:
            mn = np.where(v < mn, v, mn)
            mx = np.where(v > mx, v, mx)
        got_mn, got_mx = common._first_min_max_from0(data)
        np.testing.assert_array_equal(got_mn.view(np.int32), mn.view(np.int32))
        np.testing.assert_array_equal(got_mx, mx)  # the sign of a zero maximum is not used


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
    sumlx = seq_sum(wx * Lf)
    suml2 = seq_sum(w * Lf * Lf)
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
def test_sub_block_scales_vs_oracle(qtype):
    # neighbouring 16-value sub-blocks differ by decades: the super-block scale search of every type
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 1024)) * (10.0 ** rng.integers(-8, 4, (4, 64))).repeat(16, axis=1)
    x = x.astype(F32)
    for w in (None, _imatrix(rng, 1024, "sparse")):
        assert_bytes(quantize(x, qtype, w), oracle_quantize(x, qtype, w), qtype, x, "sub-block scales")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_weight_like_tensor_vs_oracle(qtype):
    # a realistic weight matrix: per-row scales, heavy tails, imatrix with a few dominant channels
    rng = np.random.default_rng(5)
    x = (rng.standard_t(4, (16, 2048)) * rng.uniform(0.005, 0.05, (16, 1))).astype(F32)
    qw = (rng.gamma(0.5, 1.0, 2048) * (1 + 50 * (rng.random(2048) < 0.01))).astype(F32)
    for w in (None, qw):
        assert_bytes(quantize(x, qtype, w), oracle_quantize(x, qtype, w), qtype, x, "weight-like")


# ----------------------------------------------------------------------------- the searches' corners, every device

def edge_rows(case: str, rng) -> np.ndarray:
    """Four rows of 512 values stressing one corner of the C code each."""
    x = rng.standard_normal((4, 512))
    sub = rng.random((4, 32)).repeat(16, axis=1) < 0.3  # a random 30% of the 16-value sub-blocks
    if case == "normal":
        pass
    elif case == "zero_parts":  # whole super-blocks and single sub-blocks of zeros
        x[:, :256] = 0
        x[sub] = 0
    elif case == "constant":  # max == min
        x[0], x[1], x[2, :256], x[3, ::2] = 0.37, -1.5, 0.25, 3.0
    elif case == "one_sided":
        x[0], x[1] = np.abs(x[0]), -np.abs(x[1])
    elif case == "integers":  # exact rounding ties
        x = rng.integers(-8, 8, (4, 512)) * 0.5
    elif case == "tiny":  # around GROUP_MAX_EPS
        x *= np.array([[1e-16], [1e-14], [1e-30], [1e-20]])
    elif case == "denormal":  # nmax/(max - min) = inf inside the qkx search
        x *= 1e-40
        x[2:][sub[2:]] *= 1e38  # denormal sub-blocks next to normal ones
    elif case == "huge":  # x*x = inf; scales past the fp16 range (d = inf)
        x *= np.array([[1e30], [1e19], [1e6], [1.0]])
        x[3][sub[3]] *= 5e37
    elif case == "huge_sub":  # w*x overflows in some sub-blocks only, l = 0 there: NaN sub-block scales
        x[sub] *= 1e17
        x[:, 5::16] = 1.0
    elif case == "mixed_scales":  # neighbouring sub-blocks decades apart
        x *= 10.0 ** rng.integers(-8, 8, (4, 32)).repeat(16, axis=1)
    elif case == "spikes":
        x *= 1e-3
        x[rng.random((4, 512)) < 0.05] = 1e9
    else:
        raise ValueError(case)
    return np.ascontiguousarray(x, dtype=F32)


EDGE_CASES = ["normal", "zero_parts", "constant", "one_sided", "integers", "tiny", "denormal", "huge",
              "huge_sub", "mixed_scales", "spikes"]
NAN_CASES = ["denormal", "huge", "huge_sub", "mixed_scales", "spikes"]


@pytest.fixture(scope="module", params=H.DEVICES)
def device(request):
    d = H.make_device(request.param)
    yield d
    d.close()


def _run(dev, x, qtype, qw):
    return H.run_device(dev, x, "F32", qtype, x.shape[1], None if qw is None else qw[None])


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("case", EDGE_CASES)
def test_search_corners_vs_oracle(device, qtype, case):
    """Rows aimed at one corner of the K-quant scale searches each (16-value sub-blocks of zeros, denormal
    sub-blocks next to normal ones, w*x overflowing in one sub-block, ...), on every device."""
    rng = np.random.default_rng(EDGE_CASES.index(case))
    x = edge_rows(case, rng)
    for wkind in ("none", "imatrix", "sparse"):
        qw = _imatrix(rng, x.shape[1], wkind)
        assert_bytes(_run(device, x, qtype, qw), oracle_quantize(x, qtype, qw), qtype, x, f"{case}/{wkind}")


@pytest.fixture(scope="module")
def gpu_nan_pair(tmp_path_factory):
    host = H.make_device("emulated")
    gpu = H.gpu_nan_device(H.gpu_nan_kernel_dir(tmp_path_factory.mktemp("gpu_nan")))
    yield host, gpu
    host.close()
    gpu.close()


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("case", NAN_CASES)
@pytest.mark.parametrize("wkind", ["none", "imatrix", "sparse"])
def test_search_corners_with_gpu_nan_bits(gpu_nan_pair, qtype, case, wkind):
    """The corners where the searches make NaNs give the same bytes with a GPU's NaN bits."""
    host, gpu = gpu_nan_pair
    rng = np.random.default_rng([NAN_CASES.index(case), len(wkind)])
    x = edge_rows(case, rng)
    qw = _imatrix(rng, x.shape[1], wkind)
    assert_bytes(_run(gpu, x, qtype, qw), _run(host, x, qtype, qw), qtype, x, f"GPU NaN bits, {case}/{wkind}")


# ----------------------------------------------------------------------------- kernel resources

def _ptxas_kernels(log: str) -> dict[str, tuple[int, int, int]]:
    """``{kernel: (stack bytes, spill bytes, registers)}`` from ptxas' ``-v`` report."""
    out, name, stack, spill = {}, None, 0, 0
    for ln in log.splitlines():
        if m := re.search(r"Function properties for (\w+)", ln):
            name = m.group(1)
        elif name and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", ln)):
            stack, spill = int(m.group(1)), int(m.group(2)) + int(m.group(3))
        elif name and (m := re.search(r"Used (\d+) registers", ln)):
            out[name] = (stack, spill, int(m.group(1)))
            name = None
    return out


def test_quantize_kernels_keep_no_local_memory_on_sm_90():
    """Every K-quant quantize kernel (both instantiations, every source type) as ptxas builds it for sm_90:
    a 0-byte stack frame, no spills, at most 128 registers (the per-sub-block design of kquants_block.cuh;
    the one-thread-per-super-block kernels kept 1.5-1.7 KB per thread in local memory)."""
    from gpuquant.backends import kernels as K
    from gpuquant.backends import nvrtc

    try:
        nv = nvrtc.load()
    except Exception as e:  # noqa: BLE001 - any failure to find libnvrtc
        pytest.skip(f"libnvrtc not found: {e}")
    report = _ptxas_kernels(nvrtc.compile_family("kquants", "sm_90", nv=nv).log)
    names = [n for t in TYPES for n in K.KERNELS[GGMLQuantizationType[t]].quantize_kernels()]
    assert len(names) == 30 and sum("_w_" in n for n in names) == 15, names
    missing = [n for n in names if n not in report]
    assert not missing, f"ptxas reported no resources for {missing}"
    bad = {n: report[n] for n in names if report[n][0] or report[n][1] or report[n][2] > 128}
    assert not bad, f"(stack, spill, registers) over the limits: {bad}"
