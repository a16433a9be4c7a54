"""``QuantizeConfig``: one quantization job's options, declared once.

The CLI builds one from its arguments, the Python API from keywords (``quantize_file(src, dst, "Q4_K_M",
imatrix=...)``), and everything below takes the object. The llama-quantize options keep their names and
meaning (``tools/quantize/quantize.cpp``); the rest are gpuquant's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class QuantizeConfig:
    """What to make of a model, and how. ``ftype`` is a llama-quantize QUANT_OPTIONS name (Q4_K_M, IQ4_NL,
    COPY, ...) or its number."""

    ftype: str = "Q4_K_M"
    # -- llama-quantize's options ------------------------------------------------------------------------
    allow_requantize: bool = False
    leave_output_tensor: bool = False
    pure: bool = False
    imatrix: str | None = None  # GGUF or legacy .dat importance matrix file
    include_weights: list[str] = field(default_factory=list)
    exclude_weights: list[str] = field(default_factory=list)
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: list[tuple[str, str]] = field(default_factory=list)  # (regex, ggml type), first match wins
    override_kv: list[str] = field(default_factory=list)  # KEY=TYPE:VALUE
    prune_layers: list[int] = field(default_factory=list)
    keep_split: bool = False
    dry_run: bool = False
    # -- gpuquant's ----------------------------------------------------------------------------------------
    device: Any = "auto"  # a --device value or an open backends.Device
    threads: int | None = None  # CPU threads (None: all cores)
    slab_bytes: int | None = None  # rows per slab (None: from the device's memory)
    force: bool = False  # overwrite an existing output (with resume: start over a partial output made differently)
    resume: bool = False  # keep a partial output and a journal beside each output; continue them (gpuquant.resume)

    @classmethod
    def of(cls, config: "QuantizeConfig | str | None" = None, **options: Any) -> "QuantizeConfig":
        """A config from another one (or an ftype name) with ``options`` replaced; unknown names are an error
        naming them."""
        base = cls(ftype=config) if isinstance(config, str) else (config or cls())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown quantization option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(base, **options)
