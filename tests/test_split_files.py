"""Split GGUF input (``-00001-of-0000N.gguf``) and ``--keep-split`` output, byte-identical to llama-quantize."""
from __future__ import annotations

import pytest

from gpuquant.api import quantize_file
from gpuquant.gguf_io import read_model
from tests.oracle import requires_oracle
from tests.oracle_files import assert_same, ftype_id, oracle_quantize_file
from tests.synthetic import write_splits


@pytest.fixture(scope="module")
def split_llama(llama_f16, tmp_path_factory):
    shards = write_splits(llama_f16, tmp_path_factory.mktemp("split") / "llama.gguf", 40)
    assert len(shards) == 3
    return shards


def test_split_input_reads_every_shard(split_llama, llama_f16):
    m = read_model(split_llama[0])
    whole = read_model(llama_f16)
    assert [t.name for t in m.tensors] == [t.name for t in whole.tensors]
    assert {t.split for t in m.tensors} == {0, 1, 2}
    assert m.split_paths == split_llama


@requires_oracle
@pytest.mark.parametrize("ftype", ["Q4_0", "Q4_K_M"])
def test_split_input_to_one_file(ftype, split_llama, tmp_path):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(split_llama[0], ours, ftype, device="cpu")
    oracle_quantize_file(split_llama[0], ref, ftype_id(ftype))
    assert_same(ours, ref)


@requires_oracle
@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_K_M"])
def test_keep_split(ftype, split_llama, tmp_path):
    (tmp_path / "ours").mkdir()
    (tmp_path / "ref").mkdir()
    quantize_file(split_llama[0], tmp_path / "ours" / "q.gguf", ftype, device="cpu", keep_split=True)
    oracle_quantize_file(split_llama[0], tmp_path / "ref" / "q", ftype_id(ftype), keep_split=True)
    ours = sorted((tmp_path / "ours").iterdir())
    refs = sorted((tmp_path / "ref").iterdir())
    assert [p.name for p in ours] == [p.name for p in refs] == [f"q-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for a, b in zip(ours, refs):
        assert_same(a, b)
