"""IQ1_S and IQ1_M particulars (the registry-driven tests/test_conformance.py covers golden vectors, random,
edge-case and NaN/Inf rows, dequantization for every type).

Default suite: the split scan (``iq1_search.first_best`` on its contenders against the C scan candidate by
candidate, ``split_sums_*`` against the C loops written out), the neighbour search against the C loop, the
sort's ties, the imatrix requirement (IQ1_S only: ggml_quantize_requires_imatrix leaves IQ1_M out).
Oracle suite: many row chunks, tiny/huge weights, inputs on which ggml aborts (forked children), whole
files in the IQ1_S and IQ1_M mixes with an imatrix against llama_model_quantize, and their refusal without.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuquant.api import UsageError, quantize_file
from gpuquant.quants import GGMLAbort, get, quantize
from gpuquant.quants import GGMLQuantizationType as T
from gpuquant.quants import iq1_search as S
from gpuquant.quants.grids import iq2_grid
from tests.helpers import assert_bytes
from tests.oracle import forked_oracle, oracle_quantize, requires_oracle
from tests.oracle_files import assert_same, oracle_with_imatrix, write_imatrix

F32 = np.float32
TYPES = ["IQ1_S", "IQ1_M"]


def c_scan(sqx: np.ndarray, sq2: np.ndarray) -> tuple[int, np.float32]:
    """The C scan of one group, candidate by candidate, in numpy float32 scalars."""
    best, scale, kept = -np.finfo(F32).max, F32(0), -1
    with np.errstate(all="ignore"):
        for c in range(len(sqx)):
            if sq2[c] > 0 and sqx[c] * sqx[c] > best * sq2[c]:
                scale = sqx[c] / sq2[c]
                best = scale * sqx[c]
                kept = c
    return kept, scale


def groups(rng, G: int, n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, weights) ``(G, n)``: normal, integer ties with zero weights, or tiny weights."""
    x = rng.standard_normal((G, n)).astype(F32)
    w = (rng.standard_normal((G, n)) ** 2).astype(F32)
    if kind == "ties":
        x = rng.integers(-2, 3, (G, n)).astype(F32)
        w = np.where(rng.random((G, n)) < 0.3, 0, rng.choice([1.0, 2.0], (G, n))).astype(F32)
    elif kind == "tiny":
        w = (w * F32(1e-20)).astype(F32)
    return x, w


def candidates(qtype: str, x, w):
    if qtype == "IQ1_S":
        _, sx, sw = S.sorted_prefix(x, w)
        return S.split_sums_s(sx, sw)
    _, px, pw = S.sorted_prefix(x, w, halves=True)
    return S.split_sums_m(px, pw)


@pytest.mark.parametrize("qtype", TYPES)
def test_split_sums_equal_the_c_loops(qtype):
    """Every candidate's sums, bit for bit the C expressions evaluated on one group in float32 scalars."""
    rng = np.random.default_rng(1)
    n = get(qtype).group
    x, w = groups(rng, 3, n, "normal")
    sqx, sq2 = candidates(qtype, x, w)
    xp, xm = S.XX
    for g in range(3):
        idx = sorted(range(n), key=lambda i: x[g, i])  # stable, as glibc's merge sort
        got_x, got_2 = [], []
        if qtype == "IQ1_S":
            sumx, sumw = [F32(0)], [F32(0)]
            for i in idx:
                sumx.append(sumx[-1] + w[g, i] * x[g, i])
                sumw.append(sumw[-1] + w[g, i])
            for i1 in range(n + 1):
                for i2 in range(i1, n + 1):
                    for v in (xp, xm):
                        got_x.append((sumx[i1] - sumx[0]) * v[0] + (sumx[i2] - sumx[i1]) * v[1]
                                     + (sumx[n] - sumx[i2]) * v[2])
                        got_2.append((sumw[i1] - sumw[0]) * v[0] * v[0] + (sumw[i2] - sumw[i1]) * v[1] * v[1]
                                     + (sumw[n] - sumw[i2]) * v[2] * v[2])
        else:
            px = [[F32(0)], [F32(0)]]
            pw = [[F32(0)], [F32(0)]]
            for i in idx:
                h = 0 if i < n // 2 else 1
                px[h].append(px[h][-1] + w[g, i] * x[g, i])
                px[1 - h].append(px[1 - h][-1])
                pw[h].append(pw[h][-1] + w[g, i])
                pw[1 - h].append(pw[1 - h][-1])
            c1 = [v[0] * v[0] - v[1] * v[1] for v in (xp, xm)]
            c2 = [v[1] * v[1] - v[2] * v[2] for v in (xp, xm)]
            for i1 in range(n + 1):
                for i2 in range(i1, n + 1):
                    qx = [[px[h][n] * v[2] - (px[h][i1] + px[h][i2]) for v in (xp, xm)] for h in (0, 1)]
                    q2 = [[pw[h][n] * v[2] * v[2] + pw[h][i1] * c1[s] + pw[h][i2] * c2[s]
                           for s, v in enumerate((xp, xm))] for h in (0, 1)]
                    for k in range(4):
                        got_x.append(qx[0][k >> 1] + qx[1][k & 1])
                        got_2.append(q2[0][k >> 1] + q2[1][k & 1])
        np.testing.assert_array_equal(sqx[:, g].view(np.uint32), np.array(got_x, F32).view(np.uint32))
        np.testing.assert_array_equal(sq2[:, g].view(np.uint32), np.array(got_2, F32).view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("kind", ["normal", "ties", "tiny"])
def test_first_best_equals_the_c_scan(qtype, kind):
    rng = np.random.default_rng([len(kind), len(qtype)])
    x, w = groups(rng, 96, get(qtype).group, kind)
    sqx, sq2 = candidates(qtype, x, w)
    with np.errstate(all="ignore"):
        kept, scale = S.first_best(sqx, sq2, w.sum(axis=1), F32(1.01) * np.abs(w * x).sum(axis=1))
    for g in range(len(x)):
        k, s = c_scan(sqx[:, g], sq2[:, g])
        assert (kept[g], scale[g].view(np.uint32)) == (k, F32(s).view(np.uint32)), f"group {g}"


def test_first_best_takes_the_whole_scan_on_near_ties():
    """Scores a hair apart around the threshold (no float-safe gap) and NaN sums: the whole scan."""
    rng = np.random.default_rng(3)
    C, G = 40, 6
    sq2 = np.ones((C, G), F32)
    sqx = (F32(1) + rng.integers(0, 3, (C, G)).astype(F32) * F32(1e-7)).astype(F32)
    sqx[5, 0] = np.nan
    sq2[7, 1] = 0
    with np.errstate(all="ignore"):
        kept, scale = S.first_best(sqx, sq2, np.ones(G, F32), np.ones(G, F32))
    for g in range(G):
        assert (kept[g], scale[g]) == c_scan(sqx[:, g], sq2[:, g])


def test_neighbours_equal_the_c_loop():
    grid = iq2_grid(T.IQ1_S)
    rng = np.random.default_rng(4)
    lv = rng.integers(0, 3, (400, 8))
    u = (lv << (2 * np.arange(8))).sum(axis=1)
    off = grid.map[u] < 0
    u = u[off]
    m = len(u)
    scale = (10.0 ** rng.uniform(-2, 2, m)).astype(F32)
    shift = rng.integers(0, 2, m)
    x = ((lv[off] - 1 + rng.uniform(-0.7, 0.7, (m, 8))) * scale[:, None]).astype(F32)
    w = np.where(rng.random((m, 8)) < 0.2, 0, rng.exponential(1, (m, 8))).astype(F32)
    gi, found = S.neighbours(grid, u, x, w, scale, shift)
    assert found.all()
    levels = (grid.grid.astype(int) - 1) // 2
    for r in range(m):
        best, want = np.finfo(F32).max, -1
        for p in grid.neighbour_list(u[r]):
            d2 = F32(0)
            for i in range(8):
                diff = scale[r] * S.XX[shift[r], levels[p, i]] - x[r, i]
                d2 += w[r, i] * diff * diff
            if d2 < best:
                best, want = d2, p
        assert gi[r] == want, f"request {r}"


def test_neighbours_report_nan_distances():
    grid = iq2_grid(T.IQ1_S)
    u = np.array([int(np.flatnonzero(grid.nb_count > 0)[0])])
    gi, found = S.neighbours(grid, u, np.ones((1, 8), F32), np.full((1, 8), np.nan, F32), np.ones(1, F32),
                             np.zeros(1, np.intp))
    assert not found[0]


def test_requires_imatrix():
    """ggml_quantize_requires_imatrix: IQ1_S yes, IQ1_M no (ggml-quants.c then weighs by x*x)."""
    assert get("IQ1_S").requires_imatrix and not get("IQ1_M").requires_imatrix
    x = np.ones((1, 256), F32)
    with pytest.raises(ValueError, match="IQ1_S requires"):
        get("IQ1_S").quantize_rows(x, None)
    assert quantize(x, "IQ1_M").shape == (1, 56)


@pytest.mark.parametrize("qtype", TYPES)
def test_all_zero_rows(qtype):
    out = quantize(np.zeros((2, 512), F32), qtype, np.ones(512, F32))
    assert not out.any()


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_is_close(qtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 1024)).astype(F32)
    y = get(qtype).dequantize_rows(quantize(x, qtype, np.ones(1024, F32)))
    rel = np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean())
    assert rel < 0.75  # 1.56 / 1.75 bits per weight


# ----------------------------------------------------------------------------- oracle suite


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_many_chunks_against_oracle(qtype):
    """More super-blocks than one work chunk, rows of several lengths, weights of several magnitudes."""
    rng = np.random.default_rng(6)
    for n, nrows in ((256, 300), (4096, 10), (768, 7)):
        x = (rng.standard_normal((nrows, n)) * rng.uniform(0.01, 10, (nrows, 1))).astype(F32)
        for w in (rng.standard_normal(n) ** 2, rng.random(n) * 1e-30, rng.random(n) * 1e15,
                  np.where(rng.random(n) < 0.5, 0, 1.0)):
            w = w.astype(F32)
            assert_bytes(quantize(x, qtype, w), oracle_quantize(x, qtype, w), qtype, x, f"n={n}")
    if qtype == "IQ1_M":
        assert_bytes(quantize(x, qtype), oracle_quantize(x, qtype, None), qtype, x, "no weights")


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_aborts_against_forked_oracle(qtype):
    """Inputs on which ggml may abort (one-signed overflowing squares, +inf, NaN weights): each row either
    aborts in both or gives the same bytes."""
    rng = np.random.default_rng(7)
    n = 256
    rows = [np.abs(rng.standard_normal(n) * 1e20), np.abs(rng.standard_normal(n) * 1e19),
            np.where(rng.random(n) < 0.02, np.inf, np.abs(rng.standard_normal(n))),
            np.where(rng.random(n) < 0.02, np.inf, rng.standard_normal(n)), rng.standard_normal(n) * 1e18]
    weights = [(rng.standard_normal(n) ** 2).astype(F32), np.where(rng.random(n) < 0.3, 0, 1.0).astype(F32)]
    nan_w = weights[0].copy()
    nan_w[:8] = np.nan
    aborted = 0
    for r in rows:
        row = r.astype(F32)[None]
        for w in weights + [nan_w]:
            want, _ = forked_oracle(row, qtype, w)
            if want is None:
                aborted += 1
                with pytest.raises(GGMLAbort):
                    quantize(row, qtype, w)
            else:
                assert_bytes(quantize(row, qtype, w), want, qtype, row)
    assert aborted > 0


@requires_oracle
@pytest.mark.parametrize("ftype", TYPES)
def test_whole_file_with_imatrix(ftype, llama_f16, tmp_path):
    """The IQ1_S / IQ1_M mixes (llama_tensor_get_type) on the synthetic llama model, byte for byte."""
    im = write_imatrix(llama_f16, tmp_path / "imatrix.gguf", "gguf")
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    quantize_file(llama_f16, ours, ftype, device="cpu", threads=2, imatrix=im)
    oracle_with_imatrix(llama_f16, ref, ftype, im)
    assert_same(ours, ref)


@pytest.mark.parametrize("ftype", TYPES)
def test_whole_file_without_imatrix_is_refused(ftype, llama_f16, tmp_path):
    """llama-quantize's tensor_requires_imatrix (IQ1_M included): refused before anything is written."""
    out = tmp_path / "o.gguf"
    with pytest.raises(UsageError, match=rf"requires an importance matrix: tensor blk\.\d+\.\w+\.weight -> {ftype}"):
        quantize_file(llama_f16, out, ftype, device="cpu")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def emulated():
    from gpuquant.backends.emulated import EmulatedDevice
    return EmulatedDevice(threads=2)


def _device_rows(rng, n: int) -> list[np.ndarray]:
    """Rows for the kernels' order-dependent paths: values on a coarse lattice (sort ties, equal neighbour
    distances), all-equal groups, one-signed overflowing squares and +inf (ggml may abort)."""
    rows = [np.round(rng.standard_normal(n) * 2) / 2, np.repeat(rng.standard_normal(n // 8), 8),
            np.where(rng.random(n) < 0.5, 1.0, -1.0), np.abs(rng.standard_normal(n) * 1e20),
            np.where(rng.random(n) < 0.02, np.inf, rng.standard_normal(n)), rng.standard_normal(n) * 1e18]
    return [r.astype(F32)[None] for r in rows]


@requires_oracle
@pytest.mark.parametrize("qtype", TYPES)
def test_emulated_kernels_on_ties_and_aborts(qtype, emulated):
    """kernels/iq1.cu on the emulated device, row by row against ggml in a forked child: the same bytes, or
    GGMLAbort where ggml aborts."""
    from tests.helpers import run_device

    rng = np.random.default_rng(17)
    n = 512
    lattice = np.where(rng.random(n) < 0.4, 0, np.round(rng.random(n) * 4) / 4).astype(F32)
    weights = [np.ones(n, dtype=F32), lattice, (rng.standard_normal(n) ** 2).astype(F32)]
    aborted = 0
    for row in _device_rows(rng, n):
        for w in weights:
            want, _ = forked_oracle(row, qtype, w)
            if want is None:
                aborted += 1
                with pytest.raises(GGMLAbort):
                    run_device(emulated, row, T.F32, qtype, n, w[None])
            else:
                assert_bytes(run_device(emulated, row, T.F32, qtype, n, w[None]), want, qtype, row)
    assert aborted > 0
