"""Whole files for the IQ1 mixes (ftypes IQ1_S, IQ1_M): SHA256 identical to llama_model_quantize on the
synthetic llama and MoE models with an importance matrix, on the numpy and the emulated devices.

The mixes also use IQ2/IQ3 and k-quant tensors; a tensor type whose kernels are not on this branch skips
the emulated case (named in the skip reason), never the numpy one.
"""
from __future__ import annotations

import re

import pytest

from gpuquant.api import UsageError, quantize_file
from gpuquant.quants import parse_type, registered
from tests.oracle import requires_oracle
from tests.oracle_files import assert_same, oracle_with_imatrix, write_imatrix

IQ1_FTYPES = ["IQ1_S", "IQ1_M"]


def check_iq1_with_imatrix(src, tmp_path, ftype, device, imatrix_fmt="gguf", **opts):
    """``ftype`` of ``src`` with a fresh imatrix on ``device``, against llama_model_quantize's file."""
    ours, ref = tmp_path / f"ours-{device}.gguf", tmp_path / "ref.gguf"
    im = write_imatrix(src, tmp_path / f"imatrix.{imatrix_fmt}", imatrix_fmt)
    try:
        quantize_file(src, ours, ftype, device=device, threads=2, imatrix=im, **opts)
    except UsageError as e:  # the mix uses a type of another family whose kernels are not here
        m = re.search(r"cannot quantize tensor .* to (\w+)$", str(e))
        if m is None or registered()[parse_type(m.group(1))].kernel is not None:
            raise
        pytest.skip(f"{ftype} on {device}: {m.group(1)} has no kernels on this branch ({e})")
    oracle_with_imatrix(src, ref, ftype, im)
    assert_same(ours, ref)


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", IQ1_FTYPES)
def test_llama_iq1_mixes_with_imatrix(ftype, device, llama_f16, tmp_path):
    check_iq1_with_imatrix(llama_f16, tmp_path, ftype, device)


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("ftype", IQ1_FTYPES)
def test_moe_iq1_mixes_with_imatrix(ftype, device, moe_f16, tmp_path):
    check_iq1_with_imatrix(moe_f16, tmp_path, ftype, device, imatrix_fmt="dat", slab_bytes=96 << 10)
