"""``HostDevice``: what the two CPU devices (``cpu`` and ``emulated``) share.

Device memory is host memory, streams are ``HostStream`` worker threads (in order, like CUDA streams), and
both compute straight in the pipeline's staging buffers (``zero_copy``). A subclass says which conversions it
``supports`` and how it ``compute``s one slab; nothing else differs.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from ..quants import GGMLAbort, GGMLQuantizationType
from . import Device, Event, SlabJob, Stream
from .host_streams import HostStream, StageClock


class HostDevice(Device):
    zero_copy = True

    def __init__(self) -> None:
        self._streams: list[HostStream] = []
        self._clock = StageClock()

    @abstractmethod
    def supports(self, src_type: GGMLQuantizationType, dst_type: GGMLQuantizationType) -> bool:
        """Whether ``compute`` can turn ``src_type`` rows into ``dst_type`` rows."""

    @abstractmethod
    def compute(self, job: SlabJob, src: np.ndarray, dst: np.ndarray, quant_weights: np.ndarray | None) -> None:
        """Quantize one slab now, on the calling thread (plus the device's own worker threads)."""

    # -- the Device interface ------------------------------------------------------------------------------
    def host_buffer(self, nbytes: int) -> np.ndarray:
        return np.empty(int(nbytes), np.uint8)

    def device_buffer(self, nbytes: int) -> np.ndarray:
        return np.empty(int(nbytes), np.uint8)

    def stream(self) -> Stream:
        s = HostStream(self.name)
        self._streams.append(s)
        return s

    def upload(self, dst: Any, src: np.ndarray, nbytes: int, stream: Stream) -> None:
        n = int(nbytes)
        _host(stream).enqueue(self._clock.timed("h2d", lambda: np.copyto(dst[:n], src.reshape(-1).view(np.uint8)[:n])))

    def download(self, dst: np.ndarray, src: Any, nbytes: int, stream: Stream) -> None:
        n = int(nbytes)
        _host(stream).enqueue(self._clock.timed("d2h", lambda: np.copyto(dst.reshape(-1).view(np.uint8)[:n], src[:n])))

    def quantize(self, job: SlabJob, src: Any, dst: Any, quant_weights: Any | None, stream: Stream):
        """Enqueue the computation; a row ggml aborts on does not fail the stream (other outputs of the slab go
        on): it is kept and raised by the returned check, as the CUDA device reports it."""
        aborted: list[GGMLAbort] = []

        def run() -> None:
            try:
                self.compute(job, src, dst, quant_weights)
            except GGMLAbort as e:
                aborted.append(e)

        def check() -> None:
            if aborted:
                raise aborted[0]

        _host(stream).enqueue(self._clock.timed("kernel", run))
        return check

    def record(self, stream: Stream) -> Event:
        return _host(stream).record()

    def wait(self, stream: Stream, event: Event) -> None:
        _host(stream).wait_event(event)

    def stage_times(self) -> dict[str, float]:
        return self._clock.times()

    def close(self) -> None:
        for s in self._streams:
            s.close()
        self._streams.clear()


def _host(stream: Stream) -> HostStream:
    if not isinstance(stream, HostStream):
        raise TypeError(f"expected a stream of a host device, got {type(stream).__name__}")
    return stream
