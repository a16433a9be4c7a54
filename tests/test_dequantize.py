"""``dequantize_rows`` of every registered type against ggml's to_float (``dequantize_row_*``), bit for bit.

The requantize path of the cpu device reads its source through these. Inputs: random bytes whose fp16
fields hold finite values, +-0, subnormals, +-inf and quiet/signaling NaNs of both signs (so inf * 0 makes
x86's default NaN, 0xFFC00000, and NaN scales pass their payload through), every 16-bit pattern for
F16/BF16, and the blocks ggml itself writes for random rows.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant.quants import QUANT_SIZES, get, registered
from gpuquant.quants import GGMLQuantizationType as T
from gpuquant.quants.common import fp16_to_fp32_ggml
from tests.oracle import oracle_quantize, requires_oracle
from tests.quant_checks import check_dequantize, random_blocks

TYPES = [t.name for t in registered()]
QUANTIZED = [t for t in TYPES if t not in ("F32", "F16", "BF16")]


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
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_bytes_against_oracle(qtype, seed):
    """Random blocks with edge fp16 scales (F32: random bit patterns, NaNs included)."""
    for n in _lengths(qtype):
        check_dequantize(qtype, random_blocks(qtype, 48, n, seed=seed * 7 + n), f"n={n} seed {seed}")


@requires_oracle
@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_every_16_bit_pattern_against_oracle(qtype):
    raw = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view(np.uint8).reshape(64, -1)
    check_dequantize(qtype, raw, "all 16-bit patterns")


@requires_oracle
@pytest.mark.parametrize("qtype", QUANTIZED)
def test_quantized_rows_against_oracle(qtype):
    """What ggml writes for random rows of several scales, read back."""
    rng = np.random.default_rng(len(qtype))
    x = (rng.standard_normal((16, 1024)) * 10.0 ** rng.uniform(-6, 4, (16, 1))).astype(np.float32)
    w = None if not get(qtype).requires_imatrix else rng.random(1024).astype(np.float32)
    check_dequantize(qtype, oracle_quantize(x, qtype, w), "quantized random rows")
