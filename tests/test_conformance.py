"""Conformance of every registered quant type on every device, byte for byte, in one body per check.

Parametrized over ``registered()`` types x ``DEVICES`` (``cpu``: the numpy reference; ``emulated``: the
kernels on the host; ``cuda``: the kernels on a GPU, marked ``gpu`` and skipped with the reason without one)
x edge cases: the committed golden vectors; fresh random rows, fresh edge-case rows and NaN/Inf rows against
llama.cpp's ggml_quantize_chunk; F16/BF16 sources; MoE slabs of several experts with their own importance
weights in one launch; dequantization (bit for bit ggml's to_float) and requantization from every type,
inf/NaN scales included. A registered type that lacks a fact the device needs (a kernel, a dequantizer, golden
vectors) fails naming it. The GPU-NaN build (a GPU's NaN bits on the host) runs the cases that make NaNs.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant import quants
from gpuquant.quants import QUANT_SIZES, GGMLAbort, registered
from gpuquant.quants import GGMLQuantizationType as T
from tests import helpers as H
from tests.golden import first_difference, groups_for, iter_cases
from tests.golden.cases import build_cases
from tests.oracle import oracle_dequantize, oracle_quantize, requires_oracle

F32 = np.float32
TYPES = list(registered())
FLOATS = (T.F32, T.F16, T.BF16)
QUANTIZED = [t for t in TYPES if t not in FLOATS]


def _id(t) -> str:
    return t.name


@pytest.fixture(scope="module", params=H.DEVICES)
def device(request):
    d = H.make_device(request.param)
    yield d
    d.close()


def _need(device, src: T, dst: T) -> None:
    """Fail (never skip) when the device lacks what a registered type declares it needs."""
    if device.supports(src, dst):
        return
    cls = quants.get(dst)
    missing = "no kernel declared (kernel = None)" if cls.kernel is None and device.name != "cpu" else \
        f"no support for {src.name} -> {dst.name}"
    pytest.fail(f"{dst.name} on {device.name}: {missing}")


def _weights_kinds(qtype: T) -> tuple[str, ...]:
    """``tests.helpers.random_imatrix`` kinds a type can be quantized with (ggml aborts without weights for
    the types that require them)."""
    return ("imatrix", "sparse") if quants.get(qtype).requires_imatrix else ("none", "imatrix", "sparse")


def _lengths(qtype: T) -> tuple[int, ...]:
    block = QUANT_SIZES[qtype][0]
    return (max(256, block), 3 * max(256, block)) if block > 1 else (96, 1024)


def _quantize(device, x: np.ndarray, qtype: T, qw: np.ndarray | None) -> np.ndarray:
    _need(device, T.F32, qtype)
    return H.run_device(device, x, T.F32, qtype, x.shape[1], None if qw is None else qw[None])


# ------------------------------------------------------------------------------------------------------
# golden vectors (llama.cpp's bytes, committed): no oracle needed
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_golden(device, qtype: T):
    failures, first, n = [], None, 0
    for case_id, rows, imatrix, want in iter_cases(qtype.name):
        n += 1
        if want is None:  # ggml aborts on this row: gpuquant refuses it
            try:
                _quantize(device, rows, qtype, imatrix)
                failures.append(case_id)
                first = first or f"{case_id}: ggml aborts on this row, gpuquant quantized it"
            except GGMLAbort:
                pass
            continue
        got = _quantize(device, rows, qtype, imatrix)
        diff = first_difference(got, want, QUANT_SIZES[qtype][1], QUANT_SIZES[qtype][0], rows)
        if diff is not None:
            failures.append(case_id)
            first = first or f"{case_id}: {diff}"
    assert n > 0, f"no golden cases for {qtype.name}"
    assert not failures, f"{qtype.name} on {device.name}: {len(failures)}/{n} golden cases differ: {failures[:8]}\n" \
                         f"first: {first}"


# ------------------------------------------------------------------------------------------------------
# fresh inputs against llama.cpp
# ------------------------------------------------------------------------------------------------------


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_random_rows(device, qtype: T):
    """Normal rows of scales 0.01..10, two row lengths, every kind of importance weights."""
    for n in _lengths(qtype):
        for kind in _weights_kinds(qtype):
            rng = np.random.default_rng([int(qtype), n, len(kind)])
            x = H.random_rows(rng, 6, n)
            w = H.random_imatrix(rng, n, kind)
            H.check_vs_oracle(lambda r: _quantize(device, r, qtype, w), x, qtype, w,
                              f"random {x.shape} {kind} on {device.name}")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_edge_cases(device, qtype: T):
    """The golden edge-case kinds (zeros, denormals, huge, ties, ...) drawn with another seed."""
    for group in groups_for(qtype.name):
        for case_id, rows, imatrix in build_cases(group, seed=11):
            for w in ((imatrix,) if quants.get(qtype).requires_imatrix else (None, imatrix)):
                H.check_vs_oracle(lambda r: _quantize(device, r, qtype, w), rows, qtype, w,
                                  f"{case_id} {'imatrix' if w is not None else 'plain'} on {device.name}")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_nan_inf_rows(device, qtype: T):
    """NaN/Inf inputs (llama-quantize refuses such tensors when loading, but ggml_quantize_chunk's bytes are
    matched) on the host devices; a GPU makes other NaN bits, so it is not held to them."""
    if device.name.startswith("cuda"):
        pytest.skip("NaN inputs: NaN bits are the host's (llama-quantize refuses such tensors anyway)")
    n = max(512, QUANT_SIZES[qtype][0])
    x = H.nonfinite_rows(seed=int(qtype), n=n)
    w = np.abs(np.random.default_rng(int(qtype)).standard_normal(n)).astype(F32)
    w[:100] = 0
    for qw in ((w,) if quants.get(qtype).requires_imatrix else (None, w)):
        def run(r, qw=qw):
            with np.errstate(all="raise"):  # no float warning may escape
                return _quantize(device, r, qtype, qw)
        H.check_vs_oracle(run, x, qtype, qw, f"NaN/Inf on {device.name}")


@requires_oracle
@pytest.mark.parametrize("src", ["f16", "bf16"])
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_half_sources(device, qtype: T, src: str):
    """F16/BF16 source rows are converted exactly as ggml's to_float before quantizing; 67 rows make a
    partial last CUDA block."""
    rng = np.random.default_rng([int(qtype), len(src)])
    x = H.random_rows(rng, 67, _lengths(qtype)[0])
    raw, values = H.to_f16(x) if src == "f16" else H.to_bf16(x)
    src_type = T.F16 if src == "f16" else T.BF16
    _need(device, src_type, qtype)
    for w in [H.random_imatrix(rng, x.shape[1], k) for k in _weights_kinds(qtype)[:2]]:
        got = H.run_device(device, raw, src_type, qtype, x.shape[1], None if w is None else w[None])
        H.check_vs_oracle(lambda r: got, values, qtype, w, f"from {src} on {device.name}")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_moe_slab(device, qtype: T):
    """3 experts of 5 rows of different scales in one slab, each expert with its own importance weights."""
    n_expert, rpe, n = 3, 5, _lengths(qtype)[0]
    rng = np.random.default_rng(100 + int(qtype))
    x = H.random_rows(rng, n_expert * rpe, n) * np.repeat(np.array([1.0, 30.0, 1e-3], F32), rpe)[:, None]
    qw = (rng.random((n_expert, n)) ** 3 * np.array([[1.0], [1e3], [1e-3]])).astype(F32)
    _need(device, T.F32, qtype)
    got = H.run_device(device, x, T.F32, qtype, n, qw, n_expert=n_expert)
    want = np.concatenate([oracle_quantize(x[e * rpe:(e + 1) * rpe], qtype, qw[e]) for e in range(n_expert)])
    H.assert_bytes(got, want, qtype, x, f"MoE on {device.name}")


# ------------------------------------------------------------------------------------------------------
# dequantize and requantize
# ------------------------------------------------------------------------------------------------------


def _source_blocks(qtype: T, seed: int, halves: np.ndarray = H.EDGE_HALVES) -> tuple[np.ndarray, int]:
    """Bytes of ``qtype``: half quantized by llama.cpp from random rows, half random bytes whose fp16 scales
    are one of ``halves`` (inf, -inf, NaN, zero, subnormal) or finite. Returns (raw (4, row_size), n_per_row)."""
    n = 2 * max(256, QUANT_SIZES[qtype][0])
    rng = np.random.default_rng(seed)
    x = H.random_rows(rng, 2, n)
    w = H.random_imatrix(rng, n, "imatrix") if quants.get(qtype).requires_imatrix else None
    return np.concatenate([oracle_quantize(x, qtype, w), H.random_blocks(qtype, 2, n, seed, halves=halves)]), n


@requires_oracle
@pytest.mark.parametrize("qtype", QUANTIZED, ids=_id)
def test_dequantize(device, qtype: T):
    """``dequantize_<type>`` / ``dequantize_rows`` against llama.cpp's to_float, every bit (NaN bits too)."""
    raw, n = _source_blocks(qtype, seed=int(qtype))
    _need(device, qtype, T.F32)
    got = H.run_device(device, raw, qtype, T.F32, n).view(F32)
    H.assert_same_floats(got, oracle_dequantize(raw, qtype, n), f"dequantize {qtype.name} on {device.name}")


def _requant_targets() -> list[T]:
    return [t for t in (T.F16, T.Q8_0, T.Q4_K, T.IQ4_NL) if t in registered()]


@requires_oracle
@pytest.mark.parametrize("src", QUANTIZED, ids=_id)
def test_requantize(device, src: T):
    """llama-quantize dequantizes a quantized tensor with to_float and quantizes the floats: from every type
    (inf scales included, which make inf*0 NaNs) into F16, Q8_0, a K-quant and IQ4_NL. NaN scales are left
    out: they pass their payload into the floats, and which of two NaN operands a float operation returns is
    up to the compiler (see ``tests.helpers.nonfinite_rows``)."""
    raw, n = _source_blocks(src, seed=50 + int(src), halves=H.EDGE_HALVES_NO_NAN)
    floats = oracle_dequantize(raw, src, n)
    finite = np.isfinite(floats).all(axis=1)
    for dst in _requant_targets():
        if n % QUANT_SIZES[dst][0]:
            continue
        _need(device, src, dst)
        w = np.abs(np.random.default_rng(2).standard_normal(n)).astype(F32)
        for qw in (None, w):
            got = H.run_device(device, raw, src, dst, n, None if qw is None else qw[None])
            want = oracle_quantize(floats, dst, qw)
            rows = slice(None) if not device.name.startswith("cuda") else finite  # a GPU's NaN bits differ
            H.assert_bytes(got[rows], want[rows], dst, floats[rows], f"{src.name} -> {dst.name} on {device.name}")


# ------------------------------------------------------------------------------------------------------
# the GPU code path on the host (GPU NaN bits): the kernels' NaN guards answer for every NaN
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_nan_dev(tmp_path_factory):
    d = H.gpu_nan_device(H.gpu_nan_kernel_dir(tmp_path_factory.mktemp("gpu_nan")))
    yield d
    d.close()


@pytest.fixture(scope="module")
def emulated():
    d = H.make_device("emulated")
    yield d
    d.close()


_NAN_KINDS = ("denormal", "large", "outlier", "block_scales")


@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_gpu_nan_bits_change_nothing(emulated, gpu_nan_dev, qtype: T):
    """Denormal and huge golden inputs (1/d = inf and x*x overflow make NaNs) and inf/NaN-scale sources give
    the same bytes when every computed NaN is the GPU's canonical NaN."""
    _need(emulated, T.F32, qtype)
    n = 0
    for case_id, rows, imatrix, _ in iter_cases(qtype.name):
        if case_id.split(":")[1].split("/")[0] not in _NAN_KINDS or "!aborts" in case_id:
            continue
        n += 1
        qw = None if imatrix is None else imatrix[None]
        want = H.run_device(emulated, rows, T.F32, qtype, rows.shape[1], qw)
        got = H.run_device(gpu_nan_dev, rows, T.F32, qtype, rows.shape[1], qw)
        H.assert_bytes(got, want, qtype, rows, f"GPU NaN bits, {case_id}")
    assert n > 0


@pytest.mark.parametrize("qtype", QUANTIZED, ids=_id)
def test_gpu_nan_dequantize_stores_x86_nans(emulated, gpu_nan_dev, qtype: T):
    """Blocks with inf/NaN scales dequantize to the host build's floats, except that every NaN (inf*0, a
    NaN scale) carries the marker of gq_x86_nan: on a GPU each stored NaN is x86's default NaN."""
    _need(emulated, qtype, T.F32)
    n = 4 * max(QUANT_SIZES[qtype][0], 64)
    raw = H.random_blocks(qtype, 6, n, seed=int(qtype))
    want = H.run_device(emulated, raw, qtype, T.F32, n).view(np.uint32)
    got = H.run_device(gpu_nan_dev, raw, qtype, T.F32, n).view(np.uint32)
    nan = np.isnan(want.view(F32))
    np.testing.assert_array_equal(got[~nan], want[~nan])
    bad = np.flatnonzero(nan & (got != H.GPU_NAN_MARKER))
    assert bad.size == 0, (f"{bad.size}/{nan.sum()} NaNs not stored through gq_x86_nan; first: row "
                           f"{bad[0] // n}, element {bad[0] % n}, bits {got.reshape(-1)[bad[0]]:#010x}")
