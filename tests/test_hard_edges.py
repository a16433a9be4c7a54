"""Hard edges: each failure gives one clear message naming the file/tensor/value, a non-zero exit code, no
traceback, nothing at the destination, no temporary file left, and the input unchanged.

Most cases run the CLI in-process (typer's CliRunner, fast); signals, ``ulimit -f`` and SIGKILL need a real
process and use a subprocess.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuquant import api
from gpuquant.backends import DeviceOutOfMemory
from gpuquant.backends.cpu import CpuDevice
from gpuquant.cli import app
from gpuquant.gguf_io import read_model
from tests.oracle import requires_oracle
from tests.synthetic import write_llama

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "gpuquant-partial" in p.name)


def assert_refused(r, out: Path, *needles: str, src: Path | None = None, src_bytes: bytes | None = None):
    """The common contract of every hard edge."""
    text = r.stderr
    assert r.exit_code != 0, (r.stdout, text)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in text and "Traceback" not in r.stdout
    assert text.startswith("error:"), text
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"
    assert not out.exists(), f"{out} was created"
    assert leftovers(out.parent) == []
    if src is not None:
        assert src.read_bytes() == src_bytes, "the input was modified"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A one-layer llama (F16 matrices, F32 norms and ffn_gate), ~1 MB."""
    return write_llama(tmp_path_factory.mktemp("edges") / "tiny-f16.gguf", n_layer=1)


@pytest.fixture()
def src(tiny, tmp_path) -> Path:
    p = tmp_path / "model.gguf"
    shutil.copyfile(tiny, p)
    return p


def info_pos(data: bytes, name: str) -> int:
    """Byte position just after a tensor's name in its tensor info (n_dims comes next)."""
    b = name.encode()
    key = struct.pack("<Q", len(b)) + b
    # tensor infos follow the metadata; the last occurrence is the tensor info, not a vocabulary string
    pos = data.rfind(key, 0, read_model_data_offset(data))
    assert pos > 0
    return pos + len(key)


def read_model_data_offset(data: bytes) -> int:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        return read_model(f.name).files[0].data_offset


def patched(src: Path, pos: int, fmt: str, value) -> bytes:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, pos, value)
    src.write_bytes(bytes(data))
    return bytes(data)


def run_q8(src: Path, tmp_path: Path, *extra):
    out = tmp_path / "out.gguf"
    return cli("run", src, out, "Q8_0", "--device", "cpu", "--quiet", *extra), out


# ---------------------------------------------------------------------------------------------- input files


def test_not_a_gguf_file(tmp_path):
    src = tmp_path / "notes.gguf"
    src.write_text("hello, this is not a model")
    r, out = run_q8(src, tmp_path)
    assert_refused(r, out, str(src), "not a GGUF file", "b'hell'", src=src, src_bytes=b"hello, this is not a model")


def test_empty_file(tmp_path):
    src = tmp_path / "empty.gguf"
    src.write_bytes(b"")
    r, out = run_q8(src, tmp_path)
    assert_refused(r, out, str(src), "not a GGUF file (0 bytes", src=src, src_bytes=b"")


def test_missing_input(tmp_path):
    r, out = run_q8(tmp_path / "nope.gguf", tmp_path)
    assert_refused(r, out, "nope.gguf: no such file")


@pytest.mark.parametrize("cut,where", [(6, "GGUF header"), (20, "GGUF header"), (None, "tensor info")])
def test_truncated_metadata(src, tmp_path, cut, where):
    data = src.read_bytes()
    if cut is None:  # inside the tensor info of the second tensor
        cut = info_pos(data, "blk.0.attn_norm.weight") + 6
    src.write_bytes(data[:cut])
    r, out = run_q8(src, tmp_path)
    assert_refused(r, out, str(src), "truncated GGUF file", f"ends at byte {cut}", where,
                   src=src, src_bytes=data[:cut])


def test_truncated_tensor_data(src, tmp_path):
    data = src.read_bytes()
    last = read_model(src).tensors[-1]
    cut = last.offset + last.nbytes // 2
    src.write_bytes(data[:cut])
    r, out = run_q8(src, tmp_path)
    assert_refused(r, out, "truncated", repr(last.name), f"the file has {cut} bytes", src=src, src_bytes=data[:cut])


@pytest.mark.parametrize("version,why", [(1, "versions 2 and 3"), (4, "versions 2 and 3"),
                                         (3 << 24, "big-endian")])
def test_unsupported_gguf_version(src, tmp_path, version, why):
    data = patched(src, 4, "<I", version)
    r, out = run_q8(src, tmp_path)
    assert_refused(r, out, str(src), f"unsupported GGUF version {version}", why, src=src, src_bytes=data)


@pytest.mark.parametrize("tid", [4, 43, 1000, -1])  # 43 = GGML_TYPE_COUNT (42 is Q2_0)
def test_unknown_tensor_type(src, tmp_path, tid):
    pos = info_pos(src.read_bytes(), "blk.0.attn_q.weight") + 4 + 2 * 8  # after n_dims and 2 dims
    data = patched(src, pos, "<i", tid)
    r, out = run_q8(src, tmp_path)
    assert_refused(r, out, "'blk.0.attn_q.weight'", f"unknown ggml type id {tid}", src=src, src_bytes=data)


@pytest.mark.parametrize("field,value,needle", [
    ("n_dims", 5, "5 dimensions (ggml allows at most 4)"),
    ("ne1", -3, "dimension 1 has -3 elements"),
    ("ne1", 1 << 40, "needs bytes"),
    ("ne1", (1 << 62) + 1, "more than ggml can address"),
    ("offset", 12345, "data offset 12345, expected"),
    ("offset", (1 << 64) - 32, "expected"),
])
def test_absurd_dimensions_and_offsets(src, tmp_path, field, value, needle):
    name = "blk.0.attn_q.weight"
    p = info_pos(src.read_bytes(), name)
    pos, fmt = {"n_dims": (p, "<I"), "ne0": (p + 4, "<q"), "ne1": (p + 12, "<q"),
                "offset": (p + 4 + 16 + 4, "<Q")}[field]
    if field == "ne1" and value == (1 << 62) + 1:
        # two dims whose product overflows int64: make ne0 large too
        patched(src, p + 4, "<q", 1 << 8)
    data = patched(src, pos, fmt, value)
    r, out = run_q8(src, tmp_path)
    assert_refused(r, out, str(src), repr(name) if field != "offset" or value == 12345 else "", needle,
                   src=src, src_bytes=data)


def _poke(src: Path, tensor: str, row: int, col: int, value: float) -> bytes:
    t = next(t for t in read_model(src).tensors if t.name == tensor)
    esize = {"F32": 4, "F16": 2}[t.type.name]
    pos = t.offset + (row * t.n_per_row + col) * esize
    data = bytearray(src.read_bytes())
    data[pos:pos + esize] = np.array([value], dtype=np.float32 if esize == 4 else np.float16).tobytes()
    src.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("tensor,value", [("blk.0.attn_q.weight", np.nan), ("blk.0.ffn_gate.weight", np.inf),
                                          ("blk.0.attn_norm.weight", -np.inf)])
def test_nan_or_inf_in_weights_names_tensor_and_position(src, tmp_path, tensor, value):
    row, col = (0, 77) if "norm" in tensor else (3, 5)
    data = _poke(src, tensor, row, col, value)
    n = read_model(src).tensors[0].n_per_row  # 256 for every tensor of this model
    r, out = run_q8(src, tmp_path)
    assert_refused(r, out, repr(tensor), "NaN or Inf", f"element {row * n + col} (row {row}, column {col})",
                   src=src, src_bytes=data)


# ---------------------------------------------------------------------------------------------- imatrix


def _imatrix(model: Path, path: Path, mutate=None) -> Path:
    from gpuquant.imatrix import write_gguf_imatrix

    entries, counts = {}, {}
    for t in read_model(model).tensors:
        if len(t.ne) >= 2 and t.ne[1] > 1:
            entries[t.name] = np.full(t.ne[0], 2.0, np.float32)
            counts[t.name] = [1]
    if mutate:
        mutate(entries)
    write_gguf_imatrix(path, entries, counts, datasets=["edges.txt"], chunk_count=1)
    return path


def test_imatrix_with_wrong_shape(src, tmp_path):
    data = src.read_bytes()
    im = _imatrix(src, tmp_path / "im.gguf", lambda e: e.__setitem__("blk.0.attn_k.weight", np.ones(100, np.float32)))
    r, out = run_q8(src, tmp_path, "--imatrix", im)
    assert_refused(r, out, str(im), "blk.0.attn_k.weight", "imatrix size 100", "256", src=src, src_bytes=data)


def test_imatrix_with_nan(src, tmp_path):
    data = src.read_bytes()

    def poison(e):
        e["blk.0.ffn_up.weight"][17] = np.nan

    im = _imatrix(src, tmp_path / "im.gguf", poison)
    r, out = run_q8(src, tmp_path, "--imatrix", im)
    assert_refused(r, out, str(im), "blk.0.ffn_up.weight", "non-finite value nan at index 17", src=src, src_bytes=data)


def test_imatrix_not_an_imatrix(src, tmp_path):
    data = src.read_bytes()
    im = tmp_path / "im.dat"
    im.write_bytes(b"\x01\x00")
    r, out = run_q8(src, tmp_path, "--imatrix", im)
    assert_refused(r, out, str(im), src=src, src_bytes=data)


# ---------------------------------------------------------------------------------------------- output path


def test_output_already_exists(src, tmp_path):
    data = src.read_bytes()
    out = tmp_path / "out.gguf"
    out.write_bytes(b"keep me")
    r = cli("run", src, out, "Q8_0", "--device", "cpu", "--quiet")
    assert r.exit_code == 1 and r.stderr.startswith("error:") and "already exists" in r.stderr and "--force" in r.stderr
    assert out.read_bytes() == b"keep me" and leftovers(tmp_path) == [] and src.read_bytes() == data


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "dot path"])
def test_output_equals_input(src, tmp_path, how):
    data = src.read_bytes()
    out = {"same path": src, "symlink": tmp_path / "link.gguf", "hard link": tmp_path / "hard.gguf",
           "dot path": tmp_path / "." / "model.gguf"}[how]
    if how == "symlink":
        out.symlink_to(src)
    elif how == "hard link":
        os.link(src, out)
    r = cli("run", src, out, "Q8_0", "--device", "cpu", "--force", "--quiet")
    assert r.exit_code == 1 and "input and output files are the same" in r.stderr and "Traceback" not in r.stderr
    assert src.read_bytes() == data and leftovers(tmp_path) == []


def test_output_directory_missing(src, tmp_path):
    data = src.read_bytes()
    out = tmp_path / "no" / "such" / "dir" / "out.gguf"
    r = cli("run", src, out, "Q8_0", "--device", "cpu", "--quiet")
    assert r.exit_code == 1 and "does not exist" in r.stderr and str(out.parent) in r.stderr
    assert not out.parent.exists() and src.read_bytes() == data


@pytest.fixture()
def read_only_dir(tmp_path):
    """A directory nobody can create files in: chmod for a normal user; for root (who ignores modes) the
    immutable attribute, which the kernel enforces for root too."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode:
        pytest.skip("root, and no chattr +i on this file system to make a directory read-only")
    try:
        yield d
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)


def test_output_directory_read_only(src, read_only_dir):
    data = src.read_bytes()
    out = read_only_dir / "out.gguf"
    r = cli("run", src, out, "Q8_0", "--device", "cpu", "--quiet")
    assert_refused(r, out, "not writable", str(read_only_dir), src=src, src_bytes=data)


def test_output_cannot_be_created(src, tmp_path):
    """The writer's own open fails (here: the temporary name is longer than NAME_MAX)."""
    data = src.read_bytes()
    out = tmp_path / ("x" * 240 + ".gguf")
    r = cli("run", src, out, "Q8_0", "--device", "cpu", "--quiet")
    assert_refused(r, out, "output: cannot create a file in", "File name too long", src=src, src_bytes=data)


def _subprocess(args, **kw):
    env = dict(os.environ, COLUMNS="200", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "gpuquant", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT), **kw)


def test_disk_full_during_write(src, tmp_path):
    """``ulimit -f``: writes past the limit fail with EFBIG (Python ignores SIGXFSZ)."""
    data = src.read_bytes()
    out = tmp_path / "out.gguf"
    limit = 256 << 10

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = _subprocess(["run", src, out, "Q8_0", "--device", "cpu", "--quiet"], preexec_fn=small_files)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 1, stderr
    assert stderr.startswith("error:") and "Traceback" not in stderr
    assert f"writing {str(out)!r} failed after" in stderr and "File too large" in stderr
    assert "disk full, quota or file size limit" in stderr
    assert not out.exists() and leftovers(tmp_path) == [] and src.read_bytes() == data


# ---------------------------------------------------------------------------------------------- signals


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    """Big enough that IQ4_NL on the numpy device takes several seconds (time to send a signal)."""
    return write_llama(tmp_path_factory.mktemp("slow") / "slow-f16.gguf", n_layer=16)


def _start_and_wait_for_partial(model: Path, tmp_path: Path):
    out = tmp_path / "out.gguf"
    p = _subprocess(["run", model, out, "IQ4_NL", "--device", "cpu", "--threads", "1"])
    deadline = time.monotonic() + 60
    while not leftovers(tmp_path):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.02)
    time.sleep(0.3)  # well inside the run: quantizing has started
    assert p.poll() is None, "finished before the signal could be sent: make slow_model bigger"
    return p, out


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_sigint_and_sigterm_remove_the_temporary_file(slow_model, tmp_path, sig, code, word):
    data = slow_model.read_bytes()
    p, out = _start_and_wait_for_partial(slow_model, tmp_path)
    p.send_signal(sig)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == code, stderr
    assert f"{word}: no output was written" in stderr and "Traceback" not in stderr
    assert not out.exists() and leftovers(tmp_path) == []
    assert slow_model.read_bytes() == data


def test_sigkill_leaves_only_the_named_temporary_file(slow_model, tmp_path):
    p, out = _start_and_wait_for_partial(slow_model, tmp_path)
    p.kill()
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert not out.exists()
    assert leftovers(tmp_path) == [f".out.gguf.gpuquant-partial-{p.pid}"]
    assert sorted(x.name for x in tmp_path.iterdir()) == [f".out.gguf.gpuquant-partial-{p.pid}"]


# ---------------------------------------------------------------------------------------------- devices


def _has_gpu() -> bool:
    try:
        from gpuquant.backends import cuda  # type: ignore[attr-defined]

        return cuda.device_count() > 0
    except Exception:  # noqa: BLE001 - any failure means: no usable GPU here
        return False


@pytest.mark.skipif(_has_gpu(), reason="a CUDA device is present")
def test_no_gpu_device(src, tmp_path):
    data = src.read_bytes()
    r, out = cli("run", src, tmp_path / "out.gguf", "Q8_0", "--device", "0", "--quiet"), tmp_path / "out.gguf"
    assert_refused(r, out, "device", src=src, src_bytes=data)
    assert "cuda" in r.stderr.lower() or "gpu" in r.stderr.lower()


class OOMDevice(CpuDevice):
    """The numpy device with GPU-style device buffers, allocations above ``limit`` bytes failing like
    cudaMalloc does."""

    zero_copy = False

    def __init__(self, limit: int) -> None:
        super().__init__(threads=1)
        self.limit = limit
        self.refused: list[int] = []

    def device_buffer(self, nbytes: int):
        if nbytes > self.limit:
            self.refused.append(nbytes)
            raise DeviceOutOfMemory(f"cudaMalloc of {nbytes} bytes failed: out of memory")
        return super().device_buffer(nbytes)


def test_out_of_memory_retries_with_smaller_slabs(src, tmp_path):
    ref, out = tmp_path / "ref.gguf", tmp_path / "oom.gguf"
    api.quantize_file(src, ref, "Q8_0", device="cpu")
    dev = OOMDevice(100_000)
    rep = api.quantize_file(src, out, "Q8_0", device=dev, slab_bytes=1 << 20)
    assert dev.refused, "the fake device never refused: the test proves nothing"
    assert out.read_bytes() == ref.read_bytes()
    assert any("ran out of memory with 1.00 MiB slabs; retried with 0.50 MiB slabs" in n for n in rep.notes)
    assert leftovers(tmp_path) == []


def test_out_of_memory_gives_up_with_a_clear_error(src, tmp_path, monkeypatch):
    data = src.read_bytes()
    monkeypatch.setattr(api, "open_device", lambda spec, threads=None: OOMDevice(16))
    r, out = run_q8(src, tmp_path)
    assert_refused(r, out, "out of memory even with 0.06 MiB slabs", "cudaMalloc", "--device",
                   src=src, src_bytes=data)


# ---------------------------------------------------------------------------------------------- values


def _with_huge_values(path: Path, value: float = 1e30) -> Path:
    """A model whose attn_q holds ``value`` in row 2: finite in F32, but fp16 scales of it may overflow."""
    write_llama(path, n_layer=1, dtype="F32", f32_weights=())
    t = next(t for t in read_model(path).tensors if t.name == "blk.0.attn_q.weight")
    data = bytearray(path.read_bytes())
    row = 2
    start = t.offset + row * t.n_per_row * 4
    data[start:start + t.n_per_row * 4] = np.full(t.n_per_row, value, np.float32).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_fp16_scale_overflow_is_refused_naming_tensor_and_block(tmp_path):
    src = _with_huge_values(tmp_path / "huge.gguf")
    data = src.read_bytes()
    r, out = run_q8(src, tmp_path, "--pure")
    # row 2 of a 256-wide tensor: Q8_0 blocks 16..23; the first is block 16
    assert_refused(r, out, "'blk.0.attn_q.weight'", "Q8_0", "block 16", "overflows fp16", src=src, src_bytes=data)


@requires_oracle
@pytest.mark.parametrize("value", [6e5, 1e30])
def test_fp16_scale_overflow_refused_exactly_where_llama_quantize_refuses(tmp_path, value):
    """Both tools must refuse the same types for the same values, and agree byte for byte where they accept."""
    from gpuquant import mixes
    from tests.oracle_files import oracle_quantize_file

    src = _with_huge_values(tmp_path / "huge.gguf", value)
    verdicts = {}
    for ftype in ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "Q4_K", "Q6_K"):
        ours, ref = tmp_path / f"ours-{ftype}.gguf", tmp_path / f"ref-{ftype}.gguf"
        r = cli("run", src, ours, ftype, "--device", "cpu", "--pure", "--quiet")
        try:
            oracle_quantize_file(src, ref, int(mixes.parse_ftype(ftype).ftype), pure=True)
            oracle_ok = True
        except RuntimeError:
            oracle_ok = False
        verdicts[ftype] = (r.exit_code == 0, oracle_ok)
        if r.exit_code == 0 and oracle_ok:
            assert ours.read_bytes() == ref.read_bytes(), ftype
        elif r.exit_code:
            assert "'blk.0.attn_q.weight'" in r.stderr and "overflows fp16" in r.stderr, r.stderr
            assert not ours.exists() and leftovers(tmp_path) == []
    assert all(a == b for a, b in verdicts.values()), verdicts
    refused = sorted(f for f, (ok, _) in verdicts.items() if not ok)
    # what llama-quantize does (so the comparison above is not vacuous): 6e5 / -8 overflows fp16 in Q4_0 only;
    # 1e30 overflows every scale except Q6_K's, where ggml's float math ends in d = 0 (finite, so accepted)
    assert refused == (["Q4_0"] if value == 6e5 else sorted(set(verdicts) - {"Q6_K"})), verdicts


def _edge_values_model(path: Path) -> Path:
    """F32 (and one F16) matrices whose first rows are all zeros, denormals, tiny values whose scales
    underflow fp16, half-zero blocks and large values; the rest random."""
    write_llama(path, n_layer=1, n_ff=256, n_vocab=259, dtype="F32", f32_weights=(), seed=5)
    rng = np.random.default_rng(7)
    data = bytearray(path.read_bytes())
    for t in read_model(path).tensors:
        if len(t.ne) < 2 or t.type.name != "F32":
            continue
        n = t.n_per_row
        sign = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
        rows = [
            np.zeros(n, np.float32),                                              # all-zero blocks
            (sign * np.float32(1e-40)).astype(np.float32),                        # f32 denormals
            (sign * rng.choice(np.array([1e-45, 3e-42, 0.0], np.float32), n)).astype(np.float32),
            np.concatenate([np.zeros(n // 2, np.float32), rng.standard_normal(n // 2).astype(np.float32)]),
            (sign * np.float32(1e-8)).astype(np.float32),                         # fp16 scales underflow
            np.where(np.arange(n) % 32 == 5, np.float32(1e-39), np.float32(0)).astype(np.float32),
            (rng.standard_normal(n) * 1e4).astype(np.float32),                    # large, finite scales
        ]
        for i, row in enumerate(rows):
            if i < t.nrows:
                pos = t.offset + i * n * 4
                data[pos:pos + n * 4] = row.astype(np.float32).tobytes()
    path.write_bytes(bytes(data))
    return path


@requires_oracle
@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_zero_blocks_and_denormals_match_llama_quantize(tmp_path, device):
    from gpuquant import mixes
    from tests.oracle_files import first_difference, oracle_quantize_file

    src = _edge_values_model(tmp_path / "edges.gguf")
    for ftype in ("Q4_0", "Q5_1", "Q8_0", "IQ4_NL", "IQ4_XS", "Q2_K", "Q3_K_M", "Q4_K", "Q6_K", "F16", "BF16"):
        ours, ref = tmp_path / f"ours-{ftype}.gguf", tmp_path / f"ref-{ftype}.gguf"
        r = cli("run", src, ours, ftype, "--device", device, "--pure", "--quiet")
        assert r.exit_code == 0, (ftype, r.stderr)
        oracle_quantize_file(src, ref, int(mixes.parse_ftype(ftype).ftype), pure=True)
        assert ours.read_bytes() == ref.read_bytes(), (ftype, first_difference(ours, ref))
