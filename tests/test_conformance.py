"""Cross-backend conformance: the kernels (run on the emulated device) against the numpy reference and the
golden vectors, byte for byte, for every type that has both a kernel and a numpy class.

Covered per type: the golden edge cases (with and without importance weights), F32/F16/BF16 sources,
MoE slabs (n_expert > 1, each expert with its own weights), the dequantize -> requantize path, and the
Device interface (streams, events). Plus the emulator's own faithfulness: the CUDA geometry it presents,
__shared__/__syncthreads through fibers, thread-count independence; and the GPU code path on the host: a
build whose NaN bits are a GPU's (canonical 0x7FFFFFFF instead of x86's 0xFFC00000) giving the same bytes
on the inputs that make NaNs, its dequantize kernels storing every NaN through gq_x86_nan.
``tests/test_gpu.py`` runs the same checks on a CUDA device.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from gpuquant.backends import SlabJob
from gpuquant.backends import kernels as K
from gpuquant.backends.emulated import EmulatedDevice, KernelLibrary, compile_family
from gpuquant.quants import QUANT_SIZES, quantize, registered
from gpuquant.quants import GGMLQuantizationType as T
from tests.golden import TYPES as GOLDEN_TYPES
from tests.golden import first_difference, iter_cases
from tests.oracle import lib_dir, oracle_quantize, requires_oracle

F32 = np.float32
FAMILIES = K.available_families()
#: every type with a kernel file present and a numpy reference class
TYPES = [t for t in registered() if t in K.KERNELS and K.KERNELS[t].family in FAMILIES]
QUANTIZED = [t for t in TYPES if K.KERNELS[t].dequantize]


def _id(t: T) -> str:
    return t.name


# ------------------------------------------------------------------------------------------------------
# helpers shared with test_gpu.py
# ------------------------------------------------------------------------------------------------------


def run_device(dev, src: np.ndarray, src_type: T, dst_type: T, n_per_row: int, qw: np.ndarray | None = None,
               n_expert: int = 1) -> np.ndarray:
    """Quantize one slab through the Device interface: upload, quantize, download on one stream.

    ``src``: raw source bytes (any dtype, C order) of ``nrows`` rows; ``qw``: float32 ``(n_expert, n)``.
    """
    raw = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
    nrows = raw.size // QUANT_SIZES[src_type][1] * QUANT_SIZES[src_type][0] // n_per_row
    job = SlabJob(src_type, dst_type, n_per_row, nrows // n_expert, n_expert, has_quant_weights=qw is not None)
    assert job.src_bytes == raw.size
    s = dev.stream()
    h_in = dev.host_buffer(raw.size)
    h_in[:] = raw
    d_in = dev.device_buffer(raw.size)
    d_out = dev.device_buffer(job.dst_bytes)
    h_out = dev.host_buffer(job.dst_bytes)
    d_qw = None
    if qw is not None:
        wraw = np.ascontiguousarray(qw, F32).reshape(-1).view(np.uint8)
        assert wraw.size == job.quant_weight_bytes
        h_qw = dev.host_buffer(wraw.size)
        h_qw[:] = wraw
        d_qw = dev.device_buffer(wraw.size)
        dev.upload(d_qw, h_qw, wraw.size, s)
    dev.upload(d_in, h_in, raw.size, s)
    dev.quantize(job, d_in, d_out, d_qw, s)
    dev.download(h_out, d_out, job.dst_bytes, s)
    dev.record(s).synchronize()
    return np.array(h_out[: job.dst_bytes]).reshape(nrows, -1)


def assert_bytes(got: np.ndarray, want: np.ndarray, qtype: T, rows: np.ndarray | None = None, what: str = ""):
    block, tsize = QUANT_SIZES[qtype]
    diff = first_difference(got, want, tsize, block, rows)
    assert diff is None, f"{qtype.name} {what}: {diff}"


def to_f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(raw F16 rows, the float32 values ggml's to_float gives for them)."""
    h = x.astype(np.float16)
    return h, h.astype(F32)


def to_bf16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(raw BF16 rows (truncated bits), their float32 values)."""
    bits = (x.astype(F32).view(np.uint32) >> 16).astype(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(F32)


def make_rows(qtype: T, nrows: int, n_blocks: int, seed: int) -> np.ndarray:
    """Random rows with a few edge blocks: zeros, denormals, a huge block, a constant block."""
    block = QUANT_SIZES[qtype][0]
    n = max(1, n_blocks) * max(block, 32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nrows, n)).astype(F32) * F32(0.05)
    if nrows >= 4 and qtype not in (T.F32, T.F16, T.BF16):
        x[0, :32] = 0
        x[1, :32] = (rng.standard_normal(32) * 1e-40).astype(F32)
        x[2, -32:] = (rng.standard_normal(32) * 1e4).astype(F32)
        x[3, 32:64] = F32(0.75)
    return x


def reference(x: np.ndarray, qtype: T, qw: np.ndarray | None, n_expert: int = 1) -> np.ndarray:
    """The numpy reference, expert by expert."""
    rows = x.reshape(n_expert, -1, x.shape[-1])
    outs = [quantize(rows[e], qtype, None if qw is None else qw[e]) for e in range(n_expert)]
    return np.concatenate(outs, axis=0)


# ------------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev():
    d = EmulatedDevice(threads=2)
    yield d
    d.close()


# ------------------------------------------------------------------------------------------------------
# the numbers the kernels hard-code
# ------------------------------------------------------------------------------------------------------


def test_kvalues_table_matches_gguf():
    text = (K.kernel_dir() / "common.cuh").read_text()
    m = re.search(r"gq_kvalues_iq4nl\[16\]\s*=\s*\{([^}]*)\}", text)
    assert m, "gq_kvalues_iq4nl not found in common.cuh"
    values = tuple(int(v) for v in m.group(1).replace("\n", " ").split(",") if v.strip())
    assert values == tuple(int(v) for v in gguf.quants.IQ4_NL.kvalues)


def test_table_block_sizes_match_quant_sizes():
    for t, spec in K.KERNELS.items():
        if not spec.flat:
            assert spec.item_elems == QUANT_SIZES[t][0], t.name


# ------------------------------------------------------------------------------------------------------
# golden vectors (llama.cpp's bytes) and the numpy reference
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [t for t in TYPES if t.name in GOLDEN_TYPES], ids=_id)
def test_golden(dev, qtype: T):
    failures, first, n = [], None, 0
    for case_id, rows, imatrix, want in iter_cases(qtype.name):
        n += 1
        qw = None if imatrix is None else imatrix[None, :]
        got = run_device(dev, rows, T.F32, qtype, rows.shape[1], qw)
        block, tsize = QUANT_SIZES[qtype]
        diff = first_difference(got, want, tsize, block, rows)
        if diff is not None:
            failures.append(case_id)
            first = first or f"{case_id}: {diff}"
    assert n > 0
    assert not failures, f"{qtype.name}: {len(failures)}/{n} golden cases differ: {failures[:8]}\nfirst: {first}"


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("src", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_matches_numpy(dev, qtype: T, src: str, weighted: bool):
    nb = 3 if QUANT_SIZES[qtype][0] == 256 else 12
    x = make_rows(qtype, 6, nb, seed=int(qtype) * 7 + len(src))
    n = x.shape[1]
    src_type, raw, values = {"f32": (T.F32, x, x), "f16": (T.F16, *to_f16(x)),
                             "bf16": (T.BF16, *to_bf16(x))}[src]
    qw = None
    if weighted:
        qw = (np.random.default_rng(1).random((1, n)) + 0.01).astype(F32)
        qw[0, ::7] = 0
    got = run_device(dev, raw, src_type, qtype, n, qw)
    assert_bytes(got, reference(values, qtype, qw), qtype, values, f"from {src}")


@pytest.mark.parametrize("src", ["f32", "bf16"])
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_moe_slab(dev, qtype: T, src: str):
    """3 experts of 5 rows, each expert with its own importance weights, in one launch."""
    n_expert, rpe = 3, 5
    nb = 2 if QUANT_SIZES[qtype][0] == 256 else 8
    x = make_rows(qtype, n_expert * rpe, nb, seed=100 + int(qtype))
    x *= np.repeat(np.array([1.0, 30.0, 1e-3], F32), rpe)[:, None]  # experts of different scale
    n = x.shape[1]
    src_type, raw, values = (T.F32, x, x) if src == "f32" else (T.BF16, *to_bf16(x))
    rng = np.random.default_rng(5)
    qw = (rng.random((n_expert, n)) ** 3 * np.array([[1.0], [1e3], [1e-3]])).astype(F32)
    got = run_device(dev, raw, src_type, qtype, n, qw, n_expert=n_expert)
    assert_bytes(got, reference(values, qtype, qw, n_expert), qtype, values, f"MoE from {src}")
    # and the experts' weights really are per expert: one shared weight row gives other bytes
    if qtype not in (T.F32, T.F16, T.BF16, T.Q8_0):
        same = run_device(dev, raw, src_type, qtype, n, np.repeat(qw[:1], n_expert, 0), n_expert=n_expert)
        assert not np.array_equal(same[rpe:], got[rpe:]), "expert weights ignored"


# ------------------------------------------------------------------------------------------------------
# dequantize -> requantize
# ------------------------------------------------------------------------------------------------------


def _requant_targets(src: T) -> list[T]:
    have = set(TYPES)
    return [t for t in (T.F16, T.F32, T.Q4_0, T.Q5_1, T.IQ4_NL, T.Q6_K) if t in have and t != src]


@pytest.mark.parametrize("src", QUANTIZED, ids=_id)
def test_dequantize_matches_gguf(dev, src: T):
    x = make_rows(src, 4, 2 if QUANT_SIZES[src][0] == 256 else 8, seed=int(src))
    raw = reference(x, src, None)
    got = run_device(dev, raw, src, T.F32, x.shape[1]).view(F32)
    want = gguf.quants.dequantize(raw, src).astype(F32)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("src", QUANTIZED, ids=_id)
def test_requantize(dev, src: T):
    x = make_rows(src, 4, 2 if QUANT_SIZES[src][0] == 256 else 8, seed=50 + int(src))
    raw = reference(x, src, None)
    values = gguf.quants.dequantize(raw, src).astype(F32)
    for dst in _requant_targets(src):
        if values.shape[1] % QUANT_SIZES[dst][0]:
            continue
        qw = (np.random.default_rng(2).random((1, values.shape[1])) + 0.1).astype(F32)
        for w in (None, qw):
            got = run_device(dev, raw, src, dst, values.shape[1], w)
            assert_bytes(got, reference(values, dst, w), dst, values, f"requantized from {src.name}")


# ------------------------------------------------------------------------------------------------------
# the emulator itself
# ------------------------------------------------------------------------------------------------------

_SHIM_TEST_CU = r"""
#include "common.cuh"
// every index a thread sees, 8 ints per thread
extern "C" __global__ void geometry(const void* in, void* out, long long n_per_row, long long nrows) {
    const long long b = ((long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const long long t = b * (blockDim.x * blockDim.y * blockDim.z)
                      + (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    int* o = (int*)out + 8 * t;
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
    o[6] = blockDim.x * blockDim.y * blockDim.z; o[7] = gridDim.x * gridDim.y * gridDim.z;
}
// a block reverses its slice through shared memory, then thread 0 sums the reversed values in order
extern "C" __global__ void reverse_sum(const void* in, void* out, long long n_per_row, long long nrows) {
    __shared__ float buf[64];
    __shared__ float rev[64];
    const float* x = (const float*)in + blockIdx.x * 64;
    float* y = (float*)out + blockIdx.x * 65;
    buf[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    rev[threadIdx.x] = buf[63 - threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = rev[threadIdx.x];
    if (threadIdx.x == 0) {
        float s = 0;
        for (int i = 0; i < 64; ++i) s += rev[i];
        y[64] = s;
    }
}
"""


@pytest.fixture(scope="module")
def shim_lib(tmp_path_factory) -> KernelLibrary:
    d = tmp_path_factory.mktemp("shim_kernels")
    shutil.copy(K.kernel_dir() / "common.cuh", d / "common.cuh")
    (d / "shimtest.cu").write_text(_SHIM_TEST_CU)
    return KernelLibrary(compile_family("shimtest", kernel_dir=d))


@pytest.mark.parametrize("threads", [1, 3])
def test_emulator_geometry(shim_lib: KernelLibrary, threads: int):
    grid, block = (3, 2, 4), (5, 3, 2)
    nthreads = int(np.prod(grid) * np.prod(block))
    out = np.full((nthreads, 8), -1, np.int32)
    shim_lib.launch_convert("geometry", grid, block, threads, False, 0, out.ctypes.data, 0, 0)
    want = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for tz in range(block[2]):
                    for ty in range(block[1]):
                        for tx in range(block[0]):
                            want.append((tx, ty, tz, bx, by, bz, 30, 24))
    np.testing.assert_array_equal(out, np.array(want, np.int32))


def test_emulator_syncthreads(shim_lib: KernelLibrary):
    nblocks = 9
    x = np.random.default_rng(0).standard_normal((nblocks, 64)).astype(F32)
    out = np.zeros((nblocks, 65), F32)
    shim_lib.launch_convert("reverse_sum", (nblocks, 1, 1), (64, 1, 1), 2, True, x.ctypes.data, out.ctypes.data, 0, 0)
    rev = x[:, ::-1]
    np.testing.assert_array_equal(out[:, :64], rev)
    s = np.zeros(nblocks, F32)
    for i in range(64):
        s = s + rev[:, i]
    np.testing.assert_array_equal(out[:, 64], s)


@pytest.mark.parametrize("qtype", [t for t in (T.Q4_1, T.IQ4_XS, T.F16) if t in TYPES], ids=_id)
def test_thread_count_does_not_matter(qtype: T):
    x = make_rows(qtype, 12, 4 if QUANT_SIZES[qtype][0] == 256 else 24, seed=9)
    qw = (np.random.default_rng(3).random((1, x.shape[1])) + 0.5).astype(F32)
    outs = []
    for threads in (1, 2, 5):
        d = EmulatedDevice(threads=threads)
        outs.append(run_device(d, x, T.F32, qtype, x.shape[1], qw))
        d.close()
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


# ------------------------------------------------------------------------------------------------------
# the GPU code path on the host: NaN bits of a GPU
# ------------------------------------------------------------------------------------------------------

#: (pattern, replacement) edits of common.cuh for the GPU-NaN build: a computed NaN read through
#: gq_float_bits has a GPU's bits (canonical 0x7FFFFFFF, not x86's default NaN 0xFFC00000), and the NaN a
#: dequantize kernel stores through gq_x86_nan is a marker, so that the tests see it went through.
GPU_NAN_EDITS = (
    (r"(uint32_t\s+gq_float_bits\s*\(\s*float\s+(\w+)\s*\)\s*\{)", r"\1 if (\2 != \2) return 0x7FFFFFFFu;"),
    (r"(#define\s+GQ_X86_DEFAULT_NAN\s+)0xFFC00000u", r"\g<1>0xFFC0BEEFu"),
)
#: the bits gq_x86_nan stores in the GPU-NaN build (x86's default NaN elsewhere)
GPU_NAN_MARKER = 0xFFC0BEEF


def gpu_nan_kernel_dir(d: Path) -> Path:
    """Writes into ``d`` the kernel folder built as for a GPU (GQ_PORTABLE: the NaN and float->int guards
    kept) with the GPU_NAN_EDITS. Every computed NaN whose bits matter then has the GPU's bits, so this
    build gives the plain host build's bytes only if the guards in common.cuh answer for every NaN."""
    text = (K.kernel_dir() / "common.cuh").read_text()
    for pat, rep in GPU_NAN_EDITS:
        text, n = re.subn(pat, rep, text, count=1)
        assert n == 1, f"common.cuh: no match for {pat!r}; update GPU_NAN_EDITS"
    (d / "common.cuh").write_text("#define GQ_PORTABLE 1  // the GPU code path on the host\n" + text)
    for src in [*K.kernel_dir().glob("*.cu"), *K.kernel_dir().glob("*.cuh")]:
        if src.name != "common.cuh":
            shutil.copy(src, d / src.name)
    return d


class GpuNanDevice(EmulatedDevice):
    """The emulated device running the GPU-NaN build of every family (see gpu_nan_kernel_dir)."""

    def __init__(self, kdir: Path) -> None:
        super().__init__(threads=2, precompile=False)
        self._kdir = kdir
        self._gpu_nan_libs: dict[str, KernelLibrary] = {}

    def library(self, family: str) -> KernelLibrary:
        if family not in self._gpu_nan_libs:
            self._gpu_nan_libs[family] = KernelLibrary(compile_family(family, kernel_dir=self._kdir))
        return self._gpu_nan_libs[family]


@pytest.fixture(scope="module")
def gpu_nan_dev(tmp_path_factory) -> GpuNanDevice:
    d = GpuNanDevice(gpu_nan_kernel_dir(tmp_path_factory.mktemp("gpu_nan")))
    yield d
    d.close()


@pytest.mark.parametrize("qtype", [t for t in TYPES if t.name in GOLDEN_TYPES], ids=_id)
def test_gpu_nan_bits_change_nothing(dev, gpu_nan_dev, qtype: T):
    """Denormal and huge golden inputs (where 1/d = inf and x*x overflow make NaNs) give the same bytes
    when every computed NaN is the GPU's canonical NaN."""
    n = 0
    for case_id, rows, imatrix, _ in iter_cases(qtype.name):
        if case_id.split(":")[1].split("/")[0] not in ("denormal", "large", "outlier", "block_scales"):
            continue
        n += 1
        qw = None if imatrix is None else imatrix[None]
        want = run_device(dev, rows, T.F32, qtype, rows.shape[1], qw)
        got = run_device(gpu_nan_dev, rows, T.F32, qtype, rows.shape[1], qw)
        assert_bytes(got, want, qtype, rows, f"GPU NaN bits, {case_id}")
    assert n > 0


def scale_edge_blocks(qtype: T, nrows: int, n_per_row: int, seed: int) -> np.ndarray:
    """Random blocks of a quantized type whose fp16 scales are inf, -inf, NaN, zero or finite."""
    block, tsize = QUANT_SIZES[qtype]
    raw = np.random.default_rng(seed).integers(0, 256, (nrows, n_per_row // block * tsize), dtype=np.uint8)
    blocks = raw.reshape(-1, tsize)
    halves = np.array([0x7C00, 0xFC00, 0x7E00, 0x0000, 0x3C00, 0x2E66, 0x7C00, 0xB800], np.uint16)
    for k, off in enumerate(SCALE_OFFSETS[qtype]):
        h = halves[(np.arange(blocks.shape[0]) + 3 * k) % halves.size]
        blocks[:, off:off + 2] = h.view(np.uint8).reshape(-1, 2)
    return raw


#: byte offsets of the fp16 fields (d, m / dmin) in each block layout (ggml-common.h)
SCALE_OFFSETS = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,), T.IQ4_NL: (0,),
                 T.IQ4_XS: (0,), T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2),
                 T.Q6_K: (208,)}


@pytest.mark.parametrize("qtype", QUANTIZED, ids=_id)
def test_gpu_nan_dequantize_stores_x86_nans(dev, gpu_nan_dev, qtype: T):
    """Blocks with inf/NaN scales dequantize to the host build's floats, except that every NaN (inf*0, a
    NaN scale) carries the marker of gq_x86_nan: on a GPU each stored NaN is x86's default NaN."""
    n = 4 * max(QUANT_SIZES[qtype][0], 64)
    raw = scale_edge_blocks(qtype, 6, n, seed=int(qtype))
    want = run_device(dev, raw, qtype, T.F32, n).view(np.uint32)
    got = run_device(gpu_nan_dev, raw, qtype, T.F32, n).view(np.uint32)
    nan = np.isnan(want.view(F32))
    assert nan.sum() > 50, "the edge blocks made too few NaNs to check"
    np.testing.assert_array_equal(got[~nan], want[~nan])
    bad = np.flatnonzero(nan & (got != GPU_NAN_MARKER))
    assert bad.size == 0, (f"{bad.size}/{nan.sum()} NaNs not stored through gq_x86_nan; first: row "
                           f"{bad[0] // n}, element {bad[0] % n}, bits {got.reshape(-1)[bad[0]]:#010x}")


def test_supports_and_plan_geometry():
    assert K.supports(T.F16, T.Q4_0) and K.supports(T.Q8_0, T.Q4_0) and not K.supports(T.F16, T.IQ2_XXS)
    p = K.plan(T.Q5_1, T.Q4_0, 4096, 96, 8, True)
    names = [ln.kernel for ln in p.launches]
    assert names == ["dequantize_q5_1", "rowstat_sumsq_f32", "quantize_q4_0_f32"]
    q = p.launches[-1]
    assert q.grid == (96 * 128 // 128, 1, 8) and q.block == (128, 1, 1) and q.use_rowstat and q.use_qw
    assert p.scratch_bytes == 96 * 8 * 4096 * 4 and p.rowstat_bytes == 96 * 8 * 4


# ------------------------------------------------------------------------------------------------------
# against llama.cpp itself (skipped without the oracle)
# ------------------------------------------------------------------------------------------------------

ORACLE_TYPES = [t for t in TYPES if K.KERNELS[t].family in ("floats", "legacy", "iq4") and t != T.F32]


@requires_oracle
@pytest.mark.parametrize("qtype", ORACLE_TYPES, ids=_id)
def test_oracle_quantize(dev, qtype: T):
    """Fresh random and edge rows (not the committed golden inputs), with and without importance weights."""
    x = make_rows(qtype, 12, 4 if QUANT_SIZES[qtype][0] == 256 else 24, seed=777 + int(qtype))
    x[5] *= F32(1e-30)
    x[6] *= F32(3e5)
    rng = np.random.default_rng(8)
    for qw in (None, (rng.random(x.shape[1]) ** 4).astype(F32)):
        got = run_device(dev, x, T.F32, qtype, x.shape[1], None if qw is None else qw[None])
        assert_bytes(got, oracle_quantize(x, qtype, qw), qtype, x, "vs llama.cpp")


@requires_oracle
@pytest.mark.parametrize("qtype", [t for t in ORACLE_TYPES if K.KERNELS[t].dequantize], ids=_id)
def test_oracle_dequantize(dev, qtype: T):
    """dequantize_<type> against llama.cpp's dequantize_row_<type>, on bytes with random scales."""
    import ctypes

    fn = getattr(ctypes.CDLL(str(lib_dir() / "libggml-base.so")), f"dequantize_row_{qtype.name.lower()}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    block, tsize = QUANT_SIZES[qtype]
    n = 4 * max(block, 64)
    raw = np.random.default_rng(int(qtype)).integers(0, 256, (3, n // block * tsize), dtype=np.uint8)
    blocks = raw.reshape(-1, tsize)
    halves = np.random.default_rng(1).standard_normal((blocks.shape[0], 2)).astype(np.float16).view(np.uint8)
    blocks[:, :2] = halves[:, :2]  # finite d (and m) in the first bytes of every block layout used here
    if qtype in (T.Q4_1, T.Q5_1):
        blocks[:, 2:4] = halves[:, 2:4]
    want = np.zeros((3, n), F32)
    fn(raw.ctypes.data, want.ctypes.data, want.size)
    got = run_device(dev, raw, qtype, T.F32, n).view(F32)
    np.testing.assert_array_equal(got, want)
