"""Legacy 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Without importance weights ``ggml_quantize_chunk`` runs the ``quantize_row_*_ref`` functions; with weights
(Q4_0, Q4_1, Q5_0, Q5_1) it runs ``quantize_row_*_impl``, which weights every element by
``qw[j] * sqrtf(sigma2 + x[j]*x[j])`` with ``sigma2`` the mean square of the *whole row*. Q8_0 ignores the
weights. The weighted searches run element-major (see ``common``), a few rows at a time.

The ``_ref`` functions without weights run as ``_fast`` on a *quad-major* copy of a cache-sized run of
blocks (``_quads``: row ``r`` holds elements ``4r..4r+3`` of every block), where the per-block extremes are
row reductions and every other step is a long contiguous numpy loop; the quants go straight into their
place in the output (``_column``) and the fp16 scales of the whole tensor are converted in one call at the
end. That is exact as long as the scale and its inverse are finite; the rare blocks where they are not (a
scale so small that ``1.0f/d`` overflows, an overflowing range, NaN) are redone by the element-major
``_ref`` that emulates C's float->int conversions of inf/NaN.

``dequantize_rows`` is ``dequantize_row_q*`` (ggml's to_float): ``(float)level * d`` (``+ m`` for Q4_1/Q5_1),
the levels looked up from tables indexed by the quant bytes, the fp16 fields read as ggml converts them.

llama-quantize refuses NaN/Inf tensors when loading (so does gpuquant's pipeline); they are still
emulated (NaN never wins a C ``>``/``<`` comparison, Q8_0's ``MAX`` macro restarts after a NaN) and the
oracle tests check them.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from . import GGMLQuantizationType as T
from . import Kernel, QuantType
from .common import (
    F32,
    absmax_from_extremes,
    absmax_loop,
    blocks_t,
    dequantize_blocks,
    fp16_bits,
    fp16_to_fp32_ggml,
    make_qkx_quants,
    make_qx_quants,
    pack_nibbles,
    pack_qh,
    roundf,
    row_chunks,
    row_sum_sq,
    safe_recip,
    trunc_int,
)

QK = 32
_HALF_DOWN = F32(0.49999997)  # nextafterf(0.5f, 0): trunc(v + copysign(this, v)) == roundf(v)
# blocks per step of the plain path: 8192 * 32 float32 = 1 MiB per work array (measured: 4096..32768)
_CHUNK_BLOCKS = 8192
_V16 = np.dtype("V16")  # four float32 moved as one opaque item
_QH_SHIFT = np.arange(0, 32, 4, dtype=np.uint32)[:, None]


# ----------------------------------------------------------------------------- the C emulation (element-major)


def _int8(x: np.ndarray) -> np.ndarray:
    """C ``(int8_t)(float)`` as gcc compiles it: truncate to int32, keep the low byte."""
    return trunc_int(x).astype(np.int8)


def _first_min_max(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``min = FLT_MAX; max = -FLT_MAX; if (v < min) min = v; if (v > max) max = v;`` element by element
    (the first extreme is kept, which fixes the sign of a zero extreme; NaNs are skipped)."""
    fmax = F32(np.finfo(F32).max)
    mn = np.full(xt.shape[1:], fmax, dtype=F32)
    mx = np.full(xt.shape[1:], -fmax, dtype=F32)
    for v in xt:
        mn = np.where(v < mn, v, mn)
        mx = np.where(v > mx, v, mx)
    return mn, mx


def _h(v: np.ndarray) -> np.ndarray:
    """fp16 field of every block: ``(nblk,)`` float32 -> ``(nblk, 2)`` bytes."""
    return fp16_bits(v).view(np.uint8).reshape(-1, 2)


def _blocks(*fields: np.ndarray) -> np.ndarray:
    """Concatenate per-block fields: ``(nblk, k)`` byte arrays or element-major ``(k, nblk)`` ones (``.T``)."""
    return np.concatenate(fields, axis=1)


def _quants_em(xi: np.ndarray, five: bool) -> tuple[np.ndarray, ...]:
    """The quant fields of element-major levels ``(32, nblk)`` uint8, as ``(nblk, k)`` bytes: ``qs``
    (4 bits), or ``qh`` (bit j = bit 4 of element j) and ``qs`` (low nibbles) (5 bits)."""
    return (pack_qh(xi).T, pack_nibbles(xi & 0x0F).T) if five else (pack_nibbles(xi).T,)


# ----------------------------------------------------------------------------- the fast path (quad-major)


def _quads(xb: np.ndarray) -> np.ndarray:
    """Block-major ``(nblk, 32)`` -> quad-major ``(8, 4*nblk)`` float32 copy: ``[r, 4b + k]`` is element
    ``4r + k`` of block ``b``. Moving 16-byte items is a plain copy of a quarter as many items as a float
    transpose (bits untouched)."""
    return np.ascontiguousarray(xb.view(_V16).T).view(F32)


def _per_quad(v: np.ndarray) -> np.ndarray:
    """A per-block value ``(nblk,)`` for every column of a quad-major row ``(4*nblk,)``."""
    return np.repeat(v, 4)


def _block_max_min(xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-block maximum and minimum of quad-major ``xq``: NaN propagates (the block goes to ``_ref``), the
    sign of a zero extreme is numpy's choice (callers that need C's first one fix it)."""
    h = xq.max(axis=0).reshape(-1, 4)
    lo = xq.min(axis=0).reshape(-1, 4)
    return (np.maximum(np.maximum(h[:, 0], h[:, 1]), np.maximum(h[:, 2], h[:, 3])),
            np.minimum(np.minimum(lo[:, 0], lo[:, 1]), np.minimum(lo[:, 2], lo[:, 3])))


def _column(out: np.ndarray, offset: int, dtype: str) -> np.ndarray:
    """The field at byte ``offset`` of every block row of ``out`` ``(nblk, type_size)`` as a ``(nblk,)``
    view of ``dtype`` (unaligned is fine): one long strided loop per write."""
    return out[:, offset:offset + np.dtype(dtype).itemsize].view(dtype)[:, 0]


def _write_quants(out: np.ndarray, offset: int, u: np.ndarray, five: bool) -> None:
    """``qs`` (after ``qh`` for 5 bits) of quad-major levels ``u`` ``(8, 4*nblk)`` uint8 into ``out``.

    ``qs[j] = L[j] | L[j + 16] << 4``: rows 0-3 hold elements 0-15, rows 4-7 elements 16-31, so the four
    bytes ``4r..4r+3`` of every block are one uint32 of ``u[r] | u[r + 4] << 4``. ``qh`` bit ``j`` is bit 4
    of ``L[j]``: per row, the four 0/1 bytes are gathered into a nibble by one multiplication (the
    products of ``0x10204080`` with bits 0, 8, 16, 24 land on distinct bits, so nothing carries).
    """
    w = u.view("<u4")  # (8, nblk)
    if five:
        nib = ((w >> 4) & 0x01010101) * 0x10204080 >> 28
        nib <<= _QH_SHIFT
        _column(out, offset, "<u4")[...] = np.bitwise_or.reduce(nib, axis=0)
        offset += 4
        w = w & 0x0F0F0F0F
    q = w[:4] | (w[4:] << 4)
    for r in range(4):
        _column(out, offset + 4 * r, "<u4")[...] = q[r]


def _fp16_at(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 field at ``offset`` of every block as ggml reads it (GGML_FP16_TO_FP32), ``(nb, 1)``."""
    return fp16_to_fp32_ggml(blocks[:, offset:offset + 2].view("<u2"))


_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)


def _levels(qs: np.ndarray, qh: np.ndarray | None) -> np.ndarray:
    """The levels ``(nb, 32)`` uint8 of the quant bytes ``qs`` ``(nb, 16)``: element ``j`` the low nibble of
    ``qs[j]``, element ``j + 16`` its high nibble, plus 16 where bit ``j`` of ``qh`` (``(nb, 4)``, little
    endian) is set. The nibbles are split eight bytes at a time and moved as 16-byte items (numpy is slow on
    rows of 16 bytes)."""
    nb = qs.shape[0]
    w = np.ascontiguousarray(qs.view(_V16)).view(np.uint64)  # (nb, 2)
    L = np.empty((nb, 32), np.uint8)
    v = L.view(_V16)  # (nb, 2): elements 0-15, 16-31
    v[:, 0] = (w & _NIBBLES).view(_V16)[:, 0]
    v[:, 1] = ((w >> np.uint64(4)) & _NIBBLES).view(_V16)[:, 0]
    if qh is not None:
        L |= np.unpackbits(qh, axis=1, bitorder="little") << np.uint8(4)
    return L


def _bad(*v: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(v[0])
    for a in v[1:]:
        bad |= ~np.isfinite(a)
    return bad


class _Legacy(QuantType):
    """Shared row driver: ``_fast`` (``_ref`` for the blocks it flags) without weights, ``_impl(xt, w)``
    with them (element-major)."""

    uses_weights = True
    n_fp16: ClassVar[int] = 1  # fp16 fields at the start of a block (d; or d and m)

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=F32)
        nrows, n = rows.shape
        nb = n // QK
        out = np.empty((nrows, cls.row_size(n)), dtype=np.uint8)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
            if quant_weights is None or not cls.uses_weights:
                cls._plain(rows.reshape(-1, QK), out.reshape(-1, cls.type_size))
                return out
            qw_t = np.ascontiguousarray(np.asarray(quant_weights, dtype=F32).reshape(nb, QK).T)[:, None, :]
            for sl in row_chunks(nrows, n, 1 << 16):
                x = rows[sl]
                nr = x.shape[0]
                xt = blocks_t(x, QK)
                sigma2 = row_sum_sq(x) / F32(n)
                x3 = xt.reshape(QK, nr, nb)
                w = qw_t * np.sqrt(sigma2[None, :, None] + x3 * x3)
                out[sl] = cls._impl(xt, w.reshape(QK, nr * nb)).reshape(nr, -1)
        return out

    @classmethod
    def dequantize_rows(cls, raw: np.ndarray) -> np.ndarray:
        return dequantize_blocks(raw, QK, cls.type_size, cls._dequantize)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray, y: np.ndarray) -> None:
        """``dequantize_row_*`` of blocks ``(nb, type_size)`` uint8 into ``y`` ``(nb, 32)`` float32."""
        raise NotImplementedError

    @classmethod
    def _plain(cls, xb: np.ndarray, out: np.ndarray) -> None:
        """``quantize_row_*_ref`` of blocks ``xb`` ``(nblk, 32)`` into ``out`` ``(nblk, type_size)``."""
        nblk = xb.shape[0]
        scales = np.empty((nblk, cls.n_fp16), F32)
        bad = np.empty(nblk, bool)
        for b0 in range(0, nblk, _CHUNK_BLOCKS):
            sl = slice(b0, b0 + _CHUNK_BLOCKS)
            scales[sl], bad[sl] = cls._fast(xb[sl], out[sl])
        h = fp16_bits(scales)
        for k in range(cls.n_fp16):
            _column(out, 2 * k, "<u2")[...] = h[:, k]
        redo = np.flatnonzero(bad)
        if redo.size:
            out[redo] = cls._ref(np.ascontiguousarray(xb[redo].T))

    @classmethod
    def _fast(cls, xb: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_ref`` of ``xb`` ``(nblk, 32)`` for finite scales: writes the quants into ``out``; returns the
        float32 fp16 fields ``(nblk, n_fp16)`` and the blocks that ``_ref`` must redo."""
        raise NotImplementedError


class _Symmetric(_Legacy):
    """Q4_0 / Q5_0: ``d = max/-nmax`` from the first value of largest magnitude, levels ``x/d + nmax``."""

    nmax: int  # 8 (Q4_0) or 16 (Q5_0); the levels are 0..2*nmax-1

    @classmethod
    def _fast(cls, xb, out):  # quantize_row_q{4,5}_0_ref
        xq = _quads(xb)
        amax, mx = absmax_from_extremes(*_block_max_min(xq), lambda idx: xb[idx].T)
        d = mx / F32(-cls.nmax)
        id_ = safe_recip(d)
        xq *= _per_quad(id_)
        xq += F32(cls.nmax + 0.5)
        u = xq.astype(np.uint8)  # (int8_t) of values in [0, 17): truncation
        np.clip(u, np.uint8(0), np.uint8(2 * cls.nmax - 1), out=u)  # MIN(2*nmax-1, ...)
        _write_quants(out, 2, u, cls.nmax == 16)
        return d[:, None], _bad(d, id_) | np.isnan(amax)

    @classmethod
    def _dequantize(cls, blocks, y):  # dequantize_row_q{4,5}_0: y = (float)(q - nmax) * d
        five = cls.nmax == 16
        L = _levels(blocks[:, 6:22], blocks[:, 2:6]) if five else _levels(blocks[:, 2:18], None)
        np.subtract(L, F32(cls.nmax), out=y, dtype=F32, casting="unsafe")
        y *= _fp16_at(blocks, 0)

    @classmethod
    def _ref(cls, xt):  # quantize_row_q{4,5}_0_ref: MIN(2*nmax-1, (int8_t)(x*id + nmax + 0.5f))
        d = absmax_loop(xt)[1] / F32(-cls.nmax)
        xi = np.minimum(_int8(xt * safe_recip(d) + F32(cls.nmax + 0.5)), 2 * cls.nmax - 1)
        return _blocks(_h(d), *_quants_em(xi.astype(np.uint8), cls.nmax == 16))

    @classmethod
    def _impl(cls, xt, w):  # quantize_row_q{4,5}_0_impl
        d, L = make_qx_quants(xt, cls.nmax, w)
        return _blocks(_h(d), *_quants_em(L.astype(np.uint8), cls.nmax == 16))


class _Affine(_Legacy):
    """Q4_1 / Q5_1: ``d = (max - min)/nmax``, ``m = min``, levels ``(x - min)/d``."""

    nmax: int  # 15 (Q4_1) or 31 (Q5_1)
    clamp: bool  # quantize_row_q4_1_ref applies MIN(15, (int8_t)...), q5_1's stores (uint8_t) directly
    n_fp16 = 2

    @classmethod
    def _fast(cls, xb, out):  # quantize_row_q{4,5}_1_ref
        xq = _quads(xb)
        mx, mn = _block_max_min(xq)
        # C keeps the first of equal extremes, which decides the sign of a zero min (m) or max (d = -0.0
        # for a block of zeros starting with -0.0): argmin/argmax return first occurrences
        z = np.flatnonzero((mn == 0) | (mx == 0))
        if z.size:
            sub, r = xb[z], np.arange(z.size)
            mn[z], mx[z] = sub[r, np.argmin(sub, axis=1)], sub[r, np.argmax(sub, axis=1)]
        d = (mx - mn) / F32(cls.nmax)
        id_ = safe_recip(d)
        xq -= _per_quad(mn)
        xq *= _per_quad(id_)
        xq += F32(0.5)
        u = xq.astype(np.uint8)  # values in [0, nmax + 1)
        if cls.clamp:
            np.clip(u, np.uint8(0), np.uint8(cls.nmax), out=u)
        _write_quants(out, 4, u, cls.nmax == 31)
        return np.stack([d, mn], axis=1), _bad(d, id_)

    @classmethod
    def _dequantize(cls, blocks, y):  # dequantize_row_q{4,5}_1: y = (float)q * d + m
        five = cls.nmax == 31
        L = _levels(blocks[:, 8:24], blocks[:, 4:8]) if five else _levels(blocks[:, 4:20], None)
        np.multiply(L, _fp16_at(blocks, 0), out=y)
        y += _fp16_at(blocks, 2)

    @classmethod
    def _ref(cls, xt):  # quantize_row_q{4,5}_1_ref
        mn, mx = _first_min_max(xt)
        d = (mx - mn) / F32(cls.nmax)
        xi = _int8((xt - mn) * safe_recip(d) + F32(0.5))
        if cls.clamp:
            xi = np.minimum(xi, cls.nmax)
        return _blocks(_h(d), _h(mn), *_quants_em(xi.astype(np.uint8), cls.nmax == 31))

    @classmethod
    def _impl(cls, xt, w):  # quantize_row_q{4,5}_1_impl: make_qkx3_quants(.., -0.9f, 0.05f, 36, false)
        d, the_min, L = make_qkx_quants(xt, w, cls.nmax, -0.9, 0.05, 36, False, True)
        return _blocks(_h(d), _h(-the_min), *_quants_em(L.astype(np.uint8), cls.nmax == 31))


class Q4_0(_Symmetric, qtype=T.Q4_0):
    nmax = 8
    fp16_fields = {"d": 0}
    kernel = Kernel(threads=128, rowstat=True, weighted=True)


class Q5_0(_Symmetric, qtype=T.Q5_0):
    nmax = 16
    fp16_fields = {"d": 0}
    kernel = Kernel(threads=128, rowstat=True, weighted=True)


class Q4_1(_Affine, qtype=T.Q4_1):
    nmax = 15
    clamp = True
    fp16_fields = {"d": 0, "m": 2}
    kernel = Kernel(threads=128, rowstat=True, weighted=True)


class Q5_1(_Affine, qtype=T.Q5_1):
    nmax = 31
    clamp = False
    fp16_fields = {"d": 0, "m": 2}
    kernel = Kernel(threads=128, rowstat=True, weighted=True)


class Q8_0(_Legacy, qtype=T.Q8_0):
    uses_weights = False  # quantize_q8_0 ignores quant_weights
    fp16_fields = {"d": 0}
    kernel = Kernel(threads=128)

    @classmethod
    def _fast(cls, xb, out):  # quantize_row_q8_0_ref
        xq = _quads(xb)
        hi, lo = _block_max_min(xq)
        d = np.maximum(np.abs(hi), np.abs(lo)) / F32(127)  # amax; NaN propagates
        id_ = safe_recip(d)
        xq *= _per_quad(id_)
        xq += np.copysign(_HALF_DOWN, xq)
        w = xq.astype(np.int8).view("<u4")  # trunc: (int8_t)roundf(x*id); (8, nblk)
        for r in range(8):
            _column(out, 2 + 4 * r, "<u4")[...] = w[r]
        return d[:, None], _bad(d, id_)

    @staticmethod
    def _dequantize(blocks, y):  # dequantize_row_q8_0: y = (float)qs * d
        np.multiply(blocks[:, 2:].view(np.int8), _fp16_at(blocks, 0), out=y)

    @staticmethod
    def _ref(xt):  # quantize_row_q8_0_ref
        amax = np.zeros(xt.shape[1:], dtype=F32)
        for v in np.abs(xt):  # amax = MAX(amax, fabsf(v)): a NaN resets it at the next element
            amax = np.where(amax > v, amax, v)
        d = amax / F32(127)
        q = _int8(roundf(xt * safe_recip(d)))
        return _blocks(_h(d), q.view(np.uint8).T)
