"""The kernels through NVRTC, with no GPU: every kernels/*.cu compiles with the production options for each
supported GPU generation without error or warning; the PTX the CUDA device loads has no flush-to-zero, no
contraction into FMA and no approximate division or square root; exactly our options reach NVRTC; the disk
cache hits and misses when it should; the source texts are read once.

NVRTC is gpuquant's own binding (``gpuquant.backends.nvrtc``) over the ``nvidia-cuda-nvrtc`` pip package
(cu12 or cu13 layout) or a CUDA toolkit; the tests skip cleanly when no libnvrtc can be found.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gpuquant.backends import kernels as K
from gpuquant.backends import nvrtc as N
from gpuquant.backends.emulated import kernel_names

ARCHS = ("sm_75", "sm_80", "sm_89", "sm_90")
SASS_ARCH = "sm_90"  # what the CUDA device compiles on an H100/H200
#: PTX that breaks byte identity: flush-to-zero, FMA contraction, approximate division / square root
FORBIDDEN_PTX = re.compile(rb"\.ftz\b|\bfma\.|\.approx\b|\bdiv\.full\b")


def _load() -> N.Nvrtc | None:
    try:
        return N.load()
    except N.NvrtcError:
        return None


_NV = _load()


@pytest.fixture(scope="module")
def nv() -> N.Nvrtc:
    if _NV is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or set GPUQUANT_NVRTC)")
    return _NV


def _families() -> list[str]:
    return list(K.available_families())


def forbidden_instructions(ptx: bytes) -> list[str]:
    """The lines of ``ptx`` with an instruction FORBIDDEN_PTX matches (first 5)."""
    return [ln.strip().decode() for ln in ptx.splitlines() if FORBIDDEN_PTX.search(ln)][:5]


class OptionSpy:
    """Wraps nvrtcCompileProgram of a fresh binding: records the option strings that reach libnvrtc."""

    def __init__(self, path: str) -> None:
        self.nv = N.Nvrtc(path)
        self.calls: list[tuple[str, ...]] = []
        real = self.nv.lib.nvrtcCompileProgram

        def spy(prog, n, opts):
            self.calls.append(tuple(opts[i].decode() for i in range(n)))
            return real(prog, n, opts)

        self.nv.lib.nvrtcCompileProgram = spy


# ------------------------------------------------------------------------------------------------------
# every family compiles cleanly
# ------------------------------------------------------------------------------------------------------


def test_every_table_family_has_a_source():
    missing = {s.family for s in K.KERNELS.values()} - set(_families())
    assert not missing, f"KERNELS names missing kernel files: {sorted(missing)}"


def _assert_clean(img: N.KernelImage) -> None:
    assert "warning" not in img.log.lower(), f"NVRTC warnings in {img.family}.cu for {img.target}:\n{img.log}"
    assert "error" not in img.log.lower(), img.log


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", _families())
def test_compiles_without_warnings(nv: N.Nvrtc, family: str, arch: str):
    """Front end and NVVM for every architecture (PTX for compute_XX: what the source can warn about)."""
    _assert_clean(N.compile_family(family, arch.replace("sm_", "compute_"), nv=nv))


@pytest.mark.parametrize("family", _families())
def test_compiles_to_sass_with_a_resource_report(nv: N.Nvrtc, family: str):
    """The whole way to machine code (ptxas too), as the CUDA device does on an H100/H200."""
    img = N.compile_family(family, SASS_ARCH, nv=nv)
    _assert_clean(img)
    assert img.target == SASS_ARCH and img.cubin and img.cubin[:4] == b"\x7fELF"
    assert img.image == img.cubin
    entries = len(re.findall(rb"^\.visible \.entry ", img.ptx, flags=re.M))
    used = [ln for ln in N.resource_report(img.log) if "Used" in ln and "registers" in ln]
    assert entries > 0 and len(used) == entries, f"{family}: {entries} kernels, ptxas reported {len(used)}"


# ------------------------------------------------------------------------------------------------------
# the float rules in the PTX that gets loaded
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", _families())
def test_ptx_has_no_ftz_fma_or_approximation(nv: N.Nvrtc, family: str):
    img = N.compile_family(family, SASS_ARCH, nv=nv)
    bad = forbidden_instructions(img.ptx)
    assert not bad, f"{family}.cu PTX for {img.target} breaks the float rules: {bad}"


def test_the_ptx_check_can_fail(nv: N.Nvrtc):
    """A fast-math compile is caught; so is CuPy's RawModule order (our --ftz=false, then its -ftz=true
    appended, CuPy issue #9576): NVRTC takes the last value and warns."""
    base = (f"-I{K.kernel_dir()}", "--gpu-architecture=compute_90")
    rc, log, ptx, _ = nv.compile(K.source("floats"), "floats.cu", ("--std=c++17", "--use_fast_math", *base))
    assert rc == 0, log
    assert any(".ftz" in ln for ln in forbidden_instructions(ptx))
    rc, log, ptx, _ = nv.compile(K.source("floats"), "floats.cu", (*K.NVRTC_OPTIONS, *base, "-ftz=true"))
    assert rc == 0 and "followed by" in log, log
    assert any(".ftz" in ln for ln in forbidden_instructions(ptx))


def test_options_reaching_nvrtc_are_exactly_ours(nv: N.Nvrtc):
    spy = OptionSpy(nv.path)
    N.compile_family("floats", SASS_ARCH, nv=spy.nv, use_cache=False)
    N.compile_family("floats", "compute_80", nv=spy.nv, use_cache=False)
    inc = f"-I{K.kernel_dir()}"
    assert spy.calls == [(*K.NVRTC_OPTIONS, inc, "--gpu-architecture=sm_90", "--ptxas-options=-v"),
                         (*K.NVRTC_OPTIONS, inc, "--gpu-architecture=compute_80")]


def test_options_are_the_production_ones():
    assert K.NVRTC_OPTIONS == ("--std=c++17", "--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false")
    assert Path(K.kernel_dir(), "common.cuh").is_file()


# ------------------------------------------------------------------------------------------------------
# targets and libraries
# ------------------------------------------------------------------------------------------------------


def test_target_selection(nv: N.Nvrtc):
    newest, oldest = nv.archs[-1], nv.archs[0]
    assert N.target(nv, f"sm_{newest}") == f"sm_{newest}"
    assert N.target(nv, str(newest)) == f"sm_{newest}"  # CuPy's compute_capability spelling
    assert N.target(nv, f"compute_{oldest}") == f"compute_{oldest}"
    assert N.target(nv, "sm_999") == f"compute_{newest}"  # a GPU newer than NVRTC: PTX, JIT by the driver
    with pytest.raises(N.NvrtcError, match="cannot compile"):
        N.target(nv, f"sm_{oldest - 1}")
    with pytest.raises(N.NvrtcError, match="expected sm_XX"):
        N.target(nv, "hopper")


def test_library_search_order(tmp_path, monkeypatch):
    for rel in N._WHEEL_LIBS:
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_bytes(b"")
    monkeypatch.delenv("GPUQUANT_NVRTC", raising=False)
    monkeypatch.setattr(N, "_nvidia_package_roots", lambda: [str(tmp_path)])
    found = N.candidates()
    assert found[:2] == [str(tmp_path / "cu13/lib/libnvrtc.so.13"), str(tmp_path / "cuda_nvrtc/lib/libnvrtc.so.12")]
    monkeypatch.setenv("GPUQUANT_NVRTC", "/x/libnvrtc.so.12")
    assert N.candidates() == ["/x/libnvrtc.so.12"]
    with pytest.raises(N.NvrtcError, match="no usable libnvrtc"):
        N._load(None, None)


def test_a_newer_nvrtc_than_the_driver_is_refused(nv: N.Nvrtc):
    with pytest.raises(N.NvrtcError, match="newer than the driver"):
        N._load(nv.path, nv.version[0] - 1)
    assert N._load(nv.path, nv.version[0]).version == nv.version


# ------------------------------------------------------------------------------------------------------
# the disk cache
# ------------------------------------------------------------------------------------------------------


def test_disk_cache_hits_and_misses(nv: N.Nvrtc, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUQUANT_CACHE_DIR", str(tmp_path / "cache"))
    spy = OptionSpy(nv.path)

    def build(arch="compute_80"):
        return N.compile_family("floats", arch, nv=spy.nv)

    first = build()
    assert not first.cached and len(spy.calls) == 1
    again = build()
    assert again.cached and len(spy.calls) == 1, "same source, options, NVRTC and target: a hit"
    assert (again.ptx, again.cubin, again.log, again.options) == (first.ptx, first.cubin, first.log, first.options)
    assert not build("compute_90").cached and len(spy.calls) == 2, "another target: a miss"
    ours = K.NVRTC_OPTIONS
    monkeypatch.setattr(K, "NVRTC_OPTIONS", (*ours, "-DGQ_CACHE_TEST=1"))
    assert not build().cached and len(spy.calls) == 3, "other options: a miss"
    monkeypatch.setattr(K, "NVRTC_OPTIONS", ours)
    monkeypatch.setattr(spy.nv, "version", (spy.nv.version[0], spy.nv.version[1] + 1))
    assert not build().cached and len(spy.calls) == 4, "another NVRTC version: a miss"
    monkeypatch.setattr(spy.nv, "version", nv.version)
    assert build().cached and len(spy.calls) == 4
    entries = list((tmp_path / "cache").iterdir())
    assert all(p.name.startswith("nvrtc-floats-") and p.suffix == ".bin" for p in entries), entries  # no temp files
    sm = build(SASS_ARCH)
    assert sm.cubin and build(SASS_ARCH).cubin == sm.cubin


def test_disk_cache_misses_on_a_header_edit_and_survives_a_bad_entry(nv: N.Nvrtc, tmp_path, monkeypatch):
    kdir = tmp_path / "kernels"
    kdir.mkdir()
    for p in K.kernel_dir().iterdir():
        if p.suffix in (".cu", ".cuh", ".h"):
            shutil.copy(p, kdir / p.name)
    monkeypatch.setattr(K, "kernel_dir", lambda: kdir)
    monkeypatch.setenv("GPUQUANT_CACHE_DIR", str(tmp_path / "cache"))
    spy = OptionSpy(nv.path)
    assert not N.compile_family("floats", "compute_80", nv=spy.nv).cached
    (kdir / "common.cuh").write_text((kdir / "common.cuh").read_text() + "\n// edited\n")
    K.source.cache_clear()
    try:
        img = N.compile_family("floats", "compute_80", nv=spy.nv)
        assert not img.cached, "a header edit must miss"
        entry = N._cache_path("floats", img.target,
                              N._cache_key("floats", K.source("floats"), img.options, nv.version, img.target))
        entry.write_bytes(entry.read_bytes()[:-10])  # truncated (a crash mid-write of a non-atomic cache)
        redo = N.compile_family("floats", "compute_80", nv=spy.nv)
        assert not redo.cached and len(spy.calls) == 3
        assert N.compile_family("floats", "compute_80", nv=spy.nv).cached
    finally:
        K.source.cache_clear()


def test_a_failing_compile_raises_with_the_log(nv: N.Nvrtc, tmp_path, monkeypatch):
    kdir = tmp_path / "kernels"
    kdir.mkdir()
    (kdir / "common.cuh").write_text("#pragma once\n")
    (kdir / "broken.cu").write_text('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }\n')
    monkeypatch.setattr(K, "kernel_dir", lambda: kdir)
    monkeypatch.setenv("GPUQUANT_CACHE_DIR", str(tmp_path / "cache"))
    try:
        with pytest.raises(N.NvrtcError, match="undefined_name"):
            N.compile_family("broken", "compute_80", nv=nv)
    finally:
        K.source.cache_clear()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


# ------------------------------------------------------------------------------------------------------
# sources
# ------------------------------------------------------------------------------------------------------


def test_sources_are_read_once_per_process():
    K.source("legacy")
    before = K._read_source.cache_info()
    for _ in range(3):
        K.source("legacy")
    after = K._read_source.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 3


def test_source_changes_with_its_headers(tmp_path, monkeypatch):
    """Compiled kernels are cached by source text: a header edit must change the text."""
    for p in K.kernel_dir().iterdir():
        if p.suffix in (".cu", ".cuh", ".h"):
            shutil.copy(p, tmp_path / p.name)
    monkeypatch.setattr(K, "kernel_dir", lambda: tmp_path)
    try:
        before = K.source("legacy")
        (tmp_path / "common.cuh").write_text((tmp_path / "common.cuh").read_text() + "\n// edited\n")
        K.source.cache_clear()
        after = K.source("legacy")
    finally:
        K.source.cache_clear()
    assert before != after and before.split("// gpuquant headers")[0] == after.split("// gpuquant headers")[0]


@pytest.mark.parametrize("family", _families())
def test_table_kernels_are_defined(family: str):
    """Every kernel name a plan can launch from this family is an extern "C" __global__ in its source."""
    text = K.source(family)
    names = set()
    for dst, spec in K.KERNELS.items():
        if spec.family != family:
            continue
        names |= set(spec.quantize_kernels())
        if spec.dequantize:
            names.add(f"dequantize_{spec.name}")
    if family == "legacy":
        names |= {f"rowstat_sumsq_{s}" for s in K.SOURCE_TYPES.values()}
    # entry points are spelled out or made by the entry-point macros (the emulator's reading of them)
    missing = sorted(names - set(kernel_names(text)))
    assert not missing, f"{family}.cu lacks kernels {missing}"

