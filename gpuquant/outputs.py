"""Many outputs from one read of the model (``--type Q4_K_M,Q6_K,...``), and ``--resume``.

``quantize_files`` plans every output with the same steps as ``api.quantize_file`` (one QuantizeConfig, one
ftype per output), then runs them through one ``Pipeline.many``: each source slab is read, validated and
uploaded once and quantized into every output that needs it. Every output goes through its own temporary
file and rename; a failure of one output (a refusal, a result failing validation, a write error) is
recorded in its report and the others go on. With ``resume`` each output file keeps a partial file and a
journal beside it (``gpuquant.resume``) and a later run continues after its last durable tensor.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import resume as rs
from .api import (FLOATS, MIN_SLAB_BYTES, Report, TensorReport, UsageError, _check_outputs, _headers, _load_imatrix, _mix_params,
                  _parse_ftype, _plan_tensors, _refusals, _tensor_reports, _tensor_work, default_output)
from .backends import Device, DeviceOutOfMemory, open_device
from .config import QuantizeConfig
from .gguf_io import read_model
from .gguf_writer import OutputError, StreamWriter
from .pipeline import Output, Pipeline, QuantizeError, StageTimes, TensorWork
from .quants import GGMLQuantizationType as T, type_name


@dataclass
class JobReport:
    """A run of several outputs: one Report per output (``error`` set on those that failed), the shared
    pipeline's stage times."""

    input: Path
    reports: list[Report]
    device: str = ""
    times: StageTimes | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    errors: dict[int, BaseException] = field(default_factory=dict)

    @property
    def failed(self) -> list[Report]:
        return [r for r in self.reports if r.error is not None]


def parse_types(spec: str) -> list[str]:
    """``Q4_K_M,Q6_K`` -> the ftype names, each once, in order."""
    names = [s.strip() for s in str(spec).split(",")]
    if not names or any(not n for n in names):
        raise UsageError(f"--type: expected TYPE or a comma-separated list TYPE,TYPE,..., got {spec!r}")
    seen, out = set(), []
    for n in names:
        canon = _parse_ftype(QuantizeConfig(ftype=n)).name
        if canon in seen:
            raise UsageError(f"--type: {canon} is listed twice in {spec!r}")
        seen.add(canon)
        out.append(n)
    return out


def output_for(src: Path, template, ftype_name: str, n_types: int) -> Path:
    """The output of one type: ``template`` with ``{stem}`` and ``{type}`` filled in (default: beside the
    input); several types need ``{type}`` in the template."""
    if template is None:
        return default_output(src, ftype_name)
    text = str(template)
    if n_types > 1 and "{type}" not in text:
        raise UsageError(f"--output: with several types the name must contain {{type}}, got {text!r} "
                         f"(e.g. 'out/{{stem}}-{{type}}.gguf')")
    try:
        return Path(text.format(stem=src.stem, type=ftype_name))
    except (KeyError, IndexError, ValueError) as e:
        raise UsageError(f"--output: only {{stem}} and {{type}} can be filled in, got {text!r} ({e})") from None


@dataclass
class _Planned:
    """One output, planned: its report, work list, headers and files (or the error that stopped it)."""

    cfg: QuantizeConfig
    report: Report
    works: list[TensorWork] = field(default_factory=list)
    headers: list[bytes] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    states: list[rs.ResumeState] = field(default_factory=list)
    writers: list = field(default_factory=list)
    error: BaseException | None = None


def _plan_output(src: Path, dst, model, cfg: QuantizeConfig, imat, n_types: int) -> _Planned:
    ftype = _parse_ftype(cfg)
    out = None if cfg.dry_run else output_for(src, dst, ftype.name, n_types)
    params = _mix_params(cfg, ftype, imat)
    plans = _plan_tensors(src, model, params)
    by_name = {t.name: t for t in model.tensors}
    report = Report(src, out, ftype.name, "dry-run" if cfg.dry_run else "", _tensor_reports(plans, by_name),
                    n_fallback=plans.n_fallback)
    p = _Planned(cfg, report)
    try:
        p.paths = _output_paths(src, out, model, cfg, ftype.name)
        _refusals(plans, params, report, cfg.dry_run)
        if cfg.dry_run:
            return p
        p.works = _tensor_work(plans, by_name, imat, cfg.keep_split)
        p.headers = _headers(model, plans, p.works, cfg, imat, len(p.paths))
        if cfg.resume:
            _inspect_resume(p, model)
    except (UsageError, rs.ResumeMismatch) as e:
        p.error = e
    return p


def _output_paths(src: Path, out, model, cfg: QuantizeConfig, ftype_name: str) -> list[Path]:
    """``api._check_outputs``, except that with ``resume`` an output with a journal may exist (it is checked)."""
    paths = _check_outputs(src, out, model, dataclasses.replace(cfg, force=True), ftype_name)
    for o in paths:
        if o.exists() and not cfg.force and not (cfg.resume and rs.journal_path(o).exists()):
            raise UsageError(f"output: {str(o)!r} already exists (use --force to overwrite)")
    return paths


def _inspect_resume(p: _Planned, model) -> None:
    n = len(p.paths)
    for i, (path, header) in enumerate(zip(p.paths, p.headers)):
        tensors = [(t, w.out_nbytes) for t, w in enumerate(p.works) if w.split == i]
        deps = rs.dependencies(model, p.cfg, header, (i, n))
        state = rs.inspect(path, header, deps, rs.file_layout(len(header), tensors), p.cfg.force)
        if state.note:
            p.report.notes.append(state.note)
        state.deps = deps
        p.states.append(state)


def _open_job_device(cfg: QuantizeConfig, planned: list[_Planned], job: JobReport) -> Device:
    """One device for every output; an output needing a conversion the device lacks fails alone."""
    dev = cfg.device if isinstance(cfg.device, Device) else open_device(cfg.device, cfg.threads)
    job.device = dev.name
    reason = getattr(dev, "fallback_reason", None)
    if reason:
        job.notes.append(reason)
    types: set = set()
    for p in planned:
        if p.error is not None:
            continue
        p.report.device = dev.name
        bad = next((w for w in p.works if w.quantize and not dev.supports(w.src.type, w.dst_type)), None)
        if bad is not None:
            p.error = UsageError(f"device {dev.name}: cannot quantize tensor {bad.name!r} from "
                                 f"{type_name(bad.src.type)} to {type_name(bad.dst_type)}")
            continue
        quantized = [w for w in p.works if w.quantize]
        types |= {w.dst_type for w in quantized} | {w.src.type for w in quantized if w.src.type not in FLOATS}
    if any(t not in FLOATS for t in types):
        types.add(T.F32)  # a requantized source is dequantized once for all outputs
    dev.prepare(types)
    return dev


def _writers(p: _Planned) -> Output:
    """The output's writers (a finished split file has none: its tensors are marked done)."""
    done: set[int] = set()
    writers = []
    for i, (path, header) in enumerate(zip(p.paths, p.headers)):
        if not p.cfg.resume:
            writers.append(StreamWriter(path, header))
            continue
        state = p.states[i]
        done |= state.done
        writers.append(None if state.kind == "finished" else rs.ResumeWriter(path, header, state.deps, state))
    p.writers = writers
    return Output(p.works, writers, done, p.report.ftype)


def _run(dev: Device, planned: list[_Planned], outputs: list[Output], slab_bytes, on_slab, notes) -> Pipeline:
    """``Pipeline.many`` with the out-of-memory retries of ``api._run_pipeline``."""
    failed = {k: p.error for k, p in enumerate(planned) if p.error is not None}
    while True:
        pipe = Pipeline.many(dev, outputs, slab_bytes, on_slab, failed)
        try:
            pipe.run()
            return pipe
        except DeviceOutOfMemory as e:
            mib = pipe.slab_bytes / (1 << 20)
            if pipe.slab_bytes <= MIN_SLAB_BYTES:
                raise DeviceOutOfMemory(f"device {dev.name}: out of memory even with {mib:.2f} MiB slabs ({e}); "
                                        f"free device memory or choose another --device") from None
            slab_bytes = max(MIN_SLAB_BYTES, pipe.slab_bytes // 2)
            notes.append(f"device {dev.name} ran out of memory with {mib:.2f} MiB slabs; "
                         f"retried with {slab_bytes / (1 << 20):.2f} MiB slabs")
            for k, o in enumerate(outputs):
                if k not in failed:
                    for w in o.writers:
                        if w is not None:
                            w.rewind()


def _finish(p: _Planned, error: BaseException | None) -> None:
    """Rename a complete output into place, or clear an output that failed (kept for --resume)."""
    if error is None:
        try:
            for w in p.writers:
                if w is not None:
                    w.commit()
            return
        except OSError as e:
            error = e
    p.error = p.error or error
    for w in p.writers:
        if w is not None:
            w.abort()


def _write_all(dev: Device, planned: list[_Planned], cfg: QuantizeConfig, progress, job: JobReport) -> None:
    live = [p for p in planned if p.error is None]
    outputs = []
    for p in planned:
        if p.error is None:
            try:
                outputs.append(_writers(p))
                continue
            except OutputError as e:
                p.error = e
        outputs.append(Output(p.works, [], set(), p.report.ftype))
    works0 = next((p.works for p in live), [])
    needed = {i for k, p in enumerate(planned) if p.error is None for i in range(len(p.works))
              if i not in outputs[k].done}
    total = sum(works0[i].src.nbytes for i in needed)
    done = [0]

    def on_slab(index: int, nbytes: int) -> None:
        done[0] += nbytes
        if progress:
            progress(works0[index].name, done[0], total)

    try:
        pipe = _run(dev, planned, outputs, cfg.slab_bytes, on_slab, job.notes)
    except BaseException:
        for p in planned:
            _finish(p, RuntimeError("stopped"))
        raise
    job.times = pipe.times
    for k, p in enumerate(planned):
        if p.error is None:
            _finish(p, pipe.failures.get(k))
        p.report.times = pipe.times
        p.report.output_times = pipe.times.outputs.get(k)
    # the journals of finished outputs go with the job: until then a resumed job checks and skips them
    for p in planned:
        if p.error is None and p.cfg.resume:
            rs.finish(p.paths)


def _job_plan(planned: list[_Planned]) -> list[TensorReport]:
    """The tensors of the job for progress: each with the types and the bytes of all its outputs."""
    if len(planned) == 1:
        return planned[0].report.tensors
    out = []
    for i, t in enumerate(planned[0].report.tensors):
        per = [p.report.tensors[i] for p in planned]
        out.append(dataclasses.replace(t, dst_bytes=sum(r.dst_bytes for r in per),
                                       dst_label="/".join(type_name(r.dst_type) for r in per)))
    return out


def quantize_files(src, dst=None, config: QuantizeConfig | str | None = None, *,
                   progress: Callable[[str, int, int], None] | None = None,
                   on_plan: Callable[[list[TensorReport]], None] | None = None, **options) -> JobReport:
    """Quantize ``src`` into every type of ``config.ftype`` (comma-separated) from one read.

    ``dst``: None (each output beside the input), or a name where ``{stem}`` and ``{type}`` are filled in.
    Each output is byte-identical to ``quantize_file`` with that one type. Failures of single outputs are in
    their reports (``error``) and ``errors``; failures of the job (the input, the device) raise.
    """
    t0 = time.perf_counter()
    cfg = QuantizeConfig.of(config, **options)
    src = Path(src)
    names = parse_types(cfg.ftype)
    model = read_model(src)
    imat = _load_imatrix(cfg)
    planned = [_plan_output(src, dst, model, dataclasses.replace(cfg, ftype=n), imat, len(names)) for n in names]
    job = JobReport(src, [p.report for p in planned], "dry-run" if cfg.dry_run else "")
    if on_plan and planned:
        on_plan(_job_plan(planned))
    if not cfg.dry_run and any(p.error is None for p in planned):
        dev = _open_job_device(cfg, planned, job)
        try:
            _write_all(dev, planned, cfg, progress, job)
        finally:
            if dev is not cfg.device:
                dev.close()
    for k, p in enumerate(planned):
        if p.error is not None:
            p.report.error = str(p.error)
            job.errors[k] = p.error
        elif imat is not None:
            p.report.notes += imat.notes
        p.report.seconds = time.perf_counter() - t0
    job.seconds = time.perf_counter() - t0
    return job


def quantize_file_resumable(src, dst, cfg: QuantizeConfig, progress=None, on_plan=None) -> Report:
    """``quantize_file`` with ``resume``: one output through ``quantize_files``; its failure raises."""
    job = quantize_files(src, None if dst is None else str(dst).replace("{", "{{").replace("}", "}}"), cfg,
                         progress=progress, on_plan=on_plan)
    if job.errors:
        raise job.errors[0]
    return job.reports[0]


__all__ = ["quantize_files", "JobReport", "parse_types", "output_for", "QuantizeError"]
