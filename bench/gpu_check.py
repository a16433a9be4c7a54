"""The first minutes on a GPU: what ``bench/gpu_check.sh`` runs, step by step, into one results JSON.

    python3 bench/gpu_check.py env compile kernels e2e --out DIR [--device 0|emulated] [--gb 1.0]

Steps (each appends to ``DIR/gpu_check.json`` and prints one line per result):

* ``env``: Python, numpy, CuPy, NVRTC, driver and GPU (or why there is none).
* ``compile``: every kernel family compiled for the device's architecture (NVRTC, through the disk cache),
  with ptxas' registers/stack/spills per kernel; the emulated device's host builds too.
* ``kernels``: per registered type, the quantize kernels timed on a source of ``--gb`` GB of float32 (CUDA
  events through ``stage_times`` on a GPU, wall clock on the host), after checking the bytes of the first
  rows against the emulated device (the same kernels on the host) and the numpy reference.
* ``e2e``: whole runs (``gpuquant run --profile --json``) on synthetic ~``--gb`` GB models, dense (llama) and
  MoE (qwen3moe), for a few ftypes, timed; the same on ~0.1 GB models of the same shapes compared byte for
  byte against the emulated device's output.

Against the emulated device it runs the same way (``--device emulated``, smaller ``--gb``), which is how it is
checked on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpuquant import quants  # noqa: E402
from gpuquant.backends import SlabJob, open_device  # noqa: E402
from gpuquant.quants import GGMLQuantizationType as T  # noqa: E402

CHECK_ROWS = 64  # rows of every type compared byte for byte before timing
E2E_FTYPES = ("Q8_0", "Q4_K_M", "IQ4_XS", "Q2_K")


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------ env


def step_env(args) -> dict:
    info = {"python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    from gpuquant.backends import cuda, nvrtc

    try:
        nv = nvrtc.load()
        info["nvrtc"] = {"version": ".".join(map(str, nv.version)), "path": nv.path}
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        info["nvrtc"] = {"error": str(e)}
    gpu, reason = cuda.probe(0)
    info["gpu"] = {"ok": bool(gpu), "reason": reason}
    if gpu:
        cp = cuda._cupy()
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        info["gpu"].update(name=name, cc=f"{props['major']}{props['minor']}", memory_gib=props["totalGlobalMem"] / 2**30,
                           driver=cp.cuda.runtime.driverGetVersion(), cupy=cp.__version__)
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm",
                                             "--format=csv,noheader"], capture_output=True, text=True,
                                            timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    _log(f"env: {json.dumps(info)}")
    return info


# ------------------------------------------------------------------------------------------------------ compile


def step_compile(args) -> dict:
    from gpuquant.backends import kernels as K
    from gpuquant.backends import nvrtc
    from gpuquant import kernels_cmd

    out: dict = {}
    arch = args.arch
    t0 = time.perf_counter()
    try:
        fams = kernels_cmd.write_ptx(Path(args.out) / f"ptx-{arch}", arch)
        out["nvrtc"] = {f.family: {"target": f.target, "kernels": f.kernels, "max_registers": f.max_registers,
                                   "spill_bytes": f.spill_bytes, "cached": f.cached} for f in fams}
    except nvrtc.NvrtcError as e:
        out["nvrtc"] = {"error": str(e)}
    out["nvrtc_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emu = open_device("emulated", args.threads)
    emu.prepare(list(K.KERNELS))
    emu.close()
    out["emulated_seconds"] = time.perf_counter() - t0
    _log(f"compile: nvrtc {out['nvrtc_seconds']:.1f} s, emulated build {out['emulated_seconds']:.1f} s")
    return out


# ------------------------------------------------------------------------------------------------------ kernels


def _run(dev, x_raw: np.ndarray, src: T, dst: T, n: int, qw: np.ndarray | None) -> tuple[np.ndarray, float, float]:
    """One slab through the Device interface; returns (bytes, wall seconds of the quantize, device kernel
    seconds from stage_times)."""
    raw = np.ascontiguousarray(x_raw).reshape(-1).view(np.uint8)
    nrows = raw.size // quants.row_size(src, n)
    job = SlabJob(src, dst, n, nrows, 1, has_quant_weights=qw is not None)
    s = dev.stream()
    h_in = dev.host_buffer(job.src_bytes)
    h_in[:] = raw
    d_in, d_out = dev.device_buffer(job.src_bytes), dev.device_buffer(job.dst_bytes)
    d_qw = None
    if qw is not None:
        h_qw = dev.host_buffer(qw.nbytes)
        h_qw[:] = np.ascontiguousarray(qw).reshape(-1).view(np.uint8)
        d_qw = dev.device_buffer(qw.nbytes)
        dev.upload(d_qw, h_qw, qw.nbytes, s)
    dev.upload(d_in, h_in, job.src_bytes, s)
    dev.record(s).synchronize()
    k0 = dev.stage_times().get("kernel", 0.0)
    t0 = time.perf_counter()
    check = dev.quantize(job, d_in, d_out, d_qw, s)
    dev.record(s).synchronize()
    wall = time.perf_counter() - t0
    kern = dev.stage_times().get("kernel", 0.0) - k0
    h_out = dev.host_buffer(job.dst_bytes)
    dev.download(h_out, d_out, job.dst_bytes, s)
    dev.record(s).synchronize()
    if check is not None:
        check()
    return np.array(h_out[: job.dst_bytes]), wall, kern


def step_kernels(args) -> dict:
    dev = open_device(args.device, args.threads)
    emu = dev if dev.name == "emulated" else open_device("emulated", args.threads)
    n = 4096
    nrows = max(CHECK_ROWS, int(args.gb * 2**30 / 4 / n))
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((nrows, n), dtype=np.float32) * np.float32(0.02)).astype(np.float32)
    qw = (rng.random(n, dtype=np.float32) + np.float32(0.5)).astype(np.float32)
    out = {"device": dev.name, "rows": nrows, "cols": n, "source_gb": x.nbytes / 1e9, "types": {}}
    for t, cls in quants.registered().items():
        if t == T.F32 or not dev.supports(T.F32, t):
            continue
        w = qw if cls.requires_imatrix else None
        head = np.ascontiguousarray(x[:CHECK_ROWS])
        got = _run(dev, head, T.F32, t, n, None if w is None else w[None])[0]
        want = _run(emu, head, T.F32, t, n, None if w is None else w[None])[0] if emu is not dev else got
        ref = quants.quantize(head, t, w).reshape(-1)
        same = bool(np.array_equal(got, want) and np.array_equal(got, ref))
        times = [_run(dev, x, T.F32, t, n, None if w is None else w[None])[1:] for _ in range(args.repeat)]
        wall = float(np.median([a for a, _ in times]))
        kern = float(np.median([b for _, b in times]))
        rec = {"identical_to_emulated_and_numpy": same, "wall_s": wall, "kernel_s": kern,
               "GB_per_s": x.nbytes / 1e9 / (kern or wall), "Gelem_per_s": x.size / 1e9 / (kern or wall)}
        out["types"][t.name] = rec
        _log(f"kernels {t.name:8s} identical={same} {rec['GB_per_s']:8.1f} GB/s of float32 ({kern or wall:.3f} s)")
    if emu is not dev:
        emu.close()
    dev.close()
    return out


# ------------------------------------------------------------------------------------------------------ e2e


def _models(work: str, gb: float) -> dict[str, Path]:
    """Synthetic llama (dense) and qwen3moe models of about ``gb`` GB of F16 weights each."""
    from tests.synthetic import write_llama, write_qwen3moe

    d = Path(work)
    d.mkdir(parents=True, exist_ok=True)
    n_layer = max(1, int(round(10 * gb)))  # ~100 MB per llama layer of this shape
    paths = {"dense": d / f"llama-{n_layer}.gguf", "moe": d / f"qwen3moe-{n_layer}.gguf"}
    if not paths["dense"].exists():
        write_llama(paths["dense"], n_layer=n_layer, n_embd=2048, n_head=16, n_head_kv=4, n_ff=5632, n_vocab=8192,
                    f32_weights=())
    if not paths["moe"].exists():
        write_qwen3moe(paths["moe"], n_layer=max(1, n_layer), n_embd=1024, n_head=16, n_head_kv=4)
    return paths


def _gpuquant_run(model: Path, ftype: str, dev: str, work: str, js: Path) -> tuple[dict, Path]:
    dst = Path(work) / f"{model.stem}-{ftype}-{dev}.gguf"
    cmd = [sys.executable, "-m", "gpuquant", "run", str(model), "-o", str(dst), "--type", ftype, "--device", dev,
           "--force", "--profile", "--quiet", "--json", str(js)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    return {"rc": r.returncode, "wall_s": time.perf_counter() - t0, "stderr": r.stderr[-2000:] if r.returncode else ""}, dst


def step_e2e(args) -> dict:
    """Timed runs on the ~GB models on the device; byte identity with the emulated device on small models of
    the same shapes (the host would take minutes on the big ones)."""
    out = {}
    big, small = _models(args.work, args.gb), _models(args.work, min(args.gb, 0.1))
    for kind in big:
        for ftype in E2E_FTYPES:
            timed, _ = _gpuquant_run(big[kind], ftype, args.device, args.work,
                                     Path(args.out) / f"e2e-{kind}-{ftype}-{args.device}.json")
            runs = {d: _gpuquant_run(small[kind], ftype, d, args.work, Path(args.out) / f"e2e-small-{kind}-{ftype}-{d}.json")
                    for d in dict.fromkeys([args.device, "emulated"])}
            same = all(r["rc"] == 0 for r, _ in runs.values()) and _same_file(*(p for _, p in runs.values()))
            out[f"{kind}/{ftype}"] = {"timed": timed, "model_gb": big[kind].stat().st_size / 1e9,
                                      "identical_to_emulated": same, "identity_model_gb": small[kind].stat().st_size / 1e9,
                                      "identity_runs": {d: r for d, (r, _) in runs.items()}}
            _log(f"e2e {kind} {ftype}: {timed['wall_s']:.1f} s (rc {timed['rc']}) on {args.device}, "
                 f"identical to emulated: {same}")
    return out


def _same_file(*paths: Path) -> bool:
    if len(paths) < 2:
        return True
    import filecmp

    return all(filecmp.cmp(paths[0], p, shallow=False) for p in paths[1:])


# ------------------------------------------------------------------------------------------------------ main

STEPS = {"env": step_env, "compile": step_compile, "kernels": step_kernels, "e2e": step_e2e}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("steps", nargs="+", choices=list(STEPS))
    ap.add_argument("--out", required=True, help="results folder (gpu_check.json and the per-run JSONs)")
    ap.add_argument("--device", default="0", help="the device to check: a GPU index, or emulated")
    ap.add_argument("--arch", default="sm_90", help="the architecture the PTX/ptxas report is made for")
    ap.add_argument("--gb", type=float, default=1.0, help="GB of float32 per kernel timing and per model")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per type (the median is kept)")
    ap.add_argument("--threads", type=int, default=None, help="host threads of the emulated device")
    ap.add_argument("--work", default="/tmp/gpu_check", help="where the synthetic models and outputs go")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_check.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.steps:
        t0 = time.perf_counter()
        try:
            results[name] = STEPS[name](args)
        except Exception as e:  # noqa: BLE001 - a failed step is a result too; the others still run
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            _log(f"{name} failed: {e}")
        results[name + "_seconds"] = time.perf_counter() - t0
        path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
