"""The pipeline: slab cutting, output independent of slab size, per-expert weights, real stage overlap."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gpuquant.backends import SlabJob
from gpuquant.backends.cpu import CpuDevice
from gpuquant.gguf_io import pad
from gpuquant.pipeline import Pipeline, TensorWork, slabs_of
from tests.helpers import MemWriter, expected, make_source
from gpuquant.quants import GGMLQuantizationType as T


def run(device, works, slab_bytes):
    w = MemWriter()
    Pipeline(device, works, w, slab_bytes=slab_bytes).run()
    return w.buf.getvalue()


def test_slabs_cover_rows_and_respect_experts(tmp_path):
    arr = np.zeros((4, 6, 64), np.float32)  # 4 experts x 6 rows x 64
    src = make_source(tmp_path, arr)
    work = TensorWork(src, "t", T.Q8_0, np.ones((4, 64), np.float32))
    for budget in (1, 700, 3000, 10_000, 1 << 30):
        slabs = slabs_of(0, work, budget)
        rows = [(s.row0, s.job.nrows) for s in slabs]
        covered = sum(n for _, n in rows)
        assert covered == 24
        assert slabs[-1].last and not any(s.last for s in slabs[:-1])
        for s in slabs:  # a slab never straddles an expert boundary unless it holds whole experts
            if s.job.n_expert == 1:
                assert s.row0 // 6 == (s.row0 + s.job.nrows - 1) // 6
            else:
                assert s.row0 % 6 == 0 and s.job.rows_per_expert == 6
            assert s.quant_weights.shape == (s.job.n_expert, 64)


@pytest.mark.parametrize("slab_bytes", [1, 5000, 1 << 20])
def test_output_independent_of_slab_size_with_expert_weights(tmp_path, slab_bytes):
    rng = np.random.default_rng(1)
    arr = rng.standard_normal((3, 5, 96)).astype(np.float32)
    qw = rng.random((3, 96)).astype(np.float32) + 0.1
    src = make_source(tmp_path, arr)
    dev = CpuDevice(threads=2)
    try:
        got = run(dev, [TensorWork(src, "t", T.Q4_0, qw)], slab_bytes)
    finally:
        dev.close()
    want = expected(arr, T.Q4_0, qw)
    assert got[: len(want)] == want
    assert len(got) == pad(len(want))


def test_copies_and_conversions_in_one_run(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((7, 64)).astype(np.float32)
    b = rng.standard_normal((3, 32)).astype(np.float16)
    sa, sb = make_source(tmp_path, a, "a"), make_source(tmp_path, b, "b", T.F16)
    dev = CpuDevice(threads=1)
    try:
        got = run(dev, [TensorWork(sa, "a", T.F32), TensorWork(sb, "b", T.Q8_0)], 256)
    finally:
        dev.close()
    want_a = a.tobytes()
    want_b = expected(b.astype(np.float32).reshape(1, 3, 32), T.Q8_0)
    assert got[: len(want_a)] == want_a
    off = pad(len(want_a))
    assert got[off: off + len(want_b)] == want_b


class SlowDevice(CpuDevice):
    """Numpy device whose stages take a fixed time and log when they ran; with device buffers and copies,
    as on a GPU."""

    zero_copy = False

    def __init__(self):
        super().__init__(threads=1)
        self.log: list[tuple[str, float, float]] = []
        self._lk = threading.Lock()

    def _slow(self, stage, fn):
        def op():
            t0 = time.perf_counter()
            time.sleep(0.03)
            fn()
            with self._lk:
                self.log.append((stage, t0, time.perf_counter()))
        return op

    def upload(self, dst, src, nbytes, stream):
        stream.enqueue(self._slow("h2d", lambda: np.copyto(dst[:nbytes], src[:nbytes])))

    def quantize(self, job: SlabJob, src, dst, qw, stream):
        from gpuquant.backends.cpu import quantize_host

        stream.enqueue(self._slow("kernel", lambda: quantize_host(src, dst, job, qw)))

    def download(self, dst, src, nbytes, stream):
        stream.enqueue(self._slow("d2h", lambda: np.copyto(dst[:nbytes], src[:nbytes])))


def test_stages_overlap_and_output_unchanged(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.standard_normal((1, 24, 64)).astype(np.float32)
    src = make_source(tmp_path, arr)
    dev = SlowDevice()
    try:
        got = run(dev, [TensorWork(src, "t", T.Q8_0)], 64 * 4 + 68 + 256)  # one row per slab: 24 slabs
    finally:
        dev.close()
    assert got[: 24 * 68] == expected(arr, T.Q8_0)
    ups = [(a, b) for s, a, b in dev.log if s == "h2d"]
    kernels = [(a, b) for s, a, b in dev.log if s == "kernel"]
    assert len(ups) == len(kernels) == 24
    # some upload ran while some kernel was running: the streams really overlap
    overlaps = sum(1 for ua, ub in ups for ka, kb in kernels if ua < kb and ka < ub)
    assert overlaps >= 10


def test_slow_uploads_never_see_weights_of_a_later_slab(tmp_path):
    """The issuer runs ahead of a slow upload stream: staged importance weights must not be overwritten
    by a later slab before their upload ran (each slab's weights differ here)."""
    rng = np.random.default_rng(4)
    arr = rng.standard_normal((8, 2, 64)).astype(np.float32)
    qw = (rng.random((8, 64)) * 10 + 0.01).astype(np.float32)
    src = make_source(tmp_path, arr)
    dev = SlowDevice()
    try:
        got = run(dev, [TensorWork(src, "t", T.Q4_0, qw)], 2 * (64 * 4 + 18 + 256))  # one expert per slab
    finally:
        dev.close()
    want = expected(arr, T.Q4_0, qw)
    assert got[: len(want)] == want


@pytest.mark.parametrize("zero_copy", [True, False])
def test_emulated_device_with_and_without_device_buffers(tmp_path, zero_copy):
    """The emulated device computes in the staging buffers (zero copy) or, like a GPU, through device
    buffers with uploads and downloads: the same bytes either way."""
    from gpuquant.backends.emulated import EmulatedDevice

    rng = np.random.default_rng(5)
    arr = rng.standard_normal((3, 4, 256)).astype(np.float32)
    qw = (rng.random((3, 256)) + 0.1).astype(np.float32)
    src = make_source(tmp_path, arr)
    dev = EmulatedDevice(threads=2, precompile=False)
    dev.zero_copy = zero_copy
    try:
        got = run(dev, [TensorWork(src, "t", T.Q4_K, qw)], 3000)
        stages = dev.stage_times()
    finally:
        dev.close()
    assert got[: 12 * 144] == expected(arr, T.Q4_K, qw)
    assert ("h2d" in stages) == (not zero_copy) and stages["kernel"] > 0


@pytest.mark.parametrize("mode", ["kernel", "short", "exdev"])
def test_copy_range_appends_the_source_bytes(tmp_path, monkeypatch, mode):
    """StreamWriter.copy_range (unchanged tensors copied by copy_file_range) writes exactly what write would:
    after the header, in order, with a short kernel copy or none at all (EXDEV: write instead)."""
    import errno
    import os

    from gpuquant.gguf_writer import StreamWriter

    src = tmp_path / "src.bin"
    payload = np.random.default_rng(3).integers(0, 256, 100_000, dtype=np.uint8)
    src.write_bytes(b"xxxx" + payload.tobytes())
    real = os.copy_file_range
    if mode == "short":
        monkeypatch.setattr(os, "copy_file_range", lambda a, b, n, off: real(a, b, min(n, 4096), off))
    elif mode == "exdev":
        def refuse(*args):
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    w = StreamWriter(tmp_path / "out.bin", b"HEAD")
    fd = os.open(src, os.O_RDONLY)
    try:
        w.copy_range(payload[:60_000], fd, 4)
        w.write(b"mid")
        w.copy_range(payload[60_000:], fd, 4 + 60_000)
    finally:
        os.close(fd)
    assert w.bytes_written == 4 + 100_000 + 3
    w._f.close()
    assert w.tmp.read_bytes() == b"HEAD" + payload[:60_000].tobytes() + b"mid" + payload[60_000:].tobytes()
