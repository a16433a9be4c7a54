"""Start-up: ``gpuquant run SmolLM2-F16 --type Q4_0 --dry-run`` (wall and CPU time, median of ``--repeat``), beside
llama-quantize's whole Q4_0 run of the same model, with the machine's load; results JSON in bench/results/.

    python bench/startup.py --model /path/SmolLM2-135M-F16.gguf --repeat 9
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_QUANTIZE = Path("/work/llama-build/bin/llama-quantize")


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_of(cmd: list[str], repeat: int) -> dict:
    runs = [timed(cmd) for _ in range(repeat)]
    return {"wall_s": statistics.median(r[0] for r in runs), "cpu_s": statistics.median(r[1] for r in runs),
            "wall_runs": [round(r[0], 3) for r in runs]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"startup-{dt.date.today()}.json")
    a = ap.parse_args()
    res = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.node(),
           "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    res["dry_run"] = median_of([sys.executable, "-m", "gpuquant", "run", str(a.model), "--type", "Q4_0",
                                "--dry-run"], a.repeat)
    if LLAMA_QUANTIZE.exists():
        with tempfile.TemporaryDirectory() as d:
            res["llama_quantize_q4_0"] = median_of([str(LLAMA_QUANTIZE), str(a.model), f"{d}/out.gguf", "Q4_0",
                                                    str(os.cpu_count())], max(3, a.repeat // 3))
    res["load_after"] = os.getloadavg()
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
