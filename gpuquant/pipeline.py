"""read -> upload -> compute -> download -> write, written once over the Device interface.

A reader thread fills host buffers from the input file, the calling thread issues each slab onto three
device streams (host-to-device copy, compute, device-to-host copy) ordered with events, and a writer thread
validates and writes finished slabs. Device buffers are used round-robin in ``SLOTS`` slots, so while slab
i is written, slab i+1 is computed and slab i+2 uploaded (the idea of llama.cpp PR #21507, taken further).
Memory stays bounded by the slot buffers whatever the model size.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import validate
from .backends import Device, SlabJob
from .gguf_io import SourceTensor, read_rows, tensor_nbytes
from .gguf_writer import StreamWriter
from .quants import QUANT_SIZES, GGMLAbort, GGMLQuantizationType as T, row_size, type_name

SLOTS = 3  # device buffer sets: upload, compute and download in flight at once
HOST_IN = SLOTS + 1  # staging buffers for the reader (one spare so reading never waits on the writer)


class QuantizeError(RuntimeError):
    """A tensor could not be quantized (invalid data, validation failure); the message names it."""


@dataclass
class TensorWork:
    """One output tensor: where its source bytes are and what it becomes."""

    src: SourceTensor
    name: str
    dst_type: T
    quant_weights: np.ndarray | None = None  # float32 (n_expert, n_per_row)
    split: int = 0  # output file it goes to (--keep-split)

    @property
    def quantize(self) -> bool:
        return self.src.type != self.dst_type

    @property
    def out_nbytes(self) -> int:
        return tensor_nbytes(self.dst_type, self.src.ne)


@dataclass
class Slab:
    index: int  # tensor index in the work list
    work: TensorWork
    src_byte0: int
    src_nbytes: int
    dst_nbytes: int
    row0: int
    job: SlabJob | None  # None: a plain copy
    quant_weights: np.ndarray | None
    last: bool


def slabs_of(index: int, work: TensorWork, max_bytes: int) -> list[Slab]:
    """Cut a tensor into slabs of whole rows: row ranges inside one expert, or runs of whole experts."""
    src = work.src
    n = src.n_per_row
    nrows = src.nrows
    rs_src = row_size(src.type, n)
    if not work.quantize:
        step = max(1, max_bytes // rs_src)
        out = []
        for r0 in range(0, nrows, step):
            r = min(step, nrows - r0)
            out.append(Slab(index, work, r0 * rs_src, r * rs_src, r * rs_src, r0, None, None, r0 + r >= nrows))
        return out
    rs_dst = row_size(work.dst_type, n)
    per_row = rs_src + rs_dst + 4 * n  # source, result and the float32 scratch of a dequantized source
    budget_rows = max(1, max_bytes // per_row)
    rpe = src.ne[1] if len(src.ne) > 1 else 1  # rows per expert (ne[1]); experts = the rest
    n_expert_total = nrows // rpe
    qw = work.quant_weights
    out = []
    if budget_rows >= rpe:  # whole experts per slab: one launch covers them all
        k = budget_rows // rpe
        for e0 in range(0, n_expert_total, k):
            ke = min(k, n_expert_total - e0)
            job = SlabJob(src.type, work.dst_type, n, rpe, ke, qw is not None)
            w = None if qw is None else qw[e0:e0 + ke]
            r0 = e0 * rpe
            out.append(Slab(index, work, r0 * rs_src, ke * rpe * rs_src, ke * rpe * rs_dst, r0, job, w,
                            e0 + ke >= n_expert_total))
    else:
        for e in range(n_expert_total):
            for r in range(0, rpe, budget_rows):
                rr = min(budget_rows, rpe - r)
                job = SlabJob(src.type, work.dst_type, n, rr, 1, qw is not None)
                w = None if qw is None else qw[e:e + 1]
                r0 = e * rpe + r
                out.append(Slab(index, work, r0 * rs_src, rr * rs_src, rr * rs_dst, r0, job, w,
                                r0 + rr >= nrows))
    return out


@dataclass
class StageTimes:
    read: float = 0.0
    write: float = 0.0
    device: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    bytes_read: int = 0
    bytes_written: int = 0


class _Stop(Exception):
    pass


class Pipeline:
    """Runs a list of TensorWork through a device into StreamWriters (one per output split)."""

    def __init__(self, device: Device, works: list[TensorWork], writer: StreamWriter | list[StreamWriter],
                 slab_bytes: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.device = device
        self.works = works
        self.writers = writer if isinstance(writer, list) else [writer]
        budget = device.memory_budget()
        self.slab_bytes = int(slab_bytes or max(1 << 20, budget // SLOTS))
        self.progress = progress or (lambda index, nbytes: None)
        self.times = StageTimes()
        self._stop = threading.Event()
        self._error: BaseException | None = None

    # -- helpers ---------------------------------------------------------------------------------------
    def _fail(self, e: BaseException) -> None:
        if self._error is None:
            self._error = e
        self._stop.set()

    def _get(self, q: queue.Queue):
        while True:
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Stop from None

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            try:
                return q.put(item, timeout=0.05)
            except queue.Full:
                if self._stop.is_set():
                    raise _Stop from None

    # -- stages ----------------------------------------------------------------------------------------
    def _reader(self, slabs: list[Slab], host_in: list[np.ndarray], free_in: queue.Queue,
                to_issue: queue.Queue) -> None:
        fds: dict = {}
        try:
            for slab in slabs:
                b = self._get(free_in)
                t0 = time.perf_counter()
                src = slab.work.src
                if src.path not in fds:
                    fds[src.path] = os.open(src.path, os.O_RDONLY)
                read_rows(src, slab.src_byte0, host_in[b], slab.src_nbytes, fds[src.path])
                bad = validate.first_invalid(src.type, host_in[b][: slab.src_nbytes])
                if bad is not None:
                    raise QuantizeError(_invalid_source_message(slab, bad))
                self.times.read += time.perf_counter() - t0
                self.times.bytes_read += slab.src_nbytes
                self._put(to_issue, (slab, b))
            self._put(to_issue, None)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            self._fail(e)
        finally:
            for fd in fds.values():
                os.close(fd)

    def _writer_loop(self, host_in, host_out, free_in: queue.Queue, free_out: queue.Queue,
                     to_write: queue.Queue) -> None:
        try:
            while True:
                item = self._get(to_write)
                if item is None:
                    return
                slab, b_in, b_out, done = item
                if done is not None:
                    _wait_for_results(slab, *done)
                    free_in.put(b_in)  # the upload is long done once the download is
                    data = host_out[b_out][: slab.dst_nbytes]
                    bad = validate.first_invalid(slab.work.dst_type, data)
                    if bad is not None:
                        raise QuantizeError(_invalid_result_message(slab, bad))
                else:
                    data = host_in[b_in][: slab.src_nbytes]
                t0 = time.perf_counter()
                out = self.writers[slab.work.split]
                out.write(data)
                if slab.last:
                    out.pad()
                self.times.write += time.perf_counter() - t0
                self.times.bytes_written += len(data)
                if done is not None:
                    free_out.put(b_out)
                else:
                    free_in.put(b_in)
                self.progress(slab.index, slab.src_nbytes)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            self._fail(e)

    def run(self) -> StageTimes:
        t_start = time.perf_counter()
        slabs = [s for i, w in enumerate(self.works) for s in slabs_of(i, w, self.slab_bytes)]
        bufs = _Buffers.allocate(self.device, slabs)
        reader, writer = self._start_stages(slabs, bufs)
        try:
            self._issue_all(bufs)
            self._put(self._to_write, None)
            while writer.is_alive():
                writer.join(timeout=0.05)
        except _Stop:
            pass
        except BaseException as e:
            self._fail(e)
        finally:
            self._stop.set()  # every stage has finished or must stop now
            reader.join(timeout=5)
            writer.join(timeout=5)
            self.times.wall = time.perf_counter() - t_start
            self.times.device = dict(self.device.stage_times())
        if self._error is not None:
            raise self._error
        return self.times

    def _start_stages(self, slabs: list[Slab], bufs: "_Buffers") -> tuple[threading.Thread, threading.Thread]:
        """The reader and writer threads, and the queues of free host buffers between the stages."""
        self._free_in: queue.Queue = queue.Queue()
        self._free_out: queue.Queue = queue.Queue()
        for i in range(HOST_IN):
            self._free_in.put(i)
        for i in range(SLOTS):
            self._free_out.put(i)
        self._to_issue: queue.Queue = queue.Queue(maxsize=HOST_IN)
        self._to_write: queue.Queue = queue.Queue()
        reader = threading.Thread(target=self._reader, args=(slabs, bufs.host_in, self._free_in, self._to_issue),
                                  name="gpuquant-reader", daemon=True)
        writer = threading.Thread(target=self._writer_loop, args=(bufs.host_in, bufs.host_out, self._free_in,
                                                                 self._free_out, self._to_write),
                                  name="gpuquant-writer", daemon=True)
        reader.start()
        writer.start()
        return reader, writer

    def _issue_all(self, bufs: "_Buffers") -> None:
        """Hand every slab the reader delivers to the device (or straight to the writer for a copy)."""
        n_issued = 0
        while True:
            item = self._get(self._to_issue)
            if item is None:
                return
            slab, b_in = item
            if slab.job is None:
                self._put(self._to_write, (slab, b_in, None, None))
                continue
            qw = None
            if slab.quant_weights is not None:
                qw = bufs.host_qw[b_in]
                qw[: slab.job.quant_weight_bytes] = slab.quant_weights.astype(np.float32).reshape(-1).view(np.uint8)
            if self.device.zero_copy:
                self._issue_in_place(slab, b_in, qw, bufs)
            else:
                self._issue_through_device(slab, b_in, qw, n_issued % SLOTS, bufs)
            n_issued += 1

    def _issue_in_place(self, slab: Slab, b_in: int, qw, bufs: "_Buffers") -> None:
        """A host device computes straight from the staging buffers."""
        b_out = self._get(self._free_out)
        check = self.device.quantize(slab.job, bufs.host_in[b_in], bufs.host_out[b_out], qw, bufs.compute)
        self._put(self._to_write, (slab, b_in, b_out, (self.device.record(bufs.compute), check)))

    def _issue_through_device(self, slab: Slab, b_in: int, qw, s: int, bufs: "_Buffers") -> None:
        """Upload, compute, download on three streams through device slot ``s``: its buffers are free once the
        slab that used them ``SLOTS`` slabs ago has finished computing (inputs) and downloading (outputs)."""
        dev, job = self.device, slab.job
        if bufs.compute_done[s] is not None:
            dev.wait(bufs.h2d, bufs.compute_done[s])
        dev.upload(bufs.dev_in[s], bufs.host_in[b_in], job.src_bytes, bufs.h2d)
        if qw is not None:
            dev.upload(bufs.dev_qw[s], qw, job.quant_weight_bytes, bufs.h2d)
            qw = bufs.dev_qw[s]
        dev.wait(bufs.compute, dev.record(bufs.h2d))
        if bufs.d2h_done[s] is not None:
            dev.wait(bufs.compute, bufs.d2h_done[s])
        check = dev.quantize(job, bufs.dev_in[s], bufs.dev_out[s], qw, bufs.compute)
        bufs.compute_done[s] = dev.record(bufs.compute)
        b_out = self._get(self._free_out)
        dev.wait(bufs.d2h, bufs.compute_done[s])
        dev.download(bufs.host_out[b_out], bufs.dev_out[s], job.dst_bytes, bufs.d2h)
        bufs.d2h_done[s] = dev.record(bufs.d2h)
        self._put(self._to_write, (slab, b_in, b_out, (bufs.d2h_done[s], check)))


@dataclass
class _Buffers:
    """The staging buffers (``HOST_IN`` for the reader, ``SLOTS`` for results), the device slots (none for
    zero-copy devices), the three streams and the events that order the slots."""

    host_in: list
    host_out: list
    host_qw: list
    dev_in: list
    dev_out: list
    dev_qw: list
    h2d: object
    compute: object
    d2h: object
    compute_done: list = field(default_factory=lambda: [None] * SLOTS)
    d2h_done: list = field(default_factory=lambda: [None] * SLOTS)

    @classmethod
    def allocate(cls, dev: Device, slabs: list[Slab]) -> "_Buffers":
        max_in = max([s.src_nbytes for s in slabs], default=1)
        max_out = max([s.dst_nbytes for s in slabs if s.job], default=1)
        max_qw = max([s.job.quant_weight_bytes for s in slabs if s.job], default=0)
        device_slots = any(s.job for s in slabs) and not dev.zero_copy
        return cls(
            host_in=[dev.host_buffer(max_in) for _ in range(HOST_IN)],
            host_out=[dev.host_buffer(max_out) for _ in range(SLOTS)],
            # staged weights share the life of the slab's host_in buffer (free again once its download is done)
            host_qw=[dev.host_buffer(max_qw) for _ in range(HOST_IN)] if max_qw else [],
            dev_in=[dev.device_buffer(max_in) for _ in range(SLOTS)] if device_slots else [],
            dev_out=[dev.device_buffer(max_out) for _ in range(SLOTS)] if device_slots else [],
            dev_qw=[dev.device_buffer(max_qw) for _ in range(SLOTS)] if max_qw and device_slots else [],
            h2d=dev.stream(), compute=dev.stream(), d2h=dev.stream())


def _wait_for_results(slab: Slab, event, check) -> None:
    """Wait until the slab's results are on the host; a slab ggml aborts on becomes a QuantizeError naming
    the tensor (llama-quantize would crash on it)."""
    try:
        event.synchronize()
        if check is not None:
            check()
    except GGMLAbort as e:
        w = slab.work
        raise QuantizeError(f"cannot quantize tensor {w.src.name!r} to {type_name(w.dst_type)} (rows from "
                            f"{slab.row0}): {e}") from None


def _invalid_source_message(slab: Slab, index: int) -> str:
    src = slab.work.src
    if src.type in (T.F32, T.F16, T.BF16):
        esize = {T.F32: 4, T.F16: 2, T.BF16: 2}[src.type]
        flat = slab.src_byte0 // esize + index
        row, col = divmod(flat, src.n_per_row)
        where = f"element {flat} (row {row}, column {col})"
    else:
        where = f"block {slab.src_byte0 // QUANT_SIZES[src.type][1] + index}"
    return (f"tensor {src.name!r} has invalid data: NaN or Inf at {where} of the {type_name(src.type)} source; "
            f"llama-quantize refuses such a tensor too")


def _invalid_result_message(slab: Slab, block: int) -> str:
    w = slab.work
    return (f"quantized data validation failed for tensor {w.src.name!r} -> {type_name(w.dst_type)}: "
            f"block {block} of rows starting at row {slab.row0} holds a NaN/Inf scale "
            f"(a value overflows fp16); llama-quantize refuses this tensor too")
