"""Float types: F32 (copy), F16 (``ggml_fp32_to_fp16_row``), BF16 (``ggml_fp32_to_bf16_row_ref``).

``ggml_quantize_chunk`` ignores importance weights for all three.
"""
from __future__ import annotations

import numpy as np

from . import GGMLQuantizationType as T
from . import QuantType
from .common import bf16_bits, fp16_bits


class _Float(QuantType):
    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        nrows, n = rows.shape
        return cls._convert(rows).view(np.uint8).reshape(nrows, cls.row_size(n))


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
