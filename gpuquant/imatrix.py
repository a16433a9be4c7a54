"""Importance matrices, exactly as llama-quantize reads them and llama-imatrix writes them.

Reading mirrors three pieces of llama.cpp:

* ``common_imatrix_load`` (common/imatrix-loader.cpp): try the file as GGUF (``gguf_init_from_file``, whose
  validity checks :func:`_parse_gguf` repeats), fall back to the legacy ``.dat`` layout when that fails.
  The result is :class:`RawImatrix`: raw sums and integer counts per entry, like ``common_imatrix``.
* ``load_imatrix`` (tools/quantize/quantize.cpp): normalize in float32 -- GGUF sums / per-expert count
  (count <= 0 -> 1.0), legacy sums / ncall (ncall <= 0 -> sums as stored) -- giving :class:`ImatrixData`.
* ``prepare_imatrix`` (quantize.cpp): ``--exclude-weights`` / ``--include-weights`` substring filtering.

``llama_model_quantize_impl`` (src/llama-quant.cpp) then rejects non-finite values and checks each entry's
size against ``ne[0] * ne[2]`` of its tensor: :meth:`ImatrixData.check_finite` and
:meth:`ImatrixData.weights_for`. The ``quantize.imatrix.*`` keys quantize.cpp adds as kv overrides come from
:meth:`ImatrixData.kv_overrides` / :meth:`ImatrixData.metadata`.

Writing (:func:`write_gguf_imatrix`, :func:`write_legacy_imatrix`) mirrors ``IMatrixCollector::save_imatrix``
and ``save_imatrix_legacy`` (tools/imatrix/imatrix.cpp) byte for byte, from the collector's raw state: summed
squared activations (flat, ``ne0 * n_mat`` float32) and integer counts per matrix.

Names and dataset strings are bytes in the files; they are decoded as UTF-8 with ``surrogateescape`` so that
nothing is lost (``name.encode("utf-8", "surrogateescape")`` gives the file's bytes back).

Bottom layer: imports numpy and gguf only.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from .gguf_constants import GGML_QUANT_SIZES, GGUFValueType

__all__ = [
    "ImatrixData", "ImatrixError", "RawImatrix", "filter_entries", "gguf_imatrix_bytes", "legacy_imatrix_bytes",
    "load", "load_raw", "normalize", "prepare", "prepare_imatrix", "write_gguf_imatrix", "write_legacy_imatrix",
    "KV_IMATRIX_FILE", "KV_IMATRIX_DATASET", "KV_IMATRIX_N_ENTRIES", "KV_IMATRIX_N_CHUNKS",
]

# common/imatrix-loader.h
KV_DATASETS = "imatrix.datasets"
KV_CHUNK_COUNT = "imatrix.chunk_count"
KV_CHUNK_SIZE = "imatrix.chunk_size"
# tools/quantize/quantize.cpp (LLM_KV_QUANTIZE_IMATRIX_*)
KV_IMATRIX_FILE = "quantize.imatrix.file"
KV_IMATRIX_DATASET = "quantize.imatrix.dataset"
KV_IMATRIX_N_ENTRIES = "quantize.imatrix.entries_count"
KV_IMATRIX_N_CHUNKS = "quantize.imatrix.chunks_count"

_SUM_SUFFIX = b".in_sum2"
_COUNT_SUFFIX = b".counts"
_TOKEN_EMBD = ("token_embd.weight", "per_layer_token_embd.weight")  # tensor_name_match_token_embd

# ggml/gguf limits (ggml.h, gguf.h, gguf.cpp)
_GGML_MAX_NAME = 64
_GGML_MAX_DIMS = 4
_GGML_TYPE_COUNT = 43
_GGML_TYPE_F32 = 0
_GGUF_VERSION = 3
_GGUF_DEFAULT_ALIGNMENT = 32
_GGUF_MAX_STRING_LENGTH = 1024 * 1024 * 1024
_GGUF_MAX_ARRAY_ELEMENTS = 1024 * 1024 * 1024
_SIZE_MAX = 2**64 - 1
_INT64_MAX = 2**63 - 1
_LONG_MIN = -(2**63)
# ggml type_traits (blck_size, type_size); removed ids (4, 5, 31-33, 36-38) have blck_size 0.
# Q2_0 (42, QK2_0 = 64, fp16 d + 16 bytes) is newer than gguf-py's table.
_GGML_SIZES: dict[int, tuple[int, int]] = {int(k): v for k, v in GGML_QUANT_SIZES.items()}
_GGML_SIZES.setdefault(42, (64, 18))

# gguf_type -> numpy dtype of one element (GGUF_TYPE_SIZE); STRING (8) and ARRAY (9) are handled apart
_GGUF_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<i1",
                10: "<u8", 11: "<i8", 12: "<f8"}
_T_STRING, _T_ARRAY, _T_UINT32 = 8, 9, 4


class ImatrixError(ValueError):
    """An importance matrix that llama-quantize would refuse (or crash on); the message names the file."""


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _cstr(b: bytes) -> bytes:
    """A ``std::string`` read back through ``c_str()``: cut at the first NUL."""
    return b.split(b"\0", 1)[0]


# ----------------------------------------------------------------------------------------------------------
# Raw loading: common_imatrix_load


@dataclass
class RawImatrix:
    """``common_imatrix``: raw sums (float32, flat) and integer counts per entry, entries in name order."""

    sums: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]  # int64: lround of the GGUF counts, or [ncall] for legacy files
    datasets: list[str]
    chunk_count: int  # int32
    chunk_size: int  # int32
    is_legacy: bool
    has_metadata: bool
    missing_keys: tuple[str, ...] = ()  # which of the three metadata keys a GGUF file lacks


class _Short(Exception):
    """Ran past the end of the file (an internal signal, always turned into a message)."""


class _Reader:
    """Sequential little-endian reads with gguf_reader's rule: never read past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remain(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remain:
            raise _Short
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]


def _read_gguf_value(r: _Reader, key: bytes, vtype: int, n: int | None) -> object:
    """One KV value as gguf_read_emplace_helper reads it (``n`` is None for a scalar)."""
    if vtype == _T_STRING:
        def one() -> bytes:
            size = r.unpack("<Q")
            if size > _GGUF_MAX_STRING_LENGTH or size > r.remain:
                raise ValueError(f"string of key {_s(key)!r} has length {size} beyond the file or the limit")
            return r.take(size)
        if n is None:
            return one()
        if n > _GGUF_MAX_ARRAY_ELEMENTS or r.remain < n * 8:
            raise ValueError(f"array of key {_s(key)!r} has {n} strings, more than the file holds")
        return [one() for _ in range(n)]
    if vtype not in _GGUF_DTYPES:
        raise ValueError(f"key {_s(key)!r} has invalid GGUF type {vtype}")
    dt = np.dtype(_GGUF_DTYPES[vtype])
    if n is None:
        return np.frombuffer(r.take(dt.itemsize), dt)[0].item()
    if n > _GGUF_MAX_ARRAY_ELEMENTS or r.remain < n * dt.itemsize:
        raise ValueError(f"array of key {_s(key)!r} has {n} elements, more than the file holds")
    return np.frombuffer(r.take(n * dt.itemsize), dt)


def _nbytes(ne: list[int], ggml_type: int) -> int:
    """ggml_nbytes of a contiguous tensor."""
    if any(d <= 0 for d in ne):
        return 0
    blck, size = _GGML_SIZES[ggml_type]
    n = 1
    for d in ne:
        n *= d
    return n // blck * size


def _parse_gguf(data: bytes) -> tuple[list[tuple[bytes, int, bool, object]], list[tuple[bytes, int, list[int], bytes]]]:
    """gguf_init_from_file (no_alloc = false): ``(kvs, tensors)`` or ValueError saying why it refuses the file.

    ``kvs``: ``(key, type, is_array, value)`` in file order. ``tensors``: ``(name, ggml type, ne, data)``
    in file order, the name as ``ggml_set_name`` keeps it (cut at the first NUL).
    """
    r = _Reader(data)
    try:
        if r.take(4) != b"GGUF":
            raise ValueError("invalid magic, expected 'GGUF'")
        version = r.unpack("<I")
        if version == 0 or (version & 0xFFFF) == 0 or version == 1 or version > _GGUF_VERSION:
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors = r.unpack("<q")
        n_kv = r.unpack("<q")
        if n_tensors < 0 or n_kv < 0:
            raise ValueError(f"bad header: n_tensors={n_tensors} n_kv={n_kv}")

        kvs: list[tuple[bytes, int, bool, object]] = []
        seen: set[bytes] = set()
        for i in range(n_kv):
            key = _read_gguf_value(r, b"#%d" % i, _T_STRING, None)
            if not key:
                raise ValueError(f"key {i} is empty")
            if key in seen:
                raise ValueError(f"duplicate key {_s(key)!r}")
            seen.add(key)
            vtype, is_array, n = r.unpack("<i"), False, None
            if vtype == _T_ARRAY:
                is_array, vtype, n = True, r.unpack("<i"), r.unpack("<Q")
            kvs.append((key, vtype, is_array, _read_gguf_value(r, key, vtype, n)))

        alignment = _GGUF_DEFAULT_ALIGNMENT
        kv_align = _find_key(kvs, b"general.alignment")
        if kv_align is not None:
            if kv_align[1] != _T_UINT32 or kv_align[2]:
                raise ValueError("key 'general.alignment' must be of type u32")
            alignment = kv_align[3]
            if alignment == 0 or alignment & (alignment - 1):
                raise ValueError(f"alignment {alignment} is not a power of 2")

        infos: list[tuple[bytes, int, list[int], int]] = []
        seen = set()
        for i in range(n_tensors):
            name = _read_gguf_value(r, b"tensor name %d" % i, _T_STRING, None)
            if len(name) >= _GGML_MAX_NAME:
                raise ValueError(f"tensor name {i} is too long: {len(name)} >= {_GGML_MAX_NAME}")
            if name in seen:
                raise ValueError(f"duplicate tensor name {_s(name)!r}")
            seen.add(name)
            n_dims = r.unpack("<I")
            if n_dims > _GGML_MAX_DIMS:
                raise ValueError(f"tensor {_s(name)!r} has {n_dims} dimensions > {_GGML_MAX_DIMS}")
            ne = [r.unpack("<q") for _ in range(n_dims)] + [1] * (_GGML_MAX_DIMS - n_dims)
            if any(d < 0 for d in ne):
                raise ValueError(f"tensor {_s(name)!r} has a negative dimension: {ne}")
            cur = ne[0]
            for d in ne[1:]:
                if d > 1 and _INT64_MAX // d < cur:
                    raise ValueError(f"tensor {_s(name)!r} shape {ne} overflows int64")
                cur *= d
            gtype = r.unpack("<i")
            blck, tsize = _GGML_SIZES.get(gtype, (0, 0)) if 0 <= gtype < _GGML_TYPE_COUNT else (0, 0)
            if not 0 <= gtype < _GGML_TYPE_COUNT or blck == 0 or ne[0] % blck:
                raise ValueError(f"tensor {_s(name)!r} has invalid ggml type {gtype} for row length {ne[0]}")
            if cur // blck > _SIZE_MAX // tsize:
                raise ValueError(f"tensor {_s(name)!r} is larger than SIZE_MAX bytes")
            infos.append((name, gtype, ne, r.unpack("<Q")))

        if n_tensors > 0:
            r.take(-r.pos % alignment)  # the data section starts aligned
        size = 0
        for name, gtype, ne, offset in infos:
            if offset != size:
                raise ValueError(f"tensor {_s(name)!r} has offset {offset}, expected {size}")
            size += -(-_nbytes(ne, gtype) // alignment) * alignment
        if size > _SIZE_MAX:
            raise ValueError("data section larger than SIZE_MAX")
        blob = r.take(size)
    except _Short:
        raise ValueError(f"file ends early (at byte {r.pos} of {len(data)})") from None
    tensors = [(_cstr(name), gtype, ne, blob[off:off + _nbytes(ne, gtype)]) for name, gtype, ne, off in infos]
    return kvs, tensors


def _find_key(kvs: list, key: bytes) -> tuple | None:
    """gguf_find_key: the first KV whose key equals ``key`` as a C string."""
    for kv in kvs:
        if _cstr(kv[0]) == key:
            return kv
    return None


def _lround(x: np.ndarray) -> np.ndarray:
    """std::lround of float32 values on x86-64 glibc: half away from zero; NaN / out of range -> LONG_MIN."""
    x64 = x.astype(np.float64)
    ok = np.isfinite(x64) & (np.abs(x64) < 2.0**63)
    r = np.where(ok, np.copysign(np.floor(np.abs(x64) + 0.5), x64), 0.0)
    out = r.astype(np.int64)
    out[~ok] = _LONG_MIN
    return out


def _load_gguf(path: str, kvs: list, tensors: list) -> RawImatrix:
    """The GGUF branch of common_imatrix_load, on a file gguf_init_from_file accepted."""
    if len(tensors) < 1:
        raise ImatrixError(f"{path}: no data in file (a GGUF without tensors)")
    datasets: list[str] = []
    kv = _find_key(kvs, KV_DATASETS.encode())
    if kv is not None and kv[2] and kv[1] == _T_STRING:
        datasets = [_s(_cstr(v)) for v in kv[3]]
    ints = {}
    for key in (KV_CHUNK_COUNT, KV_CHUNK_SIZE):
        kv = _find_key(kvs, key.encode())
        # gguf_get_val_u32 asserts one element of type u32 (an array of one u32 passes); llama.cpp aborts
        if kv is not None and (kv[1] != _T_UINT32 or (kv[2] and len(kv[3]) != 1)):
            raise ImatrixError(f"{path}: metadata key {key!r} must be a u32 scalar (llama.cpp aborts on this file)")
        value = 0 if kv is None else int(kv[3][0] if kv[2] else kv[3])
        ints[key] = value - (1 << 32) if value >= 1 << 31 else value  # uint32 stored in an int32_t
    missing = tuple(k for k in (KV_DATASETS, KV_CHUNK_COUNT, KV_CHUNK_SIZE) if _find_key(kvs, k.encode()) is None)

    pairs: dict[bytes, list] = {}
    for name, gtype, ne, blob in tensors:
        if not name:
            continue
        for slot, suffix in ((0, _SUM_SUFFIX), (1, _COUNT_SUFFIX)):
            if name.endswith(suffix):
                pairs.setdefault(name[:-len(suffix)], [None, None])[slot] = (gtype, blob)
                break
    sums, counts = {}, {}
    for name in sorted(pairs):  # std::map order
        s, c = pairs[name]
        if s is None or c is None:
            raise ImatrixError(f"{path}: mismatched sums and counts for {_s(name)!r} "
                               f"(has {'no' if s is None else 'a'} .in_sum2 and {'no' if c is None else 'a'} .counts tensor)")
        if s[0] != _GGML_TYPE_F32 or c[0] != _GGML_TYPE_F32:
            raise ImatrixError(f"{path}: sums and counts for {_s(name)!r} must be F32 "
                               f"(ggml types {s[0]} and {c[0]})")
        sums[_s(name)] = np.frombuffer(s[1], "<f4").astype(np.float32)
        counts[_s(name)] = _lround(np.frombuffer(c[1], "<f4"))
    return RawImatrix(sums, counts, datasets, ints[KV_CHUNK_COUNT], ints[KV_CHUNK_SIZE], False, not missing, missing)


def _load_legacy(path: str, data: bytes) -> RawImatrix:
    """common_imatrix_load_legacy: ``int n_entries``, then per entry ``int32 len, name, int32 ncall,
    int32 nval, float[nval]``, then optionally ``int32 chunk_count, int32 len, dataset``."""
    r = _Reader(data)
    try:
        n_entries = r.unpack("<i")
    except _Short:
        n_entries = 0
    if n_entries < 1:
        raise ImatrixError(f"{path}: no data in file (legacy imatrix with {n_entries} entries)")
    sums, counts = {}, {}
    for i in range(n_entries):
        where = f"entry {i + 1} of {n_entries}"
        try:
            length = r.unpack("<i")
            name = _s(_cstr(r.take(length)))
        except _Short:
            raise ImatrixError(f"{path}: failed reading name for {where} (file ends at byte {len(data)})") from None
        try:
            ncall, nval = r.unpack("<i"), r.unpack("<i")
        except _Short:
            nval = 0
        if nval < 1:
            raise ImatrixError(f"{path}: failed reading number of values for {where} {name!r}")
        try:
            values = np.frombuffer(r.take(4 * nval), "<f4").astype(np.float32)
        except _Short:
            raise ImatrixError(f"{path}: failed reading data for {where} {name!r}: {nval} values "
                               f"announced, {r.remain // 4} left in the file") from None
        sums[name] = values  # a repeated name replaces the earlier entry (std::map operator[])
        counts[name] = np.array([ncall], np.int64)

    # optional trailer; istream::read keeps the bytes of a short read, so a partial chunk count counts
    chunk_count, datasets = 0, []
    if r.remain:
        raw = r.data[r.pos:r.pos + 4]
        chunk_count = struct.unpack("<i", raw.ljust(4, b"\0"))[0]
        r.pos += len(raw)
        if len(raw) == 4 and r.remain >= 4:
            length = r.unpack("<i")
            if 0 < length <= r.remain:
                datasets.append(_s(_cstr(r.take(length))))
    return RawImatrix(sums, counts, datasets, chunk_count, 0, True, False)


def load_raw(path: str | os.PathLike) -> RawImatrix:
    """common_imatrix_load: GGUF when gguf_init_from_file accepts the file, else the legacy layout."""
    spath = os.fsdecode(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImatrixError(f"{spath}: cannot read imatrix file: {e.strerror or e}") from None
    try:
        kvs, tensors = _parse_gguf(data)
    except ValueError as gguf_error:
        try:
            return _load_legacy(spath, data)
        except ImatrixError as legacy_error:
            if data[:4] == b"GGUF":
                raise ImatrixError(f"{spath}: invalid GGUF imatrix: {gguf_error}") from None
            raise legacy_error from None
    return _load_gguf(spath, kvs, tensors)


# ----------------------------------------------------------------------------------------------------------
# Normalizing, filtering: quantize.cpp load_imatrix / prepare_imatrix; checks of llama_model_quantize_impl


@dataclass
class ImatrixData:
    """What llama-quantize passes to ``llama_model_quantize``: per entry ``ne0 * n_expert`` float32 weights."""

    entries: dict[str, np.ndarray]
    datasets: list[str]
    chunk_count: int  # m_last_call: the file's chunk count (int32), -1 when no file was loaded
    file: str | None = None  # the --imatrix argument as given
    is_legacy: bool = False
    notes: list[str] = field(default_factory=list)  # "did not find weights" / skipped token_embd messages

    def __bool__(self) -> bool:
        """True when llama-quantize would pass an imatrix at all (``!imatrix_data.empty()``)."""
        return bool(self.entries)

    def check_finite(self) -> None:
        """llama_model_quantize_impl: every value must be finite ("imatrix contains non-finite value")."""
        for name, v in self.entries.items():
            bad = np.flatnonzero(~np.isfinite(v))
            if bad.size:
                i = int(bad[0])
                where = f"{self.file}: " if self.file else ""
                raise ImatrixError(f"{where}imatrix entry {name!r} contains non-finite value {float(v[i])} at "
                                   f"index {i} of {v.size} ({bad.size} non-finite values in this entry)")

    def weights_for(self, entry: str | None, n_per_row, n_expert: int | None = None, *,
                    tensor_name: str | None = None) -> np.ndarray | None:
        """The ``(n_expert, n_per_row)`` float32 importance weights of one tensor, or None.

        ``entry`` is the imatrix name (``remap_imatrix`` of the tensor name). ``n_per_row`` may also be a tensor
        with ``.ne`` and ``.name`` (n_per_row = ne[0], n_expert = ne[2] or 1). As in llama_model_quantize_impl:
        no entry -> None (a note); size != ne[0] * ne[2] -> ImatrixError, except for token_embd tensors,
        which are quantized without weights (a note).
        """
        if hasattr(n_per_row, "ne"):
            ne = tuple(n_per_row.ne)
            tensor_name = tensor_name or getattr(n_per_row, "name", None)
            n_per_row, n_expert = int(ne[0]), int(ne[2]) if len(ne) > 2 else 1
        n_expert = 1 if n_expert is None else int(n_expert)
        tensor_name = tensor_name or entry
        if entry is None:
            return None
        values = self.entries.get(entry)
        if values is None:
            self.notes.append(f"did not find weights for {tensor_name}")
            return None
        expected = int(n_per_row) * n_expert
        if values.size != expected:
            msg = (f"imatrix size {values.size} is different from tensor size {expected} for {tensor_name} "
                   f"(entry {entry!r}, expected ne[0]={n_per_row} x ne[2]={n_expert})")
            if tensor_name in _TOKEN_EMBD:
                self.notes.append(msg + "; quantized without importance weights")
                return None
            raise ImatrixError(f"{self.file}: {msg}" if self.file else msg)
        return values.reshape(n_expert, int(n_per_row))

    def kv_overrides(self, imatrix_file: str | os.PathLike | None = None) -> list[tuple[str, str, str | bytes | int]]:
        """quantize.cpp's kv overrides, in its order: ``(key, tag, value)`` with tag ``"str"`` or ``"int"``.

        Only when entries remain; the file key always, the dataset key when the file named one (the first),
        the entry count always, the chunk count when > 0. Strings are cut to 127 bytes (``strncpy`` into
        ``val_str[128]``) -- a ``str``, or ``bytes`` when the cut splits a UTF-8 character.
        """
        if not self.entries:
            return []
        fname = self.file if imatrix_file is None else imatrix_file
        if fname is None:
            raise ValueError("kv_overrides: no imatrix file name")
        out: list[tuple[str, str, str | bytes | int]] = [(KV_IMATRIX_FILE, "str", _val_str(os.fsencode(fname)))]
        if self.datasets:
            out.append((KV_IMATRIX_DATASET, "str", _val_str(_b(self.datasets[0]))))
        out.append((KV_IMATRIX_N_ENTRIES, "int", len(self.entries)))
        if self.chunk_count > 0:
            out.append((KV_IMATRIX_N_CHUNKS, "int", self.chunk_count))
        return out

    def metadata(self, imatrix_file: str | os.PathLike | None = None) -> list[tuple[str, GGUFValueType, str | bytes | int]]:
        """The same keys as llama_model_quantize_impl writes them: STRING, and int overrides as
        ``UINT32`` of ``(uint32_t) std::abs(val_i64)``."""
        return [(k, GGUFValueType.STRING, v) if tag == "str" else (k, GGUFValueType.UINT32, abs(v) & 0xFFFFFFFF)
                for k, tag, v in self.kv_overrides(imatrix_file)]


def _val_str(b: bytes) -> str | bytes:
    cut = _cstr(b)[:127]
    try:
        return cut.decode("utf-8")
    except UnicodeDecodeError:
        return cut


def normalize(raw: RawImatrix, path: str | os.PathLike = "") -> ImatrixData:
    """quantize.cpp load_imatrix: per-entry float32 weights from raw sums and counts."""
    spath = os.fsdecode(path)
    if not raw.is_legacy and not raw.has_metadata:
        raise ImatrixError(f"{spath}: missing imatrix metadata: a GGUF imatrix needs the keys {KV_DATASETS}, "
                           f"{KV_CHUNK_COUNT} and {KV_CHUNK_SIZE}; this file lacks {', '.join(raw.missing_keys)}")
    entries: dict[str, np.ndarray] = {}
    for name, sums in raw.sums.items():
        counts = raw.counts[name]
        e = np.zeros(sums.size, np.float32)
        if not raw.is_legacy:
            ncounts = counts.size
            if ncounts == 0:  # integer division by zero in quantize.cpp
                raise ImatrixError(f"{spath}: entry {name!r} has an empty counts tensor")
            ne0 = sums.size // ncounts  # trailing values of a ragged entry stay 0, as in e.resize()
            cnt = counts.astype(np.float32)  # (float) int64_t
            block = sums[:ncounts * ne0].reshape(ncounts, ne0)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                q = np.where((cnt > 0)[:, None], block / np.where(cnt > 0, cnt, np.float32(1))[:, None],
                             np.float32(1))
            e[:ncounts * ne0] = q.reshape(-1)
        else:
            ncall = int(counts[0]) if counts.size else 0
            if ncall > 0:
                with np.errstate(invalid="ignore", over="ignore"):
                    e[:] = sums / np.float32(ncall)  # float / int64_t: the int64 becomes a float
            else:
                e[:] = sums
        entries[name] = e
    return ImatrixData(entries, list(raw.datasets), raw.chunk_count, spath or None, raw.is_legacy)


def load(path: str | os.PathLike) -> ImatrixData:
    """Load and normalize an imatrix file (no filtering, no finiteness check)."""
    return normalize(load_raw(path), path)


def filter_entries(entries: Mapping[str, np.ndarray], include: Iterable[str] = (),
                   exclude: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """prepare_imatrix: drop entries whose name contains any ``exclude`` substring, then keep only those
    containing some ``include`` substring (when any is given). Both at once is a usage error."""
    include, exclude = list(include), list(exclude)
    if include and exclude:
        raise ImatrixError("--include-weights and --exclude-weights cannot be used together")
    out = {k: v for k, v in entries.items() if not any(p in k for p in exclude)}
    if include:
        out = {k: v for k, v in out.items() if any(p in k for p in include)}
    return out


def prepare(imatrix_file: str | os.PathLike | None, include_weights: Iterable[str] = (),
            exclude_weights: Iterable[str] = (), *, check_finite: bool = True) -> ImatrixData | None:
    """llama-quantize ``--imatrix FILE [--include-weights S]... [--exclude-weights S]...``.

    Loads, normalizes and filters; with ``check_finite`` also applies llama_model_quantize_impl's
    non-finite check to what remains. None when no file is given. An ImatrixData with no entries means
    llama-quantize would quantize without an imatrix (and add no ``quantize.imatrix.*`` keys).
    """
    include_weights, exclude_weights = list(include_weights), list(exclude_weights)
    if include_weights and exclude_weights:
        raise ImatrixError("--include-weights and --exclude-weights cannot be used together")
    if imatrix_file is None or os.fspath(imatrix_file) in ("", b""):
        return None
    data = load(imatrix_file)
    data.file = os.fsdecode(imatrix_file)
    data.entries = filter_entries(data.entries, include_weights, exclude_weights)
    if check_finite:
        data.check_finite()
    return data


prepare_imatrix = prepare


# ----------------------------------------------------------------------------------------------------------
# Writing: IMatrixCollector::save_imatrix / save_imatrix_legacy (tools/imatrix/imatrix.cpp)


def _stats(entries: Mapping[str, np.ndarray], counts: Mapping[str, object]) -> list[tuple[bytes, np.ndarray, np.ndarray]]:
    """The collector's ``m_stats`` in the writers' order (names sorted as std::sort sorts std::string)."""
    if set(entries) != set(counts):
        raise ValueError(f"entries and counts name different tensors: {sorted(set(entries) ^ set(counts))}")
    out = []
    for name in entries:
        values = np.ascontiguousarray(entries[name], dtype=np.float32).reshape(-1)
        cnt = np.atleast_1d(np.asarray(counts[name], dtype=np.int64)).reshape(-1)
        if values.size and cnt.size and (values.size % cnt.size or values.size < cnt.size):
            raise ValueError(f"entry {name!r}: {values.size} values do not split into {cnt.size} matrices")
        out.append((_b(name), values, cnt))
    return sorted(out, key=lambda t: t[0])


def _gguf_str(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def gguf_imatrix_bytes(entries: Mapping[str, np.ndarray], counts: Mapping[str, object],
                       datasets: Sequence[str] = (), chunk_count: int = 0, chunk_size: int = 512) -> bytes:
    """The bytes ``save_imatrix`` writes (gguf_write_to_file of its context).

    ``entries``: raw summed squared activations per tensor, flat ``ne0 * n_mat`` float32 (expert-major);
    ``counts``: one integer per matrix (``n_mat`` of them; dense tensors have one). ``datasets``: the
    ``imatrix.datasets`` array (earlier files' datasets, then this run's prompt file); ``chunk_count``:
    ``m_last_chunk``; ``chunk_size``: ``n_ctx / n_parallel``.
    """
    kvs = [
        _gguf_str(b"general.type") + struct.pack("<i", _T_STRING) + _gguf_str(b"imatrix"),
        _gguf_str(KV_DATASETS.encode()) + struct.pack("<iiQ", _T_ARRAY, _T_STRING, len(datasets))
        + b"".join(_gguf_str(_cstr(_b(d))) for d in datasets),
        _gguf_str(KV_CHUNK_COUNT.encode()) + struct.pack("<iI", _T_UINT32, chunk_count & 0xFFFFFFFF),
        _gguf_str(KV_CHUNK_SIZE.encode()) + struct.pack("<iI", _T_UINT32, chunk_size & 0xFFFFFFFF),
    ]
    align = _GGUF_DEFAULT_ALIGNMENT
    infos, blobs, offset, seen = [], [], 0, set()
    for name, values, cnt in _stats(entries, counts):
        if not values.size or not cnt.size:
            continue
        nmat = cnt.size
        for suffix, ne0, data in ((_SUM_SUFFIX, values.size // nmat, values.astype("<f4")),
                                  (_COUNT_SUFFIX, 1, cnt.astype(np.float32).astype("<f4"))):
            tname = (_cstr(name) + suffix)[:_GGML_MAX_NAME - 1]  # ggml_format_name into char[64]
            if tname in seen:
                raise ValueError(f"duplicate tensor name {_s(tname)!r} (llama-imatrix aborts)")
            seen.add(tname)
            ne = [ne0, nmat] if nmat > 1 else [ne0]  # ggml_n_dims
            infos.append(_gguf_str(tname) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}q", *ne)
                         + struct.pack("<iQ", _GGML_TYPE_F32, offset))
            raw = data.tobytes()
            blobs.append(raw + b"\0" * (-len(raw) % align))
            offset += len(blobs[-1])
    head = b"GGUF" + struct.pack("<Iqq", _GGUF_VERSION, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    return head + b"\0" * (-len(head) % align) + b"".join(blobs)


def legacy_imatrix_bytes(entries: Mapping[str, np.ndarray], counts: Mapping[str, object],
                         datasets: Sequence[str] = (), chunk_count: int = 0, chunk_size: int = 512) -> bytes:
    """The bytes ``save_imatrix_legacy`` writes, from the same raw state as :func:`gguf_imatrix_bytes`.

    Entries whose counts are all zero are left out; a matrix with count 0 is stored as 1.0 * ncall; the
    others as ``(sum / count) * ncall`` in float32 with ``ncall = ceil(max(counts) / chunk_size)``. The
    trailer is ``chunk_count`` and the last dataset (the prompt file, else the last loaded dataset).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    body, n_entries = [], 0
    for name, values, cnt in _stats(entries, counts):
        if cnt.size == 0 or not cnt.any():
            continue  # "has no data - skipping"
        n_entries += 1
        top = int(cnt.max()) + (chunk_size - 1)
        ncall = int(np.int64(abs(top) // chunk_size * (1 if top >= 0 else -1)).astype(np.int32))  # C division
        part = [struct.pack("<i", len(name)), name, struct.pack("<ii", ncall, values.size)]
        if values.size and cnt.size:
            count = np.repeat(cnt.astype(np.float32), values.size // cnt.size)
            zero = count == 0
            value = np.where(zero, np.float32(1), values)
            count = np.where(zero, np.float32(1), count)
            part.append(((value / count) * np.float32(ncall)).astype("<f4").tobytes())
        body.append(b"".join(part))
    last = _b(datasets[-1]) if datasets else b""
    return (struct.pack("<i", n_entries) + b"".join(body) + struct.pack("<i", chunk_count)
            + struct.pack("<i", len(last)) + last)


def write_gguf_imatrix(path: str | os.PathLike, entries: Mapping[str, np.ndarray], counts: Mapping[str, object],
                       datasets: Sequence[str] = (), chunk_count: int = 0, chunk_size: int = 512) -> None:
    """Write a GGUF imatrix exactly as llama-imatrix does (see :func:`gguf_imatrix_bytes`)."""
    with open(path, "wb") as f:
        f.write(gguf_imatrix_bytes(entries, counts, datasets, chunk_count, chunk_size))


def write_legacy_imatrix(path: str | os.PathLike, entries: Mapping[str, np.ndarray], counts: Mapping[str, object],
                         datasets: Sequence[str] = (), chunk_count: int = 0, chunk_size: int = 512) -> None:
    """Write a legacy ``.dat`` imatrix exactly as ``llama-imatrix --output-format dat`` does."""
    with open(path, "wb") as f:
        f.write(legacy_imatrix_bytes(entries, counts, datasets, chunk_count, chunk_size))
