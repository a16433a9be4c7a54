"""Shared kernel checks of the simple types (test_lowbit, test_ternary, test_fp4): the CUDA kernels run on
the emulated device against the numpy reference and, when it is installed, the oracle, byte for byte."""
from __future__ import annotations

import numpy as np

from gpuquant.quants import QUANT_SIZES, get, parse_type, quantize
from gpuquant.quants import GGMLQuantizationType as T
from tests.oracle import available, oracle_dequantize, oracle_quantize
from tests.quant_checks import assert_bytes
from tests.test_conformance import GPU_NAN_MARKER, GpuNanDevice, gpu_nan_kernel_dir, run_device, to_bf16, to_f16

F32 = np.float32


def sources(x: np.ndarray):
    """``(name, source type, raw rows, their float32 values)`` for F32, F16 and BF16 sources of ``x``."""
    with np.errstate(over="ignore"):
        yield "f32", T.F32, x, x
        yield "f16", T.F16, *to_f16(x)
        yield "bf16", T.BF16, *to_bf16(x)


def check_quantize_kernel(dev, qtype: str, x: np.ndarray, what: str, qw: np.ndarray | None = None) -> None:
    """``quantize_<type>_{f32,f16,bf16}`` on ``x`` against numpy (and the oracle) for every source type."""
    t = parse_type(qtype)
    for src, src_type, raw, values in sources(x):
        got = run_device(dev, raw, src_type, t, x.shape[1], None if qw is None else qw[None])
        want = quantize(values, t, qw)
        assert_bytes(got, want, qtype, values, f"kernel from {src}, {what}")
        if available():
            assert_bytes(got, oracle_quantize(values, t, qw), qtype, values, f"kernel from {src} vs oracle, {what}")


def check_dequantize_kernel(dev, qtype: str, raw: np.ndarray, what: str) -> None:
    """``dequantize_<type>`` (through the F32 destination) bit for bit against numpy and the oracle."""
    cls = get(qtype)
    n = raw.shape[1] // cls.type_size * cls.block_size
    got = run_device(dev, raw, cls.qtype, T.F32, n).view(F32)
    wants = [("numpy", cls.dequantize_rows(raw))]
    if available():
        wants.append(("oracle", oracle_dequantize(raw, qtype, n)))
    for name, want in wants:
        bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        assert bad.size == 0, (f"{qtype} dequantize kernel vs {name}, {what}: {bad.size} values differ, first "
                               f"{bad[0]}: {got.flat[bad[0]]!r} vs {want.flat[bad[0]]!r}")


def check_requantize_kernel(dev, qtype: str, raw: np.ndarray, targets=(T.Q8_0, T.Q4_1, T.F16)) -> None:
    """This type's blocks dequantized and requantized on the device (one plan: dequantize_<type> then
    quantize_<target>_f32) against the numpy reference of both steps."""
    cls = get(qtype)
    n = raw.shape[1] // cls.type_size * cls.block_size
    values = cls.dequantize_rows(raw)
    for dst in targets:
        if n % QUANT_SIZES[dst][0]:
            continue
        got = run_device(dev, raw, cls.qtype, dst, n)
        assert_bytes(got, quantize(values, dst), dst.name, values, f"requantized from {qtype}")


def gpu_nan_device(tmp_path_factory) -> GpuNanDevice:
    """The emulated device with the GPU code path of every kernel (GQ_PORTABLE, a GPU's canonical NaN bits
    for every computed NaN, a marker for the NaNs dequantize kernels store): see test_conformance."""
    return GpuNanDevice(gpu_nan_kernel_dir(tmp_path_factory.mktemp("gpu_nan")))


def check_gpu_nan_path(dev, gpu_dev, qtype: str, x: np.ndarray, raw: np.ndarray) -> None:
    """The GPU code path gives the host build's bytes on rows that make NaNs (``x``: NaN/Inf inputs,
    denormal blocks), and its dequantize kernel stores every NaN of ``raw``'s blocks through gq_x86_nan."""
    t = parse_type(qtype)
    want = run_device(dev, x, T.F32, t, x.shape[1])
    assert_bytes(run_device(gpu_dev, x, T.F32, t, x.shape[1]), want, qtype, x, "GPU NaN bits")
    n = raw.shape[1] // QUANT_SIZES[t][1] * QUANT_SIZES[t][0]
    host = run_device(dev, raw, t, T.F32, n).view(np.uint32)
    gpu = run_device(gpu_dev, raw, t, T.F32, n).view(np.uint32)
    nan = np.isnan(host.view(F32))
    assert np.array_equal(gpu[~nan], host[~nan]), f"{qtype}: the GPU path dequantizes other numbers"
    assert (gpu[nan] == GPU_NAN_MARKER).all(), f"{qtype}: a stored NaN did not go through gq_x86_nan"
