"""Perplexity of the size planner vs llama-quantize's presets at the same bits per weight (bench/planner.md).

    python bench/planner_bench.py --f16 /tmp/smol-f16.gguf --bin /work/llama-build/bin

1. texts (offline, disjoint): calibration = the GPL-3 text (/usr/share/common-licenses/GPL-3) plus the first
   half (sorted keys) of Python's reference topics (pydoc_data.topics); held-out = the second half;
2. an imatrix of the F16 model on the calibration text (llama-imatrix);
3. every preset with that imatrix (gpuquant, byte-identical to llama-quantize), its bpw as llama.cpp counts it;
4. one measuring pass, then the planner at each preset's own bpw (planner_api.plan_budgets), each plan saved
   and re-run through llama-quantize --tensor-type-file (its bytes compared with gpuquant's);
5. llama-perplexity of every file on the held-out text; results JSON, table (markdown) and plot (PNG).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpuquant import planner_api  # noqa: E402
from gpuquant.api import quantize_file  # noqa: E402
from gpuquant.config import QuantizeConfig  # noqa: E402

PRESETS = ("Q2_K", "Q3_K_M", "IQ4_XS", "Q4_K_M", "Q5_K_M", "Q6_K")
GPL = Path("/usr/share/common-licenses/GPL-3")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_texts(work: Path, calib_chars: int, heldout_chars: int) -> tuple[Path, Path]:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    half = len(keys) // 2
    calib = "\n\n".join(topics[k] for k in keys[:half])[:calib_chars] + "\n\n" + GPL.read_text()
    held = "\n\n".join(topics[k] for k in keys[half:])[:heldout_chars]
    c, h = work / "calibration.txt", work / "heldout.txt"
    c.write_text(calib)
    h.write_text(held)
    return c, h


def run(cmd: list[str], log: Path) -> str:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(" ".join(cmd) + "\n" + r.stdout + r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}); see {log}")
    print(f"  {Path(cmd[0]).name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return r.stdout + r.stderr


def imatrix(bin_dir: Path, f16: Path, calib: Path, work: Path, a) -> Path:
    out = work / "imatrix.gguf"
    if not out.exists():
        run([str(bin_dir / "llama-imatrix"), "-m", str(f16), "-f", str(calib), "-o", str(out), "-c", str(a.ctx),
             "--chunks", str(a.imatrix_chunks), "-t", str(a.threads)], work / "imatrix.log")
    return out


def perplexity(bin_dir: Path, model: Path, text: Path, work: Path, a) -> float:
    if not (bin_dir / "llama-perplexity").exists():
        return perplexity_py(model, text, a)
    out = run([str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", str(text), "-c", str(a.ctx),
               "--chunks", str(a.chunks), "-t", str(a.threads), "-b", str(a.ctx)], work / f"ppl-{model.stem}.log")
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
    if not m:
        raise SystemExit(f"no perplexity in the output for {model}")
    return float(m.group(1))


def perplexity_py(model: Path, text: Path, a) -> float:
    """llama-perplexity's measure with llama-cpp-python (when the tools are not built): chunks of ``ctx``
    tokens, the first replaced by BOS, the negative log-likelihood of the second half of each chunk."""
    import numpy as np
    import llama_cpp

    llm = llama_cpp.Llama(str(model), n_ctx=a.ctx, n_batch=a.ctx, n_threads=a.threads, logits_all=True, verbose=False)
    toks = llm.tokenize(text.read_bytes(), add_bos=False)
    nll, count = 0.0, 0
    for c in range(min(a.chunks, len(toks) // a.ctx)):
        chunk = [llm.token_bos()] + toks[c * a.ctx + 1:(c + 1) * a.ctx]
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[: a.ctx], dtype=np.float64)
        for i in range(a.ctx // 2, a.ctx - 1):
            row = logits[i]
            m = row.max()
            nll += m + np.log(np.exp(row - m).sum()) - row[chunk[i + 1]]
            count += 1
    return float(np.exp(nll / count))


def presets(f16: Path, im: Path, work: Path) -> dict[str, dict]:
    rows = {}
    for p in PRESETS:
        out = work / f"preset-{p}.gguf"
        r = quantize_file(f16, out, p, imatrix=str(im), device="cpu", force=True)
        rows[p] = {"file": str(out), "data_bytes": r.dst_bytes, "bpw": r.bpw(r.dst_bytes),
                   "file_bytes": os.path.getsize(out)}
        print(f"  preset {p}: {rows[p]['bpw']:.4f} bpw", flush=True)
    return rows


def planned(f16: Path, im: Path, work: Path, pre: dict[str, dict], a) -> dict[str, dict]:
    cfg = QuantizeConfig(ftype=None, imatrix=str(im), device="cpu", measure_rows=a.measure_rows, force=True,
                         candidates=a.candidates)
    budgets = [{"target_bpw": pre[p]["bpw"], "save_plan": str(work / f"plan{a.tag}-{p}.txt")} for p in PRESETS]
    t0 = time.perf_counter()
    plans = planner_api.plan_budgets(f16, cfg, budgets)
    measure_s = time.perf_counter() - t0
    rows = {}
    for p, (job, plan) in zip(PRESETS, plans):
        out = work / f"planner{a.tag}-{p}.gguf"
        r = quantize_file(f16, out, job)
        counts: dict[str, int] = {}
        for row in plan.rows:
            counts[row.qtype.name] = counts.get(row.qtype.name, 0) + 1
        rows[p] = {"file": str(out), "data_bytes": r.dst_bytes, "bpw": r.bpw(r.dst_bytes),
                   "file_bytes": os.path.getsize(out), "base_ftype": plan.base_ftype, "types": counts,
                   "error": plan.error, "plan": budgets[len(rows)]["save_plan"],
                   "preset_error": next((x.error for x in plan.presets if x.ftype == p), None)}
        print(f"  planner at {p}: {rows[p]['bpw']:.4f} bpw, {counts}", flush=True)
    return {"rows": rows, "measure_and_solve_seconds": measure_s, "candidates": a.candidates}


def verify_llama_quantize(bin_dir: Path, f16: Path, im: Path, work: Path, plan_rows: dict) -> dict[str, bool]:
    same = {}
    for p, row in plan_rows.items():
        ref = work / f"lq-{p}.gguf"
        run([str(bin_dir / "llama-quantize"), "--imatrix", str(im), "--tensor-type-file", row["plan"], str(f16),
             str(ref), row["base_ftype"], "2"], work / f"lq-{p}.log")
        same[p] = sha256(ref) == sha256(Path(row["file"]))
        print(f"  llama-quantize --tensor-type-file plan-{p}.txt: {'identical' if same[p] else 'DIFFERENT'}")
        ref.unlink()
    return same


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    pr, pl_ = result["presets"], result["planner"]["rows"]
    xs = [pr[p]["file_bytes"] / 2 ** 20 for p in PRESETS]
    ax.plot(xs, [pr[p]["ppl"] for p in PRESETS], "o-", label="llama-quantize presets")
    ax.plot([pl_[p]["file_bytes"] / 2 ** 20 for p in PRESETS], [pl_[p]["ppl"] for p in PRESETS], "s--",
            label="gpuquant planner at the preset's bpw")
    for p, x in zip(PRESETS, xs):
        ax.annotate(p, (x, pr[p]["ppl"]), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.axhline(result["f16_ppl"], color="gray", lw=0.8, ls=":", label="F16")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("perplexity (held-out text)")
    ax.set_title("SmolLM2-135M: perplexity vs size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--f16", type=Path, required=True)
    ap.add_argument("--bin", type=Path, default=Path("/work/llama-build/bin"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/planner-bench"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=6, help="perplexity chunks of --ctx tokens")
    ap.add_argument("--imatrix-chunks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--measure-rows", type=int, default=256)
    ap.add_argument("--heldout-chars", type=int, default=40000)
    ap.add_argument("--calib-chars", type=int, default=20000, help="of Python's topics, before the GPL-3 text")
    ap.add_argument("--candidates", default=None, help="the planner's ladder \\[default: its default]")
    ap.add_argument("--tag", default="", help="suffix of the planner's file names (a second ladder)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    a = ap.parse_args()
    a.json = a.json or ROOT / "bench" / "results" / f"planner{a.tag}-{datetime.date.today()}.json"
    a.png = a.png or ROOT / "bench" / f"planner{a.tag}.png"
    a.work.mkdir(parents=True, exist_ok=True)
    calib, held = write_texts(a.work, a.calib_chars, a.heldout_chars)
    print("imatrix", flush=True)
    im = imatrix(a.bin, a.f16, calib, a.work, a)
    print("presets", flush=True)
    pre = presets(a.f16, im, a.work)
    print("planner", flush=True)
    plan = planned(a.f16, im, a.work, pre, a)
    same = verify_llama_quantize(a.bin, a.f16, im, a.work, plan["rows"])
    print("perplexity", flush=True)
    f16_ppl = perplexity(a.bin, a.f16, held, a.work, a)
    for p in PRESETS:
        pre[p]["ppl"] = perplexity(a.bin, Path(pre[p]["file"]), held, a.work, a)
        plan["rows"][p]["ppl"] = perplexity(a.bin, Path(plan["rows"][p]["file"]), held, a.work, a)
        plan["rows"][p]["llama_quantize_identical"] = same[p]
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()}",
              "model": str(a.f16), "calibration": {"path": str(calib), "sha256": sha256(calib), "bytes": calib.stat().st_size},
              "heldout": {"path": str(held), "sha256": sha256(held), "bytes": held.stat().st_size},
              "ctx": a.ctx, "chunks": a.chunks, "imatrix_chunks": a.imatrix_chunks, "measure_rows": a.measure_rows,
              "f16_ppl": f16_ppl, "presets": pre, "planner": plan}
    a.json.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, a.png)
    for p in PRESETS:
        print(f"{p:7s} preset {pre[p]['bpw']:.4f} bpw ppl {pre[p]['ppl']:.4f} | planner {plan['rows'][p]['bpw']:.4f} "
              f"bpw ppl {plan['rows'][p]['ppl']:.4f}")


if __name__ == "__main__":
    main()
