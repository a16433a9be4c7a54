"""Q1_0 (128-element blocks, one sign bit per element) and Q2_0 (64-element blocks, 2-bit levels).

``ggml_quantize_chunk`` runs ``quantize_row_q1_0_ref`` / ``quantize_row_q2_0_ref``; with importance weights
``quantize_q1_0`` / ``quantize_q2_0`` run the same ``_ref`` row by row, so the weights change nothing.

* Q1_0: ``d = (sum of |x| in order) / 128``, bit ``j`` (byte ``j/8``, bit ``j%8``) set where ``x[j] >= 0``
  (``-0.0`` included, NaN not); to_float gives ``bit ? d : -d``.
* Q2_0: ``d = max |x|`` (a NaN never wins the ``>``), level ``q = clamp((int)roundf(x/d) + 1, 0, 3)``
  (element ``j`` at bits ``2*(j%4)`` of byte ``j/4``); to_float gives ``(q - 1) * d``, so the levels are
  ``{-1, 0, 1, 2} * d`` (the quantizer itself never writes 3). ``(int)`` of NaN/inf/huge is INT_MIN on
  x86, which the clamp turns into level 0.
"""
from __future__ import annotations

import numpy as np

from . import GGMLQuantizationType as T
from . import Kernel, QuantType
from .common import F32, dequantize_blocks, fp16_bits, fp16_to_fp32_ggml, safe_recip, seq_sum

_CHUNK_ELEMS = 1 << 18  # elements per step (1 MiB of float32 per work array)
_TWO31 = F32(2.0**31)
U32 = np.uint32


def _fp16_field(d: np.ndarray) -> np.ndarray:
    """fp16 bytes ``(nb, 2)`` of per-block float32 scales."""
    return fp16_bits(d).view(np.uint8).reshape(-1, 2)


def _chunks(n_blocks: int, block: int):
    step = max(1, _CHUNK_ELEMS // block)
    for b0 in range(0, n_blocks, step):
        yield slice(b0, min(n_blocks, b0 + step))


# the four levels (q - 1) of each byte of Q2_0 quants as float32, elements 4i..4i+3 of byte i, one 16-byte
# item per byte
_Q2_LEVELS = (((np.arange(256)[:, None] >> np.array([0, 2, 4, 6])) & 3) - 1).astype(F32).view(np.complex128)[:, 0]


class _LowBit(QuantType):
    """Row driver: blocks of the whole tensor, a cache-sized run at a time, through ``_blocks``."""

    fp16_fields = {"d": 0}

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=F32)
        nrows, n = rows.shape
        xb = rows.reshape(-1, cls.block_size)
        out = np.empty((xb.shape[0], cls.type_size), np.uint8)
        with np.errstate(all="ignore"):  # inf/NaN inputs overflow silently, as in C
            for sl in _chunks(xb.shape[0], cls.block_size):
                cls._blocks(xb[sl], out[sl])
        return out.reshape(nrows, cls.row_size(n))

    @classmethod
    def dequantize_rows(cls, raw: np.ndarray) -> np.ndarray:
        return dequantize_blocks(raw, cls.block_size, cls.type_size, cls._dequantize)


class Q1_0(_LowBit, qtype=T.Q1_0):
    """quantize_row_q1_0_ref / dequantize_row_q1_0."""

    kernel = Kernel(threads=64)

    @staticmethod
    def _blocks(xb, out):
        # sum_abs += fabsf(x[j]) in order from 0.0f: element-major so that the sum runs over whole rows
        d = seq_sum(np.ascontiguousarray(np.abs(xb).T)) / F32(128)
        out[:, 0:2] = _fp16_field(d)
        out[:, 2:] = np.packbits(xb >= 0, axis=1, bitorder="little")

    @staticmethod
    def _dequantize(blocks, y):  # bit ? d : -d (the negation flips the sign bit, NaN included)
        d = fp16_to_fp32_ggml(blocks[:, 0:2].view("<u2")).view(U32)  # (nb, 1)
        bits = np.unpackbits(blocks[:, 2:], axis=1, bitorder="little")  # (nb, 128)
        np.bitwise_xor(d, (U32(1) - bits.astype(U32)) << U32(31), out=y.view(U32))


class Q2_0(_LowBit, qtype=T.Q2_0):
    """quantize_row_q2_0_ref / dequantize_row_q2_0."""

    kernel = Kernel(threads=128)

    @staticmethod
    def _blocks(xb, out):
        d = np.fmax.reduce(np.abs(xb), axis=1, initial=F32(0))  # if (a > amax) amax = a: NaN never wins
        v = xb * safe_recip(d)[:, None]  # d > 0 ? 1.0f/d : 0.0f (d >= 0 here)
        # clamp((int)roundf(v) + 1, 0, 3): roundf(v) <= -1 below -0.5 (ties away), >= 1 from 0.5, >= 2 from
        # 1.5; from 2^31 the cast is INT_MIN (so is NaN, every comparison of which is false)
        q = (v > F32(-0.5)).view(np.uint8) + (v >= F32(0.5)).view(np.uint8) + (v >= F32(1.5)).view(np.uint8)
        q[v >= _TWO31] = 0
        q4 = q.reshape(-1, 16, 4)
        out[:, 0:2] = _fp16_field(d)
        out[:, 2:] = q4[:, :, 0] | (q4[:, :, 1] << 2) | (q4[:, :, 2] << 4) | (q4[:, :, 3] << 6)

    @staticmethod
    def _dequantize(blocks, y):  # ((int)q - 1) * d
        np.take(_Q2_LEVELS, blocks[:, 2:], out=y.view(np.complex128))  # four float32 levels per byte
        y *= fp16_to_fp32_ggml(blocks[:, 0:2].view("<u2"))
