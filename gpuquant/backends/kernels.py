"""The CUDA kernel sources, their one set of compile options, and the one launch table.

Both kernel-running devices (``cuda.CudaDevice`` through NVRTC, ``emulated.EmulatedDevice`` through g++
and ``kernels/host_shim.h``) use this module: they find the same ``kernels/*.cu`` files, and they run the
same ``LaunchPlan`` of launches with the same grid and block geometry for a slab. Nothing here imports CuPy.

Kernel ABI (``kernels/common.cuh``): ``quantize_<dst>_<src>`` with src ``f32``/``f16``/``bf16`` (and, for types
declared ``Kernel(weighted=True)``, ``quantize_<dst>_w_<src>`` when there are importance weights); quantized
sources go through ``dequantize_<type>`` into a float32 scratch buffer first; the legacy types with
importance weights need a per-row pre-pass ``rowstat_sumsq_<src>``. ``gridDim.z`` is the expert. Types on which
ggml aborts (``ggml_aborts``) get a status word instead of the rowstat pointer: ``unsigned int*``, set to
``NO_ABORT`` before the launch; a kernel that meets an input ggml aborts on lowers it (``atomicMin``) to the
index of the work item (``kernels/common.cuh``: ``gq_report_abort``), and the device raises ``GGMLAbort``.

Large lookup tables a family's kernels need (grids, maps, neighbour lists) are generated from the numpy
reference: a family module may define ``kernel_tables()`` returning ``{name: numpy array}``; ``source`` puts
them in front of the ``.cu`` text as ``static __device__ const`` arrays, for both builds.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..quants import GGMLQuantizationType as T
from ..quants import QUANT_SIZES, GGMLAbort, registered
from . import SlabJob

__all__ = [
    "KERNELS",
    "NVRTC_OPTIONS",
    "SOURCE_TYPES",
    "BoundLaunch",
    "KernelSpec",
    "Launch",
    "LaunchPlan",
    "NO_ABORT",
    "available_families",
    "kernel_dir",
    "bind",
    "families_for",
    "generated_tables",
    "launch_plan",
    "raise_if_aborted",
    "layout_checks",
    "source",
    "supports",
]

#: The one tuple of NVRTC options: C++17, no contraction into FMA, IEEE division and square root, no
#: flush-to-zero (i.e. no fast math). ``nvrtc.compile_family`` adds ``-I<kernel_dir>``, the target architecture
#: and (for sm_XX targets) ``--ptxas-options=-v``, and nothing else: NVRTC takes the last value of a repeated
#: option, which is why nothing goes through CuPy's compiler (it appends ``-ftz=true``, CuPy issue #9576).
NVRTC_OPTIONS: tuple[str, ...] = (
    "--std=c++17",
    "--fmad=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--ftz=false",
)

#: Source types a quantize kernel reads directly (converted while loading), by kernel-name suffix.
SOURCE_TYPES: dict[T, str] = {T.F32: "f32", T.F16: "f16", T.BF16: "bf16"}

#: Threads per block of the rowstat pre-pass (one thread per row).
ROWSTAT_THREADS = 128

#: The status word of a ``ggml_aborts`` kernel before its launch (no work item aborted).
NO_ABORT = 0xFFFFFFFF


@dataclass(frozen=True)
class KernelSpec:
    """How one destination type is computed.

    ``family``: kernels/<family>.cu. ``name``: lowercase ggml name in the kernel names
    (``quantize_<name>_<src>``, ``dequantize_<name>``). ``threads``: CUDA threads per block.
    ``item_elems``: source elements per work item (one CUDA thread): the ggml block or super-block.
    ``flat``: work items tile each expert's rows as one flat array (float conversions; the last item may
    be partial) instead of whole blocks of rows. ``dequantize``: a ``dequantize_<name>`` kernel exists.
    ``rowstat``: with importance weights, ``rowstat_sumsq_<src>`` runs first. ``sync``: the kernels use
    ``__syncthreads`` (the emulator then runs a block's threads as fibers). ``aborts``: the type's
    ``ggml_aborts``: the quantize kernels take a status word (see the module docstring). ``weighted``: with
    importance weights the ``quantize_<name>_w_<src>`` entry points run (a separate instantiation of the
    weighted path), without them ``quantize_<name>_<src>``.
    """

    family: str
    name: str
    threads: int
    item_elems: int
    flat: bool = False
    dequantize: bool = True
    rowstat: bool = False
    sync: bool = False
    items_per_block: int = 0  # work items per CUDA block (0: threads, one thread per item)
    aborts: bool = False
    weighted: bool = False

    def __post_init__(self) -> None:
        if not self.items_per_block:
            object.__setattr__(self, "items_per_block", self.threads)

    def quantize_kernel(self, src_name: str, has_quant_weights: bool) -> str:
        """The quantize kernel a plan launches for source suffix ``src_name`` (f32/f16/bf16)."""
        return f"quantize_{self.name}{'_w' if has_quant_weights and self.weighted else ''}_{src_name}"

    def quantize_kernels(self) -> list[str]:
        """Every quantize kernel a plan can launch for this type."""
        return list(dict.fromkeys(self.quantize_kernel(s, q) for s in SOURCE_TYPES.values() for q in (False, True)))


def _spec(cls) -> KernelSpec | None:
    k = cls.kernel
    if k is None:
        return None
    return KernelSpec(cls.family, cls.qtype.name.lower(), k.threads, k.item_elems or cls.block_size, flat=k.flat,
                      dequantize=k.dequantize, rowstat=k.rowstat, sync=k.sync,
                      items_per_block=k.items_per_block or k.threads, aborts=cls.ggml_aborts,
                      weighted=k.weighted)


#: destination type -> kernels, derived from each registered type's ``kernel`` declaration
KERNELS: dict[T, KernelSpec] = {t: spec for t, cls in registered().items() if (spec := _spec(cls)) is not None}


# ------------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def kernel_dir() -> Path:
    """The folder holding ``common.cuh`` and the ``*.cu`` files: ``<repo>/kernels`` in a checkout, the
    ``gpuquant.kernels`` package (pyproject's package-dir maps it to ``kernels/``) when installed."""
    repo = Path(__file__).resolve().parents[2] / "kernels"
    if (repo / "common.cuh").is_file():
        return repo
    pkg = Path(str(resources.files("gpuquant.kernels")))
    if (pkg / "common.cuh").is_file():
        return pkg
    raise FileNotFoundError(f"kernels/common.cuh not found (looked in {repo} and {pkg})")


def available_families() -> tuple[str, ...]:
    """Families whose ``.cu`` file is present."""
    d = kernel_dir()
    return tuple(sorted(p.stem for p in d.glob("*.cu")))


def families_for(types) -> list[str]:
    """Kernel families the launches for ``types`` use (destination types and quantized source types)."""
    fams: set[str] = set()
    for t in types:
        spec = KERNELS.get(t)
        if spec is not None:
            fams.add(spec.family)
            if spec.rowstat:  # the imatrix pre-pass lives in legacy.cu
                fams.add("legacy")
    present = available_families()
    return sorted(f for f in fams if f in present)


def layout_checks(family: str) -> str:
    """C++ static_asserts of the block layouts of a family's types, generated from the registry: the size of
    ``block_<name>`` is the type size, and every fp16 field the registry names (validation, tests) sits at
    its offset. Both builds (NVRTC and the host compiler) append them to the family's source."""
    lines = []
    for t, cls in registered().items():
        if cls.family != family or cls.kernel is None or cls.kernel.flat:
            continue
        struct = f"block_{t.name.lower()}"
        lines.append(f'static_assert(sizeof({struct}) == {cls.type_size}, "{struct}: {cls.type_size} bytes in '
                     f'the registry (gguf GGML_QUANT_SIZES)");')
        spec = KERNELS[t]
        shape = f"GqKernelShape<{struct}>"
        lines.append(f'static_assert({shape}::threads == 0 || ({shape}::threads == {spec.threads} && {shape}::items == '
                     f'{spec.items_per_block}), "{struct}: the tiled kernel\'s threads and items per block are the '
                     f'registry\'s Kernel(threads={spec.threads}, items_per_block={spec.items_per_block})");')
        for field, off in (cls.fp16_fields or {}).items():
            lines.append(f'static_assert(__builtin_offsetof({struct}, {field}) == {off}, "{struct}.{field}: '
                         f'offset {off} in the registry ({cls.__module__}.{cls.__name__}.fp16_fields)");')
    return "\n".join(["// layout checks generated from the registry (gpuquant/backends/kernels.py)", *lines, ""])


_C_TYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "uint16": "uint16_t", "int32": "int32_t",
            "uint32": "uint32_t", "int64": "int64_t", "uint64": "uint64_t", "float32": "float"}


def _c_array(name: str, a) -> str:
    import numpy as np

    a = np.ascontiguousarray(a).reshape(-1)
    ctype = _C_TYPES.get(a.dtype.name)
    if ctype is None:
        raise TypeError(f"kernel table {name}: dtype {a.dtype} has no C type (use one of {sorted(_C_TYPES)})")
    if a.dtype == np.float32:  # exact: the bits, as hexadecimal float literals
        if not np.isfinite(a).all():
            raise ValueError(f"kernel table {name}: non-finite floats have no literal (store their bits as uint32)")
        items = [float(v).hex() + "f" for v in a.tolist()]
    elif a.dtype.name == "uint64":
        items = [f"{v:#x}ull" for v in a.tolist()]
    elif a.dtype.name == "int64":
        items = [f"{v}ll" for v in a.tolist()]
    else:
        items = [str(v) for v in a.tolist()]
    rows = [", ".join(items[i:i + 16]) for i in range(0, len(items), 16)]
    return f"static __device__ const {ctype} {name}[{len(items)}] = {{\n    " + ",\n    ".join(rows) + "\n};"


@lru_cache(maxsize=None)
def generated_tables(family: str) -> str:
    """C text of the lookup tables of a family, from ``gpuquant.quants.<family>.kernel_tables()`` (empty when
    the family module has none): ``static __device__ const <type> <name>[n]``, in the module's order."""
    import importlib

    try:
        mod = importlib.import_module(f"gpuquant.quants.{family}")
    except ModuleNotFoundError:
        return ""
    make = getattr(mod, "kernel_tables", None)
    if make is None:
        return ""
    parts = [f"// tables generated from gpuquant.quants.{family}.kernel_tables() (gpuquant/backends/kernels.py)",
             '#include "common.cuh"']
    parts += [_c_array(name, arr) for name, arr in make().items()]
    return "\n".join(parts) + "\n"


def source(family: str) -> str:
    """The text NVRTC compiles for ``kernels/<family>.cu``: the file, its layout checks, and a comment with a
    digest of the headers it may include (compile caches are keyed by source text, so an edit to a header
    must change the text too).

    Read and hashed once per process and kernel folder; ``source.cache_clear()`` forgets the texts read."""
    return _read_source(str(kernel_dir()), family)


@lru_cache(maxsize=None)
def _read_source(folder: str, family: str) -> str:
    import hashlib

    d = Path(folder)
    h = hashlib.sha256()
    for p in sorted(d.glob("*.cuh")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return (generated_tables(family) + (d / f"{family}.cu").read_text() + "\n" + layout_checks(family)
            + f"\n// gpuquant headers {h.hexdigest()[:16]}\n")


source.cache_clear = _read_source.cache_clear  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------------
# Launch plans
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """One kernel launch. ``kind`` ``"quantize"``: the quantize ABI on buffers (inp, "dst", qw, rowstat);
    ``"convert"``: ``(inp, out, n_per_row, nrows)`` (dequantize and rowstat kernels). Buffer roles:
    ``"src"`` (the job's source), ``"scratch"`` (float32 rows), ``"dst"``, ``"rowstat"`` (float per row)."""

    family: str
    kernel: str
    kind: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    sync: bool
    inp: str
    out: str
    use_qw: bool = False
    use_rowstat: bool = False
    use_status: bool = False  # the 4th pointer is the abort status word (ggml_aborts types)


@dataclass(frozen=True)
class LaunchPlan:
    """The launches of one slab and the scratch memory they need."""

    launches: tuple[Launch, ...]
    scratch_bytes: int  # float32 rows for a dequantized source (0: none)
    rowstat_bytes: int  # one float per row (0: none)
    status_bytes: int = 0  # the abort status word (4 bytes, set to NO_ABORT before the launches; 0: none)


def supports(src: T, dst: T, families: tuple[str, ...] | None = None) -> bool:
    """Whether a launch plan exists for ``src`` -> ``dst`` with the kernel files present."""
    fam = available_families() if families is None else families
    spec = KERNELS.get(dst)
    if spec is None or spec.family not in fam:
        return False
    if src in SOURCE_TYPES:
        return True
    s = KERNELS.get(src)
    return s is not None and s.dequantize and s.family in fam


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def launch_plan(src: T, dst: T, n_per_row: int, rows_per_expert: int, n_expert: int,
                has_quant_weights: bool) -> LaunchPlan:
    """The launches that turn one slab of ``src`` rows into ``dst`` rows, with their geometry."""
    spec = KERNELS[dst]
    nrows = rows_per_expert * n_expert
    launches: list[Launch] = []
    scratch_bytes = rowstat_bytes = 0
    inp, src_name = "src", SOURCE_TYPES.get(src)
    if src_name is None:  # requantize: dequantize into float32 scratch first
        s = KERNELS[src]
        if not s.dequantize:
            raise ValueError(f"no dequantize kernel for source type {src.name}")
        blocks = nrows * (n_per_row // QUANT_SIZES[src][0])
        launches.append(Launch(s.family, f"dequantize_{s.name}", "convert", (_ceil_div(blocks, s.threads), 1, 1),
                               (s.threads, 1, 1), s.sync, "src", "scratch"))
        scratch_bytes = nrows * n_per_row * 4
        inp, src_name = "scratch", "f32"
    use_rowstat = spec.rowstat and has_quant_weights
    if use_rowstat:
        launches.append(Launch("legacy", f"rowstat_sumsq_{src_name}", "convert",
                               (_ceil_div(nrows, ROWSTAT_THREADS), 1, 1), (ROWSTAT_THREADS, 1, 1), False,
                               inp, "rowstat"))
        rowstat_bytes = nrows * 4
    if spec.flat:
        items = _ceil_div(rows_per_expert * n_per_row, spec.item_elems)
    else:
        items = rows_per_expert * (n_per_row // spec.item_elems)
    launches.append(Launch(spec.family, spec.quantize_kernel(src_name, has_quant_weights), "quantize",
                           (max(1, _ceil_div(items, spec.items_per_block)), 1, n_expert), (spec.threads, 1, 1),
                           spec.sync, inp, "dst", use_qw=has_quant_weights, use_rowstat=use_rowstat,
                           use_status=spec.aborts))
    return LaunchPlan(tuple(launches), scratch_bytes, rowstat_bytes, 4 if spec.aborts else 0)


@dataclass(frozen=True)
class BoundLaunch:
    """A launch with its arguments: ``ptrs`` (device addresses, 0 for none) then ``ints``, in ABI order."""

    launch: Launch
    ptrs: tuple[int, ...]
    ints: tuple[int, ...]


def bind(p: LaunchPlan, job: SlabJob, bufs: dict[str, int], qw: int) -> list[BoundLaunch]:
    """The arguments of every launch of ``p``: ``bufs`` maps the buffer roles ("src", "dst", "scratch",
    "rowstat", "status") to device addresses, ``qw`` is the importance weights' address (0: none). Both
    kernel-running devices launch exactly these."""
    out = []
    for ln in p.launches:
        if ln.kind == "convert":  # (in, out, n_per_row, nrows)
            out.append(BoundLaunch(ln, (bufs[ln.inp], bufs[ln.out]), (job.n_per_row, job.nrows)))
        else:  # (src, dst, qw, rowstat or status, n_per_row, rows_per_expert, n_expert)
            fourth = bufs["status"] if ln.use_status else bufs["rowstat"] if ln.use_rowstat else 0
            out.append(BoundLaunch(ln, (bufs[ln.inp], bufs["dst"], qw if ln.use_qw else 0, fourth),
                                   (job.n_per_row, job.rows_per_expert, job.n_expert)))
    return out


def raise_if_aborted(job: SlabJob, status: int) -> None:
    """The status word of a ``ggml_aborts`` kernel after its launch -> ``GGMLAbort`` naming the first
    aborted work item (``row * blocks_per_row + block`` of the slab), as ``quantize_rows`` raises it."""
    if status == NO_ABORT:
        return
    per_row = job.n_per_row // KERNELS[job.dst_type].item_elems
    raise GGMLAbort(f"{job.dst_type.name}: ggml-quants.c aborts (GGML_ASSERT) on block {status % per_row} of "
                    f"row {status // per_row} of the slab; llama-quantize would crash on it")
