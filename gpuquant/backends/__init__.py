"""The one device interface the pipeline is written over, and device selection.

Three implementations:
  * ``cpu``      (``cpu.CpuDevice``): the numpy reference quantizers, host memory.
  * ``emulated`` (``emulated.EmulatedDevice``): the exact ``kernels/*.cu`` sources compiled for the host
    through ``kernels/host_shim.h`` and launched with the CUDA grid geometry; the fast CPU path.
  * ``cuda``     (``cuda.CudaDevice``): the same kernels compiled by NVRTC, on a GPU through CuPy.
The two host devices share ``host.HostDevice``.

The pipeline (``gpuquant.pipeline``) only ever talks to this interface: buffers, streams, events, and one
``quantize`` call per slab. Streams execute their operations in order; an ``Event`` recorded on a stream
completes when everything enqueued on that stream before it has completed.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..quants import GGMLQuantizationType, row_size


class DeviceError(RuntimeError):
    """A device could not be opened or failed (no GPU, out of memory, compile error)."""


class DeviceOutOfMemory(DeviceError):
    """A device allocation or launch ran out of memory; ``quantize_file`` retries with smaller slabs."""


@dataclass(frozen=True)
class SlabJob:
    """One slab of rows of one tensor, quantized by one ``Device.quantize`` call.

    A slab is either a range of rows inside one expert (2-D tensors have one expert) or a run of whole
    experts of a 3-D tensor ``[n_expert, rows, cols]``; ``n_expert`` experts of ``rows_per_expert`` rows
    each. Row ``r`` of the slab uses importance weights ``quant_weights[r // rows_per_expert]``.
    """

    src_type: GGMLQuantizationType
    dst_type: GGMLQuantizationType
    n_per_row: int
    rows_per_expert: int
    n_expert: int = 1
    has_quant_weights: bool = False

    @property
    def nrows(self) -> int:
        return self.rows_per_expert * self.n_expert

    @property
    def src_bytes(self) -> int:
        return self.nrows * row_size(self.src_type, self.n_per_row)

    @property
    def dst_bytes(self) -> int:
        return self.nrows * row_size(self.dst_type, self.n_per_row)

    @property
    def quant_weight_bytes(self) -> int:
        return self.n_expert * self.n_per_row * 4 if self.has_quant_weights else 0


class Stream(ABC):
    """An in-order queue of device operations."""


class Event(ABC):
    """Completes when the operations enqueued on its stream before it have completed."""

    @abstractmethod
    def synchronize(self) -> None:
        """Block the calling host thread until the event has completed (re-raises a failure)."""


class Device(ABC):
    """What the pipeline needs from a device."""

    #: short name shown to users: "cpu", "emulated", "cuda:0"
    name: str = "?"
    #: kernels read and write host buffers directly (host devices): the pipeline then computes in its staging
    #: buffers and skips upload/download, like zero-copy mapped memory on a GPU
    zero_copy: bool = False

    @abstractmethod
    def supports(self, src_type: GGMLQuantizationType, dst_type: GGMLQuantizationType) -> bool:
        """Whether ``quantize`` can turn ``src_type`` rows into ``dst_type`` rows."""

    @abstractmethod
    def host_buffer(self, nbytes: int) -> np.ndarray:
        """A uint8 host array of ``nbytes`` (page-locked on a GPU) for staging uploads/downloads."""

    @abstractmethod
    def device_buffer(self, nbytes: int) -> Any:
        """A device allocation of ``nbytes``."""

    @abstractmethod
    def stream(self) -> Stream:
        """A new in-order stream."""

    @abstractmethod
    def upload(self, dst: Any, src: np.ndarray, nbytes: int, stream: Stream) -> None:
        """Enqueue a copy of ``src[:nbytes]`` (host) into device buffer ``dst``."""

    @abstractmethod
    def download(self, dst: np.ndarray, src: Any, nbytes: int, stream: Stream) -> None:
        """Enqueue a copy of device buffer ``src[:nbytes]`` into host array ``dst``."""

    @abstractmethod
    def quantize(self, job: SlabJob, src: Any, dst: Any, quant_weights: Any | None, stream: Stream) -> None:
        """Enqueue: convert/dequantize ``job.src_bytes`` raw source bytes in ``src`` and quantize them into
        ``job.dst_bytes`` bytes of ``dst``; ``quant_weights`` holds ``job.n_expert`` float32 rows.

        Returns None, or a check to call once the slab's results are on the host (after its download's
        event): it raises ``GGMLAbort`` where ggml would have aborted on the slab. Such a slab does not fail
        the stream: the other outputs of a job go on."""

    @abstractmethod
    def record(self, stream: Stream) -> Event:
        """Record an event on ``stream``."""

    @abstractmethod
    def wait(self, stream: Stream, event: Event) -> None:
        """Make ``stream`` wait for ``event`` before running what is enqueued after this call."""

    def prepare(self, types) -> None:
        """Make ready (compile, load) whatever the conversions of ``types`` need, before any slab runs:
        ``types`` are the job's destination types and its quantized source types."""

    def memory_budget(self) -> int:
        """Bytes the pipeline may use on the device for its buffers (all slots together)."""
        return 1 << 30

    def stage_times(self) -> dict[str, float]:
        """Seconds spent so far per device stage ("h2d", "kernel", "d2h"); empty when not measured."""
        return {}

    def close(self) -> None:
        """Release streams, threads and memory."""


def open_device(spec: str | int, threads: int | None = None) -> Device:
    """Open a device from a ``--device`` value.

    ``cpu``: numpy reference; ``emulated``: kernels on the host; ``N``/``cuda``/``cuda:N``: GPU N;
    ``auto``: GPU 0 when the driver, the GPU and one kernel load all work (``cuda.probe``), else the fastest
    CPU path, whose ``fallback_reason`` then says in one line why the GPU was not used.
    """
    threads = threads or os.cpu_count() or 1
    s = str(spec).strip().lower()
    if s == "cpu":
        from .cpu import CpuDevice

        return CpuDevice(threads=threads)
    if s == "emulated":
        from .emulated import EmulatedDevice

        return EmulatedDevice(threads=threads)
    if s == "auto":
        from . import cuda

        gpu, reason = cuda.probe(0)
        if gpu is not None:
            return gpu
        return _fastest_cpu(threads, f"no usable GPU: {reason}")
    if s == "cuda":
        s = "0"
    if s.startswith("cuda:"):
        s = s[5:]
    if s.isdigit():
        from . import cuda

        return cuda.CudaDevice(int(s))
    raise DeviceError(f"--device: expected auto, cpu, emulated, cuda or a GPU index, got {spec!r}")


def _fastest_cpu(threads: int, reason: str | None = None) -> Device:
    """The emulated kernels when a host C++ compiler is available, else numpy. ``reason`` (why no GPU) is
    kept as the device's ``fallback_reason``, completed with the CPU path chosen."""
    try:
        from .emulated import EmulatedDevice

        dev: Device = EmulatedDevice(threads=threads)
    except DeviceError as e:
        from .cpu import CpuDevice

        dev = CpuDevice(threads=threads)
        if reason:
            reason += f"; no host C++ compiler for the emulated kernels ({e})"
    if reason:
        dev.fallback_reason = f"{reason}: running on the CPU ({dev.name})"  # type: ignore[attr-defined]
    return dev
