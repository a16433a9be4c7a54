"""gpuquant.mixes against llama-quantize: the type of every output tensor, for every ftype and option.

The oracle is ``llama_model_quantize`` of llama-cpp-python 0.3.36 on the synthetic models of
``tests/synthetic.py``:
- the whole matrix (every ftype x models x options) runs it with ``dry_run``, which decides the types
  exactly as a real run does (the same preliminary loop) and prints each output tensor with its type in
  output order; the printout is parsed;
- a handful of real runs read the written file back (tensor names, order, types, ``general.file_type``,
  ``block_count``), which also checks the dry-run parsing;
- a real run with a pruned model checks the imatrix keys (``imatrix_name``) through the output bytes.
The default suite (no oracle) checks a committed table of oracle results and the pure-Python helpers.
"""
from __future__ import annotations

import ctypes
import functools
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
from gpuquant.quants import GGMLQuantizationType as T

from gpuquant import mixes as M
from gpuquant import quants
from tests import synthetic as S
from tests.oracle import ORACLE_MARKS

F = M.LlamaFType

# ------------------------------------------------------------------------------------------------------
# synthetic models, built once per session
# ------------------------------------------------------------------------------------------------------

MODELS = {
    # 10 layers, GQA 4, untied, ffn_down rows of 288 (K-quant fallback), F16 with F32 ffn_gate
    "llama": lambda p: S.write_llama(p),
    # GQA 2, tied embeddings (token_embd follows the output rules), BF16
    "llama-tied-gqa2": lambda p: S.write_llama(p, n_layer=8, n_head_kv=4, tied=True, dtype="BF16"),
    # no GQA, all F32, n_ff 80: not even a multiple of 32 -> F16 fallback
    "llama-mha-ff80": lambda p: S.write_llama(p, n_layer=8, n_head_kv=8, n_ff=80, dtype="F32", f32_weights=()),
    # 80 layers with GQA: LLM_TYPE_70B (attn_v bump)
    "llama-70b": lambda p: S.write_llama(p, n_layer=80, n_head_kv=1, n_ff=32, n_vocab=259),
    "qwen3moe": lambda p: S.write_qwen3moe(p),  # 8 experts: the n_expert == 8 rules
    "qwen3moe-e4-tied": lambda p: S.write_qwen3moe(p, n_expert=4, tied=True, n_ff_exp=256),
    "qwen3moe-e16": lambda p: S.write_qwen3moe(p, n_layer=8, n_expert=16, n_ff_exp=32, n_head_kv=8),
    "falcon": lambda p: S.write_falcon(p),  # fused attn_qkv, falcon rules
    "falcon-tied": lambda p: S.write_falcon(p, n_layer=16, tied=True, n_head_kv=8),
}


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = MODELS[name](tmp_path_factory.mktemp("mixes") / f"{name}.gguf")
        return cache[name]

    return get


@functools.lru_cache(maxsize=None)
def _read(path: Path):
    return M.model_info(gguf.GGUFReader(str(path)))


# options as llama_model_quantize_params fields; "imatrix": True means a fake imatrix of the model
OPTIONS = {
    "default": {},
    "imatrix": {"imatrix": True},
    "pure": {"pure": True},
    "leave-output": {"leave_output_tensor": True},
    "output-type": {"output_tensor_type": T.Q5_K},
    "embd-type": {"token_embedding_type": T.Q8_0},
    "both-types": {"output_tensor_type": T.IQ4_NL, "token_embedding_type": T.Q4_0},
    "tensor-types": {"tensor_types": [("attn_v", T.Q8_0), (r"blk\.[0-2]\.ffn_up", T.IQ4_NL),
                                      ("ffn", T.Q5_K), ("attn_output", T.F16)]},
    "prune": {"prune_layers": [1, 3]},
    "prune-imatrix-types": {"prune_layers": [0, 2], "imatrix": True,
                            "tensor_types": [(r"blk\.1\.", T.Q6_K)]},
}
FULL_MATRIX_MODELS = ("llama", "qwen3moe")


def _params(ftype: M.FType, opts: dict) -> M.QuantizeParams:
    return M.QuantizeParams(
        ftype=ftype, pure=opts.get("pure", False),
        quantize_output_tensor=not opts.get("leave_output_tensor", False),
        output_tensor_type=opts.get("output_tensor_type"), token_embedding_type=opts.get("token_embedding_type"),
        tensor_types=opts.get("tensor_types", ()), has_imatrix=bool(opts.get("imatrix")),
        prune_layers=opts.get("prune_layers", ()))


# ------------------------------------------------------------------------------------------------------
# the oracle: llama_model_quantize with its log captured
# ------------------------------------------------------------------------------------------------------

# "[  12/  93] blk.0.attn_v.weight   - [  256,    64,     1,     1], type =    f16, size = ... (q6_K)"
_LOG_LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =\s*[\d.]+ MiB"
                       r"(?: ->\s*[\d.]+ MiB \((\w+)\))?")
_COUNT = 43  # GGML_TYPE_COUNT: "not set" / array terminator
_SILENT = None  # the log callback left installed; module level so that ctypes never calls a freed one


def _silence(lc) -> None:
    global _SILENT
    if _SILENT is None:
        _SILENT = lc.llama_log_callback(lambda level, text, user: None)
    lc.llama_log_set(_SILENT, None)


def run_oracle(src: Path, dst: Path, ftype: M.FType, opts: dict, *, dry_run: bool) -> tuple[int, str]:
    """llama_model_quantize(src, dst) with ``opts`` (see OPTIONS) -> (return code, log text)."""
    import llama_cpp as lc

    chunks: list[str] = []
    callback = lc.llama_log_callback(lambda level, text, user: chunks.append(text.decode(errors="replace")))
    p = lc.llama_model_quantize_default_params()
    p.nthread = 1
    p.ftype = int(ftype)
    p.only_copy = ftype.name == "COPY"
    p.dry_run = dry_run
    p.pure = opts.get("pure", False)
    p.quantize_output_tensor = not opts.get("leave_output_tensor", False)
    for field in ("output_tensor_type", "token_embedding_type"):
        setattr(p, field, _COUNT if opts.get(field) is None else int(opts[field]))
    keep = []  # ctypes buffers that must outlive the call
    imatrix = opts.get("imatrix")
    if imatrix is True:
        imatrix = S.fake_imatrix(src)
    if imatrix:
        arrays = [(k.encode(), np.ascontiguousarray(v, dtype=np.float32)) for k, v in imatrix.items()]
        data = (lc.llama_model_imatrix_data * (len(arrays) + 1))()
        for i, (k, v) in enumerate(arrays):
            data[i].name, data[i].size = k, v.size
            data[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        keep += [arrays, data]
        p.imatrix = data
    if opts.get("tensor_types"):
        tts = (lc.llama_model_tensor_override * (len(opts["tensor_types"]) + 1))()
        for i, (pattern, qtype) in enumerate(opts["tensor_types"]):
            tts[i].pattern, tts[i].type = pattern.encode(), int(qtype)
        tts[len(opts["tensor_types"])].type = _COUNT
        keep.append(tts)
        p.tt_overrides = tts
    if opts.get("prune_layers"):
        prune = (ctypes.c_int32 * (len(opts["prune_layers"]) + 1))(*opts["prune_layers"], -1)
        keep.append(prune)
        p.prune_layers = prune
    lc.llama_log_set(callback, None)
    try:
        rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    finally:
        _silence(lc)
    return rc, "".join(chunks)


def oracle_dry_types(src: Path, tmp: Path, ftype: M.FType, opts: dict):
    """[(output name, type)] in output order from a dry run, or None when llama-quantize fails."""
    rc, log = run_oracle(src, tmp / "unused.gguf", ftype, opts, dry_run=True)
    if rc != 0:
        return None
    return [(m.group(1), quants.parse_type(m.group(3) or m.group(2))) for m in _LOG_LINE.finditer(log)]


def mine(src: Path, ftype: M.FType, opts: dict):
    arch, kv, tensors = _read(src)
    try:
        plan = M.plan(arch, kv, tensors, _params(ftype, opts))
    except ValueError:
        return None
    return [(p.name, p.target_type) for p in plan]


def _diff(got, want) -> str:
    if got is None or want is None:
        return f"oracle {'failed' if got is None else 'ran'}, plan {'failed' if want is None else 'ran'}"
    rows = [f"  {a[0]}: oracle {a[1].name}, plan {b[1].name}" if a[0] == b[0] else f"  order: {a[0]} vs {b[0]}"
            for a, b in zip(got, want) if a != b]
    return "\n".join(rows[:10] + [f"  ({len(got)} vs {len(want)} tensors)"])


MATRIX = [(m, o) for m in MODELS for o in OPTIONS if m in FULL_MATRIX_MODELS or o in ("default", "imatrix")]


@pytest.mark.parametrize("model,option", [pytest.param(m, o, marks=ORACLE_MARKS) for m, o in MATRIX])
def test_types_match_oracle(model, option, model_path, tmp_path):
    """Every ftype llama-quantize accepts: same output tensors, order and types (or both fail)."""
    src, opts = model_path(model), OPTIONS[option]
    if opts.get("imatrix") is True:
        opts = {**opts, "imatrix": S.fake_imatrix(src)}
    failures = []
    for ftype in M.FTYPES:
        if ftype.name == "COPY":
            continue
        got, want = oracle_dry_types(src, tmp_path, ftype, opts), mine(src, ftype, opts)
        if got != want:
            failures.append(f"{ftype.name}:\n{_diff(got, want)}")
    assert not failures, f"{model} / {option}: plan differs from llama-quantize for\n" + "\n".join(failures)


# real runs: (model, ftype, option); fast types only, the written file is read back
REAL_RUNS = [
    ("llama", "Q4_K_M", "default"),
    ("llama", "Q3_K_S", "prune"),
    ("llama", "Q4_0", "imatrix"),
    ("llama-tied-gqa2", "Q5_K_S", "output-type"),
    ("llama-mha-ff80", "Q6_K", "tensor-types"),
    ("qwen3moe", "MXFP4_MOE", "default"),
    ("qwen3moe", "Q8_0", "prune-imatrix-types"),
    ("falcon", "Q2_K", "default"),
    ("llama", "COPY", "default"),
    ("llama-mha-ff80", "F16", "default"),
]


@pytest.mark.parametrize("model,ftype,option", [pytest.param(*r, marks=ORACLE_MARKS) for r in REAL_RUNS])
def test_written_file_matches_plan(model, ftype, option, model_path, tmp_path):
    """Names, order and types of the written file, its general.file_type and block_count."""
    src, ft, opts = model_path(model), M.parse_ftype(ftype), OPTIONS[option]
    dst = tmp_path / "out.gguf"
    rc, log = run_oracle(src, dst, ft, opts, dry_run=False)
    assert rc == 0, log[-2000:]
    out = gguf.GGUFReader(str(dst))
    arch, kv, tensors = _read(src)
    plan = M.plan(arch, kv, tensors, _params(ft, opts))
    assert [(t.name, int(t.tensor_type)) for t in out.tensors] == [(p.name, int(p.target_type)) for p in plan]
    assert [tuple(int(x) for x in t.shape) for t in out.tensors] == [p.shape_ne for p in plan]
    assert int(out.fields["general.file_type"].contents()) == plan.ftype
    block_count = int(out.fields[f"{arch}.block_count"].contents())
    assert block_count == (plan.block_count if opts.get("prune_layers") else kv[f"{arch}.block_count"])
    assert plan.n_fallback == len(re.findall(r"falling back to", log))


@pytest.mark.parametrize("file_type", [pytest.param(None, marks=ORACLE_MARKS), pytest.param(0, marks=ORACLE_MARKS)])
def test_copy_file_type(file_type, tmp_path):
    """COPY writes the loader's file type: general.file_type, else guessed from the tensor types."""
    src = S.write_llama(tmp_path / "in.gguf", n_layer=2, file_type=file_type)
    dst = tmp_path / "out.gguf"
    rc, log = run_oracle(src, dst, M.parse_ftype("COPY"), {}, dry_run=False)
    assert rc == 0, log[-2000:]
    plan = M.plan(*_read(src), M.QuantizeParams.for_ftype("COPY"))
    assert int(gguf.GGUFReader(str(dst)).fields["general.file_type"].contents()) == plan.ftype
    assert plan.ftype == (F.F16 | F.GUESSED if file_type is None else file_type)


@pytest.mark.parametrize("ftype", [pytest.param(f.name, marks=ORACLE_MARKS) for f in M.FTYPES
                                   if f.name not in ("COPY", "Q1_0")])
def test_imatrix_requirement_matches_oracle(ftype, model_path, tmp_path):
    """Without an imatrix llama-quantize refuses exactly the mixes check_imatrix refuses.

    Only refusals run for real (they stop before any data is written); the others are covered above.
    """
    src, ft = model_path("llama"), M.parse_ftype(ftype)
    params = M.QuantizeParams(ftype=ft)
    plan = M.plan(*_read(src), params)
    try:
        M.check_imatrix(plan, params)
    except ValueError:
        rc, log = run_oracle(src, tmp_path / "out.gguf", ft, {}, dry_run=False)
        assert rc != 0 and "requires an imatrix" in log, log[-2000:]
    else:
        assert ft.name not in ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "Q2_K_S")


@pytest.mark.parametrize("unused", [pytest.param(0, marks=ORACLE_MARKS)])
def test_imatrix_names_after_pruning(unused, model_path, tmp_path):
    """imatrix_name is the key llama-quantize reads: an imatrix holding only those keys gives the same
    bytes as the full one; the same values keyed by output names give different bytes."""
    src = model_path("llama")
    opts = {"prune_layers": [1, 4], "pure": True}
    full = S.fake_imatrix(src)
    plan = M.plan(*_read(src), _params(M.parse_ftype("Q4_0"), {**opts, "imatrix": True}))
    used = {p.imatrix_name: full[p.imatrix_name] for p in plan if p.quantize and p.imatrix_name in full}
    assert any(p.imatrix_name != p.name for p in plan)
    by_output_name = {p.name: full[p.imatrix_name] for p in plan if p.quantize and p.imatrix_name in full}
    outputs = []
    for i, imatrix in enumerate((full, used, by_output_name)):
        dst = tmp_path / f"out{i}.gguf"
        rc, log = run_oracle(src, dst, M.parse_ftype("Q4_0"), {**opts, "imatrix": imatrix}, dry_run=False)
        assert rc == 0, log[-2000:]
        outputs.append(dst.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


@pytest.mark.parametrize("model", [pytest.param(m, marks=ORACLE_MARKS) for m in MODELS if m != "llama-70b"])
def test_synthetic_models_load_and_decode(model, model_path):
    """The synthetic models are real models: llama.cpp loads all tensors and evaluates a few tokens."""
    import llama_cpp as lc

    lc.llama_backend_init()
    _silence(lc)
    m = lc.llama_model_load_from_file(str(model_path(model)).encode(), lc.llama_model_default_params())
    assert m, f"llama.cpp cannot load {model}"
    try:
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = 64, 8, 8
        ctx = lc.llama_init_from_model(m, cp)
        assert ctx
        try:
            tokens = (lc.llama_token * 4)(1, 270, 5, 7)
            assert lc.llama_decode(ctx, lc.llama_batch_get_one(tokens, 4)) == 0
        finally:
            lc.llama_free(ctx)
    finally:
        lc.llama_model_free(m)


# ------------------------------------------------------------------------------------------------------
# default suite: a committed table of oracle results, and the helpers
# ------------------------------------------------------------------------------------------------------

# llama-quantize 0.3.36 on write_llama() / write_qwen3moe() defaults (per-layer roles list layers 0..n-1);
# tensors not listed keep their type. Regenerate with the oracle test below if the models change.
EXPECTED = {
    ("llama", "Q4_K_M", False): {
        "output.weight": "Q6_K",
        "token_embd.weight": "Q4_K",
        "attn_k": "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K",
        "attn_output": "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K",
        "attn_q": "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K",
        "attn_v": "Q6_K Q4_K Q4_K Q6_K Q4_K Q4_K Q6_K Q4_K Q6_K Q6_K",
        "ffn_down": "Q8_0 Q5_0 Q5_0 Q8_0 Q5_0 Q5_0 Q8_0 Q5_0 Q8_0 Q8_0",
        "ffn_gate": "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K",
        "ffn_up": "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K",
    },
    ("llama", "IQ3_XXS", False): {
        "output.weight": "Q5_K",
        "token_embd.weight": "IQ3_S",
        "attn_k": "IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S",
        "attn_output": "IQ3_S IQ3_S IQ3_S IQ3_S IQ3_S IQ3_S IQ3_S IQ3_S IQ3_S IQ3_S",
        "attn_q": "IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S IQ2_S",
        "attn_v": "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K",
        "ffn_down": "Q5_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0",
        "ffn_gate": "IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS",
        "ffn_up": "IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS IQ3_XXS",
    },
    ("qwen3moe", "Q4_K_M", False): {
        "output.weight": "Q6_K",
        "token_embd.weight": "Q4_K",
        "attn_k": "Q8_0 Q8_0 Q8_0 Q8_0",
        "attn_output": "Q5_K Q5_K Q5_K Q5_K",
        "attn_q": "Q4_K Q4_K Q4_K Q4_K",
        "attn_v": "Q8_0 Q8_0 Q8_0 Q8_0",
        "ffn_down_exps": "Q5_0 Q5_0 Q8_0 Q8_0",
        "ffn_gate_exps": "Q4_K Q4_K Q4_K Q4_K",
        "ffn_up_exps": "Q4_K Q4_K Q4_K Q4_K",
    },
    ("qwen3moe", "IQ2_M", True): {
        "output.weight": "Q5_K",
        "token_embd.weight": "IQ3_S",
        "attn_k": "Q4_K Q4_K Q4_K Q4_K",
        "attn_output": "Q5_K Q5_K Q5_K Q5_K",
        "attn_q": "IQ2_S IQ2_S IQ2_S IQ2_S",
        "attn_v": "Q4_K Q4_K Q4_K Q4_K",
        "ffn_down_exps": "IQ4_NL IQ4_NL IQ4_NL IQ4_NL",
        "ffn_gate_exps": "IQ2_S IQ2_S IQ2_S IQ2_S",
        "ffn_up_exps": "IQ2_S IQ2_S IQ2_S IQ2_S",
    },
}


def summarize(pairs, tensors) -> dict[str, str]:
    """Types grouped by role (``blk.N.<role>.weight`` -> one entry per layer), unchanged tensors left out."""
    source = {t.name: t.type for t in tensors}
    changed = {name for name, t in pairs if source.get(name) != t}
    out: dict[str, list[str]] = {}
    for name, t in pairs:
        m = re.match(r"blk\.\d+\.(.+)\.weight$", name)
        out.setdefault(m.group(1) if m else name, []).append((name, t.name))
    return {k: " ".join(t for _, t in v) for k, v in out.items() if any(n in changed for n, _ in v)}


@pytest.mark.parametrize("case", list(EXPECTED), ids=lambda c: f"{c[0]}-{c[1]}")
def test_expected_table(case, model_path):
    model, ftype, imatrix = case
    arch, kv, tensors = _read(model_path(model))
    plan = M.plan(arch, kv, tensors, M.QuantizeParams.for_ftype(ftype, has_imatrix=imatrix))
    assert summarize([(p.name, p.target_type) for p in plan], tensors) == EXPECTED[case]


@pytest.mark.parametrize("case", [pytest.param(c, marks=ORACLE_MARKS) for c in EXPECTED],
                         ids=lambda c: f"{c[0]}-{c[1]}")
def test_expected_table_is_the_oracles(case, model_path, tmp_path):
    model, ftype, imatrix = case
    src = model_path(model)
    got = oracle_dry_types(src, tmp_path, M.parse_ftype(ftype), {"imatrix": S.fake_imatrix(src)} if imatrix else {})
    assert summarize(got, _read(src)[2]) == EXPECTED[case]


def test_ftype_table():
    names = [f.name for f in M.FTYPES]
    assert len(names) == len(set(names)) == 39
    assert names.index("COPY") > names.index("F32")
    for f in M.FTYPES:
        assert M.parse_ftype(f.name.lower()) == f
        M.default_type(f.ftype)  # every accepted ftype has a base type
    assert M.parse_ftype("15").name == "Q4_K"          # first entry with the id: the alias
    assert M.parse_ftype(" 12 trailing").name == "Q3_K"  # std::stoi semantics
    assert M.parse_ftype(0).name == "F32"
    assert int(M.parse_ftype("q4_k_m")) == 15
    with pytest.raises(ValueError):
        M.parse_ftype("Q4_K_X")
    with pytest.raises(ValueError):
        M.parse_ftype("39")  # NVFP4 is a llama_ftype but not a QUANT_OPTIONS entry
    with pytest.raises(ValueError):
        M.default_type(F.NVFP4)
    assert M.default_type(F.IQ2_S) == T.IQ2_XS and M.default_type(F.IQ3_XS) == T.IQ3_S
    assert M.ftype_name(15) == "Q4_K" and M.ftype_description(15 | F.GUESSED) == "(guessed) Q4_K - Medium"
    assert M.QuantizeParams.for_ftype("copy").only_copy


def test_cli_option_parsers():
    assert M.parse_tensor_type("Attn_Q=q8_0") == ("attn_q", T.Q8_0)
    assert M.parse_tensor_type("ffn=Q2_0")[1] == quants.T.Q2_0
    for bad in ("attn_q", "=q8_0", "attn_q=", "attn_q=q9_9"):
        with pytest.raises(ValueError):
            M.parse_tensor_type(bad)
    assert M.parse_prune_layers("5,1,5,3") == [1, 3, 5]
    with pytest.raises(ValueError):
        M.parse_prune_layers("1,-2")


def _tinfo(name, *ne, t=T.F16):
    return M.TensorInfo(name, ne, t)


LLAMA_KV = {"llama.block_count": 12, "llama.attention.head_count": 8, "llama.attention.head_count_kv": 2}


def test_order_pruning_and_imatrix_names():
    tensors = [_tinfo(f"blk.{i}.attn_q.weight", 256, 256) for i in (10, 2, 11, 0, 1, 9, 3, 4, 5, 6, 7, 8)]
    tensors += [_tinfo("output_norm.weight", 256, t=T.F32), _tinfo("token_embd.weight", 256, 300)]
    plan = M.plan("llama", LLAMA_KV, tensors, M.QuantizeParams(ftype=F.Q8_0, prune_layers=[2, 9],
                                                                 has_imatrix=True))
    assert [p.source_name for p in plan][:4] == ["output_norm.weight", "token_embd.weight",
                                                 "blk.0.attn_q.weight", "blk.1.attn_q.weight"]
    assert [p.name for p in plan][-3:] == ["blk.7.attn_q.weight", "blk.8.attn_q.weight", "blk.9.attn_q.weight"]
    assert {p.name: p.imatrix_name for p in plan}["blk.7.attn_q.weight"] == "blk.8.attn_q.weight"
    assert plan.block_count == 10 == M.pruned_block_count(LLAMA_KV, "llama", [2, 9])
    assert len(plan) == 12


def test_shapes_decide_quantization_and_fallback():
    tensors = [_tinfo("blk.0.attn_q.weight", 4096, 1),       # ggml_n_dims 1: kept
               _tinfo("blk.0.attn_k.weight", 96, 64),        # 96 % 256 -> Q5_0 fallback
               _tinfo("blk.0.attn_v.weight", 48, 64),        # 48 % 32 -> F16 fallback
               _tinfo("blk.0.ffn_gate_inp.weight", 256, 8),  # router: kept
               _tinfo("blk.0.ffn_down.weight", 256, 64, 8)]  # 3-D experts
    plan = {p.name: p for p in M.plan("llama", LLAMA_KV, tensors, M.QuantizeParams(ftype=F.Q4_K_S, pure=True))}
    assert not plan["blk.0.attn_q.weight"].allows_quantization
    assert plan["blk.0.attn_k.weight"].target_type == T.Q5_0 and plan["blk.0.attn_k.weight"].fallback
    assert plan["blk.0.attn_v.weight"].target_type == T.F16
    assert plan["blk.0.ffn_gate_inp.weight"].target_type == T.F16 and not plan["blk.0.ffn_gate_inp.weight"].quantize
    assert plan["blk.0.ffn_down.weight"].target_type == T.Q4_K
    with pytest.raises(ValueError, match=r"q1_0.*blk\.0\.attn_k\.weight"):
        M.plan("llama", LLAMA_KV, tensors, M.QuantizeParams(ftype=F.Q1_0))


def test_checks(monkeypatch):
    tensors = [_tinfo("token_embd.weight", 256, 300)] + [_tinfo(f"blk.{i}.ffn_up.weight", 256, 64)
                                                        for i in range(12)]
    params = M.QuantizeParams(ftype=F.IQ2_XXS)
    plan = M.plan("llama", LLAMA_KV, tensors, params)
    with pytest.raises(ValueError, match=r"blk\.0\.ffn_up\.weight -> IQ2_XXS"):
        M.check_imatrix(plan, params)
    M.check_imatrix(plan, M.QuantizeParams(ftype=F.IQ2_XXS, has_imatrix=True))

    q4 = M.plan("llama", LLAMA_KV, tensors, M.QuantizeParams(ftype=F.Q4_0))
    registry = dict(quants.registered())
    del registry[T.Q4_0]
    monkeypatch.setattr(quants, "_REGISTRY", registry)
    with pytest.raises(quants.UnsupportedType, match=r"no quantizer for Q4_0 needed by \d+ tensor\(s\) "
                                                     r"\(blk\.0\.ffn_up\.weight, blk\.1\.ffn_up\.weight, "):
        M.check_implemented(q4)
    M.check_implemented(M.plan("llama", LLAMA_KV, tensors, M.QuantizeParams(ftype=F.F16)))

    requant = [_tinfo("blk.0.ffn_up.weight", 256, 64, t=T.Q8_0)]
    p = M.QuantizeParams(ftype=F.Q4_0)
    with pytest.raises(ValueError, match="requantizing from type Q8_0"):
        M.check_requantize(M.plan("llama", LLAMA_KV, requant, p), p)
    p = M.QuantizeParams(ftype=F.Q4_0, allow_requantize=True)
    M.check_requantize(M.plan("llama", LLAMA_KV, requant, p), p)
