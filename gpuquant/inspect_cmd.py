"""``gpuquant inspect``: what a GGUF model holds (metadata summary, tensors, totals), split models included."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from .gguf_constants import GGUFValueType
from rich.console import Console
from rich.table import Table

from .gguf_io import SPLIT_RE, GGUFModel, read_model

MiB = 1024.0 * 1024.0
ARRAY_HEAD = 6  # array elements shown before "..."

# the keys shown in the summary, in this order ({arch} is general.architecture)
SUMMARY_KEYS = (
    "general.architecture", "general.name", "general.file_type", "general.quantization_version",
    "{arch}.context_length", "{arch}.embedding_length", "{arch}.block_count", "{arch}.feed_forward_length",
    "{arch}.attention.head_count", "{arch}.attention.head_count_kv", "{arch}.expert_count",
    "{arch}.expert_used_count", "tokenizer.ggml.model", "split.count",
    "quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
)


@dataclass
class ModelInfo:
    model: GGUFModel
    requested: Path  # the file named on the command line


def human_size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} bytes"


def first_split(path: Path) -> Path:
    """``-0000K-of-0000N.gguf`` -> ``-00001-of-0000N.gguf``; other names unchanged."""
    m = SPLIT_RE.match(path.name)
    if m and int(m.group("no")) != 1:
        return path.with_name(f"{m.group('prefix')}-00001-of-{m.group('count')}.gguf")
    return path


def inspect_model(path: str | Path) -> ModelInfo:
    """Read a model (all splits of a split model, whichever split is named)."""
    path = Path(path)
    return ModelInfo(read_model(first_split(path)), path)


def _scalar(v: Any, vtype: GGUFValueType | None) -> str:
    if isinstance(v, str):
        return repr(v)
    if vtype == GGUFValueType.FLOAT32:
        return str(np.float32(v))  # the shortest text that reads back as the same float32
    return str(v)


def describe_value(vtype: GGUFValueType, value: Any, subtype: GGUFValueType | None = None) -> str:
    """A one-line rendering of a metadata value; long arrays are summarized."""
    if vtype == GGUFValueType.ARRAY:
        head = ", ".join(_scalar(v, subtype) for v in value[:ARRAY_HEAD])
        more = ", ..." if len(value) > ARRAY_HEAD else ""
        return f"[{len(value)} x {subtype.name if subtype else '?'}: {head}{more}]"
    if isinstance(value, str):
        return repr(value) if len(value) <= 120 else repr(value[:117]) + "..."
    return _scalar(value, vtype)


def _file_type_name(value: Any) -> str:
    from . import mixes

    try:
        return f"{value} ({mixes.ftype_name(int(value))})"
    except (ValueError, TypeError, KeyError):
        return str(value)


def summary(info: ModelInfo) -> list[tuple[str, str]]:
    m = info.model
    kv = {k.key: k for k in m.kvs}
    rows = []
    for pattern in SUMMARY_KEYS:
        key = pattern.format(arch=m.arch)
        if key not in kv:
            continue
        k = kv[key]
        text = _file_type_name(k.value) if key == "general.file_type" else describe_value(k.vtype, k.value, k.subtype)
        rows.append((key, text))
    tokens = kv.get("tokenizer.ggml.tokens")
    if tokens is not None:
        rows.append(("vocabulary", f"{len(tokens.value)} tokens"))
    return rows


def totals(m: GGUFModel) -> dict[str, Any]:
    by_type: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "bytes": 0, "n_elements": 0})
    for t in m.tensors:
        g = by_type[t.type.name]
        g["tensors"] += 1
        g["bytes"] += t.nbytes
        g["n_elements"] += t.n_elements
    n_el = m.n_elements
    return {
        "tensors": len(m.tensors), "n_elements": n_el, "bytes": m.nbytes,
        "file_bytes": sum(f.size for f in m.files), "bpw": m.nbytes * 8 / max(1, n_el),
        "by_type": {k: dict(v, bpw=v["bytes"] * 8 / max(1, v["n_elements"])) for k, v in sorted(by_type.items())},
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return "nan"
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return str(v)
    return v


def to_dict(info: ModelInfo) -> dict[str, Any]:
    m = info.model
    meta = {}
    for k in m.kvs:
        if k.vtype == GGUFValueType.ARRAY:
            meta[k.key] = {"type": f"ARRAY[{k.subtype.name if k.subtype else '?'}]", "length": len(k.value),
                           "head": [_jsonable(v) for v in k.value[:ARRAY_HEAD]]}
        else:
            meta[k.key] = {"type": k.vtype.name, "value": _jsonable(k.value)}
    return {
        "path": str(m.path),
        "files": [{"path": str(f.path), "version": f.version, "n_kv": f.n_kv, "n_tensors": f.n_tensors,
                   "size": f.size, "data_offset": f.data_offset, "alignment": f.alignment} for f in m.files],
        "architecture": m.arch,
        "metadata": meta,
        "tensors": [{"name": t.name, "shape": list(t.ne), "type": t.type.name, "bytes": t.nbytes,
                     "offset": t.offset, "split": t.split} for t in m.tensors],
        "totals": totals(m),
    }


def to_json(info: ModelInfo) -> str:
    return json.dumps(to_dict(info), indent=2)


def show(info: ModelInfo, console: Console, tensors: bool = True, all_metadata: bool = False) -> None:
    m = info.model
    head = Table(title=f"{m.path.name}", show_header=False)
    head.add_column("key", style="bold")
    head.add_column("value")
    for f in m.files:
        label = "file" if len(m.files) == 1 else f"split {m.files.index(f) + 1}/{len(m.files)}"
        head.add_row(label, f"{f.path}  (GGUF v{f.version}, {human_size(f.size)}, {f.n_kv} keys, "
                            f"{f.n_tensors} tensors)")
    for key, text in summary(info):
        head.add_row(key, text)
    console.print(head)

    if all_metadata:
        meta = Table(title="metadata")
        for col in ("key", "type", "value"):
            meta.add_column(col)
        for k in m.kvs:
            vt = k.vtype.name if k.subtype is None else f"{k.vtype.name}[{k.subtype.name}]"
            meta.add_row(k.key, vt, describe_value(k.vtype, k.value, k.subtype))
        console.print(meta)

    if tensors:
        split = len(m.files) > 1
        t = Table(title="tensors")
        cols = ["#", "name", "shape", "type", "MiB", "bpw"] + (["split"] if split else [])
        for col in cols:
            t.add_column(col, justify="right" if col in ("#", "MiB", "bpw", "split") else "left")
        for i, x in enumerate(m.tensors, 1):
            row = [str(i), x.name, " x ".join(str(d) for d in x.ne), x.type.name, f"{x.nbytes / MiB:.2f}",
                   f"{x.nbytes * 8 / max(1, x.n_elements):.3f}"]
            t.add_row(*(row + ([str(x.split + 1)] if split else [])))
        console.print(t)

    tot = totals(m)
    t = Table(title="totals")
    for col in ("type", "tensors", "parameters", "MiB", "bpw"):
        t.add_column(col, justify="left" if col == "type" else "right")
    for name, g in tot["by_type"].items():
        t.add_row(name, str(g["tensors"]), f"{g['n_elements']:,}", f"{g['bytes'] / MiB:.2f}", f"{g['bpw']:.3f}")
    t.add_row("[bold]total", str(tot["tensors"]), f"{tot['n_elements']:,}", f"{tot['bytes'] / MiB:.2f}",
              f"{tot['bpw']:.3f}")
    console.print(t)
