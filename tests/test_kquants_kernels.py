"""The k-quant kernels (kernels/kquants.cu) run through the emulated device, byte for byte.

Default suite: the committed golden vectors (tests/golden, every edge case of cases.py, with and without
an imatrix), the dequantize kernels against gguf's numpy dequantizers, all-zero input, and the NaN
check: the GPU-NaN build (test_conformance.gpu_nan_kernel_dir: the GPU code path, with a GPU's NaN bits,
canonical 0x7FFFFFFF instead of x86's default NaN 0xFFC00000) must give the same bytes as the plain host
build on denormal and huge inputs, the blocks where NaNs occur.
Oracle suite: edge-case tensors with and without importance weights, MoE slabs, F16/BF16 sources and
the requantize path (blocks with inf scales too) against llama.cpp's ggml_quantize_chunk /
dequantize_row_q*_K.
Cross-backend conformance (numpy vs emulated vs cuda) lives in test_conformance.py.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from gpuquant.backends import SlabJob
from gpuquant.backends import kernels as K
from gpuquant.backends.emulated import EmulatedDevice
from gpuquant.quants import QUANT_SIZES
from gpuquant.quants import GGMLQuantizationType as T
from tests.oracle import lib_dir, oracle_quantize, requires_oracle
from tests.test_conformance import SCALE_OFFSETS, GpuNanDevice, gpu_nan_kernel_dir

TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
QK_K = 256
F32 = np.float32


@pytest.fixture(scope="module")
def dev():
    d = EmulatedDevice(threads=2)
    yield d
    d.close()


@pytest.fixture(scope="module")
def gpu_nan_dev(tmp_path_factory):
    d = GpuNanDevice(gpu_nan_kernel_dir(tmp_path_factory.mktemp("gpu_nan")))
    yield d
    d.close()


def run_kernels(dev, src: np.ndarray, src_type: T, dst_type: T, qw: np.ndarray | None = None,
                n_expert: int = 1) -> np.ndarray:
    """Quantize ``src`` rows (``(nrows, n_per_row)`` of the source type's element dtype, or raw bytes of
    a quantized source with ``n_per_row`` given by the float rows) through ``kernels.plan``."""
    nrows = src.shape[0]
    block, tsize = QUANT_SIZES[src_type]
    n_per_row = src.shape[1] if src.dtype != np.uint8 else src.shape[1] // tsize * block
    job = SlabJob(src_type, dst_type, n_per_row, nrows // n_expert, n_expert, has_quant_weights=qw is not None)
    dst = np.zeros(job.dst_bytes, np.uint8)
    w = None if qw is None else np.ascontiguousarray(qw, F32).reshape(-1)
    dev.run_plan(job, np.ascontiguousarray(src).reshape(-1).view(np.uint8), dst, w)
    return dst.reshape(nrows, -1)


def assert_same_bytes(got: np.ndarray, want: np.ndarray, qtype: T, what: str = "") -> None:
    """Byte equality; on mismatch name the first differing super-block and its bytes."""
    assert got.shape == want.shape, f"{qtype.name} {what}: shape {got.shape}, expected {want.shape}"
    if np.array_equal(got, want):
        return
    tsize = QUANT_SIZES[qtype][1]
    g, w = got.reshape(-1, tsize), want.reshape(-1, tsize)
    bad = np.flatnonzero((g != w).any(axis=1))
    cols = np.flatnonzero(g[bad[0]] != w[bad[0]])
    raise AssertionError(f"{qtype.name} {what}: {bad.size}/{g.shape[0]} super-blocks differ; first {bad[0]}, "
                         f"bytes {cols[:12].tolist()}: got {g[bad[0]][cols[:12]].tolist()}, "
                         f"want {w[bad[0]][cols[:12]].tolist()}")


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


def weights(kind: str, rng, n: int) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "imatrix":  # squared activations, as llama-imatrix collects
        return (rng.standard_normal(n) ** 2).astype(F32)
    w = (10.0 ** rng.uniform(-5, 5, n)).astype(F32)  # "sparse": zeros and decades apart
    w[rng.random(n) < 0.4] = 0
    return w


EDGE_CASES = ["normal", "zero_parts", "constant", "one_sided", "integers", "tiny", "denormal", "huge",
              "huge_sub", "mixed_scales", "spikes"]
NAN_CASES = ["denormal", "huge", "huge_sub", "mixed_scales", "spikes"]


# ----------------------------------------------------------------------------- default suite

@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("weighted", [False, True])
def test_all_zero_input_is_all_zero_bytes(dev, qtype, weighted):
    x = np.zeros((3, 512), F32)
    qw = np.ones((1, 512), F32) if weighted else None
    q = run_kernels(dev, x, T.F32, qtype, qw)
    assert q.shape == (3, 2 * QUANT_SIZES[qtype][1])
    assert not q.any()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf(dev, qtype):
    from gguf.quants import dequantize

    rng = np.random.default_rng(5)
    nrows, nb = 5, 3
    tsize = QUANT_SIZES[qtype][1]
    q = rng.integers(0, 256, (nrows * nb, tsize), dtype=np.uint8)
    # keep the fp16 scale fields finite: d/dmin of random bytes may be inf/NaN
    half_offsets = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}[qtype]
    for off in half_offsets:
        q[:, off + 1] &= 0x7B  # exponent < 31
    q = q.reshape(nrows, nb * tsize)
    out = np.zeros((nrows, nb * QK_K), F32)
    lib = dev.library("kquants")
    lib.launch_convert(f"dequantize_{qtype.name.lower()}", (1, 1, 1), (64, 1, 1), 1, False, q.ctypes.data,
                       out.ctypes.data, nb * QK_K, nrows)
    want = dequantize(q, qtype).reshape(nrows, nb * QK_K).astype(F32)
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_golden_vectors(dev, gpu_nan_dev, qtype):
    # the committed oracle bytes (tests/golden, helper script make_golden.py) of every edge case in
    # tests/golden/cases.py, without and with importance weights (e<i>_imat is left out when equal)
    inputs, want = GOLDEN / "inputs_b256.npz", GOLDEN / f"{qtype.name}.npz"
    if not (inputs.is_file() and want.is_file()):
        pytest.skip(f"golden vectors {want.name} / {inputs.name} not present")
    inp, gold = np.load(inputs), np.load(want)
    n = 0
    for i, case_id in enumerate(inp["ids"]):
        x, w = inp[f"r{i}"], inp[f"w{i}"]
        none = gold[f"e{i}_none"]
        imat = gold[f"e{i}_imat"] if f"e{i}_imat" in gold else none
        for qw, want in ((None, none), (w, imat)):
            what = f"golden {case_id}" + (" imatrix" if qw is not None else "")
            assert_same_bytes(run_kernels(dev, x, T.F32, qtype, None if qw is None else qw[None]), want, qtype, what)
            got = run_kernels(gpu_nan_dev, x, T.F32, qtype, None if qw is None else qw[None])
            assert_same_bytes(got, want, qtype, what + " (GPU NaN bits)")
        n += 1
    assert n == len(inp["ids"]) > 0


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", NAN_CASES)
@pytest.mark.parametrize("wkind", ["none", "imatrix", "sparse"])
def test_gpu_nan_bits_change_nothing(dev, gpu_nan_dev, qtype, case, wkind):
    rng = np.random.default_rng([NAN_CASES.index(case), len(wkind)])
    x = edge_rows(case, rng)
    qw = weights(wkind, rng, x.shape[1])
    qw = None if qw is None else qw[None]
    want = run_kernels(dev, x, T.F32, qtype, qw)
    got = run_kernels(gpu_nan_dev, x, T.F32, qtype, qw)
    assert_same_bytes(got, want, qtype, f"GPU NaN bits, {case}/{wkind}")


# ----------------------------------------------------------------------------- oracle suite

@requires_oracle
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases_match_oracle(dev, qtype, case):
    rng = np.random.default_rng(EDGE_CASES.index(case))
    x = edge_rows(case, rng)
    for wkind in ("none", "imatrix", "sparse"):
        qw = weights(wkind, rng, x.shape[1])
        got = run_kernels(dev, x, T.F32, qtype, None if qw is None else qw[None])
        assert_same_bytes(got, oracle_quantize(x, qtype, qw), qtype, f"{case}/{wkind}")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("weighted", [False, True])
def test_moe_slab_matches_oracle_per_expert(dev, qtype, weighted):
    # 3 experts of 5 rows, 3 super-blocks per row (5*3 = 15 items: one partial CUDA block per expert)
    rng = np.random.default_rng(11)
    ne, rpe, npr = 3, 5, 768
    x = (rng.standard_normal((ne * rpe, npr)) * rng.uniform(0.01, 10, (ne * rpe, 1))).astype(F32)
    qw = rng.random((ne, npr)).astype(F32) if weighted else None
    got = run_kernels(dev, x, T.F32, qtype, qw, n_expert=ne)
    want = np.concatenate([oracle_quantize(x[e * rpe:(e + 1) * rpe], qtype, None if qw is None else qw[e])
                           for e in range(ne)])
    assert_same_bytes(got, want, qtype, "MoE")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_f16_bf16_sources_match_oracle(dev, qtype):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((67, 256)).astype(F32)  # 67 items: a partial second CUDA block
    qw = (rng.standard_normal(256) ** 2).astype(F32)
    h = x.astype(np.float16)
    b = (x.view(np.uint32) >> 16).astype(np.uint16)
    xb = (b.astype(np.uint32) << 16).view(F32)
    for w in (None, qw):
        wq = None if w is None else w[None]
        assert_same_bytes(run_kernels(dev, h, T.F16, qtype, wq), oracle_quantize(h.astype(F32), qtype, w), qtype, "F16")
        assert_same_bytes(run_kernels(dev, b, T.BF16, qtype, wq), oracle_quantize(xb, qtype, w), qtype, "BF16")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_nan_inf_inputs_match_oracle(dev, qtype):
    # on the host build the kernels read NaN bits as x86 does: quiet and signalling NaNs of either sign and
    # with payloads, and infinities, give llama.cpp's bytes (a GPU keeps no NaN payloads)
    rng = np.random.default_rng(23)
    x = rng.standard_normal((6, 512)).astype(F32)
    u = x.view(np.uint32)
    u[0, ::37] = 0x7FC00000
    u[1, 5::50] = 0xFFC00000
    u[2, 3::50] = 0x7FC12345
    u[3, 100:140] = 0xFFA00001
    u[4, ::64] = 0xFF800000
    u[5, 256:] = 0x7F800000
    for qw in (None, (rng.random(512) + 0.1).astype(F32)):
        got = run_kernels(dev, x, T.F32, qtype, None if qw is None else qw[None])
        assert_same_bytes(got, oracle_quantize(x, qtype, qw), qtype, "NaN/inf inputs")


def _oracle_dequantize(q: np.ndarray, qtype: T, n_per_row: int) -> np.ndarray:
    lib = ctypes.CDLL(str(lib_dir() / "libggml-base.so"))
    fn = getattr(lib, f"dequantize_row_{qtype.name[:2].lower()}_K")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    q = np.ascontiguousarray(q)
    out = np.zeros((q.shape[0], n_per_row), F32)
    fn(q.ctypes.data, out.ctypes.data, out.size)
    return out


@requires_oracle
@pytest.mark.parametrize("src_type", TYPES, ids=lambda t: t.name)
def test_requantize_matches_oracle(dev, src_type):
    # llama-quantize dequantizes a quantized tensor with dequantize_row_q*_K, then quantizes the floats
    rng = np.random.default_rng(17)
    x = (rng.standard_normal((4, 512)) * 2).astype(F32)
    q_src = oracle_quantize(x, src_type)
    floats = _oracle_dequantize(q_src, src_type, 512)
    dst_type = T.Q4_K if src_type != T.Q4_K else T.Q6_K
    qw = (rng.standard_normal(512) ** 2).astype(F32)
    for w in (None, qw):
        got = run_kernels(dev, q_src, src_type, dst_type, None if w is None else w[None])
        assert_same_bytes(got, oracle_quantize(floats, dst_type, w), dst_type, f"from {src_type.name}")


@requires_oracle
@pytest.mark.parametrize("src_type", TYPES, ids=lambda t: t.name)
def test_requantize_inf_scales_matches_oracle(dev, gpu_nan_dev, src_type):
    # a block whose d (or dmin) is fp16 inf dequantizes to infs and inf*0 NaNs (x86's default NaN in C):
    # requantizing it must give llama.cpp's bytes, on the host build and on the GPU code path
    rng = np.random.default_rng(19)
    x = (rng.standard_normal((4, 512)) * 2).astype(F32)
    q_src = oracle_quantize(x, src_type)
    blocks = q_src.reshape(-1, QUANT_SIZES[src_type][1])
    for k, off in enumerate(SCALE_OFFSETS[src_type]):
        blocks[k::3, off:off + 2] = np.array([0x7C00], np.uint16).view(np.uint8)
    floats = _oracle_dequantize(q_src, src_type, 512)
    assert np.isnan(floats).any() and np.isinf(floats).any()
    for dst_type in (T.F16, T.BF16, T.Q4_0, T.Q5_1, T.Q8_0, T.IQ4_NL, T.Q2_K, T.Q4_K, T.Q6_K):
        for w in (None, (rng.standard_normal(512) ** 2).astype(F32)):
            want = oracle_quantize(floats, dst_type, w)
            for d, what in ((dev, "host"), (gpu_nan_dev, "GPU NaN bits")):
                got = run_kernels(d, q_src, src_type, dst_type, None if w is None else w[None])
                assert_same_bytes(got, want, dst_type, f"from {src_type.name} with inf scales, {what}")
