"""One planner run over a model: which tensors are free, measuring, the knapsack, the nearest presets.

:func:`measure_model` takes llama-quantize's own plan of the base ftype (``mixes.plan`` with the user's
options) and measures; :func:`solve_budget` turns the measurements into a :class:`planner.Plan` for one
budget. ``quantize_file`` then pins every tensor to its planned type with the patterns of
``planner.plan_patterns`` and writes the file as usual.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import mixes, planner as pl, quants
from .backends import Device
from .gguf_io import GGUFModel, pad, tensor_nbytes
from .mix_rules import Category, is_quantized, requires_imatrix
from .planner_measure import Measurement, Task, measure
from .quants import GGMLQuantizationType as T, type_name

__all__ = ["Measured", "PRESETS", "base_ftype_for", "fixed_reason", "measure_model", "solve_budget"]

# the presets compared with a plan (those whose types gpuquant can write are used)
PRESETS = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "Q2_K", "Q3_K_S",
           "Q3_K_M", "Q3_K_L", "IQ4_XS", "IQ4_NL", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0")


def fixed_reason(p: mixes.TensorPlan, params: mixes.QuantizeParams) -> str:
    """Why the planner may not choose this tensor's type ("" when it may)."""
    if not p.allows_quantization:
        return "not quantized"
    if params.token_embedding_type is not None and p.category is Category.TOKEN_EMBD:
        return "--token-embedding-type"
    if params.output_tensor_type is not None and p.category is Category.OUTPUT:
        return "--output-tensor-type"
    if any(re.search(pat, p.name) for pat, _ in params.tensor_types):
        return "--tensor-type"
    return ""


def _nbytes(p: mixes.TensorPlan, qtype, whole_file: bool) -> int:
    n = tensor_nbytes(qtype, p.shape_ne)
    return pad(n) if whole_file else n


def _options(p: mixes.TensorPlan, ladder, qw, ftype: int) -> list[T]:
    """The ladder types this tensor can take (row length, importance weights where a type needs them)."""
    need = {t for t in ladder if quants.get(t).requires_imatrix or requires_imatrix(p.name, t, ftype)}
    return pl.candidates_for(ladder, p.shape_ne[0], qw is not None, need)


def _tasks(plans, by_name, params, imat, ladder, extra: dict[str, set] | None = None) -> tuple[list[Task], dict]:
    """Measuring tasks: every free tensor x its options, every fixed quantized tensor x its type."""
    tasks, free = [], {}
    for p in plans:
        if not p.allows_quantization:
            continue
        st = by_name[p.source_name]
        qw = imat.weights_for(p.imatrix_name, st) if imat is not None else None
        why = fixed_reason(p, params)
        opts = [] if why else _options(p, ladder, qw, int(params.ftype))
        if not why and opts:
            free[p.name] = opts
        types = set(opts) | ({p.target_type} if p.quantize else set()) | (extra or {}).get(p.name, set())
        types.discard(p.source_type)
        types = {t for t in types if qw is not None or not quants.get(t).requires_imatrix}
        if types:
            tasks.append(Task(p.name, st, sorted(types), qw))
    return tasks, free


def _mean_weight(tasks: Sequence[Task]) -> float:
    means = [float(np.mean(t.quant_weights)) for t in tasks if t.quant_weights is not None]
    return float(np.mean(means)) if means else 1.0


def _error(m: Measurement, p: mixes.TensorPlan, qtype) -> float:
    if qtype == p.source_type:
        return 0.0
    e = m.errors.get((p.name, qtype))
    return math.inf if e is None else e


def _items(plans, free: dict, m: Measurement, whole_file: bool) -> list[pl.Item]:
    """Knapsack items: the free tensors' options that ggml can quantize, dominated ones dropped."""
    items = []
    for p in plans:
        if p.name not in free:
            continue
        opts = [pl.Option(t, _nbytes(p, t, whole_file), _error(m, p, t)) for t in free[p.name]]
        opts = [o for o in opts if math.isfinite(o.error)]
        items.append(pl.Item(p.name, _pareto(opts)))
    return items


def _pareto(opts: list[pl.Option]) -> list[pl.Option]:
    """Options no other is both smaller (or as small) and better than, by size then error then type id."""
    out: list[pl.Option] = []
    for o in sorted(opts, key=lambda o: (o.nbytes, o.error, int(o.qtype))):
        if not out or o.error < out[-1].error:
            out.append(o)
    return out


def _too_small(budget: pl.Budget, need: int, n_elements: int, ladder) -> pl.BudgetError:
    bpw = need * 8.0 / max(1, n_elements)
    what = "bytes of tensor data" if budget.kind == "bpw" else "bytes of file"
    names = ",".join(type_name(t) for t in ladder)
    return pl.BudgetError(f"--target-{'bpw' if budget.kind == 'bpw' else 'size'} {budget.text}: too small; the smallest "
                          f"plan from the candidates {names} needs {need} {what} ({need / (1 << 20):.2f} MiB"
                          + (f", {bpw:.4f} bpw)" if budget.kind == "bpw" else ")"))


def _sizes(plans, types: dict[str, T], header: int) -> tuple[int, int]:
    """(tensor data bytes, file bytes) with ``types`` for the named tensors and the plan's type for the rest."""
    data = file = 0
    for p in plans:
        n = tensor_nbytes(types.get(p.name, p.target_type), p.shape_ne)
        data += n
        file += pad(n)
    return data, header + file


@dataclass
class Measured:
    """A model measured once: enough to plan for any number of budgets (:func:`solve_budget`)."""

    plans: mixes.Plan
    params: mixes.QuantizeParams
    free: dict[str, list[T]]
    measurement: Measurement
    presets: dict[str, mixes.Plan]
    header_bytes: int
    ladder: Sequence[T]
    weighted: bool

    @property
    def n_elements(self) -> int:
        return sum(math.prod(p.shape_ne) for p in self.plans)


def measure_model(model: GGUFModel, plans: mixes.Plan, params: mixes.QuantizeParams, imat, *, dev: Device,
                  ladder: Sequence[T], header_bytes: int, max_rows: int | None = None,
                  compare_presets: bool = True, budgets: Sequence[Callable[[int], pl.Budget]] = (),
                  progress: Callable[[str, int, int], None] | None = None) -> Measured:
    """The measuring pass: every free tensor in every candidate, every fixed tensor in its type, and the
    types of the presets compared with the plan."""
    by_name = {t.name: t for t in model.tensors}
    presets = _preset_plans(model, plans, params) if compare_presets else {}
    extra: dict[str, set] = {}
    for pp in presets.values():
        for p in pp:
            if p.allows_quantization and p.quantize:
                extra.setdefault(p.name, set()).add(p.target_type)
    tasks, free = _tasks(plans, by_name, params, imat, ladder, extra)
    for budget in budgets:  # a budget too small fails before the expensive part
        _capacity(plans, free, budget, header_bytes, ladder)
    m = measure(dev, tasks, max_rows=max_rows, default_weight=_mean_weight(tasks), progress=progress)
    return Measured(plans, params, free, m, presets, header_bytes, ladder, imat is not None)


def _capacity(plans, free: dict[str, list[T]], budget_of, header: int, ladder) -> int:
    """Bytes left for the free tensors; :class:`planner.BudgetError` naming the smallest possible size when
    even their smallest candidates do not fit. ``budget_of``: a Budget or a function of the element count."""
    n_elements = sum(math.prod(p.shape_ne) for p in plans)
    budget = budget_of if isinstance(budget_of, pl.Budget) else budget_of(n_elements)
    whole_file = budget.kind == "size"
    fixed = sum(_nbytes(p, p.target_type, whole_file) for p in plans if p.name not in free)
    capacity = budget.max_bytes - fixed - (header if whole_file else 0)
    smallest = sum(min(_nbytes(p, t, whole_file) for t in free[p.name]) for p in plans if p.name in free)
    if smallest > capacity:
        raise _too_small(budget, budget.max_bytes - capacity + smallest, n_elements, ladder)
    return capacity


def solve_budget(ms: Measured, budget: pl.Budget, base_ftype: str) -> pl.Plan:
    """The least-error plan within ``budget`` (raises ``planner.BudgetError`` for a budget too small)."""
    items = _items(ms.plans, ms.free, ms.measurement, budget.kind == "size")
    capacity = _capacity(ms.plans, ms.free, budget, ms.header_bytes, ms.ladder)
    choice = pl.solve(items, capacity)
    types = {it.name: it.options[k].qtype for it, k in zip(items, choice)}
    return _assemble(ms.plans, ms.params, types, ms.measurement, budget, ms.header_bytes, base_ftype,
                     ms.presets, ms.weighted)


def _assemble(plans, params, types, m: Measurement, budget, header, base_ftype, presets, weighted) -> pl.Plan:
    rows = []
    for p in plans:
        if not p.allows_quantization:
            continue
        t = types.get(p.name, p.target_type)
        why = "" if p.name in types else (fixed_reason(p, params) or "no candidate fits its rows")
        rows.append(pl.PlanRow(p.name, tuple(p.shape_ne), t, tensor_nbytes(t, p.shape_ne), _error(m, p, t),
                               m.energy.get(p.name, 0.0), why))
    data, file = _sizes(plans, types, header)
    plan = pl.Plan(rows, budget, base_ftype, data, file, sum(math.prod(p.shape_ne) for p in plans), weighted,
                   measure_seconds=m.seconds)
    if m.numpy_types:
        plan.notes.append("measured with the numpy reference (no kernels on this device): "
                          + ", ".join(type_name(t) for t in sorted(m.numpy_types)))
    f16 = _sizes(plans, {p.name: T.F16 for p in plans if p.allows_quantization}, header)
    if budget.max_bytes >= (f16[0] if budget.kind == "bpw" else f16[1]):
        plan.notes.append(f"the budget ({budget.text}) is at least the model's size in F16 "
                          f"({f16[0] * 8.0 / max(1, plan.n_elements):.2f} bpw, {f16[1]} bytes of file): nothing "
                          f"needs quantizing below F16 to fit; every tensor takes its least-error candidate")
    plan.presets = _preset_errors(plans, presets, m, header, plan, budget.kind)
    return plan


def _preset_plans(model: GGUFModel, plans: mixes.Plan, params: mixes.QuantizeParams) -> dict[str, mixes.Plan]:
    """llama-quantize's plan of every preset that gpuquant can write with the job's options."""
    from .mixes import TensorInfo

    infos = [TensorInfo(t.name, t.ne, t.type, t.split, t.offset) for t in model.tensors]
    out = {}
    for name in PRESETS:
        pp = dataclasses.replace(params, ftype=mixes.parse_ftype(name))
        try:
            pplan = mixes.plan(model.arch, model.kv_dict, infos, pp)
            mixes.check_imatrix(pplan, pp)
            mixes.check_implemented(pplan)
        except (ValueError, quants.UnsupportedType):
            continue
        out[name] = pplan
    return out


def _preset_errors(plans, presets: dict, m: Measurement, header: int, plan: pl.Plan, kind: str) -> list:
    """The presets just below and just above the plan's size, with their measured error."""
    rows = []
    for name, pp in presets.items():
        data, file = _sizes(pp, {}, header)
        err = sum(_error(m, p, p.target_type) for p in pp if p.allows_quantization)
        rows.append(pl.PresetError(name, data, file, data * 8.0 / max(1, plan.n_elements), err))
    size = (lambda r: r.data_bytes) if kind == "bpw" else (lambda r: r.file_bytes)
    mine = plan.data_bytes if kind == "bpw" else plan.file_bytes
    below = [r for r in rows if size(r) <= mine]
    above = [r for r in rows if size(r) > mine]
    out = ([max(below, key=size)] if below else []) + ([min(above, key=size)] if above else [])
    return out


def base_ftype_for(plan: pl.Plan) -> str:
    """The ftype written as ``general.file_type`` when none is given: the one llama.cpp's loader would guess
    from the plan's most common quantized type (by bytes); Q8_0 when nothing is quantized."""
    weight: dict[T, int] = {}
    for r in plan.rows:
        if is_quantized(r.qtype):
            weight[r.qtype] = weight.get(r.qtype, 0) + r.nbytes
    if not weight:
        return "Q8_0"
    top = max(sorted(weight), key=lambda t: weight[t])
    return mixes.ftype_name(int(mixes.guess_ftype(top)))
