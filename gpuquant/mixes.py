"""File types (ftypes) and the per-tensor type plan of llama-quantize.

Mirrors llama.cpp (vendored in llama-cpp-python 0.3.36):
- ``tools/quantize/quantize.cpp``: ``QUANT_OPTIONS`` (:data:`FTYPES`), ``try_parse_ftype``
  (:func:`parse_ftype`), ``parse_ggml_type`` (``quants.parse_type``), ``parse_tensor_type``,
  ``parse_layer_prune``;
- ``src/llama-quant.cpp``: ``llama_ftype_get_default_type`` (:func:`default_type`), the preliminary loop of
  ``llama_model_quantize_impl`` (:func:`plan`): tensor order, ``remap_layer`` / ``remap_imatrix``,
  ``tensor_allows_quantization``, ``llama_tensor_get_type`` (rules in :mod:`gpuquant.mix_rules`),
  ``tensor_type_fallback`` and ``tensor_requires_imatrix``;
- ``src/llama-model-loader.cpp``: the tensor order of ``weights_map`` and the guessed file type;
- ``src/llama-model.cpp``: the hparams the rules read (``load_hparams``).

Pure Python: imports :mod:`gpuquant.quants`, :mod:`gpuquant.mix_rules` and ``gguf_io.n_dims`` only.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Sequence

from . import quants
from .gguf_io import n_dims
from .mix_rules import (Category, LlamaFType, MixState, allows_quantization, blk_layer, block_size, get_type_impl,
                        is_quantized, requires_imatrix, tensor_category, type_fallback, type_name)
from .quants import GGMLQuantizationType as T

__all__ = [
    "Category", "FType", "FTYPES", "LlamaFType", "Plan", "QuantizeParams", "TensorInfo",
    "TensorPlan", "block_size", "check_implemented", "check_imatrix", "check_requantize", "default_type",
    "ftype_description", "ftype_name", "guess_ftype", "model_info", "parse_ftype", "parse_prune_layers", "parse_tensor_type",
    "plan", "pruned_block_count",
]

F = LlamaFType


# ---------------------------------------------------------------------------------------------------------
# file types
# ---------------------------------------------------------------------------------------------------------

class FType(NamedTuple):
    """One entry of llama-quantize's ``QUANT_OPTIONS``: the name it accepts, the llama_ftype, the help text.

    ``int(opt)`` is the llama_ftype id, so an entry can stand wherever an ftype id is expected.
    """
    name: str
    ftype: LlamaFType
    desc: str

    def __int__(self) -> int:
        return int(self.ftype)

    __index__ = __int__


# QUANT_OPTIONS, in upstream order (parse_ftype of a number takes the first entry with that id)
FTYPES: tuple[FType, ...] = tuple(FType(n, F[f], d) for n, f, d in (
    ("Q1_0",      "Q1_0",      " 1.125 bpw quantization"),
    ("Q2_0",      "Q2_0",      " 2.25 bpw quantization (group 64)"),
    ("Q4_0",      "Q4_0",      " 4.34G, +0.4685 ppl @ Llama-3-8B"),
    ("Q4_1",      "Q4_1",      " 4.78G, +0.4511 ppl @ Llama-3-8B"),
    ("MXFP4_MOE", "MXFP4_MOE", " MXFP4 MoE"),
    ("Q5_0",      "Q5_0",      " 5.21G, +0.1316 ppl @ Llama-3-8B"),
    ("Q5_1",      "Q5_1",      " 5.65G, +0.1062 ppl @ Llama-3-8B"),
    ("IQ2_XXS",   "IQ2_XXS",   " 2.06 bpw quantization"),
    ("IQ2_XS",    "IQ2_XS",    " 2.31 bpw quantization"),
    ("IQ2_S",     "IQ2_S",     " 2.5  bpw quantization"),
    ("IQ2_M",     "IQ2_M",     " 2.7  bpw quantization"),
    ("IQ1_S",     "IQ1_S",     " 1.56 bpw quantization"),
    ("IQ1_M",     "IQ1_M",     " 1.75 bpw quantization"),
    ("TQ1_0",     "TQ1_0",     " 1.69 bpw ternarization"),
    ("TQ2_0",     "TQ2_0",     " 2.06 bpw ternarization"),
    ("Q2_K",      "Q2_K",      " 2.96G, +3.5199 ppl @ Llama-3-8B"),
    ("Q2_K_S",    "Q2_K_S",    " 2.96G, +3.1836 ppl @ Llama-3-8B"),
    ("IQ3_XXS",   "IQ3_XXS",   " 3.06 bpw quantization"),
    ("IQ3_S",     "IQ3_S",     " 3.44 bpw quantization"),
    ("IQ3_M",     "IQ3_M",     " 3.66 bpw quantization mix"),
    ("Q3_K",      "Q3_K_M",    "alias for Q3_K_M"),
    ("IQ3_XS",    "IQ3_XS",    " 3.3 bpw quantization"),
    ("Q3_K_S",    "Q3_K_S",    " 3.41G, +1.6321 ppl @ Llama-3-8B"),
    ("Q3_K_M",    "Q3_K_M",    " 3.74G, +0.6569 ppl @ Llama-3-8B"),
    ("Q3_K_L",    "Q3_K_L",    " 4.03G, +0.5562 ppl @ Llama-3-8B"),
    ("IQ4_NL",    "IQ4_NL",    " 4.50 bpw non-linear quantization"),
    ("IQ4_XS",    "IQ4_XS",    " 4.25 bpw non-linear quantization"),
    ("Q4_K",      "Q4_K_M",    "alias for Q4_K_M"),
    ("Q4_K_S",    "Q4_K_S",    " 4.37G, +0.2689 ppl @ Llama-3-8B"),
    ("Q4_K_M",    "Q4_K_M",    " 4.58G, +0.1754 ppl @ Llama-3-8B"),
    ("Q5_K",      "Q5_K_M",    "alias for Q5_K_M"),
    ("Q5_K_S",    "Q5_K_S",    " 5.21G, +0.1049 ppl @ Llama-3-8B"),
    ("Q5_K_M",    "Q5_K_M",    " 5.33G, +0.0569 ppl @ Llama-3-8B"),
    ("Q6_K",      "Q6_K",      " 6.14G, +0.0217 ppl @ Llama-3-8B"),
    ("Q8_0",      "Q8_0",      " 7.96G, +0.0026 ppl @ Llama-3-8B"),
    ("F16",       "F16",       "14.00G, +0.0020 ppl @ Mistral-7B"),
    ("BF16",      "BF16",      "14.00G, -0.0050 ppl @ Mistral-7B"),
    ("F32",       "ALL_F32",   "26.00G              @ 7B"),
    ("COPY",      "ALL_F32",   "only copy tensors, no quantizing"),  # after F32, so that id 0 parses as F32
))

# llama_ftype_get_default_type
_DEFAULT_TYPE = {
    F.Q4_0: T.Q4_0, F.Q4_1: T.Q4_1, F.Q5_0: T.Q5_0, F.Q5_1: T.Q5_1, F.Q8_0: T.Q8_0,
    F.F16: T.F16, F.BF16: T.BF16, F.ALL_F32: T.F32, F.Q1_0: T.Q1_0, F.Q2_0: T.Q2_0,
    F.MXFP4_MOE: T.MXFP4,
    F.Q2_K_S: T.Q2_K, F.Q2_K: T.Q2_K, F.IQ3_XS: T.IQ3_S,
    F.Q3_K_S: T.Q3_K, F.Q3_K_M: T.Q3_K, F.Q3_K_L: T.Q3_K,
    F.Q4_K_S: T.Q4_K, F.Q4_K_M: T.Q4_K, F.Q5_K_S: T.Q5_K, F.Q5_K_M: T.Q5_K, F.Q6_K: T.Q6_K,
    F.TQ1_0: T.TQ1_0, F.TQ2_0: T.TQ2_0,
    F.IQ2_XXS: T.IQ2_XXS, F.IQ2_XS: T.IQ2_XS, F.IQ2_S: T.IQ2_XS, F.IQ2_M: T.IQ2_S,
    F.IQ3_XXS: T.IQ3_XXS, F.IQ1_S: T.IQ1_S, F.IQ1_M: T.IQ1_M, F.IQ4_NL: T.IQ4_NL, F.IQ4_XS: T.IQ4_XS,
    F.IQ3_S: T.IQ3_S, F.IQ3_M: T.IQ3_S,
}

# llama_ftype_name (llama-model-loader.cpp), without the "(guessed) " prefix
_FTYPE_NAMES = {
    F.ALL_F32: "all F32", F.F16: "F16", F.BF16: "BF16", F.Q1_0: "Q1_0", F.Q2_0: "Q2_0", F.Q4_0: "Q4_0",
    F.Q4_1: "Q4_1", F.Q5_0: "Q5_0", F.Q5_1: "Q5_1", F.Q8_0: "Q8_0", F.MXFP4_MOE: "MXFP4 MoE",
    F.NVFP4: "NVFP4", F.Q2_K: "Q2_K - Medium", F.Q2_K_S: "Q2_K - Small", F.Q3_K_S: "Q3_K - Small",
    F.Q3_K_M: "Q3_K - Medium", F.Q3_K_L: "Q3_K - Large", F.Q4_K_S: "Q4_K - Small",
    F.Q4_K_M: "Q4_K - Medium", F.Q5_K_S: "Q5_K - Small", F.Q5_K_M: "Q5_K - Medium", F.Q6_K: "Q6_K",
    F.TQ1_0: "TQ1_0 - 1.69 bpw ternary", F.TQ2_0: "TQ2_0 - 2.06 bpw ternary",
    F.IQ2_XXS: "IQ2_XXS - 2.0625 bpw", F.IQ2_XS: "IQ2_XS - 2.3125 bpw", F.IQ2_S: "IQ2_S - 2.5 bpw",
    F.IQ2_M: "IQ2_M - 2.7 bpw", F.IQ3_XS: "IQ3_XS - 3.3 bpw", F.IQ3_XXS: "IQ3_XXS - 3.0625 bpw",
    F.IQ1_S: "IQ1_S - 1.5625 bpw", F.IQ1_M: "IQ1_M - 1.75 bpw", F.IQ4_NL: "IQ4_NL - 4.5 bpw",
    F.IQ4_XS: "IQ4_XS - 4.25 bpw", F.IQ3_S: "IQ3_S - 3.4375 bpw", F.IQ3_M: "IQ3_S mix - 3.66 bpw",
}

# the loader's guess of a file type from its most common tensor type (llama_model_loader constructor)
_GUESS_FTYPE = {
    T.F32: F.ALL_F32, T.F16: F.F16, T.BF16: F.BF16, T.Q4_0: F.Q4_0, T.Q4_1: F.Q4_1, T.Q5_0: F.Q5_0,
    T.Q5_1: F.Q5_1, T.Q8_0: F.Q8_0, T.Q2_K: F.Q2_K, T.Q3_K: F.Q3_K_M, T.Q4_K: F.Q4_K_M, T.Q5_K: F.Q5_K_M,
    T.Q6_K: F.Q6_K, T.TQ1_0: F.TQ1_0, T.TQ2_0: F.TQ2_0, T.IQ2_XXS: F.IQ2_XXS, T.IQ2_XS: F.IQ2_XS,
    T.IQ2_S: F.IQ2_S, T.IQ3_XXS: F.IQ3_XXS, T.IQ1_S: F.IQ1_S, T.IQ1_M: F.IQ1_M, T.IQ4_NL: F.IQ4_NL,
    T.IQ4_XS: F.IQ4_XS, T.IQ3_S: F.IQ3_S, T.NVFP4: F.NVFP4, T.Q1_0: F.Q1_0, T.Q2_0: F.Q2_0,
}


def guess_ftype(qtype) -> LlamaFType:
    """The file type llama.cpp's loader guesses for a model whose most common tensor type is ``qtype``."""
    return _GUESS_FTYPE.get(qtype, F.ALL_F32)


def parse_ftype(name: str | int) -> FType:
    """``try_parse_ftype``: a QUANT_OPTIONS name (any case) or a numeric llama_ftype id.

    A number resolves to the first entry with that id, so ``15`` gives ``Q4_K`` (the alias) and ``0``
    gives ``F32``. Raises ``ValueError`` for anything else.
    """
    text = str(name)
    for opt in FTYPES:
        if opt.name.upper() == text.upper():
            return opt
    m = re.match(r"\s*([+-]?\d+)", text)  # std::stoi: leading blanks, a sign, digits, junk after ignored
    if m:
        for opt in FTYPES:
            if opt.ftype == int(m.group(1)):
                return opt
    raise ValueError(f"invalid ftype {name!r}; allowed: {', '.join(o.name for o in FTYPES)}")


def default_type(ftype: LlamaFType | int):
    """``llama_ftype_get_default_type``: the file type's base tensor type (ValueError for none)."""
    try:
        return _DEFAULT_TYPE[F(int(ftype))]
    except (KeyError, ValueError):
        raise ValueError(f"invalid output file type {int(ftype)}") from None


def ftype_name(ftype: FType | int) -> str:
    """The QUANT_OPTIONS name of an ftype, as llama-quantize names its output (``Q4_K_M``, ``COPY``).

    An id resolves like ``try_parse_ftype`` does (first entry: 15 -> ``Q4_K``).
    """
    if isinstance(ftype, FType):
        return ftype.name
    return parse_ftype(int(ftype)).name


def ftype_description(ftype: int) -> str:
    """``llama_ftype_name``: ``"Q4_K - Medium"``, ``"(guessed) F16"`` (what the loader prints)."""
    base = int(ftype) & ~F.GUESSED
    name = _FTYPE_NAMES.get(base, "unknown, may not work") if base in F._value2member_map_ else \
        "unknown, may not work"
    return ("(guessed) " + name) if int(ftype) & F.GUESSED else name


def parse_tensor_type(option: str):
    """``parse_tensor_type``: ``"NAME=TYPE"`` of ``--tensor-type`` -> (lower-cased pattern, type)."""
    pattern, sep, tname = option.partition("=")
    if not sep:
        raise ValueError(f"malformed tensor type {option!r}")
    if not pattern:
        raise ValueError("missing tensor name")
    if not tname:
        raise ValueError("missing quantization type")
    return pattern.lower(), quants.parse_type(tname)


def parse_prune_layers(text: str) -> list[int]:
    """``parse_layer_prune``: ``"3,1,3"`` -> ``[1, 3]`` (sorted, unique; negative or junk ids rejected)."""
    ids = []
    for part in text.split(","):
        m = re.match(r"\s*([+-]?\d+)", part)
        if not m or int(m.group(1)) < 0:
            raise ValueError(f"invalid layer id {part!r}")
        ids.append(int(m.group(1)))
    return sorted(set(ids))


# ---------------------------------------------------------------------------------------------------------
# inputs and outputs of plan()
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the input model: name, ggml shape (``ne[0]`` = row length) and type."""
    name: str
    shape_ne: tuple[int, ...]
    type: Any  # GGMLQuantizationType
    split: int = 0    # index of the input split file it lies in
    offset: int = 0   # data offset in that file (the --keep-split order)

    @property
    def n_dims(self) -> int:
        return n_dims(self.shape_ne)

    def ne(self, i: int) -> int:
        return self.shape_ne[i] if i < len(self.shape_ne) else 1


@dataclass
class QuantizeParams:
    """The fields of ``llama_model_quantize_params`` that decide tensor types (library semantics).

    ``tensor_types`` are (regex, type) pairs tried in order, first ``re.search`` hit wins (the CLI
    lower-cases the patterns first, see :func:`parse_tensor_type`); ``prune_layers`` are used as given
    (the CLI sorts them and drops duplicates, see :func:`parse_prune_layers`). ``has_imatrix`` says that
    an importance matrix is passed at all.
    """
    ftype: int = F.Q8_0
    pure: bool = False
    quantize_output_tensor: bool = True   # False with --leave-output-tensor
    output_tensor_type: Any = None        # None = GGML_TYPE_COUNT (not set)
    token_embedding_type: Any = None
    tensor_types: Sequence[tuple[str, Any]] = ()
    has_imatrix: bool = False
    prune_layers: Sequence[int] = ()
    allow_requantize: bool = False
    only_copy: bool = False
    keep_split: bool = False  # output tensors in input (split, offset) order, one output per input split

    def __post_init__(self):
        # an FType entry named COPY means only_copy, as in the CLI
        if isinstance(self.ftype, FType) and self.ftype.name == "COPY":
            self.only_copy = True
        self.ftype = F(int(self.ftype))

    @classmethod
    def for_ftype(cls, name: str | int, **kw) -> "QuantizeParams":
        """Like the CLI: parse the ftype name, and ``COPY`` sets ``only_copy``."""
        return cls(ftype=parse_ftype(name), **kw)


@dataclass(frozen=True)
class TensorPlan:
    """What llama-quantize does with one tensor (in output order)."""
    name: str                      # name in the output file (layer renumbered when pruning)
    source_name: str               # name in the input file
    shape_ne: tuple[int, ...]
    source_type: Any
    target_type: Any
    category: Category
    allows_quantization: bool
    requires_imatrix: bool
    imatrix_name: str | None       # key of its importance weights (None without an imatrix)
    fallback: bool = False         # tensor_type_fallback replaced the mix's type (row length)

    @property
    def quantize(self) -> bool:
        """Whether data is converted; otherwise it is copied as is (``cur_type != new_type``)."""
        return self.target_type != self.source_type


class Plan(list):
    """The ``TensorPlan`` list of :func:`plan`, with the file-level results as attributes.

    ``ftype``: value written to ``general.file_type``; ``block_count``: the new ``<arch>.block_count``
    when layers were pruned, else None; ``n_fallback``: ``qs.n_fallback``.
    """

    def __init__(self, items: Iterable[TensorPlan], *, ftype: int, block_count: int | None,
                 n_fallback: int):
        super().__init__(items)
        self.ftype = ftype
        self.block_count = block_count
        self.n_fallback = n_fallback


# ---------------------------------------------------------------------------------------------------------
# model facts (llama_model_base::load_hparams and the arch loaders)
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _HParams:
    n_layer_all: int
    n_layer_nextn: int
    n_expert: int
    n_head: int      # layer 0
    n_head_kv: int   # layer 0

    @property
    def n_gqa(self) -> int:
        return 0 if self.n_head_kv == 0 else self.n_head // self.n_head_kv

    @property
    def n_layer(self) -> int:
        return self.n_layer_all - self.n_layer_nextn


# archs whose loader can set LLM_TYPE_70B (models/<arch>.cpp, load_arch_hparams)
_IS_70B = {
    "llama":       lambda h: h.n_expert != 8 and h.n_layer == 80 and h.n_head != h.n_head_kv,
    "llama-embed": lambda h: h.n_expert != 8 and h.n_layer == 80 and h.n_head != h.n_head_kv,
    "qwen2":       lambda h: h.n_layer == 80,
    "deci":        lambda h: h.n_layer == 80,
    "olmo":        lambda h: h.n_layer == 80,
    "jais2":       lambda h: h.n_layer == 68,
}


def _layer0(kv: dict, key: str, n_layer: int):
    """``get_key_or_arr`` read for layer 0: a scalar, or an array of exactly ``n_layer`` values."""
    if key not in kv:
        return None
    value = kv[key]
    if isinstance(value, (list, tuple)):
        if len(value) != n_layer:
            raise ValueError(f"key {key} has wrong array length; expected {n_layer}, got {len(value)}")
        return int(value[0])
    return int(value)


def _hparams(arch: str, kv: dict) -> _HParams:
    if arch == "clip":  # mmproj files: load_hparams stops before reading any of these
        return _HParams(0, 0, 0, 0, 0)
    key = f"{arch}.block_count"
    if key not in kv:
        raise ValueError(f"key not found in model: {key}")
    n_layer = int(kv[key])
    n_expert = int(kv.get(f"{arch}.expert_count", 0))
    if arch in ("hunyuan-dense", "hunyuan_vl") and n_expert <= 1:
        n_expert = 0
    n_head = _layer0(kv, f"{arch}.attention.head_count", n_layer) or 0
    n_head_kv = _layer0(kv, f"{arch}.attention.head_count_kv", n_layer)
    return _HParams(n_layer_all=n_layer, n_layer_nextn=int(kv.get(f"{arch}.nextn_predict_layers", 0)),
                    n_expert=n_expert, n_head=n_head, n_head_kv=n_head if n_head_kv is None else n_head_kv)


def _loader_ftype(kv: dict, tensors: Sequence[TensorInfo]) -> int:
    """``ml.ftype``: ``general.file_type`` if present, else guessed from the most common tensor type."""
    if "general.file_type" in kv:
        return int(kv["general.file_type"])
    counts: Counter = Counter()
    type_max, n_max = T.F32, 0
    for t in sorted(tensors, key=_weights_order):  # first type to reach a new maximum wins
        counts[t.type] += 1
        if counts[t.type] > n_max:
            n_max, type_max = counts[t.type], t.type
    return int(_GUESS_FTYPE.get(type_max, F.ALL_F32)) | F.GUESSED


def model_info(reader) -> tuple[str, dict, list[TensorInfo]]:
    """(arch, metadata, tensors) of a ``gguf.GGUFReader``, in the form :func:`plan` takes."""
    kv = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = [TensorInfo(t.name, tuple(int(x) for x in t.shape), T(int(t.tensor_type)))
               for t in reader.tensors]
    return str(kv["general.architecture"]), kv, tensors


# ---------------------------------------------------------------------------------------------------------
# tensor order and layer pruning
# ---------------------------------------------------------------------------------------------------------

def _weights_order(t: TensorInfo):
    """``weight_name_comparer``: by ``blk.%d.`` layer (-1 for none), then by name bytes."""
    layer = blk_layer(t.name)
    return (-1 if layer is None else layer, t.name.encode())


_BLK = re.compile(r"blk\.(\d+)\.")


def _remap_layer(name: str, prune: Sequence[int], mapped: dict[int, str], next_id: list[int]) -> str:
    """``remap_layer``: renumber the first ``blk.N.`` past pruned layers; "" for a pruned layer's tensor."""
    if not prune:
        return name
    m = _BLK.search(name)
    if not m:
        return name
    blk = int(m.group(1))
    if blk in mapped:
        pass
    elif blk in prune:
        mapped[blk] = ""
    elif blk < prune[0]:
        mapped[blk] = str(blk)
        next_id[0] = blk + 1
    else:
        mapped[blk] = str(next_id[0])
        next_id[0] += 1
    if not mapped[blk]:
        return ""
    return name[:m.start(1)] + mapped[blk] + name[m.end(1):]


def _remap_imatrix(name: str, mapped: dict[int, str]) -> str:
    """``remap_imatrix``: the input layer number of a renumbered tensor name (imatrix keys use those)."""
    if not mapped:
        return name
    m = _BLK.search(name)
    if not m:
        return name
    for orig in sorted(mapped):
        if mapped[orig] == m.group(1):
            return name[:m.start(1)] + str(orig) + name[m.end(1):]
    raise ValueError(f"imatrix mapping error for {name}")


# ---------------------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------------------

def _get_type(s: MixState, params: QuantizeParams, patterns, t: TensorInfo, name: str, dtype,
              cat: Category):
    """``llama_tensor_get_type`` for a tensor that allows quantization -> (type, fell back)."""
    if params.token_embedding_type is not None and cat is Category.TOKEN_EMBD:
        # per_layer_token_embd follows --token-embedding-type unless a --tensor-type names it
        named = name == "per_layer_token_embd.weight" and any(p.search(name) for p, _ in patterns)
        if not named:
            return params.token_embedding_type, False
    if params.output_tensor_type is not None and cat is Category.OUTPUT:
        return params.output_tensor_type, False
    if not is_quantized(dtype):
        return dtype, False
    new_type = next((qt for p, qt in patterns if p.search(name)), None)
    if new_type is None:
        new_type = dtype
        if not params.pure:
            new_type = get_type_impl(s, dtype, name, t.shape_ne, F(params.ftype), cat,
                                     params.output_tensor_type, params.token_embedding_type, block_size)
    new_type, fell_back = type_fallback(name, t.ne(0), new_type)
    s.n_fallback += fell_back
    return new_type, fell_back


def plan(arch: str, kv: dict, tensors: Sequence[TensorInfo], params: QuantizeParams) -> Plan:
    """Every output tensor of llama-quantize, in output order, with its target type.

    ``kv`` is the GGUF metadata (key -> value, arrays as lists; KV overrides already applied). Mirrors the
    preliminary loop of ``llama_model_quantize_impl``; raises ``ValueError`` where llama-quantize fails
    before writing (invalid ftype, duplicate tensor, no fallback for a shape, bad expert layer).
    """
    dtype = default_type(params.ftype)
    ftype = _loader_ftype(kv, tensors) if params.only_copy else int(params.ftype)
    hp = _hparams(arch, kv)
    state = MixState(arch=arch, n_expert=hp.n_expert, n_gqa=hp.n_gqa,
                     is_70b=_IS_70B.get(arch, lambda h: False)(hp), n_layer=hp.n_layer_all,
                     has_imatrix=params.has_imatrix)
    patterns = [(re.compile(p), qt) for p, qt in params.tensor_types]

    ordered = sorted(tensors, key=_weights_order)
    if params.keep_split:  # "keep_split requires that the weights are sorted by split index"
        ordered.sort(key=lambda t: (t.split, t.offset))
    seen = set()
    for t in ordered:
        if t.name in seen:
            raise ValueError(f"invalid model: tensor '{t.name}' is duplicated")
        seen.add(t.name)

    prune = list(params.prune_layers)
    mapped: dict[int, str] = {}
    next_id = [0]
    kept = []
    for t in ordered:
        new_name = _remap_layer(t.name, prune, mapped, next_id)
        if new_name:
            kept.append((t, new_name, tensor_category(new_name)))

    # init_quantize_state_counters
    state.n_attention_wv = sum(1 for _, _, cat in kept if cat in _ATTN_V_CATS)
    state.has_tied_embeddings = not any(cat is Category.OUTPUT for _, _, cat in kept)

    out = []
    for t, name, cat in kept:
        allows = allows_quantization(params, arch, name, t.n_dims)
        target, fell_back = (_get_type(state, params, patterns, t, name, dtype, cat) if allows
                             else (t.type, False))
        out.append(TensorPlan(
            name=name, source_name=t.name, shape_ne=tuple(t.shape_ne), source_type=t.type, target_type=target,
            category=cat, allows_quantization=allows,
            requires_imatrix=requires_imatrix(name, target, ftype),
            imatrix_name=_remap_imatrix(name, mapped) if params.has_imatrix else None,
            fallback=fell_back))
    return Plan(out, ftype=ftype, block_count=next_id[0] if prune else None,
                n_fallback=state.n_fallback)


_ATTN_V_CATS = (Category.ATTENTION_V, Category.ATTENTION_QKV, Category.ATTENTION_KV_B)


def pruned_block_count(kv: dict, arch: str, prune_layers: Sequence[int]) -> int | None:
    """``<arch>.block_count`` after ``remap_layer`` drops ``prune_layers`` (None when nothing is pruned).

    Assumes every layer below ``block_count`` has tensors; ``plan(...).block_count`` is exact.
    """
    if not prune_layers:
        return None
    mapped: dict[int, str] = {}
    next_id = [0]
    for il in range(int(kv[f"{arch}.block_count"])):
        _remap_layer(f"blk.{il}.", list(prune_layers), mapped, next_id)
    return next_id[0]


def check_imatrix(plans: Sequence[TensorPlan], params: QuantizeParams) -> None:
    """llama-quantize's refusal to run a very low-bit mix without an importance matrix."""
    if params.has_imatrix:
        return
    for p in plans:
        if p.allows_quantization and p.requires_imatrix:
            raise ValueError(f"this quantization requires an importance matrix: tensor {p.name} "
                             f"-> {type_name(p.target_type)}")


def check_requantize(plans: Sequence[TensorPlan], params: QuantizeParams) -> None:
    """``requantizing from type X is disabled`` unless ``allow_requantize``."""
    if params.allow_requantize:
        return
    for p in plans:
        if p.quantize and is_quantized(p.source_type):
            raise ValueError(f"requantizing from type {type_name(p.source_type)} is disabled "
                             f"(tensor {p.source_name}); allow it with allow_requantize")


def check_implemented(plans: Sequence[TensorPlan]) -> None:
    """Raise ``quants.UnsupportedType`` naming every target type without a quantizer and its tensors."""
    missing: dict[str, list[str]] = {}
    for p in plans:
        if not p.quantize:
            continue
        try:
            quants.get(p.target_type)
        except quants.UnsupportedType:
            missing.setdefault(type_name(p.target_type), []).append(p.name)
    if missing:
        parts = [f"{t} needed by {len(names)} tensor(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                 for t, names in missing.items()]
        raise quants.UnsupportedType(f"no quantizer for {'; '.join(parts)}")
