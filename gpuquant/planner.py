"""The size planner: a type per tensor so that a model fits a size budget with the least measured error.

``gpuquant run model.gguf --target-bpw 4.25`` (or ``--target-size 3.5GiB``): every tensor that
llama-quantize would quantize and that no option fixes (``--tensor-type``, ``--output-tensor-type``,
``--token-embedding-type``) gets one type of a candidate ladder; the error of every (tensor, type) is
measured by quantizing and dequantizing (:mod:`gpuquant.planner_measure`), and a multiple-choice knapsack
(:func:`solve`) picks the types. The plan is written as ``--tensor-type`` patterns, one anchored pattern
per tensor (:func:`plan_patterns`), so llama-quantize given the same file (``--tensor-type-file``), base
type and imatrix writes the same bytes.

Sizes are counted as llama.cpp reports them: bits per weight = all tensor data bytes x 8 / all elements
(every tensor, quantized or not); a file size counts the whole file (header, tensor data, alignment).

Pure Python over :mod:`gpuquant.quants` (sizes and the registry); this module reads no file.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import numpy as np

from . import quants
from .gguf_io import pad
from .quants import GGMLQuantizationType as T, QUANT_SIZES, type_name

__all__ = [
    "Budget", "BudgetError", "Option", "Item", "Plan", "PlanRow", "budget_for", "candidates_for",
    "default_ladder", "parse_candidates", "parse_size", "plan_json", "plan_patterns", "plan_text", "save_plan", "solve",
]

# families whose types are not general-purpose weight formats (floats, ternary models, MoE-only FP4, the
# 1-2 bpw Q1_0/Q2_0): left out of the default ladder, allowed through --candidates
_SPECIAL_FAMILIES = ("floats", "ternary", "fp4", "lowbit")
LADDER_BPW = (2.0, 8.5)  # the default ladder: types from about 2 to 8 bits per weight
DP_CELLS = 20_000_000  # knapsack table size (tensors x capacity steps) the solver allows itself

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4,
          "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30, "TI": 1 << 40}


class BudgetError(ValueError):
    """A budget that no plan can meet, or a malformed budget or candidate list."""


def bpw_of(qtype) -> float:
    block, size = QUANT_SIZES[T(int(qtype))]
    return 8.0 * size / block


# ---------------------------------------------------------------------------------------------- budgets


def parse_size(text: str) -> int:
    """``3.5GiB`` / ``800MB`` / ``123456`` -> bytes (KiB/MiB/GiB/TiB powers of 1024, kB/MB/GB/TB of 1000)."""
    m = _SIZE.match(str(text))
    if not m:
        raise BudgetError(f"--target-size: expected a size such as 3.5GiB, 800MB or 123456, got {text!r}")
    unit = (m.group(2) or "").upper().rstrip("B")
    value = Fraction(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise BudgetError(f"--target-size: must be positive, got {text!r}")
    return math.floor(value)


@dataclass(frozen=True)
class Budget:
    """The most bytes a plan may take. ``kind``: ``"bpw"`` (tensor data bytes) or ``"size"`` (the whole
    file); ``text`` is what the user asked for."""

    kind: str
    max_bytes: int
    text: str


def budget_for(target_bpw: float | None, target_size: str | int | None, n_elements: int) -> Budget:
    """The byte budget of ``--target-bpw`` (data bytes: floor(bpw x elements / 8)) or ``--target-size``."""
    if (target_bpw is None) == (target_size is None):
        raise BudgetError("give exactly one of --target-bpw and --target-size")
    if target_bpw is not None:
        if not target_bpw > 0 or math.isinf(target_bpw):
            raise BudgetError(f"--target-bpw: must be a positive number, got {target_bpw!r}")
        limit = math.floor(Fraction(target_bpw) * n_elements / 8)
        return Budget("bpw", limit, f"{target_bpw:g} bpw")
    nbytes = target_size if isinstance(target_size, int) else parse_size(target_size)
    return Budget("size", nbytes, str(target_size))


# ---------------------------------------------------------------------------------------------- candidates


def default_ladder() -> tuple[T, ...]:
    """Registered types with a quantizer and a dequantizer between about 2 and 8 bits per weight, without
    the special-purpose families; in ggml id order."""
    out = []
    for t, cls in quants.registered().items():
        if cls.family in _SPECIAL_FAMILIES or not LADDER_BPW[0] <= bpw_of(t) <= LADDER_BPW[1]:
            continue
        if cls.dequantize_rows.__func__ is quants.QuantType.dequantize_rows.__func__:
            continue
        out.append(t)
    return tuple(out)


def parse_candidates(text: str | Sequence[str] | None) -> tuple[T, ...]:
    """``--candidates Q4_K,Q5_K,Q6_K`` -> types (registered, quantized); None -> :func:`default_ladder`."""
    if text is None:
        return default_ladder()
    names = [s for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise BudgetError(f"--candidates: expected a comma-separated list of ggml types, got {text!r}")
    out = []
    for name in names:
        try:
            cls = quants.get(name.strip())
        except quants.UnsupportedType as e:
            raise BudgetError(f"--candidates: {e}") from None
        if cls.family == "floats" and cls.qtype != T.F16 and cls.qtype != T.BF16:
            raise BudgetError(f"--candidates: {name!r} is not a weight type")
        if cls.qtype not in out:
            out.append(cls.qtype)
    return tuple(sorted(out))


def candidates_for(ladder: Sequence[T], n_per_row: int, has_weights: bool, needs_weights: set[T]) -> list[T]:
    """The ladder types a tensor can take: its row is a whole number of blocks, and types that need
    importance weights (``needs_weights``) only when it has them."""
    return [t for t in ladder if n_per_row % QUANT_SIZES[t][0] == 0 and (has_weights or t not in needs_weights)]


# ---------------------------------------------------------------------------------------------- knapsack


@dataclass(frozen=True)
class Option:
    qtype: T
    nbytes: int  # bytes counted against the budget (padded to the alignment for a file budget)
    error: float  # measured (importance-weighted) squared error


@dataclass
class Item:
    """One tensor the planner chooses for, with its options (in ladder order)."""

    name: str
    options: list[Option]


def solve(items: Sequence[Item], capacity: int, cells: int = DP_CELLS) -> list[int]:
    """Multiple-choice knapsack: one option per item, total bytes <= ``capacity``, least total error.

    Exact dynamic programming over the bytes above each item's smallest option, in steps of ``unit`` bytes
    with every size rounded up (so the budget is never exceeded), then a greedy pass that spends the
    rounding slack on the best remaining upgrades. Deterministic: ties go to the earlier option.
    Raises :class:`BudgetError` when even the smallest options do not fit.
    """
    base = [min(o.nbytes for o in it.options) for it in items]
    slack = capacity - sum(base)
    if slack < 0:
        raise BudgetError(f"the smallest options take {sum(base)} bytes, over the capacity {capacity}")
    extra = [[o.nbytes - b for o in it.options] for it, b in zip(items, base)]
    if sum(max(e) for e in extra) <= slack:  # everything fits: the least error everywhere
        return [int(np.argmin([o.error for o in it.options])) for it in items]
    steps = max(1, min(cells // max(1, len(items)), slack))
    unit = max(1, -(-slack // steps))
    choice = _dp(items, extra, slack // unit, unit)
    return _greedy_fill(items, choice, capacity)


def _dp(items: Sequence[Item], extra: list[list[int]], cap: int, unit: int) -> list[int]:
    """``best[c]``: least error of the items so far within ``c`` units; the argmin kept per item."""
    best = np.zeros(cap + 1)
    picks = np.zeros((len(items), cap + 1), dtype=np.uint8)
    for i, (it, ex) in enumerate(zip(items, extra)):
        new = np.full(cap + 1, np.inf)
        for k, (o, e) in enumerate(zip(it.options, ex)):
            w = -(-e // unit)
            if w > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[w:] = best[: cap + 1 - w] + o.error
            better = cand < new
            new[better] = cand[better]
            picks[i, better] = k
        best = new
    choice, c = [0] * len(items), cap
    for i in range(len(items) - 1, -1, -1):
        k = int(picks[i, c])
        choice[i] = k
        c -= -(-extra[i][k] // unit)
    return choice


def _greedy_fill(items: Sequence[Item], choice: list[int], capacity: int) -> list[int]:
    """Spend what the rounded sizes left unused: the single upgrade with the largest error reduction that
    fits, again and again."""
    used = sum(it.options[k].nbytes for it, k in zip(items, choice))
    while True:
        best = None
        for i, (it, k) in enumerate(zip(items, choice)):
            cur = it.options[k]
            for j, o in enumerate(it.options):
                gain = cur.error - o.error
                if gain > 0 and used - cur.nbytes + o.nbytes <= capacity and (best is None or gain > best[0]):
                    best = (gain, i, j)
        if best is None:
            return choice
        _, i, j = best
        used += items[i].options[j].nbytes - items[i].options[choice[i]].nbytes
        choice[i] = j


# ---------------------------------------------------------------------------------------------- the plan


@dataclass
class PlanRow:
    """One quantizable tensor of the plan: its type, bytes, measured error and signal energy."""

    name: str
    shape: tuple[int, ...]
    qtype: T
    nbytes: int
    error: float
    energy: float  # (weighted) sum of squares of the source: error / energy is the relative error
    fixed: str = ""  # why the planner did not choose it ("--tensor-type", ...), "" when it did


@dataclass
class PresetError:
    """The same measurement for a llama-quantize preset: its size and total error."""

    ftype: str
    data_bytes: int
    file_bytes: int
    bpw: float
    error: float


@dataclass
class Plan:
    """What the planner chose. ``data_bytes``/``file_bytes`` count every tensor (and, for the file, the
    header); ``n_elements`` all elements; ``error`` the summed measured error of the quantizable tensors."""

    rows: list[PlanRow]
    budget: Budget
    base_ftype: str
    data_bytes: int
    file_bytes: int
    n_elements: int
    weighted: bool
    measure_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    presets: list[PresetError] = field(default_factory=list)

    @property
    def bpw(self) -> float:
        return self.data_bytes * 8.0 / max(1, self.n_elements)

    @property
    def error(self) -> float:
        return sum(r.error for r in self.rows)

    @property
    def rel_error(self) -> float:
        energy = sum(r.energy for r in self.rows)
        return self.error / energy if energy else 0.0

    def types(self) -> dict[str, str]:
        """tensor name -> chosen type name."""
        return {r.name: type_name(r.qtype) for r in self.rows}


def plan_patterns(plan: Plan) -> list[tuple[str, str]]:
    """One ``--tensor-type`` entry per quantizable tensor: (``^name$`` with dots escaped, type name).

    llama-quantize lower-cases the patterns and applies the first that matches (std::regex_search); an
    anchored pattern matches exactly one tensor, so the order does not matter."""
    out = []
    for r in plan.rows:
        if r.name != r.name.lower():
            raise BudgetError(f"tensor {r.name!r} has upper-case letters: llama-quantize lower-cases "
                              f"--tensor-type patterns, so no pattern can name it")
        out.append(("^" + re.escape(r.name) + "$", type_name(r.qtype).lower()))
    return out


def save_plan(plan: Plan, path) -> None:
    """Write the plan as a ``--tensor-type-file``: one ``PATTERN=TYPE`` per line."""
    text = "".join(f"{p}={t}\n" for p, t in plan_patterns(plan))
    with open(path, "w") as f:
        f.write(text)


def file_budget_bytes(nbytes: int) -> int:
    """A tensor's bytes in the file: its data padded to the GGUF alignment."""
    return pad(nbytes)


MiB = 1 << 20


def _columns(head: Sequence[str], rows: list[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(head[c]), *(len(r[c]) for r in rows)) if rows else len(head[c]) for c in range(len(head))]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return [line(head), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def plan_json(plan: Plan) -> dict:
    """The plan for ``--json``: budget, totals, per tensor rows, presets."""
    return {"budget": {"kind": plan.budget.kind, "max_bytes": plan.budget.max_bytes, "asked": plan.budget.text},
            "base_ftype": plan.base_ftype, "data_bytes": plan.data_bytes, "file_bytes": plan.file_bytes,
            "bpw": plan.bpw, "error": plan.error, "rel_error": plan.rel_error, "weighted": plan.weighted,
            "measure_seconds": plan.measure_seconds, "notes": plan.notes,
            "tensors": [{"name": r.name, "type": type_name(r.qtype), "bytes": r.nbytes, "error": r.error,
                         "energy": r.energy, "fixed": r.fixed} for r in plan.rows],
            "presets": [{"ftype": p.ftype, "bpw": p.bpw, "data_bytes": p.data_bytes, "file_bytes": p.file_bytes,
                         "error": p.error} for p in plan.presets]}


def plan_text(plan: Plan) -> str:
    """The plan as plain text: per tensor (type, size, error), per type (counts), totals, presets."""
    rows = [(str(i), r.name, type_name(r.qtype), f"{r.nbytes / MiB:.3f}", f"{r.error:.4g}",
             f"{r.error / r.energy if r.energy else 0.0:.3e}", r.fixed)
            for i, r in enumerate(plan.rows, 1)]
    what = "importance-weighted squared error" if plan.weighted else "squared error"
    out = ["size plan (error: " + what + ")"]
    out += _columns(("#", "tensor", "type", "MiB", "error", "rel error", "fixed by"), rows,
                    (True, False, False, True, True, True, False))
    counts: dict[str, list[PlanRow]] = {}
    for r in plan.rows:
        counts.setdefault(type_name(r.qtype), []).append(r)
    type_rows = [(t, str(len(rs)), f"{sum(r.nbytes for r in rs) / MiB:.2f}", f"{sum(r.error for r in rs):.4g}")
                 for t, rs in sorted(counts.items(), key=lambda kv: bpw_of(T[kv[0]]))]
    out += ["", "per type"] + _columns(("type", "tensors", "MiB", "error"), type_rows, (False, True, True, True))
    b = plan.budget
    limit = f"{b.max_bytes} bytes" + (f" of tensor data ({b.text})" if b.kind == "bpw" else f" of file ({b.text})")
    out += ["", f"budget: {limit}",
            f"plan:   {plan.data_bytes} bytes of tensor data = {plan.bpw:.4f} bpw, file {plan.file_bytes} bytes "
            f"({plan.file_bytes / MiB:.2f} MiB); total error {plan.error:.6g} (relative {plan.rel_error:.4e}); "
            f"base type {plan.base_ftype}; measured in {plan.measure_seconds:.1f} s"]
    if plan.presets:
        prow = [(p.ftype, f"{p.bpw:.4f}", f"{p.file_bytes / MiB:.2f}", f"{p.error:.6g}",
                 f"{(p.error / plan.error - 1) * 100:+.1f}%" if plan.error else "-") for p in plan.presets]
        out += ["", "nearest presets (same measurement)"] + _columns(
            ("preset", "bpw", "file MiB", "error", "vs plan"), prow, (False, True, True, True, True))
    out += [f"note: {n}" for n in plan.notes]
    return "\n".join(out)
