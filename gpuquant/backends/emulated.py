"""``EmulatedDevice``: the CUDA kernels of ``kernels/*.cu`` run on the host.

Each kernel family is compiled, unchanged, by the system C++ compiler with ``kernels/host_shim.h``
force-included and ``kernels/host_launch.cpp`` linked in, into a shared library cached on disk (keyed by
a hash of the sources, the flags and the compiler). A launch runs the same grid and block geometry as on
the GPU (``kernels.launch_plan``), its thread blocks spread over ``threads`` host threads by the C++ launcher
(ctypes releases the GIL for the call). Device memory is host memory; streams are ``HostStream``s.
There is no separate CPU version of any kernel: this is both the GPU-less conformance check of the
kernels and the fast CPU path.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..quants import GGMLQuantizationType
from . import DeviceError, SlabJob
from . import kernels as K
from .host import HostDevice

__all__ = ["EmulatedDevice", "HOST_CXX_FLAGS", "compile_family", "find_compiler", "cache_dir"]

#: g++ flags: the CUDA float rules on the host (no FMA contraction, no fast math, no -march=native).
#: -O3 as ggml itself is built (it reorders no float operation; it vectorizes the same loops ggml's are).
#: -fno-math-errno only drops errno bookkeeping around sqrtf; it changes no value.
HOST_CXX_FLAGS: tuple[str, ...] = (
    "-std=c++17",
    "-O3",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fno-math-errno",
    "-fPIC",
    "-fno-semantic-interposition",
    "-shared",
    "-pthread",
    "-w",
)


def find_compiler() -> str:
    """The host C++ compiler: ``$CXX``, else g++, else c++; DeviceError if there is none."""
    for cand in (os.environ.get("CXX"), "g++", "c++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)  # type: ignore[return-value]
    raise DeviceError("emulated device: no C++ compiler found (install g++ or set $CXX)")


def cache_dir() -> Path:
    """``$GPUQUANT_CACHE_DIR``, else ``$XDG_CACHE_HOME/gpuquant``, else ``~/.cache/gpuquant``."""
    env = os.environ.get("GPUQUANT_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gpuquant"


_compiler_ids: dict[str, str] = {}


def _compiler_id(cxx: str) -> str:
    if cxx not in _compiler_ids:
        try:
            out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise DeviceError(f"emulated device: cannot run {cxx}: {e}") from None
        _compiler_ids[cxx] = out.splitlines()[0] if out else cxx
    return _compiler_ids[cxx]


def compile_family(family: str, cxx: str | None = None, kernel_dir: Path | None = None) -> Path:
    """Compile ``<kernel_dir>/<family>.cu`` for the host (cached); returns the shared library's path.

    ``kernel_dir`` defaults to the package's kernels (tests pass another folder for shim checks).
    """
    cxx = cxx or find_compiler()
    kdir = kernel_dir or K.kernel_dir()
    cu = kdir / f"{family}.cu"
    if not cu.is_file():
        raise DeviceError(f"emulated device: kernel source {cu} not found")
    digest = _digest(kdir, family, cxx)
    out_dir = cache_dir()
    lib = out_dir / f"emulated-{family}-{digest}.so"
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)
    shim_dir = K.kernel_dir()
    fd, tmp = tempfile.mkstemp(prefix=f".{family}-", suffix=".so", dir=out_dir)
    os.close(fd)
    with tempfile.TemporaryDirectory(dir=out_dir) as gen_dir:
        unit = Path(gen_dir) / f"{family}_host.cpp"
        unit.write_text(block_runners(cu) + "\n" + K.layout_checks(family))
        cmd = [cxx, *HOST_CXX_FLAGS, f"-I{kdir}", f"-I{shim_dir}", "-include", str(shim_dir / "host_shim.h"),
               str(unit), str(shim_dir / "host_launch.cpp"), "-o", tmp]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise DeviceError(f"emulated device: compiling {cu.name} failed:\n{' '.join(cmd)}\n"
                                  f"{res.stderr[-4000:]}")
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return lib


def _remove_stale(out_dir: Path, age_s: float = 3600.0) -> None:
    """Temporary files of builds that were killed (an interrupted process) and are over an hour old."""
    import time

    now = time.time()
    for p in out_dir.glob(".*"):
        try:
            if now - p.stat().st_mtime > age_s:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        except OSError:
            pass


# `extern "C" __global__ [a launch-bounds macro(args)] void <name>(`
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+(?:\w+\([\w\s,]*\)\s+)?void\s+(\w+)\s*\(')
_DYNAMIC_SHARED_RE = re.compile(r"\bextern\s+__shared__\b")
_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_ENTRY_RE = re.compile(r"^\s*GQ_QUANTIZE_(WEIGHTED_)?ENTRY_POINTS\((\w+)\)", re.M)


def kernel_names(text: str) -> list[str]:
    """The ``extern "C" __global__`` kernels of a source, those made by GQ_QUANTIZE_ENTRY_POINTS and
    GQ_QUANTIZE_WEIGHTED_ENTRY_POINTS (also ``quantize_<dst>_w_<src>``) too."""
    names = _KERNEL_RE.findall(text)
    for qw, dst in _ENTRY_RE.findall(text):
        names += [f"quantize_{dst}{w}_{s}" for w in ("", "_w")[:1 + bool(qw)] for s in K.SOURCE_TYPES.values()]
    return list(dict.fromkeys(names))


def block_runners(cu: Path) -> str:
    """The host translation unit of a family: the .cu itself, then for every kernel a block runner
    ``gq_run_block_<kernel>(ptrs, ints)`` looping over the block's threads with the kernel inlined (once per
    phase for kernels written with GQ_PHASES, kernels/host_shim.h).
    ``quantize_*`` kernels have the quantize ABI (4 pointers, 3 integers), every other kernel the
    (in, out, n_per_row, nrows) one. Dynamic shared memory (``extern __shared__``, in the .cu or a header
    of its folder) is refused: the harness has static ``__shared__`` arrays only."""
    for src in [cu, *sorted(cu.parent.glob("*.cuh"))]:
        if _DYNAMIC_SHARED_RE.search(_COMMENT_RE.sub("", src.read_text())):
            raise DeviceError(f"emulated device: {src.name} declares dynamic shared memory (extern __shared__), "
                              "which the host harness does not run: use a static __shared__ array sized for the block")
    out = [K.generated_tables(cu.stem), "#pragma GCC visibility push(hidden)", f'#include "{cu.resolve()}"',
           "#pragma GCC visibility pop", ""]
    for name in kernel_names(cu.read_text()):
        if name.startswith("quantize_"):
            call = f"{name}(gq_any_ptr{{p[0]}}, gq_any_ptr{{p[1]}}, gq_any_ptr{{p[2]}}, gq_any_ptr{{p[3]}}, v[0], v[1], v[2])"
        else:
            call = f"{name}(gq_any_ptr{{p[0]}}, gq_any_ptr{{p[1]}}, v[0], v[1])"
        out += [
            f'extern "C" __attribute__((flatten)) void gq_run_block_{name}(const void* const* p, const long long* v) {{',
            "    const gq_dim3 b = blockDim;",
            "    gq_phase_runner = 1;",
            "    gq_phase_count = 1;",
            "    for (int ph = 0; ph < gq_phase_count; ++ph) {",
            "        gq_phase_current = ph;",
            "        for (unsigned int z = 0; z < b.z; ++z)",
            "            for (unsigned int y = 0; y < b.y; ++y)",
            "                for (unsigned int x = 0; x < b.x; ++x) {",
            "                    threadIdx.x = x; threadIdx.y = y; threadIdx.z = z;",
            f"                    {call};",
            "                }",
            "    }",
            "    gq_phase_runner = 0;",
            "}",
            "",
        ]
    return "\n".join(out)


def _digest(kdir: Path, family: str, cxx: str) -> str:
    import hashlib

    shim = K.kernel_dir()
    h = hashlib.sha256()
    for p in [kdir / f"{family}.cu", *sorted(kdir.glob("*.cuh")), shim / "host_shim.h", shim / "host_fibers.h",
              shim / "host_launch.cpp", *sorted(shim.glob("*.cuh"))]:
        h.update(str(p.name).encode())
        h.update(p.read_bytes())
    h.update(" ".join(HOST_CXX_FLAGS).encode())
    h.update(block_runners(kdir / f"{family}.cu").encode())
    h.update(K.layout_checks(family).encode())
    h.update(_compiler_id(cxx).encode())
    return h.hexdigest()[:24]


_GEOM = ctypes.c_longlong * 6
# one build at a time per family, across devices and the background precompile
_FAMILY_LOCKS: dict[str, threading.Lock] = {}
_FAMILY_LOCKS_GUARD = threading.Lock()


def _family_lock(family: str) -> threading.Lock:
    with _FAMILY_LOCKS_GUARD:
        return _FAMILY_LOCKS.setdefault(family, threading.Lock())


class KernelLibrary:
    """One compiled family: look kernels up by name and launch them with a CUDA geometry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise DeviceError(f"emulated device: cannot load {path}: {e}") from None
        self._lq = self._lib.gq_launch_quantize
        self._lq.restype = ctypes.c_int
        self._lq.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_longlong] * 3 + [_GEOM, ctypes.c_int, ctypes.c_int]
        self._lc = self._lib.gq_launch_convert
        self._lc.restype = ctypes.c_int
        self._lc.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_longlong] * 2 + [_GEOM, ctypes.c_int, ctypes.c_int]
        self._lb = self._lib.gq_launch_blocks
        self._lb.restype = ctypes.c_int
        self._lb.argtypes = [ctypes.c_void_p] * 3 + [_GEOM, ctypes.c_int]
        self._fns: dict[str, int] = {}

    def kernel(self, name: str) -> int:
        """Address of ``extern "C"`` kernel ``name``."""
        fn = self._fns.get(name)
        if fn is None:
            try:
                fn = ctypes.cast(getattr(self._lib, name), ctypes.c_void_p).value
            except AttributeError:
                raise DeviceError(f"emulated device: kernel {name} not found in {self.path.name}") from None
            self._fns[name] = fn  # type: ignore[assignment]
        return fn  # type: ignore[return-value]

    def runner(self, name: str) -> int | None:
        """Address of the generated block runner of ``name`` (None if the library has none)."""
        key = "block:" + name
        if key not in self._fns:
            try:
                self._fns[key] = ctypes.cast(getattr(self._lib, f"gq_run_block_{name}"), ctypes.c_void_p).value
            except AttributeError:
                self._fns[key] = None  # type: ignore[assignment]
        return self._fns[key]

    def launch(self, b: K.BoundLaunch, nthreads: int) -> None:
        """Run one bound launch with the CUDA geometry on ``nthreads`` host threads: through the generated
        block runner for kernels without barriers, else per thread (fibers for sync kernels)."""
        ln = b.launch
        geom = _GEOM(*ln.grid, *ln.block)
        ptrs = [p or None for p in b.ptrs]
        runner = None if ln.sync else self.runner(ln.kernel)
        if runner:
            p = (ctypes.c_void_p * 4)(*ptrs, *[None] * (4 - len(ptrs)))
            v = (ctypes.c_longlong * 3)(*b.ints, *[0] * (3 - len(b.ints)))
            self._lb(runner, p, v, geom, nthreads)
        elif ln.kind == "quantize":
            self._lq(self.kernel(ln.kernel), *ptrs, *b.ints, geom, nthreads, int(ln.sync))
        else:
            self._lc(self.kernel(ln.kernel), *ptrs, *b.ints, geom, nthreads, int(ln.sync))

    def launch_quantize(self, name: str, grid, block, nthreads: int, sync: bool, src: int, dst: int, qw: int | None,
                        rowstat: int | None, n_per_row: int, rows_per_expert: int, n_expert: int) -> None:
        """One quantize-ABI kernel (tests of the harness call kernels directly)."""
        ln = K.Launch("", name, "quantize", tuple(grid), tuple(block), sync, "src", "dst")
        self.launch(K.BoundLaunch(ln, (src, dst, qw or 0, rowstat or 0), (n_per_row, rows_per_expert, n_expert)),
                    nthreads)

    def launch_convert(self, name: str, grid, block, nthreads: int, sync: bool, inp: int, out: int, n_per_row: int,
                       nrows: int) -> None:
        """One (in, out, n_per_row, nrows) kernel (tests of the harness call kernels directly)."""
        ln = K.Launch("", name, "convert", tuple(grid), tuple(block), sync, "src", "dst")
        self.launch(K.BoundLaunch(ln, (inp, out), (n_per_row, nrows)), nthreads)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class EmulatedDevice(HostDevice):
    """The kernels on the host, ``threads`` host threads per launch. Families are built on first use or by
    ``prepare`` (in parallel), once per source version (cached on disk); ``precompile`` builds all of them in a
    background thread right away.
    ``kernel_dir``: another folder of kernel sources (tests build variants, e.g. a GPU's NaN bits).

    ``zero_copy`` (default): kernels work in the pipeline's host staging buffers; False runs the GPU's
    upload/compute/download sequence through separate "device" buffers (tests cover both)."""

    name = "emulated"

    def __init__(self, threads: int | None = None, precompile: bool = False, kernel_dir: Path | None = None) -> None:
        super().__init__()
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self._cxx = find_compiler()
        _compiler_id(self._cxx)
        self._kernel_dir = kernel_dir
        self._families = K.available_families()
        self._libs: dict[str, KernelLibrary] = {}
        if precompile:  # a cold build takes tens of seconds: start it now, not at the first slab
            threading.Thread(target=self._precompile, name="gpuquant-emulated-build", daemon=True).start()

    def _precompile(self) -> None:
        for family in self._families:
            try:
                self.library(family)
            except DeviceError:
                pass  # reported again, with the compiler's output, when the family is used

    def prepare(self, types) -> None:
        """Build the families ``types`` need, in parallel, before the first slab."""
        from concurrent.futures import ThreadPoolExecutor

        todo = [f for f in K.families_for(types) if f not in self._libs]
        if todo:
            with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1)) as pool:
                list(pool.map(self.library, todo))

    def library(self, family: str) -> KernelLibrary:
        """The compiled family (compiled on first use, then cached on disk and here)."""
        with _family_lock(family):
            lib = self._libs.get(family)
            if lib is None:
                lib = KernelLibrary(compile_family(family, self._cxx, self._kernel_dir))
                self._libs[family] = lib
            return lib

    def supports(self, src_type: GGMLQuantizationType, dst_type: GGMLQuantizationType) -> bool:
        return K.supports(src_type, dst_type, self._families)

    def compute(self, job: SlabJob, src: np.ndarray, dst: np.ndarray, quant_weights: np.ndarray | None) -> None:
        """Run a slab's launches now, on the calling thread (plus the launcher's worker threads)."""
        if not self.supports(job.src_type, job.dst_type):
            raise DeviceError(f"emulated device: no kernels for {job.src_type.name} -> {job.dst_type.name}")
        has_qw = job.has_quant_weights and quant_weights is not None
        p = K.launch_plan(job.src_type, job.dst_type, job.n_per_row, job.rows_per_expert, job.n_expert, has_qw)
        if src.nbytes < job.src_bytes or dst.nbytes < job.dst_bytes:
            raise ValueError(f"buffers too small: src {src.nbytes} < {job.src_bytes} or dst {dst.nbytes} < {job.dst_bytes}")
        if has_qw and quant_weights.nbytes < job.quant_weight_bytes:
            raise ValueError(f"quant_weights: {quant_weights.nbytes} bytes < {job.quant_weight_bytes}")
        scratch = np.empty(p.scratch_bytes, np.uint8)
        rowstat = np.empty(p.rowstat_bytes, np.uint8)
        status = np.full(1, K.NO_ABORT, np.uint32)
        bufs = {"src": _ptr(src), "dst": _ptr(dst), "scratch": _ptr(scratch), "rowstat": _ptr(rowstat),
                "status": _ptr(status)}
        for b in K.bind(p, job, bufs, _ptr(quant_weights) if has_qw else 0):
            self.library(b.launch.family).launch(b, self.threads)
        if p.status_bytes:
            K.raise_if_aborted(job, int(status[0]))

    def memory_budget(self) -> int:
        return 1 << 30
