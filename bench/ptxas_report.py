"""Regenerates bench/ptxas-sm_90.txt: ptxas' resource report for every kernel of every family, compiled for
sm_90 by ``nvrtc.compile_family`` (the CUDA backend's own compile, NVRTC only, no GPU needed).

    python bench/ptxas_report.py [--arch sm_90] [--out bench/ptxas-sm_90.txt]

Per kernel: registers, stack frame, spill bytes, static shared memory per CUDA block, and the 16-byte global
loads (ld.global[.nc].v4) and stores (st.global.v4) in its PTX. tests/test_ptxas.py asserts the limits.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpuquant.backends import kernels as K  # noqa: E402
from gpuquant.backends import nvrtc as N  # noqa: E402
from gpuquant.kernels_cmd import entry_bodies, kernel_resources  # noqa: E402

_V4_LOAD = re.compile(r"\bld\.global(?:\.nc)?\.v4\.")
_V4_STORE = re.compile(r"\bst\.global\.v4\.")


def report(arch: str) -> str:
    nv = N.load()
    lines = [f"# ptxas resource report, {arch}, NVRTC {nv.version[0]}.{nv.version[1]}: python bench/ptxas_report.py",
             f"# options: {' '.join(o for o in N.options_for(N.target(nv, arch)) if not o.startswith('-I'))} -I<kernels>",
             "# regs: registers per thread; stack/spill: bytes; smem: static shared bytes per CUDA block;",
             "# v4 ld/st: 16-byte global loads/stores in the kernel's PTX; threads: CUDA threads per block",
             ""]
    threads = {}
    for t, spec in K.KERNELS.items():
        for src in K.SOURCE_TYPES.values():
            for w in ("", "_w"):
                threads[f"quantize_{spec.name}{w}_{src}"] = spec.threads
    head = f"{'kernel':30s} {'threads':>7s} {'regs':>5s} {'stack':>6s} {'spill':>6s} {'smem':>6s} {'v4 ld':>6s} {'v4 st':>6s}"
    for family in K.available_families():
        img = N.compile_family(family, arch, nv=nv)
        res = kernel_resources(img.log)
        bodies = entry_bodies(img.ptx.decode())
        lines += [f"## {family}.cu", head]
        for name in sorted(res):
            r, body = res[name], bodies.get(name, "")
            lines.append(f"{name:30s} {threads.get(name, ''):>7} {r.registers:5d} {r.stack_bytes:6d} {r.spill_bytes:6d} "
                         f"{r.smem_bytes:6d} {len(_V4_LOAD.findall(body)):6d} {len(_V4_STORE.findall(body)):6d}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", default=str(ROOT / "bench" / "ptxas-sm_90.txt"))
    a = ap.parse_args()
    Path(a.out).write_text(report(a.arch))
    print(a.out)


if __name__ == "__main__":
    main()
