"""A deterministic safetensors writer: the same tensors and metadata give the same bytes in every process.

``safetensors.torch.save_file(..., metadata=...)`` passes the metadata through a Rust ``HashMap`` and writes
``__metadata__`` in that map's iteration order, which is randomly seeded per process: two identical runs write
identical tensors with differently ordered headers, so a file's sha256 (and the teacher sha256 a student
records) changes from run to run. This module writes the format itself:

- 8 bytes: ``N``, the header length, unsigned 64-bit little-endian;
- ``N`` bytes: a compact UTF-8 JSON header ``{"__metadata__": {...}, "<name>": {"dtype", "shape",
  "data_offsets"}, ...}`` padded with spaces to a multiple of 8 bytes. ``__metadata__`` comes first (only when
  metadata is given) with its keys sorted; the tensors follow in data order;
- the tensors' raw little-endian C-order bytes, in the layout safetensors itself uses: by descending dtype
  alignment (its ``Dtype`` enum order), then by name.

With at most one metadata key the output is byte-identical to ``safetensors.torch.save_file``; with more it
differs only in the (now sorted) order of the metadata keys. Atomic replacement is the caller's job
(:func:`cmkdtool.io.atomic.atomic_path`).
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Mapping
from typing import BinaryIO

import torch

# torch dtype name -> safetensors dtype string, for every dtype that safetensors.torch can read back.
_DTYPE_NAMES: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2": "F8_E5M2",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
}
DTYPES: dict[torch.dtype, str] = {
    getattr(torch, name): code for name, code in _DTYPE_NAMES.items() if hasattr(torch, name)
}

# safetensors' ``Dtype`` enum order (ascending alignment; safetensors 0.4-0.8). Data is laid out by descending
# rank, then by name, as ``safetensors::tensor::prepare`` sorts it.
_RANK: dict[str, int] = {
    code: i
    for i, code in enumerate(
        (
            "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
            "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
        )
    )
}  # fmt: skip

METADATA_KEY = "__metadata__"


def _raw_bytes(t: torch.Tensor) -> bytes:
    """C-order little-endian bytes of ``t`` (any layout, any device; 0-d and empty tensors included)."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    raw = t.view(torch.uint8).numpy()
    size = t.element_size()
    if sys.byteorder == "big" and size > 1 and t.dtype is not torch.complex64:
        raw = raw.view(f">u{size}").byteswap().view("u1")
    elif sys.byteorder == "big" and t.dtype is torch.complex64:  # two float32 parts, each swapped
        raw = raw.view(">u4").byteswap().view("u1")
    return raw.tobytes()


def _check(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> None:
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise ValueError(f"tensor names must be strings, got {name!r}")
        if name == METADATA_KEY:
            raise ValueError(f"'{METADATA_KEY}' is reserved and cannot name a tensor")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"tensor '{name}' is a {type(t).__name__}, expected a torch.Tensor")
        if t.layout != torch.strided:
            raise ValueError(f"tensor '{name}' is sparse ({t.layout}); make it dense with .to_dense()")
        if t.dtype not in DTYPES:
            raise ValueError(f"tensor '{name}' has dtype {t.dtype}, which safetensors cannot store")
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"safetensors metadata maps strings to strings, got {key!r}: {value!r}")


def _header(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> tuple[bytes, list[str]]:
    """(padded header bytes, tensor names in data order)."""
    _check(tensors, metadata)
    order = sorted(tensors, key=lambda n: (-_RANK[DTYPES[tensors[n].dtype]], n))
    head: dict[str, object] = {}
    if metadata is not None:
        head[METADATA_KEY] = {k: metadata[k] for k in sorted(metadata)}
    offset = 0
    for name in order:
        t = tensors[name]
        n = t.numel() * t.element_size()
        head[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    # serde_json's compact form: no spaces, non-ASCII as UTF-8, control characters escaped as Python does
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return text + b" " * (-len(text) % 8), order


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes :func:`save_safetensors` writes, in memory."""
    header, order = _header(tensors, metadata)
    return b"".join([struct.pack("<Q", len(header)), header, *(_raw_bytes(tensors[n]) for n in order)])


def save_safetensors(
    path_or_file: str | os.PathLike | BinaryIO,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (and string ``metadata``) as safetensors, deterministically.

    ``path_or_file`` is a path (created or truncated) or a binary file object open for writing. Tensors may be
    on any device and need not be contiguous; they are written one at a time (no second copy of the model).
    Raises ValueError for a non-string metadata key or value, a sparse tensor or a dtype safetensors lacks.
    """
    header, order = _header(tensors, metadata)
    if hasattr(path_or_file, "write"):
        _write(path_or_file, header, tensors, order)
        return
    with open(os.fspath(path_or_file), "wb") as f:
        _write(f, header, tensors, order)


def _write(f: BinaryIO, header: bytes, tensors: Mapping[str, torch.Tensor], order: list[str]) -> None:
    f.write(struct.pack("<Q", len(header)))
    f.write(header)
    for name in order:
        f.write(_raw_bytes(tensors[name]))
