"""Importance matrices, exactly as llama-quantize reads them and llama-imatrix writes them.

Reading mirrors three pieces of llama.cpp:

* ``common_imatrix_load`` (common/imatrix-loader.cpp): try the file as GGUF (``gguf_init_from_file`` with
  ``no_alloc = false``: :func:`gpuquant.gguf_io.parse_gguf` with the whole data section required), fall back
  to the legacy ``.dat`` layout when that fails. The result is :class:`RawImatrix`: raw sums and integer
  counts per entry, like ``common_imatrix``.
* ``load_imatrix`` (tools/quantize/quantize.cpp): normalize in float32 -- GGUF sums / per-expert count
  (count <= 0 -> 1.0), legacy sums / ncall (ncall <= 0 -> sums as stored) -- giving :class:`ImatrixData`.
* ``prepare_imatrix`` (quantize.cpp): ``--exclude-weights`` / ``--include-weights`` substring filtering.

``llama_model_quantize_impl`` (src/llama-quant.cpp) then rejects non-finite values and checks each entry's
size against ``ne[0] * ne[2]`` of its tensor: :meth:`ImatrixData.check_finite` and
:meth:`ImatrixData.weights_for`. The ``quantize.imatrix.*`` keys quantize.cpp adds as kv overrides come from
:meth:`ImatrixData.kv_overrides` / :meth:`ImatrixData.metadata`.

Writing (:func:`write_gguf_imatrix`, :func:`write_legacy_imatrix`) mirrors ``IMatrixCollector::save_imatrix``
(through the GGUF encoder of ``gguf_writer``) and ``save_imatrix_legacy`` (tools/imatrix/imatrix.cpp) byte
for byte, from the collector's raw state: summed squared activations (flat, ``ne0 * n_mat`` float32) and
integer counts per matrix.

Names and dataset strings are bytes in the files; they are decoded as UTF-8 with ``surrogateescape`` so that
nothing is lost (``name.encode("utf-8", "surrogateescape")`` gives the file's bytes back).

Bottom layer: imports numpy, ``gguf_constants``, ``gpuquant.quants`` and the GGUF codec (``gguf_io``, ``gguf_writer``).
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from .gguf_constants import GGUFValueType
from .gguf_io import GGML_MAX_NAME, KV, Cursor, GGUFError, GGUFTruncated, cstr, find_kv, pad, parse_gguf
from .gguf_writer import KVList, OutTensor, encode_header, encode_kv
from .quants import GGMLQuantizationType as T

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

_SUM_SUFFIX = ".in_sum2"
_COUNT_SUFFIX = ".counts"
_TOKEN_EMBD = ("token_embd.weight", "per_layer_token_embd.weight")  # tensor_name_match_token_embd
_LONG_MIN = -(2**63)


class ImatrixError(ValueError):
    """An importance matrix that llama-quantize would refuse (or crash on); the message names the file."""


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


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


def _read_gguf(path: str, data: bytes) -> tuple[list[KV], list[tuple[str, T, bytes]]]:
    """gguf_init_from_file (no_alloc = false): the key/values, and each tensor's name, type and data."""
    kvs, infos, info = parse_gguf(io.BytesIO(data), path, len(data), errors="surrogateescape", need_data="section")
    base = info.data_offset
    return kvs, [(t.name, t.type, data[base + t.offset:base + t.offset + t.nbytes]) for t in infos]


def _lround(x: np.ndarray) -> np.ndarray:
    """std::lround of float32 values on x86-64 glibc: half away from zero; NaN / out of range -> LONG_MIN."""
    x64 = x.astype(np.float64)
    ok = np.isfinite(x64) & (np.abs(x64) < 2.0**63)
    r = np.where(ok, np.copysign(np.floor(np.abs(x64) + 0.5), x64), 0.0)
    out = r.astype(np.int64)
    out[~ok] = _LONG_MIN
    return out


def _u32_key(path: str, kvs: list[KV], key: str) -> int:
    """``gguf_get_val_u32`` stored in an int32_t (0 when the key is missing). It asserts one element of type
    u32 (an array of one u32 passes): llama.cpp aborts on anything else."""
    kv = find_kv(kvs, key)
    if kv is None:
        return 0
    is_array = kv.vtype == GGUFValueType.ARRAY
    if (kv.subtype if is_array else kv.vtype) != GGUFValueType.UINT32 or (is_array and len(kv.value) != 1):
        raise ImatrixError(f"{path}: metadata key {key!r} must be a u32 scalar (llama.cpp aborts on this file)")
    value = int(kv.value[0] if is_array else kv.value)
    return value - (1 << 32) if value >= 1 << 31 else value


def _sums_and_counts(path: str, tensors: list[tuple[str, T, bytes]]) -> tuple[dict, dict]:
    """Pair ``NAME.in_sum2`` with ``NAME.counts`` (both F32), entries in std::map (byte) order."""
    pairs: dict[str, list] = {}
    for name, gtype, blob in tensors:
        for slot, suffix in ((0, _SUM_SUFFIX), (1, _COUNT_SUFFIX)):
            if name and name.endswith(suffix):
                pairs.setdefault(name[:-len(suffix)], [None, None])[slot] = (gtype, blob)
                break
    sums, counts = {}, {}
    for name in sorted(pairs, key=_b):
        s, c = pairs[name]
        if s is None or c is None:
            raise ImatrixError(f"{path}: mismatched sums and counts for {name!r} (has {'no' if s is None else 'a'} "
                               f".in_sum2 and {'no' if c is None else 'a'} .counts tensor)")
        if s[0] != T.F32 or c[0] != T.F32:
            raise ImatrixError(f"{path}: sums and counts for {name!r} must be F32 (ggml types {s[0]} and {c[0]})")
        sums[name] = np.frombuffer(s[1], "<f4").astype(np.float32)
        counts[name] = _lround(np.frombuffer(c[1], "<f4"))
    return sums, counts


def _load_gguf(path: str, kvs: list[KV], tensors: list[tuple[str, T, bytes]]) -> RawImatrix:
    """The GGUF branch of common_imatrix_load, on a file gguf_init_from_file accepted."""
    if len(tensors) < 1:
        raise ImatrixError(f"{path}: no data in file (a GGUF without tensors)")
    kv = find_kv(kvs, KV_DATASETS)
    datasets = list(kv.value) if kv is not None and kv.subtype == GGUFValueType.STRING else []
    chunk_count, chunk_size = _u32_key(path, kvs, KV_CHUNK_COUNT), _u32_key(path, kvs, KV_CHUNK_SIZE)
    missing = tuple(k for k in (KV_DATASETS, KV_CHUNK_COUNT, KV_CHUNK_SIZE) if find_kv(kvs, k) is None)
    sums, counts = _sums_and_counts(path, tensors)
    return RawImatrix(sums, counts, datasets, chunk_count, chunk_size, False, not missing, missing)


def _load_legacy(path: str, data: bytes) -> RawImatrix:
    """common_imatrix_load_legacy: ``int n_entries``, then per entry ``int32 len, name, int32 ncall,
    int32 nval, float[nval]``, then optionally ``int32 chunk_count, int32 len, dataset``."""
    cur = Cursor(io.BytesIO(data), path, len(data))
    n_entries = cur.unpack("<i", "entry count") if cur.remain >= 4 else 0
    if n_entries < 1:
        raise ImatrixError(f"{path}: no data in file (legacy imatrix with {n_entries} entries)")
    sums, counts = {}, {}
    for i in range(n_entries):
        where = f"entry {i + 1} of {n_entries}"
        try:
            name = _s(cstr(cur.take(cur.unpack("<i", where), where)))
        except GGUFTruncated:
            raise ImatrixError(f"{path}: failed reading name for {where} (file ends at byte {len(data)})") from None
        try:
            ncall, nval = cur.unpack("<i", where), cur.unpack("<i", where)
        except GGUFTruncated:
            nval = 0
        if nval < 1:
            raise ImatrixError(f"{path}: failed reading number of values for {where} {name!r}")
        try:
            values = np.frombuffer(cur.take(4 * nval, where), "<f4").astype(np.float32)
        except GGUFTruncated:
            raise ImatrixError(f"{path}: failed reading data for {where} {name!r}: {nval} values "
                               f"announced, {cur.remain // 4} left in the file") from None
        sums[name] = values  # a repeated name replaces the earlier entry (std::map operator[])
        counts[name] = np.array([ncall], np.int64)
    chunk_count, datasets = _legacy_trailer(cur)
    return RawImatrix(sums, counts, datasets, chunk_count, 0, True, False)


def _legacy_trailer(cur: Cursor) -> tuple[int, list[str]]:
    """The optional chunk count and dataset; istream::read keeps the bytes of a short read, so a partial
    chunk count counts."""
    if not cur.remain:
        return 0, []
    raw = cur.take(min(4, cur.remain), "chunk count")
    chunk_count = struct.unpack("<i", raw.ljust(4, b"\0"))[0]
    if len(raw) == 4 and cur.remain >= 4:
        length = cur.unpack("<i", "dataset")
        if 0 < length <= cur.remain:
            return chunk_count, [_s(cstr(cur.take(length, "dataset")))]
    return chunk_count, []


def _gguf_refusal(e: GGUFError) -> str:
    return f"file ends early ({e.detail})" if isinstance(e, GGUFTruncated) else e.problem


def load_raw(path: str | os.PathLike) -> RawImatrix:
    """common_imatrix_load: GGUF when gguf_init_from_file accepts the file, else the legacy layout."""
    spath = os.fsdecode(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImatrixError(f"{spath}: cannot read imatrix file: {e.strerror or e}") from None
    try:
        kvs, tensors = _read_gguf(spath, data)
    except GGUFError as gguf_error:
        try:
            return _load_legacy(spath, data)
        except ImatrixError as legacy_error:
            if data[:4] == b"GGUF":
                raise ImatrixError(f"{spath}: invalid GGUF imatrix: {_gguf_refusal(gguf_error)}") from None
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

    def metadata(self, imatrix_file: str | os.PathLike | None = None
                 ) -> list[tuple[str, GGUFValueType, str | bytes | int]]:
        """The same keys as llama_model_quantize_impl writes them: STRING, and int overrides as
        ``UINT32`` of ``(uint32_t) std::abs(val_i64)``."""
        return [(k, GGUFValueType.STRING, v) if tag == "str" else (k, GGUFValueType.UINT32, abs(v) & 0xFFFFFFFF)
                for k, tag, v in self.kv_overrides(imatrix_file)]


def _val_str(b: bytes) -> str | bytes:
    cut = cstr(b)[:127]
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


def _stats(entries: Mapping[str, np.ndarray],
           counts: Mapping[str, object]) -> list[tuple[bytes, np.ndarray, np.ndarray]]:
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


def _imatrix_tensors(entries: Mapping[str, np.ndarray], counts: Mapping[str, object]) -> list[tuple[OutTensor, bytes]]:
    """save_imatrix's tensors and their data: per entry ``NAME.in_sum2`` (ne0 x n_mat) and ``NAME.counts``
    (1 x n_mat), F32, in name order; entries without values or counts are left out."""
    out, seen = [], set()
    for name, values, cnt in _stats(entries, counts):
        if not values.size or not cnt.size:
            continue
        nmat = cnt.size
        for suffix, ne0, data in ((_SUM_SUFFIX, values.size // nmat, values),
                                  (_COUNT_SUFFIX, 1, cnt.astype(np.float32))):
            tname = (cstr(name) + suffix.encode())[:GGML_MAX_NAME - 1]  # ggml_format_name into char[64]
            if tname in seen:
                raise ValueError(f"duplicate tensor name {_s(tname)!r} (llama-imatrix aborts)")
            seen.add(tname)
            out.append((OutTensor(_s(tname), (ne0, nmat), T.F32), data.astype("<f4").tobytes()))
    return out


def gguf_imatrix_bytes(entries: Mapping[str, np.ndarray], counts: Mapping[str, object],
                       datasets: Sequence[str] = (), chunk_count: int = 0, chunk_size: int = 512) -> bytes:
    """The bytes ``save_imatrix`` writes (gguf_write_to_file of its context).

    ``entries``: raw summed squared activations per tensor, flat ``ne0 * n_mat`` float32 (expert-major);
    ``counts``: one integer per matrix (``n_mat`` of them; dense tensors have one). ``datasets``: the
    ``imatrix.datasets`` array (earlier files' datasets, then this run's prompt file); ``chunk_count``:
    ``m_last_chunk``; ``chunk_size``: ``n_ctx / n_parallel``.
    """
    kvs = KVList([
        encode_kv("general.type", GGUFValueType.STRING, "imatrix"),
        encode_kv(KV_DATASETS, GGUFValueType.ARRAY, [cstr(_b(d)) for d in datasets], GGUFValueType.STRING),
        encode_kv(KV_CHUNK_COUNT, GGUFValueType.UINT32, chunk_count & 0xFFFFFFFF),
        encode_kv(KV_CHUNK_SIZE, GGUFValueType.UINT32, chunk_size & 0xFFFFFFFF),
    ])
    tensors = _imatrix_tensors(entries, counts)
    data = b"".join(raw.ljust(pad(len(raw)), b"\0") for _, raw in tensors)
    return encode_header(kvs, [t for t, _ in tensors]) + data


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
