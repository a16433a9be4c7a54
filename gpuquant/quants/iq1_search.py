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
every neighbour's distance is summed term by term as C does, on all octets of a chunk at once (``neighbours``).
"""
from __future__ import annotations

import functools

import numpy as np

from .common import F32, seq_sum
from .grids import Grid, _nonzero_sparse

__all__ = ["DELTA", "XX", "first_best", "neighbours", "octet_terms", "refit_sums", "sorted_prefix", "split_pairs",
           "split_sums_m", "split_sums_s"]

DELTA = F32(0.125)  # IQ1S_DELTA, IQ1M_DELTA
#: ``x_p`` (row 0) and ``x_m`` (row 1) as the C initializers compute them (float)
XX = np.array([[F32(-1) + DELTA, DELTA, F32(1) + DELTA], [F32(-1) - DELTA, -DELTA, F32(1) - DELTA]], dtype=F32)
FLT_MAX = F32(np.finfo(np.float32).max)

_GAP = F32(1e-5)  # relative gap between the contenders and the other candidates of a group
_SAFE_LO, _SAFE_HI = F32(2.0 ** -50), F32(2.0 ** 50)  # sums in this range: the products stay normal floats
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
    ``(sumw[i1] - sumw[0])*x[0]*x[0] + ...``. ``sumx[0] = 0`` is left out of the first difference (exact);
    ``x_m[1] = -x_p[1]``, so the middle terms are shared (negated for ``sumqx``: the same float)."""
    n = sumx.shape[0] - 1
    i1, i2 = split_pairs(n)
    G = sumx.shape[1]
    sqx = np.empty((len(i1), 2, G), dtype=F32)
    sq2 = np.empty((len(i1), 2, G), dtype=F32)
    x1 = XX[0, 1]
    for src, out, square in ((sumx, sqx, False), (sumw, sq2, True)):
        a = src[i1]
        top = src[i2]
        mid = top - a
        np.subtract(src[n][None, :], top, out=top)
        mid *= x1
        if square:
            mid *= x1
        t = np.empty_like(a)
        v = np.empty_like(a)
        for s in range(2):
            x0, x2 = XX[s, 0], XX[s, 2]
            np.multiply(a, x0, out=t)
            np.multiply(top, x2, out=v)
            if square:
                t *= x0
                v *= x2
            o = out[:, s]
            if square or s == 0:
                np.add(t, mid, out=o)
            else:
                np.subtract(t, mid, out=o)
            o += v
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


def _jump_scan(sqx: np.ndarray, sq2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The C scan over every candidate in order (``(C, G)``), from ``best = -FLT_MAX``, one accepted candidate
    per step: each step finds, for every group, the first later candidate that passes the test."""
    C, G = sqx.shape
    best = np.full(G, -FLT_MAX, dtype=F32)
    scale = np.zeros(G, dtype=F32)
    kept = np.full(G, -1, dtype=np.intp)
    sq = sqx * sqx
    after = np.arange(C)[:, None]
    act = np.arange(G)
    while act.size:
        s2 = sq2[:, act]
        ok = (s2 > 0) & (sq[:, act] > best[act] * s2) & (after > kept[act])
        has = ok.any(axis=0)
        c = ok.argmax(axis=0)[has]
        act = act[has]
        x = sqx[c, act]
        sc = x / sq2[c, act]
        scale[act], best[act], kept[act] = sc, sc * x, c
    return kept, scale


def _contenders(score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group (column of ``score``) the least threshold ``t`` among the top scores such that every score
    below ``t`` is below ``t*(1 - _GAP)``: (contender mask ``score >= t`` with its rows padded by False to whole
    8-byte words, their count, ``t``, the top score).
    Groups with no such gap among their top ``_MAX_CONTENDERS`` scores get count ``_MAX_CONTENDERS + 1``."""
    C, G = score.shape
    top = score.max(axis=0)
    t = top.copy()
    words = np.zeros((C, -(-G // 8) * 8), dtype=bool)  # the mask, rows padded to whole 8-byte words
    hi = words[:, :G]
    np.greater_equal(score, t, out=hi)
    count = np.count_nonzero(hi, axis=0)
    near = np.count_nonzero(score >= t * (F32(1) - _GAP), axis=0)
    todo = np.flatnonzero(near != count)
    for _ in range(_MAX_CONTENDERS):
        if not todo.size:
            break
        sub = score[:, todo]
        ts = np.maximum.reduce(sub, axis=0, where=~hi[:, todo], initial=-np.inf)
        h = sub >= ts
        hi[:, todo] = h
        t[todo] = ts
        count[todo] = np.count_nonzero(h, axis=0)
        gap = np.count_nonzero(sub >= ts * (F32(1) - _GAP), axis=0) == count[todo]
        todo = todo[~gap]
    count[todo] = _MAX_CONTENDERS + 1
    return words, count, t, top


def first_best(sqx: np.ndarray, sq2: np.ndarray, wsum: np.ndarray, axsum: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """The C scan ``if (sumq2 > 0 && sumqx*sumqx > best*sumq2) { scale = sumqx/sumq2; best = scale*sumqx; }``
    over candidates ``(C, G)`` in order, from ``best = -FLT_MAX``. Returns (index of the last kept candidate
    or -1, its scale). ``wsum``, ``axsum``: per group the sums of ``weight`` and ``weight*|x|``, which bound
    every ``sumq2`` (from ``wsum/64``: every ``q*q >= 1/64``) and ``|sumqx|``.

    The contenders of a group are its candidates whose score ``best`` is at least a threshold ``t`` below
    which every other score is at least ``_GAP`` lower (far more than the float errors of the test; ``t``
    is usually the largest score, see ``_contenders``). The last candidate kept is a contender: the first
    contender passes the test whatever came before it, and after it every non-contender fails. So where the
    sums lie where the products are normal floats, the scan runs on the contenders alone; the other groups
    (NaN/inf, huge or tiny sums, many near-ties) take the whole scan (``_jump_scan``).
    """
    C, G = sqx.shape
    score = np.divide(sqx, sq2)
    score *= sqx
    pos = sq2 > 0
    if not pos.all():
        score[~pos] = -np.inf
    hi, count, t, top = _contenders(score)
    safe = (t >= _SAFE_LO) & (top <= _SAFE_HI) & (wsum >= _SAFE_LO) & (wsum <= _SAFE_HI) \
        & (axsum <= _SAFE_HI) & (count <= _MAX_CONTENDERS)
    kept = np.full(G, -1, dtype=np.intp)
    scale = np.zeros(G, dtype=F32)
    ci, gi = _nonzero_sparse(hi)  # candidate-major (the padding columns are False)
    keep = safe[gi]
    ci, gi = ci[keep], gi[keep]
    o = np.argsort(gi, kind="stable")  # group-major, candidates in order
    ci, gi = ci[o], gi[o]
    starts = np.searchsorted(gi, gi, side="left")
    rank = np.arange(len(gi)) - starts
    best = np.full(G, -FLT_MAX, dtype=F32)
    for r in range(int(rank.max()) + 1 if rank.size else 0):
        sel = rank == r
        g, c = gi[sel], ci[sel]
        x, s2 = sqx[c, g], sq2[c, g]
        ok = x * x > best[g] * s2
        g, x, c = g[ok], x[ok], c[ok]
        sc = x / s2[ok]
        scale[g], best[g], kept[g] = sc, sc * x, c
    slow = np.flatnonzero(~safe)
    if slow.size:
        kept[slow], scale[slow] = _jump_scan(sqx[:, slow], sq2[:, slow])
    return kept, scale


def octet_terms(x: np.ndarray, w: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The terms ``w[i]*diff*diff``, ``diff = scale*xx[l] - x[i]``, of the C distance (exact float32) for
    every element ``i`` and level ``l`` of ``(M, 8)`` octets: ``(M, 24)``, column ``8*l + i``; ``xx`` is row
    ``shift`` (0: ``x_p``, 1: ``x_m``) of ``XX``."""
    q = XX[shift]  # (M, 3)
    t = np.empty((len(scale), 3, 8), dtype=F32)
    for lv in range(3):
        diff = (scale * q[:, lv])[:, None] - x
        np.multiply(w, diff, out=t[:, lv])
        t[:, lv] *= diff
    return t.reshape(-1, 24)


_PREFIX = 4  # elements whose partial distance sums are tabulated per octet (3**4 = 81 sums)
_ROW = 3 ** _PREFIX + 24  # per octet: the 81 partial sums, then the 24 terms


@functools.cache
def _term_codes(grid: Grid) -> np.ndarray:
    """Per entry of ``grid.neighbours``, the columns of ``_distance_table`` its distance adds, in order: the
    partial sum of its first ``_PREFIX`` levels, then the terms ``8*l + i`` of the others, ``(1 + 8 -
    _PREFIX, entries)`` uint8 (count slots give level-0 columns; no search reads them)."""
    lv = (grid.grid[grid.neighbours % grid.grid_size].astype(np.intp) - 1) // 2  # (entries, 8)
    prefix = (lv[:, :_PREFIX] * 3 ** np.arange(_PREFIX - 1, -1, -1)).sum(axis=1)
    rest = 3 ** _PREFIX + 8 * lv[:, _PREFIX:] + np.arange(_PREFIX, 8)
    return np.ascontiguousarray(np.concatenate([prefix[:, None], rest], axis=1).T.astype(np.uint8))


def _distance_table(terms: np.ndarray) -> np.ndarray:
    """``(M, _ROW)``: for every octet the C partial sums ``d2 = 0; d2 += t[0]; ... d2 += t[_PREFIX-1]`` of
    every level choice of its first ``_PREFIX`` elements (level of element 0 most significant), then its
    24 terms (column ``3**_PREFIX + 8*l + i``)."""
    t = terms.reshape(-1, 3, 8)
    part = t[:, :, 0] + F32(0)  # (M, 3)
    for i in range(1, _PREFIX):
        part = (part[:, :, None] + t[:, None, :, i]).reshape(len(t), -1)
    return np.concatenate([part, terms], axis=1)


_WIDTHS = np.array([16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 208])  # neighbour lists padded to these
_STEP_ELEMS = 1 << 19  # list entries x 8 per search step


def neighbours(grid: Grid, u: np.ndarray, xrows: np.ndarray, wrows: np.ndarray, scale: np.ndarray,
               shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``iq1_find_best_neighbour2`` for octets off the grid: packed levels ``u`` (M,), their values and
    weights ``(M, 8)``, scales and shift rows (0: ``x_p``, 1: ``x_m``). C sums the 8 terms of every
    neighbour in order and keeps the first with the least ``d2 < FLT_MAX``; here the same sums run on
    all requests at once, the lists padded with their last entry (an equal distance never wins).
    The partial sums over the first elements are tabulated per octet (``_distance_table``), so each
    neighbour adds the rest of its terms to one of them. Returns (grid index, found); not found is where C
    falls back to a scan that reads past the octet."""
    codes = _term_codes(grid)
    table = _distance_table(octet_terms(xrows, wrows, scale, shift))
    cnt, first = grid.nb_count[u], grid.nb_first[u]
    cls = np.searchsorted(_WIDTHS, cnt)
    gi = np.zeros(len(u), dtype=np.intp)
    found = np.zeros(len(u), dtype=bool)
    for c in np.unique(cls):
        width = int(_WIDTHS[c]) if c < len(_WIDTHS) else int(cnt.max())
        sel = np.flatnonzero(cls == c)
        step = max(1, _STEP_ELEMS // (8 * width))
        col = np.arange(width, dtype=np.intp)[None, :]
        for s0 in range(0, len(sel), step):
            idx = sel[s0:s0 + step]
            pos = first[idx][:, None] + np.minimum(col, cnt[idx][:, None] - 1)  # (m, W) list entries
            base = (np.arange(len(idx), dtype=np.intp) * _ROW)[:, None]
            flat = table[idx].reshape(-1)
            d2 = flat.take(np.add(codes[0].take(pos), base))  # the partial sum, then the other terms
            for k in range(1, len(codes)):
                d2 += flat.take(np.add(codes[k].take(pos), base))
            if not d2.max() < FLT_MAX:  # NaN or not below FLT_MAX never wins
                d2[~(d2 < FLT_MAX)] = np.inf
            j = np.argmin(d2, axis=1)
            r = np.arange(len(idx))
            gi[idx] = grid.neighbours[pos[r, j]]
            found[idx] = d2[r, j] < np.inf
    return gi, found


def refit_sums(w: np.ndarray, q: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sumqx += w*q*xb; sumq2 += w*q*q`` over axis 0 in order (element-major ``(n, ...)`` arrays)."""
    wq = w * q
    sumqx = seq_sum(wq * xb)
    wq *= q
    return sumqx, seq_sum(wq)
