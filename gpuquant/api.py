"""The Python API: ``quantize`` (an array) and ``quantize_file`` (a whole GGUF model, like llama-quantize)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from .gguf_constants import GGUFValueType

from . import mixes, quants
from .backends import Device, DeviceError, DeviceOutOfMemory, open_device
from .config import QuantizeConfig
from .gguf_io import GGUFError, GGUFModel, read_model
from .gguf_writer import KVList, OutTensor, StreamWriter, encode_header, temp_path_for
from .pipeline import Pipeline, QuantizeError, StageTimes, TensorWork
from .quants import GGMLQuantizationType as T, type_name

GGML_QNT_VERSION = 2
MIN_SLAB_BYTES = 64 << 10
FLOATS = (T.F32, T.F16, T.BF16)  # source types the quantize kernels read themselves  # out-of-memory retries halve the slab size down to this


class UsageError(ValueError):
    """Bad arguments or input: the message names the argument and the value received."""


def quantize(array: np.ndarray, type: str | int | T, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize an array (last axis = rows) like ``ggml_quantize_chunk``; returns the raw bytes as uint8."""
    return quants.quantize(array, type, imatrix)


@dataclass
class TensorReport:
    name: str
    shape: tuple[int, ...]
    src_type: T
    dst_type: T
    src_bytes: int
    dst_bytes: int
    n_elements: int
    source_name: str = ""  # the input tensor (differs from ``name`` when --prune-layers renumbers layers)
    dst_label: str = ""  # shown instead of dst_type by progress lines (several outputs: "Q4_K/Q8_0/...")


@dataclass
class Report:
    """What a run did: per tensor, per stage, totals. ``output`` is None for a dry run."""

    input: Path
    output: Path | None
    ftype: str
    device: str
    tensors: list[TensorReport] = field(default_factory=list)
    times: StageTimes | None = None
    seconds: float = 0.0
    n_fallback: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why this output failed (a run of several outputs, gpuquant.outputs)
    output_times: object = None  # this output's share of a run of several outputs (pipeline.OutputTimes)

    @property
    def src_bytes(self) -> int:
        return sum(t.src_bytes for t in self.tensors)

    @property
    def dst_bytes(self) -> int:
        return sum(t.dst_bytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    def bpw(self, nbytes: int) -> float:
        return nbytes * 8.0 / max(1, self.n_elements)


def default_output(src: Path, ftype_name: str) -> Path:
    """``<input-stem>-<TYPE>.gguf`` beside the input."""
    return src.with_name(f"{src.stem}-{ftype_name}.gguf")


def split_paths(out: Path, n_split: int) -> list[Path]:
    """--keep-split names: llama_split_path(prefix, i, n) = ``<prefix>-%05d-of-%05d.gguf``; like
    llama-quantize, a ``.gguf`` suffix given for the output is dropped from the prefix."""
    prefix = str(out)
    if ".gguf" in prefix:
        prefix = prefix[: -len(".gguf")]
    return [Path(f"{prefix}-{i + 1:05d}-of-{n_split:05d}.gguf") for i in range(n_split)]


def parse_kv_override(spec: str) -> tuple[str, GGUFValueType, object]:
    """``KEY=TYPE:VALUE`` as llama.cpp's string_parse_kv_override (int, float, bool, str)."""
    key, sep, rest = spec.partition("=")
    if not sep or not key or len(key) >= 128:
        raise UsageError(f"--override-kv: expected KEY=TYPE:VALUE, got {spec!r}")
    kind, sep, value = rest.partition(":")
    if not sep:
        raise UsageError(f"--override-kv: expected KEY=TYPE:VALUE, got {spec!r}")
    try:
        if kind == "int":
            return key, GGUFValueType.UINT32, abs(int(value))  # llama-quant stores ints as u32(|v|)
        if kind == "float":
            return key, GGUFValueType.FLOAT32, float(value)
        if kind == "bool":
            if value not in ("true", "false"):
                raise ValueError(value)
            return key, GGUFValueType.BOOL, value == "true"
        if kind == "str":
            if len(value) > 127:
                raise UsageError(f"--override-kv: string value longer than 127 bytes for key {key!r}")
            return key, GGUFValueType.STRING, value
    except ValueError:
        raise UsageError(f"--override-kv: invalid {kind} value {value!r} for key {key!r}") from None
    raise UsageError(f"--override-kv: type must be int, float, bool or str, got {kind!r} in {spec!r}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------------
# the steps of quantize_file
# ------------------------------------------------------------------------------------------------------


def _parse_ftype(cfg: QuantizeConfig) -> mixes.FType:
    try:
        return mixes.parse_ftype(cfg.ftype)
    except ValueError as e:
        raise UsageError(f"--type: {e}") from None


def _check_outputs(src: Path, dst, model: GGUFModel, cfg: QuantizeConfig, ftype_name: str) -> list[Path]:
    """The output file(s) (one per input split with ``keep_split``), refused when they are the input, exist
    without ``force``, or cannot be written. None for a dry run."""
    if cfg.dry_run:
        return []
    n_split = 1 + max((t.split for t in model.tensors), default=0) if cfg.keep_split else 1
    out = Path(dst) if dst is not None else default_output(src, ftype_name)
    out_paths = split_paths(out, n_split) if cfg.keep_split else [out]
    for o in out_paths:
        if any(_same_file(i, o) or i.resolve() == o.resolve() for i in model.split_paths):
            raise UsageError(f"output: input and output files are the same: {str(o)!r}")
        if o.exists() and not cfg.force:
            raise UsageError(f"output: {str(o)!r} already exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise UsageError(f"output: directory {str(out.parent)!r} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"output: directory {str(out.parent)!r} is not writable")
    return out_paths


def _load_imatrix(cfg: QuantizeConfig):
    if cfg.imatrix is None:
        return None
    from . import imatrix as imatrix_mod

    return imatrix_mod.prepare(cfg.imatrix, cfg.include_weights, cfg.exclude_weights)


def _ggml_type(name: str | None, what: str):
    if name is None:
        return None
    try:
        return quants.parse_type(str(name))
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None


def _mix_params(cfg: QuantizeConfig, ftype: mixes.FType, imat) -> mixes.QuantizeParams:
    """llama_model_quantize_params of the job."""
    return mixes.QuantizeParams(
        ftype=ftype,
        pure=cfg.pure,
        quantize_output_tensor=not cfg.leave_output_tensor,
        output_tensor_type=_ggml_type(cfg.output_tensor_type, "--output-tensor-type"),
        token_embedding_type=_ggml_type(cfg.token_embedding_type, "--token-embedding-type"),
        tensor_types=[(pat.lower(), _ggml_type(t, "--tensor-type")) for pat, t in cfg.tensor_types],
        has_imatrix=imat is not None and bool(imat.entries),
        prune_layers=list(cfg.prune_layers),
        allow_requantize=cfg.allow_requantize,
        keep_split=cfg.keep_split,
    )


def _plan_tensors(src: Path, model: GGUFModel, params: mixes.QuantizeParams) -> mixes.Plan:
    infos = [mixes.TensorInfo(t.name, t.ne, t.type, t.split, t.offset) for t in model.tensors]
    try:
        return mixes.plan(model.arch, model.kv_dict, infos, params)
    except ValueError as e:
        raise UsageError(f"{src}: {e}") from None


def _tensor_reports(plans: mixes.Plan, by_name: dict) -> list[TensorReport]:
    out = []
    for p in plans:
        st = by_name[p.source_name]
        out.append(TensorReport(p.name, st.ne, st.type, p.target_type, st.nbytes,
                                OutTensor(p.name, st.ne, p.target_type).nbytes, st.n_elements, st.name))
    return out


def _refusals(plans: mixes.Plan, params: mixes.QuantizeParams, report: Report, dry_run: bool) -> None:
    """What llama-quantize refuses before writing: a mix that needs an imatrix without one (a note for a dry
    run), requantizing without ``allow_requantize``, and (gpuquant) types it cannot quantize."""
    try:
        mixes.check_imatrix(plans, params)
    except ValueError as e:
        if not dry_run:
            raise UsageError(f"{e} (pass --imatrix FILE)") from None
        report.notes.append(f"{e} (pass --imatrix FILE)")
    if dry_run:
        return
    try:
        mixes.check_requantize(plans, params)
    except ValueError as e:
        raise UsageError(f"{e} (pass --allow-requantize)") from None
    try:
        mixes.check_implemented(plans)
    except quants.UnsupportedType as e:
        raise UsageError(f"{e} (ftype {report.ftype})") from None


def _tensor_work(plans: mixes.Plan, by_name: dict, imat, keep_split: bool) -> list[TensorWork]:
    """What the pipeline does per output tensor: copy, or quantize with these importance weights."""
    works = []
    for p in plans:
        st = by_name[p.source_name]
        split = st.split if keep_split else 0
        qw = None
        if st.type != p.target_type and imat is not None:
            qw = imat.weights_for(p.imatrix_name, st)
            if qw is None and p.requires_imatrix:
                raise UsageError(f"missing importance matrix for tensor {st.name!r} in a very low-bit quantization")
        works.append(TensorWork(st, p.name, p.target_type, qw, split))
    return works


def _headers(model: GGUFModel, plans: mixes.Plan, works: list[TensorWork], cfg: QuantizeConfig, imat,
             n_split: int) -> list[bytes]:
    """The GGUF header of every output file: the input's metadata with llama-quantize's edits."""
    kvs = KVList(model.kvs)
    kvs.set("general.quantization_version", GGUFValueType.UINT32, GGML_QNT_VERSION)
    kvs.set("general.file_type", GGUFValueType.UINT32, int(plans.ftype))
    for k in ("split.no", "split.count", "split.tensors.count"):
        kvs.remove(k)
    overrides = [parse_kv_override(s) for s in cfg.override_kv]
    if imat is not None:
        overrides += imat.metadata(str(cfg.imatrix))
    for key, vt, val in overrides:
        kvs.set(key, vt, val)
    if plans.block_count is not None:
        kvs.set(f"{model.arch}.block_count", GGUFValueType.UINT32, plans.block_count)
    headers = []
    for i in range(n_split):
        skv = kvs if i == 0 else KVList([])  # later splits carry only the split keys (gguf_init_empty)
        if n_split > 1:
            skv.set("split.no", GGUFValueType.UINT16, i)
            skv.set("split.count", GGUFValueType.UINT16, n_split)
            skv.set("split.tensors.count", GGUFValueType.INT32, len(plans))
        headers.append(encode_header(skv, [OutTensor(w.name, w.src.ne, w.dst_type) for w in works if w.split == i]))
    return headers


def _open_device(cfg: QuantizeConfig, works: list[TensorWork], report: Report) -> Device:
    """The job's device; every conversion the job needs must be supported there."""
    dev = cfg.device if isinstance(cfg.device, Device) else open_device(cfg.device, cfg.threads)
    report.device = dev.name
    reason = getattr(dev, "fallback_reason", None)
    if reason:
        report.notes.append(reason)
    for w in works:
        if w.quantize and not dev.supports(w.src.type, w.dst_type):
            if dev is not cfg.device:
                dev.close()
            raise UsageError(f"device {dev.name}: cannot quantize tensor {w.name!r} from "
                             f"{type_name(w.src.type)} to {type_name(w.dst_type)}")
    quantized = [w for w in works if w.quantize]
    dev.prepare({w.dst_type for w in quantized} | {w.src.type for w in quantized if w.src.type not in FLOATS})
    return dev


def _run_pipeline(dev: Device, works: list[TensorWork], writers: list[StreamWriter], slab_bytes: int | None,
                  on_slab: Callable[[int, int], None], done: list[int], notes: list[str]) -> StageTimes:
    """``Pipeline.run``; when the device runs out of memory, write everything again with half the slab size,
    down to ``MIN_SLAB_BYTES``, then give up with a clear error."""
    while True:
        pipe = Pipeline(dev, works, writers, slab_bytes=slab_bytes, progress=on_slab)
        try:
            return pipe.run()
        except DeviceOutOfMemory as e:
            mib = pipe.slab_bytes / (1 << 20)
            if pipe.slab_bytes <= MIN_SLAB_BYTES:
                raise DeviceOutOfMemory(f"device {dev.name}: out of memory even with {mib:.2f} MiB slabs ({e}); "
                                        f"free device memory or choose another --device") from None
            slab_bytes = max(MIN_SLAB_BYTES, pipe.slab_bytes // 2)
            notes.append(f"device {dev.name} ran out of memory with {mib:.2f} MiB slabs; "
                         f"retried with {slab_bytes / (1 << 20):.2f} MiB slabs")
            for w in writers:
                w.rewind()
            done[0] = 0


def _write(dev: Device, works: list[TensorWork], out_paths: list[Path], headers: list[bytes], cfg: QuantizeConfig,
           progress: Callable[[str, int, int], None] | None, report: Report) -> None:
    """Run the pipeline into temporary files and rename them into place; on any failure remove them."""
    total = sum(w.src.nbytes for w in works)
    done = [0]

    def on_slab(index: int, nbytes: int) -> None:
        done[0] += nbytes
        if progress:
            progress(works[index].name, done[0], total)

    writers: list[StreamWriter] = []
    try:
        for path, header in zip(out_paths, headers):
            writers.append(StreamWriter(path, header))
        report.times = _run_pipeline(dev, works, writers, cfg.slab_bytes, on_slab, done, report.notes)
        for w in writers:
            w.commit()
    except BaseException:
        for w in writers:
            w.abort()
        raise


def quantize_file(src: str | os.PathLike, dst: str | os.PathLike | None = None,
                  config: QuantizeConfig | str | None = None, *,
                  progress: Callable[[str, int, int], None] | None = None,
                  on_plan: Callable[[list[TensorReport]], None] | None = None, **options) -> Report:
    """Quantize a GGUF model file like llama-quantize: ``config`` (a :class:`QuantizeConfig`, or just the ftype
    name such as ``"Q4_K_M"``) with any of its fields given as keywords too (``imatrix=``, ``device=``, ...).

    Output is byte-identical to llama-quantize. It is written to a temporary file beside ``dst`` and renamed
    on success; on any failure or interrupt the temporary file is removed and ``dst`` is untouched.
    ``progress(tensor, done_bytes, total_bytes)`` is called per slab written, ``on_plan(reports)`` once the
    per-tensor types are known.
    """
    t0 = time.perf_counter()
    cfg = QuantizeConfig.of(config, **options)
    if "," in str(cfg.ftype):
        raise UsageError(f"quantize_file makes one output, got the types {cfg.ftype!r}; "
                         f"gpuquant.outputs.quantize_files makes several from one read")
    if cfg.resume:
        from .outputs import quantize_file_resumable

        return quantize_file_resumable(src, dst, cfg, progress, on_plan)
    src = Path(src)
    ftype = _parse_ftype(cfg)
    model = read_model(src)
    out_paths = _check_outputs(src, dst, model, cfg, ftype.name)
    imat = _load_imatrix(cfg)
    params = _mix_params(cfg, ftype, imat)
    plans = _plan_tensors(src, model, params)
    by_name = {t.name: t for t in model.tensors}
    report = Report(src, out_paths[0] if out_paths else None, ftype.name, "dry-run" if cfg.dry_run else "",
                    _tensor_reports(plans, by_name), n_fallback=plans.n_fallback)
    if on_plan:
        on_plan(report.tensors)
    _refusals(plans, params, report, cfg.dry_run)
    if cfg.dry_run:
        report.seconds = time.perf_counter() - t0
        return report
    works = _tensor_work(plans, by_name, imat, cfg.keep_split)
    headers = _headers(model, plans, works, cfg, imat, len(out_paths))
    dev = _open_device(cfg, works, report)
    try:
        _write(dev, works, out_paths, headers, cfg, progress, report)
    finally:
        if dev is not cfg.device:
            dev.close()
    if imat is not None:
        report.notes += imat.notes
    report.seconds = time.perf_counter() - t0
    return report


__all__ = ["quantize", "quantize_file", "QuantizeConfig", "Report", "TensorReport", "UsageError", "GGUFError", "QuantizeError",
           "DeviceError", "DeviceOutOfMemory", "default_output", "temp_path_for"]
