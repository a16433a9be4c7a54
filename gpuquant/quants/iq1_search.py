"""The searches of IQ1_S and IQ1_M (ggml-quants.c ``quantize_row_iq1_s_impl`` / ``quantize_row_iq1_m_impl``).

A scale group (32 values for IQ1_S, 16 for IQ1_M) is quantized to the three values ``x_p = {-1+D, D, 1+D}``
or ``x_m = {-1-D, -D, 1-D}`` (``D`` = ``IQ1S_DELTA`` = ``IQ1M_DELTA`` = 0.125). The C code sorts the group
(``qsort`` with ``iq1_sort_helper``: glibc's merge sort, stable), forms prefix sums of ``weight*x`` and
``weight`` in that order and scans every split ``i1 <= i2`` of the sorted values into the three levels,
for each split one candidate per shift choice; a candidate is kept when ``sumq2 > 0 && sumqx*sumqx >
best*sumq2``, ``best = (sumqx/sumq2)*sumqx``. Here every candidate of every group of a chunk is computed at
once, laid out ``(candidate, group)`` in the C loop order (``split_sums_s`` / ``split_sums_m``), and the C
scan is replayed exactly by ``first_best`` (on the few candidates that can win, see there).

The octets of the chosen levels that are off the grid take their best neighbour (``iq1_find_best_neighbour2``):
the terms ``w*diff*diff``, ``diff = scale*xx[l] - x``, go through ``iq2_search.best_neighbours``.
"""
from __future__ import annotations

import functools

import numpy as np

from .common import F32, seq_sum
from .grids import Grid
from .iq2_search import Requests, best_neighbours

__all__ = ["DELTA", "XX", "first_best", "neighbours", "refit_sums", "sorted_prefix", "split_pairs",
           "split_sums_m", "split_sums_s"]

DELTA = F32(0.125)  # IQ1S_DELTA, IQ1M_DELTA
#: ``x_p`` (row 0) and ``x_m`` (row 1) as the C initializers compute them (float)
XX = np.array([[F32(-1) + DELTA, DELTA, F32(1) + DELTA], [F32(-1) - DELTA, -DELTA, F32(1) - DELTA]], dtype=F32)
FLT_MAX = F32(np.finfo(np.float32).max)

_CONTENDER = F32(1e-4)  # a candidate within this relative distance of the best score may win the C scan
_GAP = F32(2e-4)  # ... and every other candidate must be this far below, or the group takes the full scan
_SAFE_LO, _SAFE_HI = F32(2.0 ** -60), F32(2.0 ** 60)  # sums in this range: the products stay normal floats
_MAX_CONTENDERS = 16


@functools.cache
def split_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``for (i1 = 0; i1 <= n; ++i1) for (i2 = i1; i2 <= n; ++i2)``: the (i1, i2) of every split, in order."""
    i1, i2 = np.triu_indices(n + 1)
    return i1.astype(np.intp), i2.astype(np.intp)


def sorted_prefix(xb: np.ndarray, weight: np.ndarray, halves: bool = False):
    """The sort and prefix sums of ``(G, n)`` groups: ``order`` (the C ``idx``) and ``sumx[j+1] = sumx[j] +
    weight[i]*xb[i]``, ``sumw[j+1] = sumw[j] + weight[i]`` over the sorted ``i``, ``(n+1, G)`` from 0.

    ``halves`` (IQ1_M): the sums are kept per half of the group (``px[h]``, ``pw[h]``: an element adds to the
    sums of its half only), returned ``(2, n+1, G)``."""
    order = np.argsort(xb, axis=1, kind="stable")
    xs = np.take_along_axis(xb, order, axis=1).T
    ws = np.take_along_axis(weight, order, axis=1).T
    wx = ws * xs
    wx[0] += F32(0)  # the sums start from +0.0 (a first term -0.0 gives +0.0)
    ws[0] += F32(0)
    G, n = xb.shape
    if not halves:
        out = np.zeros((2, n + 1, G), dtype=F32)
        np.cumsum(wx, axis=0, dtype=F32, out=out[0, 1:])
        np.cumsum(ws, axis=0, dtype=F32, out=out[1, 1:])
        return order, out[0], out[1]
    second = (order >= n // 2).T  # (n, G): the sorted element lies in the second half
    px = np.zeros((2, n + 1, G), dtype=F32)
    pw = np.zeros((2, n + 1, G), dtype=F32)
    for h, m in ((0, ~second), (1, second)):  # adding +0.0 is the C copy: the sums are never -0.0
        np.cumsum(np.where(m, wx, F32(0)), axis=0, dtype=F32, out=px[h, 1:])
        np.cumsum(np.where(m, ws, F32(0)), axis=0, dtype=F32, out=pw[h, 1:])
    return order, px, pw


def split_sums_s(sumx: np.ndarray, sumw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IQ1_S: ``sumqx``, ``sumq2`` ``(pairs*2, G)`` of every split and shift (``x_p`` then ``x_m``), in the
    C order: ``(sumx[i1] - sumx[0])*x[0] + (sumx[i2] - sumx[i1])*x[1] + (sumx[n] - sumx[i2])*x[2]`` and
    ``(sumw[i1] - sumw[0])*x[0]*x[0] + ...``. ``sumx[0] = 0`` is left out of the first difference (exact)."""
    n = sumx.shape[0] - 1
    i1, i2 = split_pairs(n)
    G = sumx.shape[1]
    sqx = np.empty((len(i1), 2, G), dtype=F32)
    sq2 = np.empty((len(i1), 2, G), dtype=F32)
    for src, out, square in ((sumx, sqx, False), (sumw, sq2, True)):
        a = src[i1]
        b = src[i2]
        mid = b - a
        top = src[n][None, :] - b
        for s in range(2):
            x0, x1, x2 = XX[s]
            t = a * x0
            u = mid * x1
            v = top * x2
            if square:
                t *= x0
                u *= x1
                v *= x2
            t += u
            t += v
            out[:, s] = t
    return sqx.reshape(-1, G), sq2.reshape(-1, G)


_CP1 = XX[0, 0] * XX[0, 0] - XX[0, 1] * XX[0, 1]
_CP2 = XX[0, 1] * XX[0, 1] - XX[0, 2] * XX[0, 2]
_CM1 = XX[1, 0] * XX[1, 0] - XX[1, 1] * XX[1, 1]
_CM2 = XX[1, 1] * XX[1, 1] - XX[1, 2] * XX[1, 2]


def split_sums_m(px: np.ndarray, pw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IQ1_M: ``sumqx``, ``sumq2`` ``(pairs*4, G)`` of every split and shift pair ``k`` (0: ++, 1: +-, 2: -+,
    3: --), from the per-half sums: ``qx = tx*x[2] - (px[i1] + px[i2])``, ``q2 = tw*x[2]*x[2] + pw[i1]*c1 +
    pw[i2]*c2`` per half, the halves added (first + second)."""
    n = px.shape[1] - 1
    i1, i2 = split_pairs(n)
    G = px.shape[2]
    qx, q2 = [], []  # [half][shift] (pairs, G)
    for h in range(2):
        sx = px[h, i1] + px[h, i2]
        tx, tw = px[h, n][None, :], pw[h, n][None, :]
        w1, w2 = pw[h, i1], pw[h, i2]
        qxh, q2h = [], []
        for p2, c1, c2 in ((XX[0, 2], _CP1, _CP2), (XX[1, 2], _CM1, _CM2)):
            qxh.append(tx * p2 - sx)
            t = tw * p2
            t = t * p2 + w1 * c1
            t += w2 * c2
            q2h.append(t)
        qx.append(qxh)
        q2.append(q2h)
    sqx = np.empty((len(i1), 4, G), dtype=F32)
    sq2 = np.empty((len(i1), 4, G), dtype=F32)
    for k in range(4):
        a, b = k >> 1, k & 1
        np.add(qx[0][a], qx[1][b], out=sqx[:, k])
        np.add(q2[0][a], q2[1][b], out=sq2[:, k])
    return sqx.reshape(-1, G), sq2.reshape(-1, G)


def _full_scan(sqx: np.ndarray, sq2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The C scan over every candidate in order (``(C, G)``), from ``best = -FLT_MAX``."""
    C, G = sqx.shape
    best = np.full(G, -FLT_MAX, dtype=F32)
    scale = np.zeros(G, dtype=F32)
    kept = np.full(G, -1, dtype=np.intp)
    sq = sqx * sqx
    for c in range(C):
        s2 = sq2[c]
        ok = (s2 > 0) & (sq[c] > best * s2)
        if ok.any():
            sc = sqx[c] / s2
            np.copyto(scale, sc, where=ok)
            np.copyto(best, sc * sqx[c], where=ok)
            kept[ok] = c
    return kept, scale


def first_best(sqx: np.ndarray, sq2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The C scan ``if (sumq2 > 0 && sumqx*sumqx > best*sumq2) { scale = sumqx/sumq2; best = scale*sumqx; }``
    over candidates ``(C, G)`` in order, from ``best = -FLT_MAX``. Returns (index of the last kept candidate
    or -1, its scale).

    Only a candidate whose score ``best`` is within ``_CONTENDER`` of the group's largest score can be the
    last one kept: once the scan has passed such a contender, every candidate far below it fails the test,
    and the first contender passes whatever came before. Where every non-contender is at least ``_GAP``
    below and all sums lie where float products are accurate, the scan runs on the contenders alone; the
    other groups (NaN/inf, huge or tiny sums, near-ties at the threshold, many contenders) take the full scan.
    """
    C, G = sqx.shape
    pos = sq2 > 0
    score = np.divide(sqx, sq2, out=np.full_like(sqx, -np.inf), where=pos)
    score *= sqx
    top = score.max(axis=0)
    s2_in = np.where(pos, sq2, _SAFE_LO)
    ax = np.abs(np.where(pos, sqx, F32(0)))
    safe = (top >= _SAFE_LO) & (top <= _SAFE_HI) & (s2_in.min(axis=0) >= _SAFE_LO) \
        & (s2_in.max(axis=0) <= _SAFE_HI) & (ax.max(axis=0) <= _SAFE_HI)
    hi = score >= top * (F32(1) - _CONTENDER)
    near = score >= top * (F32(1) - _GAP)
    count = hi.sum(axis=0)
    safe &= (near.sum(axis=0) == count) & (count <= _MAX_CONTENDERS)
    kept = np.full(G, -1, dtype=np.intp)
    scale = np.zeros(G, dtype=F32)
    g_fast = np.flatnonzero(safe)
    if g_fast.size:
        sub = hi[:, g_fast].T  # (g, C): group-major, candidates in order
        gi, ci = np.nonzero(sub)
        rank = np.arange(len(gi)) - np.repeat(np.cumsum(count[g_fast]) - count[g_fast], count[g_fast])
        best = np.full(len(g_fast), -FLT_MAX, dtype=F32)
        ks, ss = kept[g_fast], scale[g_fast]
        for r in range(int(count[g_fast].max())):
            sel = rank == r
            g, c = gi[sel], ci[sel]
            x, s2 = sqx[c, g_fast[g]], sq2[c, g_fast[g]]
            ok = x * x > best[g] * s2
            sc = x / s2
            g, sc, x, c = g[ok], sc[ok], x[ok], c[ok]
            ss[g], best[g], ks[g] = sc, sc * x, c
        kept[g_fast], scale[g_fast] = ks, ss
    g_slow = np.flatnonzero(~safe)
    if g_slow.size:
        kept[g_slow], scale[g_slow] = _full_scan(sqx[:, g_slow], sq2[:, g_slow])
    return kept, scale


class _IQ1Requests(Requests):
    """Neighbour searches with the IQ1 distance: the values of row ``shift`` of ``XX`` (per request)."""

    def __init__(self, u, src, scale, xtab, wtab, shift):
        super().__init__(u, src, scale, xtab, wtab)
        self.shift = shift

    def terms(self, rows: np.ndarray, ncol: int = 24) -> np.ndarray:
        """``w[i]*diff*diff``, ``diff = scale*xx[l] - x[i]``, column ``8*l + i``; columns from 24 on are 1."""
        s = self.src[rows]
        x, w = np.take(self.xtab, s, axis=0), np.take(self.wtab, s, axis=0)
        q = XX[self.shift[rows]]  # (M, 3)
        sc = self.scale[rows]
        t = np.empty((len(rows), ncol), dtype=F32)
        t[:, 24:] = 1
        for lv in range(3):
            diff = (sc * q[:, lv])[:, None] - x
            tc = w * diff
            tc *= diff
            t[:, 8 * lv:8 * lv + 8] = tc
        return t


def neighbours(grid: Grid, u: np.ndarray, xrows: np.ndarray, wrows: np.ndarray, scale: np.ndarray,
               shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``iq1_find_best_neighbour2`` for octets off the grid: packed levels ``u`` (M,), their values and
    weights ``(M, 8)``, scales and shift rows (0: ``x_p``, 1: ``x_m``). Returns (grid index, found); not
    found is where C falls back to a scan that reads past the octet, then aborts (see ``iq1``)."""
    req = _IQ1Requests(u, np.arange(len(u)), scale, np.ascontiguousarray(xrows), np.ascontiguousarray(wrows),
                       shift)
    return best_neighbours(grid, req)


def refit_sums(w: np.ndarray, q: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sumqx += w*q*xb; sumq2 += w*q*q`` over axis 0 in order (element-major ``(n, ...)`` arrays)."""
    wq = w * q
    sumqx = seq_sum(wq * xb)
    wq *= q
    return sumqx, seq_sum(wq)
