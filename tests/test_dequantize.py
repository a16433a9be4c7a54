"""``dequantize_rows`` of every registered type against ggml's to_float (``dequantize_row_*``), bit for bit.

The requantize path of the cpu device reads its source through these; test_conformance.py checks every type
on random and edge-scale bytes. Here: every 16-bit pattern of F16/BF16, ggml's quieting of signaling NaNs,
and a block worked out by hand.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant.quants import QUANT_SIZES, get, registered
from gpuquant.quants import GGMLQuantizationType as T
from gpuquant.quants.common import fp16_to_fp32_ggml
from tests.helpers import check_dequantize
from tests.oracle import requires_oracle

TYPES = [t.name for t in registered()]


def _lengths(qtype: str) -> list[int]:
    block = QUANT_SIZES[T[qtype]][0]
    return [block, 4 * max(block, 256)]


@pytest.mark.parametrize("qtype", TYPES)
def test_every_type_dequantizes(qtype):
    """Every registered type declares its to_float: the right shape and dtype on all-zero bytes."""
    cls = get(qtype)
    n = 2 * cls.block_size
    y = cls.dequantize_rows(np.zeros((3, cls.row_size(n)), np.uint8))
    assert y.dtype == np.float32 and y.shape == (3, n)


def test_fp16_conversion_quiets_signaling_nans():
    h = np.array([0x7C01, 0xFC01, 0x7E00, 0x7C00, 0x0001, 0x8000, 0x3C00], np.uint16)
    want = [0x7FC02000, 0xFFC02000, 0x7FC00000, 0x7F800000, 0x33800000, 0x80000000, 0x3F800000]
    assert fp16_to_fp32_ggml(h).view(np.uint32).tolist() == want


def test_q4_0_by_hand():
    """d = -2, quants 0..15 then 15..0: values (q - 8) * d, -0.0 for q = 8 (0 * -2)."""
    block = np.zeros(18, np.uint8)
    block[0:2] = np.array([0xC000], "<u2").view(np.uint8)  # -2.0
    q = np.arange(16)
    block[2:] = q | (15 - q) << 4
    y = get("Q4_0").dequantize_rows(block[None])[0]
    want = np.concatenate([(q - 8) * -2.0, (15 - q - 8) * -2.0]).astype(np.float32)
    assert y.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    assert np.signbit(y[8]) and y[8] == 0


# ----------------------------------------------------------------------------- oracle


@requires_oracle
@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_every_16_bit_pattern_against_oracle(qtype):
    raw = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view(np.uint8).reshape(64, -1)
    check_dequantize(qtype, raw, "all 16-bit patterns")
