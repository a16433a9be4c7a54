"""``--stats``: how far each written tensor is from its source (RMSE, max abs error, cosine similarity).

A post-pass over the finished output file: every tensor whose type changed is read back from disk in slabs
of rows, dequantized (``quants.dequantize``, ggml's to_float) and compared with its source rows converted to
float32 the way ggml converts them. Memory stays bounded by the slab size, and
what is measured is what was written.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .gguf_io import SourceTensor, read_model, read_rows
from .quants import dequantize, row_size, type_name

SLAB_BYTES = 4 << 20  # float32 bytes of one tensor's rows compared at a time


@dataclass
class TensorStats:
    name: str
    src_type: str
    dst_type: str
    n_elements: int
    rmse: float
    max_abs_error: float
    cosine: float  # 1.0 for two all-zero tensors
    rel_rmse: float  # RMSE / RMS of the source (0 for an all-zero source)

    def as_dict(self) -> dict:
        return asdict(self)


def _cosine(dot: float, ss_a: float, ss_b: float) -> float:
    if ss_a == 0.0 and ss_b == 0.0:
        return 1.0
    if ss_a == 0.0 or ss_b == 0.0:
        return 0.0
    return max(-1.0, min(1.0, dot / math.sqrt(ss_a * ss_b)))


def compare_tensor(src: SourceTensor, out: SourceTensor, slab_bytes: int = SLAB_BYTES) -> TensorStats:
    """Error of ``out`` (the written tensor) against ``src``, accumulated in float64 over row slabs."""
    n = src.n_per_row
    rows_per_slab = max(1, slab_bytes // (4 * max(1, n)))
    rs_src, rs_out = row_size(src.type, n), row_size(out.type, n)
    buf_src = np.empty(rows_per_slab * rs_src, np.uint8)
    buf_out = np.empty(rows_per_slab * rs_out, np.uint8)
    sse = dot = ss_src = ss_out = 0.0
    max_abs = 0.0
    fd_src, fd_out = os.open(src.path, os.O_RDONLY), os.open(out.path, os.O_RDONLY)
    try:
        for r0 in range(0, src.nrows, rows_per_slab):
            r = min(rows_per_slab, src.nrows - r0)
            read_rows(src, r0 * rs_src, buf_src, r * rs_src, fd_src)
            read_rows(out, r0 * rs_out, buf_out, r * rs_out, fd_out)
            a = dequantize(buf_src[: r * rs_src], src.type, n).astype(np.float64)
            b = dequantize(buf_out[: r * rs_out], out.type, n).astype(np.float64)
            d = b - a
            sse += float(np.dot(d.ravel(), d.ravel()))
            max_abs = max(max_abs, float(np.max(np.abs(d))) if d.size else 0.0)
            dot += float(np.dot(a.ravel(), b.ravel()))
            ss_src += float(np.dot(a.ravel(), a.ravel()))
            ss_out += float(np.dot(b.ravel(), b.ravel()))
    finally:
        os.close(fd_src)
        os.close(fd_out)
    count = src.n_elements
    rmse = math.sqrt(sse / count) if count else 0.0
    rms = math.sqrt(ss_src / count) if count else 0.0
    return TensorStats(out.name, type_name(src.type), type_name(out.type), count, rmse, max_abs,
                       _cosine(dot, ss_src, ss_out), rmse / rms if rms else 0.0)


def compute_stats(source: str | os.PathLike, output: str | os.PathLike, *, rename: dict[str, str] | None = None,
                  progress: Callable[[str, int, int], None] | None = None,
                  slab_bytes: int = SLAB_BYTES) -> list[TensorStats]:
    """Per-tensor error of every tensor of ``output`` whose type differs from its source, worst first.

    ``rename`` maps output names to source names where they differ (pruned layers are renumbered).
    Worst = lowest cosine similarity, then highest relative RMSE.
    """
    src_model, out_model = read_model(Path(source)), read_model(Path(output))
    by_name = {t.name: t for t in src_model.tensors}
    rename = rename or {}
    todo = []
    for t in out_model.tensors:
        s = by_name.get(rename.get(t.name, t.name))
        if s is None or s.type == t.type or s.ne != t.ne:
            continue
        todo.append((s, t))
    total = sum(s.nbytes for s, _ in todo)
    done = 0
    stats = []
    for s, t in todo:
        stats.append(compare_tensor(s, t, slab_bytes))
        done += s.nbytes
        if progress:
            progress(t.name, done, total)
    stats.sort(key=lambda x: (x.cosine, -x.rel_rmse))
    return stats


__all__ = ["TensorStats", "compare_tensor", "compute_stats", "SLAB_BYTES"]
