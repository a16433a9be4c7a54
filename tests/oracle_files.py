"""Whole-file oracle: llama-quantize's pipeline (``llama_model_quantize`` of llama-cpp-python 0.3.36),
driven the way tools/quantize/quantize.cpp drives it (kv overrides, imatrix metadata keys in its order)."""
from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

import numpy as np


# llama_model_kv_override tags
KV_INT, KV_FLOAT, KV_BOOL, KV_STR = 0, 1, 2, 3


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def first_difference(a: str | Path, b: str | Path) -> str:
    """Where two files first differ, for assertion messages."""
    da, db = Path(a).read_bytes(), Path(b).read_bytes()
    n = min(len(da), len(db))
    diff = np.flatnonzero(np.frombuffer(da[:n], np.uint8) != np.frombuffer(db[:n], np.uint8))
    where = int(diff[0]) if diff.size else n
    return f"sizes {len(da)} vs {len(db)}, first differing byte at offset {where}"


_LOG_CALLBACK = None


def _silence(lc) -> None:
    """Route llama.cpp's log to nowhere (the callback must stay referenced for the process lifetime)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = lc.llama_log_callback(lambda level, text, user: None)
        lc.llama_log_set(_LOG_CALLBACK, None)


def oracle_quantize_file(src, dst, ftype: int, *, nthread: int = 2, allow_requantize: bool = False,
                         pure: bool = False, leave_output_tensor: bool = False,
                         output_tensor_type: int | None = None, token_embedding_type: int | None = None,
                         tensor_types: list[tuple[str, int]] | None = None,
                         imatrix: dict[str, np.ndarray] | None = None,
                         kv_overrides: list[tuple[str, int, object]] | None = None,
                         prune_layers: list[int] | None = None, max_buf_size: int = 0,
                         keep_split: bool = False) -> None:
    """Run llama_model_quantize; raises RuntimeError when it fails."""
    import llama_cpp as lc

    _silence(lc)
    p = lc.llama_model_quantize_default_params()
    p.nthread = nthread
    p.ftype = ftype
    p.allow_requantize = allow_requantize
    p.pure = pure
    p.quantize_output_tensor = not leave_output_tensor
    p.max_buf_size = max_buf_size
    p.keep_split = keep_split
    if output_tensor_type is not None:
        p.output_tensor_type = output_tensor_type
    if token_embedding_type is not None:
        p.token_embedding_type = token_embedding_type
    keep = []
    if imatrix:
        arrs = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in imatrix.items()}
        keep.append(arrs)
        data = (lc.llama_model_imatrix_data * (len(arrs) + 1))()
        for i, (k, v) in enumerate(arrs.items()):
            data[i].name = k.encode()
            data[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            data[i].size = v.size
        keep.append(data)
        p.imatrix = data
    if kv_overrides:
        kvs = (lc.llama_model_kv_override * (len(kv_overrides) + 1))()
        for i, (key, tag, val) in enumerate(kv_overrides):
            kvs[i].key = key.encode()
            kvs[i].tag = tag
            if tag == KV_INT:
                kvs[i].value.val_i64 = int(val)
            elif tag == KV_FLOAT:
                kvs[i].value.val_f64 = float(val)
            elif tag == KV_BOOL:
                kvs[i].value.val_bool = bool(val)
            else:
                kvs[i].value.val_str = str(val).encode()[:127]
        keep.append(kvs)
        p.kv_overrides = kvs
    if tensor_types:
        tts = (lc.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pat, t) in enumerate(tensor_types):
            tts[i].pattern = pat.encode()
            tts[i].type = int(t)
        tts[len(tensor_types)].pattern = None
        tts[len(tensor_types)].type = 43  # GGML_TYPE_COUNT terminator
        keep.append(tts)
        p.tt_overrides = tts
    if prune_layers:
        arr = (ctypes.c_int32 * (len(prune_layers) + 1))(*prune_layers, -1)
        keep.append(arr)
        p.prune_layers = arr
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, ftype {ftype}) failed with {rc}")


# ------------------------------------------------------------------------------------- helpers of the file tests

def ftype_id(name: str) -> int:
    """The llama_ftype id of a QUANT_OPTIONS name."""
    from gpuquant import mixes

    return int(mixes.parse_ftype(name).ftype)


def assert_same(ours, ref):
    assert sha256(ours) == sha256(ref), first_difference(ours, ref)


def write_imatrix(model_path, path, fmt: str, seed: int = 3):
    """An imatrix of both llama.cpp formats for every matrix of ``model_path`` (per-expert counts for 3-D)."""
    import gguf
    import numpy as np

    from gpuquant.imatrix import write_gguf_imatrix, write_legacy_imatrix

    rng = np.random.default_rng(seed)
    entries, counts = {}, {}
    for t in gguf.GGUFReader(str(model_path)).tensors:
        ne = [int(x) for x in t.shape]
        if len(ne) < 2 or max(ne[1:]) <= 1:
            continue
        n_mat = ne[2] if len(ne) > 2 else 1
        entries[t.name] = (rng.random(ne[0] * n_mat, dtype=np.float32) * np.float32(40)).astype(np.float32)
        counts[t.name] = [int(c) for c in rng.integers(1, 300, n_mat)] if fmt == "gguf" else [7]
    writer = write_gguf_imatrix if fmt == "gguf" else write_legacy_imatrix
    writer(path, entries, counts, datasets=["synthetic.txt"], chunk_count=12)
    return path


def oracle_with_imatrix(src, dst, ftype: str, imatrix_path, **kw):
    """What llama-quantize --imatrix does: load, normalize, pass data and the quantize.imatrix.* keys."""
    from gpuquant.imatrix import prepare

    imat = prepare(imatrix_path)
    kvs = [(k, KV_STR if tag == "str" else KV_INT, v) for k, tag, v in imat.kv_overrides(str(imatrix_path))]
    oracle_quantize_file(src, dst, ftype_id(ftype), imatrix=imat.entries, kv_overrides=kvs, **kw)
