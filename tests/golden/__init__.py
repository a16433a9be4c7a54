"""Committed golden vectors: llama.cpp's bytes for edge-case inputs, so the default suite needs no oracle.

    from tests.golden import iter_cases
    for case_id, rows, imatrix, expected in iter_cases("Q4_K"):
        assert np.array_equal(quantize(rows, "Q4_K", imatrix), expected)

Every case comes twice: ``"<group>:<kind>/n<len>/<imatrix kind>"`` without weights (``imatrix`` None) and
the same id + ``"+imat"`` with its importance weights. The types and case groups are derived from the
registry (``types()``, ``groups_for``). Regenerate with ``tests/golden/make_golden.py``.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["GOLDEN_DIR", "first_difference", "golden_path", "groups_for", "iter_cases", "load_inputs", "types"]

GOLDEN_DIR = Path(__file__).resolve().parent


def types() -> list[str]:
    """Every registered quant type: each has golden vectors (a missing file is a test failure, not a skip)."""
    from gpuquant.quants import registered

    return [t.name for t in registered()]


def groups_for(type_name: str) -> tuple[str, ...]:
    """The case groups whose every row length is a multiple of the type's block size."""
    from gpuquant.quants import QUANT_SIZES, parse_type

    from .cases import LENGTHS, LONG

    block = QUANT_SIZES[parse_type(type_name)][0]
    return tuple(g for g, lengths in LENGTHS.items() if all(n % block == 0 for n in (*lengths, LONG)))


def golden_path(type_name: str) -> Path:
    return GOLDEN_DIR / f"{type_name.upper()}.npz"


@functools.lru_cache(maxsize=None)
def load_inputs(group: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``case id -> (rows float32 (nrows, n), imatrix float32 (n,))`` of one group (``b32``, ``b256``)."""
    with np.load(GOLDEN_DIR / f"inputs_{group}.npz") as z:
        ids = [str(s) for s in z["ids"]]
        return {cid: (z[f"r{i}"], z[f"w{i}"]) for i, cid in enumerate(ids)}


def iter_cases(type_name: str) -> Iterator[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """``(case_id, rows, imatrix or None, expected uint8 (nrows, row_size))`` for every golden case; rows on
    which ggml aborts come as their own case ``<id>!aborts`` with ``expected`` None (gpuquant must raise
    ``GGMLAbort`` on each of them)."""
    path = golden_path(type_name)
    if not path.is_file():
        raise FileNotFoundError(f"no golden vectors for {type_name}: {path} (run tests/golden/make_golden.py)")
    with np.load(path) as z:
        ids = [str(s) for s in z["ids"]]
        keys = set(z.files)
        for i, gid in enumerate(ids):
            group, cid = gid.split(":", 1)
            rows, imatrix = load_inputs(group)[cid]
            if f"e{i}_none" in keys:  # absent: the type requires weights
                yield from _split(gid, rows, None, z, f"e{i}_none", keys)
            key = f"e{i}_imat" if f"e{i}_imat" in keys else f"e{i}_none"
            yield from _split(gid + "+imat", rows, imatrix, z, key, keys)


def _split(cid: str, rows: np.ndarray, imatrix, z, key: str, keys: set):
    aborts = z[key + "_aborts"] if key + "_aborts" in keys else None
    if aborts is None:
        yield cid, rows, imatrix, z[key]
        return
    if (~aborts).any():
        yield cid, rows[~aborts], imatrix, z[key]
    for r in np.flatnonzero(aborts):
        yield f"{cid}!aborts{r}", rows[r:r + 1], imatrix, None


def first_difference(got: np.ndarray, want: np.ndarray, type_size: int, block_size: int,
                     rows: np.ndarray | None = None) -> str | None:
    """None when equal; else a message naming the first differing block, its bytes and its input."""
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if np.array_equal(got, want):
        return None
    g = got.reshape(-1, type_size)
    w = want.reshape(-1, type_size)
    bad = np.flatnonzero((g != w).any(axis=1))
    b = int(bad[0])
    msg = [f"{bad.size}/{g.shape[0]} blocks differ; first block {b}"]
    if rows is not None:
        nb = rows.shape[-1] // block_size
        msg[0] += f" (row {b // nb}, block {b % nb} of the row)"
    cols = np.flatnonzero(g[b] != w[b])
    msg.append(f"  differing bytes at {cols.tolist()}")
    msg.append(f"  got  {g[b].tolist()}")
    msg.append(f"  want {w[b].tolist()}")
    if rows is not None:
        x = rows.reshape(-1, block_size)[b]
        msg.append(f"  input {np.array2string(x, max_line_width=120, threshold=64)}")
    return "\n".join(msg)
