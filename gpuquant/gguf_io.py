"""The GGUF codec's reading half, and the model reader built on it.

:func:`parse_gguf` is the one GGUF parser: it mirrors ``gguf_init_from_file`` of ggml/src/gguf.cpp (ggml
0.3.36) check for check -- version rules, string and array limits, empty and duplicate keys, tensor names
(at most ``GGML_MAX_NAME - 1`` bytes, kept as ``ggml_set_name`` keeps them: cut at the first NUL), duplicate
names, ``GGML_MAX_DIMS``, the int64 element and SIZE_MAX byte overflow checks, the ggml type ids of 0.3.36,
``general.alignment``, the data offsets, and (``need_data``, gguf's ``no_alloc = false``) whether the tensor
data is all there -- and refuses what it refuses, with a message naming the file and the problem.

:func:`read_model` reads a model (all its splits) through it and adds the llama loader's own checks: the
types of the keys gpuquant reads, split files, tensors inside the file, no tensor name twice. ``gguf_writer``
is the writing half. ``imatrix`` reads GGUF imatrices through :func:`parse_gguf` too.
"""
from __future__ import annotations

import math
import os
import re
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from .gguf_constants import GGUFValueType

from .quants import QUANT_SIZES, GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT; llama-quantize's output context never changes it
SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

# ggml / gguf limits (ggml/include/ggml.h, ggml/src/gguf.cpp)
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64
GGUF_MAX_STRING_LENGTH = 1 << 30
GGUF_MAX_ARRAY_ELEMENTS = 1 << 30
INT64_MAX = (1 << 63) - 1
SIZE_MAX = (1 << 64) - 1
_MAX_TENSORS = SIZE_MAX // 344  # sizeof(gguf_tensor_info) on x86-64
_MAX_KVS = SIZE_MAX // 88  # sizeof(gguf_kv)

SCALAR_FMT = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d", GGUFValueType.BOOL: "<?",
}
_NP_DTYPE = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4", GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "<i1", GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}
_INT_TYPES = frozenset(_NP_DTYPE) - {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64, GGUFValueType.BOOL}
_VALUE_TYPES = {int(t): t for t in GGUFValueType if t != GGUFValueType.ARRAY}  # what an element can be
# every ggml type id of 0.3.36 with a block size (removed ids have none); gpuquant reads them all
_VALID_TYPE_IDS = {int(t): t for t in QUANT_SIZES}


class GGUFError(ValueError):
    """The input is not a GGUF file gpuquant can read; the message names file and problem.

    ``problem`` is the message without the file name."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = message if problem is None else problem


class GGUFTruncated(GGUFError):
    """The file ends before what its header announces; ``detail`` says where."""

    def __init__(self, path: Path | str, detail: str) -> None:
        super().__init__(f"{path}: truncated GGUF file: {detail}", f"truncated GGUF file: {detail}")
        self.detail = detail


def pad(n: int, align: int = ALIGNMENT) -> int:
    """GGML_PAD."""
    return (n + align - 1) // align * align


def tensor_nbytes(qtype: GGMLQuantizationType, ne: tuple[int, ...]) -> int:
    """ggml_nbytes of a contiguous tensor."""
    block_size, type_size = QUANT_SIZES[qtype]
    n = ne[0] // block_size * type_size
    for d in ne[1:]:
        n *= d
    return n


def n_dims(ne: tuple[int, ...]) -> int:
    """ggml_n_dims: 1 + the last axis longer than 1 (trailing dimensions of size 0 or 1 do not count)."""
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def cstr(b: bytes) -> bytes:
    """A ``std::string`` seen through ``c_str()``: cut at the first NUL."""
    return b.partition(b"\0")[0]


# ---------------------------------------------------------------------------------------------- parsing


@dataclass
class KV:
    """One key/value pair: decoded value for rules, raw bytes for a byte-exact copy.

    ``key`` and string values are what ggml's getters see (cut at the first NUL), decoded. ``raw`` is the
    pair as llama-quantize's output holds it (gguf_set_kv's copy): the file's bytes unless the key or a
    string holds a NUL (``c_str()`` cuts there) or a bool is neither 0 nor 1 (copied as 1)."""

    key: str
    vtype: GGUFValueType
    value: Any
    raw: bytes
    subtype: GGUFValueType | None = None

    @property
    def key_bytes(self) -> bytes:
        """The key as ``raw`` writes it."""
        return self.raw[8:8 + struct.unpack_from("<Q", self.raw)[0]]


@dataclass
class TensorInfo:
    """One tensor info as gguf_init_from_file keeps it."""

    name: str  # as ggml_set_name keeps it: cut at the first NUL, decoded
    ne: tuple[int, ...]  # the stored dimensions, ggml order ((1,) for none)
    type: GGMLQuantizationType
    offset: int  # from the start of the data section

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.type, self.ne)


@dataclass
class FileInfo:
    """Header facts of one GGUF file (one split)."""

    path: Path
    version: int
    n_kv: int
    n_tensors: int
    size: int
    data_offset: int  # gguf_get_data_offset
    alignment: int
    data_size: int = 0  # the data section, each tensor padded to the alignment


_U64 = struct.Struct("<Q")


class Cursor:
    """Sequential reads that never run past the end of the file (gguf.cpp's ``gguf_reader``).

    ``errors``: how names and string values are decoded from UTF-8 (``"replace"``, ``"surrogateescape"``)."""

    def __init__(self, f: BinaryIO, path: Path | str, size: int, errors: str = "replace") -> None:
        self.f, self.path, self.size, self.pos, self.errors = f, path, size, 0, errors

    @property
    def remain(self) -> int:
        return self.size - self.pos

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {problem}", problem)

    def truncated(self, detail: str) -> GGUFTruncated:
        return GGUFTruncated(self.path, detail)

    def text(self, b: bytes) -> str:
        """A name or string value as ggml's getters return it (``c_str()``), decoded."""
        return cstr(b).decode("utf-8", self.errors)

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.remain:
            raise self.truncated(f"it ends at byte {self.size} inside the {what} (byte {self.pos}, {n} bytes needed)")
        b = self.f.read(n)
        if len(b) != n:
            raise self.fail(f"the file shrank while being read (at byte {self.pos})")
        self.pos += n
        return b

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def _length(self, n: int, what: str) -> int:
        if n > GGUF_MAX_STRING_LENGTH:
            raise self.fail(f"corrupt {what}: string length {n} exceeds the GGUF maximum {GGUF_MAX_STRING_LENGTH}")
        return n

    def string(self, what: str) -> bytes:
        return self.take(self._length(self.unpack("<Q", what), what), what)

    def strings(self, n: int, what: str) -> list[bytes]:
        """``n`` length-prefixed strings, parsed from 1 MiB chunks (vocabularies hold ~10^5 of them)."""
        out: list[bytes] = []
        append, unpack = out.append, _U64.unpack_from
        buf, off, end = b"", 0, 0
        for _ in range(n):
            if end - off < 8:
                buf, off = buf[off:] + self._chunk(8 - (end - off), what), 0
                end = len(buf)
            ln = unpack(buf, off)[0]
            if ln > GGUF_MAX_STRING_LENGTH:
                self._length(ln, what)
            off += 8
            if end - off < ln:
                buf, off = buf[off:] + self._chunk(ln - (end - off), what), 0
                end = len(buf)
            append(buf[off:off + ln])
            off += ln
        self.pos -= end - off  # give back what was read ahead
        self.f.seek(self.pos)
        return out

    def _chunk(self, need: int, what: str) -> bytes:
        n = min(self.remain, max(need, 1 << 20))
        if n < need:
            raise self.truncated(f"it ends at byte {self.size} inside the {what}")
        return self.take(n, what)


def _show(key: str) -> str:
    """A key for a message: corrupt files can hold megabyte-long keys."""
    return repr(key) if len(key) <= 80 else repr(key[:80]) + f"... ({len(key)} characters)"


def gguf_string(b: bytes) -> bytes:
    """A GGUF string on the wire: uint64 length, then the bytes."""
    return struct.pack("<Q", len(b)) + b


def _read_key(cur: Cursor, i: int, seen: set[bytes]) -> bytes:
    key_b = cur.string(f"key of key/value pair {i}")
    if not key_b:
        raise cur.fail(f"corrupt metadata: key/value pair {i} has an empty key")
    if key_b in seen:  # the whole std::string, NULs included
        raise cur.fail(f"corrupt metadata: duplicate key {_show(key_b.decode('utf-8', 'replace'))}")
    seen.add(key_b)
    return key_b


def _read_value_type(cur: Cursor, what: str) -> tuple[int, int | None, GGUFValueType, int | None]:
    """``(type, array subtype, element type, array length)``; the element type is checked after the
    length is read, as gguf.cpp does."""
    vtype = cur.unpack("<i", what)
    sub = n = None
    if vtype == GGUFValueType.ARRAY:
        sub, n = cur.unpack("<i", what), cur.unpack("<Q", what)
    elem = _VALUE_TYPES.get(vtype if sub is None else sub)
    if elem is None:
        if sub == GGUFValueType.ARRAY:
            raise cur.fail(f"corrupt {what}: arrays of arrays are not valid GGUF")
        raise cur.fail(f"corrupt {what}: invalid GGUF value type {vtype if sub is None else sub}")
    return vtype, sub, elem, n


def _read_kv(cur: Cursor, i: int, seen: set[bytes]) -> KV:
    """One key/value pair (gguf_init_from_reader's KV loop), and the bytes llama-quantize copies it as."""
    start = cur.pos
    key_b = _read_key(cur, i, seen)
    key = cur.text(key_b)
    what = f"value of metadata key {_show(key)}"
    vtype, sub, elem, n = _read_value_type(cur, what)
    value_start = cur.pos
    if n is not None:
        value: Any = _read_array(cur, elem, n, what)
    elif elem == GGUFValueType.STRING:
        value = cur.string(what)
    else:
        value = cur.unpack(SCALAR_FMT[elem], what)
    end = cur.pos
    cur.f.seek(start)
    raw = cur.f.read(end - start)
    cur.f.seek(end)
    head, body = raw[:value_start - start], raw[value_start - start:]
    if elem == GGUFValueType.STRING:
        value, body = _strings(cur, value if n is not None else [value], body)
        value = value if n is not None else value[0]
    elif elem == GGUFValueType.BOOL and body.translate(None, b"\0\1"):
        body = bytes(x != 0 for x in body)  # gguf reads a bool as int8 != 0 and copies it as 0 or 1
    if b"\0" in key_b:
        head = gguf_string(cstr(key_b)) + head[8 + len(key_b):]
    return KV(key, GGUFValueType(vtype), value, head + body, None if sub is None else elem)


class StringList(Sequence):
    """A GGUF string array, decoded element by element when read: a vocabulary holds ~10^5 strings and
    quantizing reads none of them."""

    def __init__(self, strings: list[bytes], errors: str) -> None:
        self._raw, self._errors = strings, errors

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [cstr(b).decode("utf-8", self._errors) for b in self._raw[i]]
        return cstr(self._raw[i]).decode("utf-8", self._errors)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, (str, bytes)) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"StringList({len(self)} strings)"


def _strings(cur: Cursor, strings: list[bytes], body: bytes) -> tuple[StringList, bytes]:
    """The strings as ggml's getters see them (decoded when read), and their bytes as ``gguf_set_kv`` copies
    them: both through ``c_str()`` (cut at the first NUL); ``body`` (the file's bytes) when none holds a NUL."""
    values = StringList(strings, cur.errors)
    if b"\0" not in b"".join(strings):  # one scan in C (a vocabulary holds ~10^5 strings)
        return values, body
    return values, b"".join(gguf_string(cstr(b)) for b in strings)


def _read_array(cur: Cursor, elem: GGUFValueType, n: int, what: str) -> list:
    """gguf_reader::read(std::vector<T> &, n): element count limit, room for ``n`` elements, then each one
    (strings as bytes)."""
    if n > GGUF_MAX_ARRAY_ELEMENTS:
        raise cur.fail(f"corrupt {what}: array of {n} elements exceeds the GGUF maximum {GGUF_MAX_ARRAY_ELEMENTS}")
    if elem == GGUFValueType.STRING:
        if n * 8 > cur.remain:
            raise cur.truncated(f"{what} claims {n} strings, more than the {cur.remain} bytes left can hold")
        return cur.strings(n, what)
    dt = np.dtype(_NP_DTYPE[elem])
    arr = np.frombuffer(cur.take(n * dt.itemsize, what), dt)
    return (arr != 0).tolist() if elem == GGUFValueType.BOOL else arr.tolist()


def _read_shape(cur: Cursor, what: str) -> tuple[int, ...]:
    """n_dims and ne of a tensor info, with gguf.cpp's dimension, sign and int64 overflow checks."""
    nd = cur.unpack("<I", what)
    if nd > GGML_MAX_DIMS:
        raise cur.fail(f"corrupt {what}: {nd} dimensions (ggml allows at most {GGML_MAX_DIMS})")
    ne = []
    for j in range(nd):
        d = cur.unpack("<q", what)
        if d < 0:
            raise cur.fail(f"corrupt {what}: dimension {j} has {d} elements")
        ne.append(d)
    count = ne[0] if ne else 1
    for d in ne[1:]:
        if d > 1 and INT64_MAX // d < count:
            raise cur.fail(f"corrupt {what}: shape {ne} has {math.prod(ne)} elements, more than ggml can address")
        count *= d
    return tuple(ne) or (1,)


def _read_tensor_info(cur: Cursor, i: int, seen: set[bytes]) -> TensorInfo:
    """One tensor info (name, ne, type, offset) with gguf.cpp's checks."""
    name_b = cur.string(f"name of tensor info {i}")
    name = name_b.decode("utf-8", "replace")  # for messages
    if len(name_b) >= GGML_MAX_NAME:
        raise cur.fail(f"corrupt tensor info {i}: name {name[:80]!r} is {len(name_b)} bytes long "
                       f"(ggml allows at most {GGML_MAX_NAME - 1})")
    if name_b in seen:
        raise cur.fail(f"corrupt tensor info {i}: duplicate tensor name {name!r}")
    seen.add(name_b)
    what = f"tensor info of {name!r}"
    ne = _read_shape(cur, what)
    tid = cur.unpack("<i", what)
    qtype = _VALID_TYPE_IDS.get(tid)
    if qtype is None:
        raise cur.fail(f"tensor {name!r} has unknown ggml type id {tid} (gpuquant reads: "
                       f"{', '.join(t.name for t in sorted(QUANT_SIZES))})")
    block, type_size = QUANT_SIZES[qtype]
    if ne[0] % block:
        raise cur.fail(f"corrupt {what}: {ne[0]} elements per row is not a multiple of the "
                       f"{qtype.name} block size {block}")
    if math.prod(ne) // block > SIZE_MAX // type_size:
        raise cur.fail(f"corrupt {what}: shape {list(ne)} of {qtype.name} is more than SIZE_MAX bytes")
    return TensorInfo(cur.text(name_b), ne, qtype, cur.unpack("<Q", what))


def _data_section(cur: Cursor, infos: list[TensorInfo], alignment: int, need_data: str | None) -> tuple[int, int]:
    """Where the data section starts and its size: the aligned seek, then each offset and size checked."""
    data_offset = pad(cur.pos, alignment) if infos else cur.pos
    if data_offset > cur.size:
        raise cur.truncated(f"the tensor data should start at byte {data_offset} but the file has {cur.size} bytes")
    size = 0
    for t in infos:
        if t.offset != size:
            raise cur.fail(f"corrupt tensor info of {t.name!r}: data offset {t.offset}, expected {size} "
                           f"(tensors are stored in order, each padded to {alignment} bytes)")
        padded = pad(t.nbytes, alignment)
        if t.nbytes > SIZE_MAX - (alignment - 1) or SIZE_MAX - size < padded:
            raise cur.fail(f"corrupt tensor info of {t.name!r}: the tensor data would exceed SIZE_MAX bytes")
        if need_data == "tensors" and data_offset + size + t.nbytes > cur.size:
            start, shape = data_offset + size, " x ".join(str(d) for d in t.ne)
            raise cur.fail(f"truncated GGUF file or corrupt tensor info: tensor {t.name!r} ({shape}, "
                           f"{t.type.name}) needs bytes {start}..{start + t.nbytes} but the file has {cur.size} bytes")
        size += padded
    if need_data == "section" and size > cur.size - data_offset:
        raise cur.truncated(f"the tensor data ends at byte {data_offset + size} but the file has {cur.size} bytes")
    return data_offset, size


def _read_header(cur: Cursor) -> tuple[int, int, int]:
    """Magic, version, tensor and key/value counts."""
    head = cur.f.read(4)
    if head != GGUF_MAGIC:
        if len(head) < 4:
            raise cur.fail(f"not a GGUF file ({cur.size} bytes, too short to hold the GGUF magic)")
        raise cur.fail(f"not a GGUF file (starts with {head!r}, expected b'GGUF')")
    cur.pos = 4
    version = cur.unpack("<I", "GGUF header")
    if version == 0 or version & 0xFFFF == 0:
        raise cur.fail(f"unsupported GGUF version {version} (a corrupt header, or a big-endian "
                       f"file: gpuquant reads little-endian GGUF versions 2 and 3)")
    if version == 1 or version > GGUF_VERSION:
        raise cur.fail(f"unsupported GGUF version {version} (gpuquant, like llama.cpp, reads versions 2 and 3)")
    n_tensors, n_kv = cur.unpack("<q", "GGUF header"), cur.unpack("<q", "GGUF header")
    if not (0 <= n_tensors <= _MAX_TENSORS and 0 <= n_kv <= _MAX_KVS):
        raise cur.fail(f"corrupt GGUF header: {n_tensors} tensors, {n_kv} key/value pairs")
    return version, n_tensors, n_kv


def _alignment(cur: Cursor, kvs: list[KV]) -> int:
    kv = find_kv(kvs, "general.alignment")
    if kv is None:
        return ALIGNMENT
    if kv.vtype != GGUFValueType.UINT32:
        sub = f" of {kv.subtype.name}" if kv.subtype is not None else ""
        raise cur.fail(f"metadata key 'general.alignment' has type {kv.vtype.name}{sub}, but must be of type UINT32")
    if kv.value == 0 or kv.value & (kv.value - 1):
        raise cur.fail(f"general.alignment {kv.value} is not a power of 2")
    return kv.value


def parse_gguf(f: BinaryIO, path: Path | str, size: int, *, errors: str = "replace",
               need_data: str | None = None) -> tuple[list[KV], list[TensorInfo], FileInfo]:
    """``gguf_init_from_file`` on the open file ``f`` of ``size`` bytes: key/values, tensor infos, layout.

    Raises :class:`GGUFError` (:class:`GGUFTruncated` when the file ends early) where gguf.cpp refuses the
    file. ``need_data``: ``"section"``, the whole data section must be in the file (gguf's ``no_alloc =
    false``); ``"tensors"``, each tensor's bytes must be (the llama loader's bounds check, made while the
    offsets are walked so that the message names the first tensor at fault); None, no check.
    """
    cur = Cursor(f, path, size, errors)
    version, n_tensors, n_kv = _read_header(cur)
    seen: set[bytes] = set()
    kvs = [_read_kv(cur, i, seen) for i in range(n_kv)]
    alignment = _alignment(cur, kvs)
    seen = set()
    infos = [_read_tensor_info(cur, i, seen) for i in range(n_tensors)]
    data_offset, data_size = _data_section(cur, infos, alignment, need_data)
    return kvs, infos, FileInfo(Path(path), version, n_kv, n_tensors, size, data_offset, alignment, data_size)


def find_kv(kvs: list[KV], key: str) -> KV | None:
    """gguf_find_key: the first pair with this key."""
    return next((kv for kv in kvs if kv.key == key), None)


# ---------------------------------------------------------------------------------------------- models


@dataclass
class SourceTensor:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    type: GGMLQuantizationType
    path: Path
    offset: int  # absolute byte offset of the data in ``path``
    nbytes: int
    split: int = 0

    @property
    def n_per_row(self) -> int:
        return self.ne[0]

    @property
    def nrows(self) -> int:
        n = 1
        for d in self.ne[1:]:
            n *= d
        return n

    @property
    def n_elements(self) -> int:
        return self.ne[0] * self.nrows


@dataclass
class GGUFModel:
    """The metadata of one model (all split files) and where each tensor's bytes lie."""

    path: Path
    kvs: list[KV]
    tensors: list[SourceTensor]
    split_paths: list[Path] = field(default_factory=list)
    version: int = GGUF_VERSION
    files: list[FileInfo] = field(default_factory=list)  # one per split

    def kv(self, key: str, default: Any = None) -> Any:
        kv = find_kv(self.kvs, key)
        return default if kv is None else kv.value

    @property
    def kv_dict(self) -> dict[str, Any]:
        return {kv.key: kv.value for kv in self.kvs}

    @property
    def arch(self) -> str:
        return str(self.kv("general.architecture", "unknown"))

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


# keys gpuquant reads, and the kind of value llama.cpp's loader insists on for them; no key may be empty
# up to its first NUL (llama-quantize's copy of the metadata aborts on that)
_STRING_KEYS = ("general.architecture",)
_INT_KEYS = ("general.file_type", "general.quantization_version", "split.no", "split.count")
_INT_SUFFIXES = (".block_count", ".expert_count", ".nextn_predict_layers")
_INT_OR_ARRAY_SUFFIXES = (".attention.head_count", ".attention.head_count_kv")


def _check_known_keys(path: Path, kvs: list[KV]) -> None:
    for i, kv in enumerate(kvs):
        k, vt = kv.key, kv.vtype
        if not kv.key_bytes:  # gguf_set_kv copies key.c_str(): GGML_ASSERT(!key.empty()) aborts
            raise GGUFError(f"{path}: metadata key/value pair {i} has a key that starts with a NUL byte "
                            f"(llama-quantize aborts copying it)")
        if k in _STRING_KEYS:
            ok = vt == GGUFValueType.STRING
            want = "a string"
        elif k in _INT_KEYS or k.endswith(_INT_SUFFIXES):
            ok = vt in _INT_TYPES
            want = "an integer"
        elif k.endswith(_INT_OR_ARRAY_SUFFIXES):
            ok = vt in _INT_TYPES or (vt == GGUFValueType.ARRAY and kv.subtype in _INT_TYPES)
            want = "an integer or an array of integers"
        else:
            continue
        if not ok:
            sub = f" of {kv.subtype.name}" if kv.subtype is not None else ""
            raise GGUFError(f"{path}: metadata key {k!r} has type {vt.name}{sub}, but must be {want}")


def _read_one(path: Path, split: int) -> tuple[list[KV], list[SourceTensor], FileInfo]:
    """Parse one GGUF file's metadata the way llama's loader does, refusing what it refuses."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise GGUFError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GGUFError(f"{path}: is a directory, expected a .gguf file") from None
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise GGUFError(f"{path}: not a regular file")
        kvs, infos, info = parse_gguf(f, path, st.st_size, need_data="tensors")
    _check_known_keys(path, kvs)
    tensors = [SourceTensor(t.name, t.ne, t.type, path, info.data_offset + t.offset, t.nbytes, split) for t in infos]
    return kvs, tensors, info


def read_model(path: str | os.PathLike) -> GGUFModel:
    """Parse a GGUF file; a ``-00001-of-0000N.gguf`` first split pulls in all its splits."""
    path = Path(path)
    kvs, tensors, info = _read_one(path, 0)
    paths, files = [path], [info]
    count = next((kv.value for kv in kvs if kv.key == "split.count"), 0) or 0
    if count > 1:
        m = SPLIT_RE.match(path.name)
        if not m or int(m.group("no")) != 1:
            raise GGUFError(f"{path}: is one split of {count}; pass the first split (-00001-of-{count:05d}.gguf)")
        for i in range(2, count + 1):
            p = path.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf")
            if not p.exists():
                raise GGUFError(f"{p}: split {i} of {count} is missing (the model is split over {count} files)")
            skvs, more, sinfo = _read_one(p, i - 1)
            no = next((kv.value for kv in skvs if kv.key == "split.no"), None)
            if no is not None and no != i - 1:
                raise GGUFError(f"{p}: split.no is {no}, expected {i - 1} for split {i} of {count}")
            tensors.extend(more)
            paths.append(p)
            files.append(sinfo)
    names = set()
    for t in tensors:
        if t.name in names:
            raise GGUFError(f"{path}: duplicate tensor name {t.name!r}")
        names.add(t.name)
    return GGUFModel(path, kvs, tensors, paths, info.version, files)


def read_rows(t: SourceTensor, first_byte: int, buf: np.ndarray, nbytes: int, fd: int | None = None) -> None:
    """Read ``nbytes`` of tensor ``t`` starting ``first_byte`` into ``buf`` (no memory map held open)."""
    view = memoryview(buf)[:nbytes]
    own = fd is None
    if own:
        fd = os.open(t.path, os.O_RDONLY)
    try:
        done = 0
        while done < nbytes:
            n = os.preadv(fd, [view[done:]], t.offset + first_byte + done)
            if n <= 0:
                raise GGUFError(f"{t.path}: truncated while reading tensor {t.name!r}")
            done += n
    finally:
        if own:
            os.close(fd)
