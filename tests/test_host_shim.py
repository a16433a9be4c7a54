"""The host harness (kernels/host_shim.h, kernels/host_launch.cpp) against numpy models of CUDA's semantics.

One small kernel family per feature in ``tests/host_shim_kernels/`` (also compiled by NVRTC for sm_80 and
sm_90 below, so they are valid CUDA): every shuffle kind and width, votes and partial masks, block
reductions mixing ``__syncthreads`` and shuffles, 3-D and partial-warp blocks, many blocks over several
host threads, atomics under contention, vector types and intrinsics. The fiber tests run twice: with the
x86-64 assembly context switch and with the ucontext fallback (``-DGQ_FIBER_UCONTEXT``, the aarch64 path).
The rule breakers (divergent shuffles, missing sync flag, stack overflow, ...) run in a subprocess and
must abort with a message. A micro-benchmark prints the cost of a fiber switch.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from gpuquant.backends import DeviceError
from gpuquant.backends import kernels as K
from gpuquant.backends.emulated import KernelLibrary, compile_family
from tests.host_shim_models import (
    UNDEFINED,
    atomics_model,
    block_sum_model,
    intrinsics_model,
    shuffle_kinds_model,
    shuffle_types_model,
    stage_float4_model,
    votes_model,
)

KDIR = Path(__file__).parent / "host_shim_kernels"
REPO = Path(__file__).resolve().parents[1]
#: families NVRTC must accept (overflow.cu is host-only: unbounded recursion)
CUDA_FAMILIES = ("atomics", "bench", "errors", "intrinsics", "phases", "reduce", "shuffle", "vote")
FIBERS = ("asm", "ucontext")


@lru_cache(maxsize=None)
def _ucontext_cxx() -> str:
    """A compiler wrapper adding -DGQ_FIBER_UCONTEXT; its --version differs, so is its cache key."""
    d = Path(os.environ.get("GPUQUANT_CACHE_DIR") or "/tmp") / "gq-ucontext-cxx"
    d.mkdir(parents=True, exist_ok=True)
    script = d / "cxx"
    script.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "gpuquant test: ucontext fibers"; exit 0; fi\n'
                      f'exec {shutil.which("g++") or "c++"} -DGQ_FIBER_UCONTEXT "$@"\n')
    script.chmod(0o755)
    return str(script)


@lru_cache(maxsize=None)
def lib(family: str, fibers: str = "asm") -> KernelLibrary:
    return KernelLibrary(compile_family(family, _ucontext_cxx() if fibers == "ucontext" else None, kernel_dir=KDIR))


def launch(family: str, kernel: str, grid, block, out: np.ndarray, inp: np.ndarray | None = None, *, sync: bool,
           threads: int = 2, fibers: str = "asm", a: int = 0, b: int = 0) -> np.ndarray:
    lib(family, fibers).launch_convert(kernel, grid, block, threads, sync, 0 if inp is None else inp.ctypes.data,
                                       out.ctypes.data, a, b)
    return out


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _u64(n: int, seed: int) -> np.ndarray:
    return _rng(seed).integers(0, 2**64, n, dtype=np.uint64)


# ------------------------------------------------------------------------------------------------------
# warp shuffles and votes
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fibers", FIBERS)
@pytest.mark.parametrize("grid,block", [((5, 1, 1), (64, 1, 1)), ((2, 3, 1), (8, 4, 2)), ((1, 1, 2), (4, 8, 4))])
def test_shuffle_kinds_and_widths(fibers: str, grid, block):
    n = int(np.prod(grid) * np.prod(block))
    v = _u64(n, 1)
    out = np.zeros((n, 168), np.uint64)
    launch("shuffle", "shuffle_kinds", grid, block, out, v, sync=True, fibers=fibers, threads=3)
    want = shuffle_kinds_model(v, int(np.prod(block)))
    bad = np.argwhere(out != want)
    first = tuple(bad[0]) if bad.size else None
    assert bad.size == 0, f"{len(bad)} wrong; first (thread, case) {first}: {out[first]:#x} != {want[first]:#x}"


@pytest.mark.parametrize("fibers", FIBERS)
def test_shuffle_operand_types(fibers: str):
    grid, block = (3, 1, 1), (32, 3, 1)
    n = 3 * 96
    v = _u64(n, 2)
    out = np.zeros((n, 8), np.uint64)
    launch("shuffle", "shuffle_types", grid, block, out, v, sync=True, fibers=fibers)
    want = shuffle_types_model(v, 96)
    for k in range(8):
        np.testing.assert_array_equal(out[:, k], want[:, k], err_msg=f"operand type case {k}")


@pytest.mark.parametrize("fibers", FIBERS)
@pytest.mark.parametrize("grid,block", [((7, 1, 1), (48, 1, 1)), ((3, 1, 1), (32, 2, 1)), ((2, 2, 1), (4, 4, 6))])
def test_votes_and_partial_masks(fibers: str, grid, block):
    n = int(np.prod(grid) * np.prod(block))
    v = _rng(3).integers(0, 2**32, n, dtype=np.uint32)
    v[::13] = 12345  # __all_sync(v != 12345) false in some warps
    v[5::97] &= ~np.uint32(3)
    out = np.zeros((n, 12), np.uint32)
    launch("vote", "votes", grid, block, out, v, sync=True, fibers=fibers)
    want = votes_model(v, int(np.prod(block)))
    for k in range(12):
        np.testing.assert_array_equal(out[:, k], want[:, k], err_msg=f"votes output {k}")
    assert (out[:, 9] == np.uint32(UNDEFINED & 0xFFFFFFFF)).all()


# ------------------------------------------------------------------------------------------------------
# block reductions: shuffles + __syncthreads + shared memory; host thread counts
# ------------------------------------------------------------------------------------------------------

def _block_sum(grid, block, threads: int, fibers: str = "asm", seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    nb, nt = int(np.prod(grid)), int(np.prod(block))
    x = (_rng(seed).standard_normal(nb * nt) * np.exp(_rng(seed + 1).uniform(-8, 8, nb * nt))).astype(np.float32)
    out = np.zeros(2 * nb * nt, np.float32)
    launch("reduce", "block_sum", grid, block, out, x, sync=True, threads=threads, fibers=fibers)
    return out, x


@pytest.mark.parametrize("fibers", FIBERS)
@pytest.mark.parametrize("block", [(256, 1, 1), (8, 8, 4), (16, 2, 8), (32, 1, 1), (1024, 1, 1)])
def test_block_sum(fibers: str, block):
    grid = (9, 1, 1)
    out, x = _block_sum(grid, block, 2, fibers)
    total, warp = block_sum_model(x.reshape(9, -1))
    np.testing.assert_array_equal(out[: x.size], total.reshape(-1))
    np.testing.assert_array_equal(out[x.size :], warp.reshape(-1))


def test_many_blocks_any_host_thread_count():
    grid, block = (61, 3, 2), (128, 1, 1)
    outs = [_block_sum(grid, block, threads)[0] for threads in (1, 2, 7)]
    _, x = _block_sum(grid, block, 1)
    total, warp = block_sum_model(x.reshape(61 * 3 * 2, -1))
    np.testing.assert_array_equal(outs[0][: x.size], total.reshape(-1))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_concurrent_launches_from_two_python_threads():
    """Two launches at once (two streams of a device): each host thread has its own scheduler and stacks."""
    import threading

    grid, block = (40, 1, 1), (256, 1, 1)
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def run(seed: int) -> None:
        results[seed] = _block_sum(grid, block, 3, seed=seed)

    workers = [threading.Thread(target=run, args=(seed,)) for seed in (11, 12)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for out, x in results.values():
        total, warp = block_sum_model(x.reshape(40, -1))
        np.testing.assert_array_equal(out[: x.size], total.reshape(-1))
        np.testing.assert_array_equal(out[x.size :], warp.reshape(-1))


@pytest.mark.parametrize("fibers", FIBERS)
def test_float4_staging_in_shared_memory(fibers: str):
    nb = 6
    x = _rng(5).integers(0, 2**32, nb * 256, dtype=np.uint32)
    out = np.zeros(nb * 512, np.uint32)
    launch("reduce", "stage_float4", (nb, 1, 1), (64, 1, 1), out, x, sync=True, fibers=fibers)
    np.testing.assert_array_equal(out, stage_float4_model(x.reshape(nb, 256)).reshape(-1))


@pytest.mark.parametrize("sync", [True, False], ids=["fibers", "phase-runner"])
def test_phases_share_only_shared_memory(sync: bool):
    """GQ_PHASES: with fibers the phases are separated by __syncthreads; the block runner (sync=False)
    runs phase 0 for every thread, then phase 1, ...: the same result, without fibers."""
    nb = 5
    x = _rng(9).standard_normal(nb * 256).astype(np.float32)
    x[7] = np.float32(1e30)  # order matters: the prefix sums are sequential float32 sums
    out = np.zeros_like(x)
    launch("phases", "reverse_prefix", (nb, 1, 1), (256, 1, 1), out, x, sync=sync)
    want = np.empty_like(x).reshape(nb, 256)
    for b, row in enumerate(x.reshape(nb, 256)):
        s, pre = np.float32(0), np.empty(256, np.float32)
        for k in range(256):
            s = np.float32(s + row[k])
            pre[k] = s
        want[b] = row[::-1] * np.float32(2) + pre
    np.testing.assert_array_equal(out.reshape(nb, 256), want)


# ------------------------------------------------------------------------------------------------------
# intrinsics, vector types, atomics
# ------------------------------------------------------------------------------------------------------

def test_intrinsics():
    n = 4 * 256
    xy = _rng(6).integers(0, 2**32, (n, 2), dtype=np.uint32)
    xy[:16] = [[0, 0], [0xFFFFFFFF, 0xFFFFFFFF], [1, 0x80000000], [0x80000000, 1], [0x7F800000, 0xFF800000],
               [0x7FC00000, 0x3F800000], [0x00000001, 0x80000001], [0x3F800000, 0], [0, 0x3F800000],
               [0x7F7FFFFF, 0x7F7FFFFF], [0x00800000, 0x3F000000], [0x3FFFFFFF, 0x40000001], [5, 7],
               [0xFFFF0000, 0x0000FFFF], [0x01234567, 0x89ABCDEF], [0xDEADBEEF, 0x3210]]
    out = np.zeros((n, 24), np.uint32)
    launch("intrinsics", "intrinsics", (4, 1, 1), (64, 2, 2), out, xy, sync=False)
    want = intrinsics_model(xy)
    floats = {10, 11, 12, 13, 14, 15}  # compared as IEEE values (any NaN equals any NaN)
    for k in range(24):
        got, exp = out[:, k], want[:, k]
        if k in floats:
            nan = np.isnan(got.view(np.float32)) & np.isnan(exp.view(np.float32))
            got, exp = got[~nan], exp[~nan]
        bad = np.flatnonzero(got != exp)
        assert bad.size == 0, f"output {k}: thread {bad[0]} {got[bad[0]]:#x} != {exp[bad[0]]:#x}"


def test_vector_type_layouts_are_cudas():
    out = np.zeros(22, np.uint32)
    launch("intrinsics", "vector_layouts", (1, 1, 1), (1, 1, 1), out, sync=False)
    cuda = [8, 8, 16, 16, 8, 8, 16, 16, 8, 8, 16, 16, 4, 4, 4, 4, 4, 4, 4, 4, 16, 16]  # float2 .. longlong2
    assert out.tolist() == cuda


ACC = np.dtype([("count", "<i4"), ("umax", "<u4"), ("bits", "<u4"), ("imax", "<i4"), ("usum", "<u8"),
                ("bits64", "<u8"), ("llmax", "<i8"), ("dsum", "<f8"), ("fsum", "<f4"), ("cas_sum", "<i4"),
                ("ticket", "<u4"), ("ftz", "<f4", 3), ("umin", "<u4"), ("pad_", "<u4")])


@pytest.mark.parametrize("sync", [False, True], ids=["runner", "fibers"])
def test_global_atomics_under_contention(sync: bool):
    grid, block = (96, 1, 1), (128, 1, 1)
    n = 96 * 128
    v = _rng(7).integers(0, 2**31, n, dtype=np.uint32)
    buf = np.zeros(ACC.itemsize + 4 * n, np.uint8)
    acc = buf[: ACC.itemsize].view(ACC)
    acc["imax"], acc["llmax"] = np.iinfo(np.int32).min, np.iinfo(np.int64).min
    acc["umin"] = np.iinfo(np.uint32).max
    launch("atomics", "atomics_global", grid, block, buf, v, sync=sync, threads=8)
    got = acc[0]
    want = atomics_model(v)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    tickets = buf[ACC.itemsize :].view(np.uint32)
    np.testing.assert_array_equal(np.sort(tickets), np.arange(n, dtype=np.uint32))


def test_shared_atomics():
    nb, nt = 11, 256
    v = _rng(8).integers(0, 2**32, nb * nt, dtype=np.uint32)
    out = np.zeros((nb, 17), np.uint32)
    launch("atomics", "atomics_shared", (nb, 1, 1), (nt, 1, 1), out, v, sync=True, threads=3)
    vb = v.reshape(nb, nt)
    for b in range(nb):
        np.testing.assert_array_equal(out[b, :16], np.bincount(vb[b] & 15, minlength=16))
        assert out[b, 16:].view(np.float32)[0] == np.float32((vb[b] & 1).sum())


# ------------------------------------------------------------------------------------------------------
# what must abort (in a subprocess)
# ------------------------------------------------------------------------------------------------------

_RUN = """
import sys
import numpy as np
from pathlib import Path
from gpuquant.backends.emulated import KernelLibrary, compile_family
family, kernel, block, sync, a = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
lib = KernelLibrary(compile_family(family, kernel_dir=Path(sys.argv[6])))
out = np.zeros(1 << 16, np.float32)
lib.launch_convert(kernel, (2, 1, 1), tuple(int(s) for s in block.split(",")), 1, sync, out.ctypes.data,
                   out.ctypes.data, a, 0)
print("returned")
"""

ABORTS = [
    ("errors", "diverge_exit", "32,1,1", True, 0,
     ["kernel diverge_exit, block (0,0,0)", "__shfl_xor_sync(mask=0xffffffff) reached by lanes 0-15 of warp 0",
      "lane 16: exited"]),
    ("errors", "diverge_syncthreads", "64,1,1", True, 0,
     ["kernel diverge_syncthreads", "reached by lanes 0-15 of warp 0", "lane 16: at __syncthreads()"]),
    ("errors", "diverge_op", "32,1,1", True, 0, ["kernel diverge_op", "lane 16: calls __ballot_sync instead"]),
    ("errors", "crossed_masks", "32,1,1", True, 0,
     ["__syncwarp(mask=0xffffffff) reached by lanes 0-15 of warp 0 cannot complete: lane 16: waits at "
      "__syncwarp(mask=0xffff0001)"]),
    ("errors", "three_cycle", "32,1,1", True, 0,
     ["kernel three_cycle, block (0,0,0) of 32 threads: deadlock",
      "warp 0: __syncwarp(mask=0x00000003) reached by lanes 0, waits for lanes 1"]),
    ("errors", "needs_sync", "32,1,1", False, 0,
     ["kernel needs_sync calls __shfl_xor_sync but is not marked sync", "Kernel(sync=True)"]),
    ("reduce", "block_sum", "64,1,1", False, 0, ["kernel block_sum calls __shfl_down_sync but is not marked sync"]),
    ("errors", "exit_before_syncthreads", "64,1,1", False, 0, ["calls __syncthreads but is not marked sync"]),
    ("errors", "own_bit", "32,1,1", True, 0,
     ["lane 1 of warp 0 calls __shfl_sync(mask=0x00000001) without its own bit"]),
    ("errors", "bad_width", "32,1,1", True, 0, ["__shfl_sync with width 3"]),
    ("errors", "missing_lanes", "48,1,1", True, 0,
     ["__shfl_down_sync(mask=0xffffffff) in warp 1 names lanes 16-31 that the block does not have"]),
    ("errors", "exit_before_syncthreads", "64,1,1", True, 0,
     ["kernel exit_before_syncthreads, block (0,0,0) of 64 threads", "exited while others wait at __syncthreads"]),
    ("overflow", "overflow", "32,1,1", True, 5000,
     ["kernel overflow, block (0,0,0): a thread overflowed its 256 KiB fiber stack"]),
]


@pytest.mark.parametrize("family,kernel,block,sync,a,messages", ABORTS,
                         ids=[f"{c[1]}-{'sync' if c[3] else 'plain'}" for c in ABORTS])
def test_rule_breakers_abort_with_a_message(family, kernel, block, sync, a, messages):
    lib(family)  # compiled here, so that the subprocess finds it in the cache
    res = subprocess.run([sys.executable, "-c", _RUN, family, kernel, block, "1" if sync else "0", str(a), str(KDIR)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "returned" not in res.stdout, f"{kernel} did not abort: {res.stdout} {res.stderr}"
    for m in messages:
        assert m in res.stderr, f"{kernel}: {m!r} not in stderr:\n{res.stderr}"


def test_dynamic_shared_memory_is_refused(tmp_path: Path):
    (tmp_path / "dyn.cu").write_text('extern "C" __global__ void dyn(const void* in, void* out, long long a, long long b) {'
                                     "\n    extern __shared__ float buf[];\n    buf[threadIdx.x] = 0;\n}\n")
    with pytest.raises(DeviceError, match=r"dyn.cu declares dynamic shared memory \(extern __shared__\)"):
        compile_family("dyn", kernel_dir=tmp_path)


def test_deep_but_fitting_recursion_runs():
    out = np.zeros(64, np.int32)
    launch("overflow", "overflow", (2, 1, 1), (32, 1, 1), out, sync=True, a=40)
    assert (out[:32] == sum(range(41))).all()  # deep(n) = n + (n - 1) + ... + 0


# ------------------------------------------------------------------------------------------------------
# NVRTC: the test kernels are valid CUDA
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("family", CUDA_FAMILIES)
def test_test_kernels_compile_with_nvrtc(family: str, arch: str):
    from gpuquant.backends import nvrtc as N

    try:
        nv = N.load()
    except N.NvrtcError as e:
        pytest.skip(f"libnvrtc not available: {e}")
    options = (*K.NVRTC_OPTIONS, f"-I{KDIR}", f"-I{K.kernel_dir()}", f"--gpu-architecture={arch}")
    rc, log, _, _ = nv.compile((KDIR / f"{family}.cu").read_text(), f"{family}.cu", options)
    assert rc == 0, f"NVRTC failed on {family}.cu for {arch}:\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warnings in {family}.cu for {arch}:\n{log}"


# ------------------------------------------------------------------------------------------------------
# micro-benchmark (printed, not asserted)
# ------------------------------------------------------------------------------------------------------

def _best_time(fn, repeat: int) -> float:
    """The fastest of `repeat` short runs (the machine is shared: the minimum is the cost)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("fibers", FIBERS)
def test_switch_cost_benchmark(fibers: str, capsys):
    nt, rounds = 256, 100 if fibers == "asm" else 10
    out = np.zeros(1, np.int32)
    lines = []
    for kernel, per_round in (("syncwarp_rounds", 31 * nt // 32), ("syncthreads_rounds", nt - 1)):
        dt = _best_time(lambda: launch("bench", kernel, (1, 1, 1), (nt, 1, 1), out, sync=True, threads=1,
                                       fibers=fibers, a=rounds), 50)
        switches = rounds * per_round
        lines.append(f"{kernel}: {switches / dt / 1e6:.1f} M switches/s, {dt / switches * 1e9:.1f} ns/switch")
    n = 8 * 256
    x = np.ones(n, np.float32)
    y = np.zeros(n, np.float32)
    dt = _best_time(lambda: launch("bench", "warp_sums", (8, 1, 1), (256, 1, 1), y, x, sync=True, threads=1,
                                   fibers=fibers), 50)
    lines.append(f"warp_sums (5 __shfl_xor_sync, fiber start and exit): {dt / n * 1e9:.0f} ns per CUDA thread")
    assert (y == 32).all()
    with capsys.disabled():
        print(f"\n[host harness, {fibers} fibers, 1 host thread] " + "; ".join(lines))
