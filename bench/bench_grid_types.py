"""Whole-process benchmark of the ten grid-type ftypes (IQ2_XXS ... IQ1_M) against llama-quantize.

For each ftype: ``llama-quantize --imatrix`` on the F16 form of SmolLM2-135M, then ``gpuquant run --device
cpu`` and ``--device emulated`` with the same imatrix and thread count; the median wall time and CPU time
(user + system, of the process and its children) of ``--repeat`` runs, the peak RSS, whether the output is
byte-identical to llama-quantize's, and the ratios. The machine's load (``/proc/loadavg``) is recorded
before and after every ftype: on a shared machine the wall-time ratios move with it, the CPU-time ratios
much less.

An ftype whose mix needs a type without a numpy quantizer is skipped with a note; a device that has no
kernel for a type (``cannot quantize tensor ...``) is recorded as ``no kernel``.

llama-quantize: ``--llama-quantize PATH`` (default ``/work/llama-build/bin/llama-quantize`` when present),
else ``llama_model_quantize`` of the llama-cpp-python oracle (``tests/oracle_files.oracle_with_imatrix``,
the same code and the same imatrix handling). Imatrix: ``--imatrix FILE`` (default
``/work/llama-build/smollm2.imatrix`` when present), else a synthetic one (``tests/oracle_files.write_imatrix``,
noted in the results).

    python bench/bench_grid_types.py --repeat 3
    python bench/bench_grid_types.py --types IQ2_XXS,IQ3_S --devices cpu --repeat 1
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_cpu import default_model, machine, sha  # noqa: E402

TYPES = "IQ2_XXS,IQ2_XS,IQ2_S,IQ2_M,IQ3_XXS,IQ3_XS,IQ3_S,IQ3_M,IQ1_S,IQ1_M"
LLAMA_QUANTIZE = Path("/work/llama-build/bin/llama-quantize")
IMATRIX = Path("/work/llama-build/smollm2.imatrix")
NO_KERNEL = "cannot quantize tensor"

ORACLE_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.oracle_files import oracle_with_imatrix
oracle_with_imatrix(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], nthread=int(sys.argv[6]))
"""

# Started from this small launcher, not from the benchmark process (see bench_cpu.py): wall time, CPU time
# and peak RSS of one child.
LAUNCHER = r"""
import os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = p.stderr.read()
_, status, ru = os.wait4(p.pid, 0)
wall = time.perf_counter() - t0
sys.stderr.buffer.write(err[-2000:])
print(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, os.waitstatus_to_exitcode(status))
"""


class RunFailed(RuntimeError):
    pass


def timed(cmd: list[str]) -> dict:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one child process; RunFailed with its stderr."""
    r = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, cwd=ROOT)
    wall, cpu, rss, rc = r.stdout.split()
    if int(rc) != 0:
        raise RunFailed(r.stderr.strip()[-400:] or f"exit code {rc}")
    return {"wall": float(wall), "cpu": float(cpu), "rss": int(rss) / 2**20}


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (``uptime``)."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def medians(runs: list[dict], prefix: str) -> dict:
    return {f"{prefix}_s": statistics.median(r["wall"] for r in runs),
            f"{prefix}_cpu_s": statistics.median(r["cpu"] for r in runs),
            f"{prefix}_rss_mb": round(max(r["rss"] for r in runs), 1),
            f"{prefix}_runs_s": [round(r["wall"], 2) for r in runs]}


def missing_quantizers(model: Path, ftype: str, imatrix: Path) -> list[str]:
    """The tensor types of the ftype's mix (``gpuquant run --dry-run``) without a numpy quantizer."""
    from gpuquant import quants

    r = subprocess.run([sys.executable, "-m", "gpuquant", "run", str(model), "--type", ftype, "--imatrix",
                        str(imatrix), "--dry-run", "--json", "-", "--quiet"], capture_output=True, text=True,
                       cwd=ROOT)
    if r.returncode != 0:
        raise RunFailed(f"dry run of {ftype}: {r.stderr.strip()[-400:]}")
    needed = {t["to"] for t in json.loads(r.stdout)["tensors"]}
    out = []
    for name in sorted(needed):
        try:
            quants.get(name)
        except quants.UnsupportedType:
            out.append(name)
    return out


def llama_cmd(args, model: Path, imatrix: Path, out: Path, ftype: str) -> list[str]:
    if args.llama_quantize:
        return [str(args.llama_quantize), "--imatrix", str(imatrix), str(model), str(out), ftype, str(args.threads)]
    return [sys.executable, "-c", ORACLE_SCRIPT, str(ROOT), str(model), str(out), ftype, str(imatrix),
            str(args.threads)]


def bench_ftype(args, model: Path, imatrix: Path, work: Path, ftype: str) -> dict:
    row: dict = {"type": ftype, "threads": args.threads, "load_before": load()}
    missing = missing_quantizers(model, ftype, imatrix)
    if missing:
        row["skipped"] = f"no numpy quantizer for {', '.join(missing)}"
        return row
    ref = work / f"llama-{ftype}.gguf"
    try:
        row.update(medians([timed(llama_cmd(args, model, imatrix, ref, ftype)) for _ in range(args.repeat)],
                           "llama_quantize"))
    except RunFailed as e:
        row["llama_quantize_error"] = str(e)
    for dev in args.devices.split(","):
        out = work / f"{dev}-{ftype}.gguf"
        cmd = [sys.executable, "-m", "gpuquant", "run", str(model), "--type", ftype, "--imatrix", str(imatrix),
               "-o", str(out), "--force", "--device", dev, "--threads", str(args.threads), "--quiet"]
        try:
            runs = [timed(cmd) for _ in range(args.repeat)]
        except RunFailed as e:
            key = f"{dev}_no_kernel" if NO_KERNEL in str(e) else f"{dev}_error"
            row[key] = str(e).splitlines()[-1][-300:]
            continue
        row.update(medians(runs, dev))
        if "llama_quantize_s" in row:
            row[f"{dev}_identical"] = sha(out) == sha(ref)
            row[f"{dev}_vs_llama_quantize"] = round(row[f"{dev}_s"] / row["llama_quantize_s"], 3)
            row[f"{dev}_cpu_vs_llama_quantize"] = round(row[f"{dev}_cpu_s"] / row["llama_quantize_cpu_s"], 3)
    row["load_after"] = load()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="F16 GGUF (default: SmolLM2-135M made F16 once, cached)")
    ap.add_argument("--imatrix", type=Path)
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--devices", default="cpu,emulated")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--llama-quantize", type=Path, default=LLAMA_QUANTIZE if LLAMA_QUANTIZE.exists() else None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    cache = ROOT / "bench" / ".cache"
    model = args.model or default_model(cache)
    work = cache / "grid"
    work.mkdir(parents=True, exist_ok=True)
    imatrix, notes = args.imatrix, []
    if imatrix is None and IMATRIX.exists():
        imatrix = IMATRIX
    if imatrix is None:
        from tests.oracle_files import write_imatrix

        imatrix = write_imatrix(model, work / "synthetic.imatrix", "gguf")
        notes.append("synthetic imatrix (tests/oracle_files.write_imatrix): no real one was found")
    if args.llama_quantize is None:
        notes.append("llama-quantize: llama_model_quantize of llama-cpp-python 0.3.36 (no binary given)")
    out = args.out or ROOT / "bench" / "results" / f"grid-types-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "model": model.name,
           "imatrix": str(imatrix), "llama_quantize": str(args.llama_quantize or "llama_model_quantize"),
           "repeat": args.repeat, "notes": notes, "results": []}
    for ftype in args.types.split(","):
        doc["results"].append(bench_ftype(args, model, imatrix, work, ftype))
        print(json.dumps(doc["results"][-1]), flush=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")  # after every ftype: a long run keeps what it measured
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
