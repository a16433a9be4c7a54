"""Float types: F32 (copy), F16 (``ggml_fp32_to_fp16_row``), BF16 (``ggml_fp32_to_bf16_row_ref``).

``ggml_quantize_chunk`` ignores importance weights for all three.
"""
from __future__ import annotations

import numpy as np

from . import GGMLQuantizationType as T
from . import QuantType
from .common import bf16_bits, fp16_bits

_CHUNK = 1 << 16  # elements per step: the in-place bit steps stay in cache


class _Float(QuantType):
    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        nrows, n = rows.shape
        out = np.empty((nrows, cls.row_size(n)), dtype=np.uint8)
        flat_in = rows.reshape(-1)
        flat_out = out.reshape(-1).view(cls._convert(flat_in[:0]).dtype)
        for i in range(0, flat_in.size, _CHUNK):
            flat_out[i:i + _CHUNK] = cls._convert(flat_in[i:i + _CHUNK])
        return out


class F32(_Float, qtype=T.F32):
    @staticmethod
    def _convert(rows):  # memcpy
        return rows.copy()


class F16(_Float, qtype=T.F16):
    @staticmethod
    def _convert(rows):  # ggml_fp32_to_fp16_row -> GGML_FP32_TO_FP16
        return fp16_bits(rows)


class BF16(_Float, qtype=T.BF16):
    @staticmethod
    def _convert(rows):  # ggml_fp32_to_bf16_row_ref -> ggml_compute_fp32_to_bf16
        return bf16_bits(rows)
