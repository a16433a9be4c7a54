"""Shared test helpers: devices, running a slab through the Device interface, inputs, byte comparisons.

Every test module imports what it shares from here (or from ``tests.oracle``, ``tests.oracle_files``,
``tests.synthetic``, ``tests.golden``); no test module imports another test module.
"""
from __future__ import annotations

import functools
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpuquant import quants
from gpuquant.backends import Device, SlabJob
from gpuquant.gguf_io import SourceTensor, pad
from gpuquant.quants import QUANT_SIZES, GGMLAbort, parse_type, quantize
from gpuquant.quants import GGMLQuantizationType as T
from tests.golden import first_difference
from tests.oracle import forked_oracle, oracle_dequantize

F32 = np.float32

__all__ = [
    "DEVICES", "F32", "MemWriter", "assert_bytes", "assert_same_floats", "cuda_skip_reason", "expected",
    "gpu_nan_device", "gpu_nan_kernel_dir", "make_device", "make_rows", "make_source", "nonfinite_rows",
    "random_blocks", "check_abort_aware", "check_dequantize", "check_vs_oracle", "random_imatrix", "random_rows", "reference", "run_device",
    "to_bf16", "to_f16",
]


# ------------------------------------------------------------------------------------------------------
# comparisons
# ------------------------------------------------------------------------------------------------------


def assert_bytes(got: np.ndarray, want: np.ndarray, qtype, rows: np.ndarray | None = None, what: str = "") -> None:
    """Byte equality; on mismatch the first differing block, its bytes and its input values."""
    t = parse_type(qtype)
    block_size, type_size = QUANT_SIZES[t]
    diff = first_difference(got, want, type_size, block_size, rows)
    assert diff is None, f"{t.name} {what}: {diff}"


def assert_same_floats(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """Bit equality of float32 arrays (NaN bits and signed zeros included); names the first difference."""
    g, w = np.ascontiguousarray(got, F32).view(np.uint32), np.ascontiguousarray(want, F32).view(np.uint32)
    assert g.shape == w.shape, f"{what}: shape {g.shape}, expected {w.shape}"
    bad = np.flatnonzero(g.reshape(-1) != w.reshape(-1))
    assert bad.size == 0, (f"{what}: {bad.size}/{g.size} values differ; first at flat index {bad[0]}: "
                           f"got {g.reshape(-1)[bad[0]]:#010x}, want {w.reshape(-1)[bad[0]]:#010x}")


# ------------------------------------------------------------------------------------------------------
# devices
# ------------------------------------------------------------------------------------------------------

#: The devices every conformance test runs on; "cuda" is marked gpu and skips with the reason without one.
DEVICES = ("cpu", "emulated", pytest.param("cuda", marks=pytest.mark.gpu))


@functools.lru_cache(maxsize=1)
def cuda_skip_reason() -> str | None:
    """Why there is no CUDA device to test on, or None when there is one."""
    from gpuquant.backends import cuda

    if cuda._cupy() is None:
        return "CuPy is not installed (pip install 'gpuquant[cuda12]' or '[cuda13]')"
    if cuda.device_count() == 0:
        return "no CUDA device visible to CuPy"
    return None


def make_device(name: str) -> Device:
    """A device for the tests: two host threads for the CPU ones; skips (with the reason) for a missing GPU."""
    if name == "cpu":
        from gpuquant.backends.cpu import CpuDevice

        return CpuDevice(threads=2)
    if name == "emulated":
        from gpuquant.backends.emulated import EmulatedDevice

        return EmulatedDevice(threads=2)
    if name == "cuda":
        reason = cuda_skip_reason()
        if reason:
            pytest.skip(reason)
        from gpuquant.backends.cuda import CudaDevice

        return CudaDevice(0)
    raise ValueError(f"unknown test device {name!r}")


def run_device(dev: Device, src: np.ndarray, src_type, dst_type, n_per_row: int, qw: np.ndarray | None = None,
               n_expert: int = 1) -> np.ndarray:
    """Quantize one slab through the Device interface: upload, quantize, download on one stream.

    ``src``: raw source bytes (any dtype, C order); ``qw``: float32 ``(n_expert, n_per_row)`` or None.
    Returns uint8 ``(nrows, row_size)`` of ``dst_type``.
    """
    src_type, dst_type = parse_type(src_type), parse_type(dst_type)
    raw = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
    nrows = raw.size // quants.row_size(src_type, n_per_row)
    job = SlabJob(src_type, dst_type, n_per_row, nrows // n_expert, n_expert, has_quant_weights=qw is not None)
    assert job.src_bytes == raw.size, (job.src_bytes, raw.size)
    s = dev.stream()
    h_in = dev.host_buffer(raw.size)
    h_in[:] = raw
    d_in, d_out = dev.device_buffer(raw.size), dev.device_buffer(job.dst_bytes)
    h_out = dev.host_buffer(job.dst_bytes)
    d_qw = None
    if qw is not None:
        wraw = np.ascontiguousarray(qw, F32).reshape(-1).view(np.uint8)
        assert wraw.size == job.quant_weight_bytes
        h_qw = dev.host_buffer(wraw.size)
        h_qw[:] = wraw
        d_qw = dev.device_buffer(wraw.size)
        dev.upload(d_qw, h_qw, wraw.size, s)
    dev.upload(d_in, h_in, raw.size, s)
    check = dev.quantize(job, d_in, d_out, d_qw, s)
    dev.download(h_out, d_out, job.dst_bytes, s)
    dev.record(s).synchronize()
    if check is not None:  # raises GGMLAbort where ggml aborts
        check()
    return np.array(h_out[: job.dst_bytes]).reshape(nrows, -1)


# ------------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------------


def to_f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(raw F16 rows, the float32 values ggml's to_float gives for them)."""
    h = x.astype(np.float16)
    return h, h.astype(F32)


def to_bf16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(raw BF16 rows (truncated bits), their float32 values)."""
    bits = (np.ascontiguousarray(x, F32).view(np.uint32) >> 16).astype(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(F32)


def random_rows(rng: np.random.Generator, nrows: int, n: int) -> np.ndarray:
    """Normal rows with per-row scales from 0.01 to 10."""
    return (rng.standard_normal((nrows, n)) * rng.uniform(0.01, 10, (nrows, 1))).astype(F32)


def random_imatrix(rng: np.random.Generator, n: int, kind: str) -> np.ndarray | None:
    """Importance weights of one row: ``"none"`` (None), ``"imatrix"`` (squared normals, as llama-imatrix
    collects) or ``"sparse"`` (the same with about 40% zeros)."""
    if kind == "none":
        return None
    w = (rng.standard_normal(n) ** 2).astype(F32)
    if kind == "sparse":
        w[rng.random(n) < 0.4] = 0
    return w


def nonfinite_rows(seed: int, nrows: int = 8, n: int = 512) -> np.ndarray:
    """Rows sprinkled with quiet NaN/+Inf/-Inf, whole NaN/Inf blocks, NaN as first/last element.

    No NaN payloads: which of two NaN operands a commutative float operation returns is left open by IEEE
    754, and compilers swap such operands freely, so payload propagation differs between builds of the same
    C code (and llama-quantize refuses NaN tensors when it loads them anyway)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((nrows, n)) * rng.uniform(0.01, 100, (nrows, 1))).astype(F32)
    m = rng.random(x.shape)
    x[m < 0.01] = np.nan
    x[(m >= 0.01) & (m < 0.02)] = np.inf
    x[(m >= 0.02) & (m < 0.03)] = -np.inf
    x[0, :32] = np.nan
    x[1, 32:64] = np.inf
    x[2, 64:96] = -np.inf
    x[3, 96] = x[3, 127] = np.nan
    x[4] = np.where(rng.random(n) < 0.5, np.nan, 1.0)
    return x


# ------------------------------------------------------------------------------------------------------
# quantized bytes with edge scales, and the numpy dequantizers against the oracle's
# ------------------------------------------------------------------------------------------------------

#: finite, +-0, subnormal and +-inf halves
EDGE_HALVES_NO_NAN = np.array([0x3C00, 0x2E66, 0xB800, 0x0000, 0x8000, 0x7BFF, 0xFBFF, 0x0001, 0x83FF, 0x7C00,
                               0xFC00], np.uint16)
#: and quiet and signaling NaNs of both signs
EDGE_HALVES = np.concatenate([EDGE_HALVES_NO_NAN, np.array([0x7E00, 0xFE00, 0x7C01, 0xFD55, 0x7FFF], np.uint16)])


def random_blocks(qtype: str, nrows: int, n_per_row: int, seed: int,
                  fields: dict[str, int] | None = None, halves: np.ndarray = EDGE_HALVES) -> np.ndarray:
    """Random bytes of ``nrows`` rows of ``qtype`` whose fp16 fields (the type's ``fp16_fields``, or
    ``fields``) hold, independently per block and field, one of ``halves`` (half the blocks) or a random
    finite value."""
    block, tsize = QUANT_SIZES[parse_type(qtype)]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (nrows, n_per_row // block * tsize), dtype=np.uint8)
    blocks = raw.reshape(-1, tsize)
    offsets = (quants.get(qtype).fp16_fields if fields is None else fields).values()
    for off in offsets:
        finite = rng.standard_normal(blocks.shape[0]).astype(np.float16).view(np.uint16)
        edge = rng.choice(halves, blocks.shape[0])
        h = np.where(rng.random(blocks.shape[0]) < 0.5, edge, finite).astype("<u2")
        blocks[:, off:off + 2] = h.view(np.uint8).reshape(-1, 2)
    return raw


def check_dequantize(qtype: str, raw: np.ndarray, what: str = "") -> None:
    """``dequantize_rows`` bit for bit against ggml's to_float; on mismatch the first differing value, its
    bits both ways and its block's bytes."""
    cls = quants.get(qtype)
    n = raw.shape[1] // cls.type_size * cls.block_size
    got = cls.dequantize_rows(raw)
    want = oracle_dequantize(raw, qtype, n)
    assert got.dtype == np.float32 and got.shape == want.shape, f"{qtype}: {got.dtype} {got.shape}, want {want.shape}"
    g, w = got.view(np.uint32), want.view(np.uint32)
    bad = np.flatnonzero(g != w)
    if bad.size:
        i = int(bad[0])
        r, e = divmod(i, n)
        b = e // cls.block_size
        blk = raw[r, b * cls.type_size:(b + 1) * cls.type_size]
        raise AssertionError(f"{qtype} {what}: {bad.size}/{g.size} values differ; first row {r} element {e} "
                             f"(block {b}, element {e % cls.block_size} of it): got {g.flat[i]:#010x} "
                             f"({got.flat[i]!r}), want {w.flat[i]:#010x} ({want.flat[i]!r})\n"
                             f"  block bytes {blk.tolist()}")


# ------------------------------------------------------------------------------------------------------
# the GPU code path on the host: a build of the kernels with a GPU's NaN bits
# ------------------------------------------------------------------------------------------------------

#: (pattern, replacement) edits of common.cuh for the GPU-NaN build: a computed NaN read through
#: gq_float_bits has a GPU's bits (canonical 0x7FFFFFFF, not x86's default NaN 0xFFC00000), and the NaN a
#: dequantize kernel stores through gq_x86_nan is a marker, so that the tests see it went through.
GPU_NAN_EDITS = (
    (r"(uint32_t\s+gq_float_bits\s*\(\s*float\s+(\w+)\s*\)\s*\{)", r"\1 if (\2 != \2) return 0x7FFFFFFFu;"),
    (r"(#define\s+GQ_X86_DEFAULT_NAN\s+)0xFFC00000u", r"\g<1>0xFFC0BEEFu"),
)
#: the bits gq_x86_nan stores in the GPU-NaN build (x86's default NaN elsewhere)
GPU_NAN_MARKER = 0xFFC0BEEF


def gpu_nan_kernel_dir(d: Path) -> Path:
    """Writes into ``d`` the kernel folder built as for a GPU (GQ_PORTABLE: the NaN and float->int guards
    kept) with the GPU_NAN_EDITS. Every computed NaN whose bits matter then has the GPU's bits, so this
    build gives the plain host build's bytes only if the guards in common.cuh answer for every NaN."""
    from gpuquant.backends import kernels as K

    text = (K.kernel_dir() / "common.cuh").read_text()
    for pat, rep in GPU_NAN_EDITS:
        text, n = re.subn(pat, rep, text, count=1)
        assert n == 1, f"common.cuh: no match for {pat!r}; update GPU_NAN_EDITS"
    (d / "common.cuh").write_text("#define GQ_PORTABLE 1  // the GPU code path on the host\n" + text)
    for src in [*K.kernel_dir().glob("*.cu"), *K.kernel_dir().glob("*.cuh")]:
        if src.name != "common.cuh":
            shutil.copy(src, d / src.name)
    return d


def gpu_nan_device(kdir: Path) -> Device:
    """The emulated device running the GPU-NaN build of every family (see gpu_nan_kernel_dir)."""
    from gpuquant.backends.emulated import EmulatedDevice

    return EmulatedDevice(threads=2, precompile=False, kernel_dir=kdir)



# ------------------------------------------------------------------------------------------------------
# the pipeline without files: a writer in memory, a raw source tensor, the expected bytes
# ------------------------------------------------------------------------------------------------------


class MemWriter:
    """A StreamWriter stand-in collecting the bytes in memory."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.bytes_written = 0

    def write(self, data):
        b = bytes(memoryview(data).cast("B"))
        self.buf.write(b)
        self.bytes_written += len(b)

    def pad(self):
        n = pad(self.bytes_written) - self.bytes_written
        self.write(b"\0" * n)


def make_source(tmp_path, arr: np.ndarray, name="t", qtype=T.F32):
    """``arr`` as a raw F32/F16 tensor at offset 64 of a file."""
    path = tmp_path / f"{name}.bin"
    raw = arr.astype(np.float32 if qtype == T.F32 else np.float16).tobytes()
    path.write_bytes(b"\0" * 64 + raw)
    ne = tuple(reversed(arr.shape))
    return SourceTensor(name, ne, qtype, path, 64, len(raw))


def expected(arr, dst, qw=None):
    """Row by row with the expert's weights: what llama_tensor_quantize_impl does."""
    n = arr.shape[-1]
    rows = arr.reshape(-1, n).astype(np.float32)
    rpe = arr.shape[-2]
    out = [quants.quantize(rows[r:r + 1], dst, None if qw is None else qw[r // rpe]) for r in range(len(rows))]
    return np.concatenate(out).tobytes()


def make_rows(qtype, nrows: int, n_blocks: int, seed: int) -> np.ndarray:
    """Random rows of ``n_blocks`` blocks (at least 32 values each) with a few edge blocks: zeros,
    denormals, a huge block, a constant block."""
    t = parse_type(qtype)
    block = QUANT_SIZES[t][0]
    n = max(1, n_blocks) * max(block, 32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nrows, n)).astype(F32) * F32(0.05)
    if nrows >= 4 and t not in (T.F32, T.F16, T.BF16):
        x[0, :32] = 0
        x[1, :32] = (rng.standard_normal(32) * 1e-40).astype(F32)
        x[2, -32:] = (rng.standard_normal(32) * 1e4).astype(F32)
        x[3, 32:64] = F32(0.75)
    return x


def reference(x: np.ndarray, qtype, qw: np.ndarray | None, n_expert: int = 1) -> np.ndarray:
    """The numpy reference, expert by expert (``qw``: ``(n_expert, n)`` or None)."""
    rows = x.reshape(n_expert, -1, x.shape[-1])
    return np.concatenate([quants.quantize(rows[e], qtype, None if qw is None else qw[e]) for e in range(n_expert)])


# ------------------------------------------------------------------------------------------------------
# inputs on which ggml may abort
# ------------------------------------------------------------------------------------------------------


def check_vs_oracle(quantize_fn, rows: np.ndarray, qtype, w: np.ndarray | None, what: str) -> int:
    """``quantize_fn(rows)`` (gpuquant's bytes, on some device) against ``ggml_quantize_chunk``. For a type
    whose ggml quantizer aborts on some inputs (``ggml_aborts``) the oracle runs in a forked child; where it
    aborts, gpuquant must raise ``GGMLAbort`` on exactly those rows (checked row by row). Returns how many rows
    abort."""
    t = parse_type(qtype)
    if not quants.get(t).ggml_aborts:
        from tests.oracle import oracle_quantize

        assert_bytes(quantize_fn(rows), oracle_quantize(rows, t, w), t, rows, what)
        return 0
    want, _ = forked_oracle(rows, t.name, w)
    if want is not None:
        assert_bytes(quantize_fn(rows), want, t, rows, what)
        return 0
    return check_abort_aware(t.name, rows, w, what, quantize_fn)


def check_abort_aware(qtype: str, rows: np.ndarray, w: np.ndarray | None, what: str, quantize_fn=None) -> int:
    """Row by row: gpuquant's bytes (``quantize_fn``, default the numpy reference) must equal the oracle's, and
    gpuquant must raise ``GGMLAbort`` exactly on the rows where ggml aborts. Returns how many rows abort."""
    quantize_fn = quantize_fn or (lambda r: quantize(r, qtype, w))
    ours, refused = [], []
    for r in range(len(rows)):
        try:
            with np.errstate(all="raise"):  # no float warning may escape
                ours.append(quantize_fn(rows[r:r + 1]))
        except GGMLAbort:
            refused.append(r)
    kept = [r for r in range(len(rows)) if r not in refused]
    if kept:
        want, text = forked_oracle(rows[kept], qtype, w)
        assert want is not None, f"{qtype} {what}: ggml aborts on rows gpuquant quantizes: {text[:300]}"
        assert_bytes(np.concatenate(ours), want, qtype, rows[kept], what)
    for r in refused:
        want, _ = forked_oracle(rows[r:r + 1], qtype, w)
        assert want is None, f"{qtype} {what}: gpuquant raises GGMLAbort on row {r}, ggml quantizes it"
    return len(refused)
