"""The command line: llama-quantize's usage, progress forms, closing tables, --json, --stats, types, bench, help.

Most tests run the typer app in-process (CliRunner); the ones about a real process (plain progress lines
on a pipe, the ``python -m gpuquant`` entry point) use a subprocess.
"""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from gpuquant import report as rep
from gpuquant.api import TensorReport
from gpuquant.cli import app
from gpuquant.gguf_io import read_model
from gpuquant.quants import GGMLQuantizationType as T
from tests.oracle import available as oracle_available
from tests.synthetic import write_llama

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def gpuquant(*args, cwd=None):
    env = dict(os.environ, COLUMNS="200", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "gpuquant", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or str(ROOT), env=env, timeout=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("cli") / "tiny-f16.gguf", n_layer=2)


def no_partial_files(directory):
    return [p.name for p in directory.iterdir() if "gpuquant-partial" in p.name]


# ---------------------------------------------------------------------------------------------- usage


def test_dry_run_lists_every_tensor_and_writes_nothing(model, tmp_path):
    out = tmp_path / "out.gguf"
    r = cli("run", model, "--type", "Q4_0", "-o", out, "--dry-run", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    for t in read_model(model).tensors:
        assert t.name in r.stdout
    assert "Q4_0" in r.stdout and "dry run:" in r.stdout
    assert not out.exists()


def test_positional_type_writes_default_name_beside_input(model, tmp_path):
    src = tmp_path / "m.gguf"
    src.write_bytes(model.read_bytes())
    r = cli("run", src, "q8_0", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "m-Q8_0.gguf"
    assert out.exists() and read_model(out).tensors[2].type == T.Q8_0
    assert src.read_bytes() == model.read_bytes()  # input untouched


def test_positional_output_type_and_threads_like_llama_quantize(model, tmp_path):
    out = tmp_path / "custom.gguf"
    r = cli("run", model, out, "Q4_0", "2", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert out.exists() and f"{out}:" in r.stdout and "as Q4_0" in r.stdout
    ref = tmp_path / "ref.gguf"
    assert cli("run", model, "-t", "Q4_0", "-o", ref, "--device", "cpu", "--quiet").exit_code == 0
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("args,needle", [
    (["Q9_Z"], "invalid quantization type 'Q9_Z'"),
    (["out.gguf", "Q9_Z"], "Q9_Z"),
    (["out.gguf", "Q4_0", "many"], "nthreads: expected a positive number, got 'many'"),
    (["out.gguf", "Q4_0", "2", "extra"], "unexpected arguments 'extra'"),
    ([], "missing the quantization type"),
    (["out.gguf", "Q4_0", "-o", "other.gguf"], "output given twice"),
    (["Q4_0", "--max-buffer-size", "0"], "--max-buffer-size: must be a positive number"),
    (["Q4_0", "--tensor-type", "attn_q"], "--tensor-type: expected TENSOR_PATTERN=TYPE"),
    (["Q4_0", "--stats", "--dry-run"], "--stats measures the written file"),
])
def test_usage_errors_name_the_argument(model, tmp_path, args, needle):
    r = CliRunner().invoke(app, ["run", str(model), *args, "--device", "cpu"], env={"COLUMNS": "200"})
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("error:") and needle in r.stderr and "Traceback" not in r.stderr
    assert not no_partial_files(model.parent) and not (model.parent / "out.gguf").exists()


def test_requantize_needs_the_flag(model, tmp_path):
    q = tmp_path / "q8.gguf"
    assert cli("run", model, q, "Q8_0", "--device", "cpu", "--quiet").exit_code == 0
    out = tmp_path / "q4.gguf"
    r = cli("run", q, out, "Q4_0", "--device", "cpu")
    assert r.exit_code == 1
    assert "requantizing from type Q8_0 is disabled" in r.stderr and "--allow-requantize" in r.stderr
    assert not out.exists() and not no_partial_files(tmp_path)
    r = cli("run", q, out, "Q4_0", "--device", "cpu", "--allow-requantize", "--quiet")
    assert r.exit_code == 0, r.stderr


# ---------------------------------------------------------------------------------------------- output


def test_closing_tables_and_json_report(model, tmp_path):
    out, js = tmp_path / "out.gguf", tmp_path / "report.json"
    r = cli("run", model, out, "Q4_K_M", "--device", "cpu", "--json", js)
    assert r.exit_code == 0, r.stderr
    for needle in ("by output type", "bits/weight", "pipeline stages on cpu", "share of wall", "overlap achieved",
                   "kernel", "write"):
        assert needle in r.stdout, needle
    doc = json.loads(js.read_text())
    m = read_model(out)
    assert doc["output"] == str(out) and doc["ftype"] == "Q4_K_M" and doc["device"] == "cpu"
    assert [t["name"] for t in doc["tensors"]] == [t.name for t in m.tensors]
    assert [t["to"] for t in doc["tensors"]] == [t.type.name for t in m.tensors]
    assert doc["output_bytes"] == sum(t.nbytes for t in m.tensors)
    assert sum(t["tensors"] for t in doc["types"]) == len(m.tensors)
    q4k = next(t for t in doc["types"] if t["type"] == "Q4_K")
    assert q4k["bpw"] == 4.5 and q4k["output_bytes"] == sum(t.nbytes for t in m.tensors if t.type == T.Q4_K)
    # the numpy device computes in the staging buffers (zero copy): no h2d/d2h stages
    assert [s["stage"] for s in doc["stages"]] == ["read", "validate", "kernel", "write"]
    ov = doc["overlap"]
    assert ov["bottleneck"] in ("read", "kernel", "write") and 0 < ov["efficiency"] <= 1.0 + 1e-9
    assert math.isclose(ov["busy_seconds"], sum(s["seconds"] for s in doc["stages"]))
    assert doc["stats"] is None


def test_json_to_stdout_is_pure_json(model, tmp_path):
    r = cli("run", model, tmp_path / "o.gguf", "Q8_0", "--device", "cpu", "--json", "-")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)  # tables went to stderr
    assert doc["ftype"] == "Q8_0" and "by output type" in r.stderr


def test_quiet_prints_only_the_summary(model, tmp_path):
    r = cli("run", model, tmp_path / "o.gguf", "Q8_0", "--device", "cpu", "--quiet")
    assert r.exit_code == 0
    assert r.stdout.count("\n") == 1 and "MiB" in r.stdout and r.stderr == ""


def _expected_stats(src: Path, out: Path, name: str) -> tuple[float, float, float]:
    a = next(t for t in gguf.GGUFReader(str(src)).tensors if t.name == name)
    b = next(t for t in gguf.GGUFReader(str(out)).tensors if t.name == name)
    x = gguf.quants.dequantize(a.data, a.tensor_type).astype(np.float64).ravel()
    y = gguf.quants.dequantize(b.data, b.tensor_type).astype(np.float64).ravel()
    d = y - x
    return math.sqrt(np.mean(d * d)), float(np.abs(d).max()), float(x @ y / math.sqrt((x @ x) * (y @ y)))


def test_stats_measure_the_written_file_worst_first(model, tmp_path):
    out, js = tmp_path / "out.gguf", tmp_path / "r.json"
    r = cli("run", model, out, "Q4_0", "--device", "cpu", "--stats", "--json", js)
    assert r.exit_code == 0, r.stderr
    assert "quantization error vs source (worst first" in r.stdout
    stats = json.loads(js.read_text())["stats"]
    src_types = {t.name: t.type for t in read_model(model).tensors}
    quantized = [t.name for t in read_model(out).tensors if t.type != src_types[t.name]]
    assert sorted(s["name"] for s in stats) == sorted(quantized)
    assert [s["cosine"] for s in stats] == sorted(s["cosine"] for s in stats)
    for s in stats[:1] + [x for x in stats if x["name"] == "output.weight"]:
        rmse, max_abs, cos = _expected_stats(model, out, s["name"])
        assert math.isclose(s["rmse"], rmse, rel_tol=1e-9)
        assert s["max_abs_error"] == pytest.approx(max_abs, rel=1e-12)
        assert math.isclose(s["cosine"], cos, rel_tol=1e-9)
        assert s["src_type"] in ("F16", "F32") and s["dst_type"] in ("Q4_0", "Q6_K")
    assert 0.98 < stats[0]["cosine"] < 1.0  # Q4_0 of gaussian weights


def test_plain_progress_lines_when_not_a_terminal(model, tmp_path):
    out = tmp_path / "out.gguf"
    r = gpuquant("run", model, out, "Q8_0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[")]
    n = len(read_model(model).tensors)
    assert len(lines) == n and lines[-1].startswith(f"[{n}/{n}] ")
    assert any("] blk.0.attn_q.weight [256 x 256] F16 -> Q8_0, 0.12 MiB -> 0.07 MiB |" in ln for ln in lines)
    assert "MiB/s, ETA" in lines[-1]
    assert "by output type" in r.stdout


def test_rich_progress_counts_tensors_and_bytes():
    buf = io.StringIO()
    view = rep.RichProgress(Console(file=buf, force_terminal=True, width=200))
    reports = [TensorReport(f"t{i}", (32, 2), T.F32, T.Q8_0, 256, 68, 64) for i in range(3)]
    view.plan(reports)
    view.start()
    for i, done in enumerate((256, 512, 768)):
        view(f"t{i}", done, 768)
    assert view.n_done == 2 and view.current == "t2"
    view.finish()
    view.stop()
    task = view.progress.tasks[0]
    assert view.n_done == 3 and task.completed == 768 and task.total == 768
    assert task.fields["tensors"] == "3/3 tensors"
    view(f"t0", 256, 768)  # an out-of-memory retry starts over
    assert view.n_done == 0 and view.current == "t0"


def test_quiet_and_plain_progress_forms():
    assert type(rep.make_progress(Console(file=io.StringIO()), quiet=True)) is rep.RunProgress
    assert isinstance(rep.make_progress(Console(file=io.StringIO()), quiet=False), rep.PlainProgress)
    assert isinstance(rep.make_progress(Console(file=io.StringIO(), force_terminal=True), quiet=False),
                      rep.RichProgress)


# ---------------------------------------------------------------------------------------------- types, bench, help


def test_types_lists_bits_per_weight(tmp_path):
    r = cli("types")
    assert r.exit_code == 0
    rows = {ln.split("│")[2].strip(): [c.strip() for c in ln.split("│")[1:-1]] for ln in r.stdout.splitlines()
            if ln.count("│") >= 6}
    assert rows["Q4_K_M"][:4] == ["15", "Q4_K_M", "Q4_K", "4.5"]
    assert rows["Q8_0"][3] == "8.5" and rows["IQ4_XS"][3] == "4.25" and rows["F16"][3] == "16"
    assert rows["Q4_0"][5] == "yes" and rows["COPY"][0] == ""


def test_bench_checks_then_times(tmp_path):
    r = cli("bench", "--types", "Q4_0,Q8_0", "--devices", "cpu", "--rows", "8", "--cols", "256", "--repeat", "1",
            "--json", "-")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mismatches"] == [] and set(doc["results"]) == {"Q4_0", "Q8_0"}
    assert doc["results"]["Q4_0"]["cpu"]["GB/s"] > 0
    if oracle_available():
        assert doc["reference"] == "llama.cpp" and doc["results"]["Q8_0"]["llama.cpp"]["GB/s"] > 0
    r = cli("bench", "--types", "Q4_K", "--devices", "cpu", "--rows", "2", "--cols", "96", "--repeat", "1")
    assert r.exit_code == 0 and "Q4_K" in r.stdout  # 96 is not a multiple of 256: shown as '-'


def test_bench_unknown_type_is_a_usage_error():
    r = cli("bench", "--types", "Q4_0,Q9_9")
    assert r.exit_code == 1 and "--types" in r.stderr and "Q9_9" in r.stderr


@pytest.mark.parametrize("cmd,needles", [
    ([], ["usage: gpuquant run [options] model-f32.gguf [model-quant.gguf] type [nthreads]", "Examples",
          "gpuquant inspect", "gpuquant bench"]),
    (["run"], ["usage: gpuquant run [options]", "--allow-requantize", "--imatrix", "--keep-split", "--stats",
               "Allowed quantization types", "Q4_K_M", "Examples"]),
    (["inspect"], ["gpuquant inspect model-Q4_K_M.gguf", "split"]),
    (["bench"], ["gpuquant bench --types", "GB/s"]),
    (["types"], ["gpuquant types", "bits per weight"]),
])
def test_help_reads_like_llama_quantize_with_examples(cmd, needles):
    r = cli(*cmd, "--help")
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    for n in needles:
        assert " ".join(n.split()) in text, n


def test_entry_point_runs(model, tmp_path):
    r = gpuquant("--version")
    assert r.returncode == 0 and r.stdout.startswith("gpuquant ")


def test_keep_split_with_stats_and_inspect(model, tmp_path):
    from tests.synthetic import write_splits

    (tmp_path / "in").mkdir()
    shards = write_splits(model, tmp_path / "in" / "m.gguf", 8)
    assert len(shards) == 3
    out = tmp_path / "q.gguf"
    r = cli("run", shards[0], out, "Q8_0", "--keep-split", "--stats", "--device", "cpu", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    outs = [tmp_path / f"q-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert all(p.exists() for p in outs) and not out.exists()
    stats = json.loads((tmp_path / "r.json").read_text())["stats"]
    assert len(stats) == sum(t.type == T.Q8_0 for t in read_model(outs[0]).tensors)  # every split measured
    r = cli("inspect", outs[1], "--json", "-")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["files"]) == 3


def test_imatrix_file_name_is_stored_as_typed(model, tmp_path):
    """llama-quantize writes the --imatrix argument verbatim into quantize.imatrix.file."""
    from gpuquant.gguf_io import read_model
    from tests.oracle_files import write_imatrix

    write_imatrix(model, tmp_path / "im.gguf", "gguf")
    r = gpuquant("run", model, "-o", "o.gguf", "--type", "Q4_0", "--imatrix", "./im.gguf", "--device", "cpu",
                 "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = read_model(tmp_path / "o.gguf")
    assert m.kv("quantize.imatrix.file") == "./im.gguf"
    assert m.kv("quantize.imatrix.dataset") == "synthetic.txt"
    assert m.kv("quantize.imatrix.chunks_count") == 12


def test_auto_device_without_gpu_says_so_once(model, tmp_path):
    r = gpuquant("run", model, "--type", "Q8_0", "-o", tmp_path / "o.gguf")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("no usable GPU") == 1 and "running on the CPU" in r.stderr
    r = gpuquant("run", model, "--type", "Q8_0", "-o", tmp_path / "o.gguf", "--force", "--quiet")
    assert r.returncode == 0 and "no usable GPU" not in r.stderr
