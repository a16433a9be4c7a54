"""Whole files for llama-quantize's K-quant mixes and options: SHA256 identical to llama_model_quantize on
synthetic llama and MoE models and on SmolLM2-135M F16, with and without an importance matrix, on the numpy
and the emulated (kernels on the host) devices.

``GPUQUANT_FULL_MATRIX=1`` runs every (model, ftype, imatrix, device) combination; by default the SmolLM2
rows run on the emulated device only (the numpy path is covered on the synthetic models, and emulated ==
numpy is checked tensor by tensor in test_conformance.py).
"""
from __future__ import annotations

import os

import pytest

from gpuquant.api import UsageError, quantize_file
from tests.oracle import requires_oracle
from tests.oracle_files import (KV_FLOAT, KV_INT, KV_STR, assert_same, ftype_id, oracle_quantize_file,
                                oracle_with_imatrix, write_imatrix)

# Q2_K_S needs an importance matrix (tensor_requires_imatrix): it is in the imatrix rows only
K_FTYPES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]
FULL = os.environ.get("GPUQUANT_FULL_MATRIX") == "1"


def check(src, tmp_path, ftype, device, imatrix_fmt=None, **opts):
    ours, ref = tmp_path / f"ours-{device}.gguf", tmp_path / "ref.gguf"
    if imatrix_fmt:
        im = write_imatrix(src, tmp_path / f"imatrix.{imatrix_fmt}", imatrix_fmt)
        quantize_file(src, ours, ftype, device=device, threads=2, imatrix=im, **opts)
        oracle_with_imatrix(src, ref, ftype, im)
    else:
        quantize_file(src, ours, ftype, device=device, threads=2, **opts)
        oracle_quantize_file(src, ref, ftype_id(ftype))
    assert_same(ours, ref)


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", K_FTYPES)
def test_llama_k_mixes(ftype, device, llama_f16, tmp_path):
    check(llama_f16, tmp_path, ftype, device)


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", ["Q2_K", "Q2_K_S", "Q3_K_M", "Q4_K_M", "Q5_K_S", "Q6_K", "IQ4_XS"])
def test_llama_k_mixes_with_imatrix(ftype, device, llama_f16, tmp_path):
    check(llama_f16, tmp_path, ftype, device, imatrix_fmt="gguf")


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", ["Q2_K", "Q3_K_S", "Q4_K_M", "Q5_K_M", "Q6_K"])
@pytest.mark.parametrize("imatrix_fmt", [None, "dat"])
def test_moe_k_mixes(ftype, device, imatrix_fmt, moe_f16, tmp_path):
    check(moe_f16, tmp_path, ftype, device, imatrix_fmt=imatrix_fmt, slab_bytes=96 << 10)


SMOL = [(f, "emulated") for f in K_FTYPES] + [("Q4_K_M", "cpu")]
if FULL:
    SMOL = [(f, d) for f in K_FTYPES for d in ("cpu", "emulated")]


@requires_oracle
@pytest.mark.slow
@pytest.mark.parametrize("ftype,device", SMOL)
def test_smollm2_k_mixes(ftype, device, smollm2_f16, tmp_path):
    check(smollm2_f16, tmp_path, ftype, device)


@requires_oracle
@pytest.mark.slow
@pytest.mark.parametrize("ftype", ["Q2_K_S", "Q4_K_M", "IQ4_XS"] + (K_FTYPES if FULL else []))
def test_smollm2_k_mixes_with_imatrix(ftype, smollm2_f16, tmp_path):
    check(smollm2_f16, tmp_path, ftype, "emulated", imatrix_fmt="gguf")


# ------------------------------------------------------------------------------------------ options


@requires_oracle
def test_output_and_token_embedding_types_and_leave_output(llama_f16, tmp_path):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(llama_f16, ours, "Q4_K_M", device="cpu", output_tensor_type="q8_0", token_embedding_type="Q5_0")
    oracle_quantize_file(llama_f16, ref, ftype_id("Q4_K_M"), output_tensor_type=8, token_embedding_type=6)
    assert_same(ours, ref)
    quantize_file(llama_f16, ours, "Q5_K_S", device="cpu", leave_output_tensor=True, force=True)
    oracle_quantize_file(llama_f16, ref, ftype_id("Q5_K_S"), leave_output_tensor=True)
    assert_same(ours, ref)


@requires_oracle
def test_tensor_type_overrides_regex(llama_f16, tmp_path):
    specs = [("attn_q", "q8_0"), (r"blk\.[0-3]\.ffn_down", "Q6_K"), ("FFN_UP", "q5_1")]
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(llama_f16, ours, "Q4_K_M", device="cpu", tensor_types=specs)
    oracle_quantize_file(llama_f16, ref, ftype_id("Q4_K_M"),
                         tensor_types=[("attn_q", 8), (r"blk\.[0-3]\.ffn_down", 14), ("ffn_up", 7)])
    assert_same(ours, ref)


@requires_oracle
def test_override_kv_and_prune_layers(llama_f16, tmp_path):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(llama_f16, ours, "Q4_0", device="cpu", prune_layers=[1, 4],
                  override_kv=["general.name=str:pruned", "llama.rope.freq_base=float:20000", "x.count=int:-7",
                               "x.flag=bool:true"])
    oracle_quantize_file(llama_f16, ref, ftype_id("Q4_0"), prune_layers=[1, 4],
                         kv_overrides=[("general.name", KV_STR, "pruned"), ("llama.rope.freq_base", KV_FLOAT, 20000.0),
                                       ("x.count", KV_INT, -7), ("x.flag", 2, True)])
    assert_same(ours, ref)


def test_mix_needing_an_unimplemented_type_fails_before_writing(llama_f16, tmp_path, monkeypatch):
    from gpuquant import quants

    registry = dict(quants.registered())
    del registry[quants.T.Q4_K]
    monkeypatch.setattr(quants, "_REGISTRY", registry)
    out = tmp_path / "o.gguf"
    with pytest.raises(UsageError, match=r"no quantizer for Q4_K needed by \d+ tensor\(s\) \(token_embd\.weight, .*, \.\.\.\)"):
        quantize_file(llama_f16, out, "Q4_K_M", device="cpu")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("ftype", ["IQ2_XXS", "Q2_K_S"])
def test_mix_requiring_an_imatrix_is_refused_without_one(ftype, llama_f16, tmp_path):
    out = tmp_path / "o.gguf"
    with pytest.raises(UsageError, match="requires an importance matrix"):
        quantize_file(llama_f16, out, ftype, device="cpu")
    assert not out.exists()


@requires_oracle
def test_oracle_refuses_q2_k_s_without_imatrix_too(llama_f16, tmp_path):
    with pytest.raises(RuntimeError):
        oracle_quantize_file(llama_f16, tmp_path / "r.gguf", ftype_id("Q2_K_S"))


@requires_oracle
def test_tensor_type_file_via_cli(llama_f16, tmp_path):
    """--tensor-type-file: whitespace-separated NAME=TYPE entries, as llama-quantize reads them."""
    import subprocess
    import sys

    tt = tmp_path / "types.txt"
    tt.write_text("attn_q=q8_0\n  ffn_up=Q5_1 blk\\.[02]\\.attn_v=q6_k\n")
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    r = subprocess.run([sys.executable, "-m", "gpuquant", "run", str(llama_f16), str(ours), "Q4_K_S", "--device", "emulated",
                        "--tensor-type-file", str(tt), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    oracle_quantize_file(llama_f16, ref, ftype_id("Q4_K_S"),
                         tensor_types=[("attn_q", 8), ("ffn_up", 7), (r"blk\.[02]\.attn_v", 14)])
    assert_same(ours, ref)
