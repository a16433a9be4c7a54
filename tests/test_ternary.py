"""TQ1_0 and TQ2_0: numpy reference and kernels against llama.cpp, byte for byte.

Default suite: hand-checked layouts, the importance weights being ignored (ggml_quantize_chunk passes
them, quantize_tq*_0 drops them), and the kernels on the emulated device against numpy. Oracle suite:
random rows of several scales and lengths, the golden edge-case kinds (group b256: 256-element blocks),
NaN/Inf inputs (a NaN restarts ggml's MAX macro, so trits past +-1 and the wrapping byte arithmetic
occur), and to_float on random bytes with finite, zero, inf and NaN scales.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant.backends.emulated import EmulatedDevice
from gpuquant.quants import quantize
from tests.kernel_checks import (
    check_dequantize_kernel,
    check_gpu_nan_path,
    check_quantize_kernel,
    check_requantize_kernel,
    gpu_nan_device,
)
from tests.oracle import oracle_quantize, requires_oracle
from tests.quant_checks import (
    assert_bytes,
    check_dequantize,
    check_fresh_edge_cases,
    check_nonfinite,
    check_random,
    nonfinite_rows,
    random_blocks,
)

TYPES = ["TQ1_0", "TQ2_0"]
F32 = np.float32


@pytest.fixture(scope="module")
def dev():
    d = EmulatedDevice(threads=2, precompile=False)
    yield d
    d.close()


def edge_rows() -> np.ndarray:
    """Trits at the +-0.5 ties, signed zeros, denormal blocks (1/d = inf), and NaNs that restart the max
    after larger values (x/d of 2, 100, 1e9, 1e20 and inf: lroundf's int64 and LONG_MIN paths)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 512)).astype(F32)
    x[0] = rng.choice(np.array([-1.0, -0.5, -0.25, -0.0, 0.0, 0.25, 0.5, 1.0], F32), 512)
    x[1] = (rng.standard_normal(512) * 1e-40).astype(F32)
    x[2, :256] = 0
    x[2, 7] = -0.0
    for r, big in zip((3, 4, 5, 6), (2.0, 100.0, 1e9, 1e20)):
        x[r, 0] = big
        x[r, 1] = np.nan
        x[r, 2:256] = rng.uniform(-1, 1, 254).astype(F32)
        x[r, 256 + 100] = -big
        x[r, 256 + 101] = np.nan
    x[7, 5] = np.inf
    x[7, 6] = np.nan
    x[7, 7:256] = F32(1e-30)
    return x


def test_tq2_0_by_hand():
    """Element 128k + 32n + m at bits 2n of qs[32k + m]; trit = lroundf(x/amax) + 1; d last."""
    x = np.zeros((1, 256), F32)
    x[0, 0], x[0, 32], x[0, 64], x[0, 96] = 1.0, -1.0, 0.5, -0.5
    x[0, 128 + 5] = 0.49
    q = quantize(x, "TQ2_0")[0]
    assert q[64:66].view(np.float16)[0] == 1.0
    assert q[0] == (2 | 0 << 2 | 2 << 4 | 0 << 6)
    assert q[32 + 5] == 0x55 and q[1] == 0x55  # all trits 1 (zero)


def test_tq1_0_by_hand():
    """Five trits, first most significant, as ceil(q * 256 / 243); zeros are trit 1: 121 -> 128."""
    x = np.zeros((1, 256), F32)
    x[0, 0] = 1.0  # element 0: the first trit of qs[0]
    q = quantize(x, "TQ1_0")[0]
    assert q[0] == -(-(2 * 81 + 1 * 27 + 9 + 3 + 1) * 256 // 243) and q[1] == -(-121 * 256 // 243)
    assert q[48] == -(-(40 * 3) * 256 // 243)  # qh: four zero trits, shifted up one


@pytest.mark.parametrize("qtype", TYPES)
def test_importance_weights_are_ignored(qtype):
    x = edge_rows()
    w = np.random.default_rng(1).random(x.shape[1]).astype(F32)
    with np.errstate(invalid="ignore"):
        assert np.array_equal(quantize(x, qtype, w), quantize(x, qtype))


# ----------------------------------------------------------------------------- kernels (emulated device)


@pytest.mark.parametrize("qtype", TYPES)
def test_kernel_matches_numpy(dev, qtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 1024)) * rng.uniform(0.01, 100, (6, 1))).astype(F32)
    check_quantize_kernel(dev, qtype, x, "random rows")
    with np.errstate(invalid="ignore"):
        check_quantize_kernel(dev, qtype, edge_rows(), "edge rows")
        check_quantize_kernel(dev, qtype, nonfinite_rows(2), "NaN/Inf rows")


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_kernel(dev, qtype):
    check_dequantize_kernel(dev, qtype, random_blocks(qtype, 8, 1024, seed=4), "edge scales")
    check_requantize_kernel(dev, qtype, quantize(np.random.default_rng(2).standard_normal((4, 512)).astype(F32),
                                                 qtype))


@pytest.fixture(scope="module")
def gpu_dev(tmp_path_factory):
    d = gpu_nan_device(tmp_path_factory)
    yield d
    d.close()


@pytest.mark.parametrize("qtype", TYPES)
def test_gpu_code_path(dev, gpu_dev, qtype):
    """The kernels built as for a GPU (GPU NaN bits, the portable float->int guards) give the same bytes on
    NaN/Inf and edge rows, and store every dequantized NaN as x86's."""
    with np.errstate(invalid="ignore", over="ignore"):
        check_gpu_nan_path(dev, gpu_dev, qtype, nonfinite_rows(0), random_blocks(qtype, 4, 1024, seed=6))
        check_gpu_nan_path(dev, gpu_dev, qtype, edge_rows(), random_blocks(qtype, 4, 1024, seed=6))


# ----------------------------------------------------------------------------- oracle


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("imat", ["none", "imatrix", "sparse"])
@pytest.mark.parametrize("shape", [(9, 256), (3, 4096)])
def test_random_against_oracle(qtype, imat, shape):
    check_random(qtype, shape, imat)


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_fresh_edge_cases_against_oracle(qtype):
    check_fresh_edge_cases(qtype, "b256", seed=11)


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows_against_oracle(qtype):
    x = edge_rows()
    with np.errstate(invalid="ignore"):
        assert_bytes(quantize(x, qtype), oracle_quantize(x, qtype), qtype, x, "edge rows")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nan_inf_inputs_against_oracle(qtype, seed):
    check_nonfinite(qtype, seed)


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_against_oracle(qtype):
    check_dequantize(qtype, random_blocks(qtype, 64, 1024, seed=9), "edge scales")
    check_dequantize(qtype, oracle_quantize(edge_rows(), qtype), "quantized edge rows")
