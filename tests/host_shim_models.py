"""numpy models of CUDA's semantics for the host harness test kernels (tests/host_shim_kernels/*.cu).

Written from the CUDA C++ Programming Guide's descriptions (warp shuffle functions, warp vote functions,
integer intrinsics) and the PTX ISA where the guide leaves a detail open, independently of host_launch.cpp.
Threads are numbered as the kernels' ``global_tid()``: block after block, the linear thread index inside;
a thread's lane is its linear index in the block % 32.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
#: what the emulator returns for a shuffle whose source lane is outside the mask (undefined in CUDA)
UNDEFINED = 0xFFF8DEAD7FC0DEAD
OPERANDS = (0, 1, 3, 7, 16, 31, 33)
WIDTHS = (1, 2, 4, 8, 16, 32)


def _lanes(n: int, nt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thread index in block, lane, global index of lane 0 of the thread's warp) per thread."""
    g = np.arange(n)
    t = g % nt
    lane = t % 32
    return t, lane, g - lane


def shuffle_source(kind: str, lane: np.ndarray, b, width: int) -> np.ndarray:
    """The lane a shuffle reads. Within groups of `width` lanes: idx reads lane srcLane % width of the
    caller's group; up reads lane - delta and down lane + delta, the caller's own value when that leaves
    the group; xor reads lane ^ laneMask, its own value past the end of its group (earlier groups are
    reachable). The operand counts with its low 5 bits (PTX shfl.sync reads b[4:0]), so delta 33 is 1."""
    start = lane - lane % width
    b = np.asarray(b)
    if kind == "idx":
        return start + b % width
    b5 = b & 31
    if kind == "up":
        s = lane - b5
        return np.where(s >= start, s, lane)
    s = lane + b5 if kind == "down" else lane ^ b5
    return np.where(s < start + width, s, lane)


def shuffle_kinds_model(v: np.ndarray, nt: int) -> np.ndarray:
    t, lane, first = _lanes(v.size, nt)
    cols = []
    for width in WIDTHS:
        for b in OPERANDS:
            for kind in ("up", "down", "xor"):
                cols.append(v[first + shuffle_source(kind, lane, b, width)])
            cols.append(v[first + shuffle_source("idx", lane, (t * 7 + b) % 45 - 6, width)])
    return np.stack(cols, axis=1)


def shuffle_types_model(v: np.ndarray, nt: int) -> np.ndarray:
    t, lane, first = _lanes(v.size, nt)
    low = v & np.uint64(0xFFFFFFFF)

    def read(vals, kind, b, width=32):
        return vals[first + shuffle_source(kind, lane, b, width)]

    as_int = low.astype(np.uint32).view(np.int32).astype(np.int64).view(np.uint64)  # sign-extended
    return np.stack([
        read(as_int, "xor", 5),
        read(low, "down", 3, 16),
        read(low, "idx", t % 9, 8),
        read(v, "up", 2),
        read(v, "xor", 17),
        read(v, "idx", 31 - (t & 31)),
        read(v, "down", 1, 4),
        read(v, "xor", 12, 16),
    ], axis=1)


def _ballot(pred: np.ndarray, lanes: np.ndarray) -> int:
    return int(sum(1 << int(l) for l, p in zip(lanes, pred) if p))


def votes_model(v: np.ndarray, nt: int) -> np.ndarray:
    """Per warp: ballot = bits of the mask's lanes whose predicate is true; any/all over the mask's lanes."""
    out = np.zeros((v.size, 12), np.uint32)
    for w0 in (blk + t0 for blk in range(0, v.size, nt) for t0 in range(0, nt, 32)):
        nl = min(32, nt - w0 % nt)
        vv = v[w0 : w0 + nl].astype(np.int64)
        lanes = np.arange(nl)
        all_mask = (1 << nl) - 1
        o = out[w0 : w0 + nl]
        o[:, 0] = _ballot(vv & 1, lanes)
        o[:, 1] = int((vv % 97 == 0).any())
        o[:, 2] = int((vv != 12345).all())
        o[:, 3] = int(((vv & 3) != 0).all())
        for r in range(4):
            members = lanes[lanes % 4 == r]
            o[members, 4] = _ballot(vv[members] & 2, members)
            o[members, 5] = int(((vv[members] & 15) == 0).any())
            o[members, 6] = vv[r + 4 * ((members // 4 + 1) % members.size)]
        low, high = lanes[lanes < 16], lanes[lanes >= 16]
        o[low, 7] = vv[low ^ 1]
        o[high, 7] = vv[np.where(high + 2 <= 31, high + 2, high)]
        o[low, 8] = _ballot(vv[low] & 4, low)
        o[high, 8] = int(((vv[high] & 4) != 0).all())
        o[:, 9] = UNDEFINED & 0xFFFFFFFF
        o[:, 10] = all_mask
        o[:, 11] = bin(_ballot(vv & 8, lanes)).count("1")
    return out


def block_sum_model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """block_sum: a shfl_down tree per warp (lanes past the end add their own value), the warp sums of
    lane 0 through shared memory, a shfl_xor butterfly in warp 0 over 32 lanes (missing warps 0.0f)."""
    nb, nt = x.shape
    lane = np.arange(32)
    w = x.reshape(nb, nt // 32, 32).astype(F32)
    for off in (16, 8, 4, 2, 1):
        w = w + w[..., shuffle_source("down", lane, off, 32)]
    warp_sum = w[..., 0]
    p = np.zeros((nb, 32), F32)
    p[:, : nt // 32] = warp_sum
    for m in (16, 8, 4, 2, 1):
        p = p + p[:, lane ^ m]
    total = p[:, :1] + np.arange(nt, dtype=F32)
    return total, np.repeat(warp_sum, 32, axis=1)


def stage_float4_model(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    t = np.arange(64)
    out = np.zeros((nb, 512), np.uint32)
    for c in range(4):
        out[:, 4 * t + c] = x[:, 64 * c + t]
        out[:, 256 + 4 * t + c] = x[:, 4 * (63 - t) + 3 - c]
    return out


def _clz(v: int, bits: int) -> int:
    return bits - v.bit_length()


def _ffs(v: int) -> int:
    return (v & -v).bit_length()


def _brev(v: int, bits: int) -> int:
    return int(format(v, f"0{bits}b")[::-1], 2)


def _byte_perm(x: int, y: int, s: int) -> int:
    """Byte n of the result is byte s<4n+2:4n> of the 8-byte value {y, x} (x the low half)."""
    b = (y << 32) | x
    return sum(((b >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n) for n in range(4))


def _s(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def intrinsics_model(xy: np.ndarray) -> np.ndarray:
    n = xy.shape[0]
    out = np.zeros((n, 24), np.uint32)
    m32, m64 = (1 << 32) - 1, (1 << 64) - 1
    a, b = xy[:, 0].view(F32), xy[:, 1].view(F32)
    with np.errstate(all="ignore"):
        p = a * b
        floats = [a + b, a - b, p, a / b, np.sqrt(np.abs(a)), p + (-p) * F32(0.5)]
    for k, f in enumerate(floats):
        out[:, 10 + k] = f.astype(F32).view(np.uint32)
    for i in range(n):
        x, y = int(xy[i, 0]), int(xy[i, 1])
        v = (y << 32) | x
        o = out[i]
        o[0], o[1] = bin(x).count("1"), bin(v).count("1")
        o[2], o[3] = _clz(x >> (y & 31), 32), _clz(v >> (x & 63), 64)
        o[4], o[5] = _ffs(x & (x >> 3)), _ffs(v & ((v << 7) & m64))
        r = _brev(v, 64)
        o[6], o[7], o[8] = _brev(x, 32), r & m32, r >> 32
        o[9] = _byte_perm(x, y, y >> 7)
        sx, sy = _s(x, 32), _s(y, 32)
        o[16], o[17] = min(sx, sy) & m32, max(sx, sy) & m32
        o[18], o[19] = min(x, y), max(x, y)
        o[20] = ((x - y) & m32) ^ (x ^ y) ^ ((x + y) & m32)
        o[21] = ((_s(x, 16) + _s(x >> 16, 16)) + ((y & 0xFFFF) * 3 + (y >> 16))) & m32
        c = [_s(x >> (8 * k), 8) for k in range(4)]
        o[22] = ((c[0] + 2 * c[1] + 3 * c[2] + 4 * c[3]) & m32) ^ ((y >> 24) << 24 | (y & 0xFF))
        o[23] = 1 + (2 if a[i] == a[i] else 0) + (4 if b[i] == b[i] else 0)
    return out


def atomics_model(v: np.ndarray) -> dict:
    vi = v.astype(np.int64)
    bits = 0
    bits64 = 0
    for e in np.unique(vi % 32):
        bits |= 1 << int(e)
    for e in np.unique(vi % 64):
        bits64 |= 1 << int(e)
    return {
        "count": v.size,
        "umax": int(vi.max()),
        "umin": int(vi.min()),
        "bits": bits,
        "imax": int((vi % 100003 - 50000).max()),
        "usum": int(vi.sum()),
        "bits64": bits64,
        "llmax": int((-3 * vi).max()),
        "dsum": float(vi.sum()),
        "fsum": F32(v.size),
        "cas_sum": int((vi & 7).sum()),
        "ticket": v.size,
        "ftz": np.array([0.0, 0.0, 2.0], F32),  # 0 + 1e-40 -> 0; 1.5e-38 - 1.4e-38 -> 0; -1e-39 + 2 -> 2
    }
