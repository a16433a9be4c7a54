"""Shared numpy helpers that reproduce ggml's float32 arithmetic bit for bit.

Conventions used by every family module:

* Everything stays float32. Constants are ``np.float32`` so nothing promotes to float64.
* Blocks are processed *element-major*: an array of shape ``(n, *batch)`` holds element ``j`` of every
  block in row ``j`` (``blocks_t`` builds it), so a C loop ``for (j = 0; j < n; ++j) acc += f(x[j])`` becomes
  a sum over the first axis, adding whole ``batch`` vectors in the C order (``seq_sum``).
  Never use ``np.sum``/``np.dot`` along a contiguous axis for such sums: numpy sums those pairwise.
* The comments name the ggml function (ggml/src/ggml-quants.c, ggml-impl.h) a helper mirrors.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
U32 = np.uint32

__all__ = [
    "F32",
    "GROUP_MAX_EPS",
    "absmax_first",
    "blocks_t",
    "bf16_bits",
    "fp16_bits",
    "fp16_to_fp32",
    "make_qkx3_quants",
    "make_qx_quants",
    "nearest_int",
    "pack_nibbles",
    "pack_qh",
    "roundf",
    "row_chunks",
    "row_sum_sq",
    "safe_recip",
    "seq_sum",
    "trunc_int",
]

# ggml-quants.c: #define GROUP_MAX_EPS 1e-15f
GROUP_MAX_EPS = F32(1e-15)
_MAGIC = F32(12582912.0)  # 1.5 * 2**23, the nearest_int trick


# ----------------------------------------------------------------------------- rounding and conversions


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml ``nearest_int``: ``x + 12582912.f``, low 23 mantissa bits minus 0x400000 (int32).

    Round-half-to-even for ``|x| < 2**22``; for anything larger (ggml only asserts in debug builds) it
    returns the same garbage bits as C, so even out-of-range inputs agree.
    """
    v = np.add(x, _MAGIC, dtype=F32)
    i = v.view(np.int32)
    np.bitwise_and(i, 0x007FFFFF, out=i)
    np.subtract(i, 0x00400000, out=i)
    return i


def roundf(x: np.ndarray) -> np.ndarray:
    """C ``roundf``: nearest, halves away from zero (float32 result).

    ``trunc(x + copysign(0.5 - ulp/2, x))`` would be off for large odd values; this form is exact:
    ``t = trunc(x)``, then add ``sign(x)`` where ``|x - t| >= 0.5`` (the difference is exact in float32).
    """
    x = np.asarray(x, dtype=F32)
    t = np.trunc(x)
    adj = np.abs(x - t) >= F32(0.5)
    return np.where(adj, t + np.copysign(F32(1.0), x), t).astype(F32, copy=False)


def trunc_int(x: np.ndarray) -> np.ndarray:
    """C ``(int)x`` on x86-64 (cvttss2si): truncation toward zero; NaN/inf/out of range -> INT_MIN."""
    with np.errstate(invalid="ignore"):
        return np.asarray(x, dtype=F32).astype(np.int32)


def safe_recip(d: np.ndarray) -> np.ndarray:
    """``d ? 1.0f/d : 0.0f`` (float32)."""
    d = np.asarray(d, dtype=F32)
    with np.errstate(divide="ignore", over="ignore"):
        r = np.divide(F32(1.0), d, dtype=F32)
    return np.where(d != 0, r, F32(0.0)).astype(F32, copy=False)


_CONV_CHUNK = 1 << 16  # elements per step of the bit conversions: scratch stays in cache, no page faults


def fp16_bits(x: np.ndarray) -> np.ndarray:
    """``GGML_FP32_TO_FP16`` (ggml_compute_fp32_to_fp16) as uint16 bits, same shape as ``x``.

    A port of ggml's branch-free software conversion (round to nearest even, fp16 subnormals kept,
    overflow to inf, every NaN -> 0x7E00 with its sign): scale ``|f|`` to push the result into place,
    add a power of two chosen from the exponent so the float addition itself rounds, read the bits.
    Runs in place on three reused scratch buffers, a cache-sized chunk at a time (numpy's own float16
    cast is slower, and much slower off the normal range).
    """
    f = np.ascontiguousarray(x, dtype=F32)
    flat = f.reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint16)
    m = min(flat.size, _CONV_CHUNK)
    s_base, s_shl, s_bits = np.empty(m, F32), np.empty(m, U32), np.empty(m, U32)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, flat.size, _CONV_CHUNK):
            c = flat[i:i + _CONV_CHUNK]
            k = c.size
            w = c.view(U32)
            base, shl1, bits = s_base[:k], s_shl[:k], s_bits[:k]
            np.abs(c, out=base)
            base *= F32(2.0**112)  # scale_to_inf
            base *= F32(2.0**-110)  # scale_to_zero
            np.left_shift(w, U32(1), out=shl1)
            np.bitwise_and(shl1, U32(0xFF000000), out=bits)  # bias
            np.clip(bits, U32(0x71000000), U32(0xFF000000), out=bits)  # max(bias, 0x71000000)
            bits >>= U32(1)
            bits += U32(0x07800000)
            bits.view(F32)[...] += base  # the float addition rounds
            tmp = base.view(U32)  # base is no longer needed: reuse it for the exponent, then the sign
            np.right_shift(bits, U32(13), out=tmp)
            tmp &= U32(0x00007C00)
            bits &= U32(0x00000FFF)
            bits += tmp  # nonsign
            np.right_shift(w, U32(16), out=tmp)
            tmp &= U32(0x8000)
            bits |= tmp
            o = out[i:i + k]
            np.copyto(o, bits, casting="unsafe")
            nan = shl1 > U32(0xFF000000)
            if nan.any():
                o[nan] = (tmp[nan] | U32(0x7E00)).astype(np.uint16)
    return out.reshape(f.shape)


def fp16_to_fp32(h: np.ndarray) -> np.ndarray:
    """``GGML_FP16_TO_FP32`` of uint16 bits (exact; numpy's cast is exact too)."""
    return np.asarray(h, dtype=np.uint16).view(np.float16).astype(F32)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """``GGML_FP32_TO_BF16`` (ggml_compute_fp32_to_bf16): round to nearest even, NaN forced quiet."""
    f = np.ascontiguousarray(x, dtype=F32)
    flat = f.reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint16)
    s_r = np.empty(min(flat.size, _CONV_CHUNK), U32)
    for i in range(0, flat.size, _CONV_CHUNK):
        c = flat[i:i + _CONV_CHUNK]
        u = c.view(U32)
        r = s_r[:c.size]
        np.right_shift(u, U32(16), out=r)
        r &= U32(1)
        r += u
        r += U32(0x7FFF)
        r >>= U32(16)
        o = out[i:i + c.size]
        np.copyto(o, r, casting="unsafe")
        nan = np.isnan(c)
        if nan.any():
            o[nan] = ((u[nan] >> U32(16)) | U32(64)).astype(np.uint16)
    return out.reshape(f.shape)


# ----------------------------------------------------------------------------- layout and sums


def blocks_t(rows: np.ndarray, block: int) -> np.ndarray:
    """``(nrows, n_per_row)`` -> element-major ``(block, nrows * n_per_row // block)`` float32 copy.

    Column ``b`` is block ``b`` in memory order (row-major over rows, then blocks within a row).
    """
    flat = np.asarray(rows, dtype=F32).reshape(-1, block)
    return np.ascontiguousarray(flat.T)


def seq_sum(a: np.ndarray, start_zero: bool = True) -> np.ndarray:
    """``float s = 0; for (j...) s += a[j];`` over the first axis, in order, in float32.

    ``start_zero=False`` mirrors ``float s = a[0]; for (j = 1...)``. Starting from ``+0.0`` only matters
    for the sign of a zero sum (``0.0f + -0.0f`` is ``+0.0``).

    A C-contiguous array whose remaining axes hold at least two values is reduced by ``np.add.reduce``
    over axis 0: numpy adds whole rows in order there (pairwise summation is only used along the
    contiguous axis; see the ``np.sum`` notes). Anything else is looped explicitly.
    """
    a = np.asarray(a, dtype=F32)
    if a.ndim >= 2 and a.flags.c_contiguous and a[0].size >= 2:
        # -0.0 is the exact identity (-0.0 + v == v for every v, signed zeros included)
        return np.add.reduce(a, axis=0, initial=F32(0.0) if start_zero else F32(-0.0))
    acc = np.array(a[0], dtype=F32, copy=True)
    for j in range(1, a.shape[0]):
        np.add(acc, a[j], out=acc)
    if start_zero:
        acc += F32(0.0)
    return acc


def row_sum_sq(rows: np.ndarray) -> np.ndarray:
    """``float s = 0; for (j < n_per_row) s += x[j]*x[j];`` per row of ``(nrows, n)`` (float32, in order).

    ``np.add.accumulate`` is a running sum, hence sequential; its last column is the C result.
    """
    sq = np.multiply(rows, rows, dtype=F32)
    acc = np.add.accumulate(sq, axis=1, dtype=F32)
    # +0.0 start (only visible when every term is -0.0, which x*x never is; kept for symmetry with C)
    return np.add(acc[:, -1], F32(0.0), dtype=F32)


def absmax_first(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``amax = 0; max = 0; for (j) if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }``.

    Element-major ``x`` ``(n, *batch)``; returns ``(amax, max)`` with the first element of largest
    magnitude (strict ``>``), and ``max = +0.0`` where every element is zero. NaNs never win (``>`` is
    false), as in C.
    """
    ax = np.abs(x)
    nan = np.isnan(ax)
    if nan.any():
        ax = np.where(nan, F32(-1), ax)
    idx = np.argmax(ax, axis=0)
    amax = np.take_along_axis(ax, idx[None], axis=0)[0]
    mx = np.take_along_axis(x, idx[None], axis=0)[0]
    mx = np.where(amax > 0, mx, F32(0.0)).astype(F32, copy=False)
    return np.maximum(amax, F32(0)), mx


def row_chunks(nrows: int, n_per_row: int, target: int = 1 << 16):
    """Slices of rows holding about ``target`` elements each (at least one row), for cache-sized work."""
    step = max(1, target // max(1, n_per_row))
    for r0 in range(0, nrows, step):
        yield slice(r0, min(nrows, r0 + step))


# ----------------------------------------------------------------------------- bit packing


def pack_nibbles(L: np.ndarray) -> np.ndarray:
    """``qs[j] = L[j] | (L[j + n/2] << 4)`` stored to uint8, for element-major ``L`` ``(n, *batch)``.

    Returns ``(n/2, *batch)`` uint8. Like C, the low value is not masked (callers pass 0..15).
    """
    h = L.shape[0] // 2
    lo = L[:h].astype(np.uint8)
    hi = L[h:].astype(np.uint8) << 4
    return lo | hi


def pack_qh(L: np.ndarray) -> np.ndarray:
    """Q5 high bits: ``qh |= ((L[j] & 0x10) >> 4) << j`` over ``j < 32`` -> ``(4, nblk)`` uint8 (little endian)."""
    bits = ((L.astype(np.uint8) >> 4) & 1).astype(np.uint8)  # (32, nblk)
    return np.packbits(bits.reshape(4, 8, -1), axis=1, bitorder="little")[:, 0, :]


# ----------------------------------------------------------------------------- block quantizers


def _rmse_weights(x: np.ndarray, rmse_type: int, qw: np.ndarray | None) -> np.ndarray:
    if qw is not None:
        return qw
    if rmse_type == 1:
        return x * x
    if rmse_type == 2:
        return np.ones_like(x)
    if rmse_type == 3:
        return np.abs(x)
    return np.sqrt(np.abs(x))


def make_qx_quants(nmax: int, x: np.ndarray, rmse_type: int, qw: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """ggml ``make_qx_quants(n, nmax, x, L, rmse_type, qw)`` on element-major ``x`` ``(n, *batch)``.

    Returns ``(scale float32 batch, L int32 (n, *batch))`` with ``L`` in ``[0, 2*nmax-1]``.

    ``|iscale * x| <= nmax + 1`` for every candidate scale, so ``nearest_int`` then clamping equals
    clamping then ``rint`` in float32: the levels stay float (no int round trip). The winning candidate's
    scale is remembered and its levels recomputed once at the end.
    """
    x = np.asarray(x, dtype=F32)
    fnmax = F32(nmax)
    lo, hi = F32(-nmax), F32(nmax - 1)
    amax, mx = absmax_first(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx).astype(F32)  # all-zero blocks: computed, then discarded

    def levels(isc):
        v = isc * x
        np.clip(v, lo, hi, out=v)  # one clip call: np.maximum/minimum with a scalar are much slower
        return np.rint(v, out=v)

    def final_levels(isc):
        return np.where(zero, 0, levels(isc).astype(np.int32) + nmax)

    iscale = np.divide(-fnmax, mx, dtype=F32)
    if rmse_type == 0:
        return np.where(zero, F32(0), np.divide(F32(1), iscale, dtype=F32)).astype(F32), final_levels(iscale)
    return_early = rmse_type < 0
    w = _rmse_weights(x, abs(rmse_type), qw)
    wx = w * x

    def sums(lf):
        t = wx * lf
        sumlx = seq_sum(t)
        np.multiply(w, lf, out=t)
        t *= lf
        return sumlx, seq_sum(t)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sumlx, suml2 = sums(levels(iscale))
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        if return_early:
            inv = np.divide(F32(1), iscale, dtype=F32)
            s = np.where(suml2 > 0, F32(0.5) * (scale + inv), inv).astype(F32)
            return np.where(zero, F32(0), s).astype(F32), final_levels(iscale)
        best = scale * sumlx
        best_isc = iscale
        for is_ in range(-9, 10):
            if is_ == 0:
                continue
            isc = np.divide(-(fnmax + F32(0.1) * F32(is_)), mx, dtype=F32)
            sumlx, suml2 = sums(levels(isc))
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if better.any():
                best_isc = np.where(better, isc, best_isc).astype(F32)
                scale = np.where(better, sumlx / suml2, scale).astype(F32)
                best = np.where(better, scale * sumlx, best).astype(F32)
    return np.where(zero, F32(0), scale).astype(F32), final_levels(best_isc)


def make_qkx3_quants(nmax: int, x: np.ndarray, weights: np.ndarray | None, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml ``make_qkx3_quants`` on element-major ``x`` ``(n, *batch)``.

    Returns ``(scale, the_min, L)``: float32 batch, float32 batch (``*the_min = -min``), int32 ``(n, *batch)``.
    """
    x = np.asarray(x, dtype=F32)
    w = weights if weights is not None else x * x
    # min/max and the weighted sums start from element 0, then run over 1..n-1; the first minimum
    # (strict <) is kept, which decides the sign of a zero minimum (and NaNs are skipped unless first)
    mn, mx = x[0], x[0]
    for v in x[1:]:
        mn = np.where(v < mn, v, mn)
        mx = np.where(v > mx, v, mx)
    sum_w = seq_sum(w, start_zero=False)
    wx = w * x
    sum_x = seq_sum(wx, start_zero=False)  # sum_x = sum_w * x[0] = w[0]*x[0], then += w*x[i]
    mn = np.where(mn > 0, F32(0), mn).astype(F32)  # if (min > 0) min = 0
    flat = mx <= mn
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = np.divide(F32(nmax), mx - mn, dtype=F32)
        scale = np.divide(F32(1), iscale, dtype=F32)

        def diff_sum(sc, Lf, m):
            d = (sc * Lf + m) - x
            d = np.abs(d) if use_mad else d * d
            return seq_sum(w * d)

        L = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
        best_mad = diff_sum(scale, L.astype(F32), mn)
        the_min = mn  # C's `min`, which the search below updates (and then uses in later steps)
        for is_ in range(nstep + 1) if nstep >= 1 else ():
            isc = np.divide(F32(rmin) + F32(rdelta) * F32(is_) + F32(nmax), mx - the_min, dtype=F32)
            la = np.clip(nearest_int(isc * (x - the_min)), 0, nmax)
            lf = la.astype(F32)
            wl = w * lf
            sum_l = seq_sum(wl)
            sum_l2 = seq_sum(wl * lf)
            sum_xl = seq_sum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            ok = D > 0
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min).astype(F32)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(F32)
            mad = diff_sum(this_scale, lf, this_min)
            better = ok & (mad < best_mad)
            if better.any():
                L = np.where(better, la, L)
                best_mad = np.where(better, mad, best_mad).astype(F32)
                scale = np.where(better, this_scale, scale).astype(F32)
                the_min = np.where(better, this_min, the_min).astype(F32)
    scale = np.where(flat, F32(0), scale).astype(F32)
    the_min = np.where(flat, mn, the_min).astype(F32)
    L = np.where(flat, 0, L)
    return scale, -the_min, L
