"""The grid searches shared by IQ2_XXS, IQ2_XS and IQ2_S (ggml-quants.c ``quantize_row_iq2_*_impl``).

A scale group (32 values for IQ2_XXS, 16 for IQ2_XS/IQ2_S) is ``K`` octets of 8 values. The C code tries a
series of inverse scales ``id`` per group; for each it rounds every octet to levels 0..2, packs them into a
grid index and, where that index is off the grid, searches its neighbour list (``iq2_find_best_neighbour``).
Here every trial of every group of a chunk is evaluated at once: arrays are laid out ``(K, 8, T, G)``
(octet, element, trial, group), so a sum over the group's values in C order is a sum over the first two
axes (``seq_sum`` of the ``(K*8, T, G)`` view) and the 8 values of an octet sit on one axis. The trials do
not depend on one another; only which one is kept does (``accept_trials``, a scan in C order).

The neighbour searches of a call are collected (``Requests``) and resolved at once (``best_neighbours``):
the 24 possible terms ``w*(scale*q - x)**2`` of an octet are exact float32 values; the requests sharing
an index are ranked by one-hot matrix products (the same terms summed in another order), and where one
neighbour is clearly least it is the C choice; ties and non-finite terms take the C loop term by term.

ggml aborts the process (``GGML_ASSERT``/``GGML_ABORT``) on a few inputs (an octet whose every neighbour
distance is NaN or not below ``FLT_MAX``, a NaN scale, a point off the grid at the end); the searches
report those groups and the quantizers raise :class:`GGMLAbort` instead.
"""
from __future__ import annotations

import functools

import numpy as np

from . import GGMLAbort
from .common import F32, nearest_int, seq_sum
from .grids import Grid

__all__ = [
    "GGMLAbort",
    "accept_trials",
    "Requests",
    "best_neighbours",
    "flip_parity",
    "octet_levels",
    "pack_octets",
    "running_max_first",
    "signed_values",
    "weighted_sums",
]

FLT_MAX = F32(np.finfo(np.float32).max)


def running_max_first(x: np.ndarray) -> np.ndarray:
    """``float max = x[0]; for (i = 1..) max = MAX(max, x[i]);`` over axis 0 (``MAX(a,b)`` is ``a > b ? a : b``)."""
    m = x[0].copy()
    for i in range(1, x.shape[0]):
        m = np.where(m > x[i], m, x[i])
    return m


def signed_values(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``xval = x >= 0 ? x : -x`` and the sign bits ``s |= 1 << i`` of the others (NaN counts as negative).

    ``xb``: ``(K, 8, G)``. Returns (xval, negative mask)."""
    neg = ~(xb >= 0)
    return np.where(neg, -xb, xb), neg


def flip_parity(xval: np.ndarray, neg: np.ndarray, weight: np.ndarray, xb: np.ndarray) -> None:
    """IQ2_XXS/IQ2_XS: an octet with an odd number of flips flips back its element of least
    ``weight*x*x`` (the first strict minimum, element 0 first). In place on ``xval`` and ``neg``."""
    odd = (np.add.reduce(neg, axis=1, dtype=np.int32) & 1).astype(bool)  # (K, G)
    if not odd.any():
        return
    with np.errstate(over="ignore", invalid="ignore"):
        ax = weight * xb * xb
    imin = np.zeros(odd.shape, dtype=np.intp)
    amin = ax[:, 0].copy()
    for i in range(1, 8):
        lt = ax[:, i] < amin
        amin = np.where(lt, ax[:, i], amin)
        imin = np.where(lt, i, imin)
    k, g = np.nonzero(odd)
    i = imin[k, g]
    xval[k, i, g] = -xval[k, i, g]
    neg[k, i, g] = ~neg[k, i, g]


def pack_octets(L: np.ndarray) -> np.ndarray:
    """``u |= L[i] << 2*i`` over axis 1 of ``(K, 8, ...)`` levels (int32 result ``(K, ...)``)."""
    u = L[:, 0].astype(np.int32)
    for i in range(1, 8):
        u |= L[:, i].astype(np.int32) << (2 * i)
    return u


_QV = np.array([1, 3, 5], dtype=F32)  # the grid values 2*l + 1
_FAST_MAX = F32(1e37)  # below this, 8 terms cannot overflow float32
_TOL = F32(2e-5)  # relative slack of the contender test (either sum is within 1.5e-6 of the exact one)
_SLACK = F32(1e-40)  # absolute slack for subnormal terms
_MIN_GROUP = 4  # requests sharing an index below this many take the C search term by term
_WIDTHS = np.array([1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320])


@functools.cache
def _list_tables(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Per entry of ``grid.neighbours``: the term index ``8*l + i`` of each of its point's 8 levels
    (``(8, n)`` int8, see ``octet_terms``), and the one-hot matrix of those indices (``(24, n)`` float32:
    column ``p`` picks the 8 terms of entry ``p``). Count slots get zeros (no list reaches them)."""
    lv = (grid.grid[grid.neighbours % grid.grid_size].astype(np.int32) - 1) // 2  # (n, 8)
    off = (8 * lv + np.arange(8, dtype=np.int32)[None, :]).T.astype(np.int8)  # (8, n)
    onehot = np.zeros((24, len(grid.neighbours)), dtype=F32)
    onehot[off.astype(np.intp), np.arange(len(grid.neighbours))[None, :]] = 1
    slots = np.flatnonzero(grid.map < 0)
    onehot[:, -grid.map[slots] - 1] = 0
    return off, onehot


_TERM_ROWS = 4096  # requests per step of ``octet_terms`` (its temporaries stay in cache)


def octet_terms(x: np.ndarray, w: np.ndarray, scale: np.ndarray, ncol: int = 24) -> np.ndarray:
    """The terms ``w[i]*diff*diff``, ``diff = scale*q - x[i]``, of the C distance for each element ``i``
    and grid value ``q = 2*l + 1``: ``(M, ncol)`` float32, column ``8*l + i`` (exactly the C values);
    columns from 24 on are 1. ``x``, ``w``: ``(M, 8)``; ``scale``: ``(M,)``."""
    return _terms_of(lambda sl: (x[sl], w[sl]), scale, ncol)


def _terms_of(octets, scale: np.ndarray, ncol: int) -> np.ndarray:
    """``octet_terms`` with the values and weights of requests ``sl`` (a slice) read from ``octets(sl)``."""
    m = len(scale)
    t = np.empty((m, ncol), dtype=F32)
    sq = np.empty((min(m, _TERM_ROWS), 1), dtype=F32)
    diff = np.empty((min(m, _TERM_ROWS), 8), dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        for r0 in range(0, m, _TERM_ROWS):
            sl = slice(r0, min(m, r0 + _TERM_ROWS))
            x, w = octets(sl)
            n = len(x)
            tc = t[sl]
            tc[:, 24:] = 1
            t3 = tc[:, :24].reshape(n, 3, 8)
            for c, q in enumerate(_QV):
                np.multiply(scale[sl, None], q, out=sq[:n])  # scale*q
                np.subtract(sq[:n], x, out=diff[:n])
                np.multiply(w, diff[:n], out=t3[:, c])
                t3[:, c] *= diff[:n]
    return t


def _exact_neighbours(grid: Grid, u: np.ndarray, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The C search term by term: ``d2 = 0; d2 += term`` over the 8 elements in order for every
    neighbour of ``u`` (M,), the first least ``d2 < FLT_MAX`` wins. ``terms``: ``(M, 24)``."""
    off, _ = _list_tables(grid)
    gi = np.zeros(len(u), dtype=np.int32)
    found = np.zeros(len(u), dtype=bool)
    cnt, first = grid.nb_count[u], grid.nb_first[u]
    cls = np.searchsorted(_WIDTHS, cnt)
    flat = np.ascontiguousarray(terms).reshape(-1)
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        col = np.arange(int(_WIDTHS[c]), dtype=np.intp)[None, :]
        pos = first[idx][:, None] + np.minimum(col, cnt[idx][:, None] - 1)  # (n, W) list entries
        base = (idx * terms.shape[1])[:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            d2 = np.zeros(pos.shape, dtype=F32)
            for i in range(8):
                d2 += flat.take(off[i].take(pos) + base)
        d2[~(d2 < FLT_MAX)] = np.inf
        j = np.argmin(d2, axis=1)
        r = np.arange(len(idx))
        gi[idx] = grid.neighbours[pos[r, j]]
        found[idx] = d2[r, j] < np.inf
    return gi, found


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, a + n) for a, n in zip(starts, sizes)])``."""
    out = np.arange(int(sizes.sum()), dtype=np.intp)
    out += np.repeat(starts - np.concatenate(([0], np.cumsum(sizes)[:-1])), sizes)
    return out


@functools.cache
def _onehot_t(grid: Grid) -> np.ndarray:
    """``_list_tables``' one-hot matrix transposed, with a zero 25th column: ``(entries, 25)`` float32."""
    _, onehot = _list_tables(grid)
    return np.ascontiguousarray(np.concatenate([onehot, np.zeros((1, onehot.shape[1]), F32)]).T)


def _padded_size(n: np.ndarray) -> np.ndarray:
    """``n`` rounded up to 2 significant bits (4, 6, 8, 12, 16, 24, ...): at most a third is padding."""
    half = np.left_shift(1, np.maximum(np.frexp(n - 1)[1] - 2, 0)).astype(np.intp)  # half the top bit of n - 1
    return -(-n // half) * half


def _rank_key(grid: Grid, terms: np.ndarray, ok: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
              ug: np.ndarray, wc: int, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``_rank_groups`` for groups of one padded list width ``wc`` and padded size ``nmax``: (list entry,
    alone), each ``(ng, nmax)``; the rows past a group's size repeat its last request."""
    onehot_t = _onehot_t(grid)  # (entries, 25)
    ng = len(starts)
    cnt = grid.nb_count[ug]
    prow = starts[:, None] + np.minimum(np.arange(nmax, dtype=np.intp)[None, :], sizes[:, None] - 1)
    tb = np.take(terms, prow.reshape(-1), axis=0).reshape(ng, nmax, 25)
    col = np.arange(wc, dtype=np.intp)[None, :]
    pos = grid.nb_first[ug][:, None] + np.minimum(col, cnt[:, None] - 1)  # (ng, wc) list entries
    oh = np.take(onehot_t, pos, axis=0)  # (ng, wc, 25)
    oh[:, :, 24] = np.where(col < cnt[:, None], F32(0), F32(np.inf))  # padding never wins (terms[:, 24] = 1)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.matmul(oh, tb.transpose(0, 2, 1))  # (ng, wc, nmax): entries down, requests across
        dmin = np.minimum.reduce(d, axis=1)  # NaN propagates: never alone
        thr = dmin * _TOL
        thr += _SLACK
        thr += dmin
    near = np.less_equal(d, thr[:, None, :])
    rank = (wc - np.arange(wc, dtype=np.uint16))[None, :, None]  # wc - j: the first near entry is the largest
    v = np.multiply(near, rank, dtype=np.uint16 if wc * (wc + 1) < 1 << 17 else np.uint32)
    first = np.maximum.reduce(v, axis=1)
    alone = (np.add.reduce(v, axis=1) == first) & (first > 0)  # exactly one entry within the slack
    alone &= np.take(ok, prow)
    j = np.where(alone, wc - first.astype(np.intp), 0)
    return np.take_along_axis(pos, j, axis=1), alone


_GEMM_ELEMS = 8192  # at most this many distances (entries x requests) per product


def _split_groups(starts: np.ndarray, sizes: np.ndarray, ug: np.ndarray, wclass: np.ndarray):
    """Split groups into runs of nearly equal size of at most ``_GEMM_ELEMS / width`` requests each, in
    order: each product stays in cache, and under OpenBLAS's threading threshold (m*n*k below 2**18:
    a larger one wakes threads that spin on the cores the host pool already uses)."""
    cap = np.maximum(_MIN_GROUP, _GEMM_ELEMS // _WIDTHS[wclass])
    nch = -(-sizes // cap)
    if (nch == 1).all():
        return starts, sizes, ug, wclass
    g = np.repeat(np.arange(len(sizes)), nch)
    k = np.arange(len(g)) - np.repeat(np.cumsum(nch) - nch, nch)  # the run's rank in its group
    base, extra = sizes[g] // nch[g], sizes[g] % nch[g]
    return starts[g] + k * base + np.minimum(k, extra), base + (k < extra), ug[g], wclass[g]


def _rank_groups(grid: Grid, terms: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
                 ug: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank the neighbours of groups of requests sharing an index by their terms summed in another order:
    one batched matrix product (neighbours x terms, one-hot) @ (terms x requests) for all groups of the
    same padded list width and padded size. ``terms``: ``(M, 25)`` ``octet_terms`` (column 24 is 1) of
    the requests sorted by index; group ``g`` is ``terms[starts[g]:starts[g] + sizes[g]]``, with index
    ``ug[g]``. Returns, per request of the groups (in order): (list entry of the least, whether it is
    the only neighbour within ``_TOL`` of the least, with terms below ``_FAST_MAX``)."""
    with np.errstate(invalid="ignore"):
        ok = np.maximum.reduce(terms, axis=1) < _FAST_MAX  # NaN fails
    wclass = np.searchsorted(_WIDTHS, grid.nb_count[ug])
    starts, sizes, ug, wclass = _split_groups(starts, sizes, ug, wclass)
    npad = _padded_size(sizes)
    key = wclass.astype(np.int64) << 32 | npad
    n = int(sizes.sum())
    entry = np.empty(n, dtype=np.intp)
    alone = np.empty(n, dtype=bool)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    for kk in np.unique(key):
        gsel = np.flatnonzero(key == kk)
        wc, nmax = int(_WIDTHS[kk >> 32]), int(kk & 0xFFFFFFFF)
        e, a = _rank_key(grid, terms, ok, starts[gsel], sizes[gsel], ug[gsel], wc, nmax)
        real = np.arange(nmax)[None, :] < sizes[gsel][:, None]
        out = _ranges(offsets[gsel], sizes[gsel])
        entry[out], alone[out] = e[real], a[real]
    return entry, alone


class Requests:
    """Neighbour searches to run: off-grid indices ``u`` (M,), the octets they come from (rows ``src``
    of the ``(N, 8)`` tables ``xtab`` of values and ``wtab`` of weights ``waux``) and their scales."""

    def __init__(self, u, src, scale, xtab, wtab):
        self.u, self.src, self.scale, self.xtab, self.wtab = u, src, scale, xtab, wtab

    def terms(self, rows: np.ndarray, ncol: int = 24) -> np.ndarray:
        """``octet_terms`` of the requests ``rows``."""
        s = self.src[rows]

        def octets(sl):
            return np.take(self.xtab, s[sl], axis=0), np.take(self.wtab, s[sl], axis=0)

        return _terms_of(octets, self.scale[rows], ncol)


def best_neighbours(grid: Grid, req: Requests) -> tuple[np.ndarray, np.ndarray]:
    """``iq2_find_best_neighbour`` for every request: C sums the 8 terms of every neighbour in order and
    keeps the first with the least ``d2 < FLT_MAX``. Returns (grid index (M,), found (M,)); not found is
    ggml's assert.

    The requests are grouped by index and ranked by matrix products (``_rank_groups``: the same exact
    terms summed in another order, each sum within 1.5e-6 of the exact one, as is the C sum): where a
    single neighbour is within ``_TOL`` of the least, it is the C choice. Ties and non-finite or huge
    terms take the C search term by term (``_exact_neighbours``).
    """
    m = len(req.u)
    gi = np.zeros(m, dtype=np.int32)
    found = np.ones(m, dtype=bool)
    if m == 0:
        return gi, found
    rows = np.argsort(req.u.astype(np.uint16), kind="stable")  # radix sort by index
    us = req.u[rows]
    terms = req.terms(rows, ncol=25)  # in sorted order
    starts = np.concatenate(([0], np.flatnonzero(us[1:] != us[:-1]) + 1))
    sizes = np.diff(np.concatenate((starts, [m])))
    big = sizes >= _MIN_GROUP  # small groups are cheaper term by term
    grouped = _ranges(starts[big], sizes[big])  # places in sorted order
    sel = np.delete(np.arange(m), grouped)
    if grouped.size:
        entry, alone = _rank_groups(grid, terms, starts[big], sizes[big], us[starts[big]])
        gi[rows[grouped]] = grid.neighbours[entry]
        sel = np.concatenate((sel, grouped[~alone]))
    if sel.size:
        gi[rows[sel]], found[rows[sel]] = _exact_neighbours(grid, us[sel], np.take(terms, sel, axis=0))
    return gi, found


_SUB_ELEMS = 1 << 18  # elements per step of the elementwise work (cache-sized)


def octet_levels(grid: Grid, xval: np.ndarray, waux: np.ndarray, ids: np.ndarray, scales: np.ndarray,
                 active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The levels of every octet under every trial (the inner ``k`` loop of the C ``is`` loop).

    ``xval``, ``waux``: ``(K, 8, G)``; ``ids``, ``scales``: ``(T, G)`` (``scales = 1/ids`` as C computes
    it); ``active``: ``(K, T, G)``, the octets C evaluates (None: all). For each: ``l = clamp(nearest_int(
    0.5f*(id*xval - 1)), 0, 2)``; off the grid, the best neighbour's levels. Returns (L int8 ``(K, 8, T,
    G)``, on_grid ``(K, T, G)``: the rounded index was on the grid, aborted ``(K, T, G)``: ggml's assert).
    The rounding runs on cache-sized slices of groups; all searches of the call are resolved at once.
    """
    K, _, G = xval.shape
    T = ids.shape[0]
    L = np.empty((K, 8, T, G), dtype=np.int8)
    on_grid = np.empty((K, T, G), dtype=bool)
    req_pos, req_u, req_scale = [], [], []
    xrows = np.ascontiguousarray(xval.transpose(0, 2, 1)).reshape(K * G, 8)  # octet k of group g: k*G + g
    wrows = np.ascontiguousarray(waux.transpose(0, 2, 1)).reshape(K * G, 8)
    step = max(1, _SUB_ELEMS // (K * 8 * T))
    for g0 in range(0, G, step):
        gs = slice(g0, min(G, g0 + step))
        with np.errstate(over="ignore", invalid="ignore"):
            v = ids[None, None, :, gs] * xval[:, :, None, gs]
            v -= F32(1)
            v *= F32(0.5)
        lv = np.clip(nearest_int(v), 0, 2).astype(np.int8)  # (K, 8, T, g)
        L[:, :, :, gs] = lv
        u = pack_octets(lv)  # (K, T, g)
        on = grid.map[u] >= 0
        on_grid[:, :, gs] = on
        todo = ~on if active is None else ~on & active[:, :, gs]
        f = np.flatnonzero(todo)
        if f.size:
            k, t, g = np.unravel_index(f, todo.shape)
            g = g + g0
            req_pos.append(np.ravel_multi_index((k, t, g), (K, T, G)))
            req_u.append(u.reshape(-1)[f])
            req_scale.append(scales[t, g])
    aborted = np.zeros((K, T, G), dtype=bool)
    if req_pos:
        pos = np.concatenate(req_pos)
        k, t, g = np.unravel_index(pos, (K, T, G))
        best, found = best_neighbours(grid, Requests(np.concatenate(req_u), k * G + g, np.concatenate(req_scale),
                                                     xrows, wrows))
        L[k, :, t, g] = grid.grid[best] // 2  # (pg - 1)/2 of the odd grid values
        aborted.reshape(-1)[pos] = ~found
    return L, on_grid, aborted


def weighted_sums(wx: np.ndarray, w: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sumqx += w*xval*q; sumq2 += w*q*q`` with ``q = 2*L + 1`` over a group's values in C order.

    ``wx = w*xval`` and ``w``: ``(E, G)``; ``L``: ``(E, T, G)`` (or ``(E, G)``). Returns ``(T, G)`` sums."""
    q = (2 * L.astype(np.int32) + 1).astype(F32)
    if L.ndim == 3:
        wx, w = wx[:, None, :], w[:, None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        sumqx = seq_sum(wx * q)
        wq = w * q
        wq *= q
        sumq2 = seq_sum(wq)
    return sumqx, sumq2


def accept_trials(sumqx: np.ndarray, sumq2: np.ndarray, scale: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``if (sumq2 > 0 && sumqx*sumqx > best*sumq2) { scale = sumqx/sumq2; best = scale*sumqx; keep }``
    over the trials in order, from ``best = 0``. Returns (scale, index of the kept trial or -1)."""
    T, G = sumqx.shape
    best = np.zeros(G, dtype=F32)
    kept = np.full(G, -1, dtype=np.intp)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in range(T):
            sx, s2 = sumqx[t], sumq2[t]
            ok = (s2 > 0) & (sx * sx > best * s2)
            if ok.any():
                scale = np.where(ok, sx / s2, scale)
                best = np.where(ok, scale * sx, best)
                kept = np.where(ok, t, kept)
    return scale.astype(F32, copy=False), kept
