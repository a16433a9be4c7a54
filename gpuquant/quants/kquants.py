"""K-quants Q2_K..Q6_K: numpy reference quantizers, byte-identical to ggml-quants.c.

Without importance weights ``ggml_quantize_chunk`` runs ``quantize_row_qN_K_ref``; with them it runs
``quantize_row_qN_K_impl`` (Q6_K's impl with weights only swaps x*x for the weights).  Each class mirrors
both.  Work is done on chunks of super-blocks so the float32 temporaries stay in cache; inside a chunk the
16/32-value sub-blocks are laid out as columns (``_groups``) and the scale searches of
``common`` and ``kquants_search`` run on all of them at once.

``dequantize_rows`` is ``dequantize_row_qN_K`` (ggml's to_float): per 16/32-value sub-block a float scale
(``d * sc``) and min (``dmin * m``), then ``scale * q - min`` (Q6_K: ``d * sc * q``) over the levels of the
whole run of super-blocks at once; the fp16 fields are read as ggml converts them.
"""
from __future__ import annotations

import numpy as np

from . import GGMLQuantizationType, Kernel, QuantType
from .common import (
    F32,
    GROUP_MAX_EPS,
    absmax_first,
    at_most,
    dequantize_blocks,
    fp16_to_fp32_ggml,
    levels_int,
    make_qkx_quants,
    make_qx_quants,
    nearest_int,
    seq_sum,
)
from .common import fp16_bits as fp32_to_fp16_bits
from .common import fp16_to_fp32 as fp16_bits_to_fp32
from .kquants_search import make_q3_quants, make_qp_quants, running_max

QK_K = 256
# super-blocks per chunk: 2048 * 256 float32 = 2 MiB per temporary (measured best of 512..8192:
# fewer numpy calls per value than smaller chunks, still inside the L3 cache)
CHUNK_SUPERBLOCKS = 2048


# ----------------------------------------------------------------------------- layout helpers

def _fp16_bytes(h: np.ndarray) -> np.ndarray:
    """(S,) uint16 -> (S, 2) little-endian bytes."""
    return np.ascontiguousarray(h, dtype="<u2").view(np.uint8).reshape(-1, 2)


def _groups(x: np.ndarray, n: int) -> np.ndarray:
    """(S, 256) -> (n, S*256/n): column ``s*nsub + j`` is sub-block j of super-block s."""
    S = x.shape[0]
    return np.ascontiguousarray(x.reshape(S, QK_K // n, n).transpose(2, 0, 1)).reshape(n, -1)


def _ungroup(t: np.ndarray, S: int) -> np.ndarray:
    """Inverse of ``_groups``: (n, S*nsub) -> (S, 256)."""
    n = t.shape[0]
    return t.reshape(n, S, QK_K // n).transpose(1, 2, 0).reshape(S, QK_K)


def _per_group(v: np.ndarray, n: int) -> np.ndarray:
    """A per-super-block value (S,) repeated for each of its sub-blocks -> (S*nsub,)."""
    return np.repeat(v, QK_K // n)


def _sum_x2(x: np.ndarray) -> np.ndarray:
    """``float s = 0; for (l < QK_K) s += x[l]*x[l];`` per super-block of (S, 256)."""
    xx = x * x
    return seq_sum(np.ascontiguousarray(xx.T))


def _requant(xt: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    """The final pass of every quantize_row_qN_K: ``if (!d) continue;``, else
    ``L = clamp(nearest_int((x + dm)/d))`` (``x/d`` without a min), offset so the result is >= 0."""
    d = d.reshape(-1)
    v = xt if dm is None else xt + dm.reshape(-1)
    lq = levels_int(v / d, lo, hi) - lo
    return np.where(d != 0, lq, L)


def _levels_u8(L: np.ndarray, S: int) -> np.ndarray:
    """Grouped levels (n, S*nsub) -> uint8 (S, 256) in element order (the C array ``L[QK_K]``)."""
    return np.ascontiguousarray(_ungroup(L, S), dtype=np.uint8)


def _bitplane(bits: np.ndarray) -> np.ndarray:
    """(S, 8, 32) of 0/1 -> (S, 32) bytes with ``bits[:, b, m]`` at bit b of byte m."""
    out = bits[:, 0].copy()
    for b in range(1, 8):
        out |= bits[:, b] << b
    return out


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6 for j in (0, 128)."""
    Lr = L.reshape(-1, 2, 4, 32)
    q = Lr[:, :, 0] | (Lr[:, :, 1] << 2) | (Lr[:, :, 2] << 4) | (Lr[:, :, 3] << 6)
    return q.reshape(-1, 64)


def _pack_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12-byte 6-bit scale/min packing of Q4_K/Q5_K (uint8_t stores truncate)."""
    sc = np.empty((ls.shape[0], 12), np.int32)
    sc[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    sc[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    sc[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return (sc & 0xFF).astype(np.uint8)


def _unpack_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``get_scale_min_k4`` for j = 0..7 -> (sc, m), each (S, 8) int32."""
    q = q.astype(np.int32)
    sc = np.empty((q.shape[0], 8), np.int32)
    m = np.empty_like(sc)
    sc[:, 0:4] = q[:, 0:4] & 63
    m[:, 0:4] = q[:, 4:8] & 63
    sc[:, 4:8] = (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)
    return sc, m


def _pack_q3_scales(l: np.ndarray) -> np.ndarray:
    """Q3_K: sixteen 6-bit scales (S, 16) in [0, 64) -> 12 bytes."""
    sc = np.empty((l.shape[0], 12), np.int32)
    sc[:, 0:8] = (l[:, 0:8] & 0xF) | ((l[:, 8:16] & 0xF) << 4)
    hi = l >> 4
    sc[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return (sc & 0xFF).astype(np.uint8)


def _unpack_q3_scales(q: np.ndarray) -> np.ndarray:
    """Q3_K: the signed scale of sub-block j as quantize_row_q3_K decodes it (``sc - 32``), (S, 16)."""
    q = q.astype(np.int32)
    low = np.concatenate([q[:, 0:8] & 0xF, q[:, 0:8] >> 4], axis=1)
    hi = np.concatenate([(q[:, 8:12] >> (2 * k)) & 3 for k in range(4)], axis=1)
    return (low | (hi << 4)) - 32


_SHIFT2 = np.array([0, 2, 4, 6], np.uint8)[:, None]  # the four 2-bit fields of a byte
_BIT = np.arange(8, dtype=np.uint8)[:, None]  # the eight bits of a byte


def _fp16_at(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 field at ``offset`` of every super-block as ggml reads it (GGML_FP16_TO_FP32), ``(S, 1)``."""
    return fp16_to_fp32_ggml(blocks[:, offset:offset + 2].view("<u2"))


def _crumbs(q: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K quants: ``(q[l] >> 2j) & 3`` of each 32-byte half ``(S, 64)`` -> ``(S, 256)`` in element order
    (element ``128n + 32j + l`` from byte ``32n + l``)."""
    S = q.shape[0]
    return ((q.reshape(S, 2, 1, 32) >> _SHIFT2) & 3).reshape(S, QK_K)


def _bits8(b: np.ndarray) -> np.ndarray:
    """Bit ``k`` of byte ``l`` of ``(S, 32)`` at element ``32k + l`` -> ``(S, 256)`` of 0/1 (hmask/qh)."""
    return ((b[:, None, :] >> _BIT) & 1).reshape(b.shape[0], QK_K)


def _scaled(y: np.ndarray, q: np.ndarray, scale: np.ndarray, minus: np.ndarray | None) -> None:
    """``y = scale * (float)q - minus`` per sub-block: ``q`` ``(S, 256)`` levels, ``scale``/``minus`` ``(S, nsub)``."""
    nsub = scale.shape[1]
    y3 = y.reshape(y.shape[0], nsub, -1)
    np.multiply(scale[:, :, None], q.reshape(y3.shape), out=y3)
    if minus is not None:
        y3 -= minus[:, :, None]


class _KQuant(QuantType):
    """Shared row driver: rows -> super-blocks -> chunks; subclasses write ``_superblocks`` and
    ``_dequantize``."""

    # kernels/kquants_block.cuh: KQ_SB = 8 super-blocks per CUDA block, KQ_LANES = 4 threads each; the
    # _impl path in its own instantiation
    kernel = Kernel(threads=32, items_per_block=8, sync=True, weighted=True)

    @classmethod
    def dequantize_rows(cls, raw: np.ndarray) -> np.ndarray:
        return dequantize_blocks(raw, QK_K, cls.type_size, cls._dequantize, chunk_blocks=1024)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray, y: np.ndarray) -> None:
        """``dequantize_row_qN_K`` of super-blocks ``(S, type_size)`` uint8 into ``y`` ``(S, 256)`` float32."""
        raise NotImplementedError

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=F32)
        nrows, n_per_row = rows.shape
        if n_per_row % QK_K:
            raise ValueError(f"{cls.qtype.name}: n_per_row={n_per_row} is not a multiple of {QK_K}")
        nb = n_per_row // QK_K
        x = rows.reshape(-1, QK_K)
        qw = None
        if quant_weights is not None:
            qw = np.ascontiguousarray(quant_weights, dtype=F32).reshape(nb, QK_K)
        out = np.empty((x.shape[0], cls.type_size), np.uint8)
        # C float arithmetic runs into inf/NaN silently on degenerate blocks (masked where C branches)
        with np.errstate(all="ignore"):
            for s0 in range(0, x.shape[0], CHUNK_SUPERBLOCKS):
                s1 = min(s0 + CHUNK_SUPERBLOCKS, x.shape[0])
                w = None if qw is None else qw[np.arange(s0, s1) % nb]
                out[s0:s1] = cls._superblocks(x[s0:s1], w)
        return out.reshape(nrows, -1)

    @classmethod
    def _superblocks(cls, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        """x: float32 (S, 256); qw: the weights of each super-block (S, 256) or None -> (S, type_size)."""
        raise NotImplementedError


class Q6_K(_KQuant, qtype=GGMLQuantizationType.Q6_K):
    """quantize_row_q6_K_ref / quantize_row_q6_K_impl: 16 x 16 values, int8 scales, 6-bit quants."""

    fp16_fields = {"d": 208}

    @classmethod
    def _superblocks(cls, x, qw):
        S = x.shape[0]
        xt = _groups(x, 16)
        scales, L = make_qx_quants(xt, 32, None if qw is None else _groups(qw, 16))
        sc = scales.reshape(S, 16)
        max_abs, max_scale = absmax_first(sc.T)
        iscale = F32(-128) / max_scale
        d16 = fp32_to_fp16_bits(F32(1) / iscale)
        qsc = at_most(nearest_int(iscale[:, None] * sc), 127).astype(np.int8)
        d = fp16_bits_to_fp32(d16)[:, None] * qsc.astype(F32)
        L = _levels_u8(_requant(xt, L, d, None, -32, 31), S)
        Lr = L.reshape(S, 2, 4, 32)
        ql = (Lr[:, :, 0:2] & 0xF) | ((Lr[:, :, 2:4] & 0xF) << 4)
        qh = (Lr[:, :, 0] >> 4) | ((Lr[:, :, 1] >> 4) << 2) | ((Lr[:, :, 2] >> 4) << 4) | ((Lr[:, :, 3] >> 4) << 6)
        out = np.empty((S, cls.type_size), np.uint8)
        out[:, 0:128] = ql.reshape(S, 128)
        out[:, 128:192] = qh.reshape(S, 64)
        out[:, 192:208] = qsc.view(np.uint8)
        out[:, 208:210] = _fp16_bytes(d16)
        out[max_abs < GROUP_MAX_EPS] = 0  # memset(&y[i], 0, ...)
        return out

    @classmethod
    def _dequantize(cls, blocks, y):  # dequantize_row_q6_K: y = d * sc * q, q = (ql | qh << 4) - 32
        S = blocks.shape[0]
        ql = blocks[:, 0:128].reshape(S, 2, 1, 2, 32)  # [half, -, low/high 32 bytes, l]
        nib = np.concatenate([ql & 0xF, ql >> 4], axis=2).reshape(S, 2, 4, 32)  # [half, k, l]
        hi = (blocks[:, 128:192].reshape(S, 2, 1, 32) >> _SHIFT2) & 3
        q = (nib | (hi << 4)).reshape(S, QK_K).view(np.int8) - np.int8(32)
        _scaled(y, q, _fp16_at(blocks, 208) * blocks[:, 192:208].view(np.int8), None)


class _Q45K(_KQuant):
    """Q4_K / Q5_K: 8 x 32 values with 6-bit scales and mins."""

    nmax: int
    ref_search: tuple[float, float, int]  # make_qkx2_quants (rmin, rdelta, nstep) of the _ref path
    clamp_impl_scales: bool  # quantize_row_q5_K_impl applies MIN(63, ...) to Ls/Lm, q4_K's does not

    @classmethod
    def _superblocks(cls, x, qw):
        """d, dmin (fp16), the 12 packed scale/min bytes, then the quants (``_pack_quants``)."""
        L, packed, d16, dmin16 = cls._scales(x, qw)
        out = np.empty((x.shape[0], cls.type_size), np.uint8)
        out[:, 0:2] = _fp16_bytes(d16)
        out[:, 2:4] = _fp16_bytes(dmin16)
        out[:, 4:16] = packed
        cls._pack_quants(L, out[:, 16:])
        return out

    @staticmethod
    def _pack_quants(L: np.ndarray, q: np.ndarray) -> None:
        """Levels (S, 256) uint8 -> the quant bytes ``q`` (S, type_size - 16), in place."""
        raise NotImplementedError

    @staticmethod
    def _levels(q: np.ndarray) -> np.ndarray:
        """The quant bytes (S, type_size - 16) -> levels (S, 256) uint8 (the inverse of ``_pack_quants``)."""
        raise NotImplementedError

    @classmethod
    def _dequantize(cls, blocks, y):  # dequantize_row_q{4,5}_K: y = (d * sc) * q - (dmin * m)
        sc, m = _unpack_k4(blocks[:, 4:16])
        _scaled(y, cls._levels(blocks[:, 16:]), _fp16_at(blocks, 0) * sc.astype(F32),
                _fp16_at(blocks, 2) * m.astype(F32))

    @classmethod
    def _scales(cls, x, qw):
        """Search each 32-block; returns (L (S, 256) uint8, packed scales (S, 12), d16, dmin16)."""
        S = x.shape[0]
        xt = _groups(x, 32)
        if qw is None:  # quantize_row_qN_K_ref
            av_x = np.sqrt(seq_sum(xt * xt) / F32(32))
            w = av_x + np.abs(xt)
            rmin, rdelta, nstep = cls.ref_search
            scales, mins, L = make_qkx_quants(xt, w, cls.nmax, rmin, rdelta, nstep, False, False)
            sc, mi = scales.reshape(S, 8), mins.reshape(S, 8)
            max_scale, max_min = running_max(sc.T), running_max(mi.T)
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
            ls = at_most(nearest_int(inv_scale[:, None] * sc) & 0xFF, 63)
            lm = at_most(nearest_int(inv_min[:, None] * mi) & 0xFF, 63)
            d_block, m_block = max_scale / F32(63), max_min / F32(63)
        else:  # quantize_row_qN_K_impl
            sigma2 = F32(2) * _sum_x2(x) / F32(QK_K)
            w = _groups(qw, 32) * np.sqrt(_per_group(sigma2, 32) + xt * xt)
            sw = seq_sum(w)
            scales, mins, L = make_qkx_quants(xt, w, cls.nmax, -0.9, 0.05, 36, False, True)
            swt = np.ascontiguousarray(sw.reshape(S, 8).T)
            d_block, ls = make_qp_quants(np.ascontiguousarray(scales.reshape(S, 8).T), 63, swt)
            m_block, lm = make_qp_quants(np.ascontiguousarray(mins.reshape(S, 8).T), 63, swt)
            ls, lm = ls.T, lm.T
            if cls.clamp_impl_scales:
                ls, lm = at_most(ls, 63), at_most(lm, 63)
        packed = _pack_k4(ls, lm)
        d16, dmin16 = fp32_to_fp16_bits(d_block), fp32_to_fp16_bits(m_block)
        sc, m = _unpack_k4(packed)
        d = fp16_bits_to_fp32(d16)[:, None] * sc.astype(F32)
        dm = fp16_bits_to_fp32(dmin16)[:, None] * m.astype(F32)
        L = _levels_u8(_requant(xt, L, d, dm, 0, cls.nmax), S)
        return L, packed, d16, dmin16


class Q5_K(_Q45K, qtype=GGMLQuantizationType.Q5_K):
    """quantize_row_q5_K_ref / quantize_row_q5_K_impl."""

    fp16_fields = {"d": 0, "dmin": 2}

    nmax = 31
    ref_search = (-0.5, 0.1, 15)
    clamp_impl_scales = True

    @staticmethod
    def _pack_quants(L, q):
        S = L.shape[0]
        Lr = L.reshape(S, 4, 2, 32)
        q[:, 0:32] = _bitplane(L.reshape(S, 8, 32) >> 4)  # qh: bit 2p+h of qh[j] is L[64p + 32h + j] > 15
        q[:, 32:160] = ((Lr[:, :, 0] & 0xF) | ((Lr[:, :, 1] & 0xF) << 4)).reshape(S, 128)  # ql

    @staticmethod
    def _levels(q):  # (ql[l] & 0xF or >> 4) + 16 where bit 2g+h of qh[l] is set
        return Q4_K._levels(q[:, 32:160]) | (_bits8(q[:, 0:32]) << 4)


class Q4_K(_Q45K, qtype=GGMLQuantizationType.Q4_K):
    """quantize_row_q4_K_ref / quantize_row_q4_K_impl."""

    fp16_fields = {"d": 0, "dmin": 2}

    nmax = 15
    ref_search = (-1.0, 0.1, 20)
    clamp_impl_scales = False

    @staticmethod
    def _pack_quants(L, q):
        Lr = L.reshape(L.shape[0], 4, 2, 32)
        q[...] = (Lr[:, :, 0] | (Lr[:, :, 1] << 4)).reshape(-1, 128)

    @staticmethod
    def _levels(q):  # element 64g + 32h + l: nibble h of q[32g + l]
        S = q.shape[0]
        q3 = q.reshape(S, 4, 1, 32)
        return np.concatenate([q3 & 0xF, q3 >> 4], axis=2).reshape(S, QK_K)


class Q3_K(_KQuant, qtype=GGMLQuantizationType.Q3_K):
    """quantize_row_q3_K_ref / quantize_row_q3_K_impl: 16 x 16 values, 6-bit signed scales, 3-bit quants."""

    fp16_fields = {"d": 108}

    @classmethod
    def _superblocks(cls, x, qw):
        S = x.shape[0]
        xt = _groups(x, 16)
        if qw is None:  # quantize_row_q3_K_ref
            scales, L = make_q3_quants(xt, 4)
            sc = scales.reshape(S, 16)
            _, max_scale = absmax_first(sc.T)
            nz = max_scale != 0
            iscale = F32(-32) / max_scale
            l = nearest_int(iscale[:, None] * sc).astype(np.int8).astype(np.int32)
            d16 = np.where(nz, fp32_to_fp16_bits(F32(1) / iscale), np.uint16(0))
            packed = _pack_q3_scales(np.clip(l, -32, 31) + 32)
            packed[~nz] = 0
        else:  # quantize_row_q3_K_impl
            sigma2 = F32(2) * _sum_x2(x) / F32(QK_K)
            w = _groups(qw, 16) * np.sqrt(_per_group(sigma2, 16) + xt * xt)
            sw = seq_sum(w)
            scales, L = make_qx_quants(xt, 4, w)
            d_block, Ls = make_qx_quants(np.ascontiguousarray(scales.reshape(S, 16).T), 32,
                                         np.ascontiguousarray(sw.reshape(S, 16).T))
            packed = _pack_q3_scales(Ls.T)
            d16 = fp32_to_fp16_bits(d_block)
        d = fp16_bits_to_fp32(d16)[:, None] * _unpack_q3_scales(packed).astype(F32)
        L = _levels_u8(_requant(xt, L, d, None, -4, 3), S)  # 0..7
        out = np.empty((S, cls.type_size), np.uint8)
        out[:, 0:32] = _bitplane(L.reshape(S, 8, 32) >> 2)  # L > 3: bit j/32 of hmask[j%32], L -= 4
        out[:, 32:96] = _pack_2bit(L & 3)
        out[:, 96:108] = packed
        out[:, 108:110] = _fp16_bytes(d16)
        return out

    @classmethod
    def _dequantize(cls, blocks, y):  # dequantize_row_q3_K: y = (d * (sc - 32)) * (q - (hmask bit ? 0 : 4))
        q = _crumbs(blocks[:, 32:96]).view(np.int8) + (_bits8(blocks[:, 0:32]) << 2).view(np.int8) - np.int8(4)
        _scaled(y, q, _fp16_at(blocks, 108) * _unpack_q3_scales(blocks[:, 96:108]).astype(F32), None)


class Q2_K(_KQuant, qtype=GGMLQuantizationType.Q2_K):
    """quantize_row_q2_K_ref / quantize_row_q2_K_impl: 16 x 16 values, 4-bit scales and mins, 2-bit quants."""

    fp16_fields = {"d": 80, "dmin": 82}

    @classmethod
    def _superblocks(cls, x, qw):
        S = x.shape[0]
        xt = _groups(x, 16)
        if qw is None:  # quantize_row_q2_K_ref
            scales, mins, L = make_qkx_quants(xt, np.abs(xt), 3, -0.5, 0.1, 15, True, False)
            sc, mi = scales.reshape(S, 16), mins.reshape(S, 16)
            max_scale, max_min = running_max(sc.T), running_max(mi.T)
            ls = np.where((max_scale > 0)[:, None], nearest_int((F32(15) / max_scale)[:, None] * sc), 0)
            lm = np.where((max_min > 0)[:, None], nearest_int((F32(15) / max_min)[:, None] * mi), 0)
            d16 = np.where(max_scale > 0, fp32_to_fp16_bits(max_scale / F32(15)), np.uint16(0))
            dmin16 = np.where(max_min > 0, fp32_to_fp16_bits(max_min / F32(15)), np.uint16(0))
        else:  # quantize_row_q2_K_impl
            sigma2 = _sum_x2(x) / F32(QK_K)
            w = _groups(qw, 16) * np.sqrt(_per_group(sigma2, 16) + xt * xt)
            sw = np.ascontiguousarray(seq_sum(w).reshape(S, 16).T)
            scales, mins, L = make_qkx_quants(xt, w, 3, -0.9, 0.05, 36, False, True)
            dm, ls = make_qp_quants(np.ascontiguousarray(scales.reshape(S, 16).T), 15, sw)
            mm, lm = make_qp_quants(np.ascontiguousarray(mins.reshape(S, 16).T), 15, sw)
            ls, lm = ls.T, lm.T
            d16, dmin16 = fp32_to_fp16_bits(dm), fp32_to_fp16_bits(mm)
        packed = ((ls & 0xFF) | (lm << 4)) & 0xFF
        d = fp16_bits_to_fp32(d16)[:, None] * (packed & 0xF).astype(F32)
        dm_ = fp16_bits_to_fp32(dmin16)[:, None] * (packed >> 4).astype(F32)
        L = _levels_u8(_requant(xt, L, d, dm_, 0, 3), S)
        out = np.empty((S, cls.type_size), np.uint8)
        out[:, 0:16] = packed
        out[:, 16:80] = _pack_2bit(L)
        out[:, 80:82] = _fp16_bytes(d16)
        out[:, 82:84] = _fp16_bytes(dmin16)
        return out

    @classmethod
    def _dequantize(cls, blocks, y):  # dequantize_row_q2_K: y = (d * (sc & 0xF)) * q - dmin * (sc >> 4)
        sc = blocks[:, 0:16]
        _scaled(y, _crumbs(blocks[:, 16:80]), _fp16_at(blocks, 80) * (sc & 0xF).astype(F32),
                _fp16_at(blocks, 82) * (sc >> 4).astype(F32))
