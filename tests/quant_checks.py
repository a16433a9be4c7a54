"""Shared assertions for the per-family numpy tests (test_floats, test_legacy, test_iq4)."""
from __future__ import annotations

import numpy as np

from gpuquant.quants import QUANT_SIZES, parse_type, quantize
from tests.golden import first_difference, iter_cases


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
