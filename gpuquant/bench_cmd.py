"""``gpuquant bench``: quantization throughput per type x backend on a synthetic float32 tensor.

Correctness first: every backend's bytes are compared with the reference (llama.cpp's
``ggml_quantize_chunk`` when llama-cpp-python is installed, else the numpy reference) before any timing.
Then the median of warm runs of one ``Device.quantize`` call over the whole tensor (already on the device)
is reported in GB/s of float32 input; the llama.cpp column is ``ggml_quantize_chunk`` on one thread.
"""
from __future__ import annotations

import ctypes
import datetime
import importlib.util
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from rich.table import Table

from . import __version__, quants
from .backends import Device, DeviceError, SlabJob, open_device
from .quants import QUANT_SIZES, GGMLQuantizationType as T

TIME_BUDGET = 3.0  # seconds of timed runs per cell at most (at least one run)
ORACLE = "llama.cpp"


@dataclass
class BenchResult:
    rows: int
    cols: int
    imatrix: bool
    types: list[str]
    columns: list[str]  # backend names, then ORACLE when available
    seconds: dict[str, dict[str, float | None]] = field(default_factory=dict)  # type -> column -> median s
    reference: str = "cpu"
    mismatches: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # "type/column" -> why

    def gbps(self, t: str, col: str) -> float | None:
        s = self.seconds.get(t, {}).get(col)
        return None if not s else self.rows * self.cols * 4 / s / 1e9


# ---------------------------------------------------------------------------------------------- oracle


def _oracle_lib() -> ctypes.CDLL | None:
    """``libggml-base.so`` of an installed llama-cpp-python (found without importing the package)."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "lib" / "libggml-base.so"
        if p.is_file():
            try:
                lib = ctypes.CDLL(str(p))
            except OSError:
                return None
            lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
            lib.ggml_quantize_chunk.restype = ctypes.c_size_t
            lib.ggml_quantize_init.argtypes = [ctypes.c_int]
            return lib
    return None


def _oracle_quantize(lib, t: T, x: np.ndarray, qw: np.ndarray | None) -> tuple[np.ndarray, float]:
    rows, cols = x.shape
    out = np.zeros(rows * quants.row_size(t, cols), np.uint8)
    lib.ggml_quantize_init(int(t))
    t0 = time.perf_counter()
    lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, rows, cols,
                            None if qw is None else qw.ctypes.data)
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- devices


def _device_quantize(dev: Device, t: T, x: np.ndarray, qw: np.ndarray | None) -> tuple[np.ndarray, float]:
    """One quantize call of the whole tensor on ``dev`` (input already uploaded); bytes and seconds."""
    rows, cols = x.shape
    job = SlabJob(T.F32, t, cols, rows, 1, qw is not None)
    s = dev.stream()
    h_in = dev.host_buffer(job.src_bytes)
    h_in[:] = x.reshape(-1).view(np.uint8)
    d_in, d_out = dev.device_buffer(job.src_bytes), dev.device_buffer(job.dst_bytes)
    d_qw = None
    if qw is not None:
        h_qw = dev.host_buffer(job.quant_weight_bytes)
        h_qw[:] = qw.view(np.uint8)
        d_qw = dev.device_buffer(job.quant_weight_bytes)
        dev.upload(d_qw, h_qw, job.quant_weight_bytes, s)
    dev.upload(d_in, h_in, job.src_bytes, s)
    dev.record(s).synchronize()
    t0 = time.perf_counter()
    check = dev.quantize(job, d_in, d_out, d_qw, s)
    dev.record(s).synchronize()
    dt = time.perf_counter() - t0
    h_out = dev.host_buffer(job.dst_bytes)
    dev.download(h_out, d_out, job.dst_bytes, s)
    dev.record(s).synchronize()
    if check is not None:
        check()
    return np.array(h_out[: job.dst_bytes]), dt


def available_devices() -> list[str]:
    """cpu always; emulated when a C++ compiler is there; every CUDA device CuPy sees."""
    names = ["cpu"]
    try:
        from .backends import emulated

        emulated.find_compiler()
        names.append("emulated")
    except (ImportError, DeviceError):
        pass
    try:
        from .backends import cuda  # type: ignore[attr-defined]

        names += [str(i) for i in range(cuda.device_count())]
    except (ImportError, DeviceError, AttributeError, OSError):
        pass
    return names


def parse_types(spec: str | None) -> list[T]:
    if not spec:
        return [t for t in quants.registered() if t != T.F32]
    out = []
    for name in spec.split(","):
        try:
            t = quants.parse_type(name)
            quants.get(t)
        except quants.UnsupportedType as e:
            raise ValueError(f"--types: {e}") from None
        out.append(t)
    return out


def run_bench(types_spec: str | None, devices_spec: str | None, rows: int, cols: int, repeat: int,
              threads: int | None, imatrix: bool, log: Callable[[str], None] = lambda m: None) -> BenchResult:
    types = parse_types(types_spec)
    dev_names = [d.strip() for d in devices_spec.split(",")] if devices_spec else available_devices()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)).astype(np.float32)
    weights = (rng.random(cols, dtype=np.float32) + np.float32(0.5)).astype(np.float32)
    lib = _oracle_lib()
    devices: list[Device] = []
    for name in dev_names:
        try:
            devices.append(open_device(name, threads))
        except (DeviceError, ImportError) as e:
            raise ValueError(f"--devices: cannot open {name!r}: {e}") from None
    cols_ = [d.name for d in devices] + ([ORACLE] if lib is not None else [])
    res = BenchResult(rows, cols, imatrix, [t.name for t in types], cols_,
                      reference=ORACLE if lib is not None else "cpu")
    try:
        for t in types:
            cls = quants.get(t)
            qw = weights if (imatrix or cls.requires_imatrix) else None
            res.seconds[t.name] = {}
            if cols % QUANT_SIZES[t][0]:
                for c in cols_:
                    res.skipped[f"{t.name}/{c}"] = f"--cols {cols} is not a multiple of the block size"
                    res.seconds[t.name][c] = None
                continue
            if lib is not None:
                ref, _ = _oracle_quantize(lib, t, x, qw)
                res.seconds[t.name][ORACLE] = _median(lambda: _oracle_quantize(lib, t, x, qw)[1], repeat)
            else:
                log(f"{t.name}: numpy reference")
                ref = quants.quantize(x, t, qw).reshape(-1)
            for dev in devices:
                if not dev.supports(T.F32, t):
                    res.seconds[t.name][dev.name] = None
                    res.skipped[f"{t.name}/{dev.name}"] = "not supported"
                    continue
                log(f"{t.name} on {dev.name}")
                got, _ = _device_quantize(dev, t, x, qw)  # warm-up (compiles kernels) and the check
                if not np.array_equal(got, ref):
                    bad = int(np.flatnonzero(got != ref)[0]) // quants.row_size(t, cols)
                    res.mismatches.append(f"{t.name} on {dev.name} differs from {res.reference} (first at row {bad})")
                    res.seconds[t.name][dev.name] = None
                    continue
                res.seconds[t.name][dev.name] = _median(lambda: _device_quantize(dev, t, x, qw)[1], repeat)
    finally:
        for dev in devices:
            dev.close()
    return res


def _median(run: Callable[[], float], repeat: int) -> float:
    times: list[float] = []
    while len(times) < repeat and (not times or sum(times) < TIME_BUDGET):
        times.append(run())
    return statistics.median(times)


def table(res: BenchResult) -> Table:
    t = Table(title=f"quantization throughput, GB/s of float32 input ({res.rows} x {res.cols}"
                    f"{', imatrix' if res.imatrix else ''}; checked against {res.reference})")
    t.add_column("type")
    for c in res.columns:
        t.add_column(c + (" (1 thread)" if c == ORACLE else ""), justify="right")
    for name in res.types:
        cells = []
        for c in res.columns:
            g = res.gbps(name, c)
            bad = any(m.startswith(f"{name} on {c} ") for m in res.mismatches)
            cells.append("[red]MISMATCH" if bad else "-" if g is None else f"{g:.3f}")
        t.add_row(name, *cells)
    return t


def to_json(res: BenchResult) -> str:
    doc = {
        "gpuquant": __version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "rows": res.rows, "cols": res.cols, "imatrix": res.imatrix, "reference": res.reference,
        "columns": res.columns,
        "results": {t: {c: {"seconds": s, "GB/s": res.gbps(t, c)} for c, s in cols.items()}
                    for t, cols in res.seconds.items()},
        "mismatches": res.mismatches, "skipped": res.skipped,
    }
    return json.dumps(doc, indent=2)
