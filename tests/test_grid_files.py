"""Whole files for the ten grid-type mixes (IQ1_*, IQ2_*, IQ3_*): SHA256 identical to llama_model_quantize on
the synthetic llama and MoE models (and, `extended`, SmolLM2) with an importance matrix and without, on the
numpy and the emulated devices; without one, where llama-quantize refuses (``tensor_requires_imatrix``), both
sides refuse before writing anything.

The ftypes of a family are those whose default type (``mixes.default_type``) the family's module registers.
"""
from __future__ import annotations

import pytest

from gpuquant.api import UsageError, quantize_file
from gpuquant.mixes import F, default_type, ftype_name
from gpuquant.quants import registered
from tests.oracle import requires_oracle
from tests.oracle_files import assert_same, ftype_id, oracle_quantize_file, oracle_with_imatrix, write_imatrix


def family_ftypes(family: str) -> list[str]:
    """The llama ftypes whose default tensor type belongs to ``family`` (gpuquant/quants/<family>.py)."""
    out = []
    for f in F:
        try:
            t = default_type(f)
        except (KeyError, ValueError):
            continue
        cls = registered().get(t)
        if cls is not None and cls.family == family:
            out.append(ftype_name(f))
    return out


def check_with_imatrix(src, tmp_path, ftype, device, imatrix_fmt="gguf", **opts):
    ours, ref = tmp_path / f"ours-{device}.gguf", tmp_path / "ref.gguf"
    im = write_imatrix(src, tmp_path / f"imatrix.{imatrix_fmt}", imatrix_fmt)
    quantize_file(src, ours, ftype, device=device, threads=2, imatrix=im, **opts)
    oracle_with_imatrix(src, ref, ftype, im)
    assert_same(ours, ref)


def check_grid_file(src, tmp_path, ftype, device, imatrix: bool, **opts):
    """With an imatrix: ours == llama-quantize's file. Without: the same, or (a mix with tensors that
    ``tensor_requires_imatrix``) both refuse, and nothing is written."""
    if imatrix:
        check_with_imatrix(src, tmp_path, ftype, device, **opts)
        return
    ours, ref = tmp_path / f"ours-{device}.gguf", tmp_path / "ref.gguf"
    try:
        quantize_file(src, ours, ftype, device=device, threads=2, **opts)
    except UsageError as e:
        assert "requires an importance matrix" in str(e), e
        assert not ours.exists()
        with pytest.raises(RuntimeError):
            oracle_quantize_file(src, ref, ftype_id(ftype))
        return
    oracle_quantize_file(src, ref, ftype_id(ftype))
    assert_same(ours, ref)


# ------------------------------------------------------------------------------------------ IQ2

IQ2_FTYPES = family_ftypes("iq2")


def test_iq2_ftypes_are_the_four_mixes():
    assert sorted(IQ2_FTYPES) == ["IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS"]


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", IQ2_FTYPES)
def test_llama_iq2_mixes_with_imatrix(ftype, device, llama_f16, tmp_path):
    check_with_imatrix(llama_f16, tmp_path, ftype, device)


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", IQ2_FTYPES)
def test_moe_iq2_mixes_with_imatrix(ftype, device, moe_f16, tmp_path):
    check_with_imatrix(moe_f16, tmp_path, ftype, device, imatrix_fmt="dat", slab_bytes=96 << 10)


@requires_oracle
@pytest.mark.parametrize("ftype", IQ2_FTYPES)
def test_iq2_mixes_are_refused_without_imatrix_by_both(ftype, llama_f16, tmp_path):
    out = tmp_path / "o.gguf"
    for device in ("cpu", "emulated"):
        with pytest.raises(UsageError, match="requires an importance matrix"):
            quantize_file(llama_f16, out, ftype, device=device)
        assert not out.exists()
    with pytest.raises(RuntimeError):
        oracle_quantize_file(llama_f16, tmp_path / "r.gguf", ftype_id(ftype))


# ------------------------------------------------------------------------------------------ IQ3

IQ3_FTYPES = family_ftypes("iq3")


def test_iq3_ftypes_are_the_four_mixes():
    assert sorted(IQ3_FTYPES) == ["IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS"]


@requires_oracle
@pytest.mark.parametrize("imatrix", [False, True])
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("model", ["llama", "moe"])
@pytest.mark.parametrize("ftype", IQ3_FTYPES)
def test_iq3_files(ftype, model, device, imatrix, llama_f16, moe_f16, tmp_path):
    src = llama_f16 if model == "llama" else moe_f16
    opts = {"slab_bytes": 96 << 10} if model == "moe" else {}
    check_grid_file(src, tmp_path, ftype, device, imatrix, **opts)


# ------------------------------------------------------------------------------------------ IQ1

IQ1_FTYPES = family_ftypes("iq1")


def test_iq1_ftypes_are_the_two_mixes():
    assert sorted(IQ1_FTYPES) == ["IQ1_M", "IQ1_S"]


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", IQ1_FTYPES)
def test_llama_iq1_mixes_with_imatrix(ftype, device, llama_f16, tmp_path):
    check_with_imatrix(llama_f16, tmp_path, ftype, device)


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", IQ1_FTYPES)
def test_moe_iq1_mixes_with_imatrix(ftype, device, moe_f16, tmp_path):
    check_with_imatrix(moe_f16, tmp_path, ftype, device, imatrix_fmt="dat", slab_bytes=96 << 10)


@requires_oracle
@pytest.mark.parametrize("ftype", IQ1_FTYPES)
def test_iq1_mixes_are_refused_without_imatrix_by_both(ftype, llama_f16, tmp_path):
    check_grid_file(llama_f16, tmp_path, ftype, "emulated", imatrix=False)


# ------------------------------------------------------------------------------------------ SmolLM2

@requires_oracle
@pytest.mark.extended  # ~1-2 minutes per ftype for both quantizers on 2 cores
@pytest.mark.parametrize("imatrix", [True, False])
@pytest.mark.parametrize("ftype", IQ1_FTYPES + IQ2_FTYPES + IQ3_FTYPES)
def test_smollm2_grid_mixes(ftype, imatrix, smollm2_f16, tmp_path):
    check_grid_file(smollm2_f16, tmp_path, ftype, "emulated", imatrix)
