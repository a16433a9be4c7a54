"""gpuquant's own NVRTC binding (ctypes) and the one function that compiles a kernel family for a GPU.

``compile_family`` is the only way a kernel gets compiled: ``cuda.CudaDevice`` loads what it returns, and
``gpuquant kernels --ptx`` writes it out. The options that reach NVRTC are exactly ``kernels.NVRTC_OPTIONS``
plus ``-I<kernel_dir>``, ``--gpu-architecture=<target>`` and, for a real architecture (sm_XX, compiled to a
CUBIN), ``--ptxas-options=-v`` for ptxas' resource report in the log. Nothing goes through CuPy's compiler:
it appends ``-ftz=true`` after the caller's options on every RawModule compile (CuPy issue #9576; NVRTC
takes the last value, so every kernel would flush denormals) and it needs a CUDA driver even to compile.

libnvrtc is the first of these that loads: ``$GPUQUANT_NVRTC`` (then only it); the pip wheels
(``nvidia-cuda-nvrtc`` 13.x: ``nvidia/cu13/lib/libnvrtc.so.13``, ``nvidia-cuda-nvrtc-cu12``:
``nvidia/cuda_nvrtc/lib/libnvrtc.so.12``); a CUDA toolkit (``$CUDA_PATH``, ``$CUDA_HOME``,
``/usr/local/cuda``); the dynamic loader's search path. Results are cached on disk under
``emulated.cache_dir()``, keyed by the source text (it carries a digest of the headers), the options, the
NVRTC version and the target, and written atomically (a temporary file renamed into place).
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib.util
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import DeviceError
from . import kernels as K

__all__ = ["KernelImage", "Nvrtc", "NvrtcError", "candidates", "compile_family", "load", "options_for",
           "resource_report", "target"]

#: layout of a cache entry; bump when it (or what compile_family stores) changes
CACHE_FORMAT = 1
_MAGIC = b"gpuquant-nvrtc\n"
# wheel layouts, newest CUDA major first
_WHEEL_LIBS = ("cu13/lib/libnvrtc.so.13", "cuda_nvrtc/lib/libnvrtc.so.12")
_TOOLKIT_LIB_DIRS = ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
_SONAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")


class NvrtcError(DeviceError):
    """libnvrtc is missing or unusable, or a kernel family does not compile (the message has NVRTC's log)."""


# ------------------------------------------------------------------------------------------------------
# Finding and binding libnvrtc
# ------------------------------------------------------------------------------------------------------


def candidates() -> list[str]:
    """Paths (or sonames) of libnvrtc to try, in order."""
    env = os.environ.get("GPUQUANT_NVRTC")
    if env:
        return [env]
    out: list[str] = []
    for root in _nvidia_package_roots():
        out += [p for rel in _WHEEL_LIBS if os.path.isfile(p := os.path.join(root, rel))]
    for base in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        for sub in _TOOLKIT_LIB_DIRS if base else ():
            hits = [h for h in glob.glob(os.path.join(base, sub, "libnvrtc.so*"))
                    if "builtins" not in h and ".alt." not in h]
            out += sorted(hits, key=_soname_version, reverse=True)
    out += list(_SONAMES)
    return list(dict.fromkeys(out))


def _nvidia_package_roots() -> list[str]:
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    return list(spec.submodule_search_locations or []) if spec else []


def _soname_version(path: str) -> tuple[int, ...]:
    m = re.search(r"\.so((?:\.\d+)*)$", path)
    return tuple(int(x) for x in m.group(1).split(".")[1:]) if m else ()


class Nvrtc:
    """One loaded libnvrtc: its version, the architectures it can target, and ``compile``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = lib = ctypes.CDLL(path)  # OSError when it does not load
        p, sz, i, c = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p
        for name, args in {
            "nvrtcVersion": [ctypes.POINTER(i), ctypes.POINTER(i)],
            "nvrtcCreateProgram": [ctypes.POINTER(p), c, c, i, ctypes.POINTER(c), ctypes.POINTER(c)],
            "nvrtcCompileProgram": [p, i, ctypes.POINTER(c)],
            "nvrtcDestroyProgram": [ctypes.POINTER(p)],
            "nvrtcGetProgramLogSize": [p, ctypes.POINTER(sz)],
            "nvrtcGetProgramLog": [p, ctypes.c_char_p],
            "nvrtcGetPTXSize": [p, ctypes.POINTER(sz)],
            "nvrtcGetPTX": [p, ctypes.c_char_p],
            "nvrtcGetCUBINSize": [p, ctypes.POINTER(sz)],
            "nvrtcGetCUBIN": [p, ctypes.c_char_p],
        }.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = ctypes.c_int, args
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version: tuple[int, int] = (major.value, minor.value)
        self.archs: tuple[int, ...] = self._supported_archs()

    def __repr__(self) -> str:
        return f"Nvrtc({self.version[0]}.{self.version[1]} at {self.path})"

    def _supported_archs(self) -> tuple[int, ...]:
        n = ctypes.c_int()
        self._check(self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
        arr = (ctypes.c_int * n.value)()
        self._check(self.lib.nvrtcGetSupportedArchs(arr), "nvrtcGetSupportedArchs")
        return tuple(sorted(arr))

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise NvrtcError(f"{what}: {self.lib.nvrtcGetErrorString(rc).decode()}")

    def compile(self, text: str, name: str, options: tuple[str, ...]) -> tuple[int, str, bytes, bytes | None]:
        """(nvrtcResult of the compile, log, PTX without its NUL, CUBIN or None for a compute_XX target)."""
        lib, prog = self.lib, ctypes.c_void_p()
        self._check(lib.nvrtcCreateProgram(ctypes.byref(prog), text.encode(), name.encode(), 0, None, None),
                    "nvrtcCreateProgram")
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            rc = lib.nvrtcCompileProgram(prog, len(options), opts)
            log = self._blob(prog, lib.nvrtcGetProgramLogSize, lib.nvrtcGetProgramLog, "log")
            if rc != 0:
                return rc, log.rstrip(b"\0").decode(errors="replace"), b"", None
            ptx = self._blob(prog, lib.nvrtcGetPTXSize, lib.nvrtcGetPTX, "PTX").rstrip(b"\0")
            cubin = self._blob(prog, lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN, "CUBIN") or None
            return 0, log.rstrip(b"\0").decode(errors="replace"), ptx, cubin
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))

    def _blob(self, prog, size_fn, get_fn, what: str) -> bytes:
        size = ctypes.c_size_t()
        self._check(size_fn(prog, ctypes.byref(size)), f"size of the {what}")
        if size.value == 0:
            return b""
        buf = ctypes.create_string_buffer(size.value)
        self._check(get_fn(prog, buf), f"reading the {what}")
        return buf.raw


_LOADED: dict[tuple[str | None, int | None], Nvrtc] = {}
_LOAD_LOCK = threading.Lock()


def load(path: str | None = None, max_major: int | None = None) -> Nvrtc:
    """The first libnvrtc of ``candidates()`` (or ``path``) that loads, of CUDA major ``max_major`` or older
    (a CUBIN from a newer major than the driver's does not load); cached per process."""
    key = (path, max_major)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load(path, max_major)
        return _LOADED[key]


def _load(path: str | None, max_major: int | None) -> Nvrtc:
    tried: list[str] = []
    for cand in [path] if path else candidates():
        try:
            nv = Nvrtc(cand)
        except (OSError, AttributeError, NvrtcError) as e:
            tried.append(f"{cand}: {e}")
            continue
        if max_major is not None and nv.version[0] > max_major:
            tried.append(f"{cand}: NVRTC {nv.version[0]}.{nv.version[1]} is newer than the driver's CUDA {max_major}")
            continue
        return nv
    hint = ("pip install 'gpuquant[cuda13]' (nvidia-cuda-nvrtc) or 'gpuquant[cuda12]' (nvidia-cuda-nvrtc-cu12), "
            "or set GPUQUANT_NVRTC to a libnvrtc.so")
    raise NvrtcError(f"no usable libnvrtc ({hint}); tried: " + "; ".join(tried[-6:]))


# ------------------------------------------------------------------------------------------------------
# Targets and options
# ------------------------------------------------------------------------------------------------------


def target(nv: Nvrtc, arch: str | int) -> str:
    """The ``--gpu-architecture`` NVRTC compiles ``arch`` (``sm_90``, ``90``, ``compute_90``) to: the same
    real architecture when NVRTC knows it (a CUBIN), else PTX for the newest virtual architecture below it
    (the driver compiles that PTX for the GPU when it loads it)."""
    s = str(arch).strip().lower()
    m = re.fullmatch(r"(sm_|compute_)?(\d+)", s)
    if not m:
        raise NvrtcError(f"architecture {arch!r}: expected sm_XX, compute_XX or a compute capability like 90")
    kind, n = m.group(1) or "sm_", int(m.group(2))
    known = [a for a in nv.archs if a <= n]
    if not known:
        raise NvrtcError(f"NVRTC {nv.version[0]}.{nv.version[1]} cannot compile for {kind}{n} "
                         f"(it supports sm_{nv.archs[0]}..sm_{nv.archs[-1]})")
    if kind == "sm_" and known[-1] == n:
        return f"sm_{n}"
    return f"compute_{known[-1]}"


def options_for(tgt: str) -> tuple[str, ...]:
    """Every option NVRTC is given for ``tgt``: ours, the include folder, the target, ptxas' report."""
    extra = ("--ptxas-options=-v",) if tgt.startswith("sm_") else ()
    return (*K.NVRTC_OPTIONS, f"-I{K.kernel_dir()}", f"--gpu-architecture={tgt}", *extra)


def resource_report(log: str) -> list[str]:
    """ptxas' ``-v`` lines of a compile log (registers, spills, stack per kernel); empty for PTX targets."""
    return [ln for ln in log.splitlines() if ln.startswith("ptxas")]


# ------------------------------------------------------------------------------------------------------
# The one compile function, cached on disk
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelImage:
    """A compiled family: the PTX, the CUBIN (None for a compute_XX target), the compile's log."""

    family: str
    target: str
    options: tuple[str, ...]
    nvrtc_version: tuple[int, int]
    ptx: bytes
    cubin: bytes | None
    log: str
    cached: bool = False

    @property
    def image(self) -> bytes:
        """What the CUDA driver loads (cuModuleLoadData): the CUBIN, else the NUL-terminated PTX."""
        return self.cubin if self.cubin else self.ptx + b"\0"


def compile_family(family: str, arch: str | int, nv: Nvrtc | None = None, use_cache: bool = True,
                   on_compile: Callable[[str, str], None] | None = None) -> KernelImage:
    """``kernels/<family>.cu`` compiled for ``arch`` (see ``target``), from the disk cache when it is there.

    ``on_compile(family, target)`` is called right before NVRTC actually runs (a cache miss)."""
    nv = nv or load()
    tgt = target(nv, arch)
    options = options_for(tgt)
    text = K.source(family)
    path = _cache_path(family, tgt, _cache_key(family, text, options, nv.version, tgt))
    if use_cache:
        hit = _read_entry(path, family, tgt, options, nv.version)
        if hit is not None:
            return hit
    if on_compile is not None:
        on_compile(family, tgt)
    rc, log, ptx, cubin = nv.compile(text, f"{family}.cu", options)
    if rc != 0:
        raise NvrtcError(f"NVRTC {nv.version[0]}.{nv.version[1]} failed on {family}.cu for {tgt} "
                         f"(options {' '.join(options)}):\n{log}")
    img = KernelImage(family, tgt, options, nv.version, ptx, cubin, log)
    if use_cache:
        _write_entry(path, img)
    return img


def _cache_key(family: str, text: str, options: tuple[str, ...], version: tuple[int, int], tgt: str) -> str:
    blob = json.dumps([CACHE_FORMAT, family, text, list(options), list(version), tgt]).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _cache_path(family: str, tgt: str, key: str) -> Path:
    from .emulated import cache_dir

    return cache_dir() / f"nvrtc-{family}-{tgt}-{key}.bin"


def _write_entry(path: Path, img: KernelImage) -> None:
    """Header line (JSON with the section sizes) then PTX, CUBIN and log; a temporary file renamed into place
    so that a reader never sees half an entry. A cache that cannot be written is only slower."""
    log = img.log.encode()
    cubin = img.cubin or b""
    head = {"format": CACHE_FORMAT, "family": img.family, "target": img.target, "options": list(img.options),
            "nvrtc": list(img.nvrtc_version), "ptx": len(img.ptx), "cubin": len(cubin), "log": len(log)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + json.dumps(head).encode() + b"\n" + img.ptx + cubin + log)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


def _read_entry(path: Path, family: str, tgt: str, options: tuple[str, ...],
                version: tuple[int, int]) -> KernelImage | None:
    """The cached compile at ``path``, or None when it is missing, truncated or describes another compile."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(_MAGIC):
        return None
    try:
        end = data.index(b"\n", len(_MAGIC))
        head = json.loads(data[len(_MAGIC):end])
        body = data[end + 1:]
        n_ptx, n_cubin, n_log = int(head["ptx"]), int(head["cubin"]), int(head["log"])
    except (ValueError, KeyError, TypeError):
        return None
    if (len(body) != n_ptx + n_cubin + n_log or head.get("format") != CACHE_FORMAT
            or head.get("options") != list(options) or head.get("nvrtc") != list(version)
            or head.get("target") != tgt or head.get("family") != family):
        return None
    ptx, cubin, log = body[:n_ptx], body[n_ptx:n_ptx + n_cubin], body[n_ptx + n_cubin:]
    return KernelImage(family, tgt, options, version, ptx, cubin or None, log.decode(errors="replace"), cached=True)
