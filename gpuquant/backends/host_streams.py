"""Streams and events for host devices (numpy, emulated): each stream is one worker thread running its
operations in order, so the pipeline's triple buffering overlaps on the CPU exactly as on a GPU."""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

from . import Event, Stream


class HostEvent(Event):
    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None

    def _complete(self, error: BaseException | None = None) -> None:
        self._error = error
        self._done.set()

    def synchronize(self) -> None:
        self._done.wait()
        if self._error is not None:
            raise self._error


class HostStream(Stream):
    """An in-order queue of callables run by one daemon thread.

    A failing operation poisons the stream: later operations are skipped and every later event re-raises
    the first error, like a sticky CUDA error.
    """

    def __init__(self, name: str = "stream") -> None:
        self._q: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"gpuquant-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            op = self._q.get()
            if op is None:
                return
            try:
                op()
            except BaseException as e:  # noqa: BLE001 - handed to whoever synchronizes
                if self._error is None:
                    self._error = e

    def enqueue(self, op: Callable[[], None]) -> None:
        def guarded() -> None:
            if self._error is None:
                op()

        self._q.put(guarded)

    def record(self) -> HostEvent:
        ev = HostEvent()
        self._q.put(lambda: ev._complete(self._error))
        return ev

    def wait_event(self, ev: Event) -> None:
        self._q.put(ev.synchronize)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)


class StageClock:
    """Seconds per device stage ("h2d", "kernel", "d2h"), summed over the operations host streams ran."""

    def __init__(self) -> None:
        self._times: dict[str, float] = {}
        self._lock = threading.Lock()

    def timed(self, stage: str, fn: Callable[[], None]) -> Callable[[], None]:
        def op() -> None:
            t0 = time.perf_counter()
            fn()
            with self._lock:
                self._times[stage] = self._times.get(stage, 0.0) + time.perf_counter() - t0

        return op

    def times(self) -> dict[str, float]:
        with self._lock:
            return dict(self._times)
