"""MXFP4 and NVFP4: what is particular to the family.

The tables the kernels hard-code (kvalues_mxfp4, the floorf(log2f) round-up counts), the floor of glibc's
log2f at every power-of-two boundary (through ctypes), the table search against C's exhaustive
best_index_mxfp4, validation, the importance weights being ignored, to_float of every scale byte, and block
maxima at the E8M0 and E4M3 rounding points against llama.cpp on every device. Byte identity in general is
test_conformance.py's.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import re

import gguf
import numpy as np
import pytest

from gpuquant.backends import kernels as K
from gpuquant.quants import get, quantize
from gpuquant.quants import fp4
from tests.oracle import oracle_quantize, requires_oracle
from tests import helpers as H
from tests.helpers import assert_bytes, check_dequantize

TYPES = ["MXFP4", "NVFP4"]
F32 = np.float32


def _f32(bits) -> np.ndarray:
    return np.asarray(bits, np.uint32).view(F32)


def boundary_maxima() -> np.ndarray:
    """For every power of two 2^E: the floats around the lowest one whose floorf(log2f) is E (the band
    where log2f rounds up) and around 2^E itself."""
    out = []
    for E in range(-148, 129):
        top = fp4._pow2_bits(E)
        n = int(fp4.FLOOR_LOG2F_ROUND_UP[E + 149])
        for b in (top - n - 2, top - n - 1, top - n, top - n + 1, top - 1, top, top + 1):
            if 0 < b < 0x7F800000:
                out.append(b)
    return _f32(sorted(set(out)))


def mxfp4_edge_rows() -> np.ndarray:
    """Blocks whose amax is each boundary maximum (other values random below it, a tie of +-amax, a
    midpoint between two E2M1 values), tiny blocks whose exponent wraps, inf blocks."""
    a = boundary_maxima()
    rng = np.random.default_rng(13)
    x = (rng.uniform(-1, 1, (a.size, 32)) * a[:, None]).astype(F32)
    x[:, 0] = a
    x[::3, 1] = -a[::3]
    x[1::3, 2] = (a[1::3] * F32(5.0 / 16)).astype(F32)  # 2.5 * d when d = amax / 8
    pad = (-x.shape[0]) % 4
    x = np.concatenate([x, np.zeros((pad, 32), F32)])
    x[-1, 3] = np.inf
    x[-2, 4] = -np.inf
    return x.reshape(-1, 128)


def nvfp4_edge_rows() -> np.ndarray:
    """Sub-blocks whose amax / 6 sits on the E4M3 rounding points (half-ulp ties of the 3-bit mantissa,
    the subnormal steps, 448 and past it), with exact midpoints between scaled E2M1 values."""
    ue = np.arange(0x7F, dtype=np.uint8)
    d2 = fp4.UE4M3[ue].astype(np.float64) * 2  # the E4M3 values
    pts = np.concatenate([d2, d2 * (1 + 1 / 16), d2 * (1 + 1 / 32), [448 * 1.2, 1e5, 3e38, 1e-3, 5e-4, 1e-6]])
    with np.errstate(over="ignore"):
        amax = np.unique((pts * 6).astype(F32))
    amax = np.concatenate([amax, np.nextafter(amax, F32(0)), np.nextafter(amax, F32(np.inf))])
    amax = amax[np.isfinite(amax)]
    rng = np.random.default_rng(17)
    x = (rng.uniform(-1, 1, (amax.size, 16)) * amax[:, None]).astype(F32)
    x[:, 0] = amax
    x[::2, 1] = -amax[::2]
    d = fp4.UE4M3[fp4.fp32_to_ue4m3(amax / F32(6))]
    for k, m in enumerate((0.5, 1.5, 2.5, 3.5, 5, 7, 10)):
        x[:, 2 + k] = (d * F32(m)) * (1 if k % 2 else -1)
    pad = (-x.shape[0]) % 4
    return np.concatenate([x, np.zeros((pad, 16), F32)]).reshape(-1, 64)


# ----------------------------------------------------------------------------- tables and helpers


def _cu_table(name: str) -> list[int]:
    text = (K.kernel_dir() / "fp4.cu").read_text()
    m = re.search(name + r"\[\d+\]\s*=\s*\{([^}]*)\}", text)
    assert m, f"{name} not found in fp4.cu"
    return [int(v) for v in m.group(1).replace("\n", " ").split(",") if v.strip()]


def test_kernel_tables_match():
    assert _cu_table("gq_kvalues_mxfp4") == [int(v) for v in gguf.quants.MXFP4.kvalues] == fp4.KVALUES.tolist()
    assert _cu_table("gq_floor_log2f_round_up") == fp4.FLOOR_LOG2F_ROUND_UP.tolist()


def _libm_log2f():
    path = ctypes.util.find_library("m")
    if path is None:
        pytest.skip("no libm")
    f = ctypes.CDLL(path).log2f
    f.argtypes, f.restype = [ctypes.c_float], ctypes.c_float
    return f


def test_floor_log2f_against_libm():
    """floorf(log2f(a)) at and around every boundary, and on random floats of every magnitude."""
    log2f = _libm_log2f()
    rng = np.random.default_rng(0)
    rand = _f32(rng.integers(1, 0x7F800000, 20000, dtype=np.uint32))
    a = np.concatenate([boundary_maxima(), rand])
    want = np.array([math.floor(log2f(float(v))) for v in a])
    got = fp4.floor_log2f(a)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} differ, first {a[bad[0]]!r} ({a[bad[0]:bad[0] + 1].view(np.uint32)[0]:#x}): " \
                          f"{got[bad[0]]} vs {want[bad[0]]}"


@pytest.mark.parametrize("qtype", TYPES)
def test_table_search_equals_c_search(qtype):
    """The fast index (every |x| <= 16 d) against the exhaustive C search, on the midpoints between scaled
    values, their float neighbours, signed zeros and random values, for every scale of the type."""
    if qtype == "MXFP4":
        p = np.arange(-100, 125)
        D = np.ones_like(p)
    else:
        ue = np.arange(1, 0x7F)
        e, m = ue >> 3, ue & 7
        D, p = np.where(e == 0, m, m + 8), np.where(e == 0, -10, e - 11)
    d = np.ldexp(D.astype(np.float64), p).astype(F32)
    mids = np.array([0.5, 1.5, 2.5, 3.5, 5, 7, 10, 0.25, 12, 15.99], F32)
    v = (d[:, None] * mids[None, :]).astype(F32)
    rng = np.random.default_rng(1)
    x = np.concatenate([v, np.nextafter(v, F32(0)), np.nextafter(v, F32(np.inf)), -v, -np.nextafter(v, F32(0)),
                        (rng.uniform(-16, 16, (d.size, 20)) * d[:, None]).astype(F32),
                        np.zeros((d.size, 2), F32) * np.array([1, -1], F32)], axis=1)
    lim = (F32(15.99) * d)[:, None]
    x = np.clip(x, -lim, lim)
    fast = np.ones(d.size, bool)
    got = fp4._index_fast(fp4._quads(np.ascontiguousarray(x[:, :x.shape[1] // 4 * 4])), D, p, fast)
    got = fp4._unquads(got)
    with np.errstate(over="ignore"):  # 12 d - x past the float range in the top binade, as in C
        want = fp4._index_c(x[:, :x.shape[1] // 4 * 4], d)
    assert np.array_equal(got, want)


def test_validation():
    blocks = np.zeros((4, 17), np.uint8)
    blocks[1, 0] = 0xFF
    blocks[2, 0] = 0xFE
    assert get("MXFP4").invalid_blocks(blocks).tolist() == [False, True, False, False]
    nv = np.full((3, 36), 0xFF, np.uint8)
    assert not get("NVFP4").invalid_blocks(nv).any()


@pytest.mark.parametrize("qtype", TYPES)
def test_importance_weights_are_ignored(qtype):
    x = np.random.default_rng(2).standard_normal((4, 512)).astype(F32)
    w = np.random.default_rng(1).random(512).astype(F32)
    assert np.array_equal(quantize(x, qtype, w), quantize(x, qtype))


def test_mxfp4_by_hand():
    """amax 6: e = floor(log2 6) - 2 + 127 = 127, d = 2^-1; 3.0 is kvalue 6 (index 5), 1.25 ties 1 and 1.5:
    the lower index (2 -> value 1.0)."""
    x = np.zeros((1, 32), F32)
    x[0, :4] = [6.0, 3.0, -1.25, 0.2]
    q = quantize(x, "MXFP4")[0]
    assert q[0] == 127
    idx = np.concatenate([q[1:] & 0xF, q[1:] >> 4])
    assert idx[:4].tolist() == [7, 5, 8 + 2, 0]


@requires_oracle
def test_dequantize_every_scale_byte_against_oracle():
    rng = np.random.default_rng(5)
    mx = rng.integers(0, 256, (256, 17), dtype=np.uint8)
    mx[:, 0] = np.arange(256)
    check_dequantize("MXFP4", mx.reshape(8, -1), "every e")
    nv = rng.integers(0, 256, (256, 36), dtype=np.uint8)
    nv[:, 0:4] = np.arange(256)[:, None]
    check_dequantize("NVFP4", nv.reshape(8, -1), "every d")
    for qtype in TYPES:
        x = mxfp4_edge_rows() if qtype == "MXFP4" else nvfp4_edge_rows()
        check_dequantize(qtype, oracle_quantize(x, qtype), "quantized edge rows")


# ----------------------------------------------------------------------------- the family's corners, every device


@pytest.fixture(scope="module", params=H.DEVICES)
def device(request):
    d = H.make_device(request.param)
    yield d
    d.close()


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows_vs_oracle(device, qtype):
    """Rows aimed at this family's quantizers (see ``mxfp4_edge_rows / nvfp4_edge_rows``), on every device; the rows holding NaNs only on
    the host devices (a GPU makes other NaN bits, and llama-quantize refuses NaN tensors anyway)."""
    x = mxfp4_edge_rows() if qtype == "MXFP4" else nvfp4_edge_rows()
    if device.name.startswith("cuda"):
        x = x[np.isfinite(x).all(axis=1)]
    got = H.run_device(device, x, "F32", qtype, x.shape[1])
    assert_bytes(got, oracle_quantize(x, qtype), qtype, x, f"edge rows on {device.name}")
