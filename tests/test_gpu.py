"""The CudaDevice plumbing, run without a GPU against a stand-in ``cupy`` whose kernels are the emulated ones
(launch arguments, scalar dtypes, copies, streams, errors). The conformance of the kernels on a real GPU is
test_conformance.py's ``cuda`` device (marked ``gpu``, skipped with the reason without one).
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
from gpuquant.quants import GGMLQuantizationType as T
from gpuquant.quants import quantize
from tests.helpers import assert_bytes, random_rows, run_device

F32 = np.float32


@pytest.fixture(scope="module")
def emu():
    d = EmulatedDevice(threads=2)
    yield d
    d.close()


def _id(t: T) -> str:
    return t.name


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


def reference(x: np.ndarray, qtype: T, qw: np.ndarray | None, n_expert: int = 1) -> np.ndarray:
    """The numpy reference, expert by expert."""
    rows = x.reshape(n_expert, -1, x.shape[-1])
    return np.concatenate([quantize(rows[e], qtype, None if qw is None else qw[e]) for e in range(n_expert)])


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q5_1, T.IQ4_XS, T.F16, T.Q4_K], ids=_id)
def test_cuda_device_plumbing(fake_cuda, qtype: T):
    dev, launches, compiled = fake_cuda
    assert dev.name == "cuda:0" and dev.memory_budget() == 4 << 30
    x = random_rows(np.random.default_rng(3), 8, 512)
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
