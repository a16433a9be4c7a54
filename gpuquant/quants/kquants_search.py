"""Scale searches of the K-quants, vectorized across groups (ggml-quants.c ``make_q*_quants``).

Every function takes a group of ``n`` values laid out as ``x[i, g]``: row ``i`` is the position inside a
group, column ``g`` one group (a 16- or 32-value sub-block, or the 8/16 scales of a super-block).
The C code runs one group at a time; here all groups take the same number of steps and every branch
becomes a mask.  Inside a group the operation order of the C loop is kept: sums run sequentially over
``i`` (``seq_sum``, never ``np.sum``), every value is float32 (constants are ``np.float32``), and
``a*b + c`` is two roundings, as in gcc -O3 without FMA.  Integer results follow the C storage types
(``uint8_t`` wraps).

Exact shortcuts that keep the searches fast (each covered by tests/test_kquants.py):

* ``nearest_int`` followed by a clamp and a cast to float is done in float (``np.rint``, round half to
  even like the magic-number trick, then ``np.clip``), which is the same value whenever every
  ``|t| < 2**22 - 1``; that bound is checked per call from the group extremes, and the integer trick runs
  otherwise.  (``np.rint`` gives -0.0 where the trick gives 0; a zero level only ever enters products
  that are summed from +0.0, so the sign cannot show.)
* A search remembers the best step's parameters, not its levels; the levels are recomputed once at the
  end from those parameters (the same float operations give the same integers).
* Group extremes come from ``max``/``min`` reductions (order-free without NaN; NaN takes the C loop).
* The ``itry`` refinement passes run as rounds over all groups at once (``_refine``).
"""
from __future__ import annotations

import numpy as np

from .common import F32, GROUP_MAX_EPS, nearest_int, seq_sum

__all__ = ["first_absmax", "make_q3_quants", "make_qkx_quants", "make_qp_quants", "make_qx_quants",
           "running_max"]

_EXACT = F32(4194303.0)  # below this, round(t) < 2**22 and the float rounding equals nearest_int


def first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }`` from amax = max = 0, over axis 0."""
    hi, lo = x.max(axis=0), x.min(axis=0)
    if not (np.isnan(hi).any() or np.isnan(lo).any()):  # C skips NaN (comparisons with it are false)
        amax = np.maximum(np.abs(hi), np.abs(lo))
        # the largest magnitude is +hi or lo, unless both +a and -a occur: then the first one counts
        vmax = np.where(hi > -lo, hi, lo)
        tie = np.flatnonzero((hi == -lo) & (hi > 0))
        if tie.size:
            sub = x[:, tie]
            first = np.argmax(np.abs(sub) == amax[tie], axis=0)
            vmax[tie] = sub[first, np.arange(tie.size)]
        return amax, np.where(amax > 0, vmax, F32(0))
    amax = np.zeros(x.shape[1:], F32)
    vmax = np.zeros(x.shape[1:], F32)
    for i in range(x.shape[0]):
        ax = np.abs(x[i])
        gt = ax > amax
        amax = np.where(gt, ax, amax)
        vmax = np.where(gt, x[i], vmax)
    return amax, vmax


def running_max(x: np.ndarray) -> np.ndarray:
    """``float m = 0; for (i...) if (x[i] > m) m = x[i];`` over axis 0."""
    m = np.zeros(x.shape[1:], F32)
    for i in range(x.shape[0]):
        m = np.where(x[i] > m, x[i], m)
    return m


def _levels_int(t: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``MAX(lo, MIN(hi, nearest_int(t)))`` as int32."""
    return np.clip(nearest_int(t), lo, hi, out=None)


def _levels_f32(t: np.ndarray, lo: int, hi: int, exact: bool) -> np.ndarray:
    """``(float)MAX(lo, MIN(hi, nearest_int(t)))``, in place in ``t`` when ``exact`` (``_below_exact``)."""
    if not exact:
        return _levels_int(t, lo, hi).astype(F32)
    np.rint(t, out=t)
    return np.clip(t, F32(lo), F32(hi), out=t)


def _below_exact(*bounds: np.ndarray) -> bool:
    """True when every |bound| < 4194303 (NaN and inf fail)."""
    return all(bool((np.abs(b) < _EXACT).all()) for b in bounds)


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``: returns (scale, L as int32 in [0, 2*nmax))."""
    lo, hi = -nmax, nmax - 1
    with np.errstate(all="ignore"):
        amax, vmax = first_absmax(x)
        zero = amax < GROUP_MAX_EPS
        w = x * x if qw is None else qw
        wx = w * x
        t = np.empty_like(x)
        prod = np.empty_like(x)

        def sums(iscale):
            # |iscale*x| <= |iscale*max| for every x of a group; all-zero groups are discarded at the end
            iscale = np.where(zero, F32(0), iscale)
            np.multiply(x, iscale, out=t)
            lf = _levels_f32(t, lo, hi, _below_exact(iscale * vmax))
            np.multiply(wx, lf, out=prod)
            sumlx = seq_sum(prod)
            np.multiply(w, lf, out=prod)
            np.multiply(prod, lf, out=prod)
            return iscale, sumlx, seq_sum(prod)

        best_iscale, sumlx, suml2 = sums(F32(-nmax) / vmax)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale, sumlx, suml2 = sums(-(F32(nmax) + F32(0.1) * F32(step)) / vmax)
            upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            new_scale = sumlx / suml2
            scale = np.where(upd, new_scale, scale)
            best = np.where(upd, new_scale * sumlx, best)
            best_iscale = np.where(upd, iscale, best_iscale)
        L = _levels_int(x * best_iscale, lo, hi) + nmax
        L[:, zero] = 0
        scale = np.where(zero, F32(0), scale)
    return scale, L


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
    new_l = np.minimum(new_l, hi) if qp else np.clip(new_l, lo, hi, out=new_l)
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
        amax, vmax = first_absmax(x)
        L = _levels_int((F32(-nmax) / vmax) * x, -nmax, nmax - 1)
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


def make_qkx_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                    use_mad: bool, qkx3: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants`` (qkx3=False) / ``make_qkx3_quants`` (qkx3=True) with explicit weights.

    Returns (scale, the_min, L as int32 in [0, nmax]).  The two C functions differ only in the
    flat-group test (``max == min`` vs ``max <= min``) and in the default weights (callers pass them).
    Note ``min`` is updated inside the step loop in C, and later steps use the new one.
    """
    n = x.shape[0]
    with np.errstate(all="ignore"):
        # min and max: np.min/np.max are the C loop's values unless a NaN is there; they may differ in the
        # sign of a zero minimum, which cannot show (it only ever meets +-0 sums, subtractions from
        # nonzero values, squares, and nearest_int/fp16 of +-0)
        xmin, xmax = x.min(axis=0), x.max(axis=0)
        if np.isnan(xmin).any() or np.isnan(xmax).any():
            xmin, xmax = x[0].copy(), x[0].copy()
            for i in range(1, n):
                xmin = np.where(x[i] < xmin, x[i], xmin)
                xmax = np.where(x[i] > xmax, x[i], xmax)
        sum_w = seq_sum(w, start_zero=False)  # sum_w = weights[0], then += weights[i]
        sum_x = seq_sum(w * x, start_zero=False)  # sum_x = sum_w * x[0], then += w * x[i]
        mn = np.where(xmin > 0, F32(0), xmin)
        flat = (xmax <= mn) if qkx3 else (xmax == mn)
        flat_min = -mn
        lf = np.empty_like(x)
        prod = np.empty_like(x)

        def levels(iscale, mn):
            # iscale*(x - min) is monotonic in x, so its extremes bound every value of the group;
            # flat groups (whose iscale is inf) are discarded at the end
            iscale = np.where(flat, F32(0), iscale)
            np.subtract(x, mn, out=lf)
            np.multiply(lf, iscale, out=lf)
            exact = _below_exact(iscale * (xmax - mn), iscale * (xmin - mn))
            return iscale, _levels_f32(lf, 0, nmax, exact)

        def error(scale, lf, mn):
            np.multiply(lf, scale, out=prod)
            np.add(prod, mn, out=prod)
            np.subtract(prod, x, out=prod)
            if use_mad:
                np.abs(prod, out=prod)
            else:
                np.multiply(prod, prod, out=prod)
            np.multiply(w, prod, out=prod)
            return seq_sum(prod)

        iscale, l0 = levels(F32(nmax) / (xmax - mn), mn)
        scale = F32(1) / iscale
        best = error(scale, l0, mn)
        best_iscale, best_mn = iscale, mn
        for step in range(nstep + 1):
            iscale, l = levels((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (xmax - mn), mn)
            np.multiply(w, l, out=prod)
            sum_l = seq_sum(prod)
            sum_xl = seq_sum(prod * x)
            np.multiply(prod, l, out=prod)
            sum_l2 = seq_sum(prod)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            cur = error(this_scale, l, this_min)
            upd = (D > 0) & (cur < best)
            best = np.where(upd, cur, best)
            scale = np.where(upd, this_scale, scale)
            best_iscale = np.where(upd, iscale, best_iscale)
            best_mn = np.where(upd, mn, best_mn)
            mn = np.where(upd, this_min, mn)
        L = _levels_int((x - best_mn) * best_iscale, 0, nmax)
        L[:, flat] = 0
        scale = np.where(flat, F32(0), scale)
        the_min = np.where(flat, flat_min, -mn)
    return scale, the_min, L


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
            l = np.minimum(nearest_int(iscale_is * x), nmax)
            diff = x - scale_is * l.astype(F32)
            mse = seq_sum(qw * diff * diff)
            upd = mse < best
            best = np.where(upd, mse, best)
            iscale = np.where(upd, iscale_is, iscale)
        l = np.minimum(nearest_int(iscale * x), nmax)
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
