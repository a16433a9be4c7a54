"""Writing GGUF files the way llama-quantize does (``gguf_write_out`` of ggml/src/gguf.cpp as driven by
``llama_model_quantize_impl`` of src/llama-quant.cpp).

GGUF v3 header, the input's key/value pairs in order (as ``gguf_set_kv`` copies them, see ``KV.raw``), then
the keys llama-quantize sets (each ``gguf_set_val_*`` removes a key and appends it at the end), tensor infos
in llama-quantize's tensor order with offsets padded to 32 bytes, meta padded to 32, then each tensor's data
padded to 32 bytes.
Everything goes to a temporary file beside the target, renamed on commit.
"""
from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .gguf_constants import GGUFValueType

from .gguf_io import GGUF_MAGIC, GGUF_VERSION, KV, SCALAR_FMT, gguf_string, n_dims, pad, tensor_nbytes
from .quants import GGMLQuantizationType


def _str(s: str | bytes) -> bytes:
    """A GGUF string; ``str`` is UTF-8 (surrogate escapes give back the bytes they stand for)."""
    return gguf_string(s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s)


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
            out += b"".join(struct.pack(SCALAR_FMT[subtype], v) for v in value)
    else:
        out += struct.pack(SCALAR_FMT[vtype], value)
    return KV(key, vtype, value, out, subtype)


class KVList:
    """Ordered key/values with gguf's semantics: setting a key removes it and appends it at the end."""

    def __init__(self, kvs: Iterable[KV]) -> None:
        """``gguf_set_kv`` into an empty context: a pair replaces an earlier one with the same key (keys
        are compared as ``raw`` writes them: cut at the first NUL)."""
        latest: dict[bytes, KV] = {}
        for kv in kvs:
            latest.pop(kv.key_bytes, None)
            latest[kv.key_bytes] = kv
        self.items: list[KV] = list(latest.values())

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


class OutputError(OSError):
    """The output file could not be created or written; the message names it and the reason."""


def _why(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e} ({name})" if name else str(e.strerror or e)


# copy_file_range not available for this pair of files: fall back to write
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.ETXTBSY}


class StreamWriter:
    """Writes one output file sequentially into a temporary file beside the target, renamed on commit.

    The temporary file ``.NAME.gpuquant-partial-PID`` is the only thing that can be left behind (by a
    SIGKILL); any failure raises :class:`OutputError` and :meth:`abort` removes it.
    """

    def __init__(self, dst: Path, header: bytes) -> None:
        self.dst = dst
        self.tmp = temp_path_for(dst)
        try:
            self._f = open(self.tmp, "wb")
        except OSError as e:
            raise OutputError(e.errno, f"output: cannot create a file in {str(dst.parent)!r}: {_why(e)}") from None
        self.header_bytes = len(header)
        self.bytes_written = 0
        self.write(header)

    def write(self, data) -> None:
        mv = memoryview(data).cast("B")
        try:
            self._f.write(mv)
        except OSError as e:
            raise self._failed(e) from None
        self.bytes_written += mv.nbytes

    def copy_range(self, data, src_fd: int, src_offset: int) -> None:
        """Append ``data``, which are the bytes of ``src_fd`` at ``src_offset``, copied by the kernel
        (``copy_file_range``: no pass through user memory, as ``cp`` does); ``write(data)`` where the file
        systems cannot."""
        n = memoryview(data).nbytes
        try:
            self._f.flush()
            fd, done = self._f.fileno(), 0
            while done < n:
                k = os.copy_file_range(src_fd, fd, n - done, src_offset + done)
                if k <= 0:
                    break
                done += k
        except OSError as e:
            if e.errno not in _NO_COPY_RANGE:
                raise self._failed(e) from None
            done = 0
        self.bytes_written += done
        self._f.seek(self.bytes_written)  # the file object's idea of its position, after the kernel's copy
        if done < n:  # not supported here (or short): the rest through write
            self.write(memoryview(data).cast("B")[done:])

    def _failed(self, e: OSError) -> OutputError:
        hint = " (disk full, quota or file size limit)" if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else ""
        return OutputError(e.errno, f"output: writing {str(self.dst)!r} failed after {self.bytes_written} bytes: "
                                    f"{_why(e)}{hint}; nothing was written at {str(self.dst)!r}")

    def pad(self) -> None:
        n = pad(self.bytes_written) - self.bytes_written
        if n:
            self.write(b"\0" * n)

    def rewind(self) -> None:
        """Back to just after the header (to write the tensor data again, e.g. with smaller slabs)."""
        try:
            self._f.seek(self.header_bytes)
            self._f.truncate()
        except OSError as e:
            raise self._failed(e) from None
        self.bytes_written = self.header_bytes

    def commit(self) -> None:
        try:
            self._f.close()
            os.replace(self.tmp, self.dst)
        except OSError as e:
            raise self._failed(e) from None

    def abort(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass  # the close flushes; a full disk fails it again
        finally:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass
