"""Every kernels/*.cu compiles through NVRTC with the production options, for each supported GPU
generation, with no error and no warning.

NVRTC comes from the ``nvidia-cuda-nvrtc`` pip package (cu12 or cu13 layout) or the system; the tests skip
cleanly when no libnvrtc can be found. No GPU is needed.
"""
from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
from pathlib import Path

import pytest

from gpuquant.backends import kernels as K

ARCHS = ("sm_75", "sm_80", "sm_89", "sm_90")


def _find_nvrtc() -> str | None:
    env = os.environ.get("GPUQUANT_NVRTC")
    if env:
        return env
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    for root in roots:
        # cu13: nvidia/cu13/lib/libnvrtc.so.13; cu12: nvidia/cuda_nvrtc/lib/libnvrtc.so.12
        hits = sorted(glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*")))
        hits = [h for h in hits if "builtins" not in h and "alt" not in os.path.basename(h)]
        if hits:
            return hits[-1]
    for name in ("libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"):
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    return None


class Nvrtc:
    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(rc).decode()}")

    def compile(self, text: str, name: str, options: list[str]) -> tuple[int, str]:
        """Returns (nvrtcResult of the compile, log)."""
        prog = ctypes.c_void_p()
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), text.encode(), name.encode(), 0, None, None),
                    "nvrtcCreateProgram")
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            rc = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            buf = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
            return rc, buf.value.decode(errors="replace")
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


_PATH = _find_nvrtc()


@pytest.fixture(scope="module")
def nvrtc() -> Nvrtc:
    if _PATH is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or set GPUQUANT_NVRTC)")
    try:
        return Nvrtc(_PATH)
    except OSError as e:
        pytest.skip(f"libnvrtc at {_PATH} does not load: {e}")


def _families() -> list[str]:
    return list(K.available_families())


def test_every_table_family_has_a_source():
    missing = {s.family for s in K.KERNELS.values()} - set(_families())
    assert not missing, f"KERNELS names missing kernel files: {sorted(missing)}"


def _compile_clean(nvrtc: Nvrtc, family: str, target: str) -> None:
    options = [*K.NVRTC_OPTIONS, f"-I{K.kernel_dir()}", f"--gpu-architecture={target}"]
    rc, log = nvrtc.compile(K.source(family), f"{family}.cu", options)
    assert rc == 0, f"NVRTC {nvrtc.version} failed on {family}.cu for {target}:\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warnings in {family}.cu for {target}:\n{log}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", _families())
def test_compiles_without_warnings(nvrtc: Nvrtc, family: str, arch: str):
    """Front end and NVVM for every architecture (PTX for compute_XX: what the source can warn about)."""
    _compile_clean(nvrtc, family, arch.replace("sm_", "compute_"))


@pytest.mark.parametrize("family", _families())
def test_compiles_to_sass(nvrtc: Nvrtc, family: str):
    """The whole way to machine code (ptxas too) for one architecture, as CuPy does on an H100."""
    _compile_clean(nvrtc, family, ARCHS[-1])


@pytest.mark.parametrize("family", _families())
def test_table_kernels_are_defined(family: str):
    """Every kernel name a plan can launch from this family is an extern "C" __global__ in its source."""
    text = K.source(family)
    names = set()
    for dst, spec in K.KERNELS.items():
        if spec.family != family:
            continue
        names |= {f"quantize_{spec.name}_{s}" for s in K.SOURCE_TYPES.values()}
        if spec.dequantize:
            names.add(f"dequantize_{spec.name}")
    if family == "legacy":
        names |= {f"rowstat_sumsq_{s}" for s in K.SOURCE_TYPES.values()}
    # entry points are spelled out or made by GQ_QUANTIZE_ENTRY_POINTS(<name>)
    macro = {f"quantize_{m}_{s}" for m in _macro_names(text) for s in K.SOURCE_TYPES.values()}
    missing = sorted(n for n in names if f"void {n}(" not in text and n not in macro)
    assert not missing, f"{family}.cu lacks kernels {missing}"


def _macro_names(text: str) -> list[str]:
    import re

    return re.findall(r"^GQ_QUANTIZE_ENTRY_POINTS\((\w+)\)", text, flags=re.M)


def test_options_are_the_production_ones():
    assert "--fmad=false" in K.NVRTC_OPTIONS
    assert not any("fast" in o or "ftz=true" in o or "use_fast_math" in o for o in K.NVRTC_OPTIONS)
    assert Path(K.kernel_dir(), "common.cuh").is_file()
