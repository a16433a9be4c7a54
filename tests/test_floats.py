"""F32 / F16 / BF16: numpy conversion against llama.cpp (ggml_fp32_to_fp16_row, ggml_fp32_to_bf16_row_ref)."""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant.quants import quantize
from gpuquant.quants.common import bf16_bits, fp16_bits, fp16_to_fp32
from tests.helpers import assert_bytes
from tests.oracle import oracle_quantize, requires_oracle

U32 = np.uint32


def _f(*bits: int) -> np.ndarray:
    return np.array(bits, dtype=U32).view(np.float32)


def test_f32_is_a_copy():
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    x[0, :4] = _f(0x80000000, 0x7F800000, 0x7FC00001, 0x00000001)
    got = quantize(x, "F32", np.ones(64, np.float32))
    assert got.dtype == np.uint8 and got.shape == (3, 256)
    assert got.tobytes() == x.tobytes()


# Expected bits worked out from ggml_compute_fp32_to_fp16: round to nearest even, subnormals kept,
# overflow to inf, NaN -> 0x7E00 with the sign.
FP16_CASES = [
    (0x00000000, 0x0000), (0x80000000, 0x8000),
    (0x3F800000, 0x3C00),  # 1.0
    (0x477FE000, 0x7BFF),  # 65504
    (0x477FEFFF, 0x7BFF),  # just below 65520 rounds down
    (0x477FF000, 0x7C00),  # 65520: tie to even -> inf
    (0x7F7FFFFF, 0x7C00), (0xFF7FFFFF, 0xFC00),  # FLT_MAX -> inf
    (0x7F800000, 0x7C00), (0xFF800000, 0xFC00),
    (0x33800000, 0x0001),  # 2^-24: smallest fp16 subnormal
    (0x33000000, 0x0000),  # 2^-25: tie between 0 and 2^-24 -> even (0)
    (0x33000001, 0x0001),  # just above the tie
    (0xB3400000, 0x8001),  # -1.5 * 2^-25
    (0x387FC000, 0x03FF),  # largest fp16 subnormal
    (0x38800000, 0x0400),  # smallest fp16 normal
    (0x3F801000, 0x3C00),  # 1 + 2^-11: tie -> even
    (0x3F803000, 0x3C02),  # 1 + 3*2^-11: tie -> even (up)
    (0x7F800001, 0x7E00), (0xFFC12345, 0xFE00), (0x7FFFFFFF, 0x7E00),
    (0x00000001, 0x0000),  # float32 denormal -> 0
]

# ggml_compute_fp32_to_bf16: round to nearest even, NaN forced quiet.
BF16_CASES = [
    (0x3F800000, 0x3F80), (0x3F808000, 0x3F80),  # tie -> even (down)
    (0x3F818000, 0x3F82),  # tie -> even (up)
    (0x3F808001, 0x3F81), (0x7F7FFFFF, 0x7F80),  # FLT_MAX rounds to inf
    (0x80000000, 0x8000), (0x00000001, 0x0000),
    (0x7F800001, 0x7FC0), (0xFF812345, 0xFFC1), (0x7FC00000, 0x7FC0),
]


@pytest.mark.parametrize("convert,cases", [(fp16_bits, FP16_CASES), (bf16_bits, BF16_CASES)],
                         ids=["F16", "BF16"])
def test_known_bits(convert, cases):
    src = np.array([c[0] for c in cases], dtype=U32)
    want = np.array([c[1] for c in cases], dtype=np.uint16)
    got = convert(src.view(np.float32))
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(hex(src[i]), hex(got[i]), hex(want[i])) for i in bad]


def test_fp16_round_trip_of_every_half():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = (h & 0x7C00) != 0x7C00
    back = fp16_bits(fp16_to_fp32(h[finite]))
    assert np.array_equal(back, h[finite])


def _random_bits(seed: int, n: int) -> np.ndarray:
    """Random float32 bit patterns (every class: NaN, inf, denormal), weighted to the fp16 range."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(U32)
    near = rng.integers(0x32000000, 0x48000000, n // 2, dtype=np.uint64).astype(U32)
    near |= rng.integers(0, 2, n // 2, dtype=np.uint64).astype(U32) << U32(31)
    return np.concatenate([u, near]).view(np.float32)


@requires_oracle
@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
def test_random_bit_patterns_against_oracle(qtype):
    x = _random_bits(7, 1 << 16).reshape(-1, 256)
    assert_bytes(quantize(x, qtype), oracle_quantize(x, qtype), qtype, x, "random bits")


@requires_oracle
@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_every_half_neighbourhood_against_oracle(qtype):
    """Every fp16 value and the float32 values just around it (the rounding boundaries)."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    centre = fp16_to_fp32(h[(h & 0x7C00) != 0x7C00]).view(U32)
    x = np.concatenate([centre + U32(d) for d in (0, 1, 0x0FFF, 0x1000, 0x1001)])  # +0x1000: fp16 midpoints
    x = x.view(np.float32).reshape(-1, 32)
    assert_bytes(quantize(x, qtype), oracle_quantize(x, qtype), qtype, x, "fp16 neighbourhood")
