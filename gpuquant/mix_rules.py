"""The per-tensor type rules of llama-quantize's k-quant mixes, as tables.

Mirrors ``llama_tensor_get_type_impl`` and ``tensor_get_category`` of llama.cpp ``src/llama-quant.cpp``
(the copy vendored in llama-cpp-python 0.3.36). The upstream function is one long if/else chain; here each
tensor category gets a table ``{file type: rule}`` and a short function that walks the chain in the
upstream order. A rule takes the :class:`Ctx` of the tensor and returns the new type, or ``None`` to keep
the type it was given. Within one category every file type appears in at most one upstream branch (a
file type whose branch condition fails never reaches another branch that names it), so a dict lookup
reproduces the chain exactly.

Counters (``i_attention_wv``, ``i_ffn_down``, ...) advance exactly where upstream advances them; they live
in :class:`MixState`, one per ``plan()`` call, like ``quantize_state_impl``.

Also here, as the other per-tensor tables: ``tensor_allows_quantization``, ``tensor_type_fallback`` and
``tensor_requires_imatrix``.

Bottom layer: imports :mod:`gpuquant.quants` (the type table) only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Callable

from .quants import QUANT_SIZES
from .quants import GGMLQuantizationType as T

__all__ = ["Category", "Ctx", "LlamaFType", "MixState", "allows_quantization", "blk_layer",
           "block_size", "get_type_impl", "is_attn_v", "is_quantized", "requires_imatrix",
           "tensor_category", "type_fallback", "type_name", "use_more_bits"]


def block_size(qtype) -> int:
    """``ggml_blck_size``."""
    return QUANT_SIZES[qtype][0]


def is_quantized(qtype) -> bool:
    """``ggml_is_quantized``: every type but the plain float / integer ones."""
    return qtype not in (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)


def type_name(qtype) -> str:
    return qtype.name


class LlamaFType(IntEnum):
    """``enum llama_ftype`` of llama.h (the ``LLAMA_FTYPE_`` / ``MOSTLY_`` prefixes dropped)."""
    ALL_F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q8_0 = 7
    Q5_0 = 8
    Q5_1 = 9
    Q2_K = 10
    Q3_K_S = 11
    Q3_K_M = 12
    Q3_K_L = 13
    Q4_K_S = 14
    Q4_K_M = 15
    Q5_K_S = 16
    Q5_K_M = 17
    Q6_K = 18
    IQ2_XXS = 19
    IQ2_XS = 20
    Q2_K_S = 21
    IQ3_XS = 22
    IQ3_XXS = 23
    IQ1_S = 24
    IQ4_NL = 25
    IQ3_S = 26
    IQ3_M = 27
    IQ2_S = 28
    IQ2_M = 29
    IQ4_XS = 30
    IQ1_M = 31
    BF16 = 32
    TQ1_0 = 36
    TQ2_0 = 37
    MXFP4_MOE = 38
    NVFP4 = 39
    Q1_0 = 40
    Q2_0 = 41
    GUESSED = 1024  # or-ed into a file type the loader guessed from the tensor types


F = LlamaFType


class Category(Enum):
    """``enum class tensor_category``: broad tensor roles, independent of the architecture."""
    TOKEN_EMBD = "token_embd"
    ATTENTION_Q = "attn_q"
    ATTENTION_V = "attn_v"
    ATTENTION_K = "attn_k"
    ATTENTION_QKV = "attn_qkv"
    ATTENTION_KV_B = "attn_kv_b"
    ATTENTION_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OUTPUT = "output"
    OTHER = "other"


C = Category

# tensor_get_category: exact names first, then the first substring that occurs (upstream order).
_EXACT_CATEGORY = {
    "output.weight": C.OUTPUT,
    "token_embd.weight": C.TOKEN_EMBD,
    "per_layer_token_embd.weight": C.TOKEN_EMBD,
}
_SUBSTRING_CATEGORY = (
    ("attn_qkv.weight", C.ATTENTION_QKV),
    ("attn_kv_b.weight", C.ATTENTION_KV_B),
    ("attn_v.weight", C.ATTENTION_V),
    ("attn_k.weight", C.ATTENTION_K),
    ("attn_q.weight", C.ATTENTION_Q),
    ("attn_output.weight", C.ATTENTION_OUTPUT),
    ("ffn_up", C.FFN_UP),
    ("ffn_gate", C.FFN_GATE),
    ("ffn_down", C.FFN_DOWN),
)


def tensor_category(name: str) -> Category:
    """``tensor_get_category``."""
    if name in _EXACT_CATEGORY:
        return _EXACT_CATEGORY[name]
    for needle, cat in _SUBSTRING_CATEGORY:
        if needle in name:
            return cat
    return C.OTHER


def is_attn_v(cat: Category) -> bool:
    """``category_is_attn_v``: the attention-value-like tensors (more sensitive to quantization)."""
    return cat in (C.ATTENTION_V, C.ATTENTION_QKV, C.ATTENTION_KV_B)


_SSCANF_BLK = re.compile(r"blk\.\s*([+-]?\d+)")


def blk_layer(name: str) -> int | None:
    """``sscanf(name, "blk.%d.", &il)``: the layer number at the start of ``name``, or None."""
    m = _SSCANF_BLK.match(name)
    return int(m.group(1)) if m else None


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The ``use_more_bits`` lambda: first and last eighth of the layers, and every third in between.

    Upstream divides non-negative ints, so ``//`` equals C division here.
    """
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


@dataclass
class MixState:
    """``quantize_state_impl``: model facts the rules read, plus the running counters."""
    arch: str
    n_expert: int          # hparams.n_expert as stored (0 for dense models)
    n_gqa: int             # hparams.n_gqa() of layer 0: n_head / n_head_kv, 0 when n_head_kv is 0
    is_70b: bool           # model.type == LLM_TYPE_70B
    n_layer: int           # hparams.n_layer_all: n_ffn_down = n_ffn_gate = n_ffn_up
    has_imatrix: bool = False
    has_tied_embeddings: bool = True
    n_attention_wv: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    n_fallback: int = 0

    def layer_info(self, counter: int, name: str) -> tuple[int, int]:
        """The ``layer_info`` lambda: (layer, n_layer) from the counter, or from the name for MoE models.

        Mixtral-style experts are not consecutive, so with more than one expert the layer is parsed from
        ``blk.%d.`` of the tensor name.
        """
        if max(1, self.n_expert) > 1:
            il = blk_layer(name)
            if il is None:
                raise ValueError(f"Failed to determine layer for tensor {name}")
            if il < 0 or il >= self.n_layer:
                raise ValueError(f"Bad layer {il} for tensor {name}. Must be in [0, {self.n_layer})")
            return il, self.n_layer
        return counter, self.n_layer


@dataclass(frozen=True)
class Ctx:
    """What a rule may look at: the layer index ``i`` of ``n`` (meaning depends on the category)."""
    i: int
    n: int
    s: MixState

    @property
    def gqa4(self) -> bool:
        return self.s.n_gqa >= 4

    @property
    def falcon(self) -> bool:
        return self.s.arch == "falcon"

    @property
    def imatrix(self) -> bool:
        return self.s.has_imatrix

    @property
    def more_bits(self) -> bool:
        return use_more_bits(self.i, self.n)

    @property
    def first_eighth(self) -> bool:
        return self.i < self.n // 8


Rule = Callable[[Ctx], "T | None"]

# --- output.weight, and token_embd.weight when the embeddings are tied -------------------------------
# (nx % block != 0 and falcon both give Q8_0 before this set is consulted)
_OUTPUT_Q5_K = {F.IQ2_XXS, F.IQ2_XS, F.IQ3_XXS, F.IQ1_S, F.IQ2_S, F.IQ2_M, F.IQ1_M}

# --- token_embd.weight of an untied model --------------------------------------------------------------
_TOKEN_EMBD = {
    F.IQ2_XXS: T.Q2_K, F.IQ2_XS: T.Q2_K, F.IQ1_S: T.Q2_K, F.IQ1_M: T.Q2_K,
    F.IQ2_S: T.IQ3_S, F.IQ2_M: T.IQ3_S, F.IQ3_XXS: T.IQ3_S,
    F.TQ1_0: T.Q4_K, F.TQ2_0: T.Q4_K, F.Q2_0: T.Q4_K,
}

# --- the very low bit IQ1/IQ2 file types have their own branch --------------------------------------
_LOW_IQ = {F.IQ2_XXS, F.IQ2_XS, F.IQ1_S, F.IQ2_S, F.IQ2_M, F.IQ1_M}
_LOW_IQ_ATTN_OUTPUT = {F.IQ1_S: T.IQ2_XXS, F.IQ1_M: T.IQ2_XXS, F.IQ2_S: T.IQ3_S, F.IQ2_M: T.IQ3_S}


def _low_iq_small(ftype: F) -> T:
    """The "a bit more" type of the low IQ branch: IQ3_S for IQ2_S/IQ2_M, Q2_K otherwise."""
    return T.IQ3_S if ftype in (F.IQ2_S, F.IQ2_M) else T.Q2_K


# --- attn_v / attn_qkv / attn_kv_b (i = i_attention_wv, n = n_attention_wv) ---------------------------
_ATTN_V: dict[F, Rule] = {
    F.Q2_K:    lambda c: T.Q4_K if c.gqa4 else T.Q3_K,
    F.Q2_K_S:  lambda c: T.Q4_K if c.gqa4 else None,
    F.IQ3_XXS: lambda c: T.Q4_K if c.gqa4 else (T.IQ3_XXS if c.imatrix else T.IQ3_S),
    F.IQ3_XS:  lambda c: T.Q4_K if c.gqa4 else None,
    F.IQ3_S:   lambda c: T.Q4_K if c.gqa4 else None,
    F.IQ3_M:   lambda c: T.Q4_K,
    F.Q3_K_M:  lambda c: T.Q5_K if c.i < 2 else T.Q4_K,
    F.Q3_K_L:  lambda c: T.Q5_K,
    F.IQ4_NL:  lambda c: T.Q5_K if c.gqa4 else None,
    F.IQ4_XS:  lambda c: T.Q5_K if c.gqa4 else None,
    F.Q4_K_M:  lambda c: T.Q6_K if c.more_bits else None,
    F.Q5_K_M:  lambda c: T.Q6_K if c.more_bits else None,
    F.Q4_K_S:  lambda c: T.Q5_K if c.i < 4 else None,
}

# --- attn_k and attn_q (after the 8-expert Q8_0 bump of attn_k) -----------------------------------------
_ATTN_K_Q = {F.IQ3_XS: T.IQ3_XXS, F.IQ3_XXS: T.IQ2_S}

# --- ffn_down (i = layer, n = n_layer; layer from the name for MoE) -------------------------------------
_FFN_DOWN: dict[F, Rule] = {
    F.Q2_K:    lambda c: T.Q3_K,
    F.Q2_K_S:  lambda c: T.Q4_K if c.first_eighth else None,
    F.IQ3_XXS: lambda c: None if c.imatrix else (T.Q4_K if c.first_eighth else T.Q3_K),
    F.Q3_K_M:  lambda c: (T.Q5_K if c.i < c.n // 16 else
                          T.Q4_K if not c.falcon or c.more_bits else T.Q3_K),
    F.IQ3_M:   lambda c: T.Q4_K if c.first_eighth or (c.s.n_expert == 8 and c.more_bits) else None,
    F.Q3_K_L:  lambda c: T.Q4_K if c.falcon else T.Q5_K,
    F.Q4_K_M:  lambda c: ((T.Q6_K if c.i < c.n // 16 else T.Q5_K if c.more_bits else T.Q4_K) if c.falcon
                          else (T.Q6_K if c.more_bits else None)),
    F.IQ4_NL:  lambda c: T.Q5_K if c.first_eighth and not c.imatrix else None,
    F.IQ4_XS:  lambda c: T.Q5_K if c.first_eighth and not c.imatrix else None,
    F.Q5_K_M:  lambda c: T.Q6_K if c.more_bits else None,
    F.Q4_K_S:  lambda c: T.Q5_K if not c.falcon and c.first_eighth else None,
    # guard against craziness in the first ffn_down layers, only with an imatrix
    F.Q4_0:    lambda c: T.Q4_1 if c.imatrix and c.first_eighth else None,
    F.Q5_0:    lambda c: T.Q5_1 if c.imatrix and c.first_eighth else None,
}

# --- attn_output ------------------------------------------------------------------------------------------
_ATTN_OUTPUT_MOE8_Q5_K = {F.Q2_K, F.IQ3_XS, F.IQ3_XXS, F.Q3_K_S, F.Q3_K_M, F.IQ4_NL, F.Q4_K_S, F.Q4_K_M,
                          F.IQ3_S, F.IQ3_M, F.IQ4_XS}
_ATTN_OUTPUT = {F.Q2_K: T.Q3_K, F.IQ3_XXS: T.IQ3_S, F.Q3_K_M: T.Q4_K, F.Q3_K_L: T.Q5_K, F.IQ3_M: T.Q4_K}
_ATTN_OUTPUT_FALCON = {F.Q3_K_L: T.Q4_K}

# Upstream also has an ATTENTION_QKV branch (Q3_K_M/Q3_K_L/IQ3_M -> Q4_K, Q4_K_M -> Q5_K, Q5_K_M -> Q6_K)
# after the attn_output one, but attn_qkv is attn_v-like, so that branch is never reached; not copied.

_GLM5_NEXT_Q8 = ("attn_q_a", "attn_q_b", "nextn.eh_proj")
_FLOATS = (T.F32, T.F16, T.BF16)


def _apply(rule: Rule | None, ctx: Ctx, new_type):
    if rule is None:
        return new_type
    got = rule(ctx)
    return new_type if got is None else got


def get_type_impl(s: MixState, new_type, name: str, ne: tuple[int, ...], ftype: F, cat: Category,
                  output_tensor_type, token_embedding_type, block_size: Callable[[object], int]):
    """``llama_tensor_get_type_impl``: the mix's type for one tensor, given the file's default type.

    ``ne`` is the ggml shape (``ne[0]`` = row length); ``block_size`` maps a type to its block size.
    """
    if s.arch == "glm5-next" and any(k in name for k in _GLM5_NEXT_Q8) and new_type not in _FLOATS:
        return T.Q8_0

    if cat is C.OUTPUT or (s.has_tied_embeddings and cat is C.TOKEN_EMBD):
        if output_tensor_type is not None:
            return output_tensor_type
        if ftype == F.MXFP4_MOE:
            return T.Q8_0
        if s.arch == "falcon" or ne[0] % block_size(new_type) != 0:
            return T.Q8_0
        if ftype in _OUTPUT_Q5_K:
            return T.Q5_K
        return new_type if new_type == T.Q8_0 else T.Q6_K

    if ftype == F.MXFP4_MOE:
        # expert tensors (3-D) -> MXFP4, the rest -> Q8_0; bailingmoe3's 3-D MLA projections are not experts
        is_expert_role = cat in (C.FFN_UP, C.FFN_GATE, C.FFN_DOWN)
        if _ne(ne, 2) > 1 and (s.arch != "bailingmoe3" or is_expert_role):
            return T.MXFP4
        return T.Q8_0

    if cat is C.TOKEN_EMBD:
        if token_embedding_type is not None:
            return token_embedding_type
        return _TOKEN_EMBD.get(ftype, new_type)

    if ftype in _LOW_IQ:
        if is_attn_v(cat):
            new_type = T.Q4_K if (s.n_gqa >= 4 or s.n_expert >= 4) else _low_iq_small(ftype)
            s.i_attention_wv += 1
        elif s.n_expert == 8 and cat is C.ATTENTION_K:
            new_type = T.Q4_K
        elif cat is C.FFN_DOWN:
            if s.i_ffn_down < s.n_layer // 8:
                new_type = _low_iq_small(ftype)
            s.i_ffn_down += 1
        elif cat is C.ATTENTION_OUTPUT:
            new_type = T.Q5_K if s.n_expert == 8 else _LOW_IQ_ATTN_OUTPUT.get(ftype, new_type)
        return new_type

    if is_attn_v(cat):
        new_type = _apply(_ATTN_V.get(ftype), Ctx(s.i_attention_wv, s.n_attention_wv, s), new_type)
        if s.is_70b and new_type in (T.Q3_K, T.Q4_K):
            # 70B: 8 heads share attn_v, so it is 8x smaller than attn_q and more bits are cheap
            new_type = T.Q5_K
        if s.n_expert == 8:
            new_type = T.Q8_0
        s.i_attention_wv += 1
        return new_type

    if cat is C.ATTENTION_K:
        if s.n_expert == 8:
            return T.Q8_0
        return _ATTN_K_Q.get(ftype, new_type)

    if cat is C.ATTENTION_Q:
        return _ATTN_K_Q.get(ftype, new_type)

    if cat is C.FFN_DOWN:
        i_layer, n_layer = s.layer_info(s.i_ffn_down, name)
        new_type = _apply(_FFN_DOWN.get(ftype), Ctx(i_layer, n_layer, s), new_type)
        s.i_ffn_down += 1
        return new_type

    if cat is C.ATTENTION_OUTPUT:
        if s.arch == "falcon":
            return _ATTN_OUTPUT_FALCON.get(ftype, new_type)
        if s.n_expert == 8:
            return T.Q5_K if ftype in _ATTN_OUTPUT_MOE8_Q5_K else new_type
        return _ATTN_OUTPUT.get(ftype, new_type)

    if cat in (C.FFN_GATE, C.FFN_UP):
        counter = "i_ffn_gate" if cat is C.FFN_GATE else "i_ffn_up"
        i_layer, n_layer = s.layer_info(getattr(s, counter), name)
        if ftype == F.IQ3_XS and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            new_type = T.IQ3_XXS
        setattr(s, counter, getattr(s, counter) + 1)
        return new_type

    return new_type


# --- which tensors are quantized at all, shape fallbacks, imatrix requirement ------------------------------

# tensor_allows_quantization: substrings that keep a tensor as it is (norms, routers, tiny tensors, ...)
_KEEP_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    # RWKV's small 2-D weights
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",  # T5 relative position bias
    # multimodal
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",  # audio codebooks
)
_KEEP_NAMES = ("position_embd.weight", "token_types.weight")  # LLM_TN POS_EMBD / TOKEN_TYPES (BERT)
_KEEP_GLM5_NEXT = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)


def allows_quantization(params, arch: str, name: str, n_dims: int) -> bool:
    """``tensor_allows_quantization``: 2-D/3-D ``*weight`` tensors that are not on the keep lists.

    ``params``: anything with ``only_copy`` and ``quantize_output_tensor``.
    """
    # upstream tests name.rfind("weight") == name.size() - 6, which also holds for any 5-character name
    # (npos == size_t(5 - 6)); mirrored for exactness
    if params.only_copy or n_dims < 2 or not (name.endswith("weight") or len(name) == 5):
        return False
    if not params.quantize_output_tensor and name == "output.weight":
        return False
    if name in _KEEP_NAMES or any(k in name for k in _KEEP_SUBSTRINGS):
        return False
    return not (arch == "glm5-next" and any(k in name for k in _KEEP_GLM5_NEXT))


# tensor_type_fallback: a type whose block does not divide the row length -> one with 32-wide blocks
_FALLBACK = {
    T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL,
    T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
    T.Q2_0: T.Q4_0, T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
    T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
}


def type_fallback(name: str, ncols: int, target):
    """``tensor_type_fallback`` -> (type, whether it fell back); F16 when even 32 does not divide."""
    qk = block_size(target)
    if ncols % qk == 0:
        return target, False
    if target in _FALLBACK:
        ret = _FALLBACK[target]
    elif qk <= 32:  # already a 32-block type: only F16 is left
        ret = target
    else:
        raise ValueError(f"no tensor type fallback is defined for type {type_name(target).lower()} "
                         f"(tensor {name}: ncols {ncols} not divisible by {qk})")
    if ncols % block_size(ret):
        ret = T.F16
    return ret, True


_IMATRIX_TYPES = (T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S)


def requires_imatrix(name: str, target, ftype: int) -> bool:
    """``tensor_requires_imatrix``: the lowest-bit IQ types, and Q2_K inside a Q2_K_S file."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    if target in _IMATRIX_TYPES:
        return True
    return target == T.Q2_K and ftype == F.Q2_K_S


def _ne(ne: tuple[int, ...], i: int) -> int:
    return ne[i] if i < len(ne) else 1
