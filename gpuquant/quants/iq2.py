"""IQ2_XXS, IQ2_XS, IQ2_S: numpy reference quantizers, byte-identical to ggml-quants.c.

``quantize_iq2_xxs`` / ``quantize_iq2_xs`` / ``quantize_iq2_s`` run ``quantize_row_iq2_*_impl`` per row:
per 256-value super-block, per scale group (32 values for IQ2_XXS, 16 for the others) a series of trial
scales, each octet of the group rounded onto the grid of ``grids.iq2_grid`` (``iq2_search``), the best
trial kept, refined once, and the group scales coded as 4-bit multiples of ``max_scale/31``. IQ2_XXS and
IQ2_XS require importance weights (``ggml_quantize_requires_imatrix``). Work is done on chunks of
super-blocks with the groups as columns; the searches run on all groups and trials of a chunk at once.

ggml aborts on a few inputs (see ``iq2_search``); :class:`GGMLAbort` (a ValueError) is raised instead.
"""
from __future__ import annotations

import numpy as np
import gguf.quants as gq

from . import GGMLAbort, Kernel, QuantType
from . import GGMLQuantizationType as T
from .common import F32, GROUP_MAX_EPS, fp16_bits, fp16_to_fp32, nearest_int, quantize_superblocks, seq_sum
from .grids import Grid, iq2_grid
from .iq2_search import (
    accept_trials,
    flip_parity,
    octet_levels,
    pack_octets,
    running_max_first,
    signed_values,
    weighted_sums,
)
from .kquants_search import make_qp_quants

__all__ = ["IQ2_S", "IQ2_XS", "IQ2_XXS", "kernel_tables"]

QK_K = 256
GROUP_MAX_EPS_IQ2_S = F32(1e-8)
CHUNK_SUPERBLOCKS = 1024  # super-blocks per search batch (the rounding and sums work on smaller slices)
KMAX_Q = 3


def _trial_ids(steps: range, base: np.ndarray) -> np.ndarray:
    """``id = (2*kMaxQ-1 + is*0.1f)/base`` for each ``is`` of ``steps``: ``(T, G)``."""
    num = np.array([F32(2 * KMAX_Q - 1) + F32(s) * F32(0.1) for s in steps], dtype=F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return num[:, None] / base[None, :]


def _recip(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return np.divide(F32(1), v, dtype=F32)


def _sign_bits(neg: np.ndarray) -> np.ndarray:
    """``s |= 1 << i`` over axis 1 of a ``(K, 8, G)`` mask -> uint8 ``(K, G)``."""
    s = np.zeros((neg.shape[0], neg.shape[2]), dtype=np.uint8)
    for i in range(8):
        s |= neg[:, i].astype(np.uint8) << i
    return s


def _groups(a: np.ndarray, n: int) -> np.ndarray:
    """(S, 256) -> (n/8, 8, S*256/n): element ``8k + i`` of group ``ib`` of super-block ``s`` at
    ``[k, i, s*256/n + ib]``."""
    S = a.shape[0]
    return np.ascontiguousarray(a.reshape(S, QK_K // n, n // 8, 8).transpose(2, 3, 0, 1)).reshape(n // 8, 8, -1)


def _sum_x2(x: np.ndarray) -> np.ndarray:
    """``float sumx2 = 0; for (i < QK_K) sumx2 += xbl[i]*xbl[i];`` per super-block of (S, 256)."""
    xt = np.ascontiguousarray(x.T)
    with np.errstate(over="ignore", invalid="ignore"):
        return seq_sum(xt * xt)


KSIGNS = np.frombuffer(gq.IQ2_XXS.ksigns, dtype=np.uint8)  # ksigns_iq2xs: 7 sign bits + parity bit


def _grid_values(qtype, gguf_cls) -> np.ndarray:
    """The dequantization grid (``iq2xxs_grid`` ...): ``grid_map[l]`` per level, ``(grid_size, 8)`` float32."""
    levels = (iq2_grid(qtype).grid.astype(np.intp) - 1) // 2
    return np.array(gguf_cls.grid_map, dtype=F32)[levels]


def _dequantize_octets(d: np.ndarray, code: np.ndarray, gidx: np.ndarray, signs: np.ndarray,
                       values: np.ndarray) -> np.ndarray:
    """``db = d*(0.5f + code)*0.25f; y[j] = db * grid[j] * (signs & 1<<j ? -1.f : 1.f)`` for ``(nb, 32)``
    octets (4-bit scale ``code``, grid index, sign byte each) of blocks with fp16 scales ``d`` -> (nb, 256)."""
    nb = len(d)
    with np.errstate(over="ignore", invalid="ignore"):
        db = (fp16_to_fp32(d)[:, None] * (F32(0.5) + code.astype(F32))) * F32(0.25)  # (nb, 32)
        y = db[:, :, None] * np.take(values, gidx.reshape(-1), axis=0).reshape(nb, 32, 8)
    neg = np.unpackbits(signs.astype(np.uint8)[:, :, None], axis=2, bitorder="little").astype(bool)
    np.negative(y, out=y, where=neg)  # the x86 build flips the sign bit (NaNs included)
    return y.reshape(nb, 256)


class _IQ2(QuantType):
    """Shared row driver and group search of the three types."""

    ggml_aborts = True  # iq2_find_best_neighbour's and the scale's GGML_ASSERTs, IQ2_XXS's "not on grid"
    group: int  # values per scale group
    steps: range  # the trial ``is`` values
    eps: np.float32  # the group's all-zero threshold

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        return quantize_superblocks(cls, rows, quant_weights, CHUNK_SUPERBLOCKS, cls._superblocks)

    @classmethod
    def _weights(cls, xb: np.ndarray, qw: np.ndarray | None, sigma2: np.ndarray) -> np.ndarray:
        """``weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i])`` on ``(K, 8, G)``."""
        with np.errstate(over="ignore", invalid="ignore"):
            return qw * np.sqrt(sigma2 + xb * xb)

    @classmethod
    def _superblocks(cls, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        """(S, 256) super-blocks and their weights -> (S, type_size) blocks."""
        raise NotImplementedError

    @classmethod
    def _prepare(cls, x: np.ndarray, qw: np.ndarray | None, sigma2: np.ndarray, parity: bool):
        """Weights, sign-folded values and sign bits of every group: ``(K, 8, G)`` arrays, signs ``(K, G)``."""
        n = cls.group
        xb = _groups(x, n)
        s2 = np.repeat(sigma2, QK_K // n)
        weight = cls._weights(xb, None if qw is None else _groups(qw, n), s2)
        with np.errstate(invalid="ignore"):
            waux = np.sqrt(weight)
        xval, neg = signed_values(xb)
        if parity:
            flip_parity(xval, neg, weight, xb)
        signs = _sign_bits(neg)
        return xval, weight, waux, (signs & 127 if parity else signs)

    @classmethod
    def _raise_first_abort(cls, live: np.ndarray, no_neighbour: np.ndarray, nan_scale: np.ndarray,
                           octets: np.ndarray | None = None) -> None:
        """Raise ``GGMLAbort`` for the first group (in C order) of ``live`` on which ggml aborts, naming
        the first check C fails there: a search without a neighbour (in the trials), an octet off the
        grid at the end (``octets`` (K, n): 1 past the map, 2 off the grid), a NaN scale."""
        bad = no_neighbour | nan_scale
        if octets is not None:
            bad = bad | (octets > 0).any(axis=0)
        if not bad.any():
            return
        i = int(np.flatnonzero(bad)[0])
        if no_neighbour[i]:
            what = "iq2_find_best_neighbour found no neighbour (GGML_ASSERT)"
        elif octets is not None and (octets[:, i] > 0).any():
            code = int(octets[np.flatnonzero(octets[:, i])[0], i])
            what = ("found point not on grid (Oops, GGML_ABORT)" if code == 2 else
                    "index past the grid map (C reads out of bounds, then prints Oops or GGML_ASSERT(scale >= 0) "
                    "fails on the NaN scale)")
        else:
            what = "NaN scale (GGML_ASSERT(scale >= 0))"
        raise GGMLAbort(what, int(live[i]) // (QK_K // cls.group))


# ----------------------------------------------------------------------------- IQ2_XS and IQ2_S


def _search_16(cls, grid: Grid, xval, weight, waux, mx):
    """The group search of ``quantize_row_iq2_xs_impl`` / ``quantize_row_iq2_s_impl`` on groups that are
    not all zero: ``(K=2, 8, G)`` arrays, ``mx`` the group maxima. Returns (scale (G,), L int8 (2, 8, G),
    the groups on which ggml asserts in ``iq2_find_best_neighbour``)."""
    K, _, G = xval.shape
    xv = xval.reshape(16, G)
    w16 = weight.reshape(16, G)
    with np.errstate(over="ignore", invalid="ignore"):
        wx = w16 * xv
    ids = _trial_ids(cls.steps, mx)
    L, on_grid, aborted = octet_levels(grid, xval, waux, ids, _recip(ids))
    bad = aborted.any(axis=(0, 1))
    sumqx, sumq2 = weighted_sums(wx, w16, L.reshape(16, len(ids), G))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale0 = mx / F32(2 * KMAX_Q - 1)
    scale, kept = accept_trials(sumqx, sumq2, scale0)
    g = np.arange(G)
    has = kept >= 0
    kt = np.where(has, kept, 0)
    Lb = np.where(has, L[:, :, kt, g], 0).astype(np.int8)  # (K, 8, G)
    is_on = np.where(has, on_grid[:, kt, g], True)  # (K, G)
    need = np.flatnonzero(~is_on.all(axis=0) & (scale > 0))
    if need.size:
        sc = scale[need]
        Lr, _, aborted = octet_levels(grid, xval[:, :, need], waux[:, :, need], _recip(sc)[None], sc[None],
                                      active=~is_on[:, None, need])
        bad |= _at(G, need, aborted)
        redo = ~is_on[:, need]  # (K, n)
        Lb[:, :, need] = np.where(redo[:, None, :], Lr[:, :, 0], Lb[:, :, need])
        sx, s2 = weighted_sums(wx[:, need], w16[:, need], Lb[:, :, need].reshape(16, -1))
        with np.errstate(divide="ignore", invalid="ignore"):
            scale[need] = np.where(s2 > 0, sx / s2, sc)
    return scale, Lb, bad


def _at(G: int, idx: np.ndarray, aborted: np.ndarray) -> np.ndarray:
    """Groups ``idx`` of ``G`` marked where ``aborted`` ``(K, T, n)`` has any entry."""
    bad = np.zeros(G, dtype=bool)
    bad[idx] = aborted.any(axis=(0, 1))
    return bad


class _IQ2_16(_IQ2):
    """IQ2_XS and IQ2_S: groups of 16 (two octets), 19 trial scales around ``max/5``."""

    group = 16
    steps = range(-9, 10)
    parity = True

    @classmethod
    def _sigma2(cls, sumx2):
        raise NotImplementedError

    @classmethod
    def _groups_search(cls, x: np.ndarray, qw: np.ndarray | None):
        """Per group: (scale (G,), grid index (2, G), signs (2, G), processed (G,))."""
        grid = iq2_grid(cls.qtype)
        sigma2 = cls._sigma2(_sum_x2(x))
        xval, weight, waux, signs = cls._prepare(x, qw, sigma2, cls.parity)
        G = xval.shape[2]
        mx = running_max_first(xval.reshape(16, G))
        live = np.flatnonzero(~(mx < cls.eps))
        scale = np.zeros(G, dtype=F32)
        gi = np.zeros((2, G), dtype=np.int32)
        if live.size:
            sc, Lb, bad = _search_16(cls, grid, xval[:, :, live], weight[:, :, live], waux[:, :, live], mx[live])
            cls._raise_first_abort(live, bad, ~(sc >= 0))
            neg = sc < 0
            sc = np.where(neg, -sc, sc)
            signs[:, live] = np.where(neg, ~signs[:, live], signs[:, live]) & cls.sign_mask
            scale[live] = sc
            gi[:, live] = grid.map[pack_octets(Lb)]
        processed = np.zeros(G, dtype=bool)
        processed[live] = True
        signs[:, ~processed] = 0
        return scale, gi, signs, processed

    @staticmethod
    def _scale_codes(scales: np.ndarray):
        """``max_scale``, ``d = max_scale/31`` and the 4-bit codes of ``(S, 16)`` group scales."""
        max_scale = scales.max(axis=1)  # MAX(max_scale, scale) from 0; scales are >= 0 and not NaN
        d = max_scale / F32(31)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            idd = _recip(d)
            v = idd[:, None] * scales
            v -= F32(1)
            v *= F32(0.5)
        return max_scale, d, np.clip(nearest_int(v), 0, 15).astype(np.uint8)


class IQ2_XS(_IQ2_16, qtype=T.IQ2_XS):
    """``quantize_iq2_xs``: ``quantize_row_iq2_xs_impl`` per row (weights required)."""

    kernel = Kernel(threads=128, item_elems=256, items_per_block=8, sync=True)  # a thread per group
    fp16_fields = {"d": 0}
    requires_imatrix = True
    eps = GROUP_MAX_EPS
    sign_mask = np.uint8(127)

    @classmethod
    def dequantize_rows(cls, raw):
        """``dequantize_row_iq2_xs``: 9-bit grid index and 7 signs (``ksigns_iq2xs``) per octet."""
        b = np.ascontiguousarray(raw).reshape(-1, cls.type_size)
        d = b[:, :2].copy().view(np.uint16)[:, 0]
        qs = b[:, 2:66].copy().view("<u2")  # (nb, 32)
        sc = b[:, 66:74]
        code = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(-1, 16).repeat(2, axis=1)  # octet 4*ib + l: db[l/2]
        y = _dequantize_octets(d, code, qs & 511, KSIGNS[qs >> 9], _grid_values(T.IQ2_XS, gq.IQ2_XS))
        return y.reshape(raw.shape[0], -1)

    @classmethod
    def _sigma2(cls, sumx2):
        return sumx2 / F32(QK_K)

    @classmethod
    def _superblocks(cls, x, qw):
        S = x.shape[0]
        scale, gi, signs, _ = cls._groups_search(x, qw)
        max_scale, d, l = cls._scale_codes(scale.reshape(S, 16))
        zero = max_scale == 0
        q2 = (gi.astype(np.uint16) | (signs.astype(np.uint16) << 9))  # (2, G): qs[2*ib + k]
        qs = q2.reshape(2, S, 16).transpose(1, 2, 0).reshape(S, 32)
        sc = l[:, 0::2] | (l[:, 1::2] << 4)
        d16 = np.where(zero, 0, fp16_bits(d)).astype(np.uint16)
        qs[zero] = 0
        sc[zero] = 0
        return np.concatenate([d16.view(np.uint8).reshape(S, 2), qs.view(np.uint8), sc], axis=1)


class IQ2_S(_IQ2_16, qtype=T.IQ2_S):
    """``quantize_iq2_s``: ``quantize_row_iq2_s_impl`` per row (weights optional)."""

    kernel = Kernel(threads=128, item_elems=256, items_per_block=8, sync=True)  # a thread per group
    fp16_fields = {"d": 0}
    eps = GROUP_MAX_EPS_IQ2_S
    parity = False
    sign_mask = np.uint8(255)

    @classmethod
    def _sigma2(cls, sumx2):
        with np.errstate(over="ignore"):
            return (F32(2) * sumx2) / F32(QK_K)

    @classmethod
    def _weights(cls, xb, qw, sigma2):
        if qw is not None:
            return super()._weights(xb, qw, sigma2)
        with np.errstate(over="ignore", invalid="ignore"):
            return F32(0.25) * sigma2 + xb * xb

    @classmethod
    def dequantize_rows(cls, raw):
        """``dequantize_row_iq2_s``: 8 + 2 (``qh``) bit grid index and a sign byte per octet."""
        b = np.ascontiguousarray(raw).reshape(-1, cls.type_size)
        d = b[:, :2].copy().view(np.uint16)[:, 0]
        qs, signs, qh, sc = b[:, 2:34], b[:, 34:66], b[:, 66:74], b[:, 74:82]
        hi = (qh[:, :, None] >> (2 * np.arange(4, dtype=np.uint8))) & 3  # (nb, 8, 4): octet 4*ib + l
        gidx = qs.astype(np.intp) | (hi.reshape(-1, 32).astype(np.intp) << 8)
        code = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(-1, 16).repeat(2, axis=1)
        y = _dequantize_octets(d, code, gidx, signs, _grid_values(T.IQ2_S, gq.IQ2_S))
        return y.reshape(raw.shape[0], -1)

    @classmethod
    def _superblocks(cls, x, qw):
        S = x.shape[0]
        scale, gi, signs, _ = cls._groups_search(x, qw)
        max_scale, d, l = cls._scale_codes(scale.reshape(S, 16))
        zero = max_scale == 0
        gi3 = gi.reshape(2, S, 16).transpose(1, 2, 0).reshape(S, 32)  # i8 = 2*ib + k
        qs = (gi3 & 255).astype(np.uint8)
        hi = (gi3 >> 8).astype(np.uint8).reshape(S, 8, 4)
        qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).astype(np.uint8)
        sg = signs.reshape(2, S, 16).transpose(1, 2, 0).reshape(S, 32)
        with np.errstate(over="ignore"):
            d16 = np.where(zero, 0, fp16_bits(d * F32(0.9875))).astype(np.uint16)
        sc = (l[:, 0::2] | (l[:, 1::2] << 4)).astype(np.uint8)
        sc[zero] = 0
        return np.concatenate([d16.view(np.uint8).reshape(S, 2), qs, sg, qh, sc], axis=1)


# ----------------------------------------------------------------------------- IQ2_XXS


def _c_index(L: np.ndarray) -> np.ndarray:
    """The C ``uint16_t u |= L[i] << 2*i`` of int8 levels (sign-extended to int, truncated to 16 bits)."""
    u = np.zeros(L.shape[:1] + L.shape[2:], dtype=np.int32)
    for i in range(8):
        u |= L[:, i].astype(np.int32) << (2 * i)
    return u & 0xFFFF


class IQ2_XXS(_IQ2, qtype=T.IQ2_XXS):
    """``quantize_iq2_xxs``: ``quantize_row_iq2_xxs_impl`` per row (weights required): groups of 32 (four
    octets), a first scale from ``make_qp_quants``, 13 trials around it."""

    kernel = Kernel(threads=64, item_elems=256, items_per_block=8, sync=True)  # a thread per group
    fp16_fields = {"d": 0}
    requires_imatrix = True
    group = 32
    steps = range(-6, 7)
    eps = GROUP_MAX_EPS

    @classmethod
    def dequantize_rows(cls, raw):
        """``dequantize_row_iq2_xxs``: per 32 values two uint32: four 8-bit grid indices; four 7-bit sign
        indices (``ksigns_iq2xs``) and the 4-bit scale."""
        b = np.ascontiguousarray(raw).reshape(-1, cls.type_size)
        d = b[:, :2].copy().view(np.uint16)[:, 0]
        q = b[:, 2:66].copy().view("<u4").reshape(-1, 8, 2)
        gidx = q[:, :, 0:1] >> (8 * np.arange(4, dtype=np.uint32)) & 255  # (nb, 8, 4)
        sidx = q[:, :, 1:2] >> (7 * np.arange(4, dtype=np.uint32)) & 127
        code = np.repeat(q[:, :, 1] >> 28, 4, axis=1)
        y = _dequantize_octets(d, code, gidx.reshape(-1, 32).astype(np.intp), KSIGNS[sidx.reshape(-1, 32)],
                               _grid_values(T.IQ2_XXS, gq.IQ2_XXS))
        return y.reshape(raw.shape[0], -1)

    @classmethod
    def _search(cls, grid: Grid, xval, weight, waux):
        """The group search on groups past the all-zero test: returns (scale, L int8 (4, 8, G), bad)."""
        G = xval.shape[2]
        xv, w32 = xval.reshape(32, G), weight.reshape(32, G)
        scale, Lqp = make_qp_quants(xv, KMAX_Q + 1, w32)
        Lqp = Lqp.astype(np.uint8).view(np.int8).reshape(4, 8, G)  # the uint8_t stores read as int8_t
        with np.errstate(over="ignore", invalid="ignore"):
            eff_max = scale * F32(KMAX_Q)
            wx = w32 * xv
        live = ~(eff_max <= 0)
        out = np.zeros(G, dtype=F32)
        Lout = np.zeros((4, 8, G), dtype=np.int8)
        bad = np.zeros(G, dtype=bool)
        c = np.flatnonzero(live)
        if c.size == 0:
            return out, Lout, bad, live
        xval, waux, wx, w32 = xval[:, :, c], waux[:, :, c], wx[:, c], w32[:, c]
        ids = _trial_ids(cls.steps, eff_max[c])
        L, _, aborted = octet_levels(grid, xval, waux, ids, _recip(ids))
        bad[c] = aborted.any(axis=(0, 1))
        sumqx, sumq2 = weighted_sums(wx, w32, L.reshape(32, len(ids), -1))
        sc, kept = accept_trials(sumqx, sumq2, scale[c])
        g = np.arange(c.size)
        has = kept >= 0
        Lb = np.where(has, L[:, :, np.where(has, kept, 0), g], Lqp[:, :, c])
        pos = np.flatnonzero(sc > 0)
        if pos.size:
            s = sc[pos]
            Lr, _, aborted = octet_levels(grid, xval[:, :, pos], waux[:, :, pos], _recip(s)[None], s[None])
            bad[c[pos]] |= aborted.any(axis=(0, 1))
            Lb[:, :, pos] = Lr[:, :, 0]
            sx, s2 = weighted_sums(wx[:, pos], w32[:, pos], Lr[:, :, 0].reshape(32, -1))
            with np.errstate(divide="ignore", invalid="ignore"):
                sc[pos] = np.where(s2 > 0, sx / s2, s)
        out[c] = sc
        Lout[:, :, c] = Lb
        return out, Lout, bad, live

    @classmethod
    def _superblocks(cls, x, qw):
        S = x.shape[0]
        grid = iq2_grid(cls.qtype)
        xval, weight, waux, signs = cls._prepare(x, qw, _sum_x2(x) / F32(QK_K), parity=True)
        G = xval.shape[2]
        live = np.flatnonzero(~(running_max_first(xval.reshape(32, G)) < cls.eps))
        scale = np.zeros(G, dtype=F32)
        q_lo = np.zeros(G, dtype=np.uint32)  # q2[2*ib]: four grid indices
        q_hi = np.zeros(G, dtype=np.uint32)  # q2[2*ib+1]: four 7-bit signs (and the scale code)
        if live.size:
            sc, L, bad, done = cls._search(grid, xval[:, :, live], weight[:, :, live], waux[:, :, live])
            # only a NaN scale keeps make_qp_quants' levels (0..4, and negative ones), which may be off the
            # grid (C prints "Oops" and aborts) or past the map (C reads out of bounds)
            u = _c_index(L)  # (4, n)
            past = u >= grid.kmap_size
            octets = np.where(past, 1, np.where(grid.map[np.where(past, 0, u)] < 0, 2, 0)) * done
            cls._raise_first_abort(live, bad, ~(sc >= 0) & done, octets)
            live, sc, u = live[done], sc[done], u[:, done]
            gi = grid.map[u].astype(np.uint32)
            neg = sc < 0
            sg = np.where(neg, ~signs[:, live], signs[:, live]) & np.uint8(127)
            scale[live] = np.where(neg, -sc, sc)
            for k in range(4):
                q_lo[live] |= gi[k] << np.uint32(8 * k)
                q_hi[live] |= sg[k].astype(np.uint32) << np.uint32(7 * k)
        max_scale, d, l = _IQ2_16._scale_codes(scale.reshape(S, 8))
        zero = max_scale == 0
        q_hi |= l.reshape(-1).astype(np.uint32) << np.uint32(28)
        q2 = np.stack([q_lo.reshape(S, 8), q_hi.reshape(S, 8)], axis=2).reshape(S, 16)
        q2[zero] = 0
        d16 = np.where(zero, 0, fp16_bits(d)).astype(np.uint16)
        return np.concatenate([d16.view(np.uint8).reshape(S, 2), q2.view(np.uint8)], axis=1)


# ----------------------------------------------------------------------------- CUDA tables


def kernel_tables() -> dict[str, np.ndarray]:
    """The lookup tables of kernels/iq2.cu, from ``grids.iq2_grid``: per type the sorted packed grid
    (``<t>_kgrid``), the grid index of each octet of levels 0..2 by its base-3 code ``sum l[i]*3**i``
    (``<t>_map3``, -1 off the grid) and the neighbour lists of the off-grid codes, concatenated
    (``<t>_nb_list[<t>_nb_off[c]:<t>_nb_off[c + 1]]``, the C ``kneighbors`` lists); ``gq_iq2_ksigns`` and
    the grid byte values of the levels (``gq_iq2_values``). Only codes the rounding can reach get lists."""
    levels = (np.arange(3 ** 8)[:, None] // 3 ** np.arange(8)) % 3  # (6561, 8): level i of code c
    u = np.bitwise_or.reduce(levels << (2 * np.arange(8)), axis=1)
    out = {"gq_iq2_ksigns": KSIGNS, "gq_iq2_values": np.array(gq.IQ2_XXS.grid_map, dtype=np.uint8)}
    for t in (T.IQ2_XXS, T.IQ2_XS, T.IQ2_S):
        g = iq2_grid(t)
        name = "gq_" + t.name.lower().replace("_", "")
        if (np.diff(g.kgrid.astype(np.int32)) <= 0).any():
            raise ValueError(f"{t.name}: kgrid is not sorted")
        m = g.map[u]
        off = m < 0
        counts = np.where(off, g.nb_count[u], 0)
        if (counts[off] <= 0).any():
            raise ValueError(f"{t.name}: an empty neighbour list (iq2_find_best_neighbour asserts)")
        nb_off = np.concatenate(([0], np.cumsum(counts))).astype(np.uint32)
        lists = [g.neighbour_list(int(v)) for v in u[off]]
        out[name + "_kgrid"] = g.kgrid
        out[name + "_map3"] = np.where(off, -1, m).astype(np.int16)
        out[name + "_nb_off"] = nb_off
        out[name + "_nb_list"] = np.concatenate(lists).astype(np.uint16)
    return out
