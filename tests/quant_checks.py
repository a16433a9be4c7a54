"""Shared assertions for the per-family numpy tests (test_floats, test_legacy, test_iq4, test_kquants)."""
from __future__ import annotations

import numpy as np

from gpuquant.quants import QUANT_SIZES, get, parse_type, quantize
from tests.golden import first_difference, iter_cases
from tests.golden.cases import build_cases
from tests.oracle import oracle_dequantize, oracle_quantize


def assert_bytes(got: np.ndarray, want: np.ndarray, qtype: str, rows: np.ndarray, what: str = "") -> None:
    """Byte equality; on mismatch the first differing block, its bytes and its input values."""
    block_size, type_size = QUANT_SIZES[parse_type(qtype)]
    diff = first_difference(got, want, type_size, block_size, rows)
    assert diff is None, f"{qtype} {what}: {diff}"


def check_golden(qtype: str, weighted: bool) -> int:
    """Every golden case of a type (with or without weights); all failures listed, first one detailed."""
    failures, first, n = [], None, 0
    for case_id, rows, imatrix, want in iter_cases(qtype):
        if (imatrix is not None) != weighted:
            continue
        n += 1
        got = quantize(rows, qtype, imatrix)
        block_size, type_size = QUANT_SIZES[parse_type(qtype)]
        diff = first_difference(got, want, type_size, block_size, rows)
        if diff is not None:
            failures.append(case_id)
            first = first or f"{case_id}: {diff}"
    assert n > 0, f"no golden cases for {qtype}"
    assert not failures, f"{qtype}: {len(failures)}/{n} golden cases differ: {failures}\nfirst: {first}"
    return n


def nonfinite_rows(seed: int, nrows: int = 8, n: int = 512) -> np.ndarray:
    """Rows sprinkled with NaN/+Inf/-Inf, plus whole NaN/Inf blocks and NaN as first/last element."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((nrows, n)) * rng.uniform(0.01, 100, (nrows, 1))).astype(np.float32)
    m = rng.random(x.shape)
    x[m < 0.01] = np.nan
    x[(m >= 0.01) & (m < 0.02)] = np.inf
    x[(m >= 0.02) & (m < 0.03)] = -np.inf
    x[0, :32] = np.nan
    x[1, 32:64] = np.inf
    x[2, 64:96] = -np.inf
    x[3, 96] = x[3, 127] = np.nan
    x[4] = np.where(rng.random(n) < 0.5, np.nan, 1.0)
    return x


def check_fresh_edge_cases(qtype: str, group: str, seed: int) -> None:
    """The golden edge-case kinds of ``group`` drawn with another seed, with and without their weights,
    against the oracle."""
    for case_id, rows, imatrix in build_cases(group, seed=seed):
        for w in (None, imatrix):
            assert_bytes(quantize(rows, qtype, w), oracle_quantize(rows, qtype, w), qtype, rows,
                         f"{case_id} {'imatrix' if w is not None else 'plain'}")


def check_nonfinite(qtype: str, seed: int) -> None:
    """``nonfinite_rows`` with and without weights (some zero) against the oracle; no float warning may
    escape ``quantize``. llama-quantize refuses such tensors, but ggml_quantize_chunk's bytes are matched."""
    x = nonfinite_rows(seed)
    w = np.abs(np.random.default_rng(seed).standard_normal(x.shape[1])).astype(np.float32)
    w[:100] = 0
    for qw in (None, w):
        with np.errstate(all="raise"):
            got = quantize(x, qtype, qw)
        assert_bytes(got, oracle_quantize(x, qtype, qw), qtype, x, f"NaN/Inf seed {seed}")


def random_imatrix(rng: np.random.Generator, n: int, kind: str) -> np.ndarray | None:
    """Importance weights of one row: ``"none"`` (None), ``"imatrix"`` (squared normals, as llama-imatrix
    collects) or ``"sparse"`` (the same with about 40% zeros)."""
    if kind == "none":
        return None
    w = (rng.standard_normal(n) ** 2).astype(np.float32)
    if kind == "sparse":
        w[rng.random(n) < 0.4] = 0
    return w


def check_random(qtype: str, shape: tuple[int, int], imat: str) -> None:
    """Normal rows with per-row scales from 0.01 to 10 and ``random_imatrix`` weights of kind ``imat``,
    seeded by the type, the row length and the kind, against the oracle."""
    rng = np.random.default_rng([sum(map(ord, qtype)), shape[1], len(imat)])
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 10, (shape[0], 1))).astype(np.float32)
    w = random_imatrix(rng, shape[1], imat)
    assert_bytes(quantize(x, qtype, w), oracle_quantize(x, qtype, w), qtype, x, f"random {shape} {imat}")


#: fp16 scale bits the dequantize checks draw from: ordinary values, +-0, the largest finite and smallest
#: subnormal, +-inf, quiet and signaling NaNs of both signs
EDGE_HALVES = np.array([0x3C00, 0x2E66, 0xB800, 0x0000, 0x8000, 0x7BFF, 0xFBFF, 0x0001, 0x83FF, 0x7C00, 0xFC00,
                        0x7E00, 0xFE00, 0x7C01, 0xFD55, 0x7FFF], np.uint16)


def random_blocks(qtype: str, nrows: int, n_per_row: int, seed: int,
                  fields: dict[str, int] | None = None) -> np.ndarray:
    """Random bytes of ``nrows`` rows of ``qtype`` whose fp16 fields (the type's ``fp16_fields``, or
    ``fields``) hold, independently per block and field, an ``EDGE_HALVES`` value (half the blocks) or a
    random finite one."""
    block, tsize = QUANT_SIZES[parse_type(qtype)]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (nrows, n_per_row // block * tsize), dtype=np.uint8)
    blocks = raw.reshape(-1, tsize)
    offsets = (get(qtype).fp16_fields if fields is None else fields).values()
    for off in offsets:
        finite = rng.standard_normal(blocks.shape[0]).astype(np.float16).view(np.uint16)
        edge = rng.choice(EDGE_HALVES, blocks.shape[0])
        h = np.where(rng.random(blocks.shape[0]) < 0.5, edge, finite).astype("<u2")
        blocks[:, off:off + 2] = h.view(np.uint8).reshape(-1, 2)
    return raw


def check_dequantize(qtype: str, raw: np.ndarray, what: str = "") -> None:
    """``dequantize_rows`` bit for bit against ggml's to_float; on mismatch the first differing value, its
    bits both ways and its block's bytes."""
    cls = get(qtype)
    n = raw.shape[1] // cls.type_size * cls.block_size
    got = cls.dequantize_rows(raw)
    want = oracle_dequantize(raw, qtype, n)
    assert got.dtype == np.float32 and got.shape == want.shape, f"{qtype}: {got.dtype} {got.shape}, want {want.shape}"
    g, w = got.view(np.uint32), want.view(np.uint32)
    bad = np.flatnonzero(g != w)
    if bad.size:
        i = int(bad[0])
        r, e = divmod(i, n)
        b = e // cls.block_size
        blk = raw[r, b * cls.type_size:(b + 1) * cls.type_size]
        raise AssertionError(f"{qtype} {what}: {bad.size}/{g.size} values differ; first row {r} element {e} "
                             f"(block {b}, element {e % cls.block_size} of it): got {g.flat[i]:#010x} "
                             f"({got.flat[i]!r}), want {w.flat[i]:#010x} ({want.flat[i]!r})\n"
                             f"  block bytes {blk.tolist()}")
