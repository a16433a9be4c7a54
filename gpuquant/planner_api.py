"""``quantize_file`` with a size target: the planner's inputs from the job, its result as --tensor-type patterns.

:func:`plan_sizes` turns a :class:`QuantizeConfig` with ``target_bpw`` / ``target_size`` into an ordinary
one: the base ftype, and one anchored ``--tensor-type`` pattern per quantizable tensor (what
``--save-plan`` writes), so the rest of ``quantize_file`` runs exactly as for llama-quantize's options.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from . import api, mixes, planner as pl
from .backends import Device, open_device
from .config import QuantizeConfig
from .gguf_io import GGUFModel
from .mix_rules import is_quantized
from .pipeline import TensorWork
from .planner_job import Measured, base_ftype_for, measure_model, solve_budget

__all__ = ["check_applied", "plan_budgets", "plan_sizes"]

PROVISIONAL_FTYPE = "Q8_0"  # the base used to plan when no --type is given (it decides no tensor's type)


def _checked_base(ftype: mixes.FType | None) -> mixes.FType:
    base = ftype or mixes.parse_ftype(PROVISIONAL_FTYPE)
    if base.name == "COPY" or not is_quantized(mixes.default_type(base.ftype)):
        raise api.UsageError(f"--type {base.name}: a size target needs a quantized base type (llama-quantize "
                             f"applies --tensor-type only then); leave --type out or pass e.g. Q4_K_M")
    if base.name == "Q2_K_S":
        raise api.UsageError("--type Q2_K_S: its Q2_K tensors require an importance matrix in llama-quantize; "
                             "pass Q2_K as the base type")
    return base


def _header_bytes(model: GGUFModel, plans: mixes.Plan, cfg: QuantizeConfig, imat) -> int:
    """Bytes of the output header (metadata and tensor infos; the same whatever the types)."""
    by_name = {t.name: t for t in model.tensors}
    works = [TensorWork(by_name[p.source_name], p.name, p.target_type, None, 0) for p in plans]
    return len(api._headers(model, plans, works, cfg, imat, 1)[0])


def _ladder(cfg: QuantizeConfig):
    try:
        return pl.parse_candidates(cfg.candidates)
    except pl.BudgetError as e:
        raise api.UsageError(str(e)) from None


def _check_options(cfg: QuantizeConfig) -> None:
    if cfg.target_bpw is not None and cfg.target_size is not None:
        raise api.UsageError("--target-bpw and --target-size cannot be used together")
    if cfg.target_size is not None and cfg.keep_split:
        raise api.UsageError("--target-size counts one whole file: it cannot be used with --keep-split "
                             "(use --target-bpw)")
    if cfg.measure_rows is not None and cfg.measure_rows <= 0:
        raise api.UsageError(f"--measure-rows: must be a positive number, got {cfg.measure_rows}")


def _measured(src: Path, model: GGUFModel, cfg: QuantizeConfig, imat, ftype, on_measure):
    """The measuring pass of a job -> (Measured, base ftype, the device opened here or None)."""
    _check_options(cfg)
    ladder = _ladder(cfg)
    base = _checked_base(ftype)
    params = api._mix_params(cfg, base, imat)
    plans = api._plan_tensors(src, model, params)
    header = _header_bytes(model, plans, cfg, imat)
    owned = None if isinstance(cfg.device, Device) else open_device(cfg.device, cfg.threads)
    n_notes = len(imat.notes) if imat is not None else 0
    try:
        ms = measure_model(model, plans, params, imat, dev=owned or cfg.device, ladder=ladder,
                           header_bytes=header, max_rows=cfg.measure_rows, progress=on_measure,
                           budgets=[lambda n: pl.budget_for(cfg.target_bpw, cfg.target_size, n)])
    except pl.BudgetError as e:
        if owned is not None:
            owned.close()
        raise api.UsageError(str(e)) from None
    except BaseException:
        if owned is not None:
            owned.close()
        raise
    if imat is not None:
        del imat.notes[n_notes:]  # the file's run notes them again
    return ms, base, owned


def _solved(ms: Measured, cfg: QuantizeConfig, ftype, base) -> tuple[QuantizeConfig, pl.Plan]:
    """The plan of the job's budget, checked and saved, and the config that writes it."""
    try:
        plan = solve_budget(ms, pl.budget_for(cfg.target_bpw, cfg.target_size, ms.n_elements), base.name)
    except pl.BudgetError as e:
        raise api.UsageError(str(e)) from None
    plan.base_ftype = ftype.name if ftype else base_ftype_for(plan)
    _check_budget(plan)
    if cfg.save_plan:
        _save(plan, cfg.save_plan)
    return dataclasses.replace(cfg, ftype=plan.base_ftype, tensor_types=pl.plan_patterns(plan)), plan


def plan_sizes(src: Path, model: GGUFModel, cfg: QuantizeConfig, imat, ftype: mixes.FType | None, on_measure):
    """Plan, then return (the config that writes the plan, the plan, the device opened here or None)."""
    ms, base, owned = _measured(src, model, cfg, imat, ftype, on_measure)
    try:
        out, plan = _solved(ms, cfg, ftype, base)
    except BaseException:
        if owned is not None:
            owned.close()
        raise
    return dataclasses.replace(out, device=owned or cfg.device), plan, owned


def plan_budgets(src, cfg: QuantizeConfig, budgets: list[dict], on_measure=None) -> list[tuple[QuantizeConfig, pl.Plan]]:
    """One measuring pass, several budgets: ``budgets`` are dicts of ``target_bpw`` / ``target_size`` /
    ``save_plan``; returns per budget the config that writes its plan (pass it to ``quantize_file``)."""
    from .gguf_io import read_model

    src = Path(src)
    model = read_model(src)
    imat = api._load_imatrix(cfg)
    ftype = None if cfg.ftype is None else api._parse_ftype(cfg)
    first = dataclasses.replace(cfg, **{"target_bpw": None, "target_size": None, **budgets[0]})
    ms, base, owned = _measured(src, model, first, imat, ftype, on_measure)
    if owned is not None:
        owned.close()
    out = []
    for b in budgets:
        job = dataclasses.replace(cfg, **{"target_bpw": None, "target_size": None, "save_plan": None, **b})
        plan_cfg, plan = _solved(ms, job, ftype, base)
        out.append((dataclasses.replace(plan_cfg, target_bpw=None, target_size=None, save_plan=None), plan))
    return out


def _check_budget(plan: pl.Plan) -> None:
    used = plan.data_bytes if plan.budget.kind == "bpw" else plan.file_bytes
    if used > plan.budget.max_bytes:
        raise RuntimeError(f"internal error: the plan takes {used} bytes, over the budget {plan.budget.max_bytes}")


def _save(plan: pl.Plan, path) -> None:
    try:
        pl.save_plan(plan, path)
    except OSError as e:
        raise api.UsageError(f"--save-plan: cannot write {str(path)!r}: {e.strerror}") from None


def check_applied(plan: pl.Plan, plans: mixes.Plan) -> None:
    """Every planned type is the one llama-quantize's rules give with the plan's patterns (a safety net)."""
    got = {p.name: p.target_type for p in plans}
    bad = [f"{r.name}: planned {r.qtype.name}, applied {got.get(r.name)}" for r in plan.rows
           if got.get(r.name) != r.qtype]
    if bad:
        raise RuntimeError("internal error: the plan's --tensor-type patterns did not give the planned types: "
                           + "; ".join(bad[:5]))
