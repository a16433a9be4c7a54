"""Several outputs from one read (``--type A,B,...``): every output byte-identical to a single-type run and
to llama-quantize, the source read once, memory independent of the number of outputs, failures per output."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from gpuquant import pipeline
from gpuquant.api import UsageError, quantize_file
from gpuquant.backends.cpu import CpuDevice
from gpuquant.cli import app
from gpuquant.outputs import output_for, parse_types, quantize_files
from gpuquant.quants import GGMLQuantizationType as T
from tests.oracle import requires_oracle
from tests.oracle_files import assert_same, ftype_id, oracle_quantize_file, oracle_with_imatrix, write_imatrix
from tests.synthetic import write_llama, write_qwen3moe, write_splits

TYPES = ["Q4_K_M", "Q8_0", "Q6_K", "IQ4_XS", "F16"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("outputs") / "tiny-f16.gguf", n_layer=2)


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    return write_qwen3moe(tmp_path_factory.mktemp("outputs-moe") / "moe-f16.gguf")


def single(src, tmp_path, ftype, **kw):
    out = tmp_path / f"single-{ftype}.gguf"
    quantize_file(src, out, ftype, threads=2, **kw)
    return out


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if "gpuquant-" in p.name)


def test_type_list_and_names(tmp_path):
    assert parse_types("Q4_K_M, q8_0,IQ4_XS") == ["Q4_K_M", "q8_0", "IQ4_XS"]
    with pytest.raises(UsageError, match="Q8_0 is listed twice"):
        parse_types("Q8_0,Q4_0,q8_0")
    with pytest.raises(UsageError, match="comma-separated"):
        parse_types("Q8_0,,Q4_0")
    src = tmp_path / "m-f16.gguf"
    assert output_for(src, "out/{stem}-{type}.gguf", "Q6_K", 3).as_posix() == "out/m-f16-Q6_K.gguf"
    assert output_for(src, None, "Q6_K", 3) == tmp_path / "m-f16-Q6_K.gguf"
    with pytest.raises(UsageError, match=r"must contain \{type\}"):
        output_for(src, "out.gguf", "Q6_K", 2)


@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_every_output_equals_its_single_run(llama, tmp_path, device):
    job = quantize_files(llama, tmp_path / "{type}.gguf", ",".join(TYPES), device=device, threads=2,
                         slab_bytes=48 << 10)
    assert [r.error for r in job.reports] == [None] * len(TYPES)
    for t in TYPES:
        assert_same(tmp_path / f"{t}.gguf", single(llama, tmp_path, t, device=device))
    assert leftovers(tmp_path) == []


def test_source_read_once(llama, tmp_path, monkeypatch):
    reads = []
    real = pipeline.read_rows

    def counting(src, byte0, buf, nbytes, fd=None):
        reads.append((src.name, byte0, nbytes))
        return real(src, byte0, buf, nbytes, fd)

    monkeypatch.setattr(pipeline, "read_rows", counting)
    quantize_files(llama, tmp_path / "{type}.gguf", "Q4_0,Q8_0,Q6_K,F16", device="cpu", threads=2,
                   slab_bytes=32 << 10)
    from gpuquant.gguf_io import read_model

    model = read_model(llama)
    assert len(reads) == len(set(reads)), "a slab was read twice"
    assert sum(n for _, _, n in reads) == model.nbytes


class DeviceBuffers(CpuDevice):
    """The numpy device through device buffers, uploads and downloads (the GPU's code path), counting
    its allocations and conversions."""

    zero_copy = False

    def __init__(self):
        super().__init__(threads=2)
        self.allocated = 0
        self.converted = 0

    def host_buffer(self, nbytes):
        self.allocated += int(nbytes)
        return super().host_buffer(nbytes)

    def device_buffer(self, nbytes):
        self.allocated += int(nbytes)
        return super().device_buffer(nbytes)

    def quantize(self, job, src, dst, qw, stream):
        if job.dst_type == T.F32 and job.src_type not in (T.F32, T.F16, T.BF16):
            self.converted += 1
        return super().quantize(job, src, dst, qw, stream)


def test_through_device_buffers_memory_independent_of_output_count(llama, tmp_path):
    one, many = DeviceBuffers(), DeviceBuffers()
    try:
        quantize_files(llama, tmp_path / "one-{type}.gguf", "Q6_K", device=one, slab_bytes=40 << 10)
        quantize_files(llama, tmp_path / "{type}.gguf", "Q6_K,Q4_0,Q8_0,Q5_0", device=many, slab_bytes=40 << 10)
    finally:
        one.close()
        many.close()
    assert many.allocated <= one.allocated * 1.05, (one.allocated, many.allocated)
    for t in ("Q6_K", "Q4_0", "Q8_0", "Q5_0"):
        assert_same(tmp_path / f"{t}.gguf", single(llama, tmp_path, t, device="cpu"))


def test_requantize_converts_once_and_matches(llama, tmp_path):
    q8 = single(llama, tmp_path, "Q8_0", device="cpu")
    types = ["Q4_0", "Q4_K_M", "Q5_0"]
    dev = DeviceBuffers()
    try:
        quantize_files(q8, tmp_path / "r-{type}.gguf", ",".join(types), device=dev, allow_requantize=True,
                       slab_bytes=40 << 10)
    finally:
        dev.close()
    assert dev.converted > 0, "no source slab was dequantized once for all outputs"
    for t in types:
        assert_same(tmp_path / f"r-{t}.gguf", single(q8, tmp_path, t, device="cpu", allow_requantize=True))


def test_options_keep_split_overrides_pure(llama, tmp_path):
    (tmp_path / "split").mkdir()
    shards = write_splits(llama, tmp_path / "split" / "m.gguf", 8)
    opts = dict(keep_split=True, pure=True, tensor_types=[("attn_v", "q8_0")],
                override_kv=["general.name=str:multi"], device="cpu", threads=2, slab_bytes=48 << 10)
    (tmp_path / "multi").mkdir()
    quantize_files(shards[0], tmp_path / "multi" / "{type}.gguf", "Q4_0,Q5_K_M", **opts)
    for t in ("Q4_0", "Q5_K_M"):
        (tmp_path / t).mkdir()
        quantize_file(shards[0], tmp_path / t / f"{t}.gguf", t, **opts)
        want = sorted((tmp_path / t).iterdir())
        assert len(want) == len(shards)
        for w in want:
            assert_same(tmp_path / "multi" / w.name, w)


def _huge_f32_model(path):
    """An F32 model with one tensor whose Q8_0 scale overflows fp16 (BF16 and F32 keep it)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    rng = np.random.default_rng(0)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, np.float32))
    w.add_tensor("blk.0.ffn_up.weight", (rng.standard_normal((4, 64)) * 1e7).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_one_failing_output_leaves_the_others(tmp_path):
    src = _huge_f32_model(tmp_path / "huge.gguf")
    job = quantize_files(src, tmp_path / "{type}.gguf", "Q8_0,BF16,F32", device="cpu", pure=True)
    assert [r.ftype for r in job.failed] == ["Q8_0"]
    assert "validation failed" in job.reports[0].error and "ffn_up" in job.reports[0].error
    assert not (tmp_path / "Q8_0.gguf").exists()
    for t in ("BF16", "F32"):
        assert_same(tmp_path / f"{t}.gguf", single(src, tmp_path, t, device="cpu", pure=True))
    assert leftovers(tmp_path) == []


def test_a_write_error_fails_that_output_only(llama, tmp_path, monkeypatch):
    from gpuquant import gguf_writer

    real = gguf_writer.StreamWriter.write

    def write(self, data):
        if self.dst.name == "Q4_0.gguf" and self.bytes_written > 20_000:
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(gguf_writer.StreamWriter, "write", write)
    job = quantize_files(llama, tmp_path / "{type}.gguf", "Q8_0,Q4_0,Q6_K", device="cpu", threads=2,
                         slab_bytes=16 << 10)
    assert [r.ftype for r in job.failed] == ["Q4_0"] and "No space left" in job.failed[0].error
    monkeypatch.undo()
    for t in ("Q8_0", "Q6_K"):
        assert_same(tmp_path / f"{t}.gguf", single(llama, tmp_path, t, device="cpu"))
    assert leftovers(tmp_path) == [] and not (tmp_path / "Q4_0.gguf").exists()


def test_cli_positional_comma_list_json_and_exit_code(llama, tmp_path):
    out = tmp_path / "{stem}.{type}.gguf"
    r = cli("run", llama, out, "Q8_0,IQ2_XXS,Q4_0", "--device", "cpu", "--json", tmp_path / "r.json", "-q")
    assert r.exit_code == 1
    assert "output IQ2_XXS" in r.stderr and "requires an importance matrix" in r.stderr
    assert "1 of 3 outputs failed (IQ2_XXS); 2 written" in r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [o["ftype"] for o in doc["outputs"]] == ["Q8_0", "IQ2_XXS", "Q4_0"] and doc["failed"] == ["IQ2_XXS"]
    ok = doc["outputs"][0]
    assert ok["error"] is None and ok["profile"]["bytes_written"] == ok["output_bytes"] > 0
    assert doc["stages"] and doc["outputs"][2]["output_bytes"] > 0
    assert_same(tmp_path / "tiny-f16.Q4_0.gguf", single(llama, tmp_path, "Q4_0", device="cpu"))


def test_cli_dry_run_shows_every_output(llama, tmp_path):
    r = cli("run", llama, "--type", "Q4_K_M,Q8_0", "--dry-run", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    head = next(line for line in lines if line.lstrip().startswith("#"))
    assert head.split()[-2:] == ["Q4_K_M", "Q8_0"]
    plans = [quantize_file(llama, None, t, dry_run=True).tensors for t in ("Q4_K_M", "Q8_0")]
    for a, b in zip(*plans):
        row = next(line for line in lines if f" {a.name} " in line)
        assert row.split()[-2:] == [a.dst_type.name, b.dst_type.name]
    assert "total MiB" in r.stdout and "bits per weight" in r.stdout
    assert not list(tmp_path.iterdir())


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_outputs_match_llama_quantize(llama, tmp_path, device):
    types = ["Q4_K_M", "Q8_0", "IQ4_NL", "Q5_1"]
    quantize_files(llama, tmp_path / "{type}.gguf", ",".join(types), device=device, threads=2)
    for t in types:
        oracle_quantize_file(llama, tmp_path / f"ref-{t}.gguf", ftype_id(t))
        assert_same(tmp_path / f"{t}.gguf", tmp_path / f"ref-{t}.gguf")


@requires_oracle
def test_moe_imatrix_and_requantize_match_llama_quantize(moe, tmp_path):
    imat = write_imatrix(moe, tmp_path / "imatrix.gguf", "gguf")
    types = ["IQ4_XS", "Q4_K_S", "Q6_K"]
    quantize_files(moe, tmp_path / "{type}.gguf", ",".join(types), device="emulated", threads=2,
                   imatrix=str(imat), slab_bytes=96 << 10)
    for t in types:
        oracle_with_imatrix(moe, tmp_path / f"ref-{t}.gguf", t, imat)
        assert_same(tmp_path / f"{t}.gguf", tmp_path / f"ref-{t}.gguf")
    q8 = tmp_path / "Q8.gguf"
    oracle_quantize_file(moe, q8, ftype_id("Q8_0"))
    quantize_files(q8, tmp_path / "rq-{type}.gguf", "Q4_0,Q5_K_M", device="cpu", threads=2, allow_requantize=True)
    for t in ("Q4_0", "Q5_K_M"):
        oracle_quantize_file(q8, tmp_path / f"ref-rq-{t}.gguf", ftype_id(t), allow_requantize=True)
        assert_same(tmp_path / f"rq-{t}.gguf", tmp_path / f"ref-rq-{t}.gguf")


def test_cuda_device_same_pipeline(llama, tmp_path, monkeypatch):
    """CudaDevice (on the stand-in cupy of tests/fake_cupy.py, running the kernels through the emulated
    device): several outputs from one upload per slab, the same bytes, no stream-ordering violation."""
    import gc
    import sys

    from gpuquant.backends import cuda
    from gpuquant.backends.emulated import EmulatedDevice
    from tests.fake_cupy import FakeGPU, make_cupy
    from tests.test_cuda_backend import _nvrtc_reason

    if _nvrtc_reason() is not None:
        pytest.skip(_nvrtc_reason())
    emu = EmulatedDevice(threads=2)
    gpu = FakeGPU(emu)
    cp, cpx = make_cupy(gpu)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupyx", cpx)
    monkeypatch.setattr(cuda, "_MODULES", {})
    monkeypatch.setattr(cuda, "_FUNCTIONS", {})
    dev = cuda.CudaDevice(0)
    try:
        job = quantize_files(llama, tmp_path / "{type}.gguf", "Q4_K_M,Q8_0,F16", device=dev, slab_bytes=64 << 10)
    finally:
        dev.close()
        emu.close()
    gc.collect()
    assert not gpu.violations, gpu.violations
    assert job.device.startswith("cuda") and not job.failed
    for t in ("Q4_K_M", "Q8_0", "F16"):
        assert_same(tmp_path / f"{t}.gguf", single(llama, tmp_path, t, device="cpu"))


class AbortCheck(CpuDevice):
    """A device whose after-download check finds a slab ggml aborts on, for Q4_0 only (as CUDA's status word
    reports it)."""

    def quantize(self, job, src, dst, qw, stream):
        super().quantize(job, src, dst, qw, stream)
        if job.dst_type != T.Q4_0:
            return None

        def check():
            from gpuquant.quants import GGMLAbort

            raise GGMLAbort("GGML_ASSERT in the test device")

        return check


def test_an_abort_check_fails_that_output_only(llama, tmp_path):
    dev = AbortCheck(threads=2)
    try:
        job = quantize_files(llama, tmp_path / "{type}.gguf", "Q8_0,Q4_0", device=dev, pure=True)
    finally:
        dev.close()
    assert [r.ftype for r in job.failed] == ["Q4_0"]
    assert "cannot quantize tensor" in job.failed[0].error and "GGML_ASSERT in the test device" in job.failed[0].error
    assert_same(tmp_path / "Q8_0.gguf", single(llama, tmp_path, "Q8_0", device="cpu", pure=True))
    assert leftovers(tmp_path) == [] and not (tmp_path / "Q4_0.gguf").exists()


class AbortInCompute(CpuDevice):
    """A host device whose computation aborts (as a grid search raises GGMLAbort) for Q4_0 only."""

    def compute(self, job, src, dst, qw):
        if job.dst_type == T.Q4_0:
            from gpuquant.quants import GGMLAbort

            raise GGMLAbort("iq2_find_best_neighbour in the test device")
        return super().compute(job, src, dst, qw)


def test_an_abort_on_a_host_device_fails_that_output_only(llama, tmp_path):
    """The host stream does not stay failed after a slab ggml aborts on: the other output is finished."""
    dev = AbortInCompute(threads=2)
    try:
        job = quantize_files(llama, tmp_path / "{type}.gguf", "Q4_0,Q8_0", device=dev, pure=True)
    finally:
        dev.close()
    assert [r.ftype for r in job.failed] == ["Q4_0"]
    assert "iq2_find_best_neighbour in the test device" in job.failed[0].error
    assert_same(tmp_path / "Q8_0.gguf", single(llama, tmp_path, "Q8_0", device="cpu", pure=True))
    assert leftovers(tmp_path) == [] and not (tmp_path / "Q4_0.gguf").exists()
