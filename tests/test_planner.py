"""The size planner (gpuquant/planner*.py): budgets, fixed choices, determinism, saved plans reproducing bytes.

All on the small synthetic llama of tests/synthetic.py with a few rows measured per tensor and a narrow
ladder, so that each planning run takes about a second on the CPU.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from gpuquant import planner as pl, quants
from gpuquant.api import UsageError, quantize_file
from gpuquant.quants import GGMLQuantizationType as T
from tests.oracle import available as oracle_available
from tests.synthetic import write_llama
from tests.oracle_files import assert_same, ftype_id, oracle_quantize_file, oracle_with_imatrix, sha256, write_imatrix

FAST = dict(device="cpu", candidates="Q4_0,Q5_0,Q8_0,Q3_K,Q4_K,Q6_K", measure_rows=8)


def _plan(src, **kw):
    opts = {**FAST, **kw}
    return quantize_file(src, None, opts.pop("ftype", None), dry_run=True, **opts).size_plan


# ---------------------------------------------------------------------------------------------- pure parts


def test_parse_size():
    assert pl.parse_size("3.5GiB") == int(3.5 * (1 << 30))
    assert pl.parse_size("800MB") == 800_000_000
    assert pl.parse_size("2 MiB") == 2 << 20
    assert pl.parse_size("123456") == 123456
    with pytest.raises(pl.BudgetError, match="--target-size.*'lots'"):
        pl.parse_size("lots")


def test_default_ladder_comes_from_the_registry():
    ladder = pl.default_ladder()
    for t, cls in quants.registered().items():
        bpw = pl.bpw_of(t)
        expected = cls.family not in ("floats", "ternary", "fp4", "lowbit") and 2.0 <= bpw <= 8.5
        assert (t in ladder) == expected, t.name
    assert {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS, T.IQ2_XS, T.IQ3_S} <= set(ladder)


def test_candidates_parse_and_need_whole_blocks():
    assert pl.parse_candidates("q6_k, Q4_K") == (T.Q4_K, T.Q6_K)
    with pytest.raises(pl.BudgetError, match="--candidates.*Q9_X"):
        pl.parse_candidates("Q4_K,Q9_X")
    assert pl.candidates_for([T.Q4_0, T.Q4_K, T.IQ2_XS], 288, True, {T.IQ2_XS}) == [T.Q4_0]
    assert pl.candidates_for([T.Q4_0, T.Q4_K, T.IQ2_XS], 512, False, {T.IQ2_XS}) == [T.Q4_0, T.Q4_K]


def _brute(items, cap):
    best = None
    for combo in itertools.product(*(range(len(it.options)) for it in items)):
        size = sum(it.options[k].nbytes for it, k in zip(items, combo))
        err = sum(it.options[k].error for it, k in zip(items, combo))
        if size <= cap and (best is None or err < best - 1e-12):
            best = err
    return best


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_exact_on_small_instances(seed):
    """With bytes small enough for unit steps the solver is exact; it never exceeds the capacity."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(6):
        sizes = sorted(rng.choice(np.arange(10, 200), 4, replace=False))
        errs = sorted(rng.random(4) * 100, reverse=True)
        items.append(pl.Item(f"t{i}", [pl.Option(T.Q4_0, int(s), float(e)) for s, e in zip(sizes, errs)]))
    cap = int(sum(it.options[0].nbytes for it in items) + rng.integers(0, 500))
    choice = pl.solve(items, cap)
    size = sum(it.options[k].nbytes for it, k in zip(items, choice))
    err = sum(it.options[k].error for it, k in zip(items, choice))
    assert size <= cap
    assert err == pytest.approx(_brute(items, cap))


def test_knapsack_coarse_steps_stay_within_budget():
    """Few DP cells: sizes are rounded up, the greedy pass spends the rest, the budget still holds."""
    rng = np.random.default_rng(7)
    items = [pl.Item(f"t{i}", [pl.Option(T.Q4_0, int(s), float(1e6 / s)) for s in sorted(rng.integers(1000, 90000, 3))])
             for i in range(40)]
    cap = sum(it.options[0].nbytes for it in items) + 400_000
    choice = pl.solve(items, cap, cells=4000)
    assert sum(it.options[k].nbytes for it, k in zip(items, choice)) <= cap
    assert pl.solve(items, cap, cells=4000) == choice


# ---------------------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("bpw", [4.6, 5.3, 6.9])
def test_bpw_budget_never_exceeded_and_tight(llama_f16, tmp_path, bpw):
    out = tmp_path / "planned.gguf"
    report = quantize_file(llama_f16, out, None, target_bpw=bpw, **FAST)
    plan = report.size_plan
    n_el = sum(t.n_elements for t in report.tensors)
    written = sum(t.dst_bytes for t in report.tensors)
    assert written == plan.data_bytes and n_el == plan.n_elements
    assert written * 8 <= bpw * n_el
    assert plan.bpw > bpw - 0.15  # it spends the budget
    assert os.path.getsize(out) == plan.file_bytes


def test_size_budget_counts_the_whole_file(llama_f16, tmp_path):
    out = tmp_path / "planned.gguf"
    report = quantize_file(llama_f16, out, None, target_size="2.5MiB", **FAST)
    assert os.path.getsize(out) <= 5 * (1 << 19)
    assert os.path.getsize(out) == report.size_plan.file_bytes
    assert os.path.getsize(out) > 5 * (1 << 19) - 64 * 1024


def test_budget_too_small_names_the_smallest_size(llama_f16):
    with pytest.raises(UsageError, match="too small") as e:
        _plan(llama_f16, target_bpw=2.0)
    msg = str(e.value)
    assert "--target-bpw 2 bpw" in msg and "Q3_K" in msg and "bpw)" in msg
    need = int(msg.split(" needs ")[1].split()[0])
    n_el = _plan(llama_f16, target_bpw=100.0).n_elements
    exact = _plan(llama_f16, target_bpw=(need + 0.5) * 8 / n_el)  # exactly `need` bytes fit
    assert exact.data_bytes == need
    with pytest.raises(UsageError, match=f"needs {need} "):
        _plan(llama_f16, target_bpw=(need - 0.5) * 8 / n_el)
    with pytest.raises(UsageError, match="--target-size 1MiB: too small.*bytes of file"):
        _plan(llama_f16, target_size="1MiB")


def test_budget_above_f16_says_so(llama_f16):
    plan = _plan(llama_f16, target_bpw=40.0)
    assert any("at least the model's size in F16" in n for n in plan.notes)
    assert all(r.qtype == T.Q8_0 for r in plan.rows if not r.fixed)  # the least-error candidate
    assert not any("F16" in n for n in _plan(llama_f16, target_bpw=6.0).notes)


# ---------------------------------------------------------------------------------------------- fixed choices


def test_fixed_overrides_stay_fixed(llama_f16, tmp_path):
    out = tmp_path / "fixed.gguf"
    report = quantize_file(llama_f16, out, None, target_bpw=5.0, output_tensor_type="q8_0",
                           token_embedding_type="Q4_0", tensor_types=[("attn_v", "q6_k")], **FAST)
    rows = {r.name: r for r in report.size_plan.rows}
    assert rows["output.weight"].qtype == T.Q8_0 and rows["output.weight"].fixed == "--output-tensor-type"
    assert rows["token_embd.weight"].qtype == T.Q4_0 and rows["token_embd.weight"].fixed == "--token-embedding-type"
    for name, r in rows.items():
        if "attn_v" in name:
            assert r.qtype == T.Q6_K and r.fixed == "--tensor-type"
    written = {t.name: t.dst_type for t in report.tensors}
    assert all(written[n] == r.qtype for n, r in rows.items())
    norms = [t for t in report.tensors if len([d for d in t.shape if d > 1]) == 1]
    assert norms and all(t.dst_type == t.src_type and t.name not in rows for t in norms)  # never quantized


def test_needs_a_quantized_base_type(llama_f16):
    with pytest.raises(UsageError, match="--type F16: a size target needs a quantized base type"):
        _plan(llama_f16, target_bpw=5.0, ftype="F16")


# ---------------------------------------------------------------------------------------------- determinism and plans


def test_deterministic(llama_f16, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    ra = quantize_file(llama_f16, a, None, target_bpw=5.1, save_plan=str(tmp_path / "a.txt"), **FAST)
    rb = quantize_file(llama_f16, b, None, target_bpw=5.1, save_plan=str(tmp_path / "b.txt"), **FAST)
    assert ra.size_plan.types() == rb.size_plan.types()
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()
    assert sha256(a) == sha256(b)


def _saved(plan_file):
    out = []
    for tok in plan_file.read_text().split():
        pat, _, t = tok.partition("=")
        out.append((pat, t))
    return out


def test_saved_plan_reproduces_bytes_through_gpuquant(llama_f16, tmp_path):
    planned, again, plan_file = tmp_path / "planned.gguf", tmp_path / "again.gguf", tmp_path / "plan.txt"
    report = quantize_file(llama_f16, planned, None, target_bpw=5.2, save_plan=str(plan_file), **FAST)
    base = report.size_plan.base_ftype
    assert report.ftype == base
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "gpuquant", "run", str(llama_f16), str(again), base, "--device", "cpu",
                        "--tensor-type-file", str(plan_file), "--quiet"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert_same(again, planned)


@pytest.mark.oracle
def test_saved_plan_reproduces_bytes_through_llama_quantize(llama_f16, tmp_path):
    if not oracle_available():
        pytest.skip("llama-cpp-python 0.3.36 (the oracle) is not installed")
    planned, ref, plan_file = tmp_path / "planned.gguf", tmp_path / "ref.gguf", tmp_path / "plan.txt"
    report = quantize_file(llama_f16, planned, None, target_bpw=4.8, save_plan=str(plan_file), **FAST)
    oracle_quantize_file(llama_f16, ref, ftype_id(report.size_plan.base_ftype),
                         tensor_types=[(p, int(quants.parse_type(t))) for p, t in _saved(plan_file)])
    assert_same(planned, ref)


@pytest.mark.oracle
def test_saved_plan_with_imatrix_and_iq_types_through_llama_quantize(llama_f16, tmp_path):
    """With an imatrix the IQ2/IQ3 rungs are candidates; the file still matches llama-quantize's."""
    if not oracle_available():
        pytest.skip("llama-cpp-python 0.3.36 (the oracle) is not installed")
    src = write_llama(tmp_path / "tiny.gguf", n_layer=2, n_ff=512)  # IQ2 is slow in numpy: a tiny model
    im = write_imatrix(src, tmp_path / "imatrix.gguf", "gguf")
    planned, ref, plan_file = tmp_path / "planned.gguf", tmp_path / "ref.gguf", tmp_path / "plan.txt"
    report = quantize_file(src, planned, None, target_bpw=3.4, imatrix=str(im), save_plan=str(plan_file),
                           device="cpu", candidates="Q4_0,IQ2_S,IQ3_XXS,Q2_K,Q3_K,Q4_K", measure_rows=4)
    plan = report.size_plan
    assert plan.weighted and {T.IQ2_S, T.IQ3_XXS} & {r.qtype for r in plan.rows}
    oracle_with_imatrix(src, ref, plan.base_ftype, im,
                        tensor_types=[(p, int(quants.parse_type(t))) for p, t in _saved(plan_file)])
    assert_same(planned, ref)


def test_dry_run_prints_the_plan_and_presets(llama_f16, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "gpuquant", "run", str(llama_f16), "--target-bpw", "5", "--dry-run",
                        "--device", "cpu", "--candidates", FAST["candidates"], "--measure-rows", "8",
                        "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    for text in ("size plan", "per type", "budget:", "nearest presets", "blk.0.attn_q.weight", "Q4_K_M"):
        assert text in r.stdout
    assert "measuring" in r.stderr
    import json

    doc = json.loads((tmp_path / "r.json").read_text())["size_plan"]
    assert doc["bpw"] <= 5.0 and doc["data_bytes"] <= doc["budget"]["max_bytes"]
    assert {t["name"] for t in doc["tensors"]} >= {"blk.0.attn_q.weight", "output.weight"}
    bad = subprocess.run([sys.executable, "-m", "gpuquant", "run", str(llama_f16), "--target-bpw", "1", "--dry-run",
                          "--device", "cpu", "--candidates", "Q4_0"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "too small" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("zero_copy", [True, False])
def test_measuring_on_the_kernels_matches_numpy(llama_f16, zero_copy):
    """The measuring pass on the emulated kernels (in place, and through "device" buffers as on a GPU)
    measures the same errors as the numpy reference: both write the same bytes."""
    from gpuquant.backends import DeviceError
    from gpuquant.backends.emulated import EmulatedDevice

    try:
        dev = EmulatedDevice(threads=2)
    except DeviceError as e:
        pytest.skip(f"no host compiler for the emulated kernels: {e}")
    dev.zero_copy = zero_copy
    try:
        kw = dict(target_bpw=5.0, candidates="Q4_0,Q8_0,Q4_K", measure_rows=8)
        on_kernels = quantize_file(llama_f16, None, None, dry_run=True, device=dev, **kw).size_plan
    finally:
        dev.close()
    on_numpy = quantize_file(llama_f16, None, None, dry_run=True, device="cpu", **kw).size_plan
    assert [(r.name, r.qtype, r.error) for r in on_kernels.rows] == [(r.name, r.qtype, r.error) for r in on_numpy.rows]
    assert all("Q4_K" not in n and "Q8_0" not in n for n in on_kernels.notes)  # only the presets' IQ3_S


def test_option_errors_name_the_option(llama_f16):
    with pytest.raises(UsageError, match="--target-bpw and --target-size cannot be used together"):
        _plan(llama_f16, target_bpw=5.0, target_size="2MiB")
    with pytest.raises(UsageError, match="--target-size .* --keep-split"):
        _plan(llama_f16, target_size="2MiB", keep_split=True)
    with pytest.raises(UsageError, match="--measure-rows: must be a positive number, got 0"):
        _plan(llama_f16, target_bpw=5.0, measure_rows=0)
    with pytest.raises(UsageError, match="--candidates: .*Q7_K"):
        _plan(llama_f16, target_bpw=5.0, candidates="Q7_K")


def test_positional_type_is_optional_with_a_target():
    from gpuquant.cli import parse_positional

    assert parse_positional([], None, type_optional=True) == (None, None, None)
    assert parse_positional(["out.gguf"], None, type_optional=True) == ("out.gguf", None, None)
    assert parse_positional(["Q4_K_M"], None, type_optional=True) == (None, "Q4_K_M", None)
    assert parse_positional(["out.gguf", "Q5_K_M", "4"], None, type_optional=True) == ("out.gguf", "Q5_K_M", 4)


@pytest.mark.oracle
def test_moe_expert_tensors_planned_and_reproduced(moe_f16, tmp_path):
    """3-D expert tensors are measured per expert (with per-expert importance weights) and planned as one
    tensor; the saved plan gives llama-quantize's bytes."""
    if not oracle_available():
        pytest.skip("llama-cpp-python 0.3.36 (the oracle) is not installed")
    im = write_imatrix(moe_f16, tmp_path / "imatrix.gguf", "gguf")
    planned, ref, plan_file = tmp_path / "planned.gguf", tmp_path / "ref.gguf", tmp_path / "plan.txt"
    report = quantize_file(moe_f16, planned, None, target_bpw=5.0, imatrix=str(im), save_plan=str(plan_file), **FAST)
    rows = {r.name: r for r in report.size_plan.rows}
    assert any("_exps" in n for n in rows) and report.size_plan.bpw <= 5.0
    oracle_with_imatrix(moe_f16, ref, report.size_plan.base_ftype, im,
                        tensor_types=[(p, int(quants.parse_type(t))) for p, t in _saved(plan_file)])
    assert_same(planned, ref)
