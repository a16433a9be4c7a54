"""gpuquant.imatrix: loading, normalizing, filtering, metadata and writing of importance matrices.

The default tests check hand-computed float32 values, hand-built file bytes and every truncation of small
files. The oracle tests compile llama.cpp's own code, extracted verbatim from the reference sources
(``prepare_imatrix`` + ``load_imatrix`` of tools/quantize/quantize.cpp on ``common_imatrix_load``, and
``IMatrixCollector::save_imatrix{,_legacy}`` of tools/imatrix/imatrix.cpp), link it to the oracle's
libggml-base/libllama, and compare bit for bit.
"""
from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from gpuquant import imatrix as im
from gpuquant.imatrix import ImatrixError
from tests.oracle import lib_dir, requires_oracle

F32 = np.float32


def bits(a) -> list[str]:
    return [f"{x:08x}" for x in np.asarray(a, F32).view(np.uint32)]


def state(seed: int = 0):
    """A collector state: a dense tensor, an MoE tensor with an unused expert, an all-zero entry."""
    rng = np.random.default_rng(seed)
    entries = {
        "blk.0.attn_q.weight": (rng.random(64, dtype=F32) * 300).astype(F32),
        "blk.0.ffn_down_exps.weight": rng.random(3 * 32, dtype=F32),
        "output.weight": rng.random(32, dtype=F32),
    }
    counts = {"blk.0.attn_q.weight": [1000], "blk.0.ffn_down_exps.weight": [7, 0, 1537], "output.weight": [0]}
    return entries, counts


# --- a tiny independent GGUF builder, for files llama-imatrix would never write ----------------------------

def gguf_file(kvs: list[tuple[str, int, object]], tensors: list[tuple[str, int, list[int], bytes]],
              align: int = 32) -> bytes:
    """kvs: (key, gguf type, value) with type 8 = string, 4 = u32, ('arr', subtype) for arrays of strings;
    tensors: (name, ggml type, ne, raw bytes)."""
    def s(b):
        b = b.encode() if isinstance(b, str) else b
        return struct.pack("<Q", len(b)) + b
    out = [b"GGUF", struct.pack("<Iqq", 3, len(tensors), len(kvs))]
    for key, t, v in kvs:
        out.append(s(key))
        if t == "arr":
            out.append(struct.pack("<iiQ", 9, 8, len(v)) + b"".join(s(x) for x in v))
        elif t == 8:
            out.append(struct.pack("<i", 8) + s(v))
        else:
            out.append(struct.pack("<i", t) + struct.pack({4: "<I", 5: "<i", 6: "<f"}[t], v))
    off, blobs = 0, []
    for name, t, ne, raw in tensors:
        out.append(s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}q", *ne) + struct.pack("<iQ", t, off))
        blobs.append(raw + b"\0" * (-len(raw) % align))
        off += len(blobs[-1])
    head = b"".join(out)
    return head + b"\0" * (-len(head) % align) + b"".join(blobs)


META = [("imatrix.datasets", "arr", ["d.txt"]), ("imatrix.chunk_count", 4, 3), ("imatrix.chunk_size", 4, 512)]


def f32(*v) -> bytes:
    return np.asarray(v, "<f4").tobytes()


def write(tmp_path: Path, data: bytes, name: str = "im.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --- normalization -----------------------------------------------------------------------------------------

def test_gguf_normalization_hand_computed(tmp_path):
    # sums / count per expert in float32; count 0 -> 1.0; counts go through lround (2.5 -> 3, 0.4 -> 0)
    sums = f32(1, 2, 10, 3, 5, 7, 9, 11)
    p = write(tmp_path, gguf_file(META, [
        ("moe.weight.in_sum2", 0, [2, 4], sums), ("moe.weight.counts", 0, [1, 4], f32(3, 7, 2.5, 0.4)),
    ]))
    e = im.prepare(p).entries["moe.weight"]
    assert bits(e) == bits([F32(1) / F32(3), F32(2) / F32(3), F32(10) / F32(7), F32(3) / F32(7),
                            F32(5) / F32(3), F32(7) / F32(3), 1, 1])
    # the float32 quotients, spelled out: 1/3, 2/3, 10/7, 3/7, 5/3, 7/3, 1.0, 1.0
    assert bits(e) == ["3eaaaaab", "3f2aaaab", "3fb6db6e", "3edb6db7", "3fd55555", "40155555",
                       "3f800000", "3f800000"]


def test_gguf_ragged_and_odd_counts(tmp_path):
    # 7 sums over 2 counts: ne0 = 3, the 7th value stays 0 (quantize.cpp's e.resize zero-fills);
    # NaN count -> lround gives LONG_MIN -> not > 0 -> ones
    p = write(tmp_path, gguf_file(META, [
        ("a.in_sum2", 0, [7], f32(2, 4, 6, 8, 10, 12, 14)), ("a.counts", 0, [2], f32(2, np.nan)),
    ]))
    assert bits(im.prepare(p).entries["a"]) == bits([1, 2, 3, 1, 1, 1, 0])


def test_legacy_normalization_hand_computed(tmp_path):
    # sums / ncall (float32); ncall <= 0 keeps the stored values
    body = (struct.pack("<i", 3)
            + struct.pack("<i", 1) + b"a" + struct.pack("<ii", 3, 2) + f32(1, 10)
            + struct.pack("<i", 1) + b"b" + struct.pack("<ii", 0, 2) + f32(5, 6)
            + struct.pack("<i", 1) + b"c" + struct.pack("<ii", -4, 1) + f32(7))
    d = im.prepare(write(tmp_path, body, "x.dat"))
    assert bits(d.entries["a"]) == ["3eaaaaab", "40555555"]  # 1/3, 10/3
    assert bits(d.entries["b"]) == bits([5, 6]) and bits(d.entries["c"]) == bits([7])
    assert d.datasets == [] and d.chunk_count == 0 and d.is_legacy
    assert d.metadata("x.dat") == [("quantize.imatrix.file", GGUFValueType.STRING, "x.dat"),
                                   ("quantize.imatrix.entries_count", GGUFValueType.UINT32, 3)]


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_round_trip(tmp_path, fmt):
    entries, counts = state()
    p = tmp_path / f"im.{fmt}"
    (im.write_gguf_imatrix if fmt == "gguf" else im.write_legacy_imatrix)(p, entries, counts, ["a.txt", "b.txt"], 9, 512)
    d = im.prepare(p)
    raw = im.load_raw(p)
    if fmt == "gguf":
        assert d.datasets == ["a.txt", "b.txt"] and raw.chunk_size == 512 and not raw.is_legacy
        assert sorted(d.entries) == sorted(entries)
        assert [int(c) for c in raw.counts["blk.0.ffn_down_exps.weight"]] == [7, 0, 1537]
        x = entries["blk.0.ffn_down_exps.weight"].reshape(3, 32)
        want = np.concatenate([x[0] / F32(7), np.ones(32, F32), x[2] / F32(1537)])
    else:
        # the all-zero entry is not stored; (sum / count) * ncall then / ncall, ncall = ceil(1537 / 512) = 4
        assert d.datasets == ["b.txt"] and raw.is_legacy
        assert sorted(d.entries) == ["blk.0.attn_q.weight", "blk.0.ffn_down_exps.weight"]
        x = entries["blk.0.ffn_down_exps.weight"].reshape(3, 32)
        want = np.concatenate([(x[0] / F32(7)) * F32(4) / F32(4), np.ones(32, F32),
                               (x[2] / F32(1537)) * F32(4) / F32(4)])
    assert d.chunk_count == 9
    assert bits(d.entries["blk.0.ffn_down_exps.weight"]) == bits(want)
    w = d.weights_for("blk.0.ffn_down_exps.weight", 32, 3)
    assert w.shape == (3, 32) and bits(w[2]) == bits(want[64:])


def test_gguf_writer_layout(tmp_path):
    entries, counts = state()
    p = tmp_path / "im.gguf"
    im.write_gguf_imatrix(p, entries, counts, ["a.txt"], 4, 256)
    r = GGUFReader(p)
    kv = {f.name: f for f in r.fields.values()}
    assert list(kv) == ["GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.type", "imatrix.datasets",
                        "imatrix.chunk_count", "imatrix.chunk_size"]
    assert kv["imatrix.chunk_count"].types == [GGUFValueType.UINT32] and kv["imatrix.chunk_count"].contents() == 4
    assert kv["imatrix.chunk_size"].contents() == 256 and kv["general.type"].contents() == "imatrix"
    got = [(t.name, [int(n) for n in t.shape], t.data_offset % 32) for t in r.tensors]
    assert got == [("blk.0.attn_q.weight.in_sum2", [64], 0), ("blk.0.attn_q.weight.counts", [1], 0),
                   ("blk.0.ffn_down_exps.weight.in_sum2", [32, 3], 0), ("blk.0.ffn_down_exps.weight.counts", [1, 3], 0),
                   ("output.weight.in_sum2", [32], 0), ("output.weight.counts", [1], 0)]
    assert r.tensors[3].data.reshape(-1).tolist() == [7, 0, 1537]


def test_legacy_writer_bytes():
    e = {"b": np.array([2, 4], F32), "a": np.array([3], F32)}
    got = im.legacy_imatrix_bytes(e, {"b": [2], "a": [0]}, ["x.txt"], 5, 512)
    assert got == (struct.pack("<i", 1) + struct.pack("<i", 1) + b"b" + struct.pack("<ii", 1, 2) + f32(1, 2)
                   + struct.pack("<i", 5) + struct.pack("<i", 5) + b"x.txt")


# --- filtering and metadata --------------------------------------------------------------------------------

@pytest.fixture
def moe_file(tmp_path):
    entries, counts = state()
    p = tmp_path / "im.gguf"
    im.write_gguf_imatrix(p, entries, counts, ["wiki.train.raw"], 100, 512)
    return p


def test_include_exclude(moe_file):
    assert sorted(im.prepare(moe_file, exclude_weights=["attn", "output"]).entries) == ["blk.0.ffn_down_exps.weight"]
    assert sorted(im.prepare(moe_file, include_weights=["attn_q", "output."]).entries) == [
        "blk.0.attn_q.weight", "output.weight"]
    assert sorted(im.prepare(moe_file, include_weights=["blk.0", "attn"]).entries) == [
        "blk.0.attn_q.weight", "blk.0.ffn_down_exps.weight"]  # a union; matching twice keeps one
    with pytest.raises(ImatrixError, match="cannot be used together"):
        im.prepare(moe_file, ["a"], ["b"])
    none = im.prepare(moe_file, include_weights=["nothing"])
    assert not none and none.kv_overrides() == [] and none.metadata() == []
    assert im.prepare(None) is None


def test_metadata_order_and_types(moe_file):
    d = im.prepare(moe_file, exclude_weights=["output"])
    assert d.kv_overrides("im.gguf") == [
        ("quantize.imatrix.file", "str", "im.gguf"), ("quantize.imatrix.dataset", "str", "wiki.train.raw"),
        ("quantize.imatrix.entries_count", "int", 2), ("quantize.imatrix.chunks_count", "int", 100)]
    assert d.metadata() == [
        ("quantize.imatrix.file", GGUFValueType.STRING, str(moe_file)),
        ("quantize.imatrix.dataset", GGUFValueType.STRING, "wiki.train.raw"),
        ("quantize.imatrix.entries_count", GGUFValueType.UINT32, 2),
        ("quantize.imatrix.chunks_count", GGUFValueType.UINT32, 100)]
    long = "d/" + "é" * 100  # strncpy(val_str, .., 127): 127 bytes, cutting a 2-byte character
    d.datasets = [long]
    d.chunk_count = -3
    md = d.metadata("f" * 200)
    assert md[0][2] == "f" * 127 and md[1][2] == long.encode()[:127] and isinstance(md[1][2], bytes)
    assert [k for k, _, _ in md] == ["quantize.imatrix.file", "quantize.imatrix.dataset",
                                     "quantize.imatrix.entries_count"]  # no chunks key when <= 0


def test_weights_for(moe_file):
    d = im.prepare(moe_file)
    w = d.weights_for("blk.0.ffn_down_exps.weight", 32, 3)
    assert w.shape == (3, 32) and w.dtype == F32 and np.all(w[1] == 1)
    t = SimpleNamespace(name="blk.0.ffn_down_exps.weight", ne=(32, 8, 3))
    assert np.array_equal(d.weights_for(t.name, t), w)
    with pytest.raises(ImatrixError, match=r"imatrix size 96 is different from tensor size 64 for "
                                           r"blk\.0\.ffn_down_exps\.weight"):
        d.weights_for("blk.0.ffn_down_exps.weight", 32, 2)
    assert d.weights_for("blk.9.attn_q.weight", 64) is None and "did not find weights" in d.notes[-1]
    d.entries["token_embd.weight"] = np.ones(10, F32)
    assert d.weights_for("token_embd.weight", 64) is None and "token_embd.weight" in d.notes[-1]
    assert d.weights_for(None, 64) is None


def test_non_finite(tmp_path):
    sums = f32(1, np.inf, 3, np.nan)  # the NaN sits in an expert with count 0: replaced by 1.0
    p = write(tmp_path, gguf_file(META, [("a.in_sum2", 0, [2, 2], sums), ("a.counts", 0, [1, 2], f32(1, 0)),
                                         ("b.in_sum2", 0, [2], f32(1, 2)), ("b.counts", 0, [1], f32(1))]))
    with pytest.raises(ImatrixError, match=r"entry 'a' contains non-finite value inf at index 1"):
        im.prepare(p)
    assert sorted(im.prepare(p, exclude_weights=["a"]).entries) == ["b"]
    assert bits(im.prepare(p, check_finite=False).entries["a"])[2:] == bits([1, 1])


# --- bad files ---------------------------------------------------------------------------------------------

def good_gguf() -> bytes:
    return im.gguf_imatrix_bytes(*state(), ["a.txt"], 3, 512)


def good_legacy() -> bytes:
    return im.legacy_imatrix_bytes(*state(), ["a.txt"], 3, 512)


@pytest.mark.parametrize("data, msg", [
    (b"", "no data in file"),
    (b"GG", "no data in file"),
    (struct.pack("<i", 0), "no data in file"),
    (struct.pack("<ii", 1, 5) + b"ab", "failed reading name for entry 1"),
    (struct.pack("<ii", 1, -1), "failed reading name"),
    (struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 0), "failed reading number of values"),
    (struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 4) + f32(1), "failed reading data for entry 1"),
    (gguf_file([], [("a.in_sum2", 0, [1], f32(1)), ("a.counts", 0, [1], f32(1))]), "missing imatrix metadata.*lacks imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size"),
    (gguf_file(META, []), "no data in file"),
    (gguf_file(META, [("a.in_sum2", 0, [1], f32(1))]), "mismatched sums and counts for 'a'"),
    (gguf_file(META, [("a.in_sum2", 1, [2], f32(1)), ("a.counts", 0, [1], f32(1))]), "must be F32"),
    (gguf_file(META, [("a.in_sum2", 0, [1], f32(1)), ("a.counts", 0, [0], b"")]), "empty counts tensor"),
    (gguf_file(META[:1] + [("imatrix.chunk_count", 5, 3)] + META[2:], [("a.in_sum2", 0, [1], f32(1)),
                                                                        ("a.counts", 0, [1], f32(1))]), "must be a u32"),
    (good_gguf()[:-4], "invalid GGUF imatrix: file ends early"),
    (good_gguf()[:5] + b"\x09" + good_gguf()[6:], "invalid GGUF imatrix: unsupported GGUF version"),
])
def test_bad_files(tmp_path, data, msg):
    p = write(tmp_path, data)
    with pytest.raises(ImatrixError, match=msg) as e:
        im.prepare(p)
    assert str(p) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ImatrixError, match="cannot read imatrix file"):
        im.prepare(tmp_path / "nope.gguf")


@pytest.mark.parametrize("make", [good_gguf, good_legacy])
def test_every_truncation_is_clean(tmp_path, make):
    """Every prefix of a valid file loads or raises ImatrixError, never anything else."""
    data = make()
    p = tmp_path / "t"
    outcomes = set()
    for n in range(len(data)):
        p.write_bytes(data[:n])
        try:
            im.prepare(p)
            outcomes.add("ok")
        except ImatrixError:
            outcomes.add("error")
    assert "error" in outcomes


@pytest.mark.parametrize("make", [good_gguf, good_legacy])
def test_every_corruption_is_clean(tmp_path, make):
    """Seeded byte corruptions load or raise ImatrixError (checked against llama.cpp in the oracle tests)."""
    data, rng, p = make(), np.random.default_rng(11), tmp_path / "c"
    outcomes = set()
    for _ in range(300):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), rng.integers(1, 4)):
            b[pos] = int(rng.integers(256))
        p.write_bytes(bytes(b))
        try:
            im.prepare(p, check_finite=False)
            outcomes.add("ok")
        except ImatrixError:
            outcomes.add("error")
    assert outcomes == {"ok", "error"}


def test_legacy_partial_trailer(tmp_path):
    # istream::read keeps the bytes of a short read: 2 trailer bytes still set the chunk count
    body = struct.pack("<i", 1) + struct.pack("<i", 1) + b"a" + struct.pack("<ii", 2, 1) + f32(4)
    assert im.prepare(write(tmp_path, body + b"\x07\x01")).chunk_count == 0x107
    d = im.prepare(write(tmp_path, body + struct.pack("<ii", 6, 9) + b"short"))
    assert d.chunk_count == 6 and d.datasets == []
    d = im.prepare(write(tmp_path, body + struct.pack("<ii", 6, 7) + b"a\0b.txtextra"))
    assert d.datasets == ["a"]  # a C string: cut at the NUL; bytes after the dataset are ignored


# --- oracle: llama.cpp's own code, compiled from the reference ----------------------------------------------

LLAMA_SRC = Path(os.environ.get("GPUQUANT_LLAMA_SRC", "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp"))

HARNESS = r"""
// llama.cpp's imatrix code, extracted verbatim from the reference by tests/test_imatrix.py
#include "common.h"
#include "imatrix-loader.h"
#include "log.h"
#include "gguf.h"
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

// stubs of common/log.cpp: everything to stderr
int common_log_get_verbosity_thold(void) { return 1000; }
struct common_log * common_log_main() { return nullptr; }
void common_log_add(struct common_log *, enum ggml_log_level, const char * fmt, ...) {
    va_list args; va_start(args, fmt); vfprintf(stderr, fmt, args); va_end(args);
}

@QUANTIZE@

#define private public
@COLLECTOR_CLASS@
#undef private
@COLLECTOR_SAVE@

static std::string rd_str(FILE * f) {
    int32_t n = 0; fread(&n, 4, 1, f);
    std::string s(n, '\0'); fread(s.data(), 1, n, f);
    return s;
}

int main(int argc, char ** argv) {
    if (argc >= 4 && strcmp(argv[1], "save") == 0) {  // save SPEC OUT
        FILE * f = fopen(argv[2], "rb");
        int32_t mode, n_ctx, n_parallel, last_chunk, nd, ne;
        fread(&mode, 4, 1, f); fread(&n_ctx, 4, 1, f); fread(&n_parallel, 4, 1, f); fread(&last_chunk, 4, 1, f);
        IMatrixCollector c;
        c.m_params.out_file = argv[3];
        c.m_params.n_ctx = n_ctx;
        c.m_params.n_parallel = n_parallel;
        c.m_params.imat_dat = mode;
        c.m_last_chunk = last_chunk;
        fread(&nd, 4, 1, f);
        for (int i = 0; i < nd; ++i) c.m_datasets.push_back(rd_str(f));
        fread(&ne, 4, 1, f);
        for (int i = 0; i < ne; ++i) {
            std::string name = rd_str(f);
            auto & e = c.m_stats[name];
            int32_t nv, nc;
            fread(&nv, 4, 1, f); e.values.resize(nv); fread(e.values.data(), 4, nv, f);
            fread(&nc, 4, 1, f); e.counts.resize(nc); fread(e.counts.data(), 8, nc, f);
        }
        fclose(f);
        c.save_imatrix();
        return 0;
    }
    // load IMATRIX OUT [+include | -exclude]...
    if (argc < 4 || strcmp(argv[1], "load") != 0) return 2;
    std::vector<std::string> inc, exc;
    for (int i = 4; i < argc; ++i) {
        if (argv[i][0] == '+') inc.emplace_back(argv[i] + 1); else exc.emplace_back(argv[i] + 1);
    }
    std::vector<std::string> datasets;
    std::unordered_map<std::string, std::vector<float>> data;
    const int32_t m_last_call = prepare_imatrix(argv[2], datasets, inc, exc, data);
    std::map<std::string, std::vector<float>> sorted(data.begin(), data.end());
    FILE * f = fopen(argv[3], "wb");
    const int32_t nd = datasets.size(), ne = sorted.size();
    fwrite(&m_last_call, 4, 1, f);
    fwrite(&nd, 4, 1, f);
    for (auto & d : datasets) { int32_t n = d.size(); fwrite(&n, 4, 1, f); fwrite(d.data(), 1, n, f); }
    fwrite(&ne, 4, 1, f);
    for (auto & kv : sorted) {
        int32_t n = kv.first.size(); fwrite(&n, 4, 1, f); fwrite(kv.first.data(), 1, n, f);
        int64_t m = kv.second.size(); fwrite(&m, 8, 1, f); fwrite(kv.second.data(), 4, m, f);
    }
    fclose(f);
    return 0;
}
"""


def _between(text: str, start: str, stop: str) -> str:
    return text[text.index(start):text.index(stop)]


@pytest.fixture(scope="module")
def harness() -> Path:
    """The compiled harness (cached in the temp dir by source hash); skips without sources or g++."""
    if not (LLAMA_SRC / "tools/quantize/quantize.cpp").is_file():
        pytest.skip(f"llama.cpp reference sources not found at {LLAMA_SRC} (set GPUQUANT_LLAMA_SRC)")
    q = (LLAMA_SRC / "tools/quantize/quantize.cpp").read_text()
    i = (LLAMA_SRC / "tools/imatrix/imatrix.cpp").read_text()
    src = (HARNESS.replace("@QUANTIZE@", _between(q, "static int load_imatrix(", "static ggml_type parse_ggml_type("))
           .replace("@COLLECTOR_CLASS@", _between(i, "struct Stats {", "// remove any prefix and suffixes"))
           .replace("@COLLECTOR_SAVE@", _between(i, "void IMatrixCollector::save_imatrix_legacy",
                                                 "bool IMatrixCollector::load_imatrix(")))
    loader = (LLAMA_SRC / "common/imatrix-loader.cpp").read_text()
    key = hashlib.sha256((src + loader + str(lib_dir())).encode()).hexdigest()[:16]
    d = Path(tempfile.gettempdir()) / f"gpuquant-imatrix-oracle-{key}"
    exe = d / "harness"
    if not exe.is_file():
        d.mkdir(exist_ok=True)
        (d / "harness.cpp").write_text(src)
        inc = [f"-I{LLAMA_SRC / p}" for p in ("common", "include", "ggml/include")]
        cmd = ["g++", "-std=c++17", "-O1", "-w", *inc, str(d / "harness.cpp"), str(LLAMA_SRC / "common/imatrix-loader.cpp"),
               "-o", str(d / "harness.tmp"), f"-L{lib_dir()}", "-lggml-base", "-lllama", f"-Wl,-rpath,{lib_dir()}"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("g++ not found")
        assert r.returncode == 0, r.stderr[-3000:]
        os.replace(d / "harness.tmp", exe)
    return exe


def _limit_memory() -> None:
    """A corrupt length can make llama.cpp allocate gigabytes before it finds the file too short: cap it at
    1 GiB (the allocation then fails, which is also a refusal)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def oracle_prepare(harness: Path, path: Path, include=(), exclude=()):
    """llama-quantize's prepare_imatrix: (m_last_call, datasets, entries) or ImatrixError(stderr)."""
    out = path.with_suffix(".oracle")
    r = subprocess.run([str(harness), "load", str(path), str(out), *["+" + s for s in include],
                        *["-" + s for s in exclude]], capture_output=True, preexec_fn=_limit_memory,
                       env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    if r.returncode != 0:
        raise ImatrixError(r.stderr.decode(errors="replace"))
    b = out.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, b, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("<i")
        pos += n
        return b[pos - n:pos].decode("utf-8", "surrogateescape")

    m_last_call = take("<i")
    datasets = [string() for _ in range(take("<i"))]
    entries = {}
    for _ in range(take("<i")):
        name = string()
        n = take("<q")
        entries[name] = np.frombuffer(b, "<f4", n, pos).astype(F32)
        pos += 4 * n
    return m_last_call, datasets, entries


def assert_same_as_oracle(harness, path, include=(), exclude=()):
    try:
        want = oracle_prepare(harness, path, include, exclude)
    except ImatrixError as e:
        with pytest.raises(ImatrixError):
            im.prepare(path, include, exclude, check_finite=False)
        return str(e)
    got = im.prepare(path, include, exclude, check_finite=False)
    assert (got.chunk_count, got.datasets) == want[:2]
    assert list(got.entries) == list(want[2])
    for k, v in want[2].items():
        assert bits(got.entries[k]) == bits(v), k
    return "ok"


def oracle_save(harness: Path, tmp: Path, legacy: bool, entries, counts, datasets, last_chunk, chunk_size) -> bytes:
    b = struct.pack("<iiiii", int(legacy), chunk_size, 1, last_chunk, len(datasets))
    for d in datasets:
        b += struct.pack("<i", len(d.encode())) + d.encode()
    b += struct.pack("<i", len(entries))
    for k in entries:
        v, c = np.asarray(entries[k], "<f4"), np.asarray(counts[k], "<i8")
        b += struct.pack("<i", len(k.encode())) + k.encode() + struct.pack("<i", v.size) + v.tobytes()
        b += struct.pack("<i", c.size) + c.tobytes()
    (tmp / "spec").write_bytes(b)
    subprocess.run([str(harness), "save", str(tmp / "spec"), str(tmp / "saved")], check=True, capture_output=True)
    return (tmp / "saved").read_bytes()


@requires_oracle
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("datasets, last_chunk, chunk_size", [(["a.txt", "b.txt"], 5, 512), ([], 0, 100)])
def test_writers_match_llama_imatrix(harness, tmp_path, legacy, datasets, last_chunk, chunk_size):
    entries, counts = state(1)
    entries["blk.1.ffn_gate_exps.weight"] = np.random.default_rng(2).random(4 * 16, dtype=F32)
    counts["blk.1.ffn_gate_exps.weight"] = [0, 3, 100000, 1]
    want = oracle_save(harness, tmp_path, legacy, entries, counts, datasets, last_chunk, chunk_size)
    fn = im.legacy_imatrix_bytes if legacy else im.gguf_imatrix_bytes
    assert fn(entries, counts, datasets, last_chunk, chunk_size) == want


@requires_oracle
def test_loader_matches_llama_quantize(harness, tmp_path):
    entries, counts = state(3)
    files = {
        "moe.gguf": im.gguf_imatrix_bytes(entries, counts, ["a.txt", "b.txt"], 7, 512),
        "moe.dat": im.legacy_imatrix_bytes(entries, counts, ["a.txt"], 7, 512),
        "odd.gguf": gguf_file(META, [("a.in_sum2", 0, [7], f32(2, 4, 6, 8, 10, 12, 1e-30)),
                                     ("a.counts", 0, [2], f32(2.5, np.nan)),
                                     ("b.in_sum2", 0, [4], f32(1, 2, 3, 4)), ("b.counts", 0, [2], f32(0.49, 1e30)),
                                     ("c.in_sum2", 0, [3], f32(1, 2, 3)), ("c.counts", 0, [1], f32(-3)),
                                     ("other", 0, [1], f32(1))]),
        "u32arr.gguf": gguf_file([("imatrix.datasets", "arr", ["x", "y"]), ("imatrix.chunk_count", 4, 2**31 + 5),
                                  ("imatrix.chunk_size", 4, 0)],
                                 [("a.in_sum2", 0, [2], f32(3, 6)), ("a.counts", 0, [1], f32(3))]),
        "abort.gguf": gguf_file(META[:2] + [("imatrix.chunk_size", 8, "not a number")],
                                [("a.in_sum2", 0, [2], f32(3, 6)), ("a.counts", 0, [1], f32(3))]),
        "ncall.dat": (struct.pack("<i", 2) + struct.pack("<i", 1) + b"a" + struct.pack("<ii", 0, 2) + f32(5, 6)
                      + struct.pack("<i", 1) + b"b" + struct.pack("<ii", 7, 1) + f32(1) + b"\x07\x01"),
    }
    for name, data in files.items():
        p = write(tmp_path, data, name)
        outcome = assert_same_as_oracle(harness, p)
        assert (outcome == "ok") == (name != "abort.gguf"), (name, outcome)
    p = tmp_path / "moe.gguf"
    for inc, exc in [((), ("attn", "output")), (("blk.0", "attn"), ()), (("zzz",), ())]:
        assert assert_same_as_oracle(harness, p, inc, exc) == "ok"


@requires_oracle
@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_truncations_match_llama_quantize(harness, tmp_path, fmt):
    """Every prefix of a small file: llama.cpp and gpuquant agree on accept/refuse, and on the values."""
    e = {"a": np.array([1, 2, 3, 4], F32), "b": np.array([5, 6], F32)}
    c = {"a": [2, 3], "b": [9]}
    data = (im.gguf_imatrix_bytes if fmt == "gguf" else im.legacy_imatrix_bytes)(e, c, ["ds.txt"], 3, 4)
    p = tmp_path / f"t.{fmt}"
    for n in range(0, len(data), 2 if fmt == "gguf" else 1):
        p.write_bytes(data[:n])
        assert_same_as_oracle(harness, p)


@requires_oracle
@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_corruptions_match_llama_quantize(harness, tmp_path, fmt):
    """Seeded byte corruptions of a small file: the same accept/refuse decision and the same values."""
    e = {"a": np.array([1, 2, 3, 4], F32), "b": np.array([5, 6], F32)}
    c = {"a": [2, 3], "b": [9]}
    data = (im.gguf_imatrix_bytes if fmt == "gguf" else im.legacy_imatrix_bytes)(e, c, ["ds.txt"], 3, 4)
    rng = np.random.default_rng(7)
    p = tmp_path / f"c.{fmt}"
    outcomes = []
    for _ in range(150):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), rng.integers(1, 3)):
            b[pos] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(256))]))
        p.write_bytes(bytes(b))
        outcomes.append(assert_same_as_oracle(harness, p) == "ok")
    assert any(outcomes) and not all(outcomes)
