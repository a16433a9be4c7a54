"""The command line: dry runs, refusals, clean errors and no partial output."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.synthetic import write_llama


def gpuquant(*args, cwd=None):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "gpuquant", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("cli") / "tiny-f16.gguf")


def no_partial_files(directory):
    return [p.name for p in directory.iterdir() if "gpuquant-partial" in p.name]


def test_dry_run_lists_every_tensor_and_writes_nothing(model, tmp_path):
    out = tmp_path / "out.gguf"
    r = gpuquant("run", model, "--type", "Q4_0", "-o", out, "--dry-run", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "token_embd.weight" in r.stdout and "Q4_0" in r.stdout
    assert "output_norm.weight" in r.stdout
    assert not out.exists()


def test_run_writes_default_name_beside_input(model, tmp_path):
    src = tmp_path / "m.gguf"
    src.write_bytes(model.read_bytes())
    r = gpuquant("run", src, "--type", "q8_0", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "m-Q8_0.gguf"
    assert out.exists() and out.stat().st_size > 0
    assert src.read_bytes() == model.read_bytes()  # input untouched


def test_refuses_to_overwrite_without_force(model, tmp_path):
    out = tmp_path / "exists.gguf"
    out.write_bytes(b"keep me")
    r = gpuquant("run", model, "--type", "Q4_0", "-o", out, "--device", "cpu")
    assert r.returncode != 0
    assert "already exists" in r.stderr and "--force" in r.stderr
    assert out.read_bytes() == b"keep me"
    r = gpuquant("run", model, "--type", "Q4_0", "-o", out, "--device", "cpu", "--force", "--quiet")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"GGUF"


def test_refuses_output_equal_to_input(model, tmp_path):
    src = tmp_path / "same.gguf"
    src.write_bytes(model.read_bytes())
    r = gpuquant("run", src, "--type", "Q4_0", "-o", src, "--device", "cpu", "--force")
    assert r.returncode != 0
    assert "input and output files are the same" in r.stderr
    assert src.read_bytes() == model.read_bytes()


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello, this is not a model")
    out = tmp_path / "out.gguf"
    r = gpuquant("run", bad, "--type", "Q4_0", "-o", out, "--device", "cpu")
    assert r.returncode != 0
    assert "not a GGUF file" in r.stderr and str(bad) in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not no_partial_files(tmp_path)


def test_unknown_type_names_the_value(model, tmp_path):
    r = gpuquant("run", model, "--type", "Q9_Z", "-o", tmp_path / "o.gguf", "--device", "cpu")
    assert r.returncode != 0
    assert "Q9_Z" in r.stderr and "Traceback" not in r.stderr


def test_requantize_needs_the_flag(model, tmp_path):
    q = tmp_path / "q8.gguf"
    assert gpuquant("run", model, "--type", "Q8_0", "-o", q, "--device", "cpu", "--quiet").returncode == 0
    out = tmp_path / "q4.gguf"
    r = gpuquant("run", q, "--type", "Q4_0", "-o", out, "--device", "cpu")
    assert r.returncode != 0
    assert "requantizing from type Q8_0 is disabled" in r.stderr and "--allow-requantize" in r.stderr
    assert not out.exists() and not no_partial_files(tmp_path)
    r = gpuquant("run", q, "--type", "Q4_0", "-o", out, "--device", "cpu", "--allow-requantize", "--quiet")
    assert r.returncode == 0, r.stderr
