"""The conformance checks of test_conformance.py on a real CUDA device (``@pytest.mark.gpu``; skipped with
the reason when CuPy or a GPU is missing). The CudaDevice plumbing without a GPU (a stand-in ``cupy``
running the emulated kernels) is in test_cuda_backend.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant.backends import DeviceError
from gpuquant.backends import kernels as K
from gpuquant.backends.emulated import EmulatedDevice
from gpuquant.quants import QUANT_SIZES
from gpuquant.quants import GGMLQuantizationType as T
from tests.golden import TYPES as GOLDEN_TYPES
from tests.golden import first_difference, iter_cases
from tests.test_conformance import TYPES, assert_bytes, make_rows, reference, run_device, to_bf16, to_f16

F32 = np.float32


def _gpu_reason() -> str | None:
    from gpuquant.backends import cuda

    if cuda._cupy() is None:
        return "CuPy is not installed (pip install 'gpuquant[cuda12]')"
    if cuda.device_count() == 0:
        return "no CUDA device visible to CuPy"
    return None


_REASON = _gpu_reason()


@pytest.fixture(scope="module")
def gpu():
    if _REASON:
        pytest.skip(_REASON)
    from gpuquant.backends.cuda import CudaDevice

    d = CudaDevice(0)
    yield d
    d.close()


@pytest.fixture(scope="module")
def emu():
    d = EmulatedDevice(threads=2)
    yield d
    d.close()


def _id(t: T) -> str:
    return t.name


# ------------------------------------------------------------------------------------------------------
# on a GPU
# ------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", [t for t in TYPES if t.name in GOLDEN_TYPES], ids=_id)
def test_gpu_golden(gpu, qtype: T):
    failures, first = [], None
    for case_id, rows, imatrix, want in iter_cases(qtype.name):
        got = run_device(gpu, rows, T.F32, qtype, rows.shape[1], None if imatrix is None else imatrix[None])
        diff = first_difference(got, want, QUANT_SIZES[qtype][1], QUANT_SIZES[qtype][0], rows)
        if diff is not None:
            failures.append(case_id)
            first = first or f"{case_id}: {diff}"
    assert not failures, f"{qtype.name}: golden cases differ on {gpu.name}: {failures[:8]}\nfirst: {first}"


@pytest.mark.gpu
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("src", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_gpu_matches_numpy_and_emulated(gpu, emu, qtype: T, src: str, weighted: bool):
    nb = 3 if QUANT_SIZES[qtype][0] == 256 else 12
    x = make_rows(qtype, 6, nb, seed=int(qtype) * 7 + len(src))
    src_type, raw, values = {"f32": (T.F32, x, x), "f16": (T.F16, *to_f16(x)), "bf16": (T.BF16, *to_bf16(x))}[src]
    qw = (np.random.default_rng(1).random((1, x.shape[1])) + 0.01).astype(F32) if weighted else None
    got = run_device(gpu, raw, src_type, qtype, x.shape[1], qw)
    assert_bytes(got, reference(values, qtype, qw), qtype, values, f"{gpu.name} from {src}")
    assert_bytes(got, run_device(emu, raw, src_type, qtype, x.shape[1], qw), qtype, values, "vs emulated")


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_gpu_moe_and_requantize(gpu, emu, qtype: T):
    n_expert, rpe = 4, 3
    x = make_rows(qtype, n_expert * rpe, 2 if QUANT_SIZES[qtype][0] == 256 else 8, seed=200 + int(qtype))
    qw = (np.random.default_rng(4).random((n_expert, x.shape[1])) ** 2).astype(F32)
    got = run_device(gpu, x, T.F32, qtype, x.shape[1], qw, n_expert=n_expert)
    assert_bytes(got, reference(x, qtype, qw, n_expert), qtype, x, f"MoE on {gpu.name}")
    if K.KERNELS[qtype].dequantize:
        for dst in (T.F16, T.Q4_0):
            want = run_device(emu, got, qtype, dst, x.shape[1])
            assert_bytes(run_device(gpu, got, qtype, dst, x.shape[1]), want, dst, None, f"requantized from {qtype.name}")


@pytest.mark.gpu
def test_gpu_device_basics(gpu):
    assert gpu.memory_budget() > 0
    with pytest.raises(DeviceError, match="only"):
        from gpuquant.backends.cuda import CudaDevice, device_count

        CudaDevice(device_count())
