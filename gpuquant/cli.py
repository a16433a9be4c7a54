"""``gpuquant`` command line: llama-quantize's options, on a GPU, with rich progress and tables."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from . import api, mixes, report as rep

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=(
        "GPU-first GGUF quantizer, byte-identical to llama.cpp's llama-quantize.\n\n"
        "Examples:\n\n"
        "  gpuquant run model-f16.gguf --type Q4_K_M\n\n"
        "  gpuquant run model-f16.gguf --type IQ4_NL --device 0 --profile\n\n"
        "  gpuquant run model-f16.gguf -t Q4_K_M --imatrix imatrix.gguf -o model-Q4_K_M.gguf\n\n"
        "  gpuquant types"
    ),
)
err = Console(stderr=True, highlight=False)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every cleanup path runs."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError)


def _fail(msg: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {msg}", soft_wrap=True)
    raise typer.Exit(code)


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
    if not spec:
        return []
    try:
        return mixes.parse_prune_layers(spec)
    except ValueError as e:
        _fail(f"--prune-layers: {e} in {spec!r}")
    return []


@app.command()
def run(
    model: Path = typer.Argument(..., help="input GGUF model (F32/F16/BF16, or quantized with --allow-requantize)"),
    type: str = typer.Option(..., "--type", "-t", help="llama-quantize ftype: Q4_K_M, IQ4_NL, Q8_0, ... (see `gpuquant types`)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="output file [default: <input-stem>-<TYPE>.gguf beside the input]"),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu (numpy), emulated (kernels on the CPU), or a GPU index"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads [default: all cores]"),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="allow requantizing tensors that are already quantized"),
    leave_output_tensor: bool = typer.Option(False, "--leave-output-tensor", help="leave output.weight un(re)quantized"),
    pure: bool = typer.Option(False, "--pure", help="disable k-quant mixtures and quantize all tensors to the same type"),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="importance matrix file (GGUF or legacy .dat)"),
    include_weights: List[str] = typer.Option([], "--include-weights", help="use the importance matrix for this/these tensor(s)"),
    exclude_weights: List[str] = typer.Option([], "--exclude-weights", help="do not use the importance matrix for this/these tensor(s)"),
    output_tensor_type: Optional[str] = typer.Option(None, "--output-tensor-type", help="ggml type for output.weight"),
    token_embedding_type: Optional[str] = typer.Option(None, "--token-embedding-type", help="ggml type for the token embeddings"),
    tensor_type: List[str] = typer.Option([], "--tensor-type", help="TENSOR_PATTERN=TYPE, repeatable (e.g. attn_q=q8_0)"),
    tensor_type_file: Optional[Path] = typer.Option(None, "--tensor-type-file", help="file of TENSOR_PATTERN=TYPE entries"),
    prune_layers: Optional[str] = typer.Option(None, "--prune-layers", help="comma-separated layer numbers to prune"),
    override_kv: List[str] = typer.Option([], "--override-kv", help="KEY=TYPE:VALUE metadata override, repeatable"),
    max_buffer_size: Optional[int] = typer.Option(None, "--max-buffer-size", help="MiB of rows per slab (default: from device memory)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show every tensor's type and the final size, write nothing"),
    force: bool = typer.Option(False, "--force", "-f", help="overwrite an existing output file"),
    profile: bool = typer.Option(False, "--profile", help="print per-stage times and throughput"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress, only errors and the summary line"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the report as JSON to this file ('-' for stdout)"),
) -> None:
    """Quantize MODEL to --type, like `llama-quantize MODEL [OUT] TYPE [N_THREADS]`."""
    if include_weights and exclude_weights:
        _fail("--include-weights and --exclude-weights cannot be used together")
    if threads is not None and threads <= 0:
        _fail(f"--threads: must be a positive number, got {threads}")
    if max_buffer_size is not None and max_buffer_size <= 0:
        _fail(f"--max-buffer-size: must be a positive number of MiB, got {max_buffer_size}")
    specs = list(tensor_type) + (_read_tensor_type_file(tensor_type_file) if tensor_type_file else [])
    out = Console(highlight=False)
    interactive = out.is_terminal and not quiet
    signal.signal(signal.SIGTERM, _on_sigterm)

    progress = rep.make_progress(err) if interactive else None
    task = None

    def on_progress(name: str, done: int, total: int) -> None:
        nonlocal task
        if progress is None:
            return
        if task is None:
            task = progress.add_task("quantizing", total=total, tensor="")
        progress.update(task, completed=done, tensor=name)

    try:
        if progress:
            progress.start()
        result = api.quantize_file(
            model, output, type, device=device, threads=threads, allow_requantize=allow_requantize, pure=pure,
            leave_output_tensor=leave_output_tensor, output_tensor_type=output_tensor_type,
            token_embedding_type=token_embedding_type, tensor_types=[_split_tensor_type(s) for s in specs],
            imatrix=imatrix, include_weights=include_weights, exclude_weights=exclude_weights,
            override_kv=override_kv, prune_layers=_parse_prune(prune_layers), dry_run=dry_run, force=force,
            slab_bytes=None if max_buffer_size is None else max_buffer_size << 20, progress=on_progress,
        )
    except typer.Exit:
        raise
    except (KeyboardInterrupt, Terminated):
        if progress:
            progress.stop()
        err.print("[bold red]interrupted:[/] no output was written (temporary file removed)")
        raise typer.Exit(130)
    except EXPECTED_ERRORS as e:
        if progress:
            progress.stop()
        _fail(str(e))
    finally:
        if progress:
            progress.stop()
    if dry_run:
        out.print(rep.plan_table(result.tensors))
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}")
    if not quiet:
        out.print(rep.type_table(result))
    if profile and result.times is not None:
        out.print(rep.stage_table(result))
    if result.n_fallback:
        err.print(f"[yellow]warning:[/] {result.n_fallback} of {len(result.tensors)} tensor(s) required fallback quantization")
    dest = "dry run" if result.output is None else str(result.output)
    out.print(f"{dest}: {rep.summary_line(result)}")
    if json_out is not None:
        text = rep.to_json(result)
        if str(json_out) == "-":
            sys.stdout.write(text + "\n")
        else:
            json_out.write_text(text + "\n")


@app.command()
def types() -> None:
    """List the quantization types (ftypes) with their bits per weight, as llama-quantize prints them."""
    from rich.table import Table

    from . import quants

    t = Table(title="quantization types")
    for col in ("id", "name", "description", "implemented"):
        t.add_column(col)
    for f in mixes.FTYPES:
        try:
            quants.get(mixes.default_type(f.ftype))
            ok = "yes"
        except (quants.UnsupportedType, KeyError, ValueError):
            ok = "no"
        t.add_row("" if f.name == "COPY" else str(int(f.ftype)), f.name, f.desc, ok)
    Console().print(t)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
