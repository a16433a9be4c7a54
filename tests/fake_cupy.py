"""A stand-in ``cupy`` (and ``cupyx``) for testing ``CudaDevice`` without a GPU.

It models an asynchronous device honestly enough to catch ordering bugs: every copy, kernel launch and
event record is queued, in issue order, and runs only when the host waits (an event's ``synchronize``, a
device ``synchronize``). Issue order respects every stream order and event dependency, so it is one valid
schedule of a real GPU, the laziest one: memory freed while an operation that touches it is still queued is
recorded in ``FakeGPU.violations``. Kernels are the emulated ones (``EmulatedDevice.library``), looked up by
name in the image the device loaded (a real CUBIN from NVRTC contains its kernels' names). CuPy's compiler,
``RawModule`` and its pinned-memory pool are booby-trapped: using them is a test failure.
"""
from __future__ import annotations

import collections
import ctypes
import threading
import types
from typing import Callable

import numpy as np

from gpuquant.backends import kernels as K
from gpuquant.backends.emulated import EmulatedDevice, kernel_names

ERROR_MEMORY_ALLOCATION = 2


class CUDARuntimeError(RuntimeError):
    def __init__(self, status: int, what: str = "") -> None:
        super().__init__(f"cudaError {status} {what}".strip())
        self.status = status


class CUDADriverError(RuntimeError):
    pass


def _forbidden(what: str):
    def call(*args, **kwargs):
        raise AssertionError(f"{what} must not be used (gpuquant compiles with its own NVRTC binding)")

    return call


def _kernel_table() -> dict[str, tuple[str, bool]]:
    """kernel name -> (family, uses __syncthreads)."""
    sync = {}
    for spec in K.KERNELS.values():
        for name in spec.quantize_kernels():
            sync[name] = spec.sync
        sync[f"dequantize_{spec.name}"] = spec.sync
    return {name: (fam, sync.get(name, False)) for fam in K.available_families() for name in kernel_names(K.source(fam))}


class FakeGPU:
    """The state behind one stand-in cupy module: memory, the operation queue, what happened."""

    def __init__(self, emu: EmulatedDevice, device_memory: int = 16 << 30) -> None:
        self.emu = emu
        self.lock = threading.RLock()
        self.queue: collections.deque = collections.deque()  # (op, ranges, label)
        self.clock_ms = 0.0
        self.device_memory = device_memory
        self.device_allocs: dict[int, tuple[int, ctypes.Array]] = {}
        self.host_allocs: dict[int, tuple[int, ctypes.Array]] = {}
        self.log: list[tuple] = []  # ("malloc", n), ("hostAlloc", n), ("free", ptr), ("sync",), ("launch", name)...
        self.violations: list[str] = []
        self.events: list = []
        self.fail_launch: str | None = None  # kernel name whose launch raises CUDADriverError
        self.fail_malloc: list[Callable[[int], bool]] = []  # one OOM for the first allocation each matches
        self.kernels = _kernel_table()
        self.modules: list[bytes] = []

    # -- the queue ---------------------------------------------------------------------------------------
    def enqueue(self, op, ranges, label) -> None:
        with self.lock:
            self.queue.append((op, ranges, label))

    def run_until(self, marker=None) -> None:
        with self.lock:
            while self.queue:
                op, _, _ = self.queue.popleft()
                op()
                self.clock_ms += 0.25
                if marker is not None and op is marker:
                    return

    def synchronize(self) -> None:
        with self.lock:
            self.log.append(("sync",))
            self.run_until()

    def pending(self) -> int:
        with self.lock:
            return len(self.queue)

    def _check_free(self, ptr: int, size: int, kind: str) -> None:
        with self.lock:
            for _, ranges, label in self.queue:
                if any(a < ptr + size and ptr < a + n for a, n in ranges):
                    self.violations.append(f"{kind} {ptr:#x} freed while '{label}' that touches it is queued")

    # -- memory ------------------------------------------------------------------------------------------
    def malloc(self, n: int) -> int:
        with self.lock:
            for i, pred in enumerate(self.fail_malloc):
                if pred(n):
                    del self.fail_malloc[i]
                    raise CUDARuntimeError(ERROR_MEMORY_ALLOCATION, "out of memory (injected)")
            if sum(s for s, _ in self.device_allocs.values()) + n > self.device_memory:
                raise CUDARuntimeError(ERROR_MEMORY_ALLOCATION, "out of memory")
            buf = (ctypes.c_ubyte * n)()
            ptr = ctypes.addressof(buf)
            self.device_allocs[ptr] = (n, buf)
            self.log.append(("malloc", n))
            return ptr

    def free(self, ptr: int) -> None:
        with self.lock:
            n, _ = self.device_allocs.pop(ptr)
            self._check_free(ptr, n, "device buffer")
            self.log.append(("free", ptr))

    def host_alloc(self, n: int, flags: int) -> int:
        with self.lock:
            buf = (ctypes.c_ubyte * n)()
            ptr = ctypes.addressof(buf)
            self.host_allocs[ptr] = (n, buf)
            self.log.append(("hostAlloc", n, flags))
            return ptr

    def free_host(self, ptr: int) -> None:
        with self.lock:
            n, _ = self.host_allocs.pop(ptr)
            self._check_free(ptr, n, "pinned buffer")
            self.log.append(("freeHost", ptr))

    def memcpy_async(self, dst: int, src: int, n: int, kind: int, stream: int) -> None:
        assert kind in (1, 2) and isinstance(stream, int) and stream != 0, (kind, stream)
        self.enqueue(lambda: ctypes.memmove(dst, src, n), [(dst, n), (src, n)], f"copy {n} bytes")

    # -- kernels -----------------------------------------------------------------------------------------
    def launch(self, image: bytes, name: str, grid, block, args, stream) -> None:
        assert isinstance(stream, FakeStream), type(stream)
        assert all(type(a) in (np.uint64, np.int64) for a in args), [type(a) for a in args]
        if self.fail_launch == name:
            raise CUDADriverError(f"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES (injected) launching {name}")
        family, sync = self.kernels[name]
        lib = self.emu.library(family)
        ptr = [int(a) or None for a in args]
        if len(args) == 7:
            op = lambda: lib.launch_quantize(name, grid, block, 2, sync, *ptr[:4], *[int(a) for a in args[4:]])  # noqa: E731
            ranges = [(p, 1) for p in ptr[:4] if p]
        else:
            op = lambda: lib.launch_convert(name, grid, block, 2, sync, ptr[0], ptr[1], int(args[2]), int(args[3]))  # noqa: E731
            ranges = [(p, 1) for p in ptr[:2] if p]
        with self.lock:
            self.log.append(("launch", name))
        self.enqueue(op, ranges, f"kernel {name}")


class _Ctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeStream(_Ctx):
    _next = 0x1000

    def __init__(self, non_blocking: bool = False) -> None:
        assert non_blocking, "pipeline streams must not synchronize with the legacy default stream"
        FakeStream._next += 0x10
        self.ptr = FakeStream._next

    def wait_event(self, ev) -> None:
        assert isinstance(ev, FakeEvent)  # issue order already runs ev's work first


class FakeEvent:
    gpu: FakeGPU  # set per module

    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        self.block, self.disable_timing = block, disable_timing
        self.done = False
        self.time_ms: float | None = None
        self._marker = None
        self.gpu.events.append(self)

    def record(self, stream=None) -> None:
        assert isinstance(stream, FakeStream)

        def mark():
            self.done, self.time_ms = True, self.gpu.clock_ms

        self._marker = mark
        self.gpu.enqueue(mark, [], "event")

    def synchronize(self) -> None:
        if not self.done:
            self.gpu.run_until(self._marker)


def make_cupy(gpu: FakeGPU, driver_version: int = 13000, n_devices: int = 1):
    """(cupy, cupyx) stand-in modules over ``gpu``."""

    class Event(FakeEvent):
        pass

    Event.gpu = gpu

    class Device(_Ctx):
        compute_capability = "90"

        def __init__(self, i: int = 0) -> None:
            self.i = i

        def synchronize(self) -> None:
            gpu.synchronize()

    class Module:
        def __init__(self) -> None:
            self.image = b""

        def load(self, image: bytes) -> None:
            assert image[:4] == b"\x7fELF" or image.endswith(b"\0"), "neither a CUBIN nor NUL-terminated PTX"
            self.image = image
            gpu.modules.append(image)

        def get_function(self, name: str):
            if name.encode() not in self.image:
                raise CUDADriverError(f"CUDA_ERROR_NOT_FOUND: {name}")
            return lambda grid, block, args, stream=None: gpu.launch(self.image, name, grid, block, args, stream)

    def elapsed(a: FakeEvent, b: FakeEvent) -> float:
        assert not (a.disable_timing or b.disable_timing), "elapsed time of an event without timing"
        assert a.done and b.done
        return b.time_ms - a.time_ms

    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: n_devices, getDeviceProperties=lambda i: {"name": b"Fake H100"},
        driverGetVersion=lambda: driver_version, memGetInfo=lambda: (8 << 30, 16 << 30),
        malloc=gpu.malloc, free=gpu.free, hostAlloc=gpu.host_alloc, freeHost=gpu.free_host,
        memcpyAsync=gpu.memcpy_async, CUDARuntimeError=CUDARuntimeError)
    pool = types.SimpleNamespace(free_all_blocks=lambda: None, malloc=_forbidden("CuPy's pinned memory pool"))
    cp = types.ModuleType("cupy")
    cp.uint8 = np.uint8
    cp.cuda = types.SimpleNamespace(
        runtime=runtime, Device=Device, Stream=FakeStream, Event=Event, get_elapsed_time=elapsed,
        function=types.SimpleNamespace(Module=Module),
        compiler=types.SimpleNamespace(compile_using_nvrtc=_forbidden("cupy.cuda.compiler"),
                                       _compile_module_with_cache=_forbidden("cupy.cuda.compiler")),
        alloc_pinned_memory=_forbidden("cupy.cuda.alloc_pinned_memory"),
        driver=types.SimpleNamespace(CUDADriverError=CUDADriverError))
    cp.RawModule = _forbidden("cupy.RawModule")
    cp.RawKernel = _forbidden("cupy.RawKernel")
    cp.empty = _forbidden("cupy.empty (CuPy's memory pool)")
    cp.get_default_memory_pool = lambda: pool
    cp.get_default_pinned_memory_pool = lambda: pool
    cpx = types.ModuleType("cupyx")
    cpx.empty_pinned = _forbidden("cupyx.empty_pinned (CuPy's power-of-two pinned pool)")
    return cp, cpx
