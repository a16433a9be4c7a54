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
    "absmax_from_extremes",
    "absmax_loop",
    "at_most",
    "below_exact",
    "bf16_bits",
    "blocks_t",
    "dequantize_blocks",
    "fp16_bits",
    "fp16_to_fp32",
    "fp16_to_fp32_ggml",
    "levels_f32",
    "levels_int",
    "make_qkx_quants",
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


_FP16_LUT: np.ndarray | None = None


def fp16_to_fp32_ggml(h: np.ndarray) -> np.ndarray:
    """``GGML_FP16_TO_FP32`` (ggml_compute_fp16_to_fp32) of uint16 bits, NaN bits included (float32).

    ggml's software conversion multiplies by 2**-112, which quiets a signaling NaN (0x7C01 ->
    0x7FC02000); numpy's float16 cast keeps it signaling (0x7F802000). Every other value is the cast's.
    A 65536-entry table, built once; the dequantizers read their scales through it.
    """
    global _FP16_LUT
    if _FP16_LUT is None:
        lut = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(F32)
        bits = lut.view(U32)
        bits[np.isnan(lut)] |= U32(0x00400000)
        _FP16_LUT = lut
    return _FP16_LUT[np.asarray(h, dtype=np.uint16)]


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

    Element-major ``x`` ``(n, batch)``; returns ``(amax, max)`` with the first element of largest
    magnitude (strict ``>``), and ``max = +0.0`` where every element is zero. NaNs never win (``>`` is
    false), as in C. The extremes come from ``max``/``min`` reductions over axis 0 (whole rows at a time,
    ``absmax_from_extremes``); NaN takes the C loop.
    """
    hi, lo = x.max(axis=0), x.min(axis=0)
    if np.isnan(hi).any() or np.isnan(lo).any():
        return absmax_loop(x)
    return absmax_from_extremes(hi, lo, lambda idx: x[:, idx])


def absmax_loop(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``absmax_first`` as the C loop, element by element (NaN inputs; the C emulation paths)."""
    amax = np.zeros(x.shape[1:], F32)
    vmax = np.zeros(x.shape[1:], F32)
    for v in x:
        ax = np.abs(v)
        gt = ax > amax
        amax = np.where(gt, ax, amax)
        vmax = np.where(gt, v, vmax)
    return amax, vmax


def absmax_from_extremes(hi: np.ndarray, lo: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """``absmax_first`` of groups whose maximum ``hi`` and minimum ``lo`` are known (without NaN).

    The value of largest magnitude is ``hi`` or ``lo``; only where both ``+a`` and ``-a`` occur is the first
    one looked up: ``groups(idx)`` returns the element-major values ``(n, len(idx))`` of those groups.
    A NaN extreme gives a NaN ``amax`` (callers that allow NaN test for it).
    """
    amax = np.maximum(np.abs(hi), np.abs(lo))
    vmax = np.where(hi > -lo, hi, lo)
    tie = np.flatnonzero((hi == -lo) & (hi > 0))
    if tie.size:
        sub = groups(tie)
        first = np.argmax(np.abs(sub) == amax[tie], axis=0)
        vmax[tie] = sub[first, np.arange(tie.size)]
    return amax, np.where(amax > 0, vmax, F32(0)).astype(F32, copy=False)


def row_chunks(nrows: int, n_per_row: int, target: int = 1 << 16):
    """Slices of rows holding about ``target`` elements each (at least one row), for cache-sized work."""
    step = max(1, target // max(1, n_per_row))
    for r0 in range(0, nrows, step):
        yield slice(r0, min(nrows, r0 + step))


def dequantize_blocks(raw: np.ndarray, block_size: int, type_size: int, fn, chunk_blocks: int = 8192) -> np.ndarray:
    """The row driver of every ``dequantize_rows``: uint8 rows ``(nrows, row_size)`` -> float32
    ``(nrows, n_per_row)``, ``fn(blocks (nb, type_size) uint8, out (nb, block_size) float32)`` writing one
    cache-sized run of blocks at a time."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    nrows = raw.shape[0]
    blocks = raw.reshape(-1, type_size)
    out = np.empty((blocks.shape[0], block_size), F32)
    with np.errstate(all="ignore"):  # inf scales times zero quants make NaNs, as in C
        for b0 in range(0, blocks.shape[0], chunk_blocks):
            fn(blocks[b0:b0 + chunk_blocks], out[b0:b0 + chunk_blocks])
    return out.reshape(nrows, -1)


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


# ----------------------------------------------------------------------------- scale searches
#
# The make_q*_quants searches shared by the legacy types (their _impl paths) and the K-quants. They take
# element-major groups ``x[i, g]`` (row ``i`` the position inside a group, column ``g`` one group: a
# 32-element legacy block, a 16/32-value K sub-block, or the scales of a super-block). The C code runs one
# group at a time; here all groups take the same steps and every branch becomes a mask, keeping the C
# order of every sum (``seq_sum``). Exact shortcuts:
#
# * ``nearest_int`` followed by a clamp and a cast to float is done in float (``np.rint``, round half to
#   even like the magic-number trick, then ``np.clip``), the same value whenever every ``|t| < 2**22 - 1``;
#   that bound is checked per call from the group extremes, and the integer trick runs otherwise.
#   (``np.rint`` gives -0.0 where the trick gives 0; a zero level only ever enters products that are
#   summed from +0.0, so the sign cannot show.)
# * A search remembers the best step's parameters, not its levels; the levels are recomputed once at the
#   end from those parameters (the same float operations give the same integers).
# * Group extremes come from ``max``/``min`` reductions; NaN takes the C loop.

_EXACT = F32(4194303.0)  # below this, round(t) < 2**22 and the float rounding equals nearest_int


_I32_MIN = np.int32(np.iinfo(np.int32).min)


def at_most(a: np.ndarray, hi: int) -> np.ndarray:
    """``MIN(hi, a)`` of int32 ``a``: ``np.clip`` with int32 bounds (``np.minimum`` with a scalar, or clip
    with Python int bounds, is 2-3x slower in numpy 2.4)."""
    return np.clip(a, _I32_MIN, np.int32(hi))


def levels_int(t: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``MAX(lo, MIN(hi, nearest_int(t)))`` as int32."""
    return np.clip(nearest_int(t), np.int32(lo), np.int32(hi))


def levels_f32(t: np.ndarray, lo: int, hi: int, exact: bool) -> np.ndarray:
    """``(float)MAX(lo, MIN(hi, nearest_int(t)))``, in place in ``t`` when ``exact`` (``below_exact``)."""
    if not exact:
        return levels_int(t, lo, hi).astype(F32)
    np.rint(t, out=t)
    return np.clip(t, F32(lo), F32(hi), out=t)


def below_exact(*bounds: np.ndarray) -> bool:
    """True when every |bound| < 4194303 (NaN and inf fail): ``levels_f32`` may round in float."""
    return all(bool((np.abs(b) < _EXACT).all()) for b in bounds)


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """ggml ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)`` (the only rmse_type ggml-quants.c uses).

    ``qw`` None means the C default weights ``x*x``. Returns (scale, L as int32 in [0, 2*nmax)).
    """
    lo, hi = -nmax, nmax - 1
    with np.errstate(all="ignore"):
        amax, vmax = absmax_first(x)
        zero = amax < GROUP_MAX_EPS
        w = x * x if qw is None else qw
        wx = w * x
        t = np.empty_like(x)
        prod = np.empty_like(x)

        def sums(iscale):
            # |iscale*x| <= |iscale*max| for every x of a group; all-zero groups are discarded at the end
            iscale = np.where(zero, F32(0), iscale)
            np.multiply(x, iscale, out=t)
            lf = levels_f32(t, lo, hi, below_exact(iscale * vmax))
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
        L = levels_int(x * best_iscale, lo, hi) + nmax
        L[:, zero] = 0
        scale = np.where(zero, F32(0), scale)
    return scale, L


def _first_min_max_from0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``min = max = x[0]; for (i = 1..) { if (x[i] < min) min = x[i]; if (x[i] > max) max = x[i]; }``.

    Reductions give the values; a zero minimum then takes the sign of the group's first zero (the one C
    keeps, as nothing negative follows and ``-0.0 < +0.0`` is false). The sign of a zero maximum is not
    matched: ``make_qkx_quants`` only uses it in ``max <= min`` and ``max - min`` with ``min < 0``.
    NaN takes the C loop (a NaN in ``x[0]`` sticks, later ones are skipped).
    """
    xmin, xmax = x.min(axis=0), x.max(axis=0)
    if np.isnan(xmin).any() or np.isnan(xmax).any():
        xmin, xmax = x[0].copy(), x[0].copy()
        for v in x[1:]:
            xmin = np.where(v < xmin, v, xmin)
            xmax = np.where(v > xmax, v, xmax)
        return xmin, xmax
    z = np.flatnonzero(xmin == 0)
    if z.size:
        sub = x[:, z]
        xmin[z] = sub[np.argmax(sub == 0, axis=0), np.arange(z.size)]
    return xmin, xmax


def make_qkx_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                    use_mad: bool, qkx3: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants`` (qkx3=False) / ``make_qkx3_quants`` (qkx3=True) with explicit weights.

    Returns (scale, the_min, L as int32 in [0, nmax]), ``the_min`` being C's ``*the_min = -min``. The two
    C functions differ only in the flat-group test (``max == min`` vs ``max <= min``) and in the default
    weights (callers pass them). ``min`` is updated inside the step loop in C, and later steps use the
    new one. ``nstep >= 1`` (every caller in ggml).
    """
    with np.errstate(all="ignore"):
        xmin, xmax = _first_min_max_from0(x)
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
            exact = below_exact(iscale * (xmax - mn), iscale * (xmin - mn))
            return iscale, levels_f32(lf, 0, nmax, exact)

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
        L = levels_int((x - best_mn) * best_iscale, 0, nmax)
        L[:, flat] = 0
        scale = np.where(flat, F32(0), scale)
        the_min = np.where(flat, flat_min, -mn)
    return scale, the_min, L


QK_K = 256


def quantize_superblocks(cls, rows: np.ndarray, quant_weights: np.ndarray | None, chunk: int, superblocks):
    """The row driver of the grid types (``quantize_iq2_xxs`` ... ``quantize_iq1_m``): the rows' 256-value
    super-blocks in batches of ``chunk``, each with the importance weights of its place in the row, through
    ``superblocks(x (S, 256), qw (S, 256) or None) -> (S, type_size)`` uint8, with C's silent inf/NaN
    arithmetic. A ``GGMLAbort(message, super-block of the batch)`` from it is raised again naming the
    super-block and row; one with a message only passes through."""
    from . import GGMLAbort

    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n = rows.shape
    if cls.requires_imatrix and quant_weights is None:
        raise ValueError(f"{cls.qtype.name} requires importance weights (ggml asserts without them)")
    out = np.empty((nrows, cls.row_size(n)), dtype=np.uint8)
    nsb = n // QK_K
    qw_sb = None if quant_weights is None else np.asarray(quant_weights, dtype=np.float32).reshape(nsb, QK_K)
    x = rows.reshape(-1, QK_K)
    blocks = out.reshape(-1, cls.type_size)
    for s0 in range(0, x.shape[0], chunk):
        xs = x[s0:s0 + chunk]
        qw = None if qw_sb is None else qw_sb[(s0 + np.arange(len(xs))) % nsb]  # super-block j: block j % nsb
        try:
            with np.errstate(all="ignore"):  # C computes through overflow, underflow and NaN silently
                blocks[s0:s0 + len(xs)] = superblocks(xs, qw)
        except GGMLAbort as e:
            if len(e.args) < 2:
                raise
            sb = s0 + e.args[1]
            raise GGMLAbort(f"{cls.qtype.name}: ggml-quants.c aborts on this input "
                            f"(super-block {sb}, row {sb // nsb}): {e.args[0]}") from None
    return out
