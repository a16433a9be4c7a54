"""``CudaDevice``: the kernels of ``kernels/*.cu`` on an NVIDIA GPU, through CuPy's CUDA bindings.

Kernels: each family is compiled by ``nvrtc.compile_family`` (gpuquant's own NVRTC binding, exactly
``kernels.NVRTC_OPTIONS``; never CuPy's compiler, which appends ``-ftz=true``) for the GPU's architecture,
and its CUBIN (PTX for a GPU newer than NVRTC) is loaded with ``cupy.cuda.function.Module.load``
(cuModuleLoadData). Loaded functions are cached per (family, kernel, device) for the process, and
``prepare(types)`` compiles every family a job needs, in parallel, before the pipeline starts. A slab runs
the launches of ``kernels.launch_plan`` (the geometry the emulated device uses too).

Memory: device buffers (cudaMalloc) and page-locked host buffers (cudaHostAlloc of the exact size, not
CuPy's power-of-two pinned pool) are allocated here. A buffer the caller drops is not freed at once: it
goes to a release list that is freed only after a device synchronize (at the next allocation or stream,
and at ``close``), so no memory is freed or reused while a copy or kernel of an aborted slab (an error, an
out-of-memory retry) may still touch it. Page-locked memory is bounded: slabs of at most ``SLAB_CAP``
bytes (``memory_budget``) and at most ``PINNED_CAP`` bytes page-locked at once; past that, staging buffers
are ordinary memory (slower copies, same bytes).

Events use the blocking-sync flag (a waiting host thread sleeps instead of spinning a core); the device
stage times (h2d, kernel, d2h) come from timing events around each operation.
"""
from __future__ import annotations

import collections
import ctypes
import os
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import numpy as np

from ..quants import GGMLQuantizationType
from . import Device, DeviceError, DeviceOutOfMemory, Event, SlabJob, Stream
from . import kernels as K
from . import nvrtc

__all__ = ["CudaDevice", "DeviceBuffer", "PINNED_CAP", "SLAB_CAP", "device_count", "probe"]

_MEMCPY_H2D, _MEMCPY_D2H = 1, 2  # cudaMemcpyKind
_HOST_ALLOC_PORTABLE = 1  # cudaHostAllocPortable
_ERROR_MEMORY_ALLOCATION = 2  # cudaErrorMemoryAllocation
#: largest slab: memory_budget() is at most this times the pipeline's 3 slots (pipeline.SLOTS)
SLAB_CAP = 256 << 20
_PIPELINE_SLOTS = 3
#: most page-locked host memory held at once (the pipeline stages about 7 slabs' worth)
PINNED_CAP = 2 << 30
STATUS_RING = 16  # pinned abort status words per stream (more than the slabs a stream has in flight)


def _cupy():
    """The cupy module, or None when it is not installed or cannot load its CUDA libraries."""
    try:
        import cupy
    except Exception:  # noqa: BLE001 - ImportError, or a CUDA library that fails to load
        return None
    return cupy


def _cupy_reason() -> str:
    try:
        import cupy  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name in ("cupy", "cupyx"):
            return "CuPy is not installed (pip install 'gpuquant[cuda12]' or 'gpuquant[cuda13]')"
        return f"CuPy cannot load: {_one_line(e)}"
    except Exception as e:  # noqa: BLE001
        return f"CuPy cannot load CUDA: {_one_line(e)}"
    return "CuPy is importable"


def _one_line(e: BaseException | str, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    s = text[0] if text else type(e).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."


def device_count() -> int:
    """Number of visible CUDA devices; 0 without CuPy, a driver or a GPU. Never raises."""
    cp = _cupy()
    if cp is None:
        return 0
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no driver / no device
        return 0


def smallest_family() -> str:
    """The kernel family with the shortest source (the quickest to compile): what ``probe`` loads."""
    return min(K.available_families(), key=lambda f: len(K.source(f)))


def probe(index: int = 0) -> tuple[CudaDevice | None, str]:
    """Open GPU ``index`` and compile and load one kernel family on it: ``(device, "")``, or ``(None,
    reason)`` with a one-line reason (no CuPy, no driver, no GPU, no NVRTC, a kernel that does not load)."""
    cp = _cupy()
    if cp is None:
        return None, _cupy_reason()
    try:
        version = int(cp.cuda.runtime.driverGetVersion())
    except Exception as e:  # noqa: BLE001 - libcuda missing
        return None, f"no CUDA driver ({_one_line(e)})"
    if version <= 0:
        return None, "no CUDA driver installed"
    try:
        n = int(cp.cuda.runtime.getDeviceCount())
    except Exception as e:  # noqa: BLE001
        return None, f"CUDA driver {version // 1000}.{version % 1000 // 10} sees no usable GPU ({_one_line(e)})"
    if n == 0:
        return None, "no GPU visible to the CUDA driver (check CUDA_VISIBLE_DEVICES)"
    try:
        dev = CudaDevice(index)
    except Exception as e:  # noqa: BLE001 - DeviceError, or a CUDA error opening the device
        return None, _one_line(e)
    try:
        dev.module(smallest_family())
    except Exception as e:  # noqa: BLE001 - DeviceError (compile or load), CUDA errors
        dev.close()
        return None, _one_line(e)
    return dev, ""


# ------------------------------------------------------------------------------------------------------
# Buffers and their release
# ------------------------------------------------------------------------------------------------------


class DeviceBuffer:
    """``nbytes`` of device memory at ``ptr`` (cudaMalloc), freed through its device's release list."""

    __slots__ = ("ptr", "nbytes", "__weakref__")

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.ptr = int(ptr)
        self.nbytes = int(nbytes)


class _ReleaseList:
    """Memory the caller has dropped, freed only after a device synchronize.

    Entries arrive from weakref finalizers (any thread, any time); ``release`` takes what is there,
    synchronizes the device once, then frees it. After ``close`` every entry is released as it arrives."""

    def __init__(self, cp, dev) -> None:
        self._cp, self._dev = cp, dev
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self.pinned_bytes = 0
        self.closed = False

    def track(self, owner: Any, kind: str, ptr: int, nbytes: int, keep: Any = None) -> None:
        """Free ``ptr`` (``kind`` "device", "host"; "keep": just drop ``keep``) once ``owner`` is gone."""
        if kind == "host":
            with self._lock:
                self.pinned_bytes += nbytes
        fin = weakref.finalize(owner, self._put, (kind, ptr, nbytes, keep))
        fin.atexit = False  # at interpreter exit the process frees everything

    def _put(self, item) -> None:
        self._items.append(item)
        if self.closed:
            self.release()

    def release(self) -> None:
        batch = []
        while True:
            try:
                batch.append(self._items.popleft())
            except IndexError:
                break
        if not batch:
            return
        rt = self._cp.cuda.runtime
        try:
            with self._dev:
                self._dev.synchronize()
        except Exception:  # noqa: BLE001 - a failed context runs nothing any more: freeing is safe
            pass
        for kind, ptr, nbytes, _keep in batch:
            try:
                with self._dev:
                    if kind == "device":
                        rt.free(ptr)
                    elif kind == "host":
                        rt.freeHost(ptr)
            except Exception:  # noqa: BLE001 - freeing must not raise over an earlier error
                pass
            if kind == "host":
                with self._lock:
                    self.pinned_bytes -= nbytes


def _view(ptr: int, nbytes: int) -> tuple[np.ndarray, Any]:
    """A uint8 array over ``nbytes`` at ``ptr`` and the ctypes object every view of it keeps alive."""
    owner = (ctypes.c_ubyte * nbytes).from_address(ptr)
    return np.frombuffer(owner, np.uint8), owner


# ------------------------------------------------------------------------------------------------------
# Streams, events, stage times
# ------------------------------------------------------------------------------------------------------


class CudaStream(Stream):
    def __init__(self, stream) -> None:
        self.stream = stream
        self._scratch: dict[str, DeviceBuffer] = {}
        self._status: np.ndarray | None = None  # pinned abort status words, STATUS_RING of them
        self._status_next = 0

    @property
    def ptr(self) -> int:
        return self.stream.ptr

    def scratch(self, role: str, nbytes: int, dev: CudaDevice) -> DeviceBuffer:
        """A buffer of at least ``nbytes`` for this stream's kernels, reused slab after slab (the stream runs
        in order); a larger one replaces it (grown by half, so slabs of rising size rarely reallocate)."""
        cur = self._scratch.get(role)
        if cur is None or cur.nbytes < nbytes:
            size = max(nbytes, cur.nbytes + cur.nbytes // 2) if cur else nbytes
            self._scratch[role] = cur = dev._alloc(size, f"the {role} buffer", reclaim=False)
        return cur


    def status_slot(self, dev: CudaDevice) -> tuple[np.ndarray, int]:
        """A pinned host word (and its index) for the abort status of one slab, reused round-robin: at most
        a few slabs per stream are between launch and check (the pipeline's slots)."""
        if self._status is None:
            self._status = dev.host_buffer(4 * (STATUS_RING + 1)).view(np.uint32)
            self._status[STATUS_RING] = K.NO_ABORT  # the initial value copied up before every launch
        i = self._status_next
        self._status_next = (i + 1) % STATUS_RING
        return self._status, i


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


class _StageClock:
    """Device seconds per stage from (start, end) timing events recorded around each operation."""

    def __init__(self, cp) -> None:
        self._cp = cp
        self._open: collections.deque = collections.deque()
        self._times: dict[str, float] = {}
        self._lock = threading.Lock()

    def start(self, stream) -> Any:
        ev = self._cp.cuda.Event(block=True, disable_timing=False)
        ev.record(stream)
        return ev

    def stop(self, stage: str, start, stream) -> None:
        ev = self._cp.cuda.Event(block=True, disable_timing=False)
        ev.record(stream)
        with self._lock:
            self._open.append((stage, start, ev))
            self._fold()

    def _fold(self) -> None:
        """Add up the intervals that have finished, oldest first; never waits."""
        while self._open and self._open[0][2].done:
            stage, a, b = self._open.popleft()
            ms = float(self._cp.cuda.get_elapsed_time(a, b))
            self._times[stage] = self._times.get(stage, 0.0) + ms / 1000.0

    def times(self) -> dict[str, float]:
        """The finished operations' times: once the pipeline has waited for its last download every timed
        operation has finished; after an error the unfinished ones do not count."""
        with self._lock:
            try:
                self._fold()
            except Exception:  # noqa: BLE001 - after a device error the open intervals are lost
                self._open.clear()
            return dict(self._times)


# ------------------------------------------------------------------------------------------------------
# Loaded kernels, shared by every CudaDevice of the process
# ------------------------------------------------------------------------------------------------------

_MODULES: dict[tuple[str, int], Any] = {}  # (family, device index) -> cupy.cuda.function.Module
_FUNCTIONS: dict[tuple[str, str, int], Any] = {}  # (family, kernel, device index) -> Function
_LOCKS: dict[tuple[str, int], threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
_ANNOUNCED = threading.Event()


def _lock_for(key: tuple[str, int]) -> threading.RLock:
    """One lock per (family, device): a family is compiled and loaded once even when asked from two threads."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.RLock())


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class CudaDevice(Device):
    """GPU ``index`` through CuPy."""

    def __init__(self, index: int = 0) -> None:
        cp = _cupy()
        if cp is None:
            raise DeviceError(f"CUDA device: {_cupy_reason()}")
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
        self.arch = f"sm_{self._dev.compute_capability}"
        driver = int(cp.cuda.runtime.driverGetVersion())
        try:
            self._nvrtc = nvrtc.load(max_major=driver // 1000 if driver > 0 else None)
            self.target = nvrtc.target(self._nvrtc, self.arch)
        except nvrtc.NvrtcError as e:
            raise DeviceError(f"{self.name}: {e}") from None
        try:
            props = cp.cuda.runtime.getDeviceProperties(self.index)
            gpu = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        except Exception:  # noqa: BLE001 - a name is only for display
            gpu = "GPU"
        v = self._nvrtc.version
        self.description = f"{gpu} ({self.arch}, kernels {self.target} by NVRTC {v[0]}.{v[1]})"
        self._release = _ReleaseList(cp, self._dev)
        self._clock = _StageClock(cp)
        self._noted: set[str] = set()

    # -- kernels -----------------------------------------------------------------------------------------
    def prepare(self, types: Iterable[GGMLQuantizationType]) -> None:
        """Compile (in parallel) and load every kernel family that ``types`` need, before any slab runs.
        ``types``: the destination types of the job's quantized tensors and their quantized source types."""
        todo = [f for f in K.families_for(types) if (f, self.index) not in _MODULES]
        if not todo:
            return
        with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1),
                                thread_name_prefix="gpuquant-nvrtc") as pool:
            images = list(pool.map(self._compile, todo))
        for img in images:
            self._install(img)

    def module(self, family: str):
        """The loaded module of ``kernels/<family>.cu`` on this device (compiled on first use)."""
        key = (family, self.index)
        mod = _MODULES.get(key)
        if mod is None:
            with _lock_for(key):
                mod = _MODULES.get(key)
                if mod is None:
                    mod = self._install(self._compile(family))
        return mod

    def function(self, family: str, name: str):
        key = (family, name, self.index)
        fn = _FUNCTIONS.get(key)
        if fn is None:
            mod = self.module(family)
            try:
                with self._dev:
                    fn = mod.get_function(name)
            except Exception as e:  # noqa: BLE001 - CUDA_ERROR_NOT_FOUND
                raise DeviceError(f"{self.name}: kernel {name} not found in {family}.cu: {e}") from e
            _FUNCTIONS[key] = fn
        return fn

    def _compile(self, family: str) -> nvrtc.KernelImage:
        try:
            return nvrtc.compile_family(family, self.arch, nv=self._nvrtc, on_compile=self._announce)
        except nvrtc.NvrtcError as e:
            raise DeviceError(f"{self.name}: {e}") from None

    def _announce(self, family: str, tgt: str) -> None:
        with _LOCKS_GUARD:  # compiles run in parallel: one line, from the first that misses the cache
            first = not _ANNOUNCED.is_set()
            _ANNOUNCED.set()
        if first:
            from .emulated import cache_dir

            v = self._nvrtc.version
            _say(f"{self.name}: compiling the CUDA kernels for {tgt} with NVRTC {v[0]}.{v[1]} "
                 f"(first use only; cached in {cache_dir()})")

    def _install(self, img: nvrtc.KernelImage):
        key = (img.family, self.index)
        with _lock_for(key):
            mod = _MODULES.get(key)
            if mod is None:
                try:
                    with self._dev:
                        mod = self._cp.cuda.function.Module()
                        mod.load(img.image)
                except Exception as e:  # noqa: BLE001 - CUDADriverError (e.g. a driver older than NVRTC)
                    raise DeviceError(f"{self.name}: the CUDA driver cannot load {img.family} "
                                      f"({img.target}, NVRTC {img.nvrtc_version[0]}.{img.nvrtc_version[1]}): "
                                      f"{e}") from e
                _MODULES[key] = mod
            return mod

    def supports(self, src_type: GGMLQuantizationType, dst_type: GGMLQuantizationType) -> bool:
        return K.supports(src_type, dst_type, self._families)

    # -- memory ------------------------------------------------------------------------------------------
    def host_buffer(self, nbytes: int) -> np.ndarray:
        """Exactly ``nbytes`` of page-locked memory (ordinary memory past ``PINNED_CAP``)."""
        n = int(nbytes)
        self._release.release()
        if n <= 0:
            return np.empty(0, np.uint8)
        if self._release.pinned_bytes + n > PINNED_CAP:
            self._note(f"{self.name}: {PINNED_CAP >> 20} MiB of page-locked host memory in use; "
                       f"further staging buffers are pageable (slower copies)")
            return self._pageable(n)
        try:
            with self._dev:
                ptr = int(self._cp.cuda.runtime.hostAlloc(n, _HOST_ALLOC_PORTABLE))
        except Exception as e:  # noqa: BLE001 - the host cannot page-lock more
            self._note(f"{self.name}: cannot page-lock host memory ({_one_line(e)}); using pageable buffers")
            return self._pageable(n)
        arr, owner = _view(ptr, n)
        self._release.track(owner, "host", ptr, n)
        return arr

    def _pageable(self, n: int) -> np.ndarray:
        """Ordinary memory, kept alive until a device synchronize like the rest (a copy may use it late)."""
        backing = np.empty(n, np.uint8)
        arr, owner = _view(backing.ctypes.data, n)
        self._release.track(owner, "keep", 0, n, keep=backing)
        return arr

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        return self._alloc(int(nbytes), "a device buffer")

    def _alloc(self, nbytes: int, what: str, reclaim: bool = True) -> DeviceBuffer:
        if reclaim:
            self._release.release()
        rt = self._cp.cuda.runtime
        for attempt in (0, 1):
            try:
                with self._dev:
                    buf = DeviceBuffer(rt.malloc(max(1, nbytes)), nbytes)
                break
            except Exception as e:  # noqa: BLE001 - CUDARuntimeError
                if getattr(e, "status", None) != _ERROR_MEMORY_ALLOCATION:
                    raise DeviceError(f"{self.name}: cannot allocate {nbytes} bytes for {what}: {e}") from e
                if attempt:
                    free, total = self._mem_info()
                    raise DeviceOutOfMemory(
                        f"{self.name}: out of memory allocating {nbytes / 2**20:.1f} MiB for {what} "
                        f"({free / 2**20:.0f} of {total / 2**20:.0f} MiB free); "
                        f"try a smaller --max-buffer-size") from e
                self._release.release()
                self._cp.get_default_memory_pool().free_all_blocks()
        self._release.track(buf, "device", buf.ptr, nbytes)
        return buf

    def _mem_info(self) -> tuple[int, int]:
        with self._dev:
            free, total = self._cp.cuda.runtime.memGetInfo()
        return int(free), int(total)

    def memory_budget(self) -> int:
        """Half of the free device memory (the other half covers the requantize scratch rows, up to 4 bytes
        per weight), at most ``SLAB_CAP`` per pipeline slot. GPUQUANT_CUDA_BUDGET (bytes) overrides."""
        env = os.environ.get("GPUQUANT_CUDA_BUDGET")
        if env:
            return int(env)
        free, _ = self._mem_info()
        return int(min(free // 2, SLAB_CAP * _PIPELINE_SLOTS))

    def _note(self, message: str) -> None:
        if message not in self._noted:
            self._noted.add(message)
            _say(message)

    # -- streams and copies ------------------------------------------------------------------------------
    def stream(self) -> Stream:
        self._release.release()
        with self._dev:
            return CudaStream(self._cp.cuda.Stream(non_blocking=True))

    def upload(self, dst: DeviceBuffer, src: np.ndarray, nbytes: int, stream: Stream) -> None:
        n = int(nbytes)
        _check_size(dst.nbytes, n, "upload destination")
        _check_size(src.nbytes, n, "upload source")
        self._copy("h2d", dst.ptr, src.ctypes.data, n, _MEMCPY_H2D, _cuda(stream))

    def download(self, dst: np.ndarray, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
        n = int(nbytes)
        _check_size(dst.nbytes, n, "download destination")
        _check_size(src.nbytes, n, "download source")
        self._copy("d2h", dst.ctypes.data, src.ptr, n, _MEMCPY_D2H, _cuda(stream))

    def _copy(self, stage: str, dst: int, src: int, n: int, kind: int, s: CudaStream) -> None:
        try:
            with self._dev:
                t0 = self._clock.start(s.stream)
                self._cp.cuda.runtime.memcpyAsync(dst, src, n, kind, s.ptr)
                self._clock.stop(stage, t0, s.stream)
        except Exception as e:  # noqa: BLE001 - CUDARuntimeError
            raise DeviceError(f"{self.name}: {stage} copy of {n} bytes failed: {e}") from e

    def record(self, stream: Stream) -> Event:
        with self._dev:
            ev = self._cp.cuda.Event(block=True, disable_timing=True)
            ev.record(_cuda(stream).stream)
        return CudaEvent(ev)

    def wait(self, stream: Stream, event: Event) -> None:
        if not isinstance(event, CudaEvent):
            raise TypeError(f"expected an event of this device, got {type(event).__name__}")
        with self._dev:
            _cuda(stream).stream.wait_event(event.event)

    def synchronize(self) -> None:
        """Wait until everything enqueued on this device has finished."""
        with self._dev:
            self._dev.synchronize()

    def stage_times(self) -> dict[str, float]:
        return self._clock.times()

    # -- compute -----------------------------------------------------------------------------------------
    def quantize(self, job: SlabJob, src: DeviceBuffer, dst: DeviceBuffer, quant_weights: DeviceBuffer | None,
                 stream: Stream):
        if not self.supports(job.src_type, job.dst_type):
            raise DeviceError(f"{self.name}: no kernels for {job.src_type.name} -> {job.dst_type.name}")
        _check_size(src.nbytes, job.src_bytes, "source buffer")
        _check_size(dst.nbytes, job.dst_bytes, "destination buffer")
        has_qw = job.has_quant_weights and quant_weights is not None
        if has_qw:
            _check_size(quant_weights.nbytes, job.quant_weight_bytes, "importance weights")
        p = K.launch_plan(job.src_type, job.dst_type, job.n_per_row, job.rows_per_expert, job.n_expert, has_qw)
        s = _cuda(stream)
        fns = [self.function(ln.family, ln.kernel) for ln in p.launches]
        bufs = {"src": src.ptr, "dst": dst.ptr}
        if p.scratch_bytes:
            bufs["scratch"] = s.scratch("dequantized rows", p.scratch_bytes, self).ptr
        if p.rowstat_bytes:
            bufs["rowstat"] = s.scratch("row statistics", p.rowstat_bytes, self).ptr
        qw_ptr = quant_weights.ptr if has_qw else 0
        i64, u64 = np.int64, np.uint64
        words = slot = None
        if p.status_bytes:
            bufs["status"] = s.scratch("abort status", p.status_bytes, self).ptr
            words, slot = s.status_slot(self)
            self._copy("h2d", bufs["status"], words[-1:].ctypes.data, 4, _MEMCPY_H2D, s)
        with self._dev:
            t0 = self._clock.start(s.stream)
            for b, fn in zip(K.bind(p, job, bufs, qw_ptr), fns):
                ln = b.launch
                args = tuple(u64(a) for a in b.ptrs) + tuple(i64(a) for a in b.ints)
                try:
                    fn(ln.grid, ln.block, args, stream=s.stream)
                except Exception as e:  # noqa: BLE001 - CUDADriverError
                    raise DeviceError(f"{self.name}: launching {ln.kernel} {ln.grid}x{ln.block} failed: {e}") from e
            self._clock.stop("kernel", t0, s.stream)
        if words is None:
            return None
        self._copy("d2h", words[slot:].ctypes.data, bufs["status"], 4, _MEMCPY_D2H, s)
        return lambda: K.raise_if_aborted(job, int(words[slot]))

    def close(self) -> None:
        """Free what the caller has dropped (after a synchronize); anything dropped later is freed as it
        is dropped."""
        self._release.release()
        self._release.closed = True
        try:
            with self._dev:
                self._cp.get_default_memory_pool().free_all_blocks()
        except Exception:  # noqa: BLE001 - closing must not raise over an earlier error
            pass


def _cuda(stream: Stream) -> CudaStream:
    if not isinstance(stream, CudaStream):
        raise TypeError(f"expected a stream of a CUDA device, got {type(stream).__name__}")
    return stream


def _check_size(have: int, need: int, what: str) -> None:
    if have < need:
        raise ValueError(f"{what}: {have} bytes, need {need}")
