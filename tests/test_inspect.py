"""``gpuquant inspect``: metadata summary, tensor table and totals, for single and split files."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from gpuquant.cli import app
from gpuquant.gguf_io import read_model
from tests.synthetic import write_llama


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("inspect") / "tiny-f16.gguf", n_layer=2)


def test_table_lists_every_tensor_and_the_summary(model):
    r = cli("inspect", model)
    assert r.exit_code == 0, r.stderr
    m = read_model(model)
    for t in m.tensors:
        assert t.name in r.stdout
    assert "general.architecture" in r.stdout and "'llama'" in r.stdout
    assert "1 (F16)" in r.stdout  # general.file_type with its name
    assert "288 tokens" in r.stdout
    assert "256 x 288" in r.stdout  # token_embd shape, ggml order
    assert f"{m.n_elements:,}" in r.stdout  # total parameters


def test_json_totals_match_the_file(model):
    r = cli("inspect", model, "--json", "-")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    reader = gguf.GGUFReader(str(model))
    assert [t["name"] for t in doc["tensors"]] == [t.name for t in reader.tensors]
    assert [t["offset"] for t in doc["tensors"]] == [int(t.data_offset) for t in reader.tensors]
    assert doc["totals"]["tensors"] == len(reader.tensors)
    assert doc["totals"]["bytes"] == sum(int(t.n_bytes) for t in reader.tensors)
    assert doc["totals"]["n_elements"] == sum(int(t.n_elements) for t in reader.tensors)
    by_type = doc["totals"]["by_type"]
    assert by_type["F16"]["tensors"] == sum(t.tensor_type.name == "F16" for t in reader.tensors)
    assert by_type["F32"]["bpw"] == 32.0 and by_type["F16"]["bpw"] == 16.0
    assert doc["metadata"]["tokenizer.ggml.tokens"]["length"] == 288
    assert doc["metadata"]["llama.block_count"] == {"type": "UINT32", "value": 2}
    assert doc["files"][0]["size"] == model.stat().st_size


def test_all_metadata_summarizes_arrays(model):
    r = cli("inspect", model, "--all", "--no-tensors")
    assert r.exit_code == 0, r.stderr
    assert "[288 x STRING: '<unk>', '<s>', '</s>'" in r.stdout
    assert "1e-05" in r.stdout  # float32 shown as the shortest float32 text
    assert "blk.0.attn_q.weight" not in r.stdout


@pytest.fixture()
def split_model(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "sp.gguf"), "llama", split_max_tensors=2)
    w.add_block_count(1)
    for i in range(5):
        w.add_tensor(f"blk.0.t{i}.weight", np.full((4, 32), i, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [tmp_path / f"sp-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_split_model_from_any_split(split_model, which):
    r = cli("inspect", split_model[which], "--json", "-")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [f["path"] for f in doc["files"]] == [str(p) for p in split_model]
    assert [t["split"] for t in doc["tensors"]] == [0, 0, 1, 1, 2]
    assert doc["totals"]["tensors"] == 5 and doc["totals"]["bytes"] == 5 * 4 * 32 * 4
    r = cli("inspect", split_model[which])
    assert "split 3/3" in r.stdout and "blk.0.t4.weight" in r.stdout


def test_missing_split_is_a_clear_error(split_model):
    split_model[2].unlink()
    r = cli("inspect", split_model[0])
    assert r.exit_code == 1 and r.stderr.startswith("error:")
    assert "split 3 of 3 is missing" in r.stderr and "Traceback" not in r.stderr


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 zip file")
    r = cli("inspect", p)
    assert r.exit_code == 1 and "not a GGUF file" in r.stderr and str(p) in r.stderr
