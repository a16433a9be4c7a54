"""``CudaDevice``: the kernels of ``kernels/*.cu`` on an NVIDIA GPU through CuPy.

Each kernel family is compiled by NVRTC once per (source, device) with ``kernels.NVRTC_OPTIONS`` into a
``cupy.RawModule`` (CuPy also keeps the binary in its on-disk kernel cache). A slab runs the launches of
``kernels.plan`` (the same geometry the emulated device uses) on a CuPy stream; host staging buffers are
page-locked so that uploads and downloads are asynchronous and overlap with the kernels.
"""
from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ..quants import GGMLQuantizationType
from . import Device, DeviceError, DeviceOutOfMemory, Event, SlabJob, Stream
from . import kernels as K

__all__ = ["CudaDevice", "device_count"]

_MEMCPY_H2D = 1
_MEMCPY_D2H = 2
#: at most this many bytes for the pipeline's buffers (GPUQUANT_CUDA_BUDGET overrides, in bytes)
_BUDGET_CAP = 16 << 30


def _cupy():
    """The cupy module, or None when it is not installed or cannot load its CUDA libraries."""
    try:
        import cupy
    except Exception:  # noqa: BLE001 - ImportError, or a CUDA library that fails to load
        return None
    return cupy


def device_count() -> int:
    """Number of visible CUDA devices; 0 without CuPy, a driver or a GPU. Never raises."""
    cp = _cupy()
    if cp is None:
        return 0
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no driver / no device
        return 0


class CudaStream(Stream):
    def __init__(self, stream) -> None:
        self.stream = stream

    @property
    def ptr(self) -> int:
        return self.stream.ptr


class CudaEvent(Event):
    def __init__(self, event) -> None:
        self.event = event

    def synchronize(self) -> None:
        try:
            self.event.synchronize()
        except Exception as e:  # noqa: BLE001 - CUDA errors surface here (sticky launch failures)
            raise DeviceError(f"CUDA error while waiting for the device: {e}") from e

    def query(self) -> bool:
        return bool(self.event.done)


# (family, device index) -> RawModule, shared by every CudaDevice of the process
_MODULES: dict[tuple[str, int, str], Any] = {}
_MODULES_LOCK = threading.Lock()


class CudaDevice(Device):
    """GPU ``index`` through CuPy."""

    def __init__(self, index: int = 0) -> None:
        cp = _cupy()
        if cp is None:
            raise DeviceError("CUDA device: CuPy is not installed or cannot load CUDA "
                              "(pip install 'gpuquant[cuda12]' or 'gpuquant[cuda13]')")
        n = device_count()
        if n == 0:
            raise DeviceError("CUDA device: no GPU visible to CuPy (check the driver and CUDA_VISIBLE_DEVICES)")
        if not 0 <= int(index) < n:
            raise DeviceError(f"CUDA device {index}: only {n} GPU(s) visible (valid: 0..{n - 1})")
        self._cp = cp
        self.index = int(index)
        self._dev = cp.cuda.Device(self.index)
        self.name = f"cuda:{self.index}"
        self._families = K.available_families()
        try:
            props = cp.cuda.runtime.getDeviceProperties(self.index)
            gpu = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        except Exception:  # noqa: BLE001 - a name is only for display
            gpu = "GPU"
        self.description = f"{gpu} (sm_{self._dev.compute_capability})"

    # -- kernels -----------------------------------------------------------------------------------------
    def module(self, family: str):
        """The compiled RawModule of ``kernels/<family>.cu`` on this device."""
        text = K.source(family)
        key = (family, self.index, text)
        with _MODULES_LOCK:
            mod = _MODULES.get(key)
            if mod is None:
                options = (*K.NVRTC_OPTIONS, f"-I{K.kernel_dir()}")
                with self._dev:
                    mod = self._cp.RawModule(code=text, options=options, backend="nvrtc")
                _MODULES[key] = mod
            return mod

    def function(self, family: str, name: str):
        try:
            with self._dev:
                return self.module(family).get_function(name)
        except Exception as e:  # noqa: BLE001 - CompileException carries NVRTC's log
            raise DeviceError(f"{self.name}: cannot compile/load kernel {name} from {family}.cu: {e}") from e

    def supports(self, src_type: GGMLQuantizationType, dst_type: GGMLQuantizationType) -> bool:
        return K.supports(src_type, dst_type, self._families)

    # -- memory ------------------------------------------------------------------------------------------
    def host_buffer(self, nbytes: int) -> np.ndarray:
        import cupyx

        try:
            with self._dev:
                return cupyx.empty_pinned((int(nbytes),), dtype=np.uint8)
        except Exception as e:  # noqa: BLE001
            raise DeviceError(f"{self.name}: cannot allocate {nbytes} bytes of page-locked host memory: {e}") from e

    def device_buffer(self, nbytes: int):
        return self._alloc(int(nbytes), "a device buffer")

    def _alloc(self, nbytes: int, what: str):
        cp = self._cp
        try:
            with self._dev:
                return cp.empty((nbytes,), dtype=cp.uint8)
        except cp.cuda.memory.OutOfMemoryError as e:
            free, total = self._mem_info()
            raise DeviceOutOfMemory(f"{self.name}: out of memory allocating {nbytes / 2**20:.1f} MiB for {what} "
                                    f"({free / 2**20:.0f} of {total / 2**20:.0f} MiB free); "
                                    f"try a smaller --max-buffer-size") from e

    def _mem_info(self) -> tuple[int, int]:
        with self._dev:
            free, total = self._cp.cuda.runtime.memGetInfo()
        return int(free), int(total)

    def memory_budget(self) -> int:
        """Half of the free device memory, capped (the other half covers the requantize scratch rows,
        up to 4 bytes per weight, and CuPy's pool)."""
        env = os.environ.get("GPUQUANT_CUDA_BUDGET")
        if env:
            return int(env)
        free, _ = self._mem_info()
        return int(min(free // 2, _BUDGET_CAP))

    # -- streams and copies ------------------------------------------------------------------------------
    def stream(self) -> Stream:
        with self._dev:
            return CudaStream(self._cp.cuda.Stream(non_blocking=True))

    def upload(self, dst: Any, src: np.ndarray, nbytes: int, stream: Stream) -> None:
        n = int(nbytes)
        _check_size(dst.nbytes, n, "upload destination")
        _check_size(src.nbytes, n, "upload source")
        with self._dev:
            self._cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.ctypes.data, n, _MEMCPY_H2D, _cuda(stream).ptr)

    def download(self, dst: np.ndarray, src: Any, nbytes: int, stream: Stream) -> None:
        n = int(nbytes)
        _check_size(dst.nbytes, n, "download destination")
        _check_size(src.nbytes, n, "download source")
        with self._dev:
            self._cp.cuda.runtime.memcpyAsync(dst.ctypes.data, src.data.ptr, n, _MEMCPY_D2H, _cuda(stream).ptr)

    def record(self, stream: Stream) -> Event:
        with self._dev:
            ev = self._cp.cuda.Event(disable_timing=True)
            ev.record(_cuda(stream).stream)
        return CudaEvent(ev)

    def wait(self, stream: Stream, event: Event) -> None:
        if not isinstance(event, CudaEvent):
            raise TypeError(f"expected an event of this device, got {type(event).__name__}")
        with self._dev:
            _cuda(stream).stream.wait_event(event.event)

    # -- compute -----------------------------------------------------------------------------------------
    def quantize(self, job: SlabJob, src: Any, dst: Any, quant_weights: Any | None, stream: Stream) -> None:
        if not self.supports(job.src_type, job.dst_type):
            raise DeviceError(f"{self.name}: no kernels for {job.src_type.name} -> {job.dst_type.name}")
        _check_size(src.nbytes, job.src_bytes, "source buffer")
        _check_size(dst.nbytes, job.dst_bytes, "destination buffer")
        has_qw = job.has_quant_weights and quant_weights is not None
        if has_qw:
            _check_size(quant_weights.nbytes, job.quant_weight_bytes, "importance weights")
        p = K.launch_plan(job.src_type, job.dst_type, job.n_per_row, job.rows_per_expert, job.n_expert, has_qw)
        s = _cuda(stream)
        i64, u64 = np.int64, np.uint64
        with self._dev, s.stream:
            # scratch comes from CuPy's pool on this stream: reuse by a later allocation is stream-ordered
            keep = [self._alloc(max(1, n), what) for n, what in ((p.scratch_bytes, "dequantized source rows"),
                                                                 (p.rowstat_bytes, "row statistics"))]
            bufs = {"src": src.data.ptr, "dst": dst.data.ptr, "scratch": keep[0].data.ptr,
                    "rowstat": keep[1].data.ptr}
            for b in K.bind(p, job, bufs, quant_weights.data.ptr if has_qw else 0):
                ln = b.launch
                fn = self.function(ln.family, ln.kernel)
                args = tuple(u64(a) for a in b.ptrs) + tuple(i64(a) for a in b.ints)
                try:
                    fn(ln.grid, ln.block, args, stream=s.stream)
                except Exception as e:  # noqa: BLE001 - CUDADriverError / CUDARuntimeError
                    raise DeviceError(f"{self.name}: launching {ln.kernel} {ln.grid}x{ln.block} failed: {e}") from e
            del keep

    def close(self) -> None:
        try:
            with self._dev:
                self._dev.synchronize()
                self._cp.get_default_memory_pool().free_all_blocks()
                self._cp.get_default_pinned_memory_pool().free_all_blocks()
        except Exception:  # noqa: BLE001 - closing must not raise over an earlier error
            pass


def _cuda(stream: Stream) -> CudaStream:
    if not isinstance(stream, CudaStream):
        raise TypeError(f"expected a stream of a CUDA device, got {type(stream).__name__}")
    return stream


def _check_size(have: int, need: int, what: str) -> None:
    if have < need:
        raise ValueError(f"{what}: {have} bytes, need {need}")
