"""Scale searches of the K-quants, vectorized across groups (ggml-quants.c ``make_q*_quants``).

Every function takes a group of ``n`` values laid out as ``x[i, g]``: row ``i`` is the position inside a
group, column ``g`` one group (a 16- or 32-value sub-block, or the 8/16 scales of a super-block).
The C code runs one group at a time; here all groups take the same number of steps and every branch
becomes a mask.  Inside a group the operation order of the C loop is kept: sums run sequentially over
``i`` (never ``np.sum``), every value is float32 (constants are ``np.float32``), and ``a*b + c`` is two
roundings, as in gcc -O3 without FMA.  Integer results follow the C storage types (``uint8_t`` wraps).
"""
from __future__ import annotations

import numpy as np

from .common import F32, GROUP_MAX_EPS, nearest_int, seq_sum

__all__ = ["make_q3_quants", "make_qkx_quants", "make_qp_quants", "make_qx_quants"]


def _first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }`` from amax = max = 0."""
    amax = np.zeros(x.shape[1:], F32)
    vmax = np.zeros(x.shape[1:], F32)
    for i in range(x.shape[0]):
        ax = np.abs(x[i])
        gt = ax > amax
        amax = np.where(gt, ax, amax)
        vmax = np.where(gt, x[i], vmax)
    return amax, vmax


def _clamped(l: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``MAX(lo, MIN(hi, l))`` on ints, in place."""
    np.minimum(l, hi, out=l)
    np.maximum(l, lo, out=l)
    return l


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``: returns (scale, L as int32 in [0, 2*nmax))."""
    with np.errstate(all="ignore"):
        amax, vmax = _first_absmax(x)
        w = x * x if qw is None else qw
        wx = w * x

        def quant(iscale):
            l = _clamped(nearest_int(iscale * x), -nmax, nmax - 1)
            lf = l.astype(F32)
            wl = w * lf
            return l, seq_sum(wx * lf), seq_sum(wl * lf)

        iscale = F32(-nmax) / vmax
        L, sumlx, suml2 = quant(iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / vmax
            l, sumlx, suml2 = quant(iscale)
            upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            np.copyto(L, l, where=upd)
            new_scale = sumlx / suml2
            scale = np.where(upd, new_scale, scale)
            best = np.where(upd, new_scale * sumlx, best)
        L += nmax
        zero = amax < GROUP_MAX_EPS
        np.copyto(L, 0, where=zero)
        scale = np.where(zero, F32(0), scale)
    return scale, L


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)``: returns (scale, L as int32 in [0, 2*nmax))."""
    n = x.shape[0]
    with np.errstate(all="ignore"):
        amax, vmax = _first_absmax(x)
        iscale = F32(-nmax) / vmax
        L = _clamped(nearest_int(iscale * x), -nmax, nmax - 1)
        w = x * x
        wx = w * x
        Lf = L.astype(F32)
        sumlx = seq_sum(wx * Lf)
        suml2 = seq_sum(w * Lf * Lf)
        for _ in range(5):
            # A pass that changes nothing leaves the state as it was, so the C early exit is a no-op here.
            any_changed = False
            for i in range(n):
                li = Lf[i]
                slx = sumlx - wx[i] * li
                ok = slx > 0
                sl2 = suml2 - w[i] * li * li
                new_l = _clamped(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1)
                nl = new_l.astype(F32)
                slx = slx + wx[i] * nl
                sl2 = sl2 + w[i] * nl * nl
                acc = ok & (new_l != L[i]) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
                if acc.any():
                    any_changed = True
                    np.copyto(L[i], new_l, where=acc)
                    np.copyto(Lf[i], nl, where=acc)
                    sumlx = np.where(acc, slx, sumlx)
                    suml2 = np.where(acc, sl2, suml2)
            if not any_changed:
                break
        L += nmax
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
        zero = amax < GROUP_MAX_EPS
        np.copyto(L, 0, where=zero)
        scale = np.where(zero, F32(0), scale)
    return scale, L


def make_qkx_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                    use_mad: bool, qkx3: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants`` (qkx3=False) / ``make_qkx3_quants`` (qkx3=True) with explicit weights.

    Returns (scale, the_min, L as int32 in [0, nmax]).  The two C functions differ only in the
    flat-group test (``max == min`` vs ``max <= min``) and in the default weights (callers pass them).
    """
    n = x.shape[0]
    with np.errstate(all="ignore"):
        mn = x[0].copy()
        mx = x[0].copy()
        sum_w = w[0].copy()
        sum_x = sum_w * x[0]
        for i in range(1, n):
            mn = np.where(x[i] < mn, x[i], mn)
            mx = np.where(x[i] > mx, x[i], mx)
            sum_w = sum_w + w[i]
            sum_x = sum_x + w[i] * x[i]
        mn = np.where(mn > 0, F32(0), mn)
        flat = (mx <= mn) if qkx3 else (mx == mn)
        flat_min = -mn

        def error(scale, lf, mn):
            diff = scale * lf + mn - x
            diff = np.abs(diff) if use_mad else diff * diff
            return seq_sum(w * diff)

        iscale = F32(nmax) / (mx - mn)
        scale = F32(1) / iscale
        L = _clamped(nearest_int(iscale * (x - mn)), 0, nmax)
        best = error(scale, L.astype(F32), mn)
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn)
            l = _clamped(nearest_int(iscale * (x - mn)), 0, nmax)
            lf = l.astype(F32)
            wl = w * lf
            sum_l = seq_sum(wl)
            sum_l2 = seq_sum(wl * lf)
            sum_xl = seq_sum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            cur = error(this_scale, lf, this_min)
            upd = (D > 0) & (cur < best)
            np.copyto(L, l, where=upd)
            best = np.where(upd, cur, best)
            scale = np.where(upd, this_scale, scale)
            mn = np.where(upd, this_min, mn)
        np.copyto(L, 0, where=flat)
        scale = np.where(flat, F32(0), scale)
        the_min = np.where(flat, flat_min, -mn)
    return scale, the_min, L


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``make_qp_quants(n, nmax, x, L, quant_weights)``: returns (scale, L as the uint8_t values, int32)."""
    n = x.shape[0]
    with np.errstate(all="ignore"):
        vmax = np.zeros(x.shape[1:], F32)
        for i in range(n):
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
        sumlx = seq_sum(wx * lf)
        suml2 = seq_sum(qw * lf * lf)
        Lf = L.astype(F32)
        for _ in range(5):
            any_changed = False
            for i in range(n):
                li = Lf[i]
                slx = sumlx - wx[i] * li
                sl2 = suml2 - qw[i] * li * li
                ok = (slx > 0) & (sl2 > 0)
                new_l = np.minimum(nearest_int(x[i] * sl2 / slx), nmax)
                nl = new_l.astype(F32)
                slx = slx + wx[i] * nl
                sl2 = sl2 + qw[i] * nl * nl
                acc = ok & (new_l != L[i]) & (slx * slx * suml2 > sumlx * sumlx * sl2)
                if acc.any():
                    any_changed = True
                    np.copyto(L[i], new_l & 0xFF, where=acc)
                    np.copyto(Lf[i], L[i].astype(F32), where=acc)
                    sumlx = np.where(acc, slx, sumlx)
                    suml2 = np.where(acc, sl2, suml2)
            if not any_changed:
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
        zero = vmax < GROUP_MAX_EPS
        np.copyto(L, 0, where=zero)
        scale = np.where(zero, F32(0), scale)
    return scale, L
