"""Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: what is particular to the legacy numpy reference.

The quad-major fast path against the element-major C emulation, all-zero blocks, and the rounding helpers
against libm. Byte identity with llama.cpp on every device is test_conformance.py's.
"""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest

from gpuquant.quants import get, quantize
from gpuquant.quants.common import nearest_int, roundf

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
F32 = np.float32


@pytest.mark.parametrize("qtype", TYPES)
def test_fast_path_equals_c_emulation(qtype):
    """The quad-major ``_fast`` path (finite inverse scales; ``_ref`` redoes the blocks it flags) gives the
    bytes of ``_ref`` (element-major, emulating C's float->int conversion of inf/NaN) for every block:
    magnitudes over the whole float range, zero blocks of both signs, +a/-a ties, blocks of one sign."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((96, 32)).astype(F32) * (10.0 ** rng.uniform(-40, 38, (96, 1))).astype(F32)
    x[:4] = 0
    x[1] = -0.0
    x[2, ::3] = -0.0
    x[3, 5:] = -0.0
    x[4, 7] = -0.0
    x[5:10] = rng.integers(-3, 4, (5, 32))  # ties of +a and -a: the first one is max
    x[5, [3, 9]] = [-4, 4]
    x[6, [2, 8]] = [4, -4]
    x[10:14] = np.abs(x[10:14])
    x[10:12, :3] = [[0.0], [-0.0]]  # zero minimum after positives: its sign is m's
    x[14:18] = -np.abs(x[14:18])
    x[14:16, 4:6] = [[-0.0], [0.0]]
    cls = get(qtype)
    with np.errstate(all="ignore"):  # quantize_rows sets the same; inf/NaN lanes are expected here
        bad = cls._fast(x, np.zeros((96, cls.type_size), np.uint8))[1]
        want = cls._ref(np.ascontiguousarray(x.T))
    assert bad.any() and not bad.all()  # both paths exercised by these magnitudes
    got = quantize(x.reshape(3, -1), qtype).reshape(96, -1)
    diff = np.flatnonzero((got != want).any(axis=1))
    assert diff.size == 0, (diff, x[diff[0]], got[diff[0]], want[diff[0]])


def test_all_zero_blocks():
    x = np.zeros((2, 64), F32)
    x[1] = -0.0
    # d = 0/-8 = -0.0 -> fp16 0x8000 for the symmetric types; (0 - min)/15 with min = +-0 for the others
    assert quantize(x, "Q4_0")[:, :2].tolist() == [[0, 0x80]] * 2
    assert quantize(x, "Q8_0").reshape(-1, 34)[:, 2:].max() == 0
    q41 = quantize(x, "Q4_1").reshape(2, 2, 20)
    assert q41[0, :, 2:4].tolist() == [[0, 0]] * 2  # m = +0.0
    assert q41[1, :, 2:4].tolist() == [[0, 0x80]] * 2  # m = -0.0: the first minimum is kept


def test_roundf_matches_libm():
    libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    libm.roundf.restype = ctypes.c_float
    libm.roundf.argtypes = [ctypes.c_float]
    rng = np.random.default_rng(0)
    v = (rng.integers(-(1 << 24), 1 << 24, 3000) / 2.0 ** rng.integers(0, 26, 3000)).astype(F32)
    v = np.concatenate([v, np.nextafter(np.arange(-8, 8, dtype=F32) + F32(0.5), F32(0)), [F32(0.49999997)]])
    want = np.array([libm.roundf(float(a)) for a in v], dtype=F32)
    assert np.array_equal(roundf(v), want)


def test_nearest_int_is_round_half_even():
    v = np.concatenate([np.arange(-40, 40, dtype=F32) / F32(4),
                        np.random.default_rng(1).uniform(-4e6, 4e6, 2000).astype(F32)])
    assert np.array_equal(nearest_int(v), np.rint(v).astype(np.int32))


# ----------------------------------------------------------------------------- oracle
