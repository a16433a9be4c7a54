"""Q1_0 and Q2_0: what is particular to the family.

Hand-checked blocks, the importance weights being ignored (quantize_q1_0/q2_0 run the reference function row
by row), to_float of edge-scale bytes, and rows aimed at the two quantizers (signed zeros, ties, denormals,
overflowing sums) against llama.cpp on every device. Byte identity in general is test_conformance.py's.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant.quants import quantize
from tests.oracle import oracle_quantize, requires_oracle
from tests import helpers as H
from tests.helpers import assert_bytes, check_dequantize, random_blocks

TYPES = ["Q1_0", "Q2_0"]
F32 = np.float32


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


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_against_oracle(qtype):
    check_dequantize(qtype, random_blocks(qtype, 64, 1024, seed=9), "edge scales")
    check_dequantize(qtype, oracle_quantize(edge_rows(), qtype), "quantized edge rows")


# ----------------------------------------------------------------------------- the family's corners, every device


@pytest.fixture(scope="module", params=H.DEVICES)
def device(request):
    d = H.make_device(request.param)
    yield d
    d.close()


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows_vs_oracle(device, qtype):
    """Rows aimed at this family's quantizers (see ``edge_rows``), on every device; the rows holding NaNs only on
    the host devices (a GPU makes other NaN bits, and llama-quantize refuses NaN tensors anyway)."""
    x = edge_rows()
    if device.name.startswith("cuda"):
        x = x[np.isfinite(x).all(axis=1)]
    got = H.run_device(device, x, "F32", qtype, x.shape[1])
    assert_bytes(got, oracle_quantize(x, qtype), qtype, x, f"edge rows on {device.name}")
