"""The planner's measuring pass: the error of every (tensor, candidate type), by quantizing and dequantizing.

Each tensor's rows (all of them, or ``max_rows`` evenly spaced ones per tensor) are quantized to every
candidate on the job's device (``Device.quantize``, the kernels that write the file) and dequantized with
ggml's ``to_float`` (``quants.dequantize``); the error is ``sum_rows sum_j w_j (x_ij - q_ij)^2`` with the
tensor's importance weights ``w`` (what ``ggml_quantize_chunk`` is given), or ``w = 1`` without an imatrix.
A tensor without weights in an imatrix run is weighted by the mean importance of all weighted tensors, so
that all errors are on one scale. Sampled rows are scaled up to the whole tensor.

Types the device has no kernels for are measured with the numpy reference (a note says which).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import quants
from .backends import Device, SlabJob
from .gguf_io import SourceTensor, read_rows
from .quants import GGMLQuantizationType as T, row_size, type_name

__all__ = ["Measurement", "Task", "measure"]


@dataclass
class Task:
    """One tensor to measure: its source, the types to try, and its importance weights
    (``(n_expert, n_per_row)`` float32, or None)."""

    name: str
    src: SourceTensor
    qtypes: list[T]
    quant_weights: np.ndarray | None


@dataclass
class Measurement:
    """``errors[(tensor, type)]``: measured error (None when ggml would abort on the tensor);
    ``energy[tensor]``: the weighted sum of squares of its source."""

    errors: dict[tuple[str, T], float | None]
    energy: dict[str, float]
    seconds: float
    numpy_types: set[T]


def _sample(nrows_expert: int, max_rows: int | None) -> np.ndarray:
    """Evenly spaced row indices inside one expert (all rows when ``max_rows`` is None or larger)."""
    if max_rows is None or max_rows >= nrows_expert:
        return np.arange(nrows_expert)
    return (np.arange(max_rows, dtype=np.int64) * nrows_expert) // max_rows


def _source_rows(src: SourceTensor, max_rows: int | None) -> tuple[np.ndarray, int, float]:
    """float32 ``(n_expert * k, n)`` sampled rows (k per expert), k, and the scale to the whole tensor."""
    n = src.n_per_row
    rpe = src.ne[1] if len(src.ne) > 1 else 1
    n_expert = src.nrows // rpe
    buf = np.empty(src.nbytes, np.uint8)
    read_rows(src, 0, buf, src.nbytes)
    rows = quants.dequantize(buf, src.type, n).reshape(n_expert, rpe, n)
    idx = _sample(rpe, max_rows)
    return np.ascontiguousarray(rows[:, idx, :].reshape(-1, n)), len(idx), rpe / len(idx)


def _quantize_on(dev: Device, rows: np.ndarray, qtype: T, k: int, qw: np.ndarray | None) -> np.ndarray:
    """One slab of float32 rows (``k`` per expert) quantized on ``dev``: uint8 ``(nrows, row_size)``."""
    n = rows.shape[1]
    job = SlabJob(T.F32, qtype, n, k, rows.shape[0] // k, qw is not None)
    stream = dev.stream()
    src_h, out_h = dev.host_buffer(job.src_bytes), dev.host_buffer(job.dst_bytes)
    src_h[: job.src_bytes] = rows.reshape(-1).view(np.uint8)
    qw_h = None
    if qw is not None:
        qw_h = dev.host_buffer(job.quant_weight_bytes)
        qw_h[: job.quant_weight_bytes] = np.ascontiguousarray(qw, np.float32).reshape(-1).view(np.uint8)
    if dev.zero_copy:
        dev.quantize(job, src_h, out_h, qw_h, stream)
    else:
        src_d, out_d = dev.device_buffer(job.src_bytes), dev.device_buffer(job.dst_bytes)
        dev.upload(src_d, src_h, job.src_bytes, stream)
        qw_d = None
        if qw_h is not None:
            qw_d = dev.device_buffer(job.quant_weight_bytes)
            dev.upload(qw_d, qw_h, job.quant_weight_bytes, stream)
        dev.quantize(job, src_d, out_d, qw_d, stream)
        dev.download(out_h, out_d, job.dst_bytes, stream)
    dev.record(stream).synchronize()
    return np.array(out_h[: job.dst_bytes]).reshape(rows.shape[0], row_size(qtype, n))


def _quantize_numpy(rows: np.ndarray, qtype: T, k: int, qw: np.ndarray | None) -> np.ndarray:
    parts = [quants.quantize(rows[e * k:(e + 1) * k], qtype, None if qw is None else qw[e])
             for e in range(rows.shape[0] // k)]
    return np.concatenate(parts)


def _weighted_sse(x: np.ndarray, y: np.ndarray, w: np.ndarray, k: int) -> float:
    """sum over rows of sum_j w[expert, j] (x - y)^2, in float64."""
    d = (x.astype(np.float64) - y.astype(np.float64)) ** 2
    return float(np.einsum("ekn,en->", d.reshape(w.shape[0], k, -1), w))


def _weights(task: Task, n_expert: int, n: int, default: float) -> np.ndarray:
    if task.quant_weights is not None:
        return np.asarray(task.quant_weights, np.float64).reshape(n_expert, n)
    return np.full((n_expert, n), default)


def measure(dev: Device, tasks: Sequence[Task], *, max_rows: int | None = None, default_weight: float = 1.0,
            progress: Callable[[str, int, int], None] | None = None) -> Measurement:
    """Quantize and dequantize every task's rows in every one of its types; ``progress(tensor, done, total)``
    counts elements quantized."""
    t0 = time.perf_counter()
    total = sum(t.src.n_elements * len(t.qtypes) for t in tasks)
    done = 0
    errors: dict[tuple[str, T], float | None] = {}
    energy: dict[str, float] = {}
    on_numpy: set[T] = set()
    for task in tasks:
        rows, k, scale = _source_rows(task.src, max_rows)
        n_expert = rows.shape[0] // k
        w = _weights(task, n_expert, task.src.n_per_row, default_weight)
        energy[task.name] = scale * _weighted_sse(rows, np.zeros_like(rows), w, k)
        qw = None if task.quant_weights is None else np.asarray(task.quant_weights, np.float32).reshape(n_expert, -1)
        for qtype in task.qtypes:
            errors[(task.name, qtype)] = _measure_one(dev, rows, qtype, k, qw, w, scale, on_numpy)
            done += task.src.n_elements
            if progress:
                progress(f"{task.name} {type_name(qtype)}", done, total)
    return Measurement(errors, energy, time.perf_counter() - t0, on_numpy)


def _measure_one(dev: Device, rows: np.ndarray, qtype: T, k: int, qw, w: np.ndarray, scale: float,
                 on_numpy: set[T]) -> float | None:
    try:
        if dev.supports(T.F32, qtype):
            raw = _quantize_on(dev, rows, qtype, k, qw)
        else:
            on_numpy.add(qtype)
            raw = _quantize_numpy(rows, qtype, k, qw)
    except quants.GGMLAbort:
        return None
    back = quants.dequantize(raw, qtype, rows.shape[1])
    return scale * _weighted_sse(rows, back, w, k)
