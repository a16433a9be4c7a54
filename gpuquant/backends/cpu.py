"""The numpy reference device: host buffers, worker-thread streams, the registered numpy quantizers."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import quants
from ..quants import GGMLQuantizationType as T
from . import Device, Event, SlabJob, Stream
from .host_streams import HostStream, StageClock

# rows per task handed to the thread pool: big enough to amortize numpy's per-call overhead, small enough
# to stay in cache and to spread a slab over all threads
_ROWS_BYTES_PER_TASK = 1 << 20


def source_to_f32(raw: np.ndarray, src_type: T, n_per_row: int) -> np.ndarray:
    """Raw source rows -> float32 rows, exactly as ggml's to_float (llama_tensor_dequantize_impl)."""
    if src_type == T.F32:
        return raw.view(np.float32).reshape(-1, n_per_row)
    if src_type == T.F16:
        return raw.view(np.float16).astype(np.float32).reshape(-1, n_per_row)
    if src_type == T.BF16:  # ggml_bf16_to_fp32: the 16 bits become the top half
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(-1, n_per_row)
    from gguf.quants import dequantize

    rs = quants.row_size(src_type, n_per_row)
    return dequantize(raw.reshape(-1, rs), src_type).astype(np.float32, copy=False).reshape(-1, n_per_row)


def quantize_host(src: np.ndarray, dst: np.ndarray, job: SlabJob, quant_weights: np.ndarray | None,
                  pool: ThreadPoolExecutor | None = None) -> None:
    """Quantize one slab on the host with the numpy reference, rows spread over ``pool``."""
    cls = quants.get(job.dst_type)
    n = job.n_per_row
    rows = source_to_f32(src[: job.src_bytes], job.src_type, n)
    out = dst[: job.dst_bytes].reshape(job.nrows, -1)
    qw = None if quant_weights is None else quant_weights.view(np.float32)[: job.n_expert * n].reshape(job.n_expert, n)
    step = max(1, min(job.rows_per_expert, _ROWS_BYTES_PER_TASK // (4 * n)))

    def task(r0: int) -> None:
        e = r0 // job.rows_per_expert
        r1 = min(r0 + step, (e + 1) * job.rows_per_expert)
        out[r0:r1] = cls.quantize_rows(np.ascontiguousarray(rows[r0:r1]), None if qw is None else qw[e])

    starts = []
    for e in range(job.n_expert):
        starts += range(e * job.rows_per_expert, (e + 1) * job.rows_per_expert, step)
    if pool is None or len(starts) == 1:
        for r0 in starts:
            task(r0)
    else:
        for f in [pool.submit(task, r0) for r0 in starts]:
            f.result()


class NumpyDevice(Device):
    name = "numpy"
    zero_copy = True

    def __init__(self, threads: int = 1) -> None:
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gpuquant-np") if self.threads > 1 else None
        self._streams: list[HostStream] = []
        self._clock = StageClock()
        self._timed = self._clock.timed

    def stage_times(self) -> dict[str, float]:
        return self._clock.times()

    def supports(self, src_type: T, dst_type: T) -> bool:
        try:
            quants.get(dst_type)
        except quants.UnsupportedType:
            return False
        if src_type in (T.F32, T.F16, T.BF16):
            return True
        import gguf.quants

        return src_type in gguf.quants._type_traits  # the gguf package can dequantize it

    def host_buffer(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, dtype=np.uint8)

    def device_buffer(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, dtype=np.uint8)

    def stream(self) -> HostStream:
        s = HostStream("numpy")
        self._streams.append(s)
        return s

    def upload(self, dst: np.ndarray, src: np.ndarray, nbytes: int, stream: Stream) -> None:
        stream.enqueue(self._timed("h2d", lambda: np.copyto(dst[:nbytes], src[:nbytes])))

    def download(self, dst: np.ndarray, src: np.ndarray, nbytes: int, stream: Stream) -> None:
        stream.enqueue(self._timed("d2h", lambda: np.copyto(dst[:nbytes], src[:nbytes])))

    def quantize(self, job: SlabJob, src, dst, quant_weights, stream: Stream) -> None:
        stream.enqueue(self._timed("kernel", lambda: quantize_host(src, dst, job, quant_weights, self._pool)))

    def record(self, stream: Stream) -> Event:
        return stream.record()

    def wait(self, stream: Stream, event: Event) -> None:
        stream.wait_event(event)

    def memory_budget(self) -> int:
        return 256 << 20

    def close(self) -> None:
        for s in self._streams:
            s.close()
        self._streams.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
