"""Ternary types TQ1_0 and TQ2_0 (BitNet b1.58 / TriLM), 256-element blocks of trits {-1, 0, 1} * d.

``ggml_quantize_chunk`` runs ``quantize_row_tq1_0_ref`` / ``quantize_row_tq2_0_ref`` and ignores
importance weights. Per block: ``amax = MAX(amax, fabsf(x))`` (the macro's ``>`` lets a NaN in and the next
element out again), ``d = amax``, ``id = d ? 1/d : 0``, trit ``xi = lroundf(x * id) + 1``:

* TQ2_0: ``qs[32k + m]`` holds ``xi & 3`` of elements ``128k + 32n + m`` at bits ``2n``; fp16 ``d`` last.
* TQ1_0: five trits per byte, base 3 with the first trit most significant, stored as
  ``ceil(q * 256 / 243)``: ``qs[m]`` (m < 32) elements ``32n + m``, ``qs[32 + m]`` (m < 16) elements
  ``160 + 16n + m``, then four trits (times 3) per ``qh[j]``: elements ``240 + j + 4n``; fp16 ``d`` last.
  The byte arithmetic is C's ``uint8_t`` (wrapping), which only matters when a NaN restarted ``amax``.

``lroundf`` (glibc) rounds half away from zero; NaN, inf and ``|x| >= 2^63`` give LONG_MIN, whose ``+ 1``
keeps trit 1 in the low byte. to_float: ``(float)(xi - 1) * d`` with the trits decoded as
``dequantize_row_tq1_0`` does (``((uint8_t)(q * 3^n) * 3) >> 8``).
"""
from __future__ import annotations

import numpy as np

from . import GGMLQuantizationType as T
from . import Kernel, QuantType
from .common import F32, dequantize_blocks, fp16_bits, fp16_to_fp32_ggml, roundf, safe_recip

QK_K = 256
_BLOCKS_PER_CHUNK = 1024  # 1 MiB of float32 per work array
_POW3_5 = np.array([81, 27, 9, 3, 1], np.uint8)[:, None]  # Horner's q = q*3 + xi over five trits
_POW3_4 = np.array([27, 9, 3, 1], np.uint8)[:, None]
_TWO63 = F32(2.0**63)


def _amax(xb: np.ndarray) -> np.ndarray:
    """``amax = 0; amax = MAX(amax, fabsf(x[j]))`` per block of ``(nb, 256)``: the plain maximum, except in
    blocks with a NaN, where the macro's ``amax > |x| ? amax : |x|`` is run element by element."""
    ax = np.abs(xb)
    amax = ax.max(axis=1)
    nan = np.flatnonzero(np.isnan(amax))
    if nan.size:
        a = np.zeros(nan.size, F32)
        for v in ax[nan].T:
            a = np.where(a > v, a, v)
        amax[nan] = a
    return amax


def _trits(xb: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """``lroundf(x * id) + 1`` of every element as uint8 (C's low byte), ``(nb, 256)``."""
    v = xb * safe_recip(amax)[:, None]
    # |v| < 1.5 (always, unless a NaN restarted amax): lroundf is -1, 0 or 1
    xi = np.uint8(1) + (v >= F32(0.5)).view(np.uint8) - (v <= F32(-0.5)).view(np.uint8)
    odd = np.flatnonzero(~(np.abs(v) < F32(1.5)))
    if odd.size:
        r = roundf(v.reshape(-1)[odd])
        ok = np.abs(r) < _TWO63  # else LONG_MIN, and LONG_MIN + 1 has the low byte 1
        xi.reshape(-1)[odd] = np.where(ok, r.astype(np.int64, copy=False) + 1, 1).astype(np.uint8)
    return xi


_CEIL_243 = ((np.arange(256) * 256 + 242) // 243).astype(np.uint8)  # stored into a uint8_t: 255 -> 269 -> 13


def _ceil_243(q: np.ndarray) -> np.ndarray:
    """``q = ((uint16_t)q * 256 + (243 - 1)) / 243`` stored back into a ``uint8_t`` (uint8 ``q``)."""
    return _CEIL_243[q]


# dequantize_row_tq1_0: trit n of byte q is ((uint8_t)(q * 3^n) * 3) >> 8, i.e. 0, 1 or 2 as the byte
# q * 3^n (mod 256) reaches 86 and 171
_POW3 = (1, 3, 9, 27, 81)


class _Ternary(QuantType):
    """Row driver: the blocks of the whole tensor, a cache-sized run at a time."""

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=F32)
        nrows, n = rows.shape
        xb = rows.reshape(-1, QK_K)
        out = np.empty((xb.shape[0], cls.type_size), np.uint8)
        with np.errstate(all="ignore"):  # NaN/inf inputs: C computes on silently
            for b0 in range(0, xb.shape[0], _BLOCKS_PER_CHUNK):
                x = xb[b0:b0 + _BLOCKS_PER_CHUNK]
                amax = _amax(x)
                cls._pack(_trits(x, amax), out[b0:b0 + _BLOCKS_PER_CHUNK])
                out[b0:b0 + _BLOCKS_PER_CHUNK, -2:] = fp16_bits(amax).view(np.uint8).reshape(-1, 2)
        return out.reshape(nrows, cls.row_size(n))

    @classmethod
    def dequantize_rows(cls, raw: np.ndarray) -> np.ndarray:
        return dequantize_blocks(raw, QK_K, cls.type_size, cls._dequantize, chunk_blocks=1024)


class TQ1_0(_Ternary, qtype=T.TQ1_0):
    """quantize_row_tq1_0_ref / dequantize_row_tq1_0: qs[48], qh[4], d."""

    fp16_fields = {"d": 52}
    kernel = Kernel(threads=32)

    @staticmethod
    def _pack(xi, out):
        nb = xi.shape[0]
        out[:, 0:32] = _ceil_243((xi[:, 0:160].reshape(nb, 5, 32) * _POW3_5).sum(axis=1, dtype=np.uint8))
        out[:, 32:48] = _ceil_243((xi[:, 160:240].reshape(nb, 5, 16) * _POW3_5).sum(axis=1, dtype=np.uint8))
        qh = (xi[:, 240:256].reshape(nb, 4, 4) * _POW3_4).sum(axis=1, dtype=np.uint8) * np.uint8(3)
        out[:, 48:52] = _ceil_243(qh)

    @staticmethod
    def _dequantize(blocks, y):
        L = np.empty(y.shape, np.uint8)
        q = np.ascontiguousarray(blocks[:, 0:52])
        for n, p in enumerate(_POW3):  # trit n of every byte: qs[m] -> 32n + m, qs[32 + m] -> 160 + 16n + m
            c = q * np.uint8(p)
            t = (c >= 86).view(np.uint8) + (c >= 171).view(np.uint8)
            L[:, 32 * n:32 * n + 32] = t[:, 0:32]
            L[:, 160 + 16 * n:176 + 16 * n] = t[:, 32:48]
            if n < 4:  # qh[j] -> 240 + 4n + j
                L[:, 240 + 4 * n:244 + 4 * n] = t[:, 48:52]
        np.subtract(L, F32(1), out=y, dtype=F32, casting="unsafe")  # (float)(xi - 1) * d
        y *= fp16_to_fp32_ggml(blocks[:, 52:54].view("<u2"))


class TQ2_0(_Ternary, qtype=T.TQ2_0):
    """quantize_row_tq2_0_ref / dequantize_row_tq2_0: qs[64], d."""

    fp16_fields = {"d": 64}
    kernel = Kernel(threads=32)

    @staticmethod
    def _pack(xi, out):
        c = (xi.reshape(-1, 2, 4, 32) & np.uint8(3)) << np.array([0, 2, 4, 6], np.uint8)[:, None]
        out[:, 0:64] = (c[:, :, 0] | c[:, :, 1] | c[:, :, 2] | c[:, :, 3]).reshape(-1, 64)

    @staticmethod
    def _dequantize(blocks, y):
        q = (blocks[:, 0:64].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3
        np.subtract(q.reshape(-1, QK_K), F32(1), out=y, dtype=F32, casting="unsafe")
        y *= fp16_to_fp32_ggml(blocks[:, 64:66].view("<u2"))
