"""Row validation as ``ggml_validate_row_data`` (ggml-quants.c): no NaN/Inf in floats or fp16 scales.

llama-quantize validates every source slab it reads (llama_model_loader::load_data_range with
check_tensors) and every quantized chunk it produces (llama_tensor_quantize_impl); gpuquant refuses at the
same places, but names the tensor and the first bad element or block.
"""
from __future__ import annotations

import numpy as np

from .quants import QUANT_SIZES, GGMLQuantizationType as T

# byte offsets of the fp16 scale fields checked in each block (VALIDATE_ROW_DATA_D[M]_F16_IMPL)
_F16_FIELDS: dict[T, tuple[int, ...]] = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
    T.IQ4_NL: (0,), T.IQ4_XS: (0,),
    T.IQ2_XXS: (0,), T.IQ2_XS: (0,), T.IQ2_S: (0,), T.IQ3_XXS: (0,), T.IQ3_S: (0,), T.IQ1_S: (0,),
}


_FLOAT_LIMITS = {
    T.F32: (np.uint32, np.uint32(0x7FFFFFFF), 0x7F800000),
    T.F16: (np.uint16, np.uint16(0x7FFF), 0x7C00),
    T.BF16: (np.uint16, np.uint16(0x7FFF), 0x7F80),
}


def first_invalid(qtype: T, data: np.ndarray) -> int | None:
    """Index of the first invalid element (float types) or block (quantized types), or None."""
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if qtype in _FLOAT_LIMITS:  # |bits| at or above the all-ones exponent is Inf or NaN
        view, mask, limit = _FLOAT_LIMITS[qtype]
        mag = raw.view(view) & mask
        if mag.size == 0 or mag.max() < limit:  # one pass in the common, valid case
            return None
        bad = mag >= limit
    elif qtype in _F16_FIELDS:
        type_size = QUANT_SIZES[qtype][1]
        blocks = raw.reshape(-1, type_size)
        bad = np.zeros(len(blocks), dtype=bool)
        for off in _F16_FIELDS[qtype]:
            h = blocks[:, off].astype(np.uint16) | (blocks[:, off + 1].astype(np.uint16) << 8)
            bad |= (h & 0x7C00) == 0x7C00
    else:
        return None
    idx = np.flatnonzero(bad)
    return int(idx[0]) if idx.size else None
