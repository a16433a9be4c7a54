"""Reading GGUF models with the checks of ggml/src/gguf.cpp (``gguf_init_from_file``) and clear messages,
and the size helpers shared with the writer (``gguf_writer``)."""
from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from .gguf_constants import GGUFValueType

from .quants import QUANT_SIZES, GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT; llama-quantize's output context never changes it
SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class GGUFError(ValueError):
    """The input is not a GGUF file gpuquant can read; the message names file and problem."""


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


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class KV:
    """One key/value pair: decoded value for rules, raw bytes for a byte-exact copy."""

    key: str
    vtype: GGUFValueType
    value: Any
    raw: bytes
    subtype: GGUFValueType | None = None


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
    files: list["FileInfo"] = field(default_factory=list)  # one per split

    def kv(self, key: str, default: Any = None) -> Any:
        for kv in self.kvs:
            if kv.key == key:
                return kv.value
        return default

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


# ggml / gguf limits (ggml/include/ggml.h, ggml/src/gguf.cpp)
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64
GGUF_MAX_STRING_LENGTH = 1 << 30
GGUF_MAX_ARRAY_ELEMENTS = 1 << 30
INT64_MAX = (1 << 63) - 1

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
_VALID_TYPE_IDS = {int(t): t for t in QUANT_SIZES}


class _Cursor:
    """Sequential reads that never run past the end of the file (gguf.cpp's ``gguf_reader``)."""

    def __init__(self, f, path: Path, size: int) -> None:
        self.f, self.path, self.size, self.pos = f, path, size, 0

    def fail(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.path}: {msg}")

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise self.fail(f"truncated GGUF file: it ends at byte {self.size} inside the {what} "
                            f"(byte {self.pos}, {n} bytes needed)")
        b = self.f.read(n)
        if len(b) != n:
            raise self.fail(f"the file shrank while being read (at byte {self.pos})")
        self.pos += n
        return b

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> bytes:
        n = self.unpack("<Q", what)
        if n > GGUF_MAX_STRING_LENGTH:
            raise self.fail(f"corrupt {what}: string length {n} exceeds the GGUF maximum {GGUF_MAX_STRING_LENGTH}")
        return self.take(n, what)

    def strings(self, n: int, what: str) -> list[str]:
        """``n`` length-prefixed strings, parsed from 1 MiB chunks (vocabularies hold ~10^5 of them)."""
        out = []
        buf, off = b"", 0
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(n):
            if len(buf) - off < 8:
                buf, off = buf[off:] + self._chunk(8 - (len(buf) - off), what), 0
            (ln,) = unpack(buf, off)
            off += 8
            if ln > GGUF_MAX_STRING_LENGTH:
                raise self.fail(f"corrupt {what}: string length {ln} exceeds the GGUF maximum {GGUF_MAX_STRING_LENGTH}")
            if len(buf) - off < ln:
                buf, off = buf[off:] + self._chunk(ln - (len(buf) - off), what), 0
            out.append(buf[off:off + ln].decode("utf-8", "replace"))
            off += ln
        self.pos -= len(buf) - off  # give back what was read ahead
        self.f.seek(self.pos)
        return out

    def _chunk(self, need: int, what: str) -> bytes:
        n = min(self.size - self.pos, max(need, 1 << 20))
        if n < need:
            raise self.fail(f"truncated GGUF file: it ends at byte {self.size} inside the {what}")
        b = self.f.read(n)
        if len(b) != n:
            raise self.fail(f"the file shrank while being read (at byte {self.pos})")
        self.pos += n
        return b

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.unpack("<i", what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"corrupt {what}: invalid GGUF value type {raw}") from None


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _show(key: str) -> str:
    """A key for a message: corrupt files can hold megabyte-long keys."""
    return repr(key) if len(key) <= 80 else repr(key[:80]) + f"... ({len(key)} characters)"


def _read_kv(cur: _Cursor, i: int) -> KV:
    """One key/value pair (gguf_init_from_reader's KV loop), with its raw bytes for a byte-exact copy."""
    start = cur.pos
    key_b = cur.string(f"key of key/value pair {i}")
    if not key_b:
        raise cur.fail(f"corrupt metadata: key/value pair {i} has an empty key")
    key = _text(key_b)
    what = f"value of metadata key {_show(key)}"
    vtype = cur.value_type(what)
    sub = None
    if vtype == GGUFValueType.ARRAY:
        sub = cur.value_type(what)
        if sub == GGUFValueType.ARRAY:
            raise cur.fail(f"corrupt {what}: arrays of arrays are not valid GGUF")
        n = cur.unpack("<Q", what)
        if n > GGUF_MAX_ARRAY_ELEMENTS:
            raise cur.fail(f"corrupt {what}: array of {n} elements exceeds the GGUF maximum {GGUF_MAX_ARRAY_ELEMENTS}")
        if sub == GGUFValueType.STRING:
            if n * 8 > cur.size - cur.pos:
                raise cur.fail(f"truncated GGUF file: {what} claims {n} strings, more than the "
                               f"{cur.size - cur.pos} bytes left can hold")
            value: Any = cur.strings(n, what)
        else:
            dt = np.dtype(_NP_DTYPE[sub])
            arr = np.frombuffer(cur.take(n * dt.itemsize, what), dt)
            value = (arr != 0).tolist() if sub == GGUFValueType.BOOL else arr.tolist()
    elif vtype == GGUFValueType.STRING:
        value = _text(cur.string(what))
    else:
        value = cur.unpack(SCALAR_FMT[vtype], what)
        if vtype == GGUFValueType.BOOL:
            value = bool(value)
    end = cur.pos
    cur.f.seek(start)
    raw = cur.f.read(end - start)
    cur.f.seek(end)
    return KV(key, vtype, value, raw, sub)


# keys gpuquant reads, and the kind of value llama.cpp's loader insists on for them
_STRING_KEYS = ("general.architecture",)
_INT_KEYS = ("general.file_type", "general.quantization_version", "split.no", "split.count")
_INT_SUFFIXES = (".block_count", ".expert_count", ".nextn_predict_layers")
_INT_OR_ARRAY_SUFFIXES = (".attention.head_count", ".attention.head_count_kv")


def _check_known_keys(cur: _Cursor, kvs: list[KV]) -> None:
    for kv in kvs:
        k, vt = kv.key, kv.vtype
        if k in _STRING_KEYS:
            ok = vt == GGUFValueType.STRING
            want = "a string"
        elif k in _INT_KEYS or k.endswith(_INT_SUFFIXES):
            ok = vt in _INT_TYPES
            want = "an integer"
        elif k.endswith(_INT_OR_ARRAY_SUFFIXES):
            ok = vt in _INT_TYPES or (vt == GGUFValueType.ARRAY and kv.subtype in _INT_TYPES)
            want = "an integer or an array of integers"
        elif k == "general.alignment":
            ok = vt == GGUFValueType.UINT32
            want = "of type UINT32"
        else:
            continue
        if not ok:
            sub = f" of {kv.subtype.name}" if kv.subtype is not None else ""
            raise cur.fail(f"metadata key {k!r} has type {vt.name}{sub}, but must be {want}")


def _read_tensor_info(cur: _Cursor, i: int, names: set[str]) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
    """One tensor info (name, ne, type, offset) with gguf.cpp's checks."""
    name_b = cur.string(f"name of tensor info {i}")
    name = _text(name_b)
    if len(name_b) >= GGML_MAX_NAME:
        raise cur.fail(f"corrupt tensor info {i}: name {name[:80]!r} is {len(name_b)} bytes long "
                       f"(ggml allows at most {GGML_MAX_NAME - 1})")
    if name in names:
        raise cur.fail(f"corrupt tensor info {i}: duplicate tensor name {name!r}")
    names.add(name)
    what = f"tensor info of {name!r}"
    nd = cur.unpack("<I", what)
    if nd > GGML_MAX_DIMS:
        raise cur.fail(f"corrupt {what}: {nd} dimensions (ggml allows at most {GGML_MAX_DIMS})")
    ne = tuple(cur.unpack("<q", what) for _ in range(nd)) or (1,)
    for j, d in enumerate(ne):
        if d < 0:
            raise cur.fail(f"corrupt {what}: dimension {j} has {d} elements")
    count = 1
    for d in ne:
        count *= d
    if count > INT64_MAX:
        raise cur.fail(f"corrupt {what}: shape {list(ne)} has {count} elements, more than ggml can address")
    tid = cur.unpack("<i", what)
    qtype = _VALID_TYPE_IDS.get(tid)
    if qtype is None:
        raise cur.fail(f"tensor {name!r} has unknown ggml type id {tid} (gpuquant reads: "
                       f"{', '.join(t.name for t in sorted(QUANT_SIZES))})")
    block = QUANT_SIZES[qtype][0]
    if ne[0] % block:
        raise cur.fail(f"corrupt {what}: {ne[0]} elements per row is not a multiple of the "
                       f"{qtype.name} block size {block}")
    offset = cur.unpack("<Q", what)
    return name, ne, qtype, offset


@dataclass
class FileInfo:
    """Header facts of one GGUF file (one split)."""

    path: Path
    version: int
    n_kv: int
    n_tensors: int
    size: int
    data_offset: int
    alignment: int


def _read_one(path: Path, split: int) -> tuple[list[KV], list[SourceTensor], FileInfo]:
    """Parse one GGUF file's metadata the way ``gguf_init_from_file`` does, refusing what it refuses."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise GGUFError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GGUFError(f"{path}: is a directory, expected a .gguf file") from None
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise GGUFError(f"{path}: not a regular file")
        size = os.fstat(f.fileno()).st_size
        cur = _Cursor(f, path, size)
        head = f.read(4)
        if head != GGUF_MAGIC:
            if len(head) < 4:
                raise GGUFError(f"{path}: not a GGUF file ({size} bytes, too short to hold the GGUF magic)")
            raise GGUFError(f"{path}: not a GGUF file (starts with {head!r}, expected b'GGUF')")
        cur.pos = 4
        version = cur.unpack("<I", "GGUF header")
        if version == 0 or version & 0xFFFF == 0:
            raise GGUFError(f"{path}: unsupported GGUF version {version} (a corrupt header, or a big-endian "
                            f"file: gpuquant reads little-endian GGUF versions 2 and 3)")
        if version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version} (gpuquant, like llama.cpp, reads "
                            f"versions 2 and 3)")
        n_tensors = cur.unpack("<q", "GGUF header")
        n_kv = cur.unpack("<q", "GGUF header")
        if n_tensors < 0 or n_kv < 0:
            raise GGUFError(f"{path}: corrupt GGUF header: {n_tensors} tensors, {n_kv} key/value pairs")
        kvs: list[KV] = []
        seen: set[str] = set()
        for i in range(n_kv):
            kv = _read_kv(cur, i)
            if kv.key in seen:
                raise cur.fail(f"corrupt metadata: duplicate key {_show(kv.key)}")
            seen.add(kv.key)
            kvs.append(kv)
        _check_known_keys(cur, kvs)
        alignment = next((kv.value for kv in kvs if kv.key == "general.alignment"), ALIGNMENT)
        if alignment == 0 or alignment & (alignment - 1):
            raise cur.fail(f"general.alignment {alignment} is not a power of 2")
        infos = []
        names: set[str] = set()
        for i in range(n_tensors):
            infos.append(_read_tensor_info(cur, i, names))
    data_offset = pad(cur.pos, alignment)
    if n_tensors and data_offset > size:
        raise GGUFError(f"{path}: truncated GGUF file: the tensor data should start at byte {data_offset} "
                        f"but the file has {size} bytes")
    tensors = []
    expected = 0
    for name, ne, qtype, offset in infos:
        if offset != expected:
            raise GGUFError(f"{path}: corrupt tensor info of {name!r}: data offset {offset}, expected {expected} "
                            f"(tensors are stored in order, each padded to {alignment} bytes)")
        nbytes = tensor_nbytes(qtype, ne)
        start = data_offset + offset
        if start + nbytes > size:
            shape = " x ".join(str(d) for d in ne)
            raise GGUFError(f"{path}: truncated GGUF file or corrupt tensor info: tensor {name!r} "
                            f"({shape}, {qtype.name}) needs bytes {start}..{start + nbytes} but the file has "
                            f"{size} bytes")
        tensors.append(SourceTensor(name, ne, qtype, path, start, nbytes, split))
        expected = offset + pad(nbytes, alignment)
    return kvs, tensors, FileInfo(path, version, n_kv, n_tensors, size, data_offset, alignment)


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
