"""The conformance checks of test_conformance.py on a real CUDA device (``@pytest.mark.gpu``; skipped with
the reason when CuPy or a GPU is missing), plus the CudaDevice plumbing run without a GPU against a stand-in
``cupy`` whose kernels are the emulated ones (launch arguments, scalar dtypes, copies, streams, errors).
"""
from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest

from gpuquant.backends import DeviceError
from gpuquant.backends import kernels as K
from gpuquant.backends.emulated import EmulatedDevice
from gpuquant.quants import QUANT_SIZES
from gpuquant.quants import GGMLQuantizationType as T
from tests.golden import TYPES as GOLDEN_TYPES
from tests.golden import first_difference, iter_cases
from tests.test_conformance import TYPES, assert_bytes, make_rows, reference, run_device, to_bf16, to_f16

F32 = np.float32


def _gpu_reason() -> str | None:
    from gpuquant.backends import cuda

    if cuda._cupy() is None:
        return "CuPy is not installed (pip install 'gpuquant[cuda12]')"
    if cuda.device_count() == 0:
        return "no CUDA device visible to CuPy"
    return None


_REASON = _gpu_reason()


@pytest.fixture(scope="module")
def gpu():
    if _REASON:
        pytest.skip(_REASON)
    from gpuquant.backends.cuda import CudaDevice

    d = CudaDevice(0)
    yield d
    d.close()


@pytest.fixture(scope="module")
def emu():
    d = EmulatedDevice(threads=2)
    yield d
    d.close()


def _id(t: T) -> str:
    return t.name


# ------------------------------------------------------------------------------------------------------
# on a GPU
# ------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", [t for t in TYPES if t.name in GOLDEN_TYPES], ids=_id)
def test_gpu_golden(gpu, qtype: T):
    failures, first = [], None
    for case_id, rows, imatrix, want in iter_cases(qtype.name):
        got = run_device(gpu, rows, T.F32, qtype, rows.shape[1], None if imatrix is None else imatrix[None])
        diff = first_difference(got, want, QUANT_SIZES[qtype][1], QUANT_SIZES[qtype][0], rows)
        if diff is not None:
            failures.append(case_id)
            first = first or f"{case_id}: {diff}"
    assert not failures, f"{qtype.name}: golden cases differ on {gpu.name}: {failures[:8]}\nfirst: {first}"


@pytest.mark.gpu
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("src", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_gpu_matches_numpy_and_emulated(gpu, emu, qtype: T, src: str, weighted: bool):
    nb = 3 if QUANT_SIZES[qtype][0] == 256 else 12
    x = make_rows(qtype, 6, nb, seed=int(qtype) * 7 + len(src))
    src_type, raw, values = {"f32": (T.F32, x, x), "f16": (T.F16, *to_f16(x)), "bf16": (T.BF16, *to_bf16(x))}[src]
    qw = (np.random.default_rng(1).random((1, x.shape[1])) + 0.01).astype(F32) if weighted else None
    got = run_device(gpu, raw, src_type, qtype, x.shape[1], qw)
    assert_bytes(got, reference(values, qtype, qw), qtype, values, f"{gpu.name} from {src}")
    assert_bytes(got, run_device(emu, raw, src_type, qtype, x.shape[1], qw), qtype, values, "vs emulated")


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_gpu_moe_and_requantize(gpu, emu, qtype: T):
    n_expert, rpe = 4, 3
    x = make_rows(qtype, n_expert * rpe, 2 if QUANT_SIZES[qtype][0] == 256 else 8, seed=200 + int(qtype))
    qw = (np.random.default_rng(4).random((n_expert, x.shape[1])) ** 2).astype(F32)
    got = run_device(gpu, x, T.F32, qtype, x.shape[1], qw, n_expert=n_expert)
    assert_bytes(got, reference(x, qtype, qw, n_expert), qtype, x, f"MoE on {gpu.name}")
    if K.KERNELS[qtype].dequantize:
        for dst in (T.F16, T.Q4_0):
            want = run_device(emu, got, qtype, dst, x.shape[1])
            assert_bytes(run_device(gpu, got, qtype, dst, x.shape[1]), want, dst, None, f"requantized from {qtype.name}")


@pytest.mark.gpu
def test_gpu_device_basics(gpu):
    assert gpu.memory_budget() > 0
    with pytest.raises(DeviceError, match="only"):
        from gpuquant.backends.cuda import CudaDevice, device_count

        CudaDevice(device_count())


# ------------------------------------------------------------------------------------------------------
# without a GPU: CudaDevice against a stand-in cupy that runs the emulated kernels
# ------------------------------------------------------------------------------------------------------


class _FakeArray:
    def __init__(self, nbytes: int) -> None:
        self.host = np.zeros(nbytes, np.uint8)
        self.nbytes = nbytes
        self.data = types.SimpleNamespace(ptr=self.host.ctypes.data)


class _Ctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fake_cupy(emu: EmulatedDevice, launches: list, compiled: list):
    cp = types.ModuleType("cupy")
    cp.uint8 = np.uint8

    class OutOfMemoryError(Exception):
        pass

    class CUDADriverError(Exception):
        pass

    def memcpy(dst, src, n, kind, stream):
        assert kind in (1, 2) and isinstance(stream, int)
        ctypes.memmove(dst, src, n)

    class Device(_Ctx):
        compute_capability = "90"

        def __init__(self, i):
            self.i = i

        def synchronize(self):
            pass

    class Stream(_Ctx):
        ptr = 0

        def __init__(self, non_blocking=False):
            assert non_blocking

        def wait_event(self, ev):
            assert isinstance(ev, Event)

    class Event:
        done = True

        def __init__(self, disable_timing=False):
            pass

        def record(self, stream):
            assert isinstance(stream, Stream)

        def synchronize(self):
            pass

    class RawModule:
        def __init__(self, code, options, backend):
            self.family = next(f for f in K.available_families() if K.source(f) == code)
            compiled.append((self.family, options, backend))

        def get_function(self, name):
            lib = emu.library(self.family)

            def launch(grid, block, args, stream=None):
                assert isinstance(stream, Stream)
                assert all(type(a) in (np.uint64, np.int64) for a in args), [type(a) for a in args]
                launches.append(name)
                ptr = [int(a) or None for a in args]
                spec_sync = False
                if len(args) == 7:
                    lib.launch_quantize(name, grid, block, 2, spec_sync, *ptr[:4], *[int(a) for a in args[4:]])
                else:
                    lib.launch_convert(name, grid, block, 2, spec_sync, ptr[0], ptr[1], int(args[2]), int(args[3]))

            return launch

    pool = types.SimpleNamespace(free_all_blocks=lambda: None)
    cp.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda i: {"name": b"Fake"},
                                      memGetInfo=lambda: (8 << 30, 16 << 30), memcpyAsync=memcpy),
        Device=Device, Stream=Stream, Event=Event,
        memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
        driver=types.SimpleNamespace(CUDADriverError=CUDADriverError))
    cp.RawModule = RawModule
    cp.empty = lambda shape, dtype: _FakeArray(int(shape[0]))
    cp.get_default_memory_pool = lambda: pool
    cp.get_default_pinned_memory_pool = lambda: pool
    cpx = types.ModuleType("cupyx")
    cpx.empty_pinned = lambda shape, dtype: np.zeros(shape, dtype)
    return cp, cpx


@pytest.fixture()
def fake_cuda(monkeypatch, emu):
    launches: list[str] = []
    compiled: list = []
    cp, cpx = _fake_cupy(emu, launches, compiled)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupyx", cpx)
    from gpuquant.backends import cuda

    monkeypatch.setattr(cuda, "_MODULES", {})
    dev = cuda.CudaDevice(0)
    yield dev, launches, compiled
    dev.close()


@pytest.mark.parametrize("qtype", [t for t in (T.Q4_0, T.Q5_1, T.IQ4_XS, T.F16, T.Q4_K) if t in TYPES], ids=_id)
def test_cuda_device_plumbing(fake_cuda, qtype: T):
    dev, launches, compiled = fake_cuda
    assert dev.name == "cuda:0" and dev.memory_budget() == 4 << 30
    x = make_rows(qtype, 8, 2 if QUANT_SIZES[qtype][0] == 256 else 8, seed=3)
    qw = (np.random.default_rng(0).random((2, x.shape[1])) + 0.1).astype(F32)
    got = run_device(dev, x, T.F32, qtype, x.shape[1], qw, n_expert=2)
    assert_bytes(got, reference(x, qtype, qw, 2), qtype, x, "CudaDevice plumbing")
    assert launches[-1] == f"quantize_{K.KERNELS[qtype].name}_f32"
    assert all(opts == (*K.NVRTC_OPTIONS, f"-I{K.kernel_dir()}") and be == "nvrtc" for _, opts, be in compiled)
    if K.KERNELS[qtype].dequantize:  # requantize goes through dequantize_<type> into scratch
        h = run_device(dev, got, qtype, T.F16, x.shape[1])
        assert launches[-2:] == [f"dequantize_{K.KERNELS[qtype].name}", "quantize_f16_f32"]
        assert_bytes(h, reference(gguf_dequant(got, qtype), T.F16, None), T.F16)


def gguf_dequant(raw: np.ndarray, qtype: T) -> np.ndarray:
    import gguf

    return gguf.quants.dequantize(raw, qtype).astype(F32)


def test_cuda_device_errors(monkeypatch):
    from gpuquant.backends import cuda

    monkeypatch.setattr(cuda, "_cupy", lambda: None)
    assert cuda.device_count() == 0
    with pytest.raises(DeviceError, match="CuPy is not installed"):
        cuda.CudaDevice(0)


def test_cuda_device_bad_index(fake_cuda):
    from gpuquant.backends import cuda

    with pytest.raises(DeviceError, match="only 1 GPU"):
        cuda.CudaDevice(3)


def test_cuda_out_of_memory_is_retryable(fake_cuda, monkeypatch):
    """CuPy's OutOfMemoryError becomes DeviceOutOfMemory, which the pipeline retries with smaller slabs."""
    from gpuquant.backends import DeviceOutOfMemory

    dev, _, _ = fake_cuda
    cp = sys.modules["cupy"]

    def no_memory(shape, dtype):
        raise cp.cuda.memory.OutOfMemoryError()

    monkeypatch.setattr(cp, "empty", no_memory)
    with pytest.raises(DeviceOutOfMemory, match="--max-buffer-size"):
        dev.device_buffer(1 << 20)


def test_cuda_module_source_changes_with_its_headers(tmp_path, monkeypatch):
    """CuPy caches RawModules by source text: a header edit must change the text it is given."""
    import shutil

    for p in K.kernel_dir().iterdir():
        if p.suffix in (".cu", ".cuh", ".h"):
            shutil.copy(p, tmp_path / p.name)
    monkeypatch.setattr(K, "kernel_dir", lambda: tmp_path)
    before = K.source("legacy")
    (tmp_path / "common.cuh").write_text((tmp_path / "common.cuh").read_text() + "\n// edited\n")
    after = K.source("legacy")
    assert before != after and before.split("// gpuquant headers")[0] == after.split("// gpuquant headers")[0]
