"""The gguf package's constants (``GGMLQuantizationType``, ``GGML_QUANT_SIZES``, ``GGUFValueType``), loaded
without importing the package.

``import gguf`` runs the package's ``__init__``, which also imports its reader, writer, quantizers, vocab
and metadata modules: about four times the cost of the one module gpuquant needs at start-up (a dry run must
stay well under a second). ``gguf/constants.py`` depends on the standard library only, so it is loaded from
the installed package's folder here. When ``gguf`` is already imported its own module is used.
"""
from __future__ import annotations

import importlib.util
import sys


def _load():
    mod = sys.modules.get("gguf.constants")
    if mod is not None:
        return mod
    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("gpuquant needs the gguf package (pip install gguf)")
    path = f"{spec.submodule_search_locations[0]}/constants.py"
    loaded = importlib.util.spec_from_file_location("gpuquant._gguf_constants", path)
    mod = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(mod)
    return mod


_c = _load()
GGMLQuantizationType = _c.GGMLQuantizationType
GGML_QUANT_SIZES = _c.GGML_QUANT_SIZES
GGUFValueType = _c.GGUFValueType

__all__ = ["GGMLQuantizationType", "GGML_QUANT_SIZES", "GGUFValueType"]
