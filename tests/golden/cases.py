"""Edge-case inputs for the golden vectors (and for fresh oracle comparisons).

``build_cases(group, seed)`` returns ``[(case_id, rows float32 (nrows, n_per_row), imatrix float32 (n,))]``.
Group ``"b32"`` has row lengths that are multiples of 32 only (for the 32-element block types), group
``"b256"`` multiples of 256 (every type). Every input is finite; the cases aim at the branches of the
ggml quantizers: all-zero blocks (division guards), signed zeros (which zero wins a min/max), constant
blocks, a lone outlier, denormals and values around ``GROUP_MAX_EPS``, magnitudes near and beyond the
fp16 range (scales overflowing fp16, ``x*x`` overflowing float32), heavy tails, exact rounding ties,
wildly different block scales, sparse and one-signed blocks.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
LENGTHS = {"b32": (32, 64, 96, 160), "b256": (256, 512, 768)}
LONG = 4096  # one long row length per group for a few kinds (whole-row sigma2 over many blocks)


def _normal(rng, shape):
    return rng.standard_normal(shape).astype(F32)


def k_zeros(rng, n):
    z = np.zeros((3, n), F32)
    z[1] = -0.0
    z[2, rng.random(n) < 0.5] = -0.0
    return z


def k_const(rng, n):
    return np.array([[1.5] * n, [-2.25] * n, [1e-3] * n, [7.0] * n], F32)


def k_outlier(rng, n):
    x = _normal(rng, (4, n))
    for r, v in enumerate((1e4, -3e4, 1e6, -65504.0)):
        x[r, rng.integers(n)] = v
    return x


def k_denormal(rng, n):
    x = np.empty((5, n), F32)
    x[0] = (rng.uniform(-1, 1, n) * 1e-39).astype(F32)  # float32 denormals
    x[1] = (rng.integers(-40, 40, n) * np.float64(2.0**-149)).astype(F32)  # tiny multiples of the smallest
    x[2] = (rng.standard_normal(n) * 10.0 ** rng.uniform(-38, -20, n)).astype(F32)
    x[2, rng.random(n) < 0.3] = 0.0
    x[3] = (rng.standard_normal(n) * 1e-15).astype(F32)  # around GROUP_MAX_EPS
    x[4] = (rng.standard_normal(n) * 1e-9).astype(F32)  # d underflows in fp16
    return x


def k_large(rng, n):
    x = np.empty((5, n), F32)
    x[0] = (rng.standard_normal(n) * 6e4).astype(F32)
    x[1] = rng.choice(np.array([65504, -65504, 65519, 65520, -70000, 1e5, 0.5], F32), n)
    x[2] = (rng.standard_normal(n) * 1e20).astype(F32)  # x*x overflows float32
    x[3] = (rng.standard_normal(n) * 1e6).astype(F32)
    x[4] = (rng.uniform(-1, 1, n) * 3e38).astype(F32)  # ranges overflow float32
    return x


def k_normal(rng, n):
    return _normal(rng, (3, n)) * np.array([[1.0], [0.02], [100.0]], F32)


def k_heavy(rng, n):
    x = np.empty((3, n), F32)
    for r, df in enumerate((1, 2, 4)):
        x[r] = np.clip(rng.standard_t(df, n), -1e5, 1e5).astype(F32)
    return x


def k_signed_zeros(rng, n):
    x = _normal(rng, (2, n))
    x[0, rng.random(n) < 0.3] = -0.0
    x[1, rng.random(n) < 0.6] = 0.0
    x[1, rng.random(n) < 0.3] = -0.0
    return x


def k_ties(rng, n):
    x = np.empty((4, n), F32)
    x[0] = rng.integers(-8, 9, n).astype(F32)
    x[1] = (rng.integers(-16, 16, n) + 0.5).astype(F32)
    x[2] = rng.integers(-3, 4, n).astype(F32) / F32(8)
    x[2, ::32] = 3.0 / 8  # a +max and a -max of equal magnitude in every block
    x[2, 5::32] = -3.0 / 8
    x[3] = (rng.integers(-127, 128, n)).astype(F32) / F32(127)
    return x


def k_block_scales(rng, n):
    x = _normal(rng, (2, n))
    s = 10.0 ** rng.uniform(-8, 8, (2, n // 32))
    return (x * np.repeat(s, 32, axis=1)).astype(F32)


def k_sparse(rng, n):
    x = np.zeros((2, n), F32)
    for r in range(2):
        pos = np.arange(0, n, 32) + rng.integers(0, 32, n // 32)
        x[r, pos] = rng.standard_normal(len(pos)).astype(F32) * (1 + 99 * r)
    return x


def k_one_signed(rng, n):
    x = np.empty((3, n), F32)
    x[0] = rng.random(n).astype(F32)
    x[1] = -rng.random(n).astype(F32) - F32(0.5)
    x[2] = (F32(5) + rng.standard_normal(n) * F32(0.01)).astype(F32)
    return x


def k_zero_blocks(rng, n):
    x = _normal(rng, (2, n))
    nb = n // 32
    for r in range(2):
        for b in rng.choice(nb, max(1, nb // 3), replace=False):
            x[r, 32 * b:32 * b + 32] = 0.0
    return x


KINDS = {
    "zeros": k_zeros,
    "const": k_const,
    "outlier": k_outlier,
    "denormal": k_denormal,
    "large": k_large,
    "normal": k_normal,
    "heavy": k_heavy,
    "signed_zeros": k_signed_zeros,
    "ties": k_ties,
    "block_scales": k_block_scales,
    "sparse": k_sparse,
    "one_signed": k_one_signed,
    "zero_blocks": k_zero_blocks,
}
LONG_KINDS = ("normal", "heavy", "block_scales")


def imatrix(kind: str, rng, n: int) -> np.ndarray:
    """Importance weights of one row: positive, with zeros, tiny, huge, ones, mixed magnitudes."""
    if kind == "chi2":
        v = rng.chisquare(1.0, n)
    elif kind == "zeros":
        v = rng.exponential(1.0, n) * (rng.random(n) > 0.3)
    elif kind == "tiny":
        v = rng.random(n) * 1e-30
    elif kind == "huge":
        v = rng.random(n) * 1e15
    elif kind == "ones":
        v = np.ones(n)
    elif kind == "mixed":
        v = 10.0 ** rng.uniform(-6, 6, n)
    elif kind == "allzero":
        v = np.zeros(n)
    else:
        raise ValueError(kind)
    return v.astype(F32)


IMATRIX_KINDS = ("chi2", "zeros", "tiny", "huge", "ones", "mixed", "allzero")


def build_cases(group: str, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """All cases of a group, deterministic for a seed. ``case_id``: ``kind/n<len>/<imatrix kind>``."""
    rng = np.random.default_rng([seed, 256 if group == "b256" else 32])
    out = []
    ik = 0
    for name, fn in KINDS.items():
        lengths = list(LENGTHS[group]) + ([LONG] if name in LONG_KINDS else [])
        for n in lengths:
            rows = np.ascontiguousarray(fn(rng, n), dtype=F32)
            if n == LONG:
                rows = rows[:2]
            assert np.isfinite(rows).all()
            kind = IMATRIX_KINDS[ik % len(IMATRIX_KINDS)]
            ik += 1
            out.append((f"{name}/n{n}/{kind}", rows, imatrix(kind, rng, n)))
    return out
