"""IQ1_S and IQ1_M: numpy reference quantizers, byte-identical to ggml-quants.c.

``quantize_iq1_s`` / ``quantize_iq1_m`` run ``quantize_row_iq1_s_impl`` / ``quantize_row_iq1_m_impl`` per row:
per 256-value super-block, per scale group (32 values for IQ1_S, 16 for IQ1_M) an exhaustive search of the
splits of the sorted values into three levels (``iq1_search``), the chosen levels rounded onto the 2048-point
grid of ``grids.iq2_grid(IQ1_S)`` octet by octet (``iq1_find_best_neighbour2`` off the grid), the scale refit
when an octet moved, and the group scales coded in 3 bits against the super-block scale (IQ1_M: refit once
more over the whole super-block, its fp16 bits spread over the top nibbles of the four scale words). IQ1_S
requires importance weights (``ggml_quantize_requires_imatrix``); IQ1_M does not (``weight = x*x``), though
llama-quantize still refuses IQ1_M tensors without an imatrix (``tensor_requires_imatrix``, in ``mixes``).
Work is done on chunks of super-blocks with the groups as columns.

ggml aborts on a few inputs: a NaN scale (``GGML_ASSERT(scale >= 0)``) and an octet whose every neighbour
distance is NaN or not below ``FLT_MAX`` (C then scans the whole grid with values read past the octet and
asserts when that finds nothing either); :class:`GGMLAbort` (a ValueError) is raised instead.
"""
from __future__ import annotations

import numpy as np
import gguf.quants as gq

from . import GGMLAbort, Kernel, QuantType
from . import GGMLQuantizationType as T
from .common import F32, fp16_bits, fp16_to_fp32, nearest_int, quantize_superblocks, seq_sum
from .grids import iq2_grid, pack_levels
from .iq1_search import DELTA, XX, first_best, neighbours, refit_sums, sorted_prefix, split_pairs, \
    split_sums_m, split_sums_s
from .iq2_search import pack_octets, running_max_first

__all__ = ["IQ1_M", "IQ1_S", "kernel_tables"]

QK_K = 256
CHUNK_SUPERBLOCKS = 128  # super-blocks per batch: (candidates, groups) arrays of about 5 MiB


def _grid_levels() -> np.ndarray:
    """Levels 0..2 of every point of the IQ1 grid, ``(2048, 8)`` intp."""
    return (iq2_grid(T.IQ1_S).grid.astype(np.intp) - 1) // 2


def _sum_x2(x: np.ndarray) -> np.ndarray:
    """``float sumx2 = 0; for (i < QK_K) sumx2 += xbl[i]*xbl[i];`` per super-block of (S, 256)."""
    xt = np.ascontiguousarray(x.T)
    return seq_sum(xt * xt)


class _IQ1(QuantType):
    """The row driver and the group search shared by IQ1_S and IQ1_M."""

    ggml_aborts = True
    group: int  # values per scale group
    nshift: int  # candidates per split: 2 (IQ1_S) or 4 (IQ1_M) shift choices
    eps: np.float32  # GROUP_MAX_EPS_IQ1_*

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        return quantize_superblocks(cls, rows, quant_weights, CHUNK_SUPERBLOCKS, cls._superblocks)

    @classmethod
    def _weights(cls, xg: np.ndarray, qw: np.ndarray | None, sigma2: np.ndarray) -> np.ndarray:
        """``weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i])`` on ``(G, n)`` (``sigma2`` ``(G, 1)``)."""
        return qw * np.sqrt(sigma2 + xg * xg)

    @classmethod
    def _candidates(cls, xg: np.ndarray, weight: np.ndarray):
        """(order, sumqx, sumq2) of the groups ``(g, n)``: the sort and every candidate of the split scan."""
        raise NotImplementedError

    @classmethod
    def _flip(cls, shift: np.ndarray) -> np.ndarray:
        """The shift choice after ``scale = -scale`` (the levels mirrored)."""
        return cls.nshift - 1 - shift

    @classmethod
    def _rows_of(cls, shift: np.ndarray) -> np.ndarray:
        """``(g, n/8)``: the row of ``XX`` (0: ``x_p``, 1: ``x_m``) each octet of a group uses."""
        raise NotImplementedError

    @classmethod
    def _groups(cls, x: np.ndarray, qw: np.ndarray | None):
        """Per group of the ``(S, 256)`` super-blocks: (scale (G,), grid index (G, n/8), shift (G,), weight
        (G, n), sigma2 (S,)); skipped groups have scale 0, index 0, shift 0 (the codes of ``x_p``)."""
        S, n = x.shape[0], cls.group
        G, K = S * QK_K // n, n // 8
        sigma2 = (F32(2) * _sum_x2(x)) / F32(QK_K)
        xg = x.reshape(G, n)
        weight = cls._weights(xg, None if qw is None else qw.reshape(G, n), np.repeat(sigma2, QK_K // n)[:, None])
        mx = running_max_first(np.abs(xg).T)
        scale = np.zeros(G, dtype=F32)
        gidx = np.zeros((G, K), dtype=np.intp)
        shift = np.zeros(G, dtype=np.intp)
        live = np.flatnonzero(~(mx < cls.eps))
        if live.size:
            xl, wl = xg[live], weight[live]
            order, sqx, sq2 = cls._candidates(xl, wl)
            kept, sc = first_best(sqx, sq2, wl.sum(axis=1), F32(1.01) * np.abs(wl * xl).sum(axis=1))
            ok = kept >= 0
            live, order, kept, sc = live[ok], order[ok], kept[ok], sc[ok]
        if live.size:
            sc, gi, sh = cls._levels_to_grid(xg[live], weight[live], order, kept, sc)
            scale[live], gidx[live], shift[live] = sc, gi, sh
            bad = ~(sc >= 0)  # GGML_ASSERT(scale >= 0)
            if bad.any():
                raise GGMLAbort("NaN scale (GGML_ASSERT(scale >= 0))", int(live[np.argmax(bad)]) // (QK_K // n))
        return scale, gidx, shift, weight, sigma2

    @classmethod
    def _levels_to_grid(cls, xg, weight, order, kept, scale):
        """The chosen split's levels, mirrored for a negative scale, octets onto the grid, the refit."""
        g, n = xg.shape
        K = n // 8
        i1, i2 = split_pairs(n)
        pair, shift = kept // cls.nshift, kept % cls.nshift
        j = np.arange(n)[None, :]
        ls = (j >= i1[pair][:, None]).astype(np.int8) + (j >= i2[pair][:, None])
        L = np.empty_like(ls)
        np.put_along_axis(L, order, ls, axis=1)
        neg = scale < 0
        L[neg] = 2 - L[neg]
        scale = np.where(neg, -scale, scale)
        shift = np.where(neg, cls._flip(shift), shift)
        grid = iq2_grid(cls.qtype)
        u = pack_octets(L.reshape(g, K, 8).transpose(1, 2, 0)).T  # (g, K)
        gidx = grid.map[u].astype(np.intp)
        off = gidx < 0
        rows = cls._rows_of(shift)  # (g, K)
        if off.any():
            gr, k = np.nonzero(off)
            x8 = xg.reshape(g, K, 8)[gr, k]
            w8 = weight.reshape(g, K, 8)[gr, k]
            best, found = neighbours(grid, u[gr, k], x8, w8, scale[gr], rows[gr, k])
            if not found.all():
                raise GGMLAbort("iq1_find_best_neighbour2 found no neighbour (every distance NaN or >= FLT_MAX; "
                                "its fallback scan reads past the octet, then GGML_ASSERT(grid_index >= 0))",
                                int(gr[np.argmin(found)]) // (QK_K // n))
            gidx[gr, k] = best
            moved = np.flatnonzero(off.any(axis=1))
            q = XX[rows[moved][:, :, None], _grid_levels()[gidx[moved]]].reshape(len(moved), n)
            sx, s2 = refit_sums(weight[moved].T, q.T, xg[moved].T)
            scale[moved] = np.where((sx > 0) & (s2 > 0), sx / s2, scale[moved])
        return scale, gidx, shift

    @staticmethod
    def _scale_codes(scales: np.ndarray):
        """``d = max_scale/15``, ``l = clamp(nearest_int(0.5f*(id*scale - 1)), 0, 7)`` of ``(S, groups)``;
        returns (max_scale, d, l)."""
        max_scale = scales.max(axis=1)  # MAX(max_scale, scale) from 0: scales are >= 0, not NaN
        d = max_scale / F32(15)
        idd = np.divide(F32(1), d, dtype=F32)
        v = idd[:, None] * scales
        v -= F32(1)
        v *= F32(0.5)
        return max_scale, d, np.clip(nearest_int(v), 0, 7).astype(np.uint16)


class IQ1_S(_IQ1, qtype=T.IQ1_S):
    """``quantize_iq1_s``: ``quantize_row_iq1_s_impl`` per row (weights required); groups of 32, one shift
    bit per group."""

    fp16_fields = {"d": 0}
    kernel = Kernel(threads=64, item_elems=256, items_per_block=8, sync=True)  # kernels/iq1.cu: a thread per group
    requires_imatrix = True
    group = 32
    nshift = 2
    eps = F32(1e-12)  # GROUP_MAX_EPS_IQ1_S

    @classmethod
    def _candidates(cls, xg, weight):
        order, sumx, sumw = sorted_prefix(xg, weight)
        return (order, *split_sums_s(sumx, sumw))

    @classmethod
    def _rows_of(cls, shift):
        return np.repeat(shift[:, None], 4, axis=1)

    @classmethod
    def _superblocks(cls, x, qw):
        S = x.shape[0]
        scale, gidx, shift, _, _ = cls._groups(x, qw)
        gi = gidx.reshape(S, 8, 4)
        qs = (gi & 255).astype(np.uint8).reshape(S, 32)
        qh = np.zeros((S, 8), dtype=np.uint16)
        for k in range(4):
            qh |= ((gi[:, :, k] >> 8) << (3 * k)).astype(np.uint16)
        max_scale, d, l = cls._scale_codes(scale.reshape(S, 8))
        nz = max_scale != 0
        l |= np.where(shift.reshape(S, 8) == 1, 8, 0).astype(np.uint16)  # shifts[ib] == -1: x_m
        qh[nz] |= l[nz] << np.uint16(12)
        d16 = np.where(nz, fp16_bits(d * F32(1.125)), 0).astype(np.uint16)
        return np.concatenate([d16.view(np.uint8).reshape(S, 2), qs, qh.view(np.uint8)], axis=1)

    @classmethod
    def dequantize_rows(cls, raw):
        """``dequantize_row_iq1_s``: ``y = d*(2*l + 1) * (grid[j] + delta)`` with an 11-bit grid index per
        octet, a 3-bit scale ``l`` and the sign of ``delta`` per 32 values."""
        b = np.ascontiguousarray(raw).reshape(-1, cls.type_size)
        nb = len(b)
        d = fp16_to_fp32(b[:, :2].copy().view(np.uint16)[:, 0])
        qs = b[:, 2:34].reshape(nb, 8, 4).astype(np.intp)
        qh = b[:, 34:50].copy().view("<u2").astype(np.intp)  # (nb, 8)
        dl = d[:, None] * (2 * ((qh >> 12) & 7) + 1).astype(F32)
        delta = np.where(qh & 0x8000, -DELTA, DELTA).astype(F32)
        gidx = qs | (((qh[:, :, None] >> (3 * np.arange(4))) & 7) << 8)
        return _dequantize(dl, delta[:, :, None], gidx).reshape(raw.shape[0], -1)


def _dequantize(dl: np.ndarray, delta: np.ndarray, gidx: np.ndarray) -> np.ndarray:
    """``y[j] = dl * (grid[j] + delta)`` per octet: ``dl`` ``(nb, B)``, ``delta`` and ``gidx`` ``(nb, B, K)``
    (``delta`` ``(nb, B, 1)`` for one per ``B``) -> ``(nb, B*K*8)``."""
    values = np.array(gq.IQ1_S.grid_map, dtype=F32)[_grid_levels()]  # (2048, 8): -1, 0, 1
    g = values[gidx] + delta[..., None]
    with np.errstate(over="ignore", invalid="ignore"):
        return (dl[:, :, None, None] * g).reshape(len(dl), -1)


_MASKS = np.array([0x00, 0x80, 0x08, 0x88], dtype=np.uint8)


class IQ1_M(_IQ1, qtype=T.IQ1_M):
    """``quantize_iq1_m``: ``quantize_row_iq1_m_impl`` per row (weights optional); groups of 16, a shift bit
    per octet, the fp16 super-block scale in the top nibbles of the scale words."""

    fp16_fields = {}  # the scale is assembled from four nibbles: ``invalid_blocks``
    kernel = Kernel(threads=64, item_elems=256, items_per_block=4, sync=True)  # kernels/iq1.cu: a thread per group
    group = 16
    nshift = 4
    eps = F32(1e-7)  # GROUP_MAX_EPS_IQ1_M

    @classmethod
    def _weights(cls, xg, qw, sigma2):
        return xg * xg if qw is None else super()._weights(xg, qw, sigma2)

    @classmethod
    def _candidates(cls, xg, weight):
        order, px, pw = sorted_prefix(xg, weight, halves=True)
        return (order, *split_sums_m(px, pw))

    @classmethod
    def _rows_of(cls, shift):
        return np.stack([shift >> 1, shift & 1], axis=1)  # octet 0: best_k < 2 ? x_p : x_m; octet 1: k%2

    @classmethod
    def _superblocks(cls, x, qw):
        S = x.shape[0]
        scale, gidx, shift, weight, _ = cls._groups(x, qw)
        qs = (gidx & 255).astype(np.uint8).reshape(S, 32)
        qh = ((gidx[:, 0] >> 8) | ((gidx[:, 1] >> 8) << 4)).astype(np.uint8).reshape(S, 16)
        max_scale, d, l = cls._scale_codes(scale.reshape(S, 16))
        nz = max_scale != 0
        sc = np.zeros((S, 4), dtype=np.uint16)
        for i in range(4):
            sc |= l[:, i::4] << np.uint16(3 * i)
        qh = np.where(nz[:, None], qh | _MASKS[shift.reshape(S, 16)], qh)
        d = cls._refit_d(x, weight, gidx, shift, l, d)
        s = np.where(nz, fp16_bits(d * F32(1.1125)), 0).astype(np.uint16)
        sc[:, 0] |= (s & 0x000F) << 12
        sc[:, 1] |= (s & 0x00F0) << 8
        sc[:, 2] |= (s & 0x0F00) << 4
        sc[:, 3] |= s & 0xF000
        sc[~nz] = 0
        return np.concatenate([qs, qh, sc.view(np.uint8)], axis=1)

    @classmethod
    def _refit_d(cls, x, weight, gidx, shift, l, d):
        """``sumqx_f += w*q*xb; sumq2_f += w*q*q`` over the whole super-block with ``q = xx[level]*(2*l+1)``
        (skipped groups too: grid point 0, ``x_p``, ``l = 0``); ``d = sumqx_f/sumq2_f`` when ``sumq2_f > 0``."""
        S = x.shape[0]
        q = XX[cls._rows_of(shift)[:, :, None], _grid_levels()[gidx]]  # (G, 2, 8)
        q = q.reshape(S, 16, 16) * (2 * l.astype(np.int32) + 1).astype(F32)[:, :, None]
        sx, s2 = refit_sums(weight.reshape(S, QK_K).T.copy(), q.reshape(S, QK_K).T.copy(), x.T.copy())
        return np.where(s2 > 0, sx / s2, d).astype(F32)

    @staticmethod
    def _scale_bits(b: np.ndarray) -> np.ndarray:
        """The fp16 super-block scale of ``(nb, 56)`` blocks from the top nibbles of its scale words."""
        sc = b[:, 48:56].copy().view("<u2")
        return ((sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00)
                | (sc[:, 3] & 0xF000)).astype(np.uint16)

    @classmethod
    def invalid_blocks(cls, blocks):
        """``ggml_validate_row_data``: the assembled fp16 scale is inf or NaN."""
        return (cls._scale_bits(blocks) & 0x7C00) == 0x7C00

    @classmethod
    def dequantize_rows(cls, raw):
        """``dequantize_row_iq1_m``: ``y = d*(2*l + 1) * (grid[j] + delta)``, a 3-bit ``l`` per 16 values,
        an 11-bit grid index and the sign of ``delta`` per octet."""
        b = np.ascontiguousarray(raw).reshape(-1, cls.type_size)
        nb = len(b)
        d = fp16_to_fp32(cls._scale_bits(b))
        qs = b[:, :32].reshape(nb, 16, 2).astype(np.intp)
        qh = b[:, 32:48].astype(np.intp)  # (nb, 16)
        sc = b[:, 48:56].copy().view("<u2").astype(np.intp)  # (nb, 4)
        l = (sc[:, :, None] >> (3 * np.arange(4))) & 7  # group 4*i + j: sc[i] >> 3*j
        dl = d[:, None] * (2 * l.reshape(nb, 16) + 1).astype(F32)
        hi = np.stack([(qh << 8) & 0x700, (qh << 4) & 0x700], axis=2)
        delta = np.where(np.stack([qh & 0x08, qh & 0x80], axis=2) != 0, -DELTA, DELTA).astype(F32)
        return _dequantize(dl, delta, qs | hi).reshape(raw.shape[0], -1)


def kernel_tables() -> dict[str, np.ndarray]:
    """The lookup tables of kernels/iq1.cu, from ``grids.iq2_grid(IQ1_S)``: ``gq_iq1_kgrid`` (the packed grid,
    C ``kgrid_q2xs``: 2 bits a level), ``gq_iq1_map3`` (the grid index of each octet of levels 0..2 by its
    base-3 code ``sum l[i]*3**i``, -1 off the grid), ``gq_iq1_thr3`` (the largest squared level distance in
    the code's neighbour list), ``gq_iq1_d4`` (``81 x 81``: the squared level distance of two quads, the
    base-3 codes of 4 levels), ``gq_iq1_nq`` (``81 x 81``: per quad every quad by that distance, ties by
    code), ``gq_iq1_quadlv`` (a quad's levels, 2 bits each), ``gq_iq1_ball`` (per quad and distance 0..4
    the quads within it, 81-bit masks in two words) and ``gq_iq1_onhi`` (per low quad the high quads that
    make a grid point). The kernels rebuild each C list as the grid points within ``thr3``, in (distance, index) order:
    checked here against ``grid.neighbours``."""
    g = iq2_grid(T.IQ1_S)
    pw3 = 3 ** np.arange(8)
    levels = (np.arange(3 ** 8)[:, None] // pw3) % 3  # (6561, 8): level i of code c
    u = np.bitwise_or.reduce(levels << (2 * np.arange(8)), axis=1)
    lv = _grid_levels()  # (2048, 8)
    if not np.array_equal(pack_levels(lv, 2), g.kgrid):
        raise ValueError("IQ1 kgrid does not pack the grid's levels")
    q4 = levels[:81, :4]
    d4 = ((q4[:, None, :] - q4[None, :, :]) ** 2).sum(axis=2)
    m = g.map[u]
    thr = np.zeros(3 ** 8, dtype=np.int64)
    for c in np.flatnonzero(m < 0):
        lst = g.neighbour_list(int(u[c]))
        dist = ((lv - levels[c]) ** 2).sum(axis=1)
        thr[c] = dist[lst].max()
        within = np.flatnonzero(dist <= thr[c])
        rebuilt = within[np.lexsort((within, dist[within]))]
        if not np.array_equal(rebuilt, lst):
            raise ValueError(f"IQ1 neighbour list of code {c} is not the grid points within distance {thr[c]}")
    return {"gq_iq1_kgrid": g.kgrid.astype(np.uint16), "gq_iq1_map3": np.where(m < 0, -1, m).astype(np.int16),
            "gq_iq1_thr3": thr.astype(np.uint8), "gq_iq1_d4": d4.reshape(-1).astype(np.uint8),
            "gq_iq1_nq": np.argsort(d4, axis=1, kind="stable").reshape(-1).astype(np.uint8),
            "gq_iq1_quadlv": pack_levels(q4, 2).astype(np.uint8),
            "gq_iq1_ball": _masks81(d4[:, None, :] <= np.arange(5)[None, :, None]),
            "gq_iq1_onhi": _masks81((m >= 0).reshape(81, 81).T)}


def _masks81(sets: np.ndarray) -> np.ndarray:
    """``(..., 81)`` bools -> flat uint64 pairs: bit ``k`` of word ``w`` is element ``64*w + k``."""
    bits = np.zeros(sets.shape[:-1] + (128,), dtype=bool)
    bits[..., :81] = sets
    return np.packbits(bits.reshape(-1, 128), axis=-1, bitorder="little").view("<u8").reshape(-1)

