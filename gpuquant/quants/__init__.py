"""Quant types: the one table of block/type sizes and the registry of numpy reference quantizers.

Every quant type is one class registered with ``class Q4_0(QuantType, qtype=GGMLQuantizationType.Q4_0)``.
A class implements ``quantize_rows`` (whole rows, because several ggml quantizers use row-level statistics)
and mirrors ``ggml_quantize_chunk`` of llama.cpp (ggml/src/ggml-quants.c) bit for bit.

This module is the bottom layer: it imports numpy and gguf only.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = [
    "GGMLQuantizationType",
    "QUANT_SIZES",
    "QuantType",
    "UnsupportedType",
    "get",
    "parse_type",
    "quantize",
    "registered",
    "row_size",
    "type_name",
]

# The one table of (block_size, type_size) per ggml type; every shape is derived from it.
QUANT_SIZES: dict[GGMLQuantizationType, tuple[int, int]] = dict(GGML_QUANT_SIZES)

_REGISTRY: dict[GGMLQuantizationType, type["QuantType"]] = {}


class UnsupportedType(ValueError):
    """A ggml type name or id that gpuquant cannot quantize to."""


def type_name(qtype: GGMLQuantizationType | int) -> str:
    """The ggml spelling of a type (``Q4_K``, ``IQ4_NL``, ``F16``)."""
    return GGMLQuantizationType(int(qtype)).name


def parse_type(name: str | int | GGMLQuantizationType) -> GGMLQuantizationType:
    """Case-insensitive ggml type name (or id) -> ``GGMLQuantizationType``."""
    if isinstance(name, GGMLQuantizationType):
        return name
    if isinstance(name, int):
        try:
            return GGMLQuantizationType(name)
        except ValueError:
            raise UnsupportedType(f"unknown ggml type id {name!r}") from None
    key = str(name).strip().upper()
    try:
        return GGMLQuantizationType[key]
    except KeyError:
        known = ", ".join(t.name for t in GGMLQuantizationType)
        raise UnsupportedType(f"unknown ggml type {name!r}; known types: {known}") from None


def row_size(qtype: GGMLQuantizationType | int, n_per_row: int) -> int:
    """Bytes of one row of ``n_per_row`` elements (``ggml_row_size``)."""
    block_size, type_size = QUANT_SIZES[GGMLQuantizationType(int(qtype))]
    if n_per_row % block_size:
        raise ValueError(
            f"n_per_row={n_per_row} is not a multiple of the {type_name(qtype)} block size {block_size}"
        )
    return n_per_row // block_size * type_size


class QuantType:
    """Base class of one registered numpy quantizer.

    Subclasses set nothing but ``qtype=`` in the class statement and implement ``quantize_rows``.
    """

    qtype: ClassVar[GGMLQuantizationType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    # ggml_quantize_requires_imatrix
    requires_imatrix: ClassVar[bool] = False

    def __init_subclass__(cls, qtype: GGMLQuantizationType | None = None, **kw) -> None:
        super().__init_subclass__(**kw)
        if qtype is None:  # an abstract intermediate class
            return
        cls.qtype = qtype
        cls.block_size, cls.type_size = QUANT_SIZES[qtype]
        _REGISTRY[qtype] = cls

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        """``rows``: float32 ``(nrows, n_per_row)``; ``quant_weights``: float32 ``(n_per_row,)`` or None.

        Returns uint8 ``(nrows, row_size)``, the bytes ``ggml_quantize_chunk`` writes.
        """
        raise NotImplementedError

    @classmethod
    def row_size(cls, n_per_row: int) -> int:
        return row_size(cls.qtype, n_per_row)


def registered() -> dict[GGMLQuantizationType, type[QuantType]]:
    """Every type with a numpy reference quantizer, in ggml id order."""
    _load_families()
    return dict(sorted(_REGISTRY.items()))


def get(qtype: str | int | GGMLQuantizationType) -> type[QuantType]:
    """The registered quantizer class of a type; ``UnsupportedType`` if there is none."""
    _load_families()
    t = parse_type(qtype)
    try:
        return _REGISTRY[t]
    except KeyError:
        have = ", ".join(c.name for c in sorted(_REGISTRY))
        raise UnsupportedType(f"no quantizer for type {t.name}; implemented: {have}") from None


def quantize(data: np.ndarray, qtype: str | int | GGMLQuantizationType,
             imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize ``data`` (any shape, last axis = row) like ``ggml_quantize_chunk``.

    ``imatrix`` is the importance weight vector of one row (``(n_per_row,)``), or None.
    Returns uint8 of shape ``(*data.shape[:-1], row_size)``.
    """
    cls = get(qtype)
    rows = np.ascontiguousarray(data, dtype=np.float32)
    if rows.ndim == 0:
        raise ValueError("data must have at least one dimension, got a scalar")
    n_per_row = rows.shape[-1]
    if n_per_row % cls.block_size:
        raise ValueError(
            f"data: row length {n_per_row} is not a multiple of the {cls.qtype.name} block size {cls.block_size}"
        )
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32)
        if qw.shape != (n_per_row,):
            raise ValueError(f"imatrix: expected shape ({n_per_row},), got {qw.shape}")
    if cls.requires_imatrix and qw is None:
        raise ValueError(f"type {cls.qtype.name} requires an importance matrix (imatrix=None)")
    flat = rows.reshape(-1, n_per_row)
    out = cls.quantize_rows(flat, qw)
    return out.reshape(*rows.shape[:-1], cls.row_size(n_per_row))


_FAMILIES = ("floats", "legacy", "iq4", "kquants")
_loaded = False


def _load_families() -> None:
    """Import the family modules so their classes register (they import this module)."""
    global _loaded
    if _loaded:
        return
    import importlib

    for fam in _FAMILIES:
        importlib.import_module(f"{__name__}.{fam}")
    _loaded = True
