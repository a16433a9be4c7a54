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
