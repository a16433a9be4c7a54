"""``gpuquant kernels --ptx DIR [--arch sm_90]``: every kernel family compiled as the CUDA device compiles
it, written out for reading, without a GPU (only libnvrtc is needed).

For each family ``<family>.ptx`` is the PTX of ``nvrtc.compile_family(family, arch)``, the very call
``cuda.CudaDevice`` makes (same options, same disk cache): for a real architecture the device loads the
CUBIN that ptxas assembled from exactly this PTX in that compile; for an architecture newer than NVRTC it
loads this PTX. ``<family>.log`` is that compile's log after a short header: with ptxas' ``-v`` resource
report (registers, stack, spills per kernel) for sm_XX targets.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from .backends import kernels as K
from .backends import nvrtc

_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_ENTRY = re.compile(r"^\.visible \.entry ", re.M)


@dataclass(frozen=True)
class FamilyPTX:
    family: str
    target: str
    ptx: Path
    log: Path
    kernels: int  # .entry functions in the PTX
    max_registers: int | None  # from ptxas' report (None: PTX target, no ptxas run)
    spill_bytes: int | None
    cached: bool


def write_ptx(out_dir: str | os.PathLike, arch: str = "sm_90", families: list[str] | None = None) -> list[FamilyPTX]:
    """Compile every family (in parallel, through the disk cache) for ``arch`` and write its .ptx and .log."""
    nv = nvrtc.load()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fams = list(families or K.available_families())
    with ThreadPoolExecutor(max_workers=max(1, min(len(fams), os.cpu_count() or 1))) as pool:
        images = list(pool.map(lambda f: nvrtc.compile_family(f, arch, nv=nv), fams))
    return [_write(out, nv, img) for img in images]


def _write(out: Path, nv: nvrtc.Nvrtc, img: nvrtc.KernelImage) -> FamilyPTX:
    ptx_path, log_path = out / f"{img.family}.ptx", out / f"{img.family}.log"
    ptx_path.write_bytes(img.ptx)
    loads = "the CUBIN ptxas made from this PTX" if img.cubin else "this PTX (the driver compiles it)"
    head = [f"// {img.family}.cu for {img.target} by NVRTC {nv.version[0]}.{nv.version[1]} ({nv.path})",
            f"// options: {' '.join(img.options)}",
            f"// the CUDA device loads {loads}"]
    if not img.cubin:
        head.append("// no ptxas resource report: a compute_XX target is assembled by the driver at load time")
    log_path.write_text("\n".join(head) + "\n" + img.log + ("" if img.log.endswith("\n") else "\n"))
    regs = [int(m) for m in _REGS.findall(img.log)]
    spills = [int(a) + int(b) for a, b in _SPILL.findall(img.log)]
    return FamilyPTX(img.family, img.target, ptx_path, log_path, len(_ENTRY.findall(img.ptx.decode(errors="replace"))),
                     max(regs) if regs else None, sum(spills) if img.cubin else None, img.cached)


def table(rows: list[FamilyPTX]) -> Table:
    where = rows[0].ptx.parent if rows else ""
    t = Table(title=f"CUDA kernels written to {where}", title_justify="left")
    for col in ("family", "target", "kernels", "max registers", "spill bytes", "written"):
        t.add_column(col, justify="right" if col in ("kernels", "max registers", "spill bytes") else "left")
    for r in rows:
        t.add_row(r.family, r.target, str(r.kernels), "-" if r.max_registers is None else str(r.max_registers),
                  "-" if r.spill_bytes is None else str(r.spill_bytes), f"{r.ptx.name}, {r.log.name}")
    return t


@dataclass(frozen=True)
class KernelResources:
    """ptxas' ``-v`` report of one entry point."""

    name: str
    registers: int
    stack_bytes: int
    spill_bytes: int  # stores + loads
    smem_bytes: int = 0  # static shared memory per CUDA block


_COMPILING = re.compile(r"Compiling entry function '(\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\w+)")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"(\d+) bytes smem")


def kernel_resources(log: str) -> dict[str, KernelResources]:
    """Per entry point of a compile log (sm_XX target): registers, stack frame and spills, as ptxas reports
    them ("Compiling entry function 'k'", then its "Function properties for k" and "Used N registers")."""
    out: dict[str, KernelResources] = {}
    entry = props = None
    stack = spill = 0
    for line in log.splitlines():
        if m := _COMPILING.search(line):
            entry, props, stack, spill = m.group(1), None, 0, 0
        elif m := _PROPERTIES.search(line):
            props = m.group(1)
        elif (m := _STACK.search(line)) and entry is not None and props == entry:
            stack, spill = int(m.group(1)), int(m.group(2)) + int(m.group(3))
        elif (m := _REGS.search(line)) and entry is not None:
            smem = _SMEM.search(line)
            out[entry] = KernelResources(entry, int(m.group(1)), stack, spill, int(smem.group(1)) if smem else 0)
            entry = None
    return out


_ENTRY_BODY = re.compile(r"^\.visible \.entry (\w+)\(", re.M)


def entry_bodies(ptx: str) -> dict[str, str]:
    """The PTX text of each ``.visible .entry`` function (up to the next entry)."""
    starts = [(m.group(1), m.start()) for m in _ENTRY_BODY.finditer(ptx)]
    return {name: ptx[a:(starts[i + 1][1] if i + 1 < len(starts) else len(ptx))]
            for i, (name, a) in enumerate(starts)}
