"""Safetensors checkpoints on disk: the layout (index, headers, offsets), lazy per-tensor reads, tensor digests.

The only module that parses safetensors framing. A file is trusted only after `read_layout` checked it the
way the safetensors library does (`Metadata::validate`): a JSON object header, every entry with a known
dtype, a shape of non-negative ints and `data_offsets` whose length is the shape's byte size, entries
back to back from 0, the last ending exactly at the end of the file. Anything else is a truncated or
corrupt file (`IntegrityError`, exit 5, naming the file), found before a byte of it is folded.

Checkpoints name tensors either as the model does (`transformer.h.0.attn.c_proj.weight`) or without the
base-model prefix (old GPT-2 checkpoints: `h.0.attn.c_proj.weight`); `find` accepts both. Shard names
come from data (the index's `weight_map`): each must be a file name of the model folder that resolves
inside it (`source.confined`).

torch is imported lazily: the patch CLI imports this module and `pearzoo patch --help` must stay fast.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pearzoo.digest import tensor_digest
from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError

INDEX_NAME = "model.safetensors.index.json"
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
MAX_INDEX = 64 * 2**20  # a weight_map of a million tensors is ~100 bytes each

# Bits per element of every safetensors dtype (safetensors 0.8: `Dtype` and its `bitsize`); exactly its list,
# which the fuzz tests check against the library.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "F64": 64, "I64": 64, "U64": 64, "C64": 64,
}  # fmt: skip
_TORCH_NAMES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file: dtype name, shape, and its byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Layout:
    """A validated safetensors file: its raw header bytes (8-byte size + JSON), the parsed header, entries."""

    path: Path
    header: dict[str, Any]
    raw_header: bytes
    entries: dict[str, Entry]
    file_size: int

    @property
    def data_start(self) -> int:
        return len(self.raw_header)

    @property
    def data_len(self) -> int:
        return self.file_size - self.data_start

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.get("__metadata__") or {}


def _corrupt(path: Path, why: str) -> IntegrityError:
    return IntegrityError(f"{path}: truncated or corrupt safetensors file ({why})", path=str(path))


def _read_exact(fh: BinaryIO, n: int, path: Path) -> bytes:
    parts, left = [], n
    while left > 0:
        chunk = fh.read(left)
        if not chunk:
            raise _corrupt(path, f"ends {left} bytes into its header")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_layout(fh: BinaryIO, path: Path) -> Layout:
    """Read and validate the header of the safetensors file open as `fh` (positioned at 0), against its size.

    Leaves `fh` at the start of the data section.

    Raises:
        IntegrityError: the file is truncated, its header is not a safetensors header, or its offsets do not
            tile the data section exactly (exit 5, naming the file).
    """
    size = os.fstat(fh.fileno()).st_size
    if size < 8:
        raise _corrupt(path, f"{size} bytes")
    prefix = _read_exact(fh, 8, path)
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER or 8 + n > size:
        raise _corrupt(path, f"header of {n} bytes in a file of {size}")
    raw = _read_exact(fh, n, path)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _corrupt(path, "header is not JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    entries = _entries(header, path, size - 8 - n)
    return Layout(path, header, prefix + raw, entries, size)


def _entries(header: dict[str, Any], path: Path, data_len: int) -> dict[str, Entry]:
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise _corrupt(path, "__metadata__ is not a map of strings")
    entries: dict[str, Entry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _corrupt(path, f"entry {name!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise _corrupt(path, f"tensor {name!r} has an unknown dtype {str(dtype)[:20]!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise _corrupt(path, f"tensor {name!r} has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise _corrupt(path, f"tensor {name!r} has invalid data_offsets")
        begin, end = offsets
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if not (0 <= begin <= end) or bits % 8 or end - begin != bits // 8:
            raise _corrupt(path, f"tensor {name!r}: data_offsets {begin}..{end} do not fit dtype {dtype} and shape {shape}")
        entries[name] = Entry(dtype, tuple(shape), begin, end)
    pos = 0
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin != pos:
            raise _corrupt(path, f"tensor {name!r} starts at {e.begin}, expected {pos}")
        pos = e.end
    if pos != data_len:
        what = "truncated" if pos > data_len else "trailing bytes"
        raise _corrupt(path, f"{what}: the tensors end at {pos}, the data section has {data_len} bytes")
    return entries


def read_file_layout(path: Path) -> Layout:
    """`read_layout` of a file by path (opened read-only).

    Raises:
        IntegrityError: as `read_layout`. NotFoundError / InvalidInputError: the file is missing or unreadable.
    """
    try:
        with open(path, "rb") as fh:
            return read_layout(fh, path)
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path}: no such file", path=str(path)) from exc
    except IsADirectoryError as exc:
        raise InvalidInputError(f"{path}: a directory, not a safetensors file", path=str(path)) from exc
    except PermissionError as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc.strerror})", path=str(path)) from exc


def torch_dtype(name: str) -> Any:
    """The torch dtype of a safetensors dtype name (F32, BF16...), or None if torch has no such dtype here."""
    import torch

    by_st = {st: getattr(torch, t) for t, st in _TORCH_NAMES.items()}
    return by_st.get(name)


def st_dtype(dtype: Any) -> str:
    """The safetensors spelling of a torch dtype (F32, BF16...)."""
    try:
        return _TORCH_NAMES[str(dtype).removeprefix("torch.")]
    except KeyError as exc:
        raise InvalidInputError(f"dtype {dtype} has no safetensors name") from exc


def raw_bytes(tensor: Any) -> bytes:
    import torch

    t = tensor.detach().to("cpu").contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def digest_of(name: str, tensor: Any) -> str:
    """Digest of an in-memory tensor, equal to `Checkpoint.digest` for the same bytes on disk."""
    return tensor_digest(name, st_dtype(tensor.dtype), tuple(tensor.shape), raw_bytes(tensor))


def read_index(path: Path) -> dict[str, str]:
    """The `weight_map` of a `model.safetensors.index.json` (tensor name -> shard file name), type-checked.

    Raises:
        InvalidInputError: not JSON, no `weight_map` object of strings, or too large to be an index.
    """
    try:
        if path.stat().st_size > MAX_INDEX:
            raise InvalidInputError(f"{path}: not a safetensors index (over {MAX_INDEX >> 20} MiB)", path=str(path))
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{path}: not a valid safetensors index (not readable JSON)", path=str(path)) from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise InvalidInputError(f"{path}: not a valid safetensors index (weight_map must map names to file names)", path=str(path))
    return dict(weight_map)


class Checkpoint:
    """A directory of safetensors files (single file or sharded with an index), every file validated.

    Raises (on construction):
        UnsafeInputError: a shard name that is not a file name of the folder, or that resolves outside it.
        IntegrityError: a shard that is truncated or corrupt, or lacks a tensor its index places in it.
        InvalidInputError: an unreadable index. NotFoundError: no safetensors weights, or a listed shard is missing.
    """

    def __init__(self, directory: str | Path) -> None:
        from pearzoo.source import confined

        self.directory = Path(directory)
        index = self.directory / INDEX_NAME
        self.weight_map: dict[str, str] = {}
        self.layouts: dict[str, Layout] = {}
        if index.is_file() or index.is_symlink():
            confined(self.directory, INDEX_NAME, what="the safetensors index")
            self.weight_map = read_index(index)
            for name in sorted(set(self.weight_map.values())):
                self.layouts[name] = read_file_layout(confined(self.directory, name, what=f"{index}: weight_map"))
            for tensor, name in self.weight_map.items():
                if tensor not in self.layouts[name].entries:
                    raise IntegrityError(f"{self.directory / name}: tensor {tensor} is not in this shard, as its index says", path=str(self.directory / name))
        else:
            for f in sorted(self.directory.glob("*.safetensors")):
                self.layouts[f.name] = read_file_layout(confined(self.directory, f.name, what="weights"))
                for key in self.layouts[f.name].entries:
                    self.weight_map[key] = f.name
        if not self.weight_map:
            raise NotFoundError(f"{self.directory}: no safetensors weights", path=str(self.directory))

    @property
    def files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def find(self, name: str, prefix: str | None = None) -> str:
        """The name under which `name` is stored (exact, or without `prefix.`)."""
        if name in self.weight_map:
            return name
        if prefix and name.startswith(prefix + "."):
            short = name[len(prefix) + 1 :]
            if short in self.weight_map:
                return short
        raise NotFoundError(f"{self.directory}: tensor '{name}' not in the checkpoint", tensor=name)

    def read_bytes(self, stored_name: str) -> bytes:
        """The raw bytes of a stored tensor (its validated byte range)."""
        layout = self.layouts[self.weight_map[stored_name]]
        e = layout.entries[stored_name]
        with open(layout.path, "rb") as fh:
            fh.seek(layout.data_start + e.begin)
            data = fh.read(e.end - e.begin)
        if len(data) != e.end - e.begin:
            raise _corrupt(layout.path, "shorter than when it was checked")
        return data

    def read(self, stored_name: str) -> Any:
        import torch

        layout = self.layouts[self.weight_map[stored_name]]
        e = layout.entries[stored_name]
        dtype = torch_dtype(e.dtype)
        if dtype is None:
            raise InvalidInputError(f"{layout.path}: tensor {stored_name} has dtype {e.dtype}, which torch cannot read here")
        data = bytearray(self.read_bytes(stored_name))
        return torch.frombuffer(data, dtype=dtype).reshape(e.shape) if data else torch.empty(e.shape, dtype=dtype)

    def digest(self, name: str, prefix: str | None = None) -> str:
        """Digest of a stored tensor, keyed by the model's own name (`name`), not the stored one."""
        stored = self.find(name, prefix)
        e = self.layouts[self.weight_map[stored]].entries[stored]
        return tensor_digest(name, e.dtype, e.shape, self.read_bytes(stored))


def model_tensor(model: Any, name: str) -> Any:
    try:
        return model.get_parameter(name)
    except AttributeError as exc:
        raise NotFoundError(f"model has no tensor '{name}'", tensor=name) from exc
