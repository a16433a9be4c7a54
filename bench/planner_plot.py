"""Perplexity against file size from the JSON results of bench/planner_bench.py (one or more runs).

    python bench/planner_plot.py bench/results/planner-2026-12-02.json bench/results/planner-noq41-2026-12-02.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

MiB = 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--png", type=Path, default=Path(__file__).with_name("planner.png"))
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in a.results]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    pre = sorted(runs[0]["presets"].items(), key=lambda kv: kv[1]["file_bytes"])
    ax.plot([r["file_bytes"] / MiB for _, r in pre], [r["ppl"] for _, r in pre], "o-", color="C0",
            label="llama-quantize presets (same imatrix)")
    for name, r in pre:
        ax.annotate(name, (r["file_bytes"] / MiB, r["ppl"]), textcoords="offset points", xytext=(4, 6), fontsize=8)
    for i, run in enumerate(runs):
        rows = sorted(run["planner"]["rows"].values(), key=lambda r: r["file_bytes"])
        ladder = run["planner"].get("candidates") or "default ladder"
        ax.plot([r["file_bytes"] / MiB for r in rows], [r["ppl"] for r in rows], "s--", color=f"C{i + 1}",
                label=f"planner at each preset's bpw ({ladder if len(ladder) < 30 else 'no Q4_1/Q5_1'})")
    ax.axhline(runs[0]["f16_ppl"], color="gray", lw=0.8, ls=":", label="F16")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("perplexity, held-out text (lower is better)")
    ax.set_title("SmolLM2-135M (from Q4_1) F16 + imatrix: perplexity vs size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.png)
    print(a.png)


if __name__ == "__main__":
    main()
