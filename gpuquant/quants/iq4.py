"""Non-linear 4-bit types IQ4_NL (32-element blocks) and IQ4_XS (256-element super-blocks of 8 x 32).

Both run ggml's ``quantize_row_iq4_nl_impl`` with ``ntry = 7`` through ``ggml_quantize_chunk``, with or
without importance weights: per 32-block a scale search over 16 candidate scales, each candidate mapping
every element to the nearest of the 16 ``kvalues_iq4nl`` (``best_index_int8``) and scoring the weighted
least-squares fit. IQ4_XS then quantizes the 8 block scales to 6 bits against one fp16 super-block scale
and re-maps the elements.

Speed: ``best_index_int8`` is replaced by an exact table lookup (``_NearestLut``) and the 16 candidates of
a chunk of blocks are evaluated together on ``(32, 16, blocks)`` element-major arrays, a cache-sized chunk
at a time; the sums over the 32 elements keep the C order (``seq_sum``).

``dequantize_rows`` is ``dequantize_row_iq4_nl`` / ``_xs``: ``d * kvalues[q]`` (IQ4_XS: ``(d * (ls - 32)) *
kvalues[q]``), the table values of every quant byte's two nibbles looked up at once.
"""
from __future__ import annotations

import numpy as np
from gguf.quants import IQ4_NL as _GGUF_IQ4_NL

from . import GGMLQuantizationType as T
from . import Kernel, QuantType
from .common import (
    F32,
    GROUP_MAX_EPS,
    absmax_first,
    dequantize_blocks,
    fp16_bits,
    fp16_to_fp32_ggml,
    levels_int,
    pack_nibbles,
    row_chunks,
    safe_recip,
    seq_sum,
)

# kvalues_iq4nl (ggml-common.h), a format fact taken from gguf-py
KVALUES = np.array(_GGUF_IQ4_NL.kvalues, dtype=np.int8)
_KV_F = KVALUES.astype(F32)
NTRY = 7  # ggml_quantize_chunk passes ntry = 7 for both types
_BLOCKS_PER_CHUNK = 256  # 32 x 16 x 256 float32 = 512 KiB per work array


# kvalues of the low and the high nibble of every byte, as float32
_KV_LO = _KV_F[np.arange(256) & 0x0F]
_KV_HI = _KV_F[np.arange(256) >> 4]


def _dequantize_32(d: np.ndarray, qs: np.ndarray, y: np.ndarray) -> None:
    """``y[j] = d * kvalues[qs[j] & 0xf]``, ``y[j + 16] = d * kvalues[qs[j] >> 4]`` for 32-value blocks:
    ``d`` ``(nb, 1)``, ``qs`` ``(nb, 16)``, ``y`` ``(nb, 32)``."""
    np.take(_KV_LO, qs, out=y[:, :16])
    np.take(_KV_HI, qs, out=y[:, 16:])
    np.multiply(d, y, out=y)


def _ordered_key(f: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys ordered like the floats (-0.0 and +0.0 share the key 0)."""
    b = np.asarray(f, dtype=F32).view(np.int32).astype(np.int64)
    return np.where(b < 0, -(b & 0x7FFFFFFF), b)


def _from_key(k: int) -> np.float32:
    b = -k | 0x80000000 if k < 0 else k
    return np.array([b], dtype=np.uint32).view(F32)[0]


class _NearestLut:
    """Exact ``best_index_int8(n, values, x)`` of ggml-quants.c as a table lookup.

    In C, for ``values[k] <= x < values[k+1]`` the result is ``k`` when
    ``x - values[k] < values[k+1] - x`` (both differences rounded to float32) and ``k+1`` otherwise. That
    predicate is monotone in ``x``, so each gap has one float32 threshold ``t_k`` (the smallest ``x``
    choosing ``k+1``, found by bisection over float32 bit patterns) and the result is ``#{k: t_k <= x}``.
    Lookup: ``x`` is clamped to ``[-128, 128]``, cell ``c = (int)(x + 128.5)`` (any error is far below the
    widening ``_W``), and ``index = base[c] + (x >= thr[c])`` where ``thr[c]`` is the one threshold near
    cell ``c`` (thresholds are > 11 apart) or +inf and ``base[c]`` counts the thresholds below the cell.
    NaN maps to ``n - 1`` like the C code (all comparisons false); callers fix NaNs (``fix_nan``).
    """

    _W = 0.01

    def __init__(self, values: np.ndarray) -> None:
        vf = values.astype(F32)
        thr = []
        for a, b in zip(vf[:-1], vf[1:]):
            lo, hi = int(_ordered_key(a)), int(_ordered_key(b))  # pred(lo) true, pred(hi) false
            while hi - lo > 1:
                mid = (lo + hi) // 2
                x = _from_key(mid)
                if F32(x - a) < F32(b - x):
                    lo = mid
                else:
                    hi = mid
            thr.append(_from_key(hi))
        self.thresholds = np.array(thr, dtype=F32)
        assert self.thresholds.min() > -127 and self.thresholds.max() < 127
        assert np.diff(self.thresholds).min() > 2
        cells = np.arange(257, dtype=np.float64) - 128.5  # cell c covers about [c-128.5, c-127.5)
        lo_edge, hi_edge = cells - self._W, cells + 1 + self._W
        t = self.thresholds.astype(np.float64)
        self.base = (t[None, :] < lo_edge[:, None]).sum(axis=1).astype(np.intp)
        inside = (t[None, :] >= lo_edge[:, None]) & (t[None, :] <= hi_edge[:, None])
        assert inside.sum(axis=1).max() <= 1
        thr_c = np.full(257, np.inf, dtype=F32)
        rows, cols = np.nonzero(inside)
        thr_c[rows] = self.thresholds[cols]
        self.thr = thr_c

    def index(self, al: np.ndarray) -> np.ndarray:
        """``best_index_int8`` of every element of float32 ``al`` (intp). Modifies nothing."""
        a = np.clip(al, F32(-128.0), F32(128.0))  # clamping keeps every comparison with a threshold
        ci = np.add(a, F32(128.5)).astype(np.intp)
        idx = self.base[ci]
        idx += a >= self.thr[ci]  # thr = +inf where a cell has no threshold; a is finite here
        return idx

    def reference(self, al: np.ndarray) -> np.ndarray:
        """Slow direct form (for tests): ``searchsorted`` over the thresholds, NaN -> last."""
        return np.searchsorted(self.thresholds, np.asarray(al, dtype=F32), side="right")


LUT = _NearestLut(KVALUES)


def _nearest(al: np.ndarray, no_nan: bool) -> np.ndarray:
    """``best_index_int8`` of ``al = scale * x``. ``no_nan``: the caller knows ``al`` has no NaN (finite
    scales and inputs). A NaN (``inf * 0`` from a scale that overflowed) compares false everywhere in C and
    lands on the last index."""
    if no_nan:
        return LUT.index(al)
    nan = np.isnan(al)
    idx = LUT.index(np.where(nan, F32(0), al))
    idx[nan] = len(KVALUES) - 1
    return idx


def _search_scales(xt: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per 32-block scale of ``quantize_row_iq4_nl_impl`` (the ``scales[ib]`` before any requantization).

    ``xt``, ``w``: element-major ``(32, nblk)``. Returns float32 ``(nblk,)``, 0 for blocks with
    ``amax < GROUP_MAX_EPS``.
    """
    nblk = xt.shape[1]
    out = np.empty(nblk, dtype=F32)
    finite_x = bool(np.isfinite(xt).all())  # NaN/inf inputs (which llama-quantize refuses) may make NaNs
    ntrial = 2 * NTRY + 2
    itry = (np.arange(-NTRY, NTRY + 1, dtype=np.int32) + int(KVALUES[0])).astype(F32)[:, None]
    for b0 in range(0, nblk, _BLOCKS_PER_CHUNK):
        x = xt[:, b0:b0 + _BLOCKS_PER_CHUNK]
        wb = w[:, b0:b0 + _BLOCKS_PER_CHUNK]
        amax, mx = absmax_first(x)
        zero = amax < GROUP_MAX_EPS
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ids = np.empty((ntrial, x.shape[1]), dtype=F32)
            # first candidate: d = -max/values[0]; id = 1/d
            ids[0] = np.divide(F32(1), np.divide(-mx, _KV_F[0], dtype=F32), dtype=F32)
            # then id = (itry + values[0])/max for itry = -ntry..ntry
            ids[1:] = np.divide(itry, mx[None, :], dtype=F32)
            ids[:, zero] = 0  # all-zero blocks are skipped in C; keep their lanes finite
            al = x[:, None, :] * ids[None, :, :]  # (32, ntrial, B)
            q = _KV_F[_nearest(al, finite_x and bool(np.isfinite(ids).all()))]
            wq = wb[:, None, :] * q
            sumqx = seq_sum(wq * x[:, None, :])
            sumq2 = seq_sum(wq * q)
            pos = sumq2 > 0
            d = np.where(pos[0], sumqx[0] / sumq2[0], F32(0)).astype(F32)
            best = d * sumqx[0]
            for t in range(1, ntrial):
                sqx, sq2 = sumqx[t], sumq2[t]
                better = pos[t] & (sqx * sqx > best * sq2)
                if better.any():
                    d = np.where(better, sqx / sq2, d).astype(F32)
                    best = np.where(better, d * sqx, best).astype(F32)
        out[b0:b0 + x.shape[1]] = np.where(zero, F32(0), d)
    return out


def _map_elements(xt: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """``L[j] = best_index_int8(16, values, inv*x[j])`` for element-major ``xt`` ``(32, nblk)`` (uint8)."""
    no_nan = bool(np.isfinite(inv).all()) and bool(np.isfinite(xt).all())
    with np.errstate(invalid="ignore", over="ignore"):
        return _nearest(xt * inv, no_nan).astype(np.uint8)


def _weights(xt: np.ndarray, qw_t: np.ndarray | None, sigma2: np.ndarray) -> np.ndarray:
    """``qw[j] * sqrtf(sigma2 + x[j]*x[j])`` with weights, ``x[j]*x[j]`` without (element-major)."""
    if qw_t is None:
        return xt * xt
    return qw_t * np.sqrt(sigma2 + xt * xt)


def _sigma2(xt_sb: np.ndarray, S: int) -> np.ndarray:
    """``sigma2 = sum x*x over the super-block (in order); sigma2 *= 2.f/S`` for ``(S, nsb)``."""
    return seq_sum(xt_sb * xt_sb) * F32(2.0 / S)


class _IQ4(QuantType):
    """Shared row driver: cache-sized chunks of rows, the importance weights laid out once."""

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        rows = np.asarray(rows, dtype=F32)
        nrows, n = rows.shape
        out = np.empty((nrows, cls.row_size(n)), dtype=np.uint8)
        qw_t = None
        if quant_weights is not None:
            qw_t = np.ascontiguousarray(cls._weights_t(np.asarray(quant_weights, dtype=F32), n))
        for sl in row_chunks(nrows, n, 1 << 17):
            x = rows[sl]
            out[sl] = cls._rows(x, qw_t).reshape(x.shape[0], -1)
        return out

    @staticmethod
    def _weights_t(qw: np.ndarray, n: int) -> np.ndarray:
        """The weights of one row in the element-major layout of ``_rows``."""
        raise NotImplementedError

    @classmethod
    def _rows(cls, x: np.ndarray, qw_t: np.ndarray | None) -> np.ndarray:
        """Rows ``(nr, n)`` -> their blocks ``(nr * blocks per row, type_size)`` uint8."""
        raise NotImplementedError


class IQ4_NL(_IQ4, qtype=T.IQ4_NL):
    """``quantize_iq4_nl``: ``quantize_row_iq4_nl_impl(32, 32, ..., ntry=7)`` per block."""

    fp16_fields = {"d": 0}
    kernel = Kernel(threads=128, weighted=True)

    @staticmethod
    def _weights_t(qw, n):  # (32, nb): element j of block ib
        return qw.reshape(n // 32, 32).T

    @classmethod
    def dequantize_rows(cls, raw):  # dequantize_row_iq4_nl
        def blocks(b, y):
            _dequantize_32(fp16_to_fp32_ggml(b[:, 0:2].view("<u2")), b[:, 2:18], y)
        return dequantize_blocks(raw, 32, cls.type_size, blocks)

    @classmethod
    def _rows(cls, x, qw_t):
        nr = x.shape[0]
        xt = np.ascontiguousarray(x.reshape(-1, 32).T)  # (32, nr*nb)
        with np.errstate(over="ignore", invalid="ignore"):
            sigma2 = _sigma2(xt, 32)
            qwb = None if qw_t is None else np.tile(qw_t, (1, nr))
            w = _weights(xt, qwb, sigma2)
        d = _search_scales(xt, w)
        # dh = fp16(scales[0]); L = best_index(1/scales[0] * x)
        L = _map_elements(xt, safe_recip(d))
        return np.concatenate([fp16_bits(d).view(np.uint8).reshape(-1, 2), pack_nibbles(L).T], axis=1)


class IQ4_XS(_IQ4, qtype=T.IQ4_XS):
    """``quantize_iq4_xs``: ``quantize_row_iq4_nl_impl(256, 32, ..., ntry=7)`` per super-block."""

    fp16_fields = {"d": 0}
    kernel = Kernel(threads=128, items_per_block=16, weighted=True)

    @staticmethod
    def _weights_t(qw, n):  # (32, 8, nsb_row): element j of block ib of super-block s
        return qw.reshape(n // 256, 8, 32).transpose(2, 1, 0)

    @classmethod
    def dequantize_rows(cls, raw):  # dequantize_row_iq4_xs
        return dequantize_blocks(raw, 256, cls.type_size, cls._dequantize, chunk_blocks=1024)

    @staticmethod
    def _dequantize(b, y):
        S = b.shape[0]
        d = fp16_to_fp32_ggml(b[:, 0:2].view("<u2"))  # (S, 1)
        h = b[:, 2:4].view("<u2").astype(np.int32)  # scales_h
        lo = b[:, 4:8].astype(np.int32)
        ls = np.empty((S, 8), np.int32)
        ls[:, 0::2], ls[:, 1::2] = lo & 0xF, lo >> 4
        ls |= ((h >> (2 * np.arange(8, dtype=np.int32))) & 3) << 4
        dl = d * (ls - 32).astype(F32)  # (S, 8)
        _dequantize_32(dl.reshape(-1, 1), b[:, 8:136].reshape(-1, 16), y.reshape(-1, 32))

    @classmethod
    def _rows(cls, x, qw_t):
        nr = x.shape[0]
        nsb = x.size // 256
        x3 = x.reshape(nsb, 8, 32)
        with np.errstate(over="ignore", invalid="ignore"):
            sigma2 = _sigma2(np.ascontiguousarray(x.reshape(nsb, 256).T), 256)  # (nsb,)
            xt = np.ascontiguousarray(x3.transpose(2, 1, 0))  # (32, 8, nsb)
            qwb = None if qw_t is None else np.tile(qw_t, (1, 1, nr))
            w = _weights(xt, qwb, sigma2)
        scales = _search_scales(xt.reshape(32, -1), w.reshape(32, -1)).reshape(8, nsb)
        # super-block scale: first block scale of largest magnitude; d = -max_scale/32
        _, max_scale = absmax_first(scales)
        d = -max_scale / F32(32)
        idd = safe_recip(d)
        l = levels_int(idd * scales, -32, 31)  # (8, nsb)
        dl = d * l.astype(F32)
        L = _map_elements(xt.reshape(32, -1), safe_recip(dl).reshape(-1))  # (32, 8*nsb)
        L = L.reshape(32, 8, nsb)
        l = (l + 32).astype(np.uint8)
        scales_l = (l[0::2] & 0x0F) | ((l[1::2] & 0x0F) << 4)  # (4, nsb)
        scales_h = np.zeros(nsb, dtype=np.uint16)
        for ib in range(8):
            scales_h |= (l[ib] >> 4).astype(np.uint16) << (2 * ib)
        qs = pack_nibbles(L)  # (16, 8, nsb): qs[16*ib + j]
        return np.concatenate([
            fp16_bits(d).view(np.uint8).reshape(-1, 2),
            scales_h.view(np.uint8).reshape(-1, 2),
            scales_l.T,
            qs.transpose(2, 1, 0).reshape(nsb, 128),
        ], axis=1)
