"""``gpuquant`` command line: llama-quantize's usage and options, on a GPU, with rich progress and tables.

Every expected failure (bad input, bad arguments, a full disk, a missing device, an interrupt) ends with one
``error:`` paragraph on stderr, a non-zero exit code, no traceback, nothing at the destination path and the
input untouched.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

# numpy's BLAS threads: the CPU device runs its own thread pool, and BLAS threads spinning beside it cost a
# core (IQ2's ranking products) and ~50 ms of every start; set before numpy is imported (an explicit
# OPENBLAS_NUM_THREADS wins)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "GPU-first GGUF quantizer: files byte-identical to llama.cpp's llama-quantize, from a GPU.\n\n"
        "usage: gpuquant run \\[options] model-f32.gguf \\[model-quant.gguf] type \\[nthreads]\n\n"
        "       gpuquant inspect model.gguf      gpuquant types      gpuquant bench\n\n"
        "[bold]Examples[/]\n\n"
        "  gpuquant run model-f16.gguf Q4_K_M                       [dim]# -> model-f16-Q4_K_M.gguf[/]\n"
        "  gpuquant run model-f16.gguf out/model-IQ4_NL.gguf IQ4_NL --device 0 --stats\n"
        "  gpuquant run model-f16.gguf Q4_K_M --imatrix imatrix.gguf --json report.json\n"
        "  gpuquant run model-f16.gguf Q4_K_M --dry-run             [dim]# sizes only, writes nothing[/]\n"
        "  gpuquant inspect model-Q4_K_M.gguf\n"
        "  gpuquant types\n"
        "  gpuquant bench --types Q4_0,Q4_K,IQ4_NL"
    ),
)
err = Console(stderr=True, highlight=False)

EXIT_ERROR = 1
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every cleanup path runs."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


@contextlib.contextmanager
def _signals():
    """SIGINT -> KeyboardInterrupt and SIGTERM -> Terminated in the main thread, so the temporary file is
    removed; the previous handlers come back afterwards."""
    old = signal.signal(signal.SIGTERM, _on_sigterm), signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])


def _fail(msg: str, code: int = EXIT_ERROR) -> None:
    err.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"gpuquant {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    pass


# ---------------------------------------------------------------------------------------------- run


def _write_json(path: Path, text: str) -> bool:
    """Write a ``--json`` report to ``path`` (``-``: stdout); True when it went to stdout."""
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return True
    try:
        path.write_text(text + "\n")
    except OSError as e:
        _fail(f"--json: cannot write {str(path)!r}: {e.strerror}")
    return False


def _read_tensor_type_file(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError as e:
        _fail(f"--tensor-type-file: cannot read {str(path)!r}: {e.strerror}")
    return []


def _split_tensor_type(spec: str) -> tuple[str, str]:
    name, sep, t = spec.partition("=")
    if not sep or not name or not t:
        _fail(f"--tensor-type: expected TENSOR_PATTERN=TYPE (e.g. attn_q=q8_0), got {spec!r}")
    return name, t


def _parse_prune(spec: str | None) -> list[int]:
    from . import mixes

    if not spec:
        return []
    try:
        return mixes.parse_prune_layers(spec)
    except ValueError as e:
        _fail(f"--prune-layers: {e} in {spec!r}")
    return []


def parse_positional(args: list[str], type_opt: str | None,
                     type_optional: bool = False) -> tuple[Optional[str], Optional[str], Optional[int]]:
    """llama-quantize's ``model [model-quant.gguf] type [nthreads]`` after the model: (output, type, threads).

    As in quantize.cpp, the word after the model is the type if it parses as one, else the output file.
    With ``type_optional`` (a size-planner run) the type may be left out: a lone word that is not a type is
    the output file.
    """
    from . import mixes

    def is_type(s: str) -> bool:  # one ftype, or a comma-separated list of them (several outputs)
        try:
            for part in s.split(","):
                mixes.parse_ftype(part.strip())
            return True
        except ValueError:
            return False

    rest = list(args)
    out = None
    if type_optional and type_opt is None and (not rest or (not is_type(rest[0]) and len(rest) == 1)):
        return (rest[0] if rest else None), None, None
    if type_opt is not None:
        t = type_opt
        if rest and not rest[0].isdigit():
            out = rest.pop(0)
    elif not rest:
        _fail("missing the quantization type: gpuquant run MODEL [OUTPUT] TYPE [NTHREADS] (or --type TYPE); "
              "`gpuquant types` lists them")
    elif is_type(rest[0]):
        t = rest.pop(0)
    elif len(rest) >= 2:
        out, t = rest.pop(0), rest.pop(0)
    else:
        _fail(f"invalid quantization type {rest[0]!r}; `gpuquant types` lists them")
    threads = None
    if rest:
        n = rest.pop(0)
        if not n.isdigit() or int(n) <= 0:
            _fail(f"nthreads: expected a positive number, got {n!r}")
        threads = int(n)
    if rest:
        _fail(f"unexpected arguments {' '.join(rest)!r}: usage is MODEL [OUTPUT] TYPE [NTHREADS]")
    return out, t, threads


RUN_HELP = """Quantize MODEL, like [bold]llama-quantize[/] with the same arguments and options.

usage: gpuquant run \\[options] model-f32.gguf \\[model-quant.gguf] type \\[nthreads]

The output is byte-identical to llama-quantize's. It is written to a hidden temporary file beside the
destination (.NAME.gpuquant-partial-PID) and renamed when complete: an error, Ctrl-C or SIGTERM leaves
nothing behind, and the input is never modified. Progress goes to stderr (plain lines when it is not a
terminal); the closing tables go to stdout.

[bold]Examples[/]

  gpuquant run model-f16.gguf Q4_K_M
  gpuquant run model-f16.gguf model-Q4_K_M.gguf Q4_K_M 8
  gpuquant run model-f16.gguf -t IQ4_NL -o model-IQ4_NL.gguf --device 0 --stats --json report.json
  gpuquant run model-f16.gguf Q4_K_M --imatrix imatrix.gguf --tensor-type attn_v=q8_0
  gpuquant run model-00001-of-00003.gguf Q4_K_M --keep-split
  gpuquant run model-f16.gguf --type Q4_K_M,Q6_K,IQ4_XS -o 'out/{{stem}}-{{type}}.gguf'   [dim]# one read, 3 files[/]
  gpuquant run model-f16.gguf Q8_0,Q4_0 --resume        [dim]# continues an interrupted run[/]
  gpuquant run model-f16.gguf Q4_K --dry-run

[bold]Allowed quantization types[/] (ids and descriptions: gpuquant types)

  {types}
"""


def _type_list() -> str:
    from . import mixes

    names = [f.name for f in mixes.FTYPES]
    return "\n  ".join(", ".join(names[i:i + 10]) for i in range(0, len(names), 10))


@app.command(help=RUN_HELP.format(types=_type_list()), no_args_is_help=True)
def run(
    model: Path = typer.Argument(..., metavar="MODEL", help="input GGUF model (F32/F16/BF16; quantized with "
                                 "--allow-requantize); the first file of a split model"),
    args: Optional[List[str]] = typer.Argument(None, metavar="[OUTPUT] TYPE [NTHREADS]",
                                               help="as llama-quantize: output file, ftype (see `gpuquant types`), threads"),
    type: Optional[str] = typer.Option(None, "--type", "-t", help="ftype: Q4_K_M, IQ4_NL, Q8_0, ... (instead of the positional TYPE); a comma-separated list makes one output per type from one read"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="output file; {stem} and {type} are filled in (needed with several types) \\[default: <input-stem>-<TYPE>.gguf beside the input]"),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu (numpy), emulated (kernels on the CPU), or a GPU index"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads \\[default: all cores]"),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="allow requantizing tensors that have already been quantized (WARNING: can severely reduce quality compared to quantizing from 16 or 32 bit)"),
    leave_output_tensor: bool = typer.Option(False, "--leave-output-tensor", help="leave output.weight un(re)quantized"),
    pure: bool = typer.Option(False, "--pure", help="disable k-quant mixtures and quantize all tensors to the same type"),
    imatrix: Optional[str] = typer.Option(None, "--imatrix", help="importance matrix file (GGUF or legacy .dat) for quant optimizations"),
    include_weights: List[str] = typer.Option([], "--include-weights", help="use the importance matrix for this/these tensor(s)"),
    exclude_weights: List[str] = typer.Option([], "--exclude-weights", help="do not use the importance matrix for this/these tensor(s)"),
    output_tensor_type: Optional[str] = typer.Option(None, "--output-tensor-type", help="ggml type for output.weight"),
    token_embedding_type: Optional[str] = typer.Option(None, "--token-embedding-type", help="ggml type for the token embeddings"),
    tensor_type: List[str] = typer.Option([], "--tensor-type", help="TENSOR_PATTERN=TYPE, repeatable (e.g. attn_q=q8_0)"),
    tensor_type_file: Optional[Path] = typer.Option(None, "--tensor-type-file", help="file of TENSOR_PATTERN=TYPE entries"),
    prune_layers: Optional[str] = typer.Option(None, "--prune-layers", help="comma-separated layer numbers to prune (WARNING: advanced)"),
    keep_split: bool = typer.Option(False, "--keep-split", help="write the output in the same shards as the input"),
    override_kv: List[str] = typer.Option([], "--override-kv", help="KEY=TYPE:VALUE metadata override, repeatable"),
    max_buffer_size: Optional[int] = typer.Option(None, "--max-buffer-size", help="MiB of rows per slab \\[default: from device memory]"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show every tensor's type and the final size, write nothing"),
    force: bool = typer.Option(False, "--force", "-f", help="overwrite an existing output file (with --resume: start over a partial output made differently)"),
    resume: bool = typer.Option(False, "--resume", help="keep a partial output and a journal beside each output, and continue it where an interrupted run stopped (docs/outputs.md)"),
    stats: bool = typer.Option(False, "--stats", help="measure each tensor's error vs the source (RMSE, max abs, cosine), worst first"),
    profile: bool = typer.Option(False, "--profile", help="print the pipeline stage table even with --quiet"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress and no tables, only errors and the summary line"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the report as JSON to this file ('-': stdout, tables go to stderr)"),
    target_bpw: Optional[float] = typer.Option(None, "--target-bpw", help="size planner: choose every tensor's type for at most this many bits per weight (as llama.cpp reports them); TYPE becomes optional (docs/planner.md)"),
    target_size: Optional[str] = typer.Option(None, "--target-size", help="size planner: the whole output file at most this size (3.5GiB, 800MB, bytes)"),
    candidates: Optional[str] = typer.Option(None, "--candidates", help="size planner: comma-separated types to choose from \\[default: K and IQ types of about 2-8 bpw]"),
    save_plan: Optional[Path] = typer.Option(None, "--save-plan", help="size planner: write the plan as a --tensor-type-file (for gpuquant and llama-quantize)"),
    measure_rows: Optional[int] = typer.Option(None, "--measure-rows", help="size planner: rows measured per tensor \\[default: all]"),
) -> None:
    planning = target_bpw is not None or target_size is not None
    if not planning and (candidates or save_plan or measure_rows):
        _fail("--candidates, --save-plan and --measure-rows need --target-bpw or --target-size")
    out_pos, qtype, pos_threads = parse_positional(args or [], type, type_optional=planning)
    if planning and (resume or "," in (qtype or "") or "{" in str(out_pos or output or "")):
        _fail("--target-bpw / --target-size plan one output: not with --resume, several types or an output pattern")
    if out_pos is not None and output is not None:
        _fail(f"output given twice: {out_pos!r} and --output {str(output)!r}")
    if pos_threads is not None and threads is not None:
        _fail("nthreads given twice: positional and --threads")
    if include_weights and exclude_weights:
        _fail("--include-weights and --exclude-weights cannot be used together")
    if threads is not None and threads <= 0:
        _fail(f"--threads: must be a positive number, got {threads}")
    if max_buffer_size is not None and max_buffer_size <= 0:
        _fail(f"--max-buffer-size: must be a positive number of MiB, got {max_buffer_size}")
    if stats and dry_run:
        _fail("--stats measures the written file: it cannot be used with --dry-run")
    specs = list(tensor_type) + (_read_tensor_type_file(tensor_type_file) if tensor_type_file else [])
    from .config import QuantizeConfig

    cfg = QuantizeConfig(
        ftype=qtype, allow_requantize=allow_requantize, leave_output_tensor=leave_output_tensor, pure=pure,
        imatrix=imatrix, include_weights=include_weights, exclude_weights=exclude_weights,
        output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type,
        tensor_types=[_split_tensor_type(s) for s in specs], override_kv=override_kv,
        prune_layers=_parse_prune(prune_layers), keep_split=keep_split, dry_run=dry_run, device=device,
        threads=pos_threads or threads, slab_bytes=None if max_buffer_size is None else max_buffer_size << 20,
        force=force, target_bpw=target_bpw, target_size=target_size, candidates=candidates,
        save_plan=None if save_plan is None else str(save_plan), measure_rows=measure_rows, resume=resume)
    dest = Path(out_pos) if out_pos is not None else output
    json_stdout = json_out is not None and str(json_out) == "-"
    if resume or "," in (qtype or "") or "{" in str(dest or ""):
        _run_many(model, dest, cfg, stats, quiet, profile, json_out)
        return
    result, measured = _run_job(model, dest, cfg, stats, quiet)
    _print_report(result, measured, err if json_stdout else Console(highlight=False), quiet, profile)
    if json_out is not None:
        from . import report as rep

        _write_json(json_out, rep.to_json(result, measured))


def _run_job(model: Path, dest: Optional[Path], cfg, stats: bool, quiet: bool):
    """Quantize with progress on stderr (then ``--stats``); every expected failure ends in ``_fail``."""
    from . import api, report as rep
    from .gguf_writer import OutputError

    with _signals():
        view = rep.make_progress(err, quiet)
        result = None
        try:
            view.start()
            try:
                result = api.quantize_file(model, dest, cfg, progress=view, on_plan=view.plan,
                                           on_measure=_measure_view(quiet) if cfg.target_bpw is not None
                                           or cfg.target_size is not None else None)
                view.finish()
            finally:
                view.stop()
            measured = _measure(result, quiet) if stats and result.output is not None else None
        except (KeyboardInterrupt, Terminated) as e:
            code = EXIT_SIGINT if isinstance(e, KeyboardInterrupt) else EXIT_SIGTERM
            what = "interrupted" if code == EXIT_SIGINT else "terminated"
            if result is None:
                err.print(f"[bold red]{what}:[/] no output was written (the temporary file was removed)")
            else:
                err.print(f"[bold red]{what}:[/] while measuring --stats; {escape(str(result.output))} is complete")
            raise typer.Exit(code)
        except (api.UsageError, api.GGUFError, api.QuantizeError, api.DeviceError, OutputError) as e:
            _fail(str(e))
        except ImportError as e:  # a backend whose module or library is missing
            _fail(f"--device {cfg.device}: the backend for this device is not available ({e}); "
                  f"use --device cpu or --device emulated")
        except OSError as e:
            _fail(f"{e.filename or model}: {e.strerror or e}")
        except (ValueError, RuntimeError) as e:
            _fail(str(e))
    return result, measured


def _run_many(model: Path, dest: Optional[Path], cfg, stats: bool, quiet: bool, profile: bool,
              json_out: Optional[Path]) -> None:
    """Several types from one read (``--type A,B,...``) and ``--resume`` runs: each output's result, the
    failed ones named with their reason; exit code 1 when any output failed."""
    from . import report as rep

    json_stdout = json_out is not None and str(json_out) == "-"
    out = err if json_stdout else Console(highlight=False)
    job = _run_outputs(model, dest, cfg, quiet)
    measured = {}
    if stats:
        for k, r in enumerate(job.reports):
            if r.error is None and r.output is not None:
                measured[k] = _measure(r, quiet)
    if len(job.reports) == 1 and not job.failed:
        r = job.reports[0]
        r.notes = job.notes + r.notes
        _print_report(r, measured.get(0), out, quiet, profile)
    else:
        _print_job(job, out, quiet, profile)
    if json_out is not None:
        _write_json(json_out, rep.job_json(job, measured) if len(job.reports) > 1 else
                    rep.to_json(job.reports[0], measured.get(0)))
    for r in job.failed:
        err.print(f"[bold red]error:[/] output {escape(r.ftype)} ({escape(str(r.output))}) failed: {escape(r.error)}",
                  soft_wrap=True)
    if job.failed:
        ok = len(job.reports) - len(job.failed)
        err.print(f"{len(job.failed)} of {len(job.reports)} outputs failed ({', '.join(r.ftype for r in job.failed)}); "
                  f"{ok} written", soft_wrap=True)
        raise typer.Exit(EXIT_ERROR)


def _run_outputs(model: Path, dest: Optional[Path], cfg, quiet: bool):
    """``outputs.quantize_files`` with progress for the whole job; failures of the job end in ``_fail``."""
    from . import api, outputs, report as rep
    from .gguf_writer import OutputError

    with _signals():
        view = rep.make_progress(err, quiet)
        try:
            view.start()
            try:
                job = outputs.quantize_files(model, dest, cfg, progress=view, on_plan=view.plan)
                view.finish()
            finally:
                view.stop()
        except (KeyboardInterrupt, Terminated) as e:
            code = EXIT_SIGINT if isinstance(e, KeyboardInterrupt) else EXIT_SIGTERM
            what = "interrupted" if code == EXIT_SIGINT else "terminated"
            kept = ("the partial outputs are kept: run the same command with --resume to continue"
                    if cfg.resume else "no output was written (the temporary files were removed)")
            err.print(f"[bold red]{what}:[/] {kept}")
            raise typer.Exit(code)
        except (api.UsageError, api.GGUFError, api.QuantizeError, api.DeviceError, OutputError) as e:
            _fail(str(e))
        except ImportError as e:
            _fail(f"--device {cfg.device}: the backend for this device is not available ({e}); "
                  f"use --device cpu or --device emulated")
        except OSError as e:
            _fail(f"{e.filename or model}: {e.strerror or e}")
        except (ValueError, RuntimeError) as e:
            _fail(str(e))
    return job


def _print_job(job, out: Console, quiet: bool, profile: bool) -> None:
    from . import report as rep

    if job.device == "dry-run":
        out.file.write(rep.job_plan_text(job) + "\n")
    notes = job.notes + [f"{r.ftype}: {n}" for r in job.reports for n in r.notes]
    for note in [] if quiet else notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if not quiet:
        out.print(rep.outputs_table(job))
    first = job.reports[0]
    if (profile or not quiet) and job.times is not None:
        out.print(rep.stage_table(first))
        out.print(rep.overlap_line(first), soft_wrap=True)
        out.print(rep.output_profile_table(job))
    for r in job.reports:
        if r.error is None:
            dest = "dry run" if r.output is None else str(r.output)
            out.print(f"{escape(dest)}: {rep.summary_line(r)}", soft_wrap=True)


def _print_report(result, measured, out: Console, quiet: bool, profile: bool) -> None:
    """The closing tables on ``out`` (stdout, or stderr when the JSON goes to stdout), notes on stderr."""
    from . import report as rep

    if result.size_plan is not None and (result.output is None or not quiet):
        from . import planner

        out.file.write(planner.plan_text(result.size_plan) + "\n")
    elif result.output is None:
        out.file.write(rep.plan_text(result.tensors) + "\n")
    for note in [] if quiet else result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if not quiet:
        out.print(rep.type_table(result))
    if (profile or not quiet) and result.times is not None:
        out.print(rep.stage_table(result))
        out.print(rep.overlap_line(result), soft_wrap=True)
    if measured is not None and not quiet:
        out.print(rep.stats_table(measured))
    if result.n_fallback:
        err.print(f"[yellow]warning:[/] {result.n_fallback} of {len(result.tensors)} tensor(s) required fallback quantization")
    dest = "dry run" if result.output is None else str(result.output)
    out.print(f"{escape(dest)}: {rep.summary_line(result)}", soft_wrap=True)


def _measure_view(quiet: bool):
    """Progress of the planner's measuring pass on stderr: one line per tensor and type when not a terminal,
    at most one every 2 s."""
    import time

    last = [0.0]
    t0 = time.perf_counter()

    def show(label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if quiet or (now - last[0] < 2.0 and done < total):
            return
        last[0] = now
        eta = (now - t0) * (total - done) / done if done else 0.0
        err.print(f"[dim]measuring {100.0 * done / max(1, total):5.1f}%  {escape(label)}  "
                  f"{now - t0:.0f} s, about {eta:.0f} s left[/]", soft_wrap=True)

    return show


def _measure(result, quiet: bool):
    from . import report as rep, stats as st

    view = rep.make_progress(err, quiet)
    if isinstance(view, rep.RichProgress):
        view.progress.update(view.task, description="measuring error")
    rename = {r.name: r.source_name for r in result.tensors if r.source_name and r.source_name != r.name}
    view.start()
    try:
        return st.compute_stats(result.input, result.output, rename=rename,
                                progress=view if isinstance(view, rep.RichProgress) else None)
    finally:
        view.stop()


# ---------------------------------------------------------------------------------------------- types


@app.command(help="""List the quantization types (ftypes) with their bits per weight, as llama-quantize lists them.

[bold]bpw[/] is the base tensor type's bits per weight (8 x block bytes / block size); the k-quant mixes
(_S, _M, _L) keep some tensors at higher precision, so whole files come out a little larger.

[bold]Example[/]

  gpuquant types
""")
def types() -> None:
    from rich.table import Table

    from . import mixes, quants
    from .quants import QUANT_SIZES

    t = Table(title="quantization types")
    for col in ("id", "name", "base type", "bpw", "description", "implemented"):
        t.add_column(col, justify="right" if col in ("id", "bpw") else "left")
    for f in mixes.FTYPES:
        try:
            base = mixes.default_type(f.ftype)
        except ValueError:
            base = None
        sizes = QUANT_SIZES.get(base) if base is not None else None
        bpw = f"{8.0 * sizes[1] / sizes[0]:.4g}" if sizes else "?"
        try:
            quants.get(base)
            ok = "yes"
        except (quants.UnsupportedType, KeyError, ValueError, TypeError):
            ok = "no"
        if f.name == "COPY":
            bpw, ok = "-", "yes"
        t.add_row("" if f.name == "COPY" else str(int(f.ftype)), f.name, getattr(base, "name", "-"), bpw,
                  f.desc.strip(), ok)
    Console().print(t)


# ---------------------------------------------------------------------------------------------- inspect


@app.command(help="""Show a GGUF model: metadata summary, tensor table (name, shape, type, size) and totals.

Works on split models (pass any -0000N-of-0000M.gguf file of a split model: all splits are read) and on
gpuquant's and llama-quantize's outputs alike.

[bold]Examples[/]

  gpuquant inspect model-Q4_K_M.gguf
  gpuquant inspect model-00001-of-00003.gguf --no-tensors
  gpuquant inspect model.gguf --json - | jq .totals
""", no_args_is_help=True)
def inspect(
    model: Path = typer.Argument(..., metavar="MODEL", help="GGUF file (any split of a split model)"),
    tensors: bool = typer.Option(True, "--tensors/--no-tensors", help="list every tensor"),
    all_metadata: bool = typer.Option(False, "--all", "-a", help="show every metadata key (long arrays summarized)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the summary as JSON to this file ('-': stdout)"),
) -> None:
    from . import inspect_cmd
    from .gguf_io import GGUFError

    try:
        info = inspect_cmd.inspect_model(model)
    except GGUFError as e:
        _fail(str(e))
    if json_out is not None and _write_json(json_out, inspect_cmd.to_json(info)):
        return
    inspect_cmd.show(info, Console(highlight=False), tensors=tensors, all_metadata=all_metadata)


# ---------------------------------------------------------------------------------------------- bench


@app.command(help="""Throughput of every quant type on every available backend, on synthetic tensors.

Each backend's output is first checked byte for byte against the numpy reference (and against llama.cpp's
ggml_quantize_chunk when llama-cpp-python is installed: the [bold]llama.cpp[/] column); then the median of
warm runs is reported in GB/s of float32 input. Types a backend cannot do show '-'.

[bold]Examples[/]

  gpuquant bench
  gpuquant bench --types Q4_0,Q4_K,IQ4_NL --rows 4096 --cols 4096 --json bench.json
  gpuquant bench --devices cpu,emulated,0
""")
def bench(
    types_: Optional[str] = typer.Option(None, "--types", help="comma-separated ggml types \\[default: all implemented]"),
    devices: Optional[str] = typer.Option(None, "--devices", help="comma-separated backends \\[default: every one available]"),
    rows: int = typer.Option(1024, "--rows", help="rows of the synthetic tensor"),
    cols: int = typer.Option(4096, "--cols", help="row length (a multiple of 256 for the k-quants)"),
    repeat: int = typer.Option(3, "--repeat", help="timed runs per cell (the median is shown)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the CPU backends"),
    imatrix: bool = typer.Option(False, "--imatrix", help="quantize with (synthetic) importance weights"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the results as JSON to this file ('-': stdout)"),
) -> None:
    from . import bench_cmd

    if rows <= 0 or cols <= 0 or repeat <= 0:
        _fail(f"--rows, --cols and --repeat must be positive, got {rows}, {cols}, {repeat}")
    try:
        result = bench_cmd.run_bench(types_, devices, rows, cols, repeat, threads, imatrix,
                                     log=lambda m: err.print(f"[dim]{escape(m)}[/]", soft_wrap=True))
    except ValueError as e:
        _fail(str(e))
    if json_out is not None and _write_json(json_out, bench_cmd.to_json(result)):
        return
    Console(highlight=False).print(bench_cmd.table(result))
    if result.mismatches:
        _fail("; ".join(result.mismatches))


# ---------------------------------------------------------------------------------------------- kernels


@app.command(help="""Write the PTX of every CUDA kernel family, as the CUDA device compiles it, with each
compile's log (ptxas' register/spill report). No GPU is needed, only libnvrtc (pip install 'gpuquant\\[cuda13]').

[bold]Examples[/]

  gpuquant kernels --ptx ptx/
  gpuquant kernels --ptx ptx-blackwell/ --arch sm_120
""")
def kernels(
    ptx: Path = typer.Option(..., "--ptx", help="folder to write <family>.ptx and <family>.log into"),
    arch: str = typer.Option("sm_90", "--arch", help="GPU architecture: sm_XX (or compute_XX for PTX only)"),
) -> None:
    from . import kernels_cmd
    from .backends import DeviceError

    try:
        rows = kernels_cmd.write_ptx(ptx, arch)
    except (DeviceError, OSError) as e:
        _fail(str(e))
    Console(highlight=False).print(kernels_cmd.table(rows))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]")
        sys.exit(EXIT_SIGINT)


if __name__ == "__main__":
    main()
