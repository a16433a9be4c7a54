"""``--resume``: outputs that survive an interruption of any kind and continue where they stopped.

Beside each output file ``NAME`` the run keeps ``.NAME.gpuquant-resume`` (the partial file, the header then
whole tensors) and ``.NAME.gpuquant-journal`` (JSON lines): the first line records what the output depends
on (the input files' sizes and header digests, the options, the imatrix digest, gpuquant's version, the
output header's digest); every later line is one finished tensor ``{"t": index, "end": offset, "crc": crc32}``,
appended only after the tensor's bytes were fsync'ed, then fsync'ed itself. A resumed run checks the
dependencies (a difference is refused, naming it, unless ``force``), re-reads every journaled tensor and
keeps the longest prefix whose offsets and checksums match; it continues after it. A torn last journal line,
a partial file cut anywhere, or a header that does not match are all handled by keeping less (down to a
clear restart). The file is renamed into place when complete; the journal goes once every file of the
output is in place (with ``--keep-split``, finished split files are checked and skipped).
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .gguf_io import pad
from .gguf_writer import OutputError, _why

JOURNAL_VERSION = 1
CHUNK = 8 << 20
#: options that do not change the bytes of an output
NEUTRAL_OPTIONS = ("device", "threads", "slab_bytes", "force", "dry_run", "resume")


class ResumeMismatch(ValueError):
    """The partial output was made from other inputs or options; the message says what differs."""


def partial_path(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.gpuquant-resume")


def journal_path(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.gpuquant-journal")


def _sha256_file(path: Path, nbytes: int | None = None) -> str:
    st = os.stat(path)
    return _sha256_cached(str(path), nbytes, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, nbytes: int | None, size: int, mtime_ns: int) -> str:
    """SHA-256 of the first ``nbytes`` of a file (all of it for None), once per job for a file unchanged
    (size, mtime) however many outputs depend on it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = nbytes
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def dependencies(model, cfg, header: bytes, split: tuple[int, int]) -> dict[str, Any]:
    """What the bytes of one output file depend on, as recorded in (and compared with) its journal."""
    from . import __version__

    options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in NEUTRAL_OPTIONS}
    return json.loads(json.dumps({
        "gpuquant": __version__,
        "inputs": [{"file": Path(fi.path).name, "size": fi.size, "header_sha256": _sha256_file(fi.path, fi.data_offset)}
                   for fi in model.files],
        "options": options,
        "imatrix_sha256": _sha256_file(Path(cfg.imatrix)) if cfg.imatrix else None,
        "output_header_sha256": hashlib.sha256(header).hexdigest(),
        "split": list(split),
    }, default=list))


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Readable paths of what differs between two dependency records."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and where != "options":
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {old!r} then, {new!r} now"]


@dataclass
class Entry:
    t: int  # tensor index in the job
    end: int  # file offset after its padded bytes
    crc: int


@dataclass
class ResumeState:
    """Where one output file stands: ``fresh`` (start after the header), ``partial`` (continue after the
    verified ``entries``) or ``finished`` (the file is in place and checked)."""

    kind: str
    entries: list[Entry] = field(default_factory=list)
    note: str = ""
    deps: dict = field(default_factory=dict)  # what the file depends on (the journal's first line)

    @property
    def done(self) -> set[int]:
        return {e.t for e in self.entries}

    @property
    def offset(self) -> int:
        return self.entries[-1].end if self.entries else 0


def _read_journal(path: Path) -> tuple[dict | None, list[Entry]]:
    """The dependency record and the entries up to the first torn or unreadable line."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError:
        return None, []
    try:
        head = json.loads(lines[0])
        deps = head["deps"] if head.get("journal") == JOURNAL_VERSION else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, []
    entries = []
    for line in lines[1:]:
        try:
            d = json.loads(line)
            entries.append(Entry(int(d["t"]), int(d["end"]), int(d["crc"])))
        except (ValueError, KeyError, TypeError):
            break
    return deps, entries


def _verified(path: Path, header: bytes, entries: list[Entry],
              layout: list[tuple[int, int]]) -> tuple[bool, list[Entry]]:
    """Whether ``path`` starts with ``header``, and the longest prefix of ``entries`` whose bytes match:
    each tensor at the offset ``layout`` (tensor index, end offset) expects, with its checksum."""
    good: list[Entry] = []
    try:
        with open(path, "rb") as f:
            if f.read(len(header)) != header:
                return False, []
            start = len(header)
            for e, (t, end) in zip(entries, layout):
                if e.t != t or e.end != end:
                    break
                crc, left = 0, end - start
                while left > 0:
                    chunk = f.read(min(CHUNK, left))
                    if not chunk:
                        break
                    crc = zlib.crc32(chunk, crc)
                    left -= len(chunk)
                if left or crc != e.crc:
                    break
                good.append(e)
                start = end
    except OSError:
        return False, []
    return True, good


def file_layout(header_len: int, tensors: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(tensor index, end offset) of each tensor of one file, from its (index, data bytes) in file order."""
    out, pos = [], header_len
    for t, nbytes in tensors:
        pos += pad(nbytes)
        out.append((t, pos))
    return out


def inspect(dst: Path, header: bytes, deps: dict, layout: list[tuple[int, int]], force: bool) -> ResumeState:
    """Where output file ``dst`` stands; a partial output made differently is refused unless ``force``."""
    jpath, ppath = journal_path(dst), partial_path(dst)
    if not jpath.exists():
        return ResumeState("fresh", note="" if not ppath.exists() else f"{ppath.name}: no journal; started over")
    old, entries = _read_journal(jpath)
    if old is None:
        return ResumeState("fresh", note=f"{jpath.name}: unreadable journal; started over")
    diff = differences(old, deps)
    if diff:
        if not force:
            raise ResumeMismatch(f"--resume: the partial output of {str(dst)!r} was made differently: "
                                 f"{'; '.join(diff)}; pass --force to start it over")
        return ResumeState("fresh", note=f"{dst.name}: made differently ({'; '.join(diff)}); started over (--force)")
    target = ppath if ppath.exists() else dst if dst.exists() else None
    if target is None:
        return ResumeState("fresh", note=f"{dst.name}: journal without a partial file; started over")
    header_ok, kept = _verified(target, header, entries, layout)
    if not header_ok:
        return ResumeState("fresh", note=f"{target.name}: its header is incomplete; started over")
    complete = len(kept) == len(layout)
    if target == dst:
        if complete:
            return ResumeState("finished", kept, f"{dst.name}: complete and checked; skipped")
        return ResumeState("fresh", note=f"{dst.name}: in place but fails its journal's checks; written again")
    if not kept:
        return ResumeState("fresh", note=f"{dst.name}: no tensor was durably written; started over")
    lost = len(entries) - len(kept)
    note = f"{dst.name}: resumed after {len(kept)} of {len(layout)} tensors"
    if lost:
        note += f" ({lost} journaled tensor(s) failed their checks and are written again)"
    return ResumeState("partial", kept, note)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ResumeWriter:
    """A StreamWriter that writes into the partial file beside ``dst`` and journals every finished tensor
    once it is durable; ``abort`` keeps both, for the next ``--resume``."""

    def __init__(self, dst: Path, header: bytes, deps: dict, state: ResumeState) -> None:
        self.dst, self.tmp, self.journal = dst, partial_path(dst), journal_path(dst)
        self.header_bytes = len(header)
        self._deps = deps
        self._initial = list(state.entries)
        self.entries = list(state.entries)
        self._crc = 0
        try:
            self._f = open(self.tmp, "r+b" if state.kind == "partial" else "w+b")
            self._write_journal()
        except OSError as e:
            raise OutputError(e.errno, f"output: cannot create a file in {str(dst.parent)!r}: {_why(e)}") from None
        if state.kind == "partial":
            self.bytes_written = state.offset
            self._truncate(state.offset)
        else:
            self.bytes_written = 0
            self.write(header)

    def _write_journal(self) -> None:
        """The journal with its dependency record and ``self.entries``, replaced atomically."""
        tmp = self.journal.with_name(self.journal.name + ".new")
        text = json.dumps({"journal": JOURNAL_VERSION, "deps": self._deps}) + "\n"
        text += "".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in self.entries)
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.journal)
        _fsync_dir(self.journal.parent)

    def _truncate(self, offset: int) -> None:
        try:
            self._f.seek(offset)
            self._f.truncate()
        except OSError as e:
            raise self._failed(e) from None

    def _failed(self, e: OSError) -> OutputError:
        hint = " (disk full, quota or file size limit)" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
        return OutputError(e.errno, f"output: writing {str(self.tmp)!r} failed after {self.bytes_written} bytes: "
                                    f"{_why(e)}{hint}; the partial output is kept for --resume")

    def write(self, data) -> None:
        mv = memoryview(data).cast("B")
        try:
            self._f.write(mv)
        except OSError as e:
            raise self._failed(e) from None
        if self.bytes_written >= self.header_bytes:
            self._crc = zlib.crc32(mv, self._crc)
        self.bytes_written += mv.nbytes

    def pad(self) -> None:
        n = pad(self.bytes_written) - self.bytes_written
        if n:
            self.write(b"\0" * n)

    def tensor_done(self, index: int) -> None:
        """The tensor's bytes are on disk (fsync), then its journal line (fsync)."""
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            e = Entry(index, self.bytes_written, self._crc)
            with open(self.journal, "a") as j:
                j.write(json.dumps(dataclasses.asdict(e)) + "\n")
                j.flush()
                os.fsync(j.fileno())
        except OSError as err:
            raise self._failed(err) from None
        self.entries.append(e)
        self._crc = 0

    def rewind(self) -> None:
        """Back to where this run started (to write the rest again, e.g. with smaller slabs)."""
        self.entries = list(self._initial)
        self.bytes_written = self._initial[-1].end if self._initial else self.header_bytes
        self._truncate(self.bytes_written)
        self._crc = 0
        self._write_journal()

    def commit(self) -> None:
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.tmp, self.dst)
            _fsync_dir(self.dst.parent)
        except OSError as e:
            raise self._failed(e) from None

    def abort(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass


def finish(dsts: list[Path]) -> None:
    """Every file of an output is in place: its journals go."""
    for d in dsts:
        for p in (journal_path(d), partial_path(d)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
    if dsts:
        _fsync_dir(dsts[0].parent)


def discard(dst: Path) -> None:
    """Remove a partial output and its journal (a run without --resume never leaves them)."""
    finish([dst])
