"""Throughput proxies from ptxas' report for sm_90, checked without a GPU (NVRTC only, ``--ptxas-options=-v``,
through ``nvrtc.compile_family``, the very compile the CUDA backend loads).

For every quantize entry point any launch plan can name (every registered type with a kernel x source type
x with/without importance weights, names from ``kernels.launch_plan``): a 0-byte stack frame (no per-thread
arrays in local memory) and no spills; at most 64 registers for the types of blocks of up to 32 values (the
float conversions, legacy, IQ4_NL, MXFP4) and 128 for the larger ones; 16-byte global loads in the
families whose kernels were reworked to stage their inputs (legacy, iq4; issue 11); no ``.ftz`` in any PTX.
"""
from __future__ import annotations

import re
from functools import lru_cache

import pytest

from gpuquant.backends import kernels as K
from gpuquant.backends import nvrtc as N
from gpuquant.kernels_cmd import entry_bodies, kernel_resources
from gpuquant.quants import QUANT_SIZES

ARCH = "sm_90"
#: families whose quantize kernels must read their source with 16-byte loads (issue 11, part B)
VECTOR_LOAD_FAMILIES = ("legacy", "iq4")
_V4_LOAD = re.compile(r"\bld\.global(?:\.nc)?\.v4\.")


@lru_cache(maxsize=None)
def _image(family: str) -> N.KernelImage:
    try:
        nv = N.load()
    except N.NvrtcError as e:
        pytest.skip(f"libnvrtc not available: {e}")
    return N.compile_family(family, ARCH, nv=nv)


def _entry_points() -> list[tuple[str, str, int]]:
    """(family, kernel, register limit) of every quantize kernel a launch plan can name."""
    out = {}
    for t, spec in K.KERNELS.items():
        if spec.family not in K.available_families():
            continue
        block = QUANT_SIZES[t][0]
        limit = 64 if spec.flat or block <= 32 else 128
        for src in K.SOURCE_TYPES:
            for qw in (False, True):
                ln = K.launch_plan(src, t, max(256, block), 1, 1, qw).launches[-1]
                out[ln.kernel] = (spec.family, ln.kernel, limit)
    return sorted(out.values())


ENTRY_POINTS = _entry_points()


@pytest.mark.parametrize("family,kernel,limit", ENTRY_POINTS, ids=[k for _, k, _ in ENTRY_POINTS])
def test_quantize_kernel_resources(family: str, kernel: str, limit: int):
    img = _image(family)
    res = kernel_resources(img.log).get(kernel)
    assert res is not None, f"{kernel}: not in ptxas' report of {family}.cu for {ARCH}"
    assert res.stack_bytes == 0, f"{kernel}: {res.stack_bytes}-byte stack frame (per-thread arrays in local memory)"
    assert res.spill_bytes == 0, f"{kernel}: {res.spill_bytes} bytes of spills"
    assert res.registers <= limit, f"{kernel}: {res.registers} registers > {limit}"


@pytest.mark.parametrize("family,kernel", [(f, k) for f, k, _ in ENTRY_POINTS if f in VECTOR_LOAD_FAMILIES],
                         ids=[k for f, k, _ in ENTRY_POINTS if f in VECTOR_LOAD_FAMILIES])
def test_sixteen_byte_global_loads(family: str, kernel: str):
    body = entry_bodies(_image(family).ptx.decode())[kernel]
    assert _V4_LOAD.search(body), f"{kernel}: no ld.global.v4 / ld.global.nc.v4 in its PTX"


@pytest.mark.parametrize("family", sorted({f for f, _, _ in ENTRY_POINTS}))
def test_no_flush_to_zero(family: str):
    ptx = _image(family).ptx.decode()
    assert ".ftz" not in ptx, f"{family}.ptx has .ftz instructions"


def test_the_report_parser_reads_a_known_log():
    log = """ptxas info    : Compiling entry function 'k1' for 'sm_90'
ptxas info    : Function properties for k1
ptxas         .     16 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 70 registers, used 0 barriers, 16 bytes cumulative stack size
ptxas info    : Function properties for _Z3subv
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'k2' for 'sm_90'
ptxas info    : Function properties for k2
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers
"""
    r = kernel_resources(log)
    assert (r["k1"].registers, r["k1"].stack_bytes, r["k1"].spill_bytes) == (70, 16, 12)
    assert (r["k2"].registers, r["k2"].stack_bytes, r["k2"].spill_bytes) == (32, 0, 0)
