"""The K-quant-only scale searches of ggml-quants.c: ``make_q3_quants`` and ``make_qp_quants``.

Both end in the ``itry`` refinement passes (``_refine``). Groups are element-major ``x[i, g]`` like the
shared searches in ``common`` (``make_qx_quants``, ``make_qkx_quants``; read the notes there): all
groups take the same steps, branches become masks, sums keep the C order (``seq_sum``), every value is
float32, and integer results follow the C storage types (``uint8_t`` wraps).  The ``itry`` passes run
as rounds over all groups at once (``_refine``); ``tests/test_kquants.py`` checks them against the C loop.
"""
from __future__ import annotations

import numpy as np

from .common import F32, GROUP_MAX_EPS, absmax_first, at_most, levels_int, nearest_int, seq_sum

__all__ = ["make_q3_quants", "make_qp_quants", "running_max"]


def running_max(x: np.ndarray) -> np.ndarray:
    """``float m = 0; for (i...) if (x[i] > m) m = x[i];`` over axis 0."""
    m = np.zeros(x.shape[1:], F32)
    for i in range(x.shape[0]):
        m = np.where(x[i] > m, x[i], m)
    return m


def _accepted_changes(x, w, wx, L, s1, s2, wxl, wll, lo, hi, qp, element_major=False):
    """The body of the C ``itry`` loop, tried at every element of every group under the same state.

    C-contiguous ``(groups, n)`` arrays, or ``(n, groups)`` with ``element_major``; ``s1``, ``s2``: each
    group's current sumlx/suml2; ``wxl``, ``wll``: ``w*x*L``, ``w*L*L`` of the current levels.  Returns
    every accepted change as (group, element, stored level, new sumlx, new suml2), in group, element
    order; only a group's first change in visiting order is what C would do next.
    """
    s1b, s2b = (s1, s2) if element_major else (s1[:, None], s2[:, None])
    slx = s1b - wxl
    sl2 = s2b - wll
    ok = (slx > 0) & (sl2 > 0) if qp else slx > 0
    new_l = nearest_int(x * sl2 / slx)
    new_l = at_most(new_l, hi) if qp else np.clip(new_l, np.int32(lo), np.int32(hi), out=new_l)
    ok &= new_l != L
    # the rest only where a level would change (flat indices; np.take is much faster than [g, i])
    k = np.flatnonzero(ok)
    if element_major:
        i, g = np.divmod(k, x.shape[1])
        order = np.argsort(g, kind="stable")  # by group, elements still in order
        k, g, i = k[order], g[order], i[order]
    else:
        g, i = np.divmod(k, x.shape[1])
    nl = np.take(new_l, k)
    nlf = nl.astype(F32)
    slx = np.take(slx, k) + np.take(wx, k) * nlf
    sl2 = np.take(sl2, k) + np.take(w, k) * nlf * nlf
    s1, s2 = np.take(s1, g), np.take(s2, g)
    acc = slx * slx * s2 > s1 * s1 * sl2
    if not qp:
        acc &= sl2 > 0
    nl = nl[acc]
    return g[acc], i[acc], (nl & 0xFF if qp else nl), slx[acc], sl2[acc]


def _refine(x, w, wx, L, sumlx, suml2, wxl, wll, lo, hi, qp):
    """The ``itry`` passes of make_q3_quants (qp=False) and make_qp_quants (qp=True), in place on ``L``.

    C visits the elements of a group in order, pass after pass (at most 5), and stops after a pass
    without change.  Here a round evaluates the next ``n`` visits of every group at once under its
    current state: the rest of the current pass, then the start of the next one (allowed because the
    current pass has changed something).  Up to the first accepted change that is exactly what C
    computes; the change is applied and the group goes on after it.  A group without a change in its
    next ``n`` visits never changes again: it is done.  ``wxl``, ``wll``: ``w*x*L`` and ``w*L*L`` of
    the starting levels.  Element-major ``(n, groups)`` arrays; returns the final (sumlx, suml2).
    """
    n = x.shape[0]
    g, i, nl, slx, sl2 = _accepted_changes(x, w, wx, L, sumlx, suml2, wxl, wll, lo, hi, qp, element_major=True)
    if g.size == 0:
        return sumlx, suml2
    first = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))  # first element of each group
    g, i, nl, slx, sl2 = g[first], i[first], nl[first], slx[first], sl2[first]
    # the groups still changing, group-major so that later rounds gather whole groups; the weights
    # are recomputed from x (w = x*x for make_q3_quants, wx = w*x for both) rather than gathered
    cols = g
    X, LL = (np.ascontiguousarray(np.take(a, cols, axis=1).T) for a in (x, L))
    W = np.ascontiguousarray(np.take(w, cols, axis=1).T) if qp else None
    S1, S2 = slx, sl2
    m = cols.size
    LL[np.arange(m), i] = nl
    act = np.arange(m)               # working rows still changing
    pos = i + 1                      # next element to visit
    npass = np.zeros(m, np.intp)     # the pass that element belongs to (0-based)
    while act.size:
        sx, sL = np.take(X, act, axis=0), np.take(LL, act, axis=0)
        sw = np.take(W, act, axis=0) if qp else sx * sx
        swx = sw * sx
        lf = sL.astype(F32)
        g, i, nl, slx, sl2 = _accepted_changes(sx, sw, swx, sL, np.take(S1, act), np.take(S2, act), swx * lf,
                                               sw * lf * lf, lo, hi, qp)
        # visiting order: elements from pos on (this pass), then those before pos (next pass)
        wrap = i < np.take(pos, g)
        allowed = ~wrap | (np.take(npass, g) < 4)
        g, i, nl, slx, sl2, wrap = g[allowed], i[allowed], nl[allowed], slx[allowed], sl2[allowed], wrap[allowed]
        order = np.lexsort((i + wrap * n, g))
        first = order[np.flatnonzero(np.concatenate(([True], g[order][1:] != g[order][:-1])))] if g.size else g
        g, i, nl, slx, sl2, wrap = g[first], i[first], nl[first], slx[first], sl2[first], wrap[first]
        r = np.take(act, g)
        LL[r, i] = nl
        S1[r], S2[r] = slx, sl2
        act, pos, npass = r, i + 1, np.take(npass, g) + wrap
    L[:, cols] = LL.T
    sumlx[cols], suml2[cols] = S1, S2
    return sumlx, suml2


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)``: returns (scale, L as int32 in [0, 2*nmax))."""
    with np.errstate(all="ignore"):
        amax, vmax = absmax_first(x)
        L = levels_int((F32(-nmax) / vmax) * x, -nmax, nmax - 1)
        w = x * x
        wx = w * x
        Lf = L.astype(F32)
        wxl, wll = wx * Lf, w * Lf * Lf
        sumlx, suml2 = _refine(x, w, wx, L, seq_sum(wxl), seq_sum(wll), wxl, wll, -nmax, nmax - 1, qp=False)
        L += nmax
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
        zero = amax < GROUP_MAX_EPS
        L[:, zero] = 0
        scale = np.where(zero, F32(0), scale)
    return scale, L


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``make_qp_quants(n, nmax, x, L, quant_weights)``: returns (scale, L as the uint8_t values, int32)."""
    with np.errstate(all="ignore"):
        vmax = np.zeros(x.shape[1:], F32)
        for i in range(x.shape[0]):
            vmax = np.where(vmax > x[i], vmax, x[i])  # MAX(max, x[i])
        iscale = F32(nmax) / vmax
        L = nearest_int(iscale * x) & 0xFF
        scale = F32(1) / iscale
        diff = x - scale * L.astype(F32)
        best = seq_sum(qw * diff * diff)
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / vmax
            scale_is = F32(1) / iscale_is
            l = at_most(nearest_int(iscale_is * x), nmax)
            diff = x - scale_is * l.astype(F32)
            mse = seq_sum(qw * diff * diff)
            upd = mse < best
            best = np.where(upd, mse, best)
            iscale = np.where(upd, iscale_is, iscale)
        l = at_most(nearest_int(iscale * x), nmax)
        L = l & 0xFF
        lf = l.astype(F32)
        wx = qw * x
        # the sums start from the levels before the uint8_t store; the passes read the stored ones
        sumlx, suml2 = seq_sum(wx * lf), seq_sum(qw * lf * lf)
        Lf = L.astype(F32)
        sumlx, suml2 = _refine(x, qw, wx, L, sumlx, suml2, wx * Lf, qw * Lf * Lf, 0, nmax, qp=True)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
        zero = vmax < GROUP_MAX_EPS
        L[:, zero] = 0
        scale = np.where(zero, F32(0), scale)
    return scale, L
