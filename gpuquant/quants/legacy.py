"""Legacy 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Without importance weights ``ggml_quantize_chunk`` runs the ``quantize_row_*_ref`` functions; with weights
(Q4_0, Q4_1, Q5_0, Q5_1) it runs ``quantize_row_*_impl``, which weights every element by
``qw[j] * sqrtf(sigma2 + x[j]*x[j])`` with ``sigma2`` the mean square of the *whole row*. Q8_0 ignores the
weights. Blocks are processed element-major (see ``common``), a few rows at a time.
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
    make_qkx3_quants,
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


def _int8(x: np.ndarray) -> np.ndarray:
    """C ``(int8_t)(float)`` as gcc compiles it: truncate to int32, keep the low byte."""
    return trunc_int(x).astype(np.int8)


def _first_min_max(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``min = FLT_MAX; max = -FLT_MAX; if (v < min) min = v; if (v > max) max = v;`` (first extreme kept,
    which fixes the sign of a zero extreme)."""
    mn = np.take_along_axis(xt, np.argmin(xt, axis=0)[None], axis=0)[0]
    mx = np.take_along_axis(xt, np.argmax(xt, axis=0)[None], axis=0)[0]
    return mn, mx


def _h(v: np.ndarray) -> np.ndarray:
    """fp16 field of every block: ``(nblk,)`` float32 -> ``(nblk, 2)`` bytes."""
    return fp16_bits(v).view(np.uint8).reshape(-1, 2)


def _blocks(*fields: np.ndarray) -> np.ndarray:
    """Concatenate per-block fields: ``(nblk, k)`` byte arrays or element-major ``(k, nblk)`` ones (``.T``)."""
    return np.concatenate(fields, axis=1)


def _q5_fields(xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """qh (4 bytes: bit j = bit 4 of element j) and qs (low nibbles) of 5-bit values ``(32, nblk)``."""
    return pack_qh(xi).T, pack_nibbles(xi & 0x0F).T


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
            for sl in row_chunks(nrows, n):
                x = rows[sl]
                nr = x.shape[0]
                xt = blocks_t(x, QK)
                if use_w:
                    sigma2 = row_sum_sq(x) / F32(n)
                    x3 = xt.reshape(QK, nr, nb)
                    w = qw_t * np.sqrt(sigma2[None, :, None] + x3 * x3)
                    blk = cls._impl(xt, w.reshape(QK, nr * nb))
                else:
                    blk = cls._ref(xt)
                out[sl] = blk.reshape(nr, -1)
        return out


class Q4_0(_Legacy, qtype=T.Q4_0):
    @staticmethod
    def _ref(xt):  # quantize_row_q4_0_ref
        _, mx = absmax_first(xt)
        d = mx / F32(-8)
        xi = np.minimum(_int8(xt * safe_recip(d) + F32(8.5)), 15).astype(np.uint8)
        return _blocks(_h(d), pack_nibbles(xi).T)

    @staticmethod
    def _impl(xt, w):  # quantize_row_q4_0_impl
        d, L = make_qx_quants(8, xt, 1, w)
        return _blocks(_h(d), pack_nibbles(L).T)


class Q4_1(_Legacy, qtype=T.Q4_1):
    @staticmethod
    def _ref(xt):  # quantize_row_q4_1_ref
        mn, mx = _first_min_max(xt)
        d = (mx - mn) / F32(15)
        xi = np.minimum(_int8((xt - mn) * safe_recip(d) + F32(0.5)), 15).astype(np.uint8)
        return _blocks(_h(d), _h(mn), pack_nibbles(xi).T)

    @staticmethod
    def _impl(xt, w):  # quantize_row_q4_1_impl
        d, the_min, L = make_qkx3_quants(15, xt, w, -0.9, 0.05, 36, False)
        return _blocks(_h(d), _h(-the_min), pack_nibbles(L).T)


class Q5_0(_Legacy, qtype=T.Q5_0):
    @staticmethod
    def _ref(xt):  # quantize_row_q5_0_ref
        _, mx = absmax_first(xt)
        d = mx / F32(-16)
        xi = np.minimum(_int8(xt * safe_recip(d) + F32(16.5)), 31).astype(np.uint8)
        return _blocks(_h(d), *_q5_fields(xi))

    @staticmethod
    def _impl(xt, w):  # quantize_row_q5_0_impl
        d, L = make_qx_quants(16, xt, 1, w)
        return _blocks(_h(d), *_q5_fields(L.astype(np.uint8)))


class Q5_1(_Legacy, qtype=T.Q5_1):
    @staticmethod
    def _ref(xt):  # quantize_row_q5_1_ref
        mn, mx = _first_min_max(xt)
        d = (mx - mn) / F32(31)
        xi = _int8((xt - mn) * safe_recip(d) + F32(0.5)).astype(np.uint8)  # (uint8_t)(x0 + 0.5f)
        return _blocks(_h(d), _h(mn), *_q5_fields(xi))

    @staticmethod
    def _impl(xt, w):  # quantize_row_q5_1_impl
        d, the_min, L = make_qkx3_quants(31, xt, w, -0.9, 0.05, 36, False)
        return _blocks(_h(d), _h(-the_min), *_q5_fields(L.astype(np.uint8)))


class Q8_0(_Legacy, qtype=T.Q8_0):
    uses_weights = False  # quantize_q8_0 ignores quant_weights

    @staticmethod
    def _ref(xt):  # quantize_row_q8_0_ref
        amax = np.max(np.abs(xt), axis=0)
        d = amax / F32(127)
        q = _int8(roundf(xt * safe_recip(d)))
        return _blocks(_h(d), q.view(np.uint8).T)
