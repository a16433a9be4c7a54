"""TQ1_0 and TQ2_0: what is particular to the family.

Hand-checked layouts, the importance weights being ignored (ggml_quantize_chunk passes them, quantize_tq*_0
drops them), to_float of edge-scale bytes, and rows aimed at the trit rounding (ties, NaNs that restart
ggml's MAX macro so trits past +-1 and the wrapping byte arithmetic occur) against llama.cpp on every device.
Byte identity in general is test_conformance.py's.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant.quants import quantize
from tests.oracle import oracle_quantize, requires_oracle
from tests import helpers as H
from tests.helpers import assert_bytes, check_dequantize, random_blocks

TYPES = ["TQ1_0", "TQ2_0"]
F32 = np.float32


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
