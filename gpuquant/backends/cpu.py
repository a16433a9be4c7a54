"""``CpuDevice`` (``--device cpu``): the registered numpy reference quantizers on host threads."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import quants
from ..quants import GGMLQuantizationType as T
from . import SlabJob
from .host import HostDevice

# rows per task handed to the thread pool: big enough to amortize numpy's per-call overhead, small enough
# to stay in cache and to spread a slab over all threads
_ROWS_BYTES_PER_TASK = 1 << 20


def quantize_host(src: np.ndarray, dst: np.ndarray, job: SlabJob, quant_weights: np.ndarray | None,
                  pool: ThreadPoolExecutor | None = None) -> None:
    """Quantize one slab on the host with the numpy reference, rows spread over ``pool``."""
    cls = quants.get(job.dst_type)
    n = job.n_per_row
    rows = quants.dequantize(src[: job.src_bytes], job.src_type, n)
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


class CpuDevice(HostDevice):
    name = "cpu"

    def __init__(self, threads: int = 1) -> None:
        super().__init__()
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gpuquant-cpu") if self.threads > 1 else None

    def supports(self, src_type: T, dst_type: T) -> bool:
        try:
            quants.get(dst_type)
        except quants.UnsupportedType:
            return False
        return quants.can_dequantize(src_type)

    def compute(self, job: SlabJob, src, dst, quant_weights) -> None:
        quantize_host(src, dst, job, quant_weights, self._pool)

    def memory_budget(self) -> int:
        return 256 << 20

    def close(self) -> None:
        super().close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
