"""Memory stays bounded by the slab budget, whatever the model size.

A ~200 MB F16 model (200x the 1 MiB slab budget) is quantized by the CLI in a child process; its peak RSS
(``ru_maxrss`` from ``os.wait4``) must stay under 1 GB and within a few MiB of the same command on a
tiny model. The child is started from a small launcher process: ``ru_maxrss`` also counts what the child
shared with its parent before ``exec``, so forking straight from pytest would measure pytest.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from gpuquant.gguf_io import pad, read_model
from gpuquant.gguf_writer import KVList, OutTensor, encode_header
from gpuquant.quants import GGMLQuantizationType as T
from tests.synthetic import write_llama

ROOT = Path(__file__).resolve().parents[1]
GB = 1 << 30
MiB = 1 << 20

LAUNCHER = r"""
import json, os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = p.stderr.read()
_, status, ru = os.wait4(p.pid, 0)
print(json.dumps({"status": status, "maxrss_kib": ru.ru_maxrss, "stderr": err.decode()[-2000:]}))
"""


def peak_rss(*args) -> int:
    """Peak RSS in bytes of ``python -m gpuquant ARGS`` (Linux reports ru_maxrss in KiB)."""
    r = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "gpuquant", *map(str, args)],
                       capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    doc = json.loads(r.stdout)
    assert doc["status"] == 0, doc["stderr"]
    return doc["maxrss_kib"] * 1024


def write_big_llama(path: Path, template: Path, n_layer: int = 8, n_embd: int = 1024, n_ff: int = 2816) -> int:
    """A llama of ``n_layer`` layers, streamed to disk from a reused block of random F16 values (fast);
    metadata from ``template``. Returns the file size."""
    kvs = KVList(read_model(template).kvs)
    for key, value in (("llama.block_count", n_layer), ("llama.embedding_length", n_embd),
                       ("llama.feed_forward_length", n_ff), ("llama.attention.head_count", 8),
                       ("llama.attention.head_count_kv", 8), ("llama.rope.dimension_count", n_embd // 8)):
        kvs.set(key, GGUFValueType.UINT32, value)
    n_vocab = len(kvs.get("tokenizer.ggml.tokens"))
    tensors = [OutTensor("token_embd.weight", (n_embd, n_vocab), T.F16)]
    for i in range(n_layer):
        tensors += [OutTensor(f"blk.{i}.attn_norm.weight", (n_embd,), T.F32)]
        tensors += [OutTensor(f"blk.{i}.attn_{w}.weight", (n_embd, n_embd), T.F16) for w in ("q", "k", "v", "output")]
        tensors += [OutTensor(f"blk.{i}.ffn_norm.weight", (n_embd,), T.F32),
                    OutTensor(f"blk.{i}.ffn_gate.weight", (n_embd, n_ff), T.F16),
                    OutTensor(f"blk.{i}.ffn_down.weight", (n_ff, n_embd), T.F16),
                    OutTensor(f"blk.{i}.ffn_up.weight", (n_embd, n_ff), T.F16)]
    tensors += [OutTensor("output_norm.weight", (n_embd,), T.F32), OutTensor("output.weight", (n_embd, n_vocab), T.F16)]
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(1 << 21, dtype=np.float32) * np.float32(0.02)).astype(np.float16).tobytes()
    with open(path, "wb") as f:
        f.write(encode_header(kvs, tensors))
        for t in tensors:
            n = t.nbytes
            if t.type == T.F32:
                f.write(np.ones(n // 4, np.float32).tobytes())
            else:
                for i in range(0, n, len(block)):
                    f.write(block[: min(len(block), n - i)])
            f.write(b"\0" * (pad(n) - n))
    return path.stat().st_size


def test_peak_rss_is_bounded_by_the_slab_budget_not_the_model(tmp_path):
    tiny = write_llama(tmp_path / "tiny.gguf", n_layer=1)
    big = tmp_path / "big.gguf"
    size = write_big_llama(big, tiny)
    assert size > 150 * MiB
    args = ("Q4_0", "--pure", "--device", "cpu", "--threads", "2", "--max-buffer-size", "1", "--quiet")
    small_peak = peak_rss("run", tiny, tmp_path / "tiny-q.gguf", *args)
    big_peak = peak_rss("run", big, tmp_path / "big-q.gguf", *args)
    out = {t.name: t for t in read_model(tmp_path / "big-q.gguf").tensors}
    assert out["blk.7.ffn_down.weight"].type == T.Q4_0 and len(out) == 8 * 9 + 3  # the whole model was written
    assert big_peak < 1 * GB, f"peak RSS {big_peak / MiB:.0f} MiB"
    # the model is ~200 MiB bigger; the process must not grow with it
    assert big_peak - small_peak < 48 * MiB, (f"peak RSS {big_peak / MiB:.0f} MiB for a {size / MiB:.0f} MiB model vs "
                                              f"{small_peak / MiB:.0f} MiB for a tiny one")
