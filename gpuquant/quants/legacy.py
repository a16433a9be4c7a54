"""Legacy 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Without importance weights ``ggml_quantize_chunk`` runs the ``quantize_row_*_ref`` functions; with weights
(Q4_0, Q4_1, Q5_0, Q5_1) it runs ``quantize_row_*_impl``, which weights every element by
``qw[j] * sqrtf(sigma2 + x[j]*x[j])`` with ``sigma2`` the mean square of the *whole row*. Q8_0 ignores the
weights. The weighted searches run element-major (see ``common``), a few rows at a time.

The ``_ref`` paths run block-major on a ``(nblk, 32)`` view of the rows (``_fast``), which is exact as long
as the scale and its inverse are finite; the rare blocks where they are not (a scale so small that
``1.0f/d`` overflows, an overflowing range) are redone by the element-major ``_ref`` that emulates C's
float->int conversions of inf/NaN.

llama-quantize refuses NaN/Inf tensors when loading (so does gpuquant's pipeline); they are still
emulated (NaN never wins a C ``>``/``<`` comparison, Q8_0's ``MAX`` macro restarts after a NaN) and the
oracle tests check them.
"""
from __future__ import annotations

import numpy as np

from . import GGMLQuantizationType as T
from . import QuantType
from .common import (
    F32,
    absmax_first,
    blocks_t,
    fp16_bits,
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


def _take_bm(xb: np.ndarray, i: np.ndarray) -> np.ndarray:
    """``xb[b, i[b]]`` for every block ``b`` of a contiguous ``(nblk, 32)`` array."""
    return xb.reshape(-1)[i + np.arange(0, xb.size, QK)]


def _first_absmax_bm(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block-major ``absmax_first``: ``(amax, max)``, the first element of largest magnitude (max = +0.0
    if all zero)."""
    a = np.abs(xb)
    i = np.argmax(a, axis=1)
    mx = _take_bm(xb, i)
    return _take_bm(a, i), np.where(mx == 0, F32(0), mx).astype(F32, copy=False)


def _first_min_max_bm(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block-major ``_first_min_max``."""
    return _take_bm(xb, np.argmin(xb, axis=1)), _take_bm(xb, np.argmax(xb, axis=1))


def _fill(ts: int, *fields: np.ndarray) -> np.ndarray:
    """Per-block fields side by side into ``(nblk, ts)`` uint8; each field is ``(nblk, k)`` of any
    dtype whose item size divides its offset (uint16 fp16 scales, uint64 packed nibbles...)."""
    out = np.empty((fields[0].shape[0], ts), dtype=np.uint8)
    o = 0
    for f in fields:
        width = f.shape[1] * f.itemsize
        assert o % f.itemsize == 0 and ts % f.itemsize == 0
        out.view(f.dtype)[:, o // f.itemsize:(o + width) // f.itemsize] = f
        o += width
    assert o == ts
    return out


def _scaled(xb: np.ndarray, id_: np.ndarray, offset: np.ndarray | None, add: F32) -> np.ndarray:
    """``(uint8)((x - offset)*id + add)`` block-major, for finite ``id`` (values in [0, 256))."""
    v = np.repeat(id_, QK).reshape(-1, QK)  # a full-size factor: long inner loops, no broadcasting
    if offset is not None:
        v *= xb - np.repeat(offset, QK).reshape(-1, QK)
    else:
        v *= xb
    v += add
    return v.astype(np.uint8)


_U64 = np.uint64


def _nibbles_bm(u: np.ndarray, mask: bool) -> np.ndarray:
    """``qs[j] = lo[j] | (hi[j] << 4)`` on ``(nblk, 32)`` uint8 with values <= 15 (after ``& 0x0F`` if
    ``mask``), eight bytes at a time: returns the 16 bytes of each block as ``(nblk, 8)`` uint16."""
    w = u.view(_U64)  # (nblk, 4)
    lo, hi = w[:, :2], w[:, 2:]
    if mask:
        m = _U64(0x0F0F0F0F0F0F0F0F)
        lo = lo & m
        hi = hi & m
    return (lo | (hi << _U64(4))).view(np.uint16)


def _qh_bm(u: np.ndarray) -> np.ndarray:
    """Bit 4 of each of the 32 values -> 4 little-endian bytes (``qh``)."""
    return np.packbits((u >> 4) & 1, axis=1, bitorder="little").view(np.uint16)


def _bad(*v: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(v[0])
    for a in v[1:]:
        bad |= ~np.isfinite(a)
    return bad


def _h16(v: np.ndarray) -> np.ndarray:
    """fp16 bits of per-block values as an ``(nblk, 1)`` uint16 field."""
    return fp16_bits(v)[:, None]


def _h(v: np.ndarray) -> np.ndarray:
    """fp16 field of every block: ``(nblk,)`` float32 -> ``(nblk, 2)`` bytes."""
    return fp16_bits(v).view(np.uint8).reshape(-1, 2)


def _blocks(*fields: np.ndarray) -> np.ndarray:
    """Concatenate per-block fields: ``(nblk, k)`` byte arrays or element-major ``(k, nblk)`` ones (``.T``)."""
    return np.concatenate(fields, axis=1)


def _quants_bm(u: np.ndarray, five: bool) -> tuple[np.ndarray, ...]:
    """The quant fields of block-major levels ``(nblk, 32)`` uint8: ``qs`` (4 bits), or ``qh``, ``qs`` (5)."""
    return (_qh_bm(u), _nibbles_bm(u, True)) if five else (_nibbles_bm(u, False),)


def _quants_em(xi: np.ndarray, five: bool) -> tuple[np.ndarray, ...]:
    """``_quants_bm`` of element-major levels ``(32, nblk)`` uint8, as ``(nblk, k)`` byte fields:
    ``qs`` (4 bits), or ``qh`` (bit j = bit 4 of element j) and ``qs`` (low nibbles) (5 bits)."""
    return (pack_qh(xi).T, pack_nibbles(xi & 0x0F).T) if five else (pack_nibbles(xi).T,)


class _Legacy(QuantType):
    """Shared row driver: ``_ref(xt)`` without weights, ``_impl(xt, w)`` with them (element-major)."""

    uses_weights = True

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        rows = np.asarray(rows, dtype=F32)
        nrows, n = rows.shape
        nb = n // QK
        out = np.empty((nrows, cls.row_size(n)), dtype=np.uint8)
        use_w = quant_weights is not None and cls.uses_weights
        if use_w:
            qw_t = np.ascontiguousarray(np.asarray(quant_weights, dtype=F32).reshape(nb, QK).T)[:, None, :]
        with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
            for sl in row_chunks(nrows, n, 1 << 18 if not use_w else 1 << 16):
                x = rows[sl]
                nr = x.shape[0]
                if use_w:
                    xt = blocks_t(x, QK)
                    sigma2 = row_sum_sq(x) / F32(n)
                    x3 = xt.reshape(QK, nr, nb)
                    w = qw_t * np.sqrt(sigma2[None, :, None] + x3 * x3)
                    blk = cls._impl(xt, w.reshape(QK, nr * nb))
                else:
                    blk, bad = cls._fast(np.ascontiguousarray(x).reshape(-1, QK))
                    if bad.any():
                        idx = np.nonzero(bad)[0]
                        blk[idx] = cls._ref(np.ascontiguousarray(x.reshape(-1, QK)[idx].T))
                out[sl] = blk.reshape(nr, -1)
        return out


class _Symmetric(_Legacy):
    """Q4_0 / Q5_0: ``d = max/-nmax`` from the first value of largest magnitude, levels ``x/d + nmax``."""

    nmax: int  # 8 (Q4_0) or 16 (Q5_0); the levels are 0..2*nmax-1

    @classmethod
    def _fast(cls, xb):  # quantize_row_q{4,5}_0_ref, block-major
        d = _first_absmax_bm(xb)[1] / F32(-cls.nmax)
        id_ = safe_recip(d)
        u = _scaled(xb, id_, None, F32(cls.nmax + 0.5))
        np.clip(u, np.uint8(0), np.uint8(2 * cls.nmax - 1), out=u)  # MIN(2*nmax-1, ...)
        return _fill(cls.type_size, _h16(d), *_quants_bm(u, cls.nmax == 16)), _bad(d, id_)

    @classmethod
    def _ref(cls, xt):  # quantize_row_q{4,5}_0_ref: MIN(2*nmax-1, (int8_t)(x*id + nmax + 0.5f))
        d = absmax_first(xt)[1] / F32(-cls.nmax)
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

    @classmethod
    def _fast(cls, xb):  # quantize_row_q{4,5}_1_ref, block-major
        mn, mx = _first_min_max_bm(xb)
        d = (mx - mn) / F32(cls.nmax)
        id_ = safe_recip(d)
        u = _scaled(xb, id_, mn, F32(0.5))
        if cls.clamp:
            np.clip(u, np.uint8(0), np.uint8(cls.nmax), out=u)
        return _fill(cls.type_size, _h16(d), _h16(mn), *_quants_bm(u, cls.nmax == 31)), _bad(d, id_)

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


class Q5_0(_Symmetric, qtype=T.Q5_0):
    nmax = 16


class Q4_1(_Affine, qtype=T.Q4_1):
    nmax = 15
    clamp = True


class Q5_1(_Affine, qtype=T.Q5_1):
    nmax = 31
    clamp = False


class Q8_0(_Legacy, qtype=T.Q8_0):
    uses_weights = False  # quantize_q8_0 ignores quant_weights

    @classmethod
    def _fast(cls, xb):  # quantize_row_q8_0_ref, block-major
        d = _first_absmax_bm(xb)[0] / F32(127)
        id_ = safe_recip(d)
        v = np.repeat(id_, QK).reshape(-1, QK)
        v *= xb
        v += np.copysign(_HALF_DOWN, v)
        q = v.astype(np.int8)  # trunc: (int8_t)roundf(x*id)
        return _fill(cls.type_size, _h16(d), q.view(np.uint8)), _bad(d, id_)

    @staticmethod
    def _ref(xt):  # quantize_row_q8_0_ref
        amax = np.zeros(xt.shape[1:], dtype=F32)
        for v in np.abs(xt):  # amax = MAX(amax, fabsf(v)): a NaN resets it at the next element
            amax = np.where(amax > v, amax, v)
        d = amax / F32(127)
        q = _int8(roundf(xt * safe_recip(d)))
        return _blocks(_h(d), q.view(np.uint8).T)
