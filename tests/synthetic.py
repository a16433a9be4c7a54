"""Small synthetic GGUF models that llama.cpp's loader accepts, for tests of the mixes and the pipeline.

Every builder writes deterministic (seeded) random weights with ``gguf.GGUFWriter`` and returns the path.
Shapes follow the arch's ``load_arch_tensors`` (llama.cpp src/models/<arch>.cpp) so that the files also
load for inference; the defaults are tiny (a few million weights) so that llama-quantize runs in seconds.

- :func:`write_llama`: grouped-query attention, F16/F32/BF16 weights with F32 norms, tied or separate
  output; the default ``n_ff`` (288) is a multiple of 32 but not of 256, so ``ffn_down`` (row length n_ff)
  needs the K-quant shape fallback, and ``n_ff=80`` even forces the F16 fallback.
- :func:`write_qwen3moe`: mixture of experts with 3-D expert tensors (``ffn_*_exps``) and a router.
- :func:`write_falcon`: fused ``attn_qkv`` and the falcon-specific rules.
- :func:`fake_imatrix`: importance weights for every matrix of a file, keyed like an imatrix.
"""
from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np

__all__ = ["write_llama", "write_qwen3moe", "write_falcon", "fake_imatrix", "FILE_TYPE"]

# general.file_type that convert_hf_to_gguf.py writes for each weight dtype
FILE_TYPE = {"F32": 0, "F16": 1, "BF16": 32}
_AUTO = object()


class _Builder:
    """Collects tensors in writing order; ``ne`` is the ggml shape (``ne[0]`` = row length)."""

    def __init__(self, path, arch: str, dtype: str, seed: int, f32_weights: tuple[str, ...]):
        if dtype not in FILE_TYPE:
            raise ValueError(f"dtype must be one of {sorted(FILE_TYPE)}, got {dtype!r}")
        self.path = Path(path)
        self.writer = gguf.GGUFWriter(os.fspath(path), arch)
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.f32_weights = f32_weights

    def weight(self, name: str, *ne: int, scale: float = 0.02) -> None:
        """A matrix (or stack of expert matrices) in the model dtype, F32 if named in ``f32_weights``."""
        data = (self.rng.standard_normal(tuple(reversed(ne)), dtype=np.float32) * np.float32(scale))
        dtype = "F32" if any(s in name for s in self.f32_weights) else self.dtype
        if dtype == "F32":
            self.writer.add_tensor(name, data)
        elif dtype == "F16":
            self.writer.add_tensor(name, data.astype(np.float16))
        else:
            raw = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
            self.writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.BF16)

    def attention(self, i: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int) -> None:
        """Layer ``i``'s attention norm and separate q/k/v/output projections (grouped-query when
        ``n_head_kv < n_head``)."""
        self.f32(f"blk.{i}.attn_norm.weight", n_embd)
        self.weight(f"blk.{i}.attn_q.weight", n_embd, n_head * head_dim)
        self.weight(f"blk.{i}.attn_k.weight", n_embd, n_head_kv * head_dim)
        self.weight(f"blk.{i}.attn_v.weight", n_embd, n_head_kv * head_dim)
        self.weight(f"blk.{i}.attn_output.weight", n_head * head_dim, n_embd)

    def f32(self, name: str, *ne: int, around: float = 1.0) -> None:
        """A norm / bias / router vector, always F32 (as converters write them)."""
        data = np.float32(around) + self.rng.standard_normal(tuple(reversed(ne)), dtype=np.float32) * np.float32(0.1)
        self.writer.add_tensor(name, data.astype(np.float32))

    def vocab(self, n_vocab: int) -> None:
        """A minimal sentencepiece vocabulary: unk, bos, eos, the 256 byte tokens, then filler pieces."""
        if n_vocab < 259:
            raise ValueError(f"n_vocab must be at least 259 (3 specials + 256 bytes), got {n_vocab}")
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        tokens += [f"\u2581t{i}" for i in range(n_vocab - len(tokens))]
        T = gguf.TokenType
        types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256 + [T.NORMAL] * (n_vocab - 259)
        w = self.writer
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * 259 + [-float(i) for i in range(n_vocab - 259)])
        w.add_token_types([int(t) for t in types])
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)

    def finish(self, file_type) -> Path:
        w = self.writer
        if file_type is _AUTO:
            file_type = FILE_TYPE[self.dtype]
        if file_type is not None:
            w.add_file_type(file_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return self.path


def _attention_keys(w: gguf.GGUFWriter, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx=256):
    w.add_name("gpuquant synthetic")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)


def write_llama(path, *, n_layer: int = 10, n_embd: int = 256, n_head: int = 8, n_head_kv: int = 2,
                n_ff: int = 288, n_vocab: int = 288, tied: bool = False, dtype: str = "F16",
                f32_weights: tuple[str, ...] = ("ffn_gate",), file_type=_AUTO, seed: int = 0) -> Path:
    """A llama model (``models/llama.cpp``). With ``tied`` there is no ``output.weight``.

    ``f32_weights``: name substrings of matrices stored as F32 whatever ``dtype`` is (F16 and F32 sources
    in one file). ``file_type``: ``general.file_type`` to write (default: from ``dtype``; None: omit).
    """
    b = _Builder(path, "llama", dtype, seed, f32_weights)
    head_dim = n_embd // n_head
    _attention_keys(b.writer, n_embd, n_layer, n_head, n_head_kv, n_ff)
    b.writer.add_rope_dimension_count(head_dim)
    b.writer.add_layer_norm_rms_eps(1e-5)
    b.writer.add_rope_freq_base(10000.0)
    b.writer.add_vocab_size(n_vocab)
    b.vocab(n_vocab)

    b.weight("token_embd.weight", n_embd, n_vocab)
    for i in range(n_layer):
        b.attention(i, n_embd, n_head, n_head_kv, head_dim)
        b.f32(f"blk.{i}.ffn_norm.weight", n_embd)
        b.weight(f"blk.{i}.ffn_gate.weight", n_embd, n_ff)
        b.weight(f"blk.{i}.ffn_down.weight", n_ff, n_embd)
        b.weight(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
    b.f32("output_norm.weight", n_embd)
    if not tied:
        b.weight("output.weight", n_embd, n_vocab)
    return b.finish(file_type)


def write_qwen3moe(path, *, n_layer: int = 4, n_embd: int = 256, n_head: int = 8, n_head_kv: int = 4,
                   head_dim: int = 32, n_expert: int = 8, n_expert_used: int = 2, n_ff_exp: int = 64,
                   n_vocab: int = 288, tied: bool = False, dtype: str = "F16",
                   f32_weights: tuple[str, ...] = (), file_type=_AUTO, seed: int = 0) -> Path:
    """A qwen3moe model (``models/qwen3moe.cpp``): experts as 3-D ``ffn_{gate,up,down}_exps``.

    The default ``n_ff_exp`` (64) is not a multiple of 256, so ``ffn_down_exps`` needs the shape fallback.
    """
    b = _Builder(path, "qwen3moe", dtype, seed, f32_weights)
    w = b.writer
    _attention_keys(w, n_embd, n_layer, n_head, n_head_kv, n_ff_exp * n_expert_used)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1000000.0)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_expert_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    b.vocab(n_vocab)

    b.weight("token_embd.weight", n_embd, n_vocab)
    for i in range(n_layer):
        b.attention(i, n_embd, n_head, n_head_kv, head_dim)
        b.f32(f"blk.{i}.attn_q_norm.weight", head_dim)
        b.f32(f"blk.{i}.attn_k_norm.weight", head_dim)
        b.f32(f"blk.{i}.ffn_norm.weight", n_embd)
        b.f32(f"blk.{i}.ffn_gate_inp.weight", n_embd, n_expert, around=0.0)
        b.weight(f"blk.{i}.ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert)
        b.weight(f"blk.{i}.ffn_down_exps.weight", n_ff_exp, n_embd, n_expert)
        b.weight(f"blk.{i}.ffn_up_exps.weight", n_embd, n_ff_exp, n_expert)
    b.f32("output_norm.weight", n_embd)
    if not tied:
        b.weight("output.weight", n_embd, n_vocab)
    return b.finish(file_type)


def write_falcon(path, *, n_layer: int = 4, n_embd: int = 256, n_head: int = 8, n_head_kv: int = 1,
                 n_ff: int = 1024, n_vocab: int = 288, tied: bool = False, dtype: str = "F16",
                 f32_weights: tuple[str, ...] = (), file_type=_AUTO, seed: int = 0) -> Path:
    """A falcon model (``models/falcon.cpp``): fused ``attn_qkv``, layer norms with biases."""
    b = _Builder(path, "falcon", dtype, seed, f32_weights)
    head_dim = n_embd // n_head
    _attention_keys(b.writer, n_embd, n_layer, n_head, n_head_kv, n_ff)
    b.writer.add_layer_norm_eps(1e-5)
    b.vocab(n_vocab)

    b.weight("token_embd.weight", n_embd, n_vocab)
    b.f32("output_norm.weight", n_embd)
    b.f32("output_norm.bias", n_embd, around=0.0)
    if not tied:
        b.weight("output.weight", n_embd, n_vocab)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        b.f32(f"blk.{i}.attn_norm.bias", n_embd, around=0.0)
        b.weight(f"blk.{i}.attn_qkv.weight", n_embd, n_embd + 2 * n_head_kv * head_dim)
        b.weight(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        b.weight(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
        b.weight(f"blk.{i}.ffn_down.weight", n_ff, n_embd)
    return b.finish(file_type)


def fake_imatrix(path, seed: int = 1) -> dict[str, np.ndarray]:
    """Positive importance weights for every matrix of a GGUF file: name -> float32 ``(ne[2] * ne[0],)``.

    Keys are the input tensor names (as llama-imatrix writes them), sizes what llama-quantize checks.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for t in gguf.GGUFReader(os.fspath(path)).tensors:
        ne = [int(x) for x in t.shape]
        if len(ne) < 2 or max(ne[1:]) <= 1:
            continue
        n_mat = ne[2] if len(ne) > 2 else 1
        out[t.name] = (rng.random(ne[0] * n_mat, dtype=np.float32) + np.float32(0.5)).astype(np.float32)
    return out


def write_splits(src: Path, dst: Path, max_tensors: int) -> list[Path]:
    """Re-write ``src`` as shards of at most ``max_tensors`` tensors with the gguf package's split writer."""
    r = gguf.GGUFReader(src)
    arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")
    w = gguf.GGUFWriter(dst, arch, split_max_tensors=max_tensors)
    for f in list(r.fields.values())[3:]:
        if f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=tuple(reversed([int(x) for x in t.shape])),
                     raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sorted(dst.parent.glob(f"{dst.stem}-*-of-*.gguf"))
