"""Whole files: gpuquant's output is byte-identical (SHA256) to llama-quantize's for every ftype of the
foundation, on a synthetic llama model and on the F16 form of the embedded SmolLM2-135M."""
from __future__ import annotations

import pytest

from gpuquant import mixes
from gpuquant.api import quantize_file
from tests.oracle import requires_oracle
from tests.oracle_files import first_difference, oracle_quantize_file, sha256
from tests.synthetic import write_llama

FOUNDATION_FTYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"]


def ftype_id(name: str) -> int:
    return int(mixes.parse_ftype(name).ftype)


@pytest.fixture(scope="module")
def llama_f16(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("synth") / "llama-f16.gguf")


def assert_same(ours, ref):
    assert sha256(ours) == sha256(ref), first_difference(ours, ref)


@requires_oracle
@pytest.mark.parametrize("ftype", FOUNDATION_FTYPES)
def test_synthetic_llama_matches_llama_quantize(ftype, llama_f16, tmp_path):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(llama_f16, ours, ftype, device="cpu", threads=2)
    oracle_quantize_file(llama_f16, ref, ftype_id(ftype))
    assert_same(ours, ref)


@requires_oracle
@pytest.mark.parametrize("ftype", ["Q4_0", "IQ4_NL"])
def test_synthetic_llama_pure_and_small_slabs(ftype, llama_f16, tmp_path):
    """--pure, and slabs far smaller than a tensor: the output must not depend on slab boundaries."""
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(llama_f16, ours, ftype, device="cpu", threads=2, pure=True, slab_bytes=64 << 10)
    oracle_quantize_file(llama_f16, ref, ftype_id(ftype), pure=True)
    assert_same(ours, ref)


@requires_oracle
@pytest.mark.slow
@pytest.mark.parametrize("ftype", FOUNDATION_FTYPES)
def test_smollm2_f16_matches_llama_quantize(ftype, smollm2_f16, tmp_path):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(smollm2_f16, ours, ftype, device="cpu")
    oracle_quantize_file(smollm2_f16, ref, ftype_id(ftype))
    assert_same(ours, ref)


@requires_oracle
@pytest.mark.slow
def test_smollm2_requantize_to_f16_matches(smollm2_q41, tmp_path):
    """The embedded model is Q4_1: dequantizing it must match ggml's to_float exactly."""
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(smollm2_q41, ours, "F16", device="cpu", allow_requantize=True)
    oracle_quantize_file(smollm2_q41, ref, ftype_id("F16"), allow_requantize=True)
    assert_same(ours, ref)


# ------------------------------------------------------------------------------------- importance matrices

def _write_imatrix(model_path, path, fmt: str, seed: int = 3):
    """An imatrix of both llama.cpp formats for every matrix of ``model_path`` (per-expert counts for 3-D)."""
    import gguf
    import numpy as np

    from gpuquant.imatrix import write_gguf_imatrix, write_legacy_imatrix

    rng = np.random.default_rng(seed)
    entries, counts = {}, {}
    for t in gguf.GGUFReader(str(model_path)).tensors:
        ne = [int(x) for x in t.shape]
        if len(ne) < 2 or max(ne[1:]) <= 1:
            continue
        n_mat = ne[2] if len(ne) > 2 else 1
        entries[t.name] = (rng.random(ne[0] * n_mat, dtype=np.float32) * np.float32(40)).astype(np.float32)
        counts[t.name] = [int(c) for c in rng.integers(1, 300, n_mat)] if fmt == "gguf" else [7]
    writer = write_gguf_imatrix if fmt == "gguf" else write_legacy_imatrix
    writer(path, entries, counts, datasets=["synthetic.txt"], chunk_count=12)
    return path


def _oracle_with_imatrix(src, dst, ftype: str, imatrix_path, **kw):
    """What llama-quantize --imatrix does: load, normalize, pass data and the quantize.imatrix.* keys."""
    from gpuquant.imatrix import prepare
    from tests.oracle_files import KV_INT, KV_STR

    imat = prepare(imatrix_path)
    kvs = [(k, KV_STR if tag == "str" else KV_INT, v) for k, tag, v in imat.kv_overrides(str(imatrix_path))]
    oracle_quantize_file(src, dst, ftype_id(ftype), imatrix=imat.entries, kv_overrides=kvs, **kw)


@requires_oracle
@pytest.mark.parametrize("ftype,fmt", [("Q4_0", "gguf"), ("Q5_1", "dat"), ("IQ4_NL", "gguf"), ("IQ4_XS", "dat")])
def test_synthetic_llama_with_imatrix(ftype, fmt, llama_f16, tmp_path):
    imatrix = _write_imatrix(llama_f16, tmp_path / f"imatrix.{fmt}", fmt)
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(llama_f16, ours, ftype, device="cpu", threads=2, imatrix=imatrix)
    _oracle_with_imatrix(llama_f16, ref, ftype, imatrix)
    assert_same(ours, ref)


@pytest.fixture(scope="module")
def moe_f16(tmp_path_factory):
    from tests.synthetic import write_qwen3moe

    return write_qwen3moe(tmp_path_factory.mktemp("moe") / "qwen3moe-f16.gguf")


@requires_oracle
@pytest.mark.parametrize("ftype", ["Q4_0", "IQ4_NL"])
def test_moe_with_per_expert_imatrix_and_small_slabs(ftype, moe_f16, tmp_path):
    """3-D expert tensors, each expert with its own importance weights; slabs cut inside and across experts."""
    imatrix = _write_imatrix(moe_f16, tmp_path / "imatrix.gguf", "gguf")
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(moe_f16, ours, ftype, device="cpu", threads=2, imatrix=imatrix, slab_bytes=48 << 10)
    _oracle_with_imatrix(moe_f16, ref, ftype, imatrix)
    assert_same(ours, ref)


@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_1", "IQ4_XS", "BF16"])
def test_emulated_device_writes_the_same_file_as_numpy(ftype, moe_f16, tmp_path):
    """The kernels run on the host produce the same whole file as the numpy reference (MoE, imatrix)."""
    imatrix = _write_imatrix(moe_f16, tmp_path / "imatrix.dat", "dat")
    a, b = tmp_path / "cpu.gguf", tmp_path / "emu.gguf"
    quantize_file(moe_f16, a, ftype, device="cpu", threads=2, imatrix=imatrix)
    quantize_file(moe_f16, b, ftype, device="emulated", threads=2, imatrix=imatrix, slab_bytes=40 << 10)
    assert_same(b, a)


@requires_oracle
@pytest.mark.parametrize("ftype", FOUNDATION_FTYPES)
def test_synthetic_moe_matches_llama_quantize(ftype, moe_f16, tmp_path):
    """qwen3moe with 3-D expert tensors: every foundation ftype, slabs cut inside and across experts."""
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(moe_f16, ours, ftype, device="cpu", threads=2, slab_bytes=80 << 10)
    oracle_quantize_file(moe_f16, ref, ftype_id(ftype))
    assert_same(ours, ref)
