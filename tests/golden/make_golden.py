"""Regenerate the committed golden vectors from the oracle (llama-cpp-python 0.3.36).

    python tests/golden/make_golden.py            # every type
    python tests/golden/make_golden.py Q4_0 IQ4_XS

Writes ``inputs_b32.npz`` / ``inputs_b256.npz`` (the edge-case rows and imatrices of ``cases.py``) and one
``<TYPE>.npz`` per type holding ``ggml_quantize_chunk``'s bytes for every case without (``e<i>_none``) and
with (``e<i>_imat``, left out when the oracle's bytes equal ``e<i>_none``: F16, BF16, Q8_0 ignore the
weights) importance weights; where ggml aborts on a row (types with ``ggml_aborts``), that row's bytes are
left out and ``<key>_aborts`` marks it. A type gets every case group whose row lengths its block size divides
(``groups_for``). The types come from gpuquant's registry; the bytes come from llama.cpp only. Types that
ggml refuses to quantize without weights (ggml_quantize_requires_imatrix) store their weighted bytes only.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import oracle  # noqa: E402
from gpuquant.quants import get  # noqa: E402
from tests.golden import groups_for, types  # noqa: E402
from tests.golden.cases import build_cases  # noqa: E402

ORACLE = "llama-cpp-python 0.3.36 ggml_quantize_chunk"
SEED = 0


def write_inputs() -> dict[str, list]:
    cases = {}
    for g in ("b32", "b256"):
        cs = build_cases(g, SEED)
        arrays = {"ids": np.array([c[0] for c in cs]), "seed": np.array(SEED)}
        for i, (_, rows, im) in enumerate(cs):
            arrays[f"r{i}"] = rows
            arrays[f"w{i}"] = im
        np.savez_compressed(HERE / f"inputs_{g}.npz", **arrays)
        cases[g] = cs
    return cases


def _oracle_rows(type_name: str, rows: np.ndarray, im) -> tuple[np.ndarray, np.ndarray]:
    """(bytes of the rows ggml quantizes, bool mask of the rows on which it aborts). Types whose ggml quantizer
    aborts on some inputs run in forked children, row by row when the whole case aborts."""
    if not get(type_name).ggml_aborts:
        return oracle.oracle_quantize(rows, type_name, im), np.zeros(len(rows), bool)
    want, _ = oracle.forked_oracle(rows, type_name, im)
    if want is not None:
        return want, np.zeros(len(rows), bool)
    per_row = [oracle.forked_oracle(rows[r:r + 1], type_name, im)[0] for r in range(len(rows))]
    aborted = np.array([w is None for w in per_row])
    kept = [w for w in per_row if w is not None]
    return (np.concatenate(kept) if kept else np.zeros((0, get(type_name).row_size(rows.shape[1])), np.uint8)), aborted


def _store(arrays: dict, key: str, rows: np.ndarray, type_name: str, im) -> np.ndarray:
    """The oracle's bytes under ``key``; aborted rows, if any, as ``key + "_aborts"``."""
    got, aborted = _oracle_rows(type_name, rows, im)
    arrays[key] = got
    if aborted.any():
        arrays[key + "_aborts"] = aborted
    return got


def write_type(type_name: str, cases: dict[str, list]) -> None:
    ids, arrays = [], {}
    for g in groups_for(type_name):
        for cid, rows, im in cases[g]:
            i = len(ids)
            ids.append(f"{g}:{cid}")
            if get(type_name).requires_imatrix:  # ggml aborts without weights: none to store
                _store(arrays, f"e{i}_imat", rows, type_name, im)
                continue
            none = _store(arrays, f"e{i}_none", rows, type_name, None)
            imat = _store({}, "x", rows, type_name, im)
            if not np.array_equal(none, imat) or f"e{i}_none_aborts" in arrays:
                _store(arrays, f"e{i}_imat", rows, type_name, im)  # types that ignore weights store one copy
    np.savez_compressed(HERE / f"{type_name}.npz", ids=np.array(ids), oracle=np.array(ORACLE), **arrays)


def main(argv: list[str]) -> int:
    if not oracle.available():
        print(oracle.unavailable_reason(), file=sys.stderr)
        return 1
    known = types()
    wanted = [t.upper() for t in argv] or known
    unknown = set(wanted) - set(known)
    if unknown:
        print(f"unknown types {sorted(unknown)}; registered: {' '.join(known)}", file=sys.stderr)
        return 2
    cases = write_inputs()
    for t in wanted:
        write_type(t, cases)
        print(f"{t:7s} {(HERE / f'{t}.npz').stat().st_size / 1024:7.1f} KiB")
    total = sum(p.stat().st_size for p in HERE.glob("*.npz"))
    print(f"total {total / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
