"""Regenerate the committed golden vectors from the oracle (llama-cpp-python 0.3.36).

    python tests/golden/make_golden.py            # every type
    python tests/golden/make_golden.py Q4_0 IQ4_XS

Writes ``inputs_b32.npz`` / ``inputs_b256.npz`` (the edge-case rows and imatrices of ``cases.py``) and one
``<TYPE>.npz`` per type holding ``ggml_quantize_chunk``'s bytes for every case without (``e<i>_none``) and
with (``e<i>_imat``, left out when the oracle's bytes equal ``e<i>_none``: F16, BF16, Q8_0 ignore the
weights) importance weights. A type gets every case group whose row lengths its block size divides
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


def write_type(type_name: str, cases: dict[str, list]) -> None:
    ids, arrays = [], {}
    for g in groups_for(type_name):
        for cid, rows, im in cases[g]:
            i = len(ids)
            ids.append(f"{g}:{cid}")
            imat = oracle.oracle_quantize(rows, type_name, im)
            if oracle.requires_imatrix(type_name):  # ggml aborts without weights: none to store
                arrays[f"e{i}_imat"] = imat
                continue
            none = oracle.oracle_quantize(rows, type_name, None)
            arrays[f"e{i}_none"] = none
            if not np.array_equal(none, imat):  # types that ignore the weights store one copy
                arrays[f"e{i}_imat"] = imat
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
