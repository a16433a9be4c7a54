"""IQ4_NL and IQ4_XS: what is particular to the family.

The exact lookup that replaces ``best_index_int8`` against the C binary search, the all-zero layout, and the
kvalues table of the kernels against gguf's. Byte identity with llama.cpp on every device is
test_conformance.py's.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant.quants import quantize
from gpuquant.quants.iq4 import KVALUES, LUT

TYPES = ["IQ4_NL", "IQ4_XS"]
F32 = np.float32


def best_index_int8_c(x: float) -> int:
    """ggml-quants.c ``best_index_int8(16, kvalues_iq4nl, x)``, step by step in float32."""
    val = [F32(v) for v in KVALUES]
    x = F32(x)
    if x <= val[0]:
        return 0
    if x >= val[-1]:
        return len(val) - 1
    ml, mu = 0, len(val) - 1
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < val[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if F32(x - val[mu - 1]) < F32(val[mu] - x) else mu


def test_lookup_equals_binary_search():
    k = KVALUES.astype(F32)
    mids = (k[:-1] + k[1:]) / 2
    probes = [k, mids, LUT.thresholds]
    for t in LUT.thresholds:  # the float32 neighbours of every threshold and midpoint
        for c in (t, (t + 0.0)):
            probes.append(np.array([np.nextafter(c, F32(-np.inf)), np.nextafter(c, F32(np.inf))], F32))
    for m in mids:
        probes.append(np.array([np.nextafter(m, F32(-np.inf)), np.nextafter(m, F32(np.inf))], F32))
    rng = np.random.default_rng(0)
    probes += [rng.uniform(-140, 140, 3000).astype(F32), rng.uniform(-0.5, 0.5, 500).astype(F32),
               np.array([-1e30, 1e30, -128.0, 128.0, -np.inf, np.inf, -0.0, 0.0], F32)]
    x = np.concatenate(probes).astype(F32)
    want = np.array([best_index_int8_c(v) for v in x])
    assert np.array_equal(LUT.index(x), want)
    assert np.array_equal(LUT.reference(x), want)


def test_lookup_thresholds_sit_near_the_midpoints():
    k = KVALUES.astype(np.float64)
    assert np.all(np.abs(LUT.thresholds - (k[:-1] + k[1:]) / 2) < 1e-5)


@pytest.mark.parametrize("qtype", TYPES)
def test_all_zero_input(qtype):
    """All-zero blocks: scale 0 (IQ4_XS: -0.0 from ``-max_scale/32``), every element at the index of 0."""
    x = np.zeros((2, 256), F32)
    q = quantize(x, qtype)
    zero_idx = best_index_int8_c(0.0)
    nib = zero_idx | zero_idx << 4
    if qtype == "IQ4_NL":
        blocks = q.reshape(-1, 18)
        assert (blocks[:, :2] == 0).all() and (blocks[:, 2:] == nib).all()
    else:
        blocks = q.reshape(-1, 136)
        assert (blocks[:, :2] == [0, 0x80]).all()  # d = -0.0
        assert (blocks[:, 2:4] == 0xAA).all() and (blocks[:, 4:8] == 0).all()  # l = 32: low 0, high 2
        assert (blocks[:, 8:] == nib).all()


def test_kernel_kvalues_table_matches_gguf():
    import re

    import gguf

    from gpuquant.backends import kernels as K

    text = (K.kernel_dir() / "iq4.cu").read_text()
    m = re.search(r"gq_kvalues_iq4nl\[16\]\s*=\s*\{([^}]*)\}", text)
    assert m, "gq_kvalues_iq4nl not found in iq4.cu"
    values = tuple(int(v) for v in m.group(1).replace("\n", " ").split(",") if v.strip())
    assert values == tuple(int(v) for v in gguf.quants.IQ4_NL.kvalues)


def _binary_search_f32(x: np.ndarray) -> np.ndarray:
    """``best_index_int8(16, kvalues_iq4nl, x)`` vectorized, every comparison and difference in float32."""
    val = KVALUES.astype(F32)
    ml = np.zeros(x.shape, np.int64)
    mu = np.full(x.shape, 15, np.int64)
    for _ in range(4):  # 15 -> 8 -> 4 -> 2 -> 1
        mav = (ml + mu) // 2
        go_down = (mu - ml > 1) & (x < val[mav])
        go_up = (mu - ml > 1) & ~(x < val[mav])
        mu = np.where(go_down, mav, mu)
        ml = np.where(go_up, mav, ml)
    with np.errstate(invalid="ignore", over="ignore"):
        last = np.where((x - val[mu - 1]).astype(F32) < (val[mu] - x).astype(F32), mu - 1, mu)
    return np.where(x <= val[0], 0, np.where(x >= val[15], 15, last))


def _kernel_index_rule():
    """The midpoints of iq4.cu's branchless gq_iq4nl_index and the table packed in gq_iq4nl_value's words."""
    import re

    from gpuquant.backends import kernels as K

    text = (K.kernel_dir() / "iq4.cu").read_text()
    body = re.search(r"int gq_iq4nl_index\(float x\) \{(.*?)\}", text, re.S).group(1)
    mids = np.array([float(m) for m in re.findall(r"!\(x < (-?[0-9.]+)f\)", body)], F32)
    value = re.search(r"float gq_iq4nl_value\(int i\) \{(.*?)\n\}", text, re.S).group(1)
    words = [int(w, 16) for w in re.findall(r"0x([0-9A-F]{8})u", value)]
    table = np.array(words, "<u4").view(np.int8)
    return mids, table


def test_kernel_branchless_index_is_the_binary_search():
    """iq4.cu's index: the count of the 15 midpoints that x is not below (a NaN: all 15). Identical to the
    binary search on every float32 near a table value or midpoint, on a 2^-8 sample of all float32 bit
    patterns, and on NaN, +-inf, +-0 and denormals; its value table is kvalues_iq4nl."""
    mids, table = _kernel_index_rule()
    k = KVALUES.astype(F32)
    assert mids.size == 15 and np.array_equal(mids, (k[:-1] + k[1:]) / 2)
    assert np.array_equal(table, KVALUES)
    near = np.concatenate([k, mids]).view(np.uint32).astype(np.int64)
    near = (near[:, None] + np.arange(-2048, 2049)[None, :]).reshape(-1)
    near = np.concatenate([near, near ^ 0x80000000])  # the same magnitudes with the other sign
    sample = np.arange(0, 2**32, 256, dtype=np.int64) + np.random.default_rng(1).integers(0, 256, 2**24)
    special = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7F800000, 0xFF800000, 0, 0x80000000,
                        1, 0x80000001, 0x007FFFFF, 0x807FFFFF], np.int64)
    x = np.concatenate([near, sample, special]).astype(np.uint32).view(F32)
    with np.errstate(invalid="ignore"):
        got = (~(x[:, None] < mids[None, :])).sum(1)
    want = _binary_search_f32(x)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} values differ, first {x[bad[:5]]}: {got[bad[:5]]} != {want[bad[:5]]}"
    assert got[-12:-10].tolist() == [15, 15] and want[-12:-10].tolist() == [15, 15]  # NaNs
