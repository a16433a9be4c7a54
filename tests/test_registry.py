"""The registry: every quant type declares every fact the rest of gpuquant derives from it, and the C block
layouts agree with it. A type that lacks a fact fails here, naming the type and the fact."""
from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from gpuquant import quants
from gpuquant.backends import kernels as K
from gpuquant.backends.emulated import find_compiler, kernel_names
from gpuquant.quants import QUANT_SIZES, QuantType, registered
from gpuquant.quants import GGMLQuantizationType as T
from tests.golden import golden_path, groups_for

TYPES = list(registered())
FLOATS = (T.F32, T.F16, T.BF16)

#: every GGML type llama-quantize can write (llama-cpp-python 0.3.36): the registry must hold all of them
LLAMA_QUANTIZE_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
    "MXFP4", "NVFP4", "Q1_0", "Q2_0",
)


def _id(t) -> str:
    return t.name


@pytest.mark.parametrize("name", LLAMA_QUANTIZE_TYPES)
def test_every_llama_quantize_type_is_registered(name):
    assert T[name] in registered(), f"{name}: no quant type registered (no class with qtype=T.{name})"


@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_type_declares_every_fact(qtype):
    cls = quants.get(qtype)
    missing = []
    if cls.fp16_fields is None:
        missing.append("fp16_fields (the fp16 scales ggml_validate_row_data checks; {} for none)")
    if cls.kernel is None:
        missing.append(f"kernel (a Kernel(...) for kernels/{cls.family}.cu)")
    if cls.quantize_rows.__func__ is QuantType.quantize_rows.__func__:
        missing.append("quantize_rows")
    if cls.dequantize_rows.__func__ is QuantType.dequantize_rows.__func__:
        missing.append("dequantize_rows")
    if not golden_path(qtype.name).is_file():
        missing.append(f"golden vectors {golden_path(qtype.name).name} (tests/golden/make_golden.py {qtype.name})")
    if not groups_for(qtype.name):
        missing.append("a golden case group whose row lengths its block size divides (tests/golden/cases.py)")
    assert not missing, f"{qtype.name} ({cls.__module__}.{cls.__name__}) lacks: " + "; ".join(missing)


@pytest.mark.parametrize("qtype", TYPES, ids=_id)
def test_fields_lie_inside_the_block(qtype):
    cls = quants.get(qtype)
    for field, off in (cls.fp16_fields or {}).items():
        assert 0 <= off <= cls.type_size - 2, f"{qtype.name}.{field}: offset {off} outside a {cls.type_size}-byte block"
    assert (cls.block_size, cls.type_size) == QUANT_SIZES[qtype]


@pytest.mark.parametrize("qtype", [t for t in TYPES if quants.get(t).kernel is not None], ids=_id)
def test_kernel_entry_points_exist(qtype):
    """Every kernel a launch plan can name for the type is defined in its family's source."""
    spec = K.KERNELS[qtype]
    path = K.kernel_dir() / f"{spec.family}.cu"
    assert path.is_file(), f"{qtype.name}: kernel source {path} missing"
    text = path.read_text()
    made = set(kernel_names(text))  # spelled out or made by the entry-point macros
    missing = [n for n in spec.quantize_kernels() if n not in made]
    if spec.dequantize and f"void dequantize_{spec.name}(" not in text:
        missing.append(f"dequantize_{spec.name}")
    assert not missing, f"{qtype.name}: {spec.family}.cu lacks {missing}"
    if not spec.flat:
        assert spec.item_elems % QUANT_SIZES[qtype][0] == 0, f"{qtype.name}: work item is not whole blocks"


def test_registered_twice_is_an_error():
    with pytest.raises(TypeError, match="Q4_0 registered twice"):
        type("Dup", (QuantType,), {}, qtype=T.Q4_0)


def _syntax_check(family: str) -> subprocess.CompletedProcess:
    """g++ -fsyntax-only of a family with its generated layout checks, as the emulated build compiles it."""
    kd = K.kernel_dir()
    unit = f'#include "{kd / (family + ".cu")}"\n' + K.layout_checks(family)
    return subprocess.run([find_compiler(), "-std=c++17", "-fsyntax-only", "-include", str(kd / "host_shim.h"),
                           f"-I{kd}", "-x", "c++", "-"], input=unit, capture_output=True, text=True)


def test_layout_checks_hold_and_catch_a_wrong_offset(monkeypatch):
    assert _syntax_check("legacy").returncode == 0
    monkeypatch.setattr(quants.get(T.Q4_1), "fp16_fields", {"d": 0, "m": 4})
    res = _syntax_check("legacy")
    assert res.returncode != 0 and "block_q4_1.m: offset 4 in the registry" in res.stderr


def test_validation_follows_the_fp16_fields():
    """A block whose declared fp16 field is inf is refused; the same bits elsewhere in the block are not."""
    from gpuquant import validate

    blocks = np.zeros((3, 20), np.uint8)
    blocks[1, 2:4] = np.array([0x7C00], np.uint16).view(np.uint8)  # Q4_1.m = inf
    blocks[2, 6:8] = np.array([0x7C00], np.uint16).view(np.uint8)  # quant bytes, not a scale
    assert validate.first_invalid(T.Q4_1, blocks) == 1
    assert validate.first_invalid(T.Q4_1, blocks[[0, 2]]) is None
