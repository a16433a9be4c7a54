"""Fuzzing the reader path: mutated and truncated GGUF files end in a clean gpuquant error or a good run.

A clean error is one of gpuquant's own exceptions (``GGUFError``, ``UsageError``, ``QuantizeError``), whose
message the CLI prints as one paragraph; anything else (``KeyError``, ``struct.error``, ``TypeError``, a
numpy shape error, a hang) would reach the user as a traceback. Mutations concentrate on the metadata and
tensor infos, where the parser works; bounded to a few seconds.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gpuquant.api import QuantizeError, UsageError, quantize_file
from gpuquant.gguf_io import GGUFError, read_model
from tests.synthetic import write_llama

CLEAN = (GGUFError, UsageError, QuantizeError)


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory):
    """A complete tiny llama (one layer, 32 wide): its bytes and where the tensor data starts."""
    path = write_llama(tmp_path_factory.mktemp("fuzz") / "seed.gguf", n_layer=1, n_embd=32, n_head=1,
                       n_head_kv=1, n_ff=32, n_vocab=259)
    data = path.read_bytes()
    return data, read_model(path).files[0].data_offset


def _run(path, out) -> None:
    """Parse, plan and quantize (numpy device); only a clean error may come out."""
    try:
        quantize_file(path, None, "Q8_0", device="cpu", threads=1, dry_run=True)
        quantize_file(path, out, "Q8_0", device="cpu", threads=1, force=True)
    except CLEAN as e:
        msg = str(e)
        assert str(path) in msg or "tensor" in msg or "imatrix" in msg, msg  # names the file or the tensor
        assert len(msg) < 1000 and "\n" not in msg, msg  # one paragraph, however corrupt the names are


mutation = st.tuples(st.integers(min_value=0, max_value=1 << 30), st.integers(min_value=0, max_value=255))
# values that tend to break parsers when they land on a length, count, type or dimension field
interesting = st.sampled_from([0, 1, 2, 3, 4, 9, 12, 13, 31, 32, 63, 64, 255, 2**31 - 1, 2**31, 2**32 - 1,
                               2**63 - 1, 2**64 - 1, 2**40])


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(muts=st.lists(mutation, min_size=1, max_size=4), cut=st.none() | st.integers(min_value=0))
def test_mutated_bytes_give_clean_errors(seed_file, tmp_path, muts, cut):
    data, meta_end = seed_file
    buf = bytearray(data)
    for pos, byte in muts:
        buf[pos % (meta_end + 64)] = byte
    if cut is not None:
        buf = buf[: cut % (len(buf) + 1)]
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(buf))
    _run(path, tmp_path / "out.gguf")


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pos=st.integers(min_value=0), value=interesting, width=st.sampled_from([4, 8]))
def test_integer_fields_overwritten_give_clean_errors(seed_file, tmp_path, pos, value, width):
    data, meta_end = seed_file
    buf = bytearray(data)
    p = pos % (meta_end - width)
    buf[p:p + width] = struct.pack("<I" if width == 4 else "<Q", value % (1 << (8 * width)))
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(buf))
    _run(path, tmp_path / "out.gguf")


def test_every_truncation_of_the_metadata_is_a_clean_gguf_error(seed_file, tmp_path):
    data, meta_end = seed_file
    path = tmp_path / "cut.gguf"
    for n in range(0, meta_end + 1, 7):
        path.write_bytes(data[:n])
        with pytest.raises(GGUFError) as e:
            read_model(path)
        assert str(path) in str(e.value)
        assert "truncated" in str(e.value) or "not a GGUF file" in str(e.value), str(e.value)
