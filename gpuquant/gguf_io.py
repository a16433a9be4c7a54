"""Reading GGUF models (through the ``gguf`` package) and writing them the way llama-quantize does.

Output layout mirrors ``gguf_write_out`` (ggml/src/gguf.cpp) as driven by ``llama_model_quantize_impl``
(src/llama-quant.cpp): GGUF v3 header, the input's key/value pairs in order (raw bytes copied), then the keys
llama-quantize sets (each ``gguf_set_val_*`` removes a key and appends it at the end), tensor infos in
llama-quantize's tensor order with offsets padded to 32 bytes, meta padded to 32, then each tensor's data
padded to 32 bytes.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from gguf import GGUFReader, GGUFValueType

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
    """ggml_n_dims: trailing dimensions of size 1 do not count (at least 1)."""
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return n


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


def _decode(field) -> tuple[GGUFValueType, Any, GGUFValueType | None]:
    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[-1] if len(field.types) > 1 else GGUFValueType.UINT8
        if sub == GGUFValueType.STRING:
            return vtype, [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data], sub
        if not field.data:
            return vtype, [], sub
        return vtype, np.concatenate([field.parts[i] for i in field.data]).tolist(), sub
    if vtype == GGUFValueType.STRING:
        return vtype, bytes(field.parts[field.data[0]]).decode("utf-8", "replace"), None
    return vtype, field.parts[field.data[0]][0].item(), None


def _read_one(path: Path, split: int) -> tuple[list[KV], list[SourceTensor], int]:
    if not path.exists():
        raise GGUFError(f"{path}: no such file")
    if path.is_dir():
        raise GGUFError(f"{path}: is a directory, expected a .gguf file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    if len(head) < 8:
        raise GGUFError(f"{path}: truncated GGUF header ({size} bytes)")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in (2, 3):
        raise GGUFError(f"{path}: unsupported GGUF version {version} (gpuquant reads versions 2 and 3)")
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, struct.error, TypeError, UnicodeDecodeError,
            MemoryError, AssertionError, NotImplementedError, OSError) as e:
        raise GGUFError(f"{path}: cannot parse GGUF metadata: {type(e).__name__}: {e}") from None
    mm = reader.data
    kvs: list[KV] = []
    for fld in list(reader.fields.values())[3:]:  # the first three are the header (version, counts)
        nbytes = sum(int(p.nbytes) for p in fld.parts)
        raw = bytes(mm[fld.offset: fld.offset + nbytes])
        vtype, value, sub = _decode(fld)
        kvs.append(KV(fld.name, vtype, value, raw, sub))
    tensors = []
    for t in reader.tensors:
        ne = tuple(int(d) for d in t.field.parts[3])
        try:
            qtype = GGMLQuantizationType(int(t.tensor_type))
        except ValueError:
            raise GGUFError(f"{path}: tensor {t.name!r} has unknown ggml type id {int(t.tensor_type)}") from None
        nbytes = tensor_nbytes(qtype, ne)
        if t.data_offset + nbytes > size:
            raise GGUFError(
                f"{path}: truncated: tensor {t.name!r} needs bytes {t.data_offset}..{t.data_offset + nbytes} "
                f"but the file has {size} bytes"
            )
        tensors.append(SourceTensor(t.name, ne, qtype, path, int(t.data_offset), nbytes, split))
    del reader
    return kvs, tensors, version


def read_model(path: str | os.PathLike) -> GGUFModel:
    """Parse a GGUF file; a ``-00001-of-0000N.gguf`` first split pulls in all its splits."""
    path = Path(path)
    kvs, tensors, version = _read_one(path, 0)
    paths = [path]
    count = next((kv.value for kv in kvs if kv.key == "split.count"), 0) or 0
    if count > 1:
        m = SPLIT_RE.match(path.name)
        if not m or int(m.group("no")) != 1:
            raise GGUFError(f"{path}: is one split of {count}; pass the first split (-00001-of-{count:05d}.gguf)")
        for i in range(2, count + 1):
            p = path.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf")
            _, more, _ = _read_one(p, i - 1)
            tensors.extend(more)
            paths.append(p)
    names = set()
    for t in tensors:
        if t.name in names:
            raise GGUFError(f"{path}: duplicate tensor name {t.name!r}")
        names.add(t.name)
    return GGUFModel(path, kvs, tensors, paths, version)


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


# ---------------------------------------------------------------------------------------------- writing

_SCALAR_FMT = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d", GGUFValueType.BOOL: "<?",
}


def _str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def encode_kv(key: str, vtype: GGUFValueType, value: Any, subtype: GGUFValueType | None = None) -> KV:
    """Serialize one key/value pair as gguf_write_out does."""
    out = _str(key) + struct.pack("<I", int(vtype))
    if vtype == GGUFValueType.STRING:
        out += _str(value)
    elif vtype == GGUFValueType.ARRAY:
        assert subtype is not None
        out += struct.pack("<IQ", int(subtype), len(value))
        if subtype == GGUFValueType.STRING:
            out += b"".join(_str(v) for v in value)
        else:
            out += b"".join(struct.pack(_SCALAR_FMT[subtype], v) for v in value)
    else:
        out += struct.pack(_SCALAR_FMT[vtype], value)
    return KV(key, vtype, value, out, subtype)


class KVList:
    """Ordered key/values with gguf's semantics: setting a key removes it and appends it at the end."""

    def __init__(self, kvs: Iterable[KV]) -> None:
        self.items: list[KV] = list(kvs)

    def remove(self, key: str) -> None:
        self.items = [kv for kv in self.items if kv.key != key]

    def set(self, key: str, vtype: GGUFValueType, value: Any, subtype: GGUFValueType | None = None) -> None:
        self.remove(key)
        self.items.append(encode_kv(key, vtype, value, subtype))

    def get(self, key: str, default: Any = None) -> Any:
        return next((kv.value for kv in self.items if kv.key == key), default)


@dataclass
class OutTensor:
    name: str
    ne: tuple[int, ...]
    type: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.type, self.ne)


def encode_header(kvs: KVList, tensors: list[OutTensor]) -> bytes:
    """Header, key/values and tensor infos, padded to the alignment (gguf_get_meta_data)."""
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kvs.items))]
    parts += [kv.raw for kv in kvs.items]
    offset = 0
    for t in tensors:
        nd = n_dims(t.ne)
        parts.append(_str(t.name) + struct.pack("<I", nd) + struct.pack(f"<{nd}q", *t.ne[:nd])
                     + struct.pack("<iQ", int(t.type), offset))
        offset += pad(t.nbytes)
    meta = b"".join(parts)
    return meta + b"\0" * (pad(len(meta)) - len(meta))


def temp_path_for(dst: Path) -> Path:
    """The clearly named temporary file beside ``dst`` that becomes ``dst`` on success."""
    return dst.with_name(f".{dst.name}.gpuquant-partial-{os.getpid()}")


class StreamWriter:
    """Writes one output file sequentially into a temporary file beside the target, renamed on commit."""

    def __init__(self, dst: Path, header: bytes) -> None:
        self.dst = dst
        self.tmp = temp_path_for(dst)
        self._f = open(self.tmp, "wb")
        self.bytes_written = 0
        self.write(header)

    def write(self, data) -> None:
        mv = memoryview(data).cast("B")
        self._f.write(mv)
        self.bytes_written += mv.nbytes

    def pad(self) -> None:
        n = pad(self.bytes_written) - self.bytes_written
        if n:
            self.write(b"\0" * n)

    def commit(self) -> None:
        self._f.close()
        os.replace(self.tmp, self.dst)

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass
