"""Float types: F32 (copy), F16 (``ggml_fp32_to_fp16_row``), BF16 (``ggml_fp32_to_bf16_row_ref``).

``ggml_quantize_chunk`` ignores importance weights for all three. Back to float32 (``dequantize_rows``):
F32 is a copy, F16 ``ggml_fp16_to_fp32_row`` (a signaling NaN comes back quiet), BF16
``ggml_bf16_to_fp32_row`` (the 16 bits become the top half).
"""
from __future__ import annotations

import numpy as np

from . import GGMLQuantizationType as T
from . import Kernel, QuantType
from .common import bf16_bits, fp16_bits, fp16_to_fp32_ggml


VALIDATE_CHUNK = 1 << 18  # values per validation step (a few hundred KiB: stays in the cache)


class _Float(QuantType):
    fp16_fields = {}  # ggml_validate_row_data checks every value instead (first_invalid)
    kernel = Kernel(threads=256, item_elems=32, flat=True, dequantize=False)
    _bits: np.dtype  # the unsigned integer of one value
    _inf_bits: int  # |bits| at or above this (the all-ones exponent) is Inf or NaN

    @classmethod
    def first_invalid(cls, raw: np.ndarray) -> int | None:
        """The first Inf or NaN value (ggml_validate_row_data of F32/F16/BF16): one pass when all is valid."""
        bits = raw.view(cls._bits)
        mask = cls._bits.type(cls._inf_bits | (cls._inf_bits - 1))
        tmp = np.empty(min(bits.size, VALIDATE_CHUNK), cls._bits)
        for i in range(0, bits.size, VALIDATE_CHUNK):  # cache-sized steps, no slab-sized temporary
            mag = np.bitwise_and(bits[i:i + VALIDATE_CHUNK], mask, out=tmp[: min(VALIDATE_CHUNK, bits.size - i)])
            if mag.max() >= cls._inf_bits:
                return i + int(np.argmax(mag >= cls._inf_bits))
        return None

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        nrows, n = rows.shape
        return cls._convert(rows).view(np.uint8).reshape(nrows, cls.row_size(n))

    @classmethod
    def dequantize_rows(cls, raw: np.ndarray) -> np.ndarray:
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        return cls._to_float(raw.view(cls._bits)).reshape(raw.shape[0], -1)


class F32(_Float, qtype=T.F32):
    _bits, _inf_bits = np.dtype(np.uint32), 0x7F800000

    @staticmethod
    def _convert(rows):  # memcpy
        return rows.copy()

    @staticmethod
    def _to_float(bits):  # memcpy
        return bits.view(np.float32).copy()


class F16(_Float, qtype=T.F16):
    _bits, _inf_bits = np.dtype(np.uint16), 0x7C00

    @staticmethod
    def _convert(rows):  # ggml_fp32_to_fp16_row -> GGML_FP32_TO_FP16
        return fp16_bits(rows)

    @staticmethod
    def _to_float(bits):  # ggml_fp16_to_fp32_row -> GGML_FP16_TO_FP32
        return fp16_to_fp32_ggml(bits)


class BF16(_Float, qtype=T.BF16):
    _bits, _inf_bits = np.dtype(np.uint16), 0x7F80

    @staticmethod
    def _convert(rows):  # ggml_fp32_to_bf16_row_ref -> ggml_compute_fp32_to_bf16
        return bf16_bits(rows)

    @staticmethod
    def _to_float(bits):  # ggml_bf16_to_fp32_row -> GGML_BF16_TO_FP32
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
