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
