"""What users see: progress while running, closing tables (per type, per stage, per-tensor error), JSON.

Progress comes in three forms, picked by :func:`make_progress`: a rich live bar on a terminal, one plain
line per finished tensor (like llama-quantize's log) when stderr is a file or a pipe, nothing with
``--quiet``. All three take ``quantize_file``'s ``on_plan`` and ``progress`` callbacks.
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from typing import IO, Any, Sequence

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.table import Table

from .api import Report, TensorReport
from .quants import QUANT_SIZES, type_name

MiB = 1024.0 * 1024.0
STATS_ROWS = 15  # worst tensors listed by the --stats table (the JSON has them all)


def _shape(ne: Sequence[int]) -> str:
    return " x ".join(str(d) for d in ne)


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ---------------------------------------------------------------------------------------------- progress


class RunProgress:
    """Counts finished tensors from ``progress(name, done_bytes, total_bytes)`` calls (one per slab written;
    a tensor is finished when the next one starts, or at :meth:`finish`). Subclasses show it."""

    def __init__(self) -> None:
        self.reports: list[TensorReport] = []
        self.by_name: dict[str, TensorReport] = {}
        self.n_done = 0
        self.current: str | None = None
        self.done_bytes = 0
        self.total_bytes = 0
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()

    # quantize_file callbacks
    def plan(self, reports: list[TensorReport]) -> None:
        with self._lock:
            self.reports = list(reports)
            self.by_name = {r.name: r for r in reports}
            self.total_bytes = sum(r.src_bytes for r in reports)
            self.t0 = time.perf_counter()
            self.update()

    def __call__(self, name: str, done: int, total: int) -> None:
        with self._lock:
            if done < self.done_bytes:  # written again from the start (out-of-memory retry)
                self.n_done, self.current = 0, None
            if name != self.current:
                if self.current is not None:
                    self.n_done += 1
                    self.tensor_done(self.current)
                self.current = name
            self.done_bytes, self.total_bytes = done, total
            self.update()

    def finish(self) -> None:
        with self._lock:
            if self.current is not None:
                self.n_done += 1
                self.tensor_done(self.current)
                self.current = None
            self.update()

    @property
    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.done_bytes / dt if dt > 0 else 0.0

    # to override
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def update(self) -> None:
        pass

    def tensor_done(self, name: str) -> None:
        pass


class RichProgress(RunProgress):
    """A live bar: bytes and tensors done, throughput, ETA, the tensor being written."""

    def __init__(self, console: Console, description: str = "quantizing") -> None:
        super().__init__()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(binary_units=True),
            TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[tensors]}"),
            TextColumn("[cyan]{task.fields[tensor]}"), console=console, transient=True,
        )
        self.task = self.progress.add_task(description, total=None, tensors="", tensor="")

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def update(self) -> None:
        n = len(self.reports)
        self.progress.update(self.task, completed=self.done_bytes, total=self.total_bytes or None,
                             tensors=f"{self.n_done}/{n} tensors" if n else "", tensor=self.current or "")


class PlainProgress(RunProgress):
    """One line per finished tensor, as llama-quantize logs them, for logs and pipes."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.stream = stream

    def tensor_done(self, name: str) -> None:
        r = self.by_name.get(name)
        n = len(self.reports)
        rate = self.rate
        # a rate measured on the first few KiB (norm vectors) says nothing about the rest
        settled = rate > 0 and self.done_bytes >= 0.01 * self.total_bytes
        eta = _duration((self.total_bytes - self.done_bytes) / rate) if settled else "?"
        what = ""
        if r is not None:
            what = (f" [{_shape(r.shape)}] {type_name(r.src_type)} -> {r.dst_label or type_name(r.dst_type)}, "
                    f"{r.src_bytes / MiB:.2f} MiB -> {r.dst_bytes / MiB:.2f} MiB")
        width = len(str(n))
        self.stream.write(f"[{self.n_done:{width}d}/{n}] {name}{what} | {self.done_bytes / MiB:.1f}/"
                          f"{self.total_bytes / MiB:.1f} MiB, {rate / MiB:.1f} MiB/s, ETA {eta}\n")
        self.stream.flush()


def make_progress(console: Console, quiet: bool) -> RunProgress:
    """Rich bar on a terminal, plain lines otherwise, nothing when quiet."""
    if quiet:
        return RunProgress()
    if console.is_terminal:
        return RichProgress(console)
    return PlainProgress(console.file)


# ---------------------------------------------------------------------------------------------- tables


def plan_text(tensors: list[TensorReport]) -> str:
    """Every tensor's chosen type and size, as llama-quantize's --dry-run lists them: plain aligned columns
    (a rich Table takes seconds for the thousands of tensors of a MoE model)."""
    rows = [(str(i), r.name, _shape(r.shape), type_name(r.src_type), type_name(r.dst_type),
             f"{r.src_bytes / MiB:.2f}", f"{r.dst_bytes / MiB:.2f}") for i, r in enumerate(tensors, 1)]
    head = ("#", "tensor", "shape", "from", "to", "MiB in", "MiB out")
    right = (True, False, False, False, False, True, True)
    widths = [max(len(head[c]), *(len(r[c]) for r in rows)) if rows else len(head[c]) for c in range(len(head))]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join(["tensor plan", line(head), rule, *(line(r) for r in rows)])


def type_rows(report: Report) -> list[dict[str, Any]]:
    """Per output type: tensor count, source and output bytes, bits per weight."""
    groups: dict[str, list[TensorReport]] = defaultdict(list)
    for r in report.tensors:
        groups[type_name(r.dst_type)].append(r)
    rows = []
    for name, rs in sorted(groups.items()):
        n_el = sum(r.n_elements for r in rs)
        out = sum(r.dst_bytes for r in rs)
        rows.append({"type": name, "tensors": len(rs), "source_bytes": sum(r.src_bytes for r in rs),
                     "output_bytes": out, "n_elements": n_el, "bpw": out * 8 / max(1, n_el)})
    return rows


def type_table(report: Report) -> Table:
    t = Table(title="by output type")
    for col in ("type", "tensors", "source MiB", "output MiB", "bits/weight"):
        t.add_column(col, justify="left" if col == "type" else "right")
    for r in type_rows(report):
        t.add_row(r["type"], str(r["tensors"]), f"{r['source_bytes'] / MiB:.2f}", f"{r['output_bytes'] / MiB:.2f}",
                  f"{r['bpw']:.3f}")
    t.add_row("[bold]total", str(len(report.tensors)), f"{report.src_bytes / MiB:.2f}",
              f"{report.dst_bytes / MiB:.2f}", f"{report.bpw(report.dst_bytes):.3f}")
    return t


def stage_rows(report: Report) -> list[dict[str, Any]]:
    """Per pipeline stage: seconds busy, GB/s of the bytes it moved, share of wall time."""
    tm = report.times
    if tm is None or tm.wall <= 0:
        return []
    dev = tm.device
    stages = [("read", tm.read, tm.bytes_read), ("validate", tm.validate, tm.bytes_read),
              ("h2d", dev.get("h2d"), tm.bytes_read),
              ("kernel", dev.get("kernel"), tm.bytes_read), ("d2h", dev.get("d2h"), tm.bytes_written),
              ("write", tm.write, tm.bytes_written)]
    rows = []
    for name, sec, nbytes in stages:
        if sec is None:
            continue
        rows.append({"stage": name, "seconds": sec, "bytes": nbytes,
                     "GB/s": (nbytes / sec / 1e9) if sec > 0 else None, "share": sec / tm.wall})
    return rows


def overlap(report: Report) -> dict[str, Any] | None:
    """How well the stages overlapped: ``concurrency`` = busy seconds of all stages / wall (how many ran at
    once on average); ``efficiency`` = slowest stage / wall (1.0: the run took no longer than its slowest
    stage, i.e. everything else was hidden behind it)."""
    rows = stage_rows(report)
    if not rows:
        return None
    wall = report.times.wall
    busiest = max(rows, key=lambda r: r["seconds"])
    total = sum(r["seconds"] for r in rows)
    return {"wall": wall, "busy_seconds": total, "concurrency": total / wall, "bottleneck": busiest["stage"],
            "efficiency": busiest["seconds"] / wall}


def stage_table(report: Report) -> Table:
    rows = stage_rows(report)
    tm = report.times
    t = Table(title=f"pipeline stages on {report.device} (wall {tm.wall:.2f} s)" if tm else "pipeline stages")
    for col in ("stage", "seconds", "GB/s", "share of wall"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for r in rows:
        t.add_row(r["stage"], f"{r['seconds']:.3f}", "-" if r["GB/s"] is None else f"{r['GB/s']:.2f}",
                  f"{100 * r['share']:.0f}%")
    return t


def overlap_line(report: Report) -> str:
    """One sentence on the overlap achieved (empty when there are no stage times)."""
    ov = overlap(report)
    if not ov:
        return ""
    return (f"overlap achieved: the stages were busy {ov['busy_seconds']:.2f} s in {ov['wall']:.2f} s of wall time "
            f"({ov['concurrency']:.2f} at once on average); the bottleneck, {ov['bottleneck']}, took "
            f"{100 * ov['efficiency']:.0f}% of the wall time (100% = every other stage hidden behind it)")


def stats_table(stats: Sequence, limit: int = STATS_ROWS) -> Table:
    """The worst tensors first (lowest cosine similarity)."""
    shown = list(stats)[:limit]
    more = f", {len(stats) - len(shown)} more in --json" if len(stats) > len(shown) else ""
    t = Table(title=f"quantization error vs source (worst first{more})")
    for col in ("tensor", "from", "to", "RMSE", "max |err|", "cosine", "RMSE / RMS"):
        t.add_column(col, justify="left" if col in ("tensor", "from", "to") else "right")
    for s in shown:
        t.add_row(s.name, s.src_type, s.dst_type, f"{s.rmse:.3e}", f"{s.max_abs_error:.3e}", f"{s.cosine:.6f}",
                  f"{s.rel_rmse:.4f}")
    return t


def to_json(report: Report, stats: Sequence | None = None) -> str:
    tm = report.times
    doc = {
        "input": str(report.input), "output": None if report.output is None else str(report.output),
        "ftype": report.ftype, "device": report.device, "seconds": report.seconds,
        "source_bytes": report.src_bytes, "output_bytes": report.dst_bytes,
        "source_bpw": report.bpw(report.src_bytes), "output_bpw": report.bpw(report.dst_bytes),
        "n_fallback": report.n_fallback, "notes": report.notes,
        "types": type_rows(report),
        "tensors": [{"name": r.name, "shape": list(r.shape), "from": type_name(r.src_type),
                     "to": type_name(r.dst_type), "source_bytes": r.src_bytes, "output_bytes": r.dst_bytes}
                    for r in report.tensors],
        "stages": stage_rows(report),
        "overlap": overlap(report),
        "wall": None if tm is None else tm.wall,
        "stats": None if stats is None else [s.as_dict() for s in stats],
    }
    if report.size_plan is not None:
        from .planner import plan_json

        doc["size_plan"] = plan_json(report.size_plan)
    return json.dumps(doc, indent=2)


def summary_line(report: Report) -> str:
    return (f"{report.src_bytes / MiB:.2f} MiB ({report.bpw(report.src_bytes):.2f} BPW) -> "
            f"{report.dst_bytes / MiB:.2f} MiB ({report.bpw(report.dst_bytes):.2f} BPW) "
            f"as {report.ftype} in {report.seconds:.2f} s on {report.device}")


def bpw_of_type(qtype) -> float:
    """Bits per weight of one ggml type: 8 * type_size / block_size."""
    block, size = QUANT_SIZES[qtype]
    return 8.0 * size / block


# ---------------------------------------------------------------------------------------------- several outputs


def job_plan_text(job) -> str:
    """A dry run of several types: every tensor with the type it gets in each output, then each output's
    size (plain aligned columns, as :func:`plan_text`)."""
    reports = job.reports
    first = reports[0].tensors if reports else []
    head = ("#", "tensor", "shape", "from", "MiB in", *(r.ftype for r in reports))
    rows = [(str(i + 1), t.name, _shape(t.shape), type_name(t.src_type), f"{t.src_bytes / MiB:.2f}",
             *(type_name(r.tensors[i].dst_type) for r in reports)) for i, t in enumerate(first)]
    total = ("", "total MiB", "", "", f"{sum(t.src_bytes for t in first) / MiB:.2f}",
             *(f"{r.dst_bytes / MiB:.2f}" for r in reports))
    bpw = ("", "bits per weight", "", "", "", *(f"{r.bpw(r.dst_bytes):.3f}" for r in reports))
    widths = [max(len(str(x[c])) for x in [head, *rows, total, bpw]) for c in range(len(head))]
    right = {0, 4}

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if (i in right or i >= 5) else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([f"tensor plan of {len(reports)} outputs", line(head), rule, *(line(r) for r in rows), rule,
                      line(total), line(bpw)])


def outputs_table(job) -> Table:
    """One row per output: file, size, bits per weight, and whether it was written (or why not)."""
    t = Table(title=f"{len(job.reports)} outputs from one read of {job.input.name}")
    for col in ("type", "output", "MiB", "bits/weight", "status"):
        t.add_column(col, justify="right" if col in ("MiB", "bits/weight") else "left")
    for r in job.reports:
        status = "[green]written[/]" if r.error is None else "[red]failed[/] (the reason follows)"
        if r.output is None:
            status = "dry run" if r.error is None else status
        t.add_row(r.ftype, "-" if r.output is None else str(r.output), f"{r.dst_bytes / MiB:.2f}",
                  f"{r.bpw(r.dst_bytes):.3f}", status)
    return t


def output_profile(report: Report) -> dict[str, Any] | None:
    ot = report.output_times
    if ot is None:
        return None
    return {"bytes_written": ot.bytes_written, "write_seconds": ot.write, "finished_after_seconds": ot.finished,
            "slabs": ot.targets}


def output_profile_table(job) -> Table:
    """Per output: bytes and write time, and when its last byte was written (the stages before the write
    are shared by all outputs: see the stage table)."""
    t = Table(title="per output")
    for col in ("type", "MiB written", "write s", "write GB/s", "finished after s"):
        t.add_column(col, justify="left" if col == "type" else "right")
    for r in job.reports:
        p = output_profile(r)
        if p is None:
            t.add_row(r.ftype, "-", "-", "-", "-")
            continue
        gbs = p["bytes_written"] / p["write_seconds"] / 1e9 if p["write_seconds"] > 0 else None
        t.add_row(r.ftype, f"{p['bytes_written'] / MiB:.2f}", f"{p['write_seconds']:.3f}",
                  "-" if gbs is None else f"{gbs:.2f}", f"{p['finished_after_seconds']:.2f}")
    return t


def job_json(job, stats: dict | None = None) -> str:
    """The report of several outputs: the job's stages once, then each output's report (``to_json``) with
    its error and its own profile."""
    stats = stats or {}
    outs = []
    for k, r in enumerate(job.reports):
        d = json.loads(to_json(r, stats.get(k)))
        d["error"] = r.error
        d["profile"] = output_profile(r)
        outs.append(d)
    first = job.reports[0] if job.reports else None
    doc = {"input": str(job.input), "device": job.device, "seconds": job.seconds, "notes": job.notes,
           "failed": [r.ftype for r in job.failed],
           "stages": stage_rows(first) if first is not None and first.times is not None else [],
           "overlap": overlap(first) if first is not None and first.times is not None else None,
           "wall": None if job.times is None else job.times.wall, "outputs": outs}
    return json.dumps(doc, indent=2)
