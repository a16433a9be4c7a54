"""Quant types: the one table of ggml types and block/type sizes, and the registry of quant types.

Every quant type is one class in its family module (``legacy.py``, ``kquants.py``, ...) registered with
``class Q4_0(QuantType, qtype=T.Q4_0)``. That class is the one place where everything about the type is
declared (see :class:`QuantType`): the numpy reference (``quantize_rows``, mirroring ``ggml_quantize_chunk``
of llama.cpp's ggml-quants.c bit for bit, and ``dequantize_rows``, ggml's ``to_float``), the fp16 fields that
``ggml_validate_row_data`` checks, and how its CUDA kernels in ``kernels/<family>.cu`` are launched. Every
other table (kernel launches, validation, golden data, test parameters) is derived from the registry.

This module is the bottom layer: it imports numpy and gguf's constants only.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .. import gguf_constants as _gguf

__all__ = [
    "GGMLAbort",
    "GGMLQuantizationType",
    "Kernel",
    "QUANT_SIZES",
    "QuantType",
    "UnsupportedType",
    "can_dequantize",
    "dequantize",
    "get",
    "parse_type",
    "quantize",
    "registered",
    "row_size",
    "T",
    "type_name",
]

# ggml types of the reference (ggml.h, llama-cpp-python 0.3.36) that the gguf package does not know yet,
# with their (block size, type size) from ggml.c's type_traits
_EXTRA_TYPES: dict[str, tuple[int, tuple[int, int]]] = {
    "Q2_0": (42, (64, 18)),  # block_q2_0: fp16 d + 64 2-bit quants
}

#: Every ggml type: gguf's ``GGMLQuantizationType`` members plus ``_EXTRA_TYPES`` (same ids as ggml.h).
GGMLQuantizationType = enum.IntEnum(  # type: ignore[misc]
    "GGMLQuantizationType",
    [(t.name, int(t)) for t in _gguf.GGMLQuantizationType] + [(n, i) for n, (i, _) in _EXTRA_TYPES.items()],
    module=__name__,
)
T = GGMLQuantizationType

#: The one table of (block_size, type_size) per ggml type; every shape is derived from it.
QUANT_SIZES: dict[GGMLQuantizationType, tuple[int, int]] = {
    **{T(int(t)): v for t, v in _gguf.GGML_QUANT_SIZES.items()},
    **{T[n]: sizes for n, (_, sizes) in _EXTRA_TYPES.items()},
}

_REGISTRY: dict[GGMLQuantizationType, type["QuantType"]] = {}


class UnsupportedType(ValueError):
    """A ggml type name or id that gpuquant cannot quantize to."""


class GGMLAbort(ValueError):
    """An input on which ggml-quants.c aborts the process (a GGML_ASSERT or GGML_ABORT): llama-quantize
    would crash on it; gpuquant refuses it with this error instead (types with ``ggml_aborts``)."""


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


@dataclass(frozen=True)
class Kernel:
    """How a type's CUDA kernels (``kernels/<family>.cu``) are launched; the family is the type's module.

    The entry points are ``quantize_<name>_{f32,f16,bf16}`` and, with ``dequantize``, ``dequantize_<name>``,
    ``<name>`` being the lowercase ggml type name. ``threads``: CUDA threads per block. ``item_elems``:
    source elements per work item (None: the ggml block). ``items_per_block``: work items per CUDA block
    (None: ``threads``, one thread per item; a smaller number when several threads share an item).
    ``flat``: work items tile each expert's rows as one flat array (float conversions). ``rowstat``: with
    importance weights, the ``rowstat_sumsq_<src>`` pre-pass of legacy.cu runs first. ``sync``: the kernels
    use ``__syncthreads`` or warp intrinsics (the emulator then runs a block's threads as fibers; barriers
    that only separate the phases of GQ_PHASES need no fibers). ``weighted``: the quantizer reads importance
    weights, through separate entry points ``quantize_<name>_w_<src>`` that the launch plan picks when there
    are weights (``quantize_<name>_<src>`` is then the path without them).
    """

    threads: int
    item_elems: int | None = None
    items_per_block: int | None = None
    flat: bool = False
    rowstat: bool = False
    sync: bool = False
    dequantize: bool = True
    weighted: bool = False


class QuantType:
    """Base class of one quant type: everything about it is declared in its class.

    A subclass sets ``qtype=`` in the class statement and declares:

    * ``quantize_rows`` (ggml_quantize_chunk) and ``dequantize_rows`` (ggml's to_float), in numpy;
    * ``fp16_fields``: ``{block struct member: byte offset}`` of the fp16 scales ggml_validate_row_data
      checks (``{}`` for none; the host build of the kernels asserts the offsets against the C struct
      ``block_<name>``); a type whose validation is not "no inf/NaN in these fields" overrides
      ``invalid_blocks``;
    * ``kernel``: a :class:`Kernel`, or None for a type that has no kernels yet (a test names it);
    * ``requires_imatrix``: ggml_quantize_requires_imatrix;
    * ``ggml_aborts``: ggml's quantizer aborts on some inputs (GGML_ASSERT): ``quantize_rows`` then raises
      :class:`GGMLAbort` where ggml would abort.
    """

    qtype: ClassVar[GGMLQuantizationType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    family: ClassVar[str]
    fp16_fields: ClassVar[dict[str, int] | None] = None
    kernel: ClassVar[Kernel | None] = None
    requires_imatrix: ClassVar[bool] = False
    ggml_aborts: ClassVar[bool] = False

    def __init_subclass__(cls, qtype: GGMLQuantizationType | None = None, **kw) -> None:
        super().__init_subclass__(**kw)
        if qtype is None:  # an abstract intermediate class
            return
        cls.qtype = T(int(qtype))
        cls.block_size, cls.type_size = QUANT_SIZES[cls.qtype]
        cls.family = cls.__module__.rsplit(".", 1)[-1]
        if cls.qtype in _REGISTRY:
            raise TypeError(f"quant type {cls.qtype.name} registered twice "
                            f"({_REGISTRY[cls.qtype].__module__} and {cls.__module__})")
        _REGISTRY[cls.qtype] = cls

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, quant_weights: np.ndarray | None) -> np.ndarray:
        """``rows``: float32 ``(nrows, n_per_row)``; ``quant_weights``: float32 ``(n_per_row,)`` or None.

        Returns uint8 ``(nrows, row_size)``, the bytes ``ggml_quantize_chunk`` writes.
        """
        raise NotImplementedError

    @classmethod
    def dequantize_rows(cls, raw: np.ndarray) -> np.ndarray:
        """uint8 ``(nrows, row_size)`` -> float32 ``(nrows, n_per_row)``, bit for bit ggml's ``to_float``."""
        raise NotImplementedError

    @classmethod
    def invalid_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """``ggml_validate_row_data``: which blocks of uint8 ``(nblocks, type_size)`` it refuses (bool)."""
        bad = np.zeros(len(blocks), dtype=bool)
        for off in (cls.fp16_fields or {}).values():
            h = blocks[:, off].astype(np.uint16) | (blocks[:, off + 1].astype(np.uint16) << 8)
            bad |= (h & 0x7C00) == 0x7C00
        return bad

    @classmethod
    def first_invalid(cls, raw: np.ndarray) -> int | None:
        """Index of the first block of flat uint8 ``raw`` that ``invalid_blocks`` refuses, or None."""
        blocks = raw.reshape(-1, cls.type_size)
        step = max(1, (1 << 20) // cls.type_size)  # about 1 MiB per step: no slab-sized temporaries
        for b0 in range(0, len(blocks), step):
            idx = np.flatnonzero(cls.invalid_blocks(blocks[b0:b0 + step]))
            if idx.size:
                return b0 + int(idx[0])
        return None

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


def dequantize(raw: np.ndarray, qtype: str | int | GGMLQuantizationType, n_per_row: int) -> np.ndarray:
    """Raw rows of ``qtype`` -> float32 ``(nrows, n_per_row)``, bit for bit ggml's ``to_float``."""
    t = parse_type(qtype)
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if t == T.F32:
        return raw.view(np.float32).reshape(-1, n_per_row)
    rows = raw.reshape(-1, row_size(t, n_per_row))
    return get(t).dequantize_rows(rows)


def can_dequantize(qtype: GGMLQuantizationType) -> bool:
    """Whether ``dequantize`` knows ``qtype`` (every registered type)."""
    try:
        get(qtype)
    except UnsupportedType:
        return False
    return True


_loaded = False


def _load_families() -> None:
    """Import every module of this package so the quant types in them register (they import this module).

    A new family is a new module here: nothing else lists the families."""
    global _loaded
    if _loaded:
        return
    import importlib
    import pkgutil

    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{mod}")
    _loaded = True
