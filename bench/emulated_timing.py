"""Wall time of ``gpuquant run --device emulated --pure`` per type on one synthetic model (with and without an
imatrix), for before/after comparisons of kernel changes. Usage:

    python bench/emulated_timing.py [--types Q4_0,IQ4_NL] [--repeat 3] [--json out.json] [--baseline CHECKOUT]

With --baseline, the runs of this checkout and of another one (e.g. a worktree of main) alternate, so both
see the same machine load; the JSON then has both medians and their ratio.

The model (a llama of ~50 M F16 weights, rows of 1024 and 2816) and its imatrix are written once under
--work. Each run is a fresh process (compile caches warm: one untimed run first); the median of --repeat is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TYPES = "F16,BF16,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,IQ4_NL,IQ4_XS,Q1_0,Q2_0,TQ1_0,TQ2_0,MXFP4_MOE"
WEIGHTED = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"}


def model(work: Path) -> tuple[Path, Path]:
    from tests.oracle_files import write_imatrix
    from tests.synthetic import write_llama

    src, imat = work / "bench-llama-f16.gguf", work / "bench-llama.imatrix.gguf"
    if not src.exists():
        write_llama(src, n_layer=4, n_embd=1024, n_head=16, n_head_kv=4, n_ff=2816, n_vocab=2048)
    if not imat.exists():
        write_imatrix(src, imat, "gguf")
    return src, imat


def run(src: Path, out: Path, qtype: str, imat: Path | None, threads: int, root: Path = ROOT) -> float:
    cmd = [sys.executable, "-m", "gpuquant", "run", str(src), "-o", str(out), "-t", qtype, "--device", "emulated",
           "--pure", "--force", "--quiet", "--threads", str(threads)]
    if imat is not None:
        cmd += ["--imatrix", str(imat)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/gq_emulated_timing")
    ap.add_argument("--json")
    ap.add_argument("--baseline", help="another checkout whose runs alternate with this one's")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    src, imat = model(work)
    rows = []
    roots = [ROOT] + ([Path(a.baseline).resolve()] if a.baseline else [])
    for t in a.types.split(","):
        for im in ([None, imat] if t in WEIGHTED else [None]):
            out = work / f"out-{t}{'-imat' if im else ''}.gguf"
            for r in roots:
                run(src, out, t, im, a.threads, r)  # warm-up (and kernel build)
            times: dict[Path, list[float]] = {r: [] for r in roots}
            for _ in range(a.repeat):
                for r in roots:
                    times[r].append(run(src, out, t, im, a.threads, r))
            row = {"type": t, "imatrix": im is not None, "median_s": round(statistics.median(times[ROOT]), 3),
                   "times_s": [round(x, 3) for x in times[ROOT]]}
            if a.baseline:
                b = statistics.median(times[roots[1]])
                row.update(baseline_median_s=round(b, 3), ratio=round(row["median_s"] / b, 3))
            rows.append(row)
            extra = f"  baseline {row['baseline_median_s']:7.3f} s  ratio {row['ratio']:.2f}" if a.baseline else ""
            print(f"{t:10s} {'imatrix' if im else '       '} {row['median_s']:7.3f} s{extra}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"load": os.getloadavg(), "machine": platform.platform(),
                                            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                            "baseline": a.baseline, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
