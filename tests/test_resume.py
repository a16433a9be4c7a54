"""``--resume``: runs killed anywhere (SIGKILL in a subprocess), partial files torn at random offsets,
changed inputs or options; the resumed output is byte-identical to an uninterrupted run and to llama-quantize."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuquant import resume as rs
from gpuquant.api import quantize_file
from gpuquant.cli import app
from gpuquant.outputs import quantize_files
from tests.oracle import requires_oracle
from tests.oracle_files import assert_same, ftype_id, oracle_quantize_file
from tests.synthetic import write_llama, write_splits

ROOT = Path(__file__).resolve().parents[1]
OPTS = {"device": "cpu", "threads": 1, "slab_bytes": 24 << 10}  # several slabs per large tensor


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("resume") / "tiny-f16.gguf", n_layer=2)


@pytest.fixture(scope="module")
def want(llama, tmp_path_factory):
    """Uninterrupted single-type runs, per type."""
    d = tmp_path_factory.mktemp("want")
    out = {}
    for t in ("Q4_K_M", "Q8_0", "Q6_K"):
        out[t] = d / f"{t}.gguf"
        quantize_file(llama, out[t], t, **OPTS)
    return out


def killed_run(point: str, n: int, src, dst, types: str, **options) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "tests.kill_run", point, str(n), str(src), str(dst), types,
                        json.dumps({**OPTS, **options})], capture_output=True, text=True, cwd=str(ROOT), env=env,
                       timeout=120)
    assert r.returncode == -signal.SIGKILL, f"the run was not killed at {point} #{n}: {r.returncode} {r.stderr[-2000:]}"
    return r


def partials(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if "gpuquant-" in p.name)


@pytest.mark.parametrize("point,n", [("header", 1), ("inside", 3), ("inside", 17), ("between", 1), ("between", 9),
                                     ("journal", 5), ("torn-journal", 12), ("before-rename", 1),
                                     ("after-rename", 1)])
def test_killed_anywhere_then_resumed_is_identical(llama, want, tmp_path, point, n):
    dst = tmp_path / "{type}.gguf"
    killed_run(point, n, llama, dst, "Q4_K_M")
    assert partials(tmp_path), "a killed --resume run keeps its partial output"
    job = quantize_files(llama, dst, "Q4_K_M", resume=True, **OPTS)
    assert job.reports[0].error is None
    assert_same(tmp_path / "Q4_K_M.gguf", want["Q4_K_M"])
    assert partials(tmp_path) == []
    if point in ("between", "journal", "torn-journal"):
        assert any("resumed after" in note for note in job.reports[0].notes), job.reports[0].notes


@pytest.mark.parametrize("point,n,expect", [("between", 20, "resumed after"),
                                            ("after-rename", 1, "complete and checked; skipped")])
def test_many_outputs_killed_resume_independently(llama, want, tmp_path, point, n, expect):
    dst = tmp_path / "{type}.gguf"
    killed_run(point, n, llama, dst, "Q4_K_M,Q8_0,Q6_K")
    job = quantize_files(llama, dst, "Q4_K_M,Q8_0,Q6_K", resume=True, **OPTS)
    notes = [n for r in job.reports for n in r.notes]
    assert any(expect in n for n in notes), notes
    assert not job.failed
    for t in ("Q4_K_M", "Q8_0", "Q6_K"):
        assert_same(tmp_path / f"{t}.gguf", want[t])
    assert partials(tmp_path) == []


def _interrupted(llama, dst, types, after_tensors: int, monkeypatch):
    """An in-process run stopped (as by Ctrl-C) after ``after_tensors`` durable tensors over all files."""
    real = rs.ResumeWriter.tensor_done
    count = [0]

    def tensor_done(self, index):
        real(self, index)
        count[0] += 1
        if count[0] == after_tensors:
            raise KeyboardInterrupt

    monkeypatch.setattr(rs.ResumeWriter, "tensor_done", tensor_done)
    with pytest.raises(KeyboardInterrupt):
        quantize_files(llama, dst, types, resume=True, **OPTS)
    monkeypatch.undo()


def test_torn_partial_files_resume_identical_or_restart(llama, want, tmp_path, monkeypatch):
    rng = np.random.default_rng(12)
    dst = tmp_path / "Q8_0.gguf"
    _interrupted(llama, dst, "Q8_0", 14, monkeypatch)
    partial = rs.partial_path(dst)
    data, journal = partial.read_bytes(), rs.journal_path(dst).read_bytes()
    cuts = sorted({int(c) for c in rng.integers(0, len(data), 8)} | {0, 7, len(data) - 1})
    restarted = 0
    for cut in cuts:
        partial.write_bytes(data[:cut])
        rs.journal_path(dst).write_bytes(journal)
        job = quantize_files(llama, dst, "Q8_0", resume=True, **OPTS)
        assert job.reports[0].error is None
        assert_same(dst, want["Q8_0"])
        restarted += any("started over" in n for n in job.reports[0].notes)
        dst.unlink()
    assert restarted >= 1  # the cuts inside the header
    # a flipped byte inside a journaled tensor: that tensor and the later ones are written again
    _interrupted(llama, dst, "Q8_0", 14, monkeypatch)
    flipped = bytearray(partial.read_bytes())
    flipped[len(flipped) - 100] ^= 0xFF
    partial.write_bytes(bytes(flipped))
    job = quantize_files(llama, dst, "Q8_0", resume=True, **OPTS)
    assert any("failed their checks" in n for n in job.reports[0].notes), job.reports[0].notes
    assert_same(dst, want["Q8_0"])


def test_changed_option_or_input_is_refused_with_the_reason(llama, want, tmp_path, monkeypatch):
    dst = tmp_path / "Q6_K.gguf"
    _interrupted(llama, dst, "Q6_K", 6, monkeypatch)
    job = quantize_files(llama, dst, "Q6_K", resume=True, pure=True, **OPTS)
    assert "options.pure: False then, True now" in job.reports[0].error and "--force" in job.reports[0].error
    assert rs.partial_path(dst).exists(), "a refused resume keeps the partial output"
    (tmp_path / "other").mkdir()
    changed = write_llama(tmp_path / "other" / "tiny-f16.gguf", n_layer=2, file_type=0)  # one header value differs
    err = quantize_files(changed, dst, "Q6_K", resume=True, **OPTS).reports[0].error
    assert "inputs[0].header_sha256" in err, err
    job = quantize_files(llama, dst, "Q6_K", resume=True, force=True, pure=True, **OPTS)
    assert job.reports[0].error is None and any("started over (--force)" in n for n in job.reports[0].notes)
    pure = tmp_path / "pure.gguf"
    quantize_file(llama, pure, "Q6_K", pure=True, **OPTS)
    assert_same(dst, pure)


@requires_oracle
def test_keep_split_resume_skips_finished_files(llama, tmp_path):
    (tmp_path / "in").mkdir()
    shards = write_splits(llama, tmp_path / "in" / "m.gguf", 8)
    dst = tmp_path / "q.gguf"
    killed_run("before-rename", 2, shards[0], dst, "Q4_K_M", keep_split=True)
    names = [f"q-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert (tmp_path / names[0]).exists() and not (tmp_path / names[1]).exists()
    job = quantize_files(shards[0], dst, "Q4_K_M", resume=True, keep_split=True, **OPTS)
    assert any(f"{names[0]}: complete and checked; skipped" in n for n in job.reports[0].notes), job.reports[0].notes
    (tmp_path / "ref").mkdir()
    oracle_quantize_file(shards[0], tmp_path / "ref" / "q", ftype_id("Q4_K_M"), keep_split=True)
    for name in names:
        assert_same(tmp_path / name, tmp_path / "ref" / name)
    assert partials(tmp_path) == []


def test_cli_sigterm_keeps_partial_and_resume_finishes(llama, want, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    out = tmp_path / "Q4_K_M.gguf"
    args = [sys.executable, "-m", "gpuquant", "run", str(llama), str(out), "Q4_K_M", "--device", "cpu",
            "--threads", "1", "--max-buffer-size", "1", "--resume"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    journal = rs.journal_path(out)
    for _ in range(600):  # until the first tensor is journaled
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        if p.poll() is not None:
            break
        import time

        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode in (0, 143), stderr  # 0: it finished before the signal
    if p.returncode == 143:
        assert "run the same command with --resume to continue" in stderr
        assert rs.partial_path(out).exists()
    r = CliRunner().invoke(app, args[3:], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stderr
    assert_same(out, want["Q4_K_M"])
    assert partials(tmp_path) == []


def test_without_resume_nothing_partial_is_left(llama, tmp_path, monkeypatch):
    from gpuquant import gguf_writer

    def boom(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_writer.StreamWriter, "pad", boom)
    with pytest.raises(KeyboardInterrupt):
        quantize_files(llama, tmp_path / "{type}.gguf", "Q8_0,Q4_0", **OPTS)
    assert partials(tmp_path) == [] and list(tmp_path.iterdir()) == []


@requires_oracle
def test_resumed_output_matches_llama_quantize(llama, tmp_path):
    dst = tmp_path / "{type}.gguf"
    killed_run("inside", 9, llama, dst, "Q5_K_M,IQ4_XS", device="emulated")
    quantize_files(llama, dst, "Q5_K_M,IQ4_XS", resume=True, **{**OPTS, "device": "emulated"})
    for t in ("Q5_K_M", "IQ4_XS"):
        oracle_quantize_file(llama, tmp_path / f"ref-{t}.gguf", ftype_id(t))
        assert_same(tmp_path / f"{t}.gguf", tmp_path / f"ref-{t}.gguf")


def test_changed_imatrix_is_refused(llama, tmp_path, monkeypatch):
    from tests.oracle_files import write_imatrix

    a = write_imatrix(llama, tmp_path / "a.gguf", "gguf", seed=1)
    dst = tmp_path / "IQ4_XS.gguf"
    real = rs.ResumeWriter.tensor_done

    def stop_after_three(self, index):
        real(self, index)
        if len(self.entries) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(rs.ResumeWriter, "tensor_done", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        quantize_files(llama, dst, "IQ4_XS", resume=True, imatrix=str(a), **OPTS)
    monkeypatch.undo()
    write_imatrix(llama, a, "gguf", seed=2)  # the same file name, other contents
    err = quantize_files(llama, dst, "IQ4_XS", resume=True, imatrix=str(a), **OPTS).reports[0].error
    assert err is not None and "imatrix_sha256" in err, err


def test_single_type_output_template(llama, want, tmp_path):
    r = CliRunner().invoke(app, ["run", str(llama), "--type", "Q8_0", "-o", str(tmp_path / "{stem}-{type}.gguf"),
                                 "--device", "cpu", "--threads", "1", "-q", "--max-buffer-size", "1"])
    assert r.exit_code == 0, r.stderr
    assert_same(tmp_path / "tiny-f16-Q8_0.gguf", want["Q8_0"])
