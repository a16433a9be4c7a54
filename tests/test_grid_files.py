"""Whole files for the grid-type mixes: SHA256 identical to llama_model_quantize on the synthetic llama and
MoE models, with and without an importance matrix, on the numpy and the emulated devices.

The file types are derived from the registry and the mixes: those whose base type
(``llama_ftype_get_default_type``) belongs to the family under test. Where the mix needs an importance
matrix for some tensor (``tensor_requires_imatrix``) and none is given, llama-quantize refuses and so must
gpuquant; that case is checked as a refusal on both sides.
"""
from __future__ import annotations

import re

import pytest

from gpuquant import mixes
from gpuquant.api import UsageError, quantize_file
from gpuquant.quants import registered
from tests.oracle import requires_oracle
from tests.oracle_files import assert_same, ftype_id, oracle_quantize_file, oracle_with_imatrix, write_imatrix


def family_ftypes(family: str) -> list[str]:
    """The QUANT_OPTIONS names whose default tensor type is of ``family`` (first name of each ftype id)."""
    reg = registered()
    out: dict[int, str] = {}
    for opt in mixes.FTYPES:
        try:
            t = mixes.default_type(opt.ftype)
        except ValueError:
            continue
        if t in reg and reg[t].family == family:
            out.setdefault(int(opt.ftype), opt.name)
    return list(out.values())


IQ3_FTYPES = family_ftypes("iq3")


def test_iq3_ftypes_derived():
    assert sorted(IQ3_FTYPES) == ["IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS"]


def quantize_or_skip(src, ours, ftype, device, **opts):
    """quantize_file; skips (naming it) where the mix needs a type another family's kernels provide and
    this branch has none for (the emulated device cannot run it)."""
    try:
        quantize_file(src, ours, ftype, device=device, threads=2, **opts)
    except UsageError as e:
        m = re.search(r"cannot quantize tensor .* to (\w+)$", str(e))
        if m and all(c.kernel is None for t, c in registered().items() if t.name == m.group(1)):
            pytest.skip(f"the {ftype} mix uses {m.group(1)}, which has no kernels here")
        raise


def check_file(src, tmp_path, ftype, device, imatrix: bool, **opts):
    """Ours == llama-quantize's file, or both refuse a mix that needs an importance matrix."""
    ours, ref = tmp_path / f"ours-{device}.gguf", tmp_path / "ref.gguf"
    if imatrix:
        im = write_imatrix(src, tmp_path / "imatrix.gguf", "gguf")
        quantize_or_skip(src, ours, ftype, device, imatrix=im, **opts)
        oracle_with_imatrix(src, ref, ftype, im)
        assert_same(ours, ref)
        return
    try:
        quantize_or_skip(src, ours, ftype, device, **opts)
    except UsageError as e:
        assert "requires an importance matrix" in str(e)
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
    check_file(src, tmp_path, ftype, device, imatrix, **opts)
