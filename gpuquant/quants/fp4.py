"""FP4 (E2M1) types: MXFP4 (32-element blocks, one E8M0 exponent) and NVFP4 (64-element blocks of four
16-element sub-blocks, one unsigned E4M3 scale each).

``ggml_quantize_chunk`` runs ``quantize_row_mxfp4_ref`` / ``quantize_row_nvfp4_ref`` and ignores
importance weights. The values are ``kvalues_mxfp4`` (E2M1 doubled: 0, 1, 2, 3, 4, 6, 8, 12 and their
negatives at indices 8..15) times a block scale ``d``; each element takes ``best_index_mxfp4(x, d)``, the
first index of smallest ``fabsf(kvalues[i]*d - x)`` (a NaN ``x`` keeps index 0).

* MXFP4: ``amax`` the largest ``|x|`` (NaN never wins the ``<``), ``e = amax > 0 ? (uint8_t)(floorf(log2f(amax))
  - 2 + 127) : 0`` (the cast keeps the low byte of the int: tiny blocks wrap to e >= 232, an inf amax gives
  0), ``d = GGML_E8M0_TO_FP32_HALF(e)``. ``floorf(log2f(a))`` is the binary exponent of ``a`` plus one
  where glibc's log2f rounds up to the next integer (``FLOOR_LOG2F_ROUND_UP``).
* NVFP4: per sub-block ``ue = ggml_fp32_to_ue4m3(amax / 6.0f)``, ``d = ggml_ue4m3_to_fp32(ue)`` (half the
  E4M3 value, 0 for ue 0 and 0x7F).

Speed: ``d = D * 2^p`` with an integer ``D`` <= 15, so ``w = 2|x| / 2^p`` is exact and, as long as every
``|x| <= 16 d``, the C search is "nearest value, ties to the lower index" (the errors of the two
neighbouring values are exact differences, by Sterbenz' lemma; farther values cannot tie): the index is
``#{midpoints m: 2 m D < ceil(w)}`` from a table, negated values 8 positions on. Blocks outside that
range (inf, tiny MXFP4 blocks whose exponent wraps, NVFP4 scales clamped at 448) run the C search itself.
"""
from __future__ import annotations

import math
import struct

import numpy as np
from gguf.quants import MXFP4 as _GGUF_MXFP4

from . import GGMLQuantizationType as T
from . import Kernel, QuantType
from .common import F32, dequantize_blocks

U32 = np.uint32
#: kvalues_mxfp4 (ggml-common.h), a format fact taken from gguf-py
KVALUES = np.array(_GGUF_MXFP4.kvalues, dtype=np.int8)
_KV_F = KVALUES.astype(F32)
_CHUNK_ELEMS = 1 << 18

# ----------------------------------------------------------------------------- the scale formats


def _e8m0_half_table() -> np.ndarray:
    """``ggml_e8m0_to_fp32_half(e)`` for every byte: ``2^(e-128)`` (bits ``0x00200000 << e`` below 2)."""
    e = np.arange(256, dtype=U32)
    bits = np.where(e < 2, U32(0x00200000) << e, (e - U32(1)) << U32(23))
    return bits.astype(U32).view(F32)


def _ue4m3_table() -> np.ndarray:
    """``ggml_ue4m3_to_fp32(x)`` for every byte (bit 7 is ignored; 0 and 0x7F give 0). All exact."""
    x = np.arange(256)
    exp, man = (x >> 3) & 0xF, x & 7
    raw = np.where(exp == 0, np.ldexp(man.astype(np.float64), -9), np.ldexp(1 + man / 8.0, exp - 7))
    return np.where((x == 0) | (x == 0x7F), 0.0, raw * 0.5).astype(F32)


E8M0_HALF = _e8m0_half_table()
UE4M3 = _ue4m3_table()


def fp32_to_ue4m3(x: np.ndarray) -> np.ndarray:
    """``ggml_fp32_to_ue4m3`` of float32 ``x`` (uint8): 0 unless ``x > 0``, clamped to 448, subnormals as
    ``(int)(x * 512 + 0.5f)``, else the top three mantissa bits rounded half up (an exponent past 14 -> 0x7E)."""
    x = np.asarray(x, F32)
    pos = x > 0
    xc = np.where(x > F32(448), F32(448), np.where(pos, x, F32(0)))
    bits = xc.view(U32).astype(np.int32)
    exp = ((bits >> 23) & 0xFF) - 127 + 7
    man = ((bits >> 20) & 7) + ((bits >> 19) & 1)
    carry = man > 7
    exp = exp + carry
    man = np.where(carry, 0, man)
    normal = np.where(exp >= 15, 0x7E, (exp << 3) | man)
    sub = np.clip((xc * F32(512) + F32(0.5)).astype(np.int32), 0, 7)  # values below 1 give 0 either way
    return np.where(pos, np.where(exp - carry <= 0, sub, normal), 0).astype(np.uint8)


# ----------------------------------------------------------------------------- floorf(log2f(x))


def _pow2_bits(E: int) -> int:
    """The bits of the float32 ``2^E`` for E in [-149, 128] (128: the bits of inf)."""
    return (E + 127) << 23 if E >= -126 else 1 << (E + 149)


def _round_up_count(E: int) -> int:
    """How many floats just below ``2^E`` have a log2 that rounds (to float32, nearest) to ``E`` itself.

    ``log2(2^E - j*s) = E + log1p(-j*s/2^E)/ln 2`` rounds to E while its distance to E is below half the
    gap between E and the next float32 toward -inf. (glibc's log2f takes 1.0 exactly in the table entry
    of this interval, so its result is the correctly rounded one here; tests check it against libm.)
    """
    if E == 0:
        return 0
    bits = struct.unpack("<I", struct.pack("<f", E))[0]  # the next float32 toward -inf: one ulp away
    gap = float(E) - struct.unpack("<f", struct.pack("<I", bits - 1 if E > 0 else bits + 1))[0]
    top = _pow2_bits(E)
    n = 0
    while True:
        a = struct.unpack("<f", struct.pack("<I", top - n - 1))[0]
        if a < 2.0 ** (E - 1):  # left the binade (only below 2^-148, where there is a single float)
            return n
        dist = -math.log1p(-(2.0**E - a) / 2.0**E) / math.log(2)
        assert abs(dist - gap / 2) > 1e-6 * gap, (E, n)  # never near a tie
        if dist >= gap / 2:
            return n
        n += 1


#: FLOOR_LOG2F_ROUND_UP[E + 149], E in [-149, 128]: the floats in [2^E - n ulp, 2^E) whose floorf(log2f)
#: is E rather than E - 1 (kernels/fp4.cu holds the same table)
FLOOR_LOG2F_ROUND_UP = np.array([_round_up_count(E) for E in range(-149, 129)], np.uint8)


def floor_log2f(a: np.ndarray) -> np.ndarray:
    """``floorf(log2f(a))`` (glibc) of finite float32 ``a > 0``, as int32."""
    a = np.asarray(a, F32)
    _, ex = np.frexp(a)  # a = m * 2^ex, 0.5 <= m < 1, subnormals included
    up = ex.astype(np.int32)  # E: the power of two just above a
    top = np.where(up >= -126, (up + 127) << 23, np.left_shift(1, np.clip(up + 149, 0, 30)))
    n = FLOOR_LOG2F_ROUND_UP[np.clip(up + 149, 0, 277)].astype(np.int64)
    return np.where(a.view(U32).astype(np.int64) >= top.astype(np.int64) - n, up, up - 1).astype(np.int32)


# ----------------------------------------------------------------------------- best_index_mxfp4

# twice the midpoints between the non-negative values 0, 1, 2, 3, 4, 6, 8, 12
_MID2 = np.array([1, 3, 5, 7, 10, 14, 20])
_CMAX = 16 * 2 * 15  # ceil(w) for |x| <= 16 d and D <= 15
_ROW = 2 * _CMAX + 1  # one table row per D: index -c (negative x) .. +c, centred


def _index_table() -> np.ndarray:
    """``_INDEX_TABLE[D * _ROW + _CMAX + c]`` for the signed ``c = ceil(w)`` of x (``-0.0`` gives +0): the
    index of x, ``#{k: _MID2[k] * D < |c|}``, plus 8 for negative x with a non-zero one."""
    c = np.arange(_CMAX + 1)
    pos = (_MID2[None, :, None] * np.arange(16)[:, None, None] < c[None, None, :]).sum(axis=1)
    pos[0] = 0  # D = 0 (d = 0): every error is |x|, index 0
    neg = np.where(pos > 0, pos + 8, 0)
    return np.concatenate([neg[:, :0:-1], pos], axis=1).astype(np.uint8).reshape(-1)


_INDEX_TABLE = _index_table()
_V16, _V4 = np.dtype("V16"), np.dtype("V4")


def _quads(x: np.ndarray) -> np.ndarray:
    """Groups ``(ng, k)`` float32 -> quad-major ``(k/4, 4 ng)``: ``[r, 4g + i]`` is element ``4r + i`` of group
    ``g`` (16-byte items moved, bits untouched), so per-group values broadcast along long rows."""
    return np.ascontiguousarray(x.view(_V16).T).view(F32)


def _unquads(q: np.ndarray) -> np.ndarray:
    """The inverse for bytes: quad-major ``(r, 4 ng)`` uint8 -> ``(ng, 4r)``."""
    return np.ascontiguousarray(q.view(_V4).T).view(np.uint8)


def _group_amax(xq: np.ndarray) -> np.ndarray:
    """Per group the largest ``|x|`` that is not NaN (``if (amax < fabsf(x)) amax = fabsf(x)`` from 0)."""
    a = np.fmax.reduce(np.abs(xq), axis=0, initial=F32(0)).reshape(-1, 4)
    return np.fmax(np.fmax(a[:, 0], a[:, 1]), np.fmax(a[:, 2], a[:, 3]))


def _index_fast(xq: np.ndarray, D: np.ndarray, p: np.ndarray, fast: np.ndarray) -> np.ndarray:
    """``best_index_mxfp4(x, d)`` of quad-major ``xq`` for ``d = D * 2^p`` (per group) where ``fast`` (every
    ``|x| <= 16 d``; other groups get index 0): ``w = |x| * 2^(1-p)`` is exact and the index
    ``_INDEX_TABLE[D, copysign(ceil(w), x)]``. NaN -> 0."""
    f = np.where(fast, np.ldexp(F32(1), np.where(fast, 1 - p, 0).astype(np.int32)), F32(0)).astype(F32)
    w = np.abs(xq)
    w *= np.repeat(f, 4)
    np.ceil(w, out=w)
    wb = w.view(U32)
    wb |= xq.view(U32) & U32(0x80000000)  # copysign(ceil(w), x)
    w[np.isnan(w)] = 0
    c = w.astype(np.int16)
    c += np.repeat((np.where(fast, D, 0) * _ROW + _CMAX).astype(np.int16), 4)
    return _INDEX_TABLE[c]


def _index_c(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``best_index_mxfp4`` as C runs it: ``best_err = fabsf(kv[0]*d - x)``, then ``err < best_err`` over
    ``i = 1..15`` (NaN never wins). ``x`` ``(ng, k)``, ``d`` ``(ng,)``."""
    d = d[:, None]
    best = np.abs(_KV_F[0] * d - x)
    idx = np.zeros(x.shape, np.uint8)
    for i in range(1, 16):
        err = np.abs(_KV_F[i] * d - x)
        upd = err < best
        idx[upd] = i
        best = np.where(upd, err, best)
    return idx


def _quantize_groups(xb: np.ndarray, d: np.ndarray, D: np.ndarray, p: np.ndarray, fast: np.ndarray,
                     xq: np.ndarray) -> np.ndarray:
    """The packed quants ``qs[j] = idx[j] | idx[j + k/2] << 4`` of groups ``(ng, k)`` (``xq`` their quads):
    the table where ``fast``, the C search elsewhere. Returns ``(ng, k/2)`` uint8."""
    idx = _index_fast(xq, D, p, fast)  # (k/4, 4 ng)
    h = idx.shape[0] // 2
    qs = _unquads(idx[:h] | (idx[h:] << np.uint8(4)))
    s = np.flatnonzero(~fast)
    if s.size:
        i = _index_c(xb[s], d[s])
        k = i.shape[1] // 2
        qs[s] = i[:, :k] | (i[:, k:] << np.uint8(4))
    return qs


# kvalues of the low and the high nibble of every byte, one 8-byte item per byte
_KV_PAIRS = np.stack([_KV_F[np.arange(256) & 0x0F], _KV_F[np.arange(256) >> 4]], axis=1).view(np.complex64)[:, 0]


def _unpack_values(qs: np.ndarray, d: np.ndarray, y: np.ndarray) -> None:
    """``y[j] = kv[qs[j] & 0x0F] * d``, ``y[j + k/2] = kv[qs[j] >> 4] * d`` per group: ``qs`` ``(ng, k/2)``,
    ``d`` ``(ng, 1)``, ``y`` ``(ng, k)`` (``(float)kv * d`` as C's ``x0*d``)."""
    ng, h = qs.shape
    pairs = np.take(_KV_PAIRS, qs).view(F32).reshape(ng, h, 2)
    y.reshape(ng, 2, h)[...] = pairs.transpose(0, 2, 1)
    y *= d


# ----------------------------------------------------------------------------- the types


class _FP4(QuantType):
    """Row driver: a cache-sized run of blocks at a time through ``_blocks``."""

    fp16_fields = {}

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=F32)
        nrows, n = rows.shape
        xb = rows.reshape(-1, cls.block_size)
        out = np.empty((xb.shape[0], cls.type_size), np.uint8)
        step = _CHUNK_ELEMS // cls.block_size
        with np.errstate(all="ignore"):  # inf/NaN inputs: C computes on silently
            for b0 in range(0, xb.shape[0], step):
                cls._blocks(xb[b0:b0 + step], out[b0:b0 + step])
        return out.reshape(nrows, cls.row_size(n))

    @classmethod
    def dequantize_rows(cls, raw: np.ndarray) -> np.ndarray:
        return dequantize_blocks(raw, cls.block_size, cls.type_size, cls._dequantize)


class MXFP4(_FP4, qtype=T.MXFP4):
    """quantize_row_mxfp4_ref / dequantize_row_mxfp4: e (E8M0), qs[16]."""

    kernel = Kernel(threads=128)

    @classmethod
    def invalid_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return blocks[:, 0] == 0xFF  # validate_e_e8m0

    @staticmethod
    def _blocks(xb, out):
        xq = _quads(xb)
        amax = _group_amax(xq)
        normal = (amax > 0) & (amax < np.inf)
        F = np.where(normal, floor_log2f(np.where(normal, amax, F32(1))), 0)
        e = np.where(normal, (F + 125) & 0xFF, 0).astype(np.uint8)  # an inf amax: (uint8_t)INT_MIN = 0
        # d = 2^(F-3) while e does not wrap; blocks of zeros (and NaNs) give index 0 anyway
        fast = (normal & (F >= -97) & (F <= 127)) | (amax == 0)
        out[:, 0] = e
        out[:, 1:] = _quantize_groups(xb, E8M0_HALF[e], np.ones(len(e), np.int32), F - 3, fast, xq)

    @staticmethod
    def _dequantize(blocks, y):
        _unpack_values(blocks[:, 1:], E8M0_HALF[blocks[:, 0]][:, None], y)


class NVFP4(_FP4, qtype=T.NVFP4):
    """quantize_row_nvfp4_ref / dequantize_row_nvfp4: d[4] (UE4M3, one per 16 elements), qs[32]."""

    kernel = Kernel(threads=128)

    @classmethod
    def invalid_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return np.zeros(len(blocks), dtype=bool)  # ggml_validate_row_data: every byte is a valid UE4M3

    @staticmethod
    def _blocks(xb, out):
        xs = xb.reshape(-1, 16)
        xq = _quads(xs)
        amax = _group_amax(xq)
        ue = fp32_to_ue4m3(amax / F32(6))
        d = UE4M3[ue]
        exp, man = (ue >> 3).astype(np.int32), (ue & 7).astype(np.int32)
        D = np.where(exp == 0, man, man + 8)  # d = D * 2^p
        p = np.where(exp == 0, -10, exp - 11)
        fast = (d == 0) | (amax <= F32(16) * d)  # d == 0: every error is |x|, index 0 (D = 0 does that)
        out[:, 0:4] = ue.reshape(-1, 4)
        out[:, 4:] = _quantize_groups(xs, d, D, p, fast, xq).reshape(-1, 32)

    @staticmethod
    def _dequantize(blocks, y):
        _unpack_values(blocks[:, 4:].reshape(-1, 8), UE4M3[blocks[:, 0:4]].reshape(-1, 1), y.reshape(-1, 16))
