"""The oracle: llama.cpp's own quantizer from llama-cpp-python 0.3.36, reached through ctypes.

``oracle_quantize`` calls ``ggml_quantize_chunk`` of the ``libggml-base.so`` shipped inside the
``llama_cpp`` package, the exact code ``llama-quantize`` runs. Nothing heavy happens at import: the package
is located with ``importlib.util.find_spec`` (the ``llama_cpp`` module itself is never imported here) and
the library is loaded on first use. ``GPUQUANT_ORACLE_LIB_DIR`` may point at another directory holding
``libggml-base.so``.

Tests that need it are marked ``@requires_oracle`` (a ``skipif`` plus ``pytest.mark.oracle``), so the
default suite passes, skipping them, where llama-cpp-python is not installed.
"""
from __future__ import annotations

import ctypes
import faulthandler
import functools
import importlib.util
import multiprocessing
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

__all__ = [
    "ORACLE_MARKS",
    "available",
    "lib_dir",
    "forked_oracle",
    "oracle_dequantize",
    "oracle_quantize",
    "oracle_row_size",
    "requires_imatrix",
    "requires_oracle",
    "unavailable_reason",
]

_LIB_NAME = "libggml-base.so"


@functools.lru_cache(maxsize=None)
def lib_dir() -> Path | None:
    """``site-packages/llama_cpp/lib`` of the installed llama-cpp-python, or None."""
    override = os.environ.get("GPUQUANT_ORACLE_LIB_DIR")
    if override:
        return Path(override) if (Path(override) / _LIB_NAME).is_file() else None
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "lib"
        if (d / _LIB_NAME).is_file():
            return d
    return None


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    d = lib_dir()
    if d is None:
        raise RuntimeError(unavailable_reason())
    lib = ctypes.CDLL(str(d / _LIB_NAME))
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,  # enum ggml_type
        ctypes.c_void_p,  # const float * src
        ctypes.c_void_p,  # void * dst
        ctypes.c_int64,  # start
        ctypes.c_int64,  # nrows
        ctypes.c_int64,  # n_per_row
        ctypes.c_void_p,  # const float * imatrix
    ]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    return lib


def unavailable_reason() -> str:
    return (
        "oracle unavailable: llama-cpp-python 0.3.36 is not installed "
        f"(no llama_cpp/lib/{_LIB_NAME}; pip install 'gpuquant[oracle]')"
    )


def available() -> bool:
    """True when llama-cpp-python's ``libggml-base.so`` is installed.

    Only the file is looked for: a library that is there but fails to load makes the tests fail
    loudly instead of skipping.
    """
    return lib_dir() is not None


#: Marks for oracle tests: ``pytestmark = ORACLE_MARKS`` or ``pytest.param(..., marks=ORACLE_MARKS)``.
ORACLE_MARKS = (
    pytest.mark.oracle,
    pytest.mark.skipif(not available(), reason=unavailable_reason()),
)


def requires_oracle(obj):
    """Decorator for a test function or class that compares against llama.cpp."""
    for mark in ORACLE_MARKS:
        obj = mark(obj)
    return obj


def _type_id(qtype) -> int:
    if isinstance(qtype, str):  # gpuquant's enum: gguf's types plus those it does not know yet (Q2_0)
        from gpuquant.quants import parse_type

        return int(parse_type(qtype))
    return int(qtype)


def requires_imatrix(qtype) -> bool:
    """``ggml_quantize_requires_imatrix``: ggml aborts when such a type gets no importance weights."""
    return bool(_lib().ggml_quantize_requires_imatrix(_type_id(qtype)))


def oracle_row_size(qtype, n_per_row: int) -> int:
    """``ggml_row_size`` of the oracle."""
    return int(_lib().ggml_row_size(_type_id(qtype), int(n_per_row)))


def oracle_quantize(rows: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float32 ``rows`` ``(nrows, n_per_row)`` with llama.cpp's ``ggml_quantize_chunk``.

    ``qtype``: a ``GGMLQuantizationType``, its id or its name. ``imatrix``: float32 ``(n_per_row,)``
    importance weights or None. Returns uint8 ``(nrows, row_size)``.
    """
    lib = _lib()
    t = _type_id(qtype)
    src = np.ascontiguousarray(rows, dtype=np.float32)
    if src.ndim != 2:
        raise ValueError(f"rows: expected a 2-d array (nrows, n_per_row), got shape {src.shape}")
    nrows, n_per_row = src.shape
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32)
        if qw.shape != (n_per_row,):
            raise ValueError(f"imatrix: expected shape ({n_per_row},), got {qw.shape}")
    elif lib.ggml_quantize_requires_imatrix(t):
        raise ValueError(f"ggml type {t} requires an importance matrix")
    rs = int(lib.ggml_row_size(t, n_per_row))
    dst = np.zeros((nrows, rs), dtype=np.uint8)
    if nrows == 0:
        return dst
    lib.ggml_quantize_init(t)
    n = lib.ggml_quantize_chunk(
        t,
        src.ctypes.data,
        dst.ctypes.data,
        0,
        nrows,
        n_per_row,
        None if qw is None else qw.ctypes.data,
    )
    if n != nrows * rs:
        raise RuntimeError(f"ggml_quantize_chunk wrote {n} bytes, expected {nrows * rs}")
    return dst


def _to_float_fn(qtype):
    """ggml's ``to_float`` of a type (ggml.c type_traits): ``dequantize_row_<type>`` or the float rows."""
    from gpuquant.quants import type_name

    name = type_name(_type_id(qtype))
    sym = {"F16": "ggml_fp16_to_fp32_row", "BF16": "ggml_bf16_to_fp32_row"}.get(name)
    if sym is None:
        sym = "dequantize_row_" + name.lower().replace("_k", "_K")
    fn = getattr(_lib(), sym)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    return fn


def oracle_dequantize(raw: np.ndarray, qtype, n_per_row: int) -> np.ndarray:
    """ggml's ``to_float`` of the rows ``raw`` (uint8 ``(nrows, row_size)``): float32 ``(nrows, n_per_row)``.

    F32 is a copy (ggml has no to_float for it: llama-quantize memcpys F32 rows)."""
    src = np.ascontiguousarray(raw, dtype=np.uint8)
    nrows = src.shape[0]
    if _type_id(qtype) == 0:  # GGML_TYPE_F32
        return src.view(np.float32).reshape(nrows, n_per_row).copy()
    out = np.zeros((nrows, n_per_row), dtype=np.float32)
    if out.size:
        _to_float_fn(qtype)(src.ctypes.data, out.ctypes.data, out.size)
    return out


# ------------------------------------------------------------------------------------------------------
# types on which ggml aborts for some inputs (a quant type's ``ggml_aborts``): the oracle in a child
# ------------------------------------------------------------------------------------------------------


def _child(conn, rows, qtype, w, log):
    faulthandler.disable()  # pytest's handler would print the expected SIGABRT
    fd = os.open(log, os.O_WRONLY)
    os.dup2(fd, 1)  # the C printf of "Oops: ..." and ggml's abort message
    os.dup2(fd, 2)
    conn.send_bytes(oracle_quantize(rows, qtype, w).tobytes())
    conn.close()


def forked_oracle(rows: np.ndarray, qtype: str, w: np.ndarray | None) -> tuple[np.ndarray | None, str]:
    """``oracle_quantize`` in a forked child: (bytes, "") or (None, what it printed) when it aborted."""
    oracle_quantize(np.zeros((1, 256), np.float32), qtype, np.ones(256, np.float32))  # tables built once, in the parent
    os.environ["GGML_NO_BACKTRACE"] = "1"
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile() as log:
        p = ctx.Process(target=_child, args=(send, rows, qtype, w, log.name))
        p.start()
        send.close()
        try:
            data = recv.recv_bytes()
        except EOFError:
            data = None
        p.join()
        text = open(log.name).read()
    if data is None:  # SIGSEGV: IQ2_XXS may read past its grid map before aborting (see test_known_aborts)
        assert p.exitcode in (-signal.SIGABRT, -signal.SIGSEGV), f"oracle child ended with {p.exitcode}: {text}"
        return None, text
    return np.frombuffer(data, np.uint8).reshape(len(rows), -1), ""
