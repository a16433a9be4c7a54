"""Whole files for the grid-type mixes (IQ2_*, IQ3_*): SHA256 identical to llama_model_quantize on the
synthetic llama and MoE models with an importance matrix, on the numpy and the emulated devices, and the
refusal without one (llama-quantize's ``tensor_requires_imatrix``) by both sides.

The ftypes of a family are those whose default type (``mixes.default_type``) the family's module
registers; each family has its own test functions (one helper per family works on this file).
"""
from __future__ import annotations

import re

import pytest

from gpuquant.api import UsageError, quantize_file
from gpuquant.mixes import F, default_type, ftype_name
from gpuquant.quants import parse_type, registered
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
    try:
        quantize_file(src, ours, ftype, device=device, threads=2, imatrix=im, **opts)
    except UsageError as e:  # a mix may use a type of another family whose kernels are not written yet
        m = re.search(r"cannot quantize tensor .* to (\w+)$", str(e))
        if m is None or registered()[parse_type(m.group(1))].kernel is not None:
            raise
        pytest.skip(f"{ftype} on {device}: {m.group(1)} has no kernels yet ({e})")
    oracle_with_imatrix(src, ref, ftype, im)
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


def check_iq3_file(src, tmp_path, ftype, device, imatrix: bool, **opts):
    """With an imatrix: ours == llama-quantize's file. Without: the same, or (a mix with tensors that
    ``tensor_requires_imatrix``: IQ3_XXS, IQ3_XS) both refuse."""
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


@requires_oracle
@pytest.mark.parametrize("imatrix", [False, True])
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("model", ["llama", "moe"])
@pytest.mark.parametrize("ftype", IQ3_FTYPES)
def test_iq3_files(ftype, model, device, imatrix, llama_f16, moe_f16, tmp_path):
    src = llama_f16 if model == "llama" else moe_f16
    opts = {"slab_bytes": 96 << 10} if model == "moe" else {}
    check_iq3_file(src, tmp_path, ftype, device, imatrix, **opts)


@requires_oracle
@pytest.mark.extended  # ~1-2 minutes per ftype for both quantizers on 2 cores
@pytest.mark.parametrize("ftype", IQ3_FTYPES)
def test_smollm2_iq3_with_imatrix(ftype, smollm2_f16, tmp_path):
    check_with_imatrix(smollm2_f16, tmp_path, ftype, "emulated")
