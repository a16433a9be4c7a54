"""The emulated device's faithfulness to CUDA: the geometry a kernel sees, shared memory and
``__syncthreads`` through fibers, results independent of the host thread count, and the launch plans both
kernel-running devices share. (The kernels' conformance per type is in test_conformance.py.)"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from gpuquant.backends import kernels as K
from gpuquant.backends.emulated import EmulatedDevice, KernelLibrary, compile_family
from gpuquant.quants import GGMLQuantizationType as T
from gpuquant.quants import registered
from tests import helpers as H

F32 = np.float32

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


@pytest.mark.parametrize("qtype", [T.Q4_1, T.IQ4_XS, T.F16], ids=lambda t: t.name)
def test_thread_count_does_not_matter(qtype: T):
    x = H.random_rows(np.random.default_rng(9), 12, 1024)
    qw = (np.random.default_rng(3).random((1, x.shape[1])) + 0.5).astype(F32)
    outs = []
    for threads in (1, 2, 5):
        d = EmulatedDevice(threads=threads)
        outs.append(H.run_device(d, x, T.F32, qtype, x.shape[1], qw))
        d.close()
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])



def test_supports_and_plan_geometry():
    assert K.supports(T.F16, T.Q4_0) and K.supports(T.Q8_0, T.Q4_0)
    # a registered type without a kernel declaration has no plan
    assert not any(K.supports(T.F16, t) for t, c in registered().items() if c.kernel is None)
    p = K.launch_plan(T.Q5_1, T.Q4_0, 4096, 96, 8, True)
    names = [ln.kernel for ln in p.launches]
    assert names == ["dequantize_q5_1", "rowstat_sumsq_f32", "quantize_q4_0_w_f32"]
    assert K.launch_plan(T.F16, T.Q4_0, 4096, 96, 8, False).launches[-1].kernel == "quantize_q4_0_f16"
    q = p.launches[-1]
    assert q.grid == (96 * 128 // 128, 1, 8) and q.block == (128, 1, 1) and q.use_rowstat and q.use_qw
    assert p.scratch_bytes == 96 * 8 * 4096 * 4 and p.rowstat_bytes == 96 * 8 * 4


def _tiled_types() -> list[T]:
    """Types whose quantize kernels are tiled (tiles.cuh: phases, shared memory), read from the sources."""
    tiled = {f for f in K.available_families() if "GQ_TILED_ITEMS" in (K.kernel_dir() / f"{f}.cu").read_text()}
    return [t for t, spec in K.KERNELS.items() if spec.family in tiled and not spec.flat]


def _misaligned(a: np.ndarray, shift: int) -> np.ndarray:
    """A copy of ``a``'s bytes starting ``shift`` bytes past a 64-byte boundary."""
    raw = np.zeros(a.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + shift
    view = raw[start:start + a.nbytes]
    view[:] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    return view


@pytest.mark.parametrize("qtype", _tiled_types(), ids=lambda t: t.name)
def test_tiled_kernels_same_bytes_with_barriers_and_any_alignment(qtype: T):
    """A tiled kernel (phases separated by __syncthreads on a GPU) gives the same bytes through fibers with
    real barriers as through the block runner's phase order, for 16-byte aligned and misaligned sources,
    weights and destinations (scalar loads, byte stores at the head and tail of a tile), short last tiles and
    two experts; and the aligned run equals the device's."""
    spec = K.KERNELS[qtype]
    qk = spec.item_elems
    n_per_row = 3 * qk if qk >= 256 else 5 * qk
    rows, n_expert = 7, 2
    x = H.random_rows(np.random.default_rng(11), rows * n_expert, n_per_row)
    qw = (np.random.default_rng(12).random((n_expert, n_per_row)) + 0.5).astype(F32)
    lib = KernelLibrary(compile_family(spec.family))
    out_bytes = rows * n_expert * n_per_row // qk * spec_type_size(qtype)
    results = []
    for sync, shift in ((False, 0), (True, 0), (False, 4), (True, 4), (False, 2)):
        for with_qw in (False, True):
            p = K.launch_plan(T.F32, qtype, n_per_row, rows, n_expert, with_qw)
            ln = p.launches[-1]
            src, w = _misaligned(x, shift), _misaligned(qw, shift)
            dst = _misaligned(np.zeros(out_bytes, np.uint8), shift // 2 + (1 if shift else 0))
            rowstat = (x.astype(np.float64) ** 2).sum(1).astype(F32) if ln.use_rowstat else None
            if rowstat is not None:  # the pre-pass, as the device runs it
                lib.launch_convert(p.launches[0].kernel, p.launches[0].grid, p.launches[0].block, 2, False,
                                   src.ctypes.data, rowstat.ctypes.data, n_per_row, rows * n_expert)
            lib.launch_quantize(ln.kernel, ln.grid, ln.block, 2, sync, src.ctypes.data, dst.ctypes.data,
                                w.ctypes.data if with_qw else 0, rowstat.ctypes.data if rowstat is not None else 0,
                                n_per_row, rows, n_expert)
            results.append((with_qw, np.array(dst)))
    for with_qw in (False, True):
        outs = [r for q, r in results if q == with_qw]
        for o in outs[1:]:
            H.assert_bytes(o.reshape(rows * n_expert, -1), outs[0].reshape(rows * n_expert, -1), qtype)
    d = EmulatedDevice(threads=2)
    dev = H.run_device(d, x, T.F32, qtype, n_per_row, qw, n_expert=n_expert)
    d.close()
    H.assert_bytes(dev, [r for q, r in results if q][0].reshape(rows * n_expert, -1), qtype)


def spec_type_size(qtype: T) -> int:
    from gpuquant.quants import QUANT_SIZES

    return QUANT_SIZES[qtype][1]

_TABLES_CU = r"""
#include "common.cuh"
// copies the generated tables out: 8 floats, 3 uint64, 4 int8 (as int32)
extern "C" __global__ void dump_tables(const void* in, void* out, long long n_per_row, long long nrows) {
    float* f = (float*)out;
    for (int i = 0; i < 8; ++i) f[i] = gq_tab_f[i];
    unsigned long long* u = (unsigned long long*)(f + 8);
    for (int i = 0; i < 3; ++i) u[i] = gq_tab_u64[i];
    int* s = (int*)(u + 3);
    for (int i = 0; i < 4; ++i) s[i] = gq_tab_i8[i];
}
"""

_ABORT_CU = r"""
#include "common.cuh"
// every thread of every block reports block (n_per_row - global thread id) of row 0: the smallest wins
extern "C" __global__ void report_aborts(const void* in, void* out, long long n_per_row, long long nrows) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    gq_report_abort((unsigned int*)out, 0, n_per_row - t, 1 << 20);
}
"""


def test_generated_tables_reach_the_kernels_bit_for_bit(tmp_path, monkeypatch):
    """``kernel_tables()`` of a family module becomes ``static __device__ const`` arrays in front of the .cu
    (both builds): floats keep their bits (denormals, -0, the extremes), 64-bit and signed entries too."""
    import sys
    import types

    f = np.array([1.5, -0.0, 1e-45, 3.4028235e38, -3.4028235e38, -1e-40, 0.1, 2.0**-140], dtype=F32)
    u = np.array([0, 0x0808082B08080808, 2**64 - 1], dtype=np.uint64)
    s8 = np.array([-127, -1, 0, 113], dtype=np.int8)
    mod = types.ModuleType("gpuquant.quants.tabletest")
    mod.kernel_tables = lambda: {"gq_tab_f": f, "gq_tab_u64": u, "gq_tab_i8": s8}
    monkeypatch.setitem(sys.modules, "gpuquant.quants.tabletest", mod)
    K.generated_tables.cache_clear()
    text = K.generated_tables("tabletest")
    assert "static __device__ const uint64_t gq_tab_u64[3]" in text and "static __device__ const float gq_tab_f[8]" in text
    shutil.copy(K.kernel_dir() / "common.cuh", tmp_path / "common.cuh")
    (tmp_path / "tabletest.cu").write_text(_TABLES_CU)
    lib = KernelLibrary(compile_family("tabletest", kernel_dir=tmp_path))
    out = np.zeros(8 * 4 + 3 * 8 + 4 * 4, np.uint8)
    lib.launch_convert("dump_tables", (1, 1, 1), (1, 1, 1), 1, False, 0, out.ctypes.data, 0, 0)
    assert out[:32].view(np.uint32).tolist() == f.view(np.uint32).tolist()
    assert out[32:56].view(np.uint64).tolist() == u.tolist()
    assert out[56:].view(np.int32).tolist() == s8.astype(np.int32).tolist()
    K.generated_tables.cache_clear()


def test_abort_status_keeps_the_first_block(shim_lib_aborts):
    status = np.full(1, K.NO_ABORT, np.uint32)
    shim_lib_aborts.launch_convert("report_aborts", (4, 1, 1), (64, 1, 1), 3, False, 0, status.ctypes.data, 1000, 0)
    assert int(status[0]) == 1000 - 255


@pytest.fixture(scope="module")
def shim_lib_aborts(tmp_path_factory) -> KernelLibrary:
    d = tmp_path_factory.mktemp("abort_kernels")
    shutil.copy(K.kernel_dir() / "common.cuh", d / "common.cuh")
    (d / "aborttest.cu").write_text(_ABORT_CU)
    return KernelLibrary(compile_family("aborttest", kernel_dir=d))


def test_raise_if_aborted_names_row_and_block():
    from gpuquant.backends import SlabJob
    from gpuquant.quants import GGMLAbort

    job = SlabJob(src_type=T.F32, dst_type=T.Q4_0, n_per_row=4096, rows_per_expert=8, n_expert=1)
    K.raise_if_aborted(job, K.NO_ABORT)  # nothing aborted
    with pytest.raises(GGMLAbort, match=r"block 5 of row 3 of the slab"):
        K.raise_if_aborted(job, 3 * (4096 // 32) + 5)
