"""gpuquant: a GPU-first GGUF quantizer, byte-identical to llama.cpp's llama-quantize."""
from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # the API is imported lazily so `import gpuquant.quants` stays light
    if name in ("quantize", "quantize_file"):
        from . import api

        return getattr(api, name)
    if name == "quantize_files":
        from . import outputs

        return outputs.quantize_files
    raise AttributeError(name)


__all__ = ["quantize", "quantize_file", "quantize_files", "__version__"]
