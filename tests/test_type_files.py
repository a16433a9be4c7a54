"""Whole files for the ftypes past the K-quants: SHA256 identical to llama_model_quantize.

The ternary, MXFP4_MOE and 1/2-bit ftypes (and NVFP4 chosen per tensor, as it is no preset) on the synthetic
llama and MoE models and on SmolLM2-135M F16, with and without an importance matrix, on the cpu and emulated
devices; llama-quantize's refusals (a row length no type of the mix divides, with no fallback) refused the
same way, before anything is written; and requantizing files of these types into a K-quant and Q8_0.

The SmolLM2 rows are marked ``slow`` (about 90 s together on 2 cores, the reference's runs included).
"""
from __future__ import annotations

import pytest

from gpuquant.api import UsageError, quantize_file
from tests.oracle import requires_oracle
from tests.oracle_files import assert_same, ftype_id, oracle_quantize_file, oracle_with_imatrix, write_imatrix
from tests.synthetic import write_llama

FTYPES = ["TQ1_0", "TQ2_0", "MXFP4_MOE", "Q2_0"]
NVFP4 = 40  # GGML_TYPE_NVFP4


def check(src, tmp_path, ftype, device, imatrix=False, **opts):
    ours, ref = tmp_path / f"ours-{device}.gguf", tmp_path / "ref.gguf"
    if imatrix:
        im = write_imatrix(src, tmp_path / "imatrix.gguf", "gguf")
        quantize_file(src, ours, ftype, device=device, threads=2, imatrix=im, **opts)
        oracle_with_imatrix(src, ref, ftype, im, **_oracle_opts(opts))
    else:
        quantize_file(src, ours, ftype, device=device, threads=2, **opts)
        oracle_quantize_file(src, ref, ftype_id(ftype), **_oracle_opts(opts))
    assert_same(ours, ref)
    return ours


def _oracle_opts(opts: dict) -> dict:
    out = {k: v for k, v in opts.items() if k in ("allow_requantize", "pure")}
    if "tensor_types" in opts:
        out["tensor_types"] = [(p, NVFP4 if t.lower() == "nvfp4" else int(t)) for p, t in opts["tensor_types"]]
    return out


@pytest.fixture(scope="module")
def llama_128(tmp_path_factory):
    """A llama whose every row length is a multiple of 128 (Q1_0 needs that: it has no fallback type)."""
    return write_llama(tmp_path_factory.mktemp("llama128") / "llama-128.gguf", n_ff=384, n_vocab=384)


@requires_oracle
@pytest.mark.parametrize("imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", FTYPES)
def test_llama(ftype, device, imatrix, llama_f16, tmp_path):
    check(llama_f16, tmp_path, ftype, device, imatrix)


@requires_oracle
@pytest.mark.parametrize("imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", FTYPES)
def test_moe(ftype, device, imatrix, moe_f16, tmp_path):
    check(moe_f16, tmp_path, ftype, device, imatrix, slab_bytes=96 << 10)


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_q1_0_where_every_row_fits(device, llama_128, tmp_path):
    check(llama_128, tmp_path, "Q1_0", device)
    check(llama_128, tmp_path / "", "Q1_0", device, imatrix=True, force=True)


@requires_oracle
def test_q1_0_refused_like_llama_quantize(llama_f16, tmp_path):
    """Row length 288 is no multiple of 128 and Q1_0 has no fallback type: both refuse, nothing is written."""
    out = tmp_path / "ours.gguf"
    with pytest.raises(UsageError, match=r"no tensor type fallback is defined for type q1_0 \(tensor blk\.0\."):
        quantize_file(llama_f16, out, "Q1_0", device="cpu")
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="failed"):
        oracle_quantize_file(llama_f16, tmp_path / "ref.gguf", ftype_id("Q1_0"))


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_nvfp4_per_tensor(device, llama_f16, moe_f16, tmp_path):
    """NVFP4 is no preset: chosen with --tensor-type for some tensors of a Q4_K_M mix."""
    check(llama_f16, tmp_path, "Q4_K_M", device, tensor_types=[("ffn_up", "nvfp4"), ("attn_q", "nvfp4")])
    check(moe_f16, tmp_path / "", "Q4_K_M", device, imatrix=True, force=True,
          tensor_types=[("ffn_gate_exps", "nvfp4")])


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", FTYPES + ["Q1_0"])
def test_requantize_into_k_quant_and_q8_0(ftype, device, llama_f16, llama_128, tmp_path):
    src = check(llama_128 if ftype == "Q1_0" else llama_f16, tmp_path, ftype, "cpu")
    for dst in ("Q4_K_M", "Q8_0"):
        d = tmp_path / dst
        d.mkdir()
        check(src, d, dst, device, allow_requantize=True)


@requires_oracle
@pytest.mark.slow
@pytest.mark.parametrize("imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("ftype", FTYPES)
def test_smollm2(ftype, imatrix, smollm2_f16, tmp_path):
    check(smollm2_f16, tmp_path, ftype, "emulated", imatrix)


@requires_oracle
@pytest.mark.slow
def test_smollm2_q1_0_refused(smollm2_f16, tmp_path):
    with pytest.raises(UsageError, match="no tensor type fallback is defined for type q1_0"):
        quantize_file(smollm2_f16, tmp_path / "o.gguf", "Q1_0", device="cpu")
