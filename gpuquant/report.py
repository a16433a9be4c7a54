"""What users see: progress while running, closing tables (per type, per stage), JSON for scripts."""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from .api import Report, TensorReport
from .quants import type_name

MiB = 1024.0 * 1024.0


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[tensor]}"), console=console, transient=True,
    )


def plan_table(tensors: list[TensorReport]) -> Table:
    """Every tensor's chosen type and size, as llama-quantize's --dry-run lists them."""
    t = Table(title="tensor plan", show_lines=False)
    for col in ("#", "tensor", "shape", "from", "to", "MiB in", "MiB out"):
        t.add_column(col, justify="right" if col in ("#", "MiB in", "MiB out") else "left")
    for i, r in enumerate(tensors, 1):
        t.add_row(str(i), r.name, "x".join(str(d) for d in r.shape), type_name(r.src_type), type_name(r.dst_type),
                  f"{r.src_bytes / MiB:.2f}", f"{r.dst_bytes / MiB:.2f}")
    return t


def type_table(report: Report) -> Table:
    groups: dict[str, list[TensorReport]] = defaultdict(list)
    for r in report.tensors:
        groups[type_name(r.dst_type)].append(r)
    t = Table(title="by output type")
    for col in ("type", "tensors", "source MiB", "output MiB", "bits/weight"):
        t.add_column(col, justify="left" if col == "type" else "right")
    for name, rs in sorted(groups.items()):
        n_el = sum(r.n_elements for r in rs)
        out = sum(r.dst_bytes for r in rs)
        t.add_row(name, str(len(rs)), f"{sum(r.src_bytes for r in rs) / MiB:.2f}", f"{out / MiB:.2f}",
                  f"{out * 8 / max(1, n_el):.3f}")
    t.add_row("[bold]total", str(len(report.tensors)), f"{report.src_bytes / MiB:.2f}",
              f"{report.dst_bytes / MiB:.2f}", f"{report.bpw(report.dst_bytes):.3f}")
    return t


def stage_rows(report: Report) -> list[dict[str, Any]]:
    """Per pipeline stage: seconds, GB/s of the bytes it moved, share of wall time."""
    tm = report.times
    if tm is None or tm.wall <= 0:
        return []
    dev = tm.device
    stages = [("read", tm.read, tm.bytes_read), ("h2d", dev.get("h2d"), tm.bytes_read),
              ("kernel", dev.get("kernel"), tm.bytes_read), ("d2h", dev.get("d2h"), tm.bytes_written),
              ("write", tm.write, tm.bytes_written)]
    rows = []
    for name, sec, nbytes in stages:
        if sec is None:
            continue
        rows.append({"stage": name, "seconds": sec, "GB/s": (nbytes / sec / 1e9) if sec > 0 else None,
                     "share": sec / tm.wall})
    return rows


def stage_table(report: Report) -> Table:
    rows = stage_rows(report)
    tm = report.times
    t = Table(title=f"pipeline stages on {report.device} (wall {tm.wall:.2f} s)" if tm else "pipeline stages")
    for col in ("stage", "seconds", "GB/s", "share of wall"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for r in rows:
        t.add_row(r["stage"], f"{r['seconds']:.3f}", "-" if r["GB/s"] is None else f"{r['GB/s']:.2f}",
                  f"{100 * r['share']:.0f}%")
    if rows and tm:
        busiest = max(r["seconds"] for r in rows)
        total = sum(r["seconds"] for r in rows)
        t.caption = (f"overlap: stages add up to {total:.2f} s in {tm.wall:.2f} s wall "
                     f"({total / tm.wall:.2f}x); slowest stage {busiest:.2f} s = {100 * busiest / tm.wall:.0f}% of wall")
    return t


def to_json(report: Report) -> str:
    tm = report.times
    doc = {
        "input": str(report.input), "output": None if report.output is None else str(report.output),
        "ftype": report.ftype, "device": report.device, "seconds": report.seconds,
        "source_bytes": report.src_bytes, "output_bytes": report.dst_bytes,
        "source_bpw": report.bpw(report.src_bytes), "output_bpw": report.bpw(report.dst_bytes),
        "n_fallback": report.n_fallback, "notes": report.notes,
        "tensors": [{"name": r.name, "shape": list(r.shape), "from": type_name(r.src_type),
                     "to": type_name(r.dst_type), "source_bytes": r.src_bytes, "output_bytes": r.dst_bytes}
                    for r in report.tensors],
        "stages": stage_rows(report),
        "wall": None if tm is None else tm.wall,
    }
    return json.dumps(doc, indent=2)


def summary_line(report: Report) -> str:
    return (f"{report.src_bytes / MiB:.2f} MiB ({report.bpw(report.src_bytes):.2f} BPW) -> "
            f"{report.dst_bytes / MiB:.2f} MiB ({report.bpw(report.dst_bytes):.2f} BPW) "
            f"as {report.ftype} in {report.seconds:.2f} s on {report.device}")
