"""Whole-process benchmark: ``gpuquant run`` per device vs llama-quantize (llama_model_quantize of
llama-cpp-python 0.3.36) vs the gguf package's numpy quantizer, same model, same thread count.

Every gpuquant output is first checked byte-for-byte against llama-quantize's (when the oracle is installed);
then the median wall time of ``--repeat`` runs and the peak RSS of each process are recorded as JSON in
``bench/results/`` with the machine and the date.

    python bench/bench_cpu.py --types Q4_0,IQ4_NL --devices cpu,emulated --repeat 3
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

ORACLE_SCRIPT = """
import sys, llama_cpp as lc
cb = lc.llama_log_callback(lambda l, t, u: None); lc.llama_log_set(cb, None)
p = lc.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3]); p.nthread = int(sys.argv[4]); p.allow_requantize = True
sys.exit(lc.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""

GGUF_PY_SCRIPT = """
import sys, numpy as np, gguf
from gguf.quants import quantize
from gguf import GGMLQuantizationType as T
r = gguf.GGUFReader(sys.argv[1]); qt = T[sys.argv[3]]
with open(sys.argv[2], "wb") as f:
    for t in r.tensors:
        a = np.asarray(t.data)
        if t.tensor_type in (T.F16, T.F32) and len(a.shape) > 1 and a.shape[-1] % 32 == 0 and "norm" not in t.name:
            f.write(quantize(a.astype(np.float32), qt).tobytes())
        else:
            f.write(a.tobytes())
"""


# Started from this small launcher, not from the benchmark process: Linux keeps a forked child's RSS
# high-water mark from before exec, so ru_maxrss would include whatever the parent held.
LAUNCHER = r"""
import os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = p.stderr.read()
_, status, ru = os.wait4(p.pid, 0)
wall = time.perf_counter() - t0
sys.stderr.buffer.write(err[-2000:])
print(wall, ru.ru_maxrss * 1024, os.waitstatus_to_exitcode(status))
"""


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    r = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True)
    wall, rss, rc = r.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}):\n{r.stderr}")
    return float(wall), int(rss)


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "host": platform.node()}


def default_model(cache: Path) -> Path:
    """F16 form of the embedded SmolLM2-135M (made once by gpuquant, cached)."""
    from gpuquant.demo_model import default_model_path

    out = cache / "SmolLM2-135M-F16.gguf"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "gpuquant", "run", str(default_model_path()), "--type", "F16",
                        "--allow-requantize", "-o", str(out), "--device", "cpu", "--quiet"], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--types", default="Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,IQ4_NL,IQ4_XS,Q4_K_M,Q6_K")
    ap.add_argument("--devices", default="cpu,emulated")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-gguf-py", action="store_true", help="skip the gguf package's numpy baseline")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from gpuquant import mixes
    from tests.oracle import available

    cache = ROOT / "bench" / ".cache"
    model = args.model or default_model(cache)
    work = cache / "out"
    work.mkdir(parents=True, exist_ok=True)
    have_oracle = available()
    rows = []
    for tname in args.types.split(","):
        ft = mixes.parse_ftype(tname)
        row: dict = {"type": ft.name, "threads": args.threads}
        ref = work / f"ref-{ft.name}.gguf"
        if have_oracle:
            runs = [timed([sys.executable, "-c", ORACLE_SCRIPT, str(model), str(ref), str(int(ft.ftype)),
                           str(args.threads)]) for _ in range(args.repeat)]
            row["llama_quantize_s"] = statistics.median(r[0] for r in runs)
            row["llama_quantize_rss_mb"] = max(r[1] for r in runs) / 2**20
        for dev in args.devices.split(","):
            out = work / f"{dev}-{ft.name}.gguf"
            cmd = [sys.executable, "-m", "gpuquant", "run", str(model), "--type", ft.name, "-o", str(out), "--force",
                   "--device", dev, "--threads", str(args.threads), "--quiet"]
            try:
                runs = [timed(cmd) for _ in range(args.repeat)]
            except RuntimeError as e:
                row[f"{dev}_error"] = str(e)[-300:]
                continue
            row[f"{dev}_s"] = statistics.median(r[0] for r in runs)
            row[f"{dev}_rss_mb"] = max(r[1] for r in runs) / 2**20
            if have_oracle:
                row[f"{dev}_identical"] = sha(out) == sha(ref)
                row[f"{dev}_vs_llama_quantize"] = row[f"{dev}_s"] / row["llama_quantize_s"]
        if not args.no_gguf_py and ft.name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16"):
            runs = [timed([sys.executable, "-c", GGUF_PY_SCRIPT, str(model), str(work / "gguf-py.bin"), ft.name])
                    for _ in range(args.repeat)]
            row["gguf_py_s"] = statistics.median(r[0] for r in runs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    doc = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "model": model.name,
           "repeat": args.repeat, "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"cpu-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
