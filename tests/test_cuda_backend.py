"""``CudaDevice`` without a GPU, against the stand-in cupy of tests/fake_cupy.py (a lazy asynchronous device
running the emulated kernels from the CUBINs NVRTC really built): bytes, the compile path (gpuquant's NVRTC
binding, never CuPy's compiler), the function cache, ``prepare``, release only after a synchronize (launch
error, out-of-memory retry), the pinned-memory bound, blocking events, stage times, ``--device auto``
falling back, and ``gpuquant kernels --ptx``.
"""
from __future__ import annotations

import gc
import sys
import threading

import numpy as np
import pytest

from gpuquant.backends import DeviceError, DeviceOutOfMemory, open_device
from gpuquant.backends import cuda
from gpuquant.backends import kernels as K
from gpuquant.backends import nvrtc as N
from gpuquant.backends.emulated import EmulatedDevice
from gpuquant.pipeline import Pipeline, TensorWork
from gpuquant.quants import QUANT_SIZES
from gpuquant.quants import GGMLQuantizationType as T
from tests.fake_cupy import CUDARuntimeError, FakeGPU, make_cupy
from tests.helpers import MemWriter, assert_bytes, expected, make_rows, make_source, reference, run_device

F32 = np.float32


def _nvrtc_reason() -> str | None:
    try:
        N.load()
    except N.NvrtcError as e:
        return f"libnvrtc not found ({e})"
    return None


needs_nvrtc = pytest.mark.skipif(_nvrtc_reason() is not None, reason=str(_nvrtc_reason()))


@pytest.fixture(scope="module")
def emu():
    d = EmulatedDevice(threads=2)
    yield d
    d.close()


def _install(monkeypatch, gpu: FakeGPU, **kw) -> None:
    cp, cpx = make_cupy(gpu, **kw)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupyx", cpx)
    monkeypatch.setattr(cuda, "_MODULES", {})
    monkeypatch.setattr(cuda, "_FUNCTIONS", {})


@pytest.fixture()
def gpu(monkeypatch, emu) -> FakeGPU:
    g = FakeGPU(emu)
    _install(monkeypatch, g)
    return g


@pytest.fixture()
def dev(gpu):
    d = cuda.CudaDevice(0)
    yield d
    d.close()
    gc.collect()
    assert not gpu.violations, gpu.violations


def _id(t: T) -> str:
    return t.name


# ------------------------------------------------------------------------------------------------------
# bytes and the compile path
# ------------------------------------------------------------------------------------------------------


@needs_nvrtc
@pytest.mark.parametrize("qtype", [t for t in (T.Q4_0, T.Q5_1, T.IQ4_XS, T.F16, T.Q4_K)], ids=_id)
def test_bytes_through_the_cuda_device(dev, gpu, emu, qtype: T):
    x = make_rows(qtype, 8, 2 if QUANT_SIZES[qtype][0] == 256 else 8, seed=3)
    qw = (np.random.default_rng(0).random((2, x.shape[1])) + 0.1).astype(F32)
    got = run_device(dev, x, T.F32, qtype, x.shape[1], qw, n_expert=2)
    assert_bytes(got, reference(x, qtype, qw, 2), qtype, x, "CudaDevice")
    launches = [e[1] for e in gpu.log if e[0] == "launch"]
    assert launches[-1] == K.KERNELS[qtype].quantize_kernel("f32", True)  # with weights: the _w entry points if any
    if K.KERNELS[qtype].dequantize:  # requantize: dequantize_<type> into the stream's scratch first
        h = run_device(dev, got, qtype, T.F16, x.shape[1])
        launches = [e[1] for e in gpu.log if e[0] == "launch"]
        assert launches[-2:] == [f"dequantize_{K.KERNELS[qtype].name}", "quantize_f16_f32"]
        want = run_device(emu, got, qtype, T.F16, x.shape[1])
        assert_bytes(h, want, T.F16)


@needs_nvrtc
def test_kernels_come_from_compile_family_never_from_cupy(dev, gpu, monkeypatch):
    """The fake cupy's RawModule, compiler and pools raise; what the driver loads is compile_family's CUBIN."""
    calls, images = [], []
    real = N.compile_family

    def spy(family, arch, **kw):
        img = real(family, arch, **kw)
        calls.append((family, arch, img.options))
        images.append(img.image)
        return img

    monkeypatch.setattr(N, "compile_family", spy)
    x = make_rows(T.Q8_0, 4, 4, seed=1)
    assert_bytes(run_device(dev, x, T.F32, T.Q8_0, x.shape[1]), reference(x, T.Q8_0, None), T.Q8_0, x)
    assert calls == [("legacy", "sm_90", N.options_for("sm_90"))]
    assert gpu.modules == images and images[0][:4] == b"\x7fELF"
    assert dev.target == "sm_90" and "NVRTC" in dev.description


@needs_nvrtc
def test_a_gpu_newer_than_nvrtc_loads_ptx(gpu, emu, monkeypatch):
    """sm_999: NVRTC's newest virtual architecture, loaded as NUL-terminated PTX (the driver JIT-compiles it)."""
    monkeypatch.setattr(sys.modules["cupy"].cuda.Device, "compute_capability", "999")
    d = cuda.CudaDevice(0)
    try:
        assert d.target == f"compute_{N.load().archs[-1]}"
        x = make_rows(T.F16, 2, 1, seed=4)
        assert_bytes(run_device(d, x, T.F32, T.F16, x.shape[1]), run_device(emu, x, T.F32, T.F16, x.shape[1]), T.F16)
        assert gpu.modules == [N.compile_family("floats", "sm_999").ptx + b"\0"]
    finally:
        d.close()


@needs_nvrtc
def test_function_cache_per_family_kernel_device(dev, gpu):
    f1 = dev.function("legacy", "quantize_q4_0_f32")
    assert dev.function("legacy", "quantize_q4_0_f32") is f1
    assert dev.function("legacy", "quantize_q8_0_f32") is not f1
    other = cuda.CudaDevice(0)  # another device object, same GPU: the process-wide caches serve it
    try:
        assert other.function("legacy", "quantize_q4_0_f32") is f1
    finally:
        other.close()
    assert len(gpu.modules) == 1, "legacy.cu loaded once"
    assert set(cuda._FUNCTIONS) == {("legacy", "quantize_q4_0_f32", 0), ("legacy", "quantize_q8_0_f32", 0)}
    with pytest.raises(DeviceError, match="not found"):
        dev.function("legacy", "no_such_kernel")


@needs_nvrtc
def test_prepare_compiles_in_parallel_once_with_one_line(gpu, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cuda, "_ANNOUNCED", threading.Event())
    monkeypatch.setenv("GPUQUANT_CACHE_DIR", str(tmp_path))  # cold: the floats family really compiles
    threads, real = set(), N.compile_family

    def spy(family, arch, **kw):
        threads.add(threading.current_thread().name)
        return real(family, arch, **kw)

    monkeypatch.setattr(N, "compile_family", spy)
    d = cuda.CudaDevice(0)
    try:
        d.prepare([T.F16, T.BF16])  # both in floats.cu
        assert K.families_for([T.Q4_K, T.IQ4_NL, T.Q4_0]) == ["iq4", "kquants", "legacy"]
        assert K.families_for([]) == [] and K.families_for([T.F32]) == ["floats"]  # F16 -> F32
        assert set(cuda._MODULES) == {("floats", 0)}
        assert all(t.startswith("gpuquant-nvrtc") for t in threads), threads
        err = capsys.readouterr().err
        assert err.count("compiling the CUDA kernels for sm_90") == 1 and str(tmp_path) in err
        d.prepare([T.F16])
        x = make_rows(T.F16, 2, 1, seed=5)
        run_device(d, x, T.F32, T.F16, x.shape[1])
        assert len(gpu.modules) == 1 and capsys.readouterr().err == ""
    finally:
        d.close()


# ------------------------------------------------------------------------------------------------------
# release only after a synchronize
# ------------------------------------------------------------------------------------------------------


def test_the_fake_catches_a_free_while_a_copy_is_queued(gpu):
    """The check the tests below rely on can fail: freeing under a queued copy is recorded."""
    h, d = gpu.host_alloc(64, 1), gpu.malloc(64)
    gpu.memcpy_async(d, h, 64, 1, 0x10)
    gpu.free_host(h)
    assert gpu.violations and "queued" in gpu.violations[0]
    gpu.violations.clear()
    gpu.synchronize()
    gpu.free(d)
    assert not gpu.violations


def _tensor(tmp_path, rows=64, cols=1024):
    rng = np.random.default_rng(7)
    arr = rng.standard_normal((rows, cols)).astype(F32)
    qw = (rng.random((1, cols)) + 0.05).astype(F32)
    return arr, qw, TensorWork(make_source(tmp_path, arr), "t", T.Q4_0, qw)


def _all_freed(gpu: FakeGPU) -> None:
    """Everything freed, nothing freed under a queued operation, and a device synchronize before the first free."""
    gc.collect()
    assert not gpu.device_allocs and not gpu.host_allocs, (len(gpu.device_allocs), len(gpu.host_allocs))
    assert not gpu.violations, gpu.violations
    first_free = next(i for i, e in enumerate(gpu.log) if e[0] in ("free", "freeHost"))
    assert ("sync",) in gpu.log[:first_free]


@needs_nvrtc
def test_launch_error_synchronizes_before_release(gpu, tmp_path):
    _, _, work = _tensor(tmp_path)
    d = cuda.CudaDevice(0)
    gpu.fail_launch = "rowstat_sumsq_f32"
    try:
        with pytest.raises(DeviceError, match="launching rowstat_sumsq_f32"):
            Pipeline(d, [work], MemWriter(), slab_bytes=128 << 10).run()
        assert gpu.pending() > 0, "the upload of the failed slab is still queued: the case under test"
        gc.collect()  # the pipeline's buffers are dropped now, with that copy queued
        assert not gpu.violations
    finally:
        d.close()
    _all_freed(gpu)


class RewindableWriter(MemWriter):
    def rewind(self):
        self.__init__()


@needs_nvrtc
def test_out_of_memory_retry_synchronizes_before_reuse(gpu, tmp_path):
    """OOM in the middle of a run (the row-statistics buffer of the first slab, its upload queued): the
    retry with smaller slabs frees the first run's buffers only after a synchronize, and the bytes are right."""
    from gpuquant.api import _run_pipeline

    arr, qw, work = _tensor(tmp_path)
    armed = []

    def first(n):  # the first allocation made with a copy queued (the slab's row statistics) ...
        if gpu.pending() > 0:
            armed.append(n)
        return bool(armed)

    gpu.fail_malloc = [first, lambda n: bool(armed)]  # ... and CudaDevice's own retry of it
    d = cuda.CudaDevice(0)
    w, notes = RewindableWriter(), []
    try:
        _run_pipeline(d, [work], [w], 128 << 10, lambda i, n: None, [0], notes)
        assert not gpu.violations, gpu.violations
    finally:
        d.close()
    assert not gpu.fail_malloc, "the injected out-of-memory happened"
    assert any("ran out of memory" in n for n in notes), notes
    want = expected(arr.reshape(1, *arr.shape), T.Q4_0, qw)
    assert w.buf.getvalue()[: len(want)] == want
    _all_freed(gpu)


def test_out_of_memory_is_retryable(dev, gpu):
    gpu.device_memory = 1 << 20
    with pytest.raises(DeviceOutOfMemory, match="--max-buffer-size"):
        dev.device_buffer(2 << 20)


def test_other_allocation_errors_are_device_errors(dev, gpu, monkeypatch):
    def broken(n):
        raise CUDARuntimeError(999, "unknown")

    monkeypatch.setattr(sys.modules["cupy"].cuda.runtime, "malloc", broken)
    with pytest.raises(DeviceError, match="cannot allocate") as ei:
        dev.device_buffer(16)
    assert not isinstance(ei.value, DeviceOutOfMemory)


# ------------------------------------------------------------------------------------------------------
# pinned memory, events, stage times
# ------------------------------------------------------------------------------------------------------


def test_pinned_memory_is_exact_and_bounded(dev, gpu, monkeypatch, capsys):
    monkeypatch.setattr(cuda, "PINNED_CAP", 1 << 20)
    bufs = [dev.host_buffer(400_000) for _ in range(3)]
    assert [e[1:] for e in gpu.log if e[0] == "hostAlloc"] == [(400_000, 1), (400_000, 1)], "exact sizes, portable"
    assert all(b.nbytes == 400_000 and b.dtype == np.uint8 for b in bufs)
    assert bufs[2].ctypes.data not in gpu.host_allocs, "past the cap: ordinary memory"
    assert capsys.readouterr().err.count("page-locked host memory in use") == 1
    bufs[0][:] = 7  # usable as numpy arrays
    del bufs
    gc.collect()
    again = dev.host_buffer(900_000)  # the released ones are freed (after a sync) and no longer count
    assert again.ctypes.data in gpu.host_allocs and len(gpu.host_allocs) == 1
    assert dev._release.pinned_bytes == 900_000


def test_slabs_are_capped_for_the_pinned_bound(dev):
    assert dev.memory_budget() == cuda.SLAB_CAP * 3  # 8 GiB free in the fake
    assert Pipeline(dev, [], MemWriter()).slab_bytes == cuda.SLAB_CAP
    assert cuda.SLAB_CAP * 8 <= cuda.PINNED_CAP, "the pipeline stages about 7 slabs in host memory"


@needs_nvrtc
def test_events_block_and_stage_times_are_measured(dev, gpu):
    x = make_rows(T.Q4_0, 8, 8, seed=2)
    run_device(dev, x, T.F32, T.Q4_0, x.shape[1])
    assert gpu.events and all(ev.block for ev in gpu.events), "every event uses the blocking-sync flag"
    times = dev.stage_times()
    assert set(times) == {"h2d", "kernel", "d2h"} and all(v > 0 for v in times.values()), times


# ------------------------------------------------------------------------------------------------------
# --device auto
# ------------------------------------------------------------------------------------------------------


def test_auto_falls_back_when_cupy_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    d = open_device("auto", threads=1)
    try:
        assert not d.name.startswith("cuda")
        assert "CuPy is not installed" in d.fallback_reason and "\n" not in d.fallback_reason
    finally:
        d.close()


@pytest.mark.parametrize("case", ["no driver", "driver error", "no gpu"])
def test_auto_falls_back_without_a_driver(monkeypatch, emu, case):
    gpu = FakeGPU(emu)
    _install(monkeypatch, gpu, driver_version=0 if case == "no driver" else 13000, n_devices=0)
    if case == "driver error":
        def insufficient():
            raise CUDARuntimeError(35, "cudaErrorInsufficientDriver")

        monkeypatch.setattr(sys.modules["cupy"].cuda.runtime, "getDeviceCount", insufficient)
    d = open_device("auto", threads=1)
    try:
        assert d.name in ("emulated", "numpy")
        reason = d.fallback_reason
        assert "\n" not in reason and reason.endswith(f"running on the CPU ({d.name})")
        assert {"no driver": "no CUDA driver", "driver error": "cudaErrorInsufficientDriver",
                "no gpu": "no GPU visible"}[case] in reason
    finally:
        d.close()


@needs_nvrtc
def test_auto_falls_back_when_no_kernel_loads(monkeypatch, gpu):
    module = sys.modules["cupy"].cuda.function.Module

    def too_old(self, image):
        raise sys.modules["cupy"].cuda.driver.CUDADriverError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION")

    monkeypatch.setattr(module, "load", too_old)
    d = open_device("auto", threads=1)
    try:
        assert not d.name.startswith("cuda")
        assert "cannot load" in d.fallback_reason and "UNSUPPORTED_PTX_VERSION" in d.fallback_reason
    finally:
        d.close()


@needs_nvrtc
def test_auto_chooses_the_gpu_after_loading_a_kernel(gpu):
    d = open_device("auto", threads=1)
    try:
        assert d.name == "cuda:0" and not hasattr(d, "fallback_reason")
        assert set(cuda._MODULES) == {(cuda.smallest_family(), 0)} and len(gpu.modules) == 1
    finally:
        d.close()


def _real_cupy_without_gpu() -> bool:
    if "cupy" in sys.modules and not hasattr(sys.modules["cupy"], "__file__"):
        return False  # a stand-in is installed
    return cuda._cupy() is not None and cuda.device_count() == 0


@pytest.mark.skipif(not _real_cupy_without_gpu(), reason="needs the real CuPy installed on a machine without a GPU")
def test_auto_with_the_real_cupy_and_no_gpu():
    d = open_device("auto", threads=1)
    try:
        assert not d.name.startswith("cuda") and "\n" not in d.fallback_reason
        assert "driver" in d.fallback_reason or "GPU" in d.fallback_reason, d.fallback_reason
    finally:
        d.close()


def test_errors_without_cupy_and_with_a_bad_index(monkeypatch, gpu):
    with pytest.raises(DeviceError, match="only 1 GPU"):
        cuda.CudaDevice(3)
    monkeypatch.setattr(cuda, "_cupy", lambda: None)
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert cuda.device_count() == 0
    with pytest.raises(DeviceError, match="CuPy is not installed"):
        cuda.CudaDevice(0)


# ------------------------------------------------------------------------------------------------------
# gpuquant kernels --ptx
# ------------------------------------------------------------------------------------------------------


@needs_nvrtc
def test_kernels_command_writes_ptx_and_log_per_family(tmp_path):
    from typer.testing import CliRunner

    from gpuquant.cli import app

    out = tmp_path / "ptx"
    res = CliRunner().invoke(app, ["kernels", "--ptx", str(out), "--arch", "sm_90"])
    assert res.exit_code == 0, res.output
    fams = K.available_families()
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{f}.ptx" for f in fams] + [f"{f}.log" for f in fams])
    for f in fams:
        img = N.compile_family(f, "sm_90")  # what the CUDA device loads on sm_90, from the same call
        assert (out / f"{f}.ptx").read_bytes() == img.ptx
        log = (out / f"{f}.log").read_text()
        assert "--ftz=false" in log and "ptxas info    : Used" in log, log[:500]
        assert N.resource_report(img.log) == N.resource_report(log)
    bad = CliRunner().invoke(app, ["kernels", "--ptx", str(out), "--arch", "volta"])
    assert bad.exit_code != 0 and "expected sm_XX" in bad.output


@pytest.mark.gpu
def test_real_gpu_basics():
    """On a real GPU: a memory budget, and an index past the last GPU is refused naming the count."""
    from tests.helpers import cuda_skip_reason

    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    from gpuquant.backends.cuda import CudaDevice, device_count

    d = CudaDevice(0)
    try:
        assert d.memory_budget() > 0
    finally:
        d.close()
    with pytest.raises(DeviceError, match="only"):
        CudaDevice(device_count())
