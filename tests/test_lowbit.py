"""Q1_0 and Q2_0: numpy reference and kernels against llama.cpp, byte for byte.

Default suite: hand-checked blocks, the importance weights being ignored, and the kernels on the emulated
device against numpy. Oracle suite: random rows of several scales and lengths, the golden edge-case kinds
(group b256: every row length there is a multiple of 128; b32 has lengths of 32 and 96), NaN/Inf inputs,
rounding ties, and to_float on random bytes with finite, zero, inf and NaN scales.
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

TYPES = ["Q1_0", "Q2_0"]
F32 = np.float32


@pytest.fixture(scope="module")
def dev():
    d = EmulatedDevice(threads=2, precompile=False)
    yield d
    d.close()


def edge_rows(n: int = 512) -> np.ndarray:
    """Rows aimed at the two quantizers: signed zeros, ties of x/d at +-0.5 and 1.5, a NaN in a block (the
    max skips it), denormals (1/d overflows), values whose sum of |x| overflows."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, n)).astype(F32)
    x[0, ::2] = -0.0
    x[0, 1::2] = 0.0
    x[1] = rng.choice(np.array([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0], F32), n)  # d = 1: ties
    x[2] = (rng.standard_normal(n) * 1e-40).astype(F32)
    x[3] = rng.choice(np.array([3e38, -3e38, 1.0], F32), n)
    x[4, :64] = F32(2.0)
    x[4, 64:128] = -F32(2.0)
    x[5] = (rng.integers(-4, 5, n) / F32(8)).astype(F32)
    x[6, 10] = np.nan
    x[7] *= F32(1e-30)
    return x


def test_q1_0_by_hand():
    x = np.linspace(-1, 1, 128, dtype=F32)[None]
    x[0, 3] = -0.0
    q = quantize(x, "Q1_0")[0]
    d = np.float16(np.add.accumulate(np.abs(x[0]))[-1] / F32(128))
    assert q[:2].view(np.float16)[0] == d
    bits = np.unpackbits(q[2:], bitorder="little").astype(bool)
    assert np.array_equal(bits, x[0] >= 0) and bits[3]  # -0.0 >= 0


def test_q2_0_by_hand():
    x = np.array([[-1.0, -0.5, -0.49, 0.0, 0.49, 0.5, 1.0, -0.75] * 8], F32)
    q = quantize(x, "Q2_0")[0]
    assert q[:2].view(np.float16)[0] == 1.0
    levels = (q[2:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    assert levels.reshape(-1)[:8].tolist() == [0, 0, 1, 1, 1, 2, 2, 0]  # roundf: halves away from zero


@pytest.mark.parametrize("qtype", TYPES)
def test_importance_weights_are_ignored(qtype):
    x = edge_rows()
    w = np.random.default_rng(1).random(x.shape[1]).astype(F32)
    assert np.array_equal(quantize(x, qtype, w), quantize(x, qtype))


# ----------------------------------------------------------------------------- kernels (emulated device)


@pytest.mark.parametrize("qtype", TYPES)
def test_kernel_matches_numpy(dev, qtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 1024)) * rng.uniform(0.01, 100, (6, 1))).astype(F32)
    check_quantize_kernel(dev, qtype, x, "random rows")
    check_quantize_kernel(dev, qtype, edge_rows(), "edge rows")
    with np.errstate(invalid="ignore"):
        check_quantize_kernel(dev, qtype, nonfinite_rows(2), "NaN/Inf rows")


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_kernel(dev, qtype):
    check_dequantize_kernel(dev, qtype, random_blocks(qtype, 8, 1024, seed=4), "edge scales")
    check_requantize_kernel(dev, qtype, quantize(edge_rows(), qtype))


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
@pytest.mark.parametrize("shape", [(9, 256), (3, 4096), (40, 128)])
def test_random_against_oracle(qtype, imat, shape):
    if shape[1] % 128 and qtype == "Q1_0":
        pytest.skip("Q1_0 rows are multiples of 128")
    check_random(qtype, shape, imat)


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_fresh_edge_cases_against_oracle(qtype):
    check_fresh_edge_cases(qtype, "b256", seed=11)


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows_against_oracle(qtype):
    x = edge_rows()
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
