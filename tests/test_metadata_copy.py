"""Metadata is copied the way llama-quantize rebuilds it (``gguf_set_kv``): keys and strings cut at the
first NUL, bools written as 0/1, a later key replacing an earlier one of the same (cut) name; a key that
starts with NUL is refused (llama-quantize aborts on it). Whole files against llama_model_quantize."""
from __future__ import annotations

import io
import struct

import pytest

from gpuquant.api import GGUFError, quantize_file
from gpuquant.gguf_io import Cursor, _read_tensor_info, pad, read_model
from tests.oracle import requires_oracle
from tests.oracle_files import assert_same, oracle_quantize_file
from tests.synthetic import write_llama


def _kv(key: bytes, vtype: int, body: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + body


def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """A tiny llama and its parts: the metadata pairs, the tensor infos and the data section."""
    path = write_llama(tmp_path_factory.mktemp("kv") / "seed.gguf", n_layer=1, n_embd=32, n_head=1, n_head_kv=1,
                       n_ff=32, n_vocab=259)
    data = path.read_bytes()
    m = read_model(path)
    info = m.files[0]
    kv_end = 24 + sum(len(k.raw) for k in m.kvs)
    cur = Cursor(io.BytesIO(data), path, len(data))
    cur.f.seek(kv_end)
    cur.pos = kv_end
    names: set = set()
    for i in range(info.n_tensors):
        _read_tensor_info(cur, i, names)
    return m, data[kv_end:cur.pos], data[info.data_offset:], info.n_tensors


def _build(seed, kvs: list[bytes]) -> bytes:
    _, tinfo, blob, n_tensors = seed
    head = b"GGUF" + struct.pack("<Iqq", 3, n_tensors, len(kvs)) + b"".join(kvs) + tinfo
    return head + b"\0" * (pad(len(head)) - len(head)) + blob


def _cases(seed) -> dict[str, list[bytes]]:
    m = seed[0]
    base = [k.raw for k in m.kvs]

    def replace(key, new):
        return [new if k.key == key else r for k, r in zip(m.kvs, base)]

    toks = [t.encode() for t in next(k for k in m.kvs if k.key == "tokenizer.ggml.tokens").value]
    toks[68], toks[69], toks[70] = b"<0\0x41>", b"\0", b"a\0b\0c"
    return {
        "bool scalar 2": base + [_kv(b"test.flag", 7, b"\x02")],
        "bool array": base + [_kv(b"test.flags", 9, struct.pack("<IQ", 7, 4) + bytes([0, 5, 1, 255]))],
        "string with NUL": replace("general.name", _kv(b"general.name", 8, _s(b"gpu\0quant"))),
        "tokens with NULs": replace("tokenizer.ggml.tokens", _kv(b"tokenizer.ggml.tokens", 9,
                                    struct.pack("<IQ", 8, len(toks)) + b"".join(_s(t) for t in toks))),
        "key with NUL, colliding": base[:3] + [_kv(b"general.name\0dup", 8, _s(b"second"))] + base[3:],
        "key with NUL": base + [_kv(b"test.k\0ey", 4, struct.pack("<I", 7))],
        "string array with NULs": base + [_kv(b"test.arr", 9, struct.pack("<IQ", 8, 3) + _s(b"x\0y") + _s(b"")
                                              + _s(b"\0"))],
    }


@requires_oracle
@pytest.mark.parametrize("case", ["bool scalar 2", "bool array", "string with NUL", "tokens with NULs",
                                  "key with NUL, colliding", "key with NUL", "string array with NULs"])
def test_metadata_like_gguf_set_kv(seed, case, tmp_path):
    src = tmp_path / "case.gguf"
    src.write_bytes(_build(seed, _cases(seed)[case]))
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(src, ours, "Q8_0", device="cpu", threads=1)
    oracle_quantize_file(src, ref, 7)  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert_same(ours, ref)


def test_key_starting_with_nul_is_refused(seed, tmp_path):
    m = seed[0]
    src = tmp_path / "case.gguf"
    src.write_bytes(_build(seed, [k.raw for k in m.kvs] + [_kv(b"\0bad", 4, struct.pack("<I", 1))]))
    with pytest.raises(GGUFError):
        quantize_file(src, tmp_path / "o.gguf", "Q8_0", device="cpu")
    assert not (tmp_path / "o.gguf").exists()
