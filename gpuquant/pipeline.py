"""read -> upload -> compute -> download -> write, written once over the Device interface.

A reader thread fills host buffers from the input file, the calling thread issues each slab onto three
device streams (host-to-device copy, compute, device-to-host copy) ordered with events, and a writer thread
validates and writes finished slabs. Device buffers are used round-robin in ``SLOTS`` slots, so while slab
i is written, slab i+1 is computed and slab i+2 uploaded (the idea of llama.cpp PR #21507, taken further).
Memory stays bounded by the slot buffers whatever the model size and the number of outputs: with several
outputs (``Pipeline.many``) each source slab is read, validated and uploaded once, then quantized into every
output that needs it.
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


@dataclass(frozen=True)
class _Rows:
    """A row range of a source tensor: ``n_expert`` whole experts, or rows inside one expert."""

    row0: int
    rows_per_expert: int
    n_expert: int
    e0: int  # first expert (its importance weights)
    last: bool

    @property
    def nrows(self) -> int:
        return self.rows_per_expert * self.n_expert


def _row_ranges(src: SourceTensor, per_row: int, max_bytes: int, experts: bool) -> list[_Rows]:
    """Cut a tensor into row ranges of at most ``max_bytes`` (``per_row`` bytes a row, at least one row);
    with ``experts``, a range is whole experts or lies inside one expert."""
    nrows = src.nrows
    budget_rows = max(1, max_bytes // per_row)
    if not experts:
        return [_Rows(r0, min(budget_rows, nrows - r0), 1, 0, r0 + budget_rows >= nrows)
                for r0 in range(0, nrows, budget_rows)]
    rpe = src.ne[1] if len(src.ne) > 1 else 1  # rows per expert (ne[1]); experts = the rest
    n_expert_total = nrows // rpe
    if budget_rows >= rpe:  # whole experts per slab: one launch covers them all
        k = budget_rows // rpe
        return [_Rows(e0 * rpe, rpe, min(k, n_expert_total - e0), e0, e0 + k >= n_expert_total)
                for e0 in range(0, n_expert_total, k)]
    return [_Rows(e * rpe + r, min(budget_rows, rpe - r), 1, e, e * rpe + r + budget_rows >= nrows)
            for e in range(n_expert_total) for r in range(0, rpe, budget_rows)]


def _per_row(src: SourceTensor, dst_type: T) -> int:
    """Slab bytes of one row: source, result and the float32 scratch of a dequantized source."""
    return row_size(src.type, src.n_per_row) + row_size(dst_type, src.n_per_row) + 4 * src.n_per_row


def _job(src: SourceTensor, dst_type: T, rows: _Rows, has_qw: bool) -> SlabJob:
    return SlabJob(src.type, dst_type, src.n_per_row, rows.rows_per_expert, rows.n_expert, has_qw)


def slabs_of(index: int, work: TensorWork, max_bytes: int) -> list[Slab]:
    """Cut a tensor into slabs of whole rows: row ranges inside one expert, or runs of whole experts."""
    src = work.src
    rs_src = row_size(src.type, src.n_per_row)
    if not work.quantize:
        return [Slab(index, work, r.row0 * rs_src, r.nrows * rs_src, r.nrows * rs_src, r.row0, None, None, r.last)
                for r in _row_ranges(src, rs_src, max_bytes, experts=False)]
    rs_dst = row_size(work.dst_type, src.n_per_row)
    qw = work.quant_weights
    return [Slab(index, work, r.row0 * rs_src, r.nrows * rs_src, r.nrows * rs_dst, r.row0,
                 _job(src, work.dst_type, r, qw is not None), None if qw is None else qw[r.e0:r.e0 + r.n_expert],
                 r.last)
            for r in _row_ranges(src, _per_row(src, work.dst_type), max_bytes, experts=True)]


# ------------------------------------------------------------------------------------------------------
# many outputs from one read: a source slab is read, validated and uploaded once, then quantized into
# every output that needs its tensor
# ------------------------------------------------------------------------------------------------------


@dataclass
class Output:
    """One output of a job: its tensors (the same source tensor at the same index in every output of the
    job), its writers (one per output split) and the tensors it already has (a resumed run)."""

    works: list[TensorWork]
    writers: list
    done: set[int] = field(default_factory=set)  # tensor indices already written (skipped)
    name: str = ""


@dataclass
class Target:
    """What one output makes of one source slab."""

    output: int
    work: TensorWork
    job: SlabJob | None  # None: the source bytes are copied
    dst_nbytes: int
    from_f32: bool = False  # quantized from the slab's float32 conversion (made once for all targets)


@dataclass
class SourceSlab:
    index: int  # tensor index (in every output's work list)
    src: SourceTensor
    src_byte0: int
    src_nbytes: int
    row0: int
    quant_weights: np.ndarray | None  # this slab's importance weights (the same for every output)
    last: bool
    targets: list[Target]
    convert: SlabJob | None = None  # source -> F32 once, when several targets requantize it

    @property
    def max_dst(self) -> int:
        return max([t.dst_nbytes for t in self.targets if t.job is not None], default=0)


def _shared_weights(index: int, works: list[TensorWork]) -> np.ndarray | None:
    """The importance weights of a tensor, which every output quantizing it must share."""
    qws = [w.quant_weights for w in works if w.quantize]
    first = next((q for q in qws if q is not None), None)
    for q in qws:
        if (q is None) != (first is None) or (q is not None and q is not first and not np.array_equal(q, first)):
            raise ValueError(f"tensor {works[0].name!r} (#{index}): outputs of one job need the same importance "
                             f"weights (one --imatrix and the same --include/--exclude-weights)")
    return first


def source_slabs(index: int, works: dict[int, TensorWork], max_bytes: int,
                 convert_ok: Callable[[T, T], bool] | None = None) -> list[SourceSlab]:
    """Cut source tensor ``index`` once for all outputs needing it (``works``: output -> its work): every
    slab fits ``max_bytes`` for the widest destination, and is whole experts or inside one expert when any
    output quantizes it. ``convert_ok(src, dst)``: whether the device converts (``dst`` F32) or quantizes
    (``src`` F32) that pair, to dequantize a requantized source once."""
    src = next(iter(works.values())).src
    rs_src = row_size(src.type, src.n_per_row)
    quantizing = {k: w for k, w in works.items() if w.quantize}
    qw = _shared_weights(index, list(works.values()))
    per_row = max([_per_row(src, w.dst_type) for w in quantizing.values()], default=rs_src)
    via_f32 = _convert_once(src.type, quantizing, convert_ok)
    slabs = []
    for r in _row_ranges(src, per_row, max_bytes, experts=bool(quantizing)):
        targets = []
        for k, w in works.items():
            if not w.quantize:
                targets.append(Target(k, w, None, r.nrows * rs_src))
                continue
            f32 = k in via_f32
            job = _job(src, w.dst_type, r, qw is not None)
            if f32:
                job = SlabJob(T.F32, w.dst_type, src.n_per_row, r.rows_per_expert, r.n_expert, qw is not None)
            targets.append(Target(k, w, job, job.dst_bytes, f32))
        slabs.append(SourceSlab(index, src, r.row0 * rs_src, r.nrows * rs_src, r.row0,
                                None if qw is None else qw[r.e0:r.e0 + r.n_expert], r.last, targets,
                                _job(src, T.F32, r, False) if via_f32 else None))
    return slabs


def _convert_once(src_type: T, quantizing: dict[int, TensorWork], convert_ok) -> set[int]:
    """Outputs that quantize a requantized source from one shared float32 conversion: when at least two
    outputs requantize it and the device can dequantize to F32 and quantize each from F32. Bytes are the
    same as a direct requantize (which dequantizes to float32 scratch first, as llama-quantize does)."""
    if convert_ok is None or src_type in (T.F32, T.F16, T.BF16):
        return set()
    ks = {k for k, w in quantizing.items() if w.dst_type != T.F32}
    if len(ks) < 2 or not convert_ok(src_type, T.F32):
        return set()
    if not all(convert_ok(T.F32, quantizing[k].dst_type) for k in ks):
        return set()
    return ks


@dataclass
class StageTimes:
    read: float = 0.0
    validate: float = 0.0  # ggml_validate_row_data of the source slabs (beside the reader)
    write: float = 0.0
    device: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    bytes_read: int = 0
    bytes_written: int = 0
    outputs: dict[int, "OutputTimes"] = field(default_factory=dict)  # per output (index in the job)


@dataclass
class OutputTimes:
    """One output's share of a run: its bytes and write time, and when (seconds from the start) it had its
    last byte written."""

    write: float = 0.0
    bytes_written: int = 0
    finished: float = 0.0
    targets: int = 0  # slabs quantized or copied for it


class _Stop(Exception):
    pass


class Pipeline:
    """Runs TensorWork lists through a device into StreamWriters: one output (``Pipeline(dev, works,
    writers)``) or many from one read (``Pipeline.many(dev, outputs)``).

    With many outputs, a failure that belongs to one output (its result fails validation, its file cannot
    be written) stops that output only: ``run`` returns and ``failures`` maps the output to its error. A
    failure of the source or the device stops everything and ``run`` raises it, as it does when every
    output has failed.
    """

    def __init__(self, device: Device, works: list[TensorWork], writer: StreamWriter | list[StreamWriter],
                 slab_bytes: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 outputs: list[Output] | None = None) -> None:
        self.device = device
        self.outputs = outputs if outputs is not None else [
            Output(works, writer if isinstance(writer, list) else [writer])]
        self.works = self.outputs[0].works if self.outputs else []
        budget = device.memory_budget()
        self.slab_bytes = int(slab_bytes or max(1 << 20, budget // SLOTS))
        self.progress = progress or (lambda index, nbytes: None)
        self.times = StageTimes()
        self.failures: dict[int, BaseException] = {}
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._copy_fds: dict = {}  # the writer's descriptors of the source files (unchanged tensors)
        self._t0 = time.perf_counter()

    @classmethod
    def many(cls, device: Device, outputs: list[Output], slab_bytes: int | None = None,
             progress: Callable[[int, int], None] | None = None,
             failures: dict[int, BaseException] | None = None) -> "Pipeline":
        """One read of the source for every output; ``failures``: outputs already failed (skipped)."""
        pipe = cls(device, [], [], slab_bytes, progress, outputs=outputs)
        pipe.failures = dict(failures or {})
        return pipe

    @property
    def writers(self) -> list:
        return self.outputs[0].writers

    # -- helpers ---------------------------------------------------------------------------------------
    def _fail(self, e: BaseException) -> None:
        if self._error is None:
            self._error = e
        self._stop.set()

    def _fail_output(self, k: int, e: BaseException) -> None:
        """Output ``k`` is lost; the others go on unless none is left."""
        self.failures.setdefault(k, e)
        if len(self.failures) >= len(self.outputs):
            if len(self.outputs) == 1:
                self._fail(e)  # one output: its failure is the run's
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

    def plan(self) -> list[SourceSlab]:
        """Every source slab with the outputs that need it, in tensor order."""
        live = [o for k, o in enumerate(self.outputs) if k not in self.failures]
        n = len(live[0].works) if live else 0
        for o in live:
            if len(o.works) != n:
                raise ValueError(f"outputs of one job must have the same tensors: {n} and {len(o.works)}")
        slabs = []
        for i in range(n):
            works = {k: o.works[i] for k, o in enumerate(self.outputs) if i not in o.done and k not in self.failures}
            if not works:
                continue
            names = {w.src.name for w in works.values()}
            if len(names) > 1:
                raise ValueError(f"tensor #{i}: outputs of one job read different source tensors {sorted(names)}")
            slabs += source_slabs(i, works, self.slab_bytes, self.device.supports)
        return slabs

    # -- stages ----------------------------------------------------------------------------------------
    def _reader(self, slabs: list[SourceSlab], host_in: list[np.ndarray], free_in: queue.Queue,
                to_issue: queue.Queue) -> None:
        fds: dict = {}
        try:
            for slab in slabs:
                b = self._get(free_in)
                t0 = time.perf_counter()
                src = slab.src
                if src.path not in fds:
                    fds[src.path] = os.open(src.path, os.O_RDONLY)
                read_rows(src, slab.src_byte0, host_in[b], slab.src_nbytes, fds[src.path])
                self.times.read += time.perf_counter() - t0
                self.times.bytes_read += slab.src_nbytes
                self._put(self._to_validate, (slab, b))
            self._put(self._to_validate, None)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            self._fail(e)
        finally:
            for fd in fds.values():
                os.close(fd)

    def _validator(self, host_in: list[np.ndarray], to_issue: queue.Queue) -> None:
        """ggml_validate_row_data of every slab read, in order, beside the reader (numpy drops the GIL), so
        that reading goes on while a slab is checked."""
        try:
            while True:
                item = self._get(self._to_validate)
                if item is not None:
                    slab, b = item
                    t0 = time.perf_counter()
                    bad = validate.first_invalid(slab.src.type, host_in[b][: slab.src_nbytes])
                    if bad is not None:
                        raise QuantizeError(_invalid_source_message(slab, bad))
                    self.times.validate += time.perf_counter() - t0
                self._put(to_issue, item)
                if item is None:
                    return
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            self._fail(e)

    def _writer_loop(self, host_in, host_out, free_in: queue.Queue, free_out: queue.Queue,
                     to_write: queue.Queue) -> None:
        try:
            while True:
                item = self._get(to_write)
                if item is None:
                    return
                slab, target, b_in, b_out, done = item
                if done is not None:
                    self._wait_for_results(slab, target, *done)
                if target.output not in self.failures:
                    data = host_in[b_in][: slab.src_nbytes] if done is None else host_out[b_out][: target.dst_nbytes]
                    try:
                        self._write_target(slab, target, data, done is not None)
                    except (QuantizeError, OSError) as e:
                        self._fail_output(target.output, e)
                if done is not None:
                    free_out.put(b_out)
                self._pending[b_in] -= 1
                if self._pending[b_in] == 0:
                    free_in.put(b_in)
                    self.progress(slab.index, slab.src_nbytes)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            self._fail(e)

    def _source_fd(self, path) -> int:
        """The writer's own descriptor of a source file (closed when the run ends)."""
        fd = self._copy_fds.get(path)
        if fd is None:
            fd = self._copy_fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def _wait_for_results(self, slab: "SourceSlab", target: "Target", event, check) -> None:
        """Wait until a target's results are on the host. A failure of the event is the device's (a host
        stream stays failed, as a CUDA error does): it stops every output. A ``check`` that finds a slab ggml
        aborts on (the device's status word, after the download) fails that output only."""
        try:
            event.synchronize()
        except GGMLAbort as e:
            raise QuantizeError(_abort_message(slab, target, e)) from None
        if check is not None and target.output not in self.failures:
            try:
                check()
            except GGMLAbort as e:
                self._fail_output(target.output, QuantizeError(_abort_message(slab, target, e)))

    def _write_target(self, slab: SourceSlab, target: Target, data: np.ndarray, quantized: bool) -> None:
        if quantized:
            bad = validate.first_invalid(target.work.dst_type, data)
            if bad is not None:
                raise QuantizeError(_invalid_result_message(slab, target, bad))
        t0 = time.perf_counter()
        out = self.outputs[target.output].writers[target.work.split]
        copy_range = None if quantized else getattr(out, "copy_range", None)
        if copy_range is not None:  # unchanged bytes: the kernel copies them from the source (as cp does)
            copy_range(data, self._source_fd(slab.src.path), slab.src.offset + slab.src_byte0)
        else:
            out.write(data)
        if slab.last:
            out.pad()
            tensor_done = getattr(out, "tensor_done", None)
            if tensor_done is not None:
                tensor_done(slab.index)
        dt = time.perf_counter() - t0
        self.times.write += dt
        self.times.bytes_written += len(data)
        ot = self.times.outputs.setdefault(target.output, OutputTimes())
        ot.write += dt
        ot.bytes_written += len(data)
        ot.targets += 1
        ot.finished = time.perf_counter() - self._t0

    def run(self) -> StageTimes:
        self._t0 = t_start = time.perf_counter()
        slabs = self.plan()
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
            self._validator_thread.join(timeout=5)
            writer.join(timeout=5)
            for fd in self._copy_fds.values():
                os.close(fd)
            self._copy_fds.clear()
            self.times.wall = time.perf_counter() - t_start
            self.times.device = dict(self.device.stage_times())
        if self._error is not None:
            raise self._error
        return self.times

    def _start_stages(self, slabs: list[SourceSlab], bufs: "_Buffers") -> tuple[threading.Thread, threading.Thread]:
        """The reader and writer threads, and the queues of free host buffers between the stages."""
        self._free_in: queue.Queue = queue.Queue()
        self._free_out: queue.Queue = queue.Queue()
        self._pending = [0] * HOST_IN  # targets of the slab in each input buffer not yet written
        for i in range(HOST_IN):
            self._free_in.put(i)
        for i in range(SLOTS):
            self._free_out.put(i)
        self._to_validate: queue.Queue = queue.Queue()
        self._to_issue: queue.Queue = queue.Queue(maxsize=HOST_IN)
        self._to_write: queue.Queue = queue.Queue()
        self._validator_thread = threading.Thread(target=self._validator, args=(bufs.host_in, self._to_issue),
                                                  name="gpuquant-validator", daemon=True)
        self._validator_thread.start()
        reader = threading.Thread(target=self._reader, args=(slabs, bufs.host_in, self._free_in, self._to_issue),
                                  name="gpuquant-reader", daemon=True)
        writer = threading.Thread(target=self._writer_loop, args=(bufs.host_in, bufs.host_out, self._free_in,
                                                                 self._free_out, self._to_write),
                                  name="gpuquant-writer", daemon=True)
        reader.start()
        writer.start()
        return reader, writer

    def _issue_all(self, bufs: "_Buffers") -> None:
        """Hand every slab the reader delivers to the device once, then each of its targets to the device
        (or straight to the writer for a copy)."""
        n_slabs = 0
        while True:
            item = self._get(self._to_issue)
            if item is None:
                return
            slab, b_in = item
            targets = [t for t in slab.targets if t.output not in self.failures]
            if not targets:  # every output needing it has failed
                self._free_in.put(b_in)
                self.progress(slab.index, slab.src_nbytes)
                continue
            self._pending[b_in] = len(targets)
            qw = None
            if slab.quant_weights is not None and any(t.job is not None for t in targets):
                qw = bufs.host_qw[b_in]
                nbytes = slab.quant_weights.size * 4
                qw[:nbytes] = slab.quant_weights.astype(np.float32).reshape(-1).view(np.uint8)
            if self.device.zero_copy:
                self._issue_in_place(slab, targets, b_in, qw, bufs)
            else:
                self._issue_through_device(slab, targets, b_in, qw, n_slabs % SLOTS, bufs)
            n_slabs += 1

    def _issue_in_place(self, slab: SourceSlab, targets: list[Target], b_in: int, qw, bufs: "_Buffers") -> None:
        """A host device computes straight from the staging buffers (the float32 conversion, if any, in the
        input buffer's own float32 buffer)."""
        dev = self.device
        f32 = None
        if slab.convert is not None and any(t.from_f32 for t in targets):
            f32 = bufs.host_f32[b_in]
            dev.quantize(slab.convert, bufs.host_in[b_in], f32, None, bufs.compute)
        for t in targets:
            if t.job is None:
                self._put(self._to_write, (slab, t, b_in, None, None))
                continue
            b_out = self._get(self._free_out)
            check = dev.quantize(t.job, f32 if t.from_f32 else bufs.host_in[b_in], bufs.host_out[b_out], qw,
                                 bufs.compute)
            self._put(self._to_write, (slab, t, b_in, b_out, (dev.record(bufs.compute), check)))

    def _issue_through_device(self, slab: SourceSlab, targets: list[Target], b_in: int, qw, s: int,
                              bufs: "_Buffers") -> None:
        """Upload once into device input slot ``s`` (free once every compute that read it, ``SLOTS`` slabs
        ago, has finished), then per target compute into the next output slot (free once its previous
        download is done) and download: uploads and downloads on one stream each, the kernels on the slot's
        own compute stream, so that the kernels of small tensors in consecutive slots run side by side."""
        dev, cs = self.device, bufs.computes[s]
        if not any(t.job is not None for t in targets):
            for t in targets:
                self._put(self._to_write, (slab, t, b_in, None, None))
            return
        if bufs.compute_done[s] is not None:
            dev.wait(bufs.h2d, bufs.compute_done[s])
        dev.upload(bufs.dev_in[s], bufs.host_in[b_in], slab.src_nbytes, bufs.h2d)
        if qw is not None:
            dev.upload(bufs.dev_qw[s], qw, slab.quant_weights.size * 4, bufs.h2d)
            qw = bufs.dev_qw[s]
        dev.wait(cs, dev.record(bufs.h2d))
        f32 = None
        if slab.convert is not None and any(t.from_f32 for t in targets):
            f32 = bufs.dev_f32[s]
            dev.quantize(slab.convert, bufs.dev_in[s], f32, None, cs)
        for t in targets:
            if t.job is None:
                self._put(self._to_write, (slab, t, b_in, None, None))
                continue
            o = bufs.next_out
            bufs.next_out = (o + 1) % SLOTS
            if bufs.d2h_done[o] is not None:
                dev.wait(cs, bufs.d2h_done[o])
            check = dev.quantize(t.job, f32 if t.from_f32 else bufs.dev_in[s], bufs.dev_out[o], qw, cs)
            done = dev.record(cs)
            b_out = self._get(self._free_out)
            dev.wait(bufs.d2h, done)
            dev.download(bufs.host_out[b_out], bufs.dev_out[o], t.job.dst_bytes, bufs.d2h)
            bufs.d2h_done[o] = dev.record(bufs.d2h)
            self._put(self._to_write, (slab, t, b_in, b_out, (bufs.d2h_done[o], check)))
        bufs.compute_done[s] = dev.record(cs)


@dataclass
class _Buffers:
    """The staging buffers (``HOST_IN`` for the reader, ``SLOTS`` for results), the device slots (none for
    zero-copy devices), the streams (copies in, copies out, and one compute stream per device slot) and the
    events that order the slots. Their sizes depend on the
    slabs only, never on the number of outputs."""

    host_in: list
    host_out: list
    host_qw: list
    host_f32: list
    dev_in: list
    dev_out: list
    dev_qw: list
    dev_f32: list
    h2d: object
    compute: object
    d2h: object
    computes: list = field(default_factory=list)  # one compute stream per device slot (device-buffer path)
    compute_done: list = field(default_factory=lambda: [None] * SLOTS)  # per input slot
    d2h_done: list = field(default_factory=lambda: [None] * SLOTS)  # per output slot
    next_out: int = 0

    @classmethod
    def allocate(cls, dev: Device, slabs: list[SourceSlab]) -> "_Buffers":
        max_in = max([s.src_nbytes for s in slabs], default=1)
        max_out = max([s.max_dst for s in slabs], default=0) or 1
        max_qw = max([s.quant_weights.size * 4 for s in slabs if s.quant_weights is not None], default=0)
        max_f32 = max([s.convert.dst_bytes for s in slabs if s.convert is not None], default=0)
        device_slots = any(s.max_dst for s in slabs) and not dev.zero_copy
        host_slots = dev.zero_copy
        return cls(
            host_in=[dev.host_buffer(max_in) for _ in range(HOST_IN)],
            host_out=[dev.host_buffer(max_out) for _ in range(SLOTS)],
            # staged weights share the life of the slab's host_in buffer (free again once its targets are written)
            host_qw=[dev.host_buffer(max_qw) for _ in range(HOST_IN)] if max_qw else [],
            host_f32=[dev.host_buffer(max_f32) for _ in range(HOST_IN)] if max_f32 and host_slots else [],
            dev_in=[dev.device_buffer(max_in) for _ in range(SLOTS)] if device_slots else [],
            dev_out=[dev.device_buffer(max_out) for _ in range(SLOTS)] if device_slots else [],
            dev_qw=[dev.device_buffer(max_qw) for _ in range(SLOTS)] if max_qw and device_slots else [],
            dev_f32=[dev.device_buffer(max_f32) for _ in range(SLOTS)] if max_f32 and device_slots else [],
            h2d=dev.stream(), compute=(compute := dev.stream()), d2h=dev.stream(),
            computes=[compute] + [dev.stream() for _ in range(SLOTS - 1)] if device_slots else [compute])


def _abort_message(slab: SourceSlab, target: Target, e: GGMLAbort) -> str:
    """A slab ggml aborts on (llama-quantize would crash on it), named by tensor and type."""
    w = target.work
    return f"cannot quantize tensor {w.src.name!r} to {type_name(w.dst_type)} (rows from {slab.row0}): {e}"


def _invalid_source_message(slab: SourceSlab, index: int) -> str:
    src = slab.src
    if src.type in (T.F32, T.F16, T.BF16):
        esize = {T.F32: 4, T.F16: 2, T.BF16: 2}[src.type]
        flat = slab.src_byte0 // esize + index
        row, col = divmod(flat, src.n_per_row)
        where = f"element {flat} (row {row}, column {col})"
    else:
        where = f"block {slab.src_byte0 // QUANT_SIZES[src.type][1] + index}"
    return (f"tensor {src.name!r} has invalid data: NaN or Inf at {where} of the {type_name(src.type)} source; "
            f"llama-quantize refuses such a tensor too")


def _invalid_result_message(slab: SourceSlab, target: Target, block: int) -> str:
    w = target.work
    return (f"quantized data validation failed for tensor {w.src.name!r} -> {type_name(w.dst_type)}: "
            f"block {block} of rows starting at row {slab.row0} holds a NaN/Inf scale "
            f"(a value overflows fp16); llama-quantize refuses this tensor too")
