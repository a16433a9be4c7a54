"""Row validation as ``ggml_validate_row_data`` (ggml-quants.c): no NaN/Inf in floats or fp16 scales.

llama-quantize validates every source slab it reads (llama_model_loader::load_data_range with
check_tensors) and every quantized chunk it produces (llama_tensor_quantize_impl); gpuquant refuses at the
same places, but names the tensor and the first bad element or block. What is checked per type is declared
by the type itself (``QuantType.fp16_fields`` / ``first_invalid``).
"""
from __future__ import annotations

import numpy as np

from . import quants
from .quants import GGMLQuantizationType as T


def first_invalid(qtype: T, data: np.ndarray) -> int | None:
    """Index of the first invalid element (float types) or block (quantized types), or None."""
    try:
        cls = quants.get(qtype)
    except quants.UnsupportedType:
        return None  # integer types: ggml validates nothing
    return cls.first_invalid(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
