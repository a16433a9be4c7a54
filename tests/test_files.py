"""Whole files: gpuquant's output is byte-identical (SHA256) to llama-quantize's for every ftype of the
foundation, on a synthetic llama model and on the F16 form of the embedded SmolLM2-135M."""
from __future__ import annotations

import pytest

from gpuquant.api import quantize_file
from tests.oracle import requires_oracle
from tests.oracle_files import assert_same, ftype_id, oracle_quantize_file, oracle_with_imatrix, write_imatrix

FOUNDATION_FTYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"]


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

@requires_oracle
@pytest.mark.parametrize("ftype,fmt", [("Q4_0", "gguf"), ("Q5_1", "dat"), ("IQ4_NL", "gguf"), ("IQ4_XS", "dat")])
def test_synthetic_llama_with_imatrix(ftype, fmt, llama_f16, tmp_path):
    imatrix = write_imatrix(llama_f16, tmp_path / f"imatrix.{fmt}", fmt)
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(llama_f16, ours, ftype, device="cpu", threads=2, imatrix=imatrix)
    oracle_with_imatrix(llama_f16, ref, ftype, imatrix)
    assert_same(ours, ref)


@requires_oracle
@pytest.mark.parametrize("ftype", ["Q4_0", "IQ4_NL"])
def test_moe_with_per_expert_imatrix_and_small_slabs(ftype, moe_f16, tmp_path):
    """3-D expert tensors, each expert with its own importance weights; slabs cut inside and across experts."""
    imatrix = write_imatrix(moe_f16, tmp_path / "imatrix.gguf", "gguf")
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(moe_f16, ours, ftype, device="cpu", threads=2, imatrix=imatrix, slab_bytes=48 << 10)
    oracle_with_imatrix(moe_f16, ref, ftype, imatrix)
    assert_same(ours, ref)


@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_1", "IQ4_XS", "BF16"])
def test_emulated_device_writes_the_same_file_as_numpy(ftype, moe_f16, tmp_path):
    """The kernels run on the host produce the same whole file as the numpy reference (MoE, imatrix)."""
    imatrix = write_imatrix(moe_f16, tmp_path / "imatrix.dat", "dat")
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
