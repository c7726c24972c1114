"""Safetensors checkpoints on disk: which file holds a tensor, lazy per-tensor reads, tensor digests.

Checkpoints name tensors either as the model does (`transformer.h.0.attn.c_proj.weight`) or without the
base-model prefix (old GPT-2 checkpoints: `h.0.attn.c_proj.weight`); `find` accepts both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pearzoo.digest import tensor_digest
from pearzoo.errors import InvalidInputError, NotFoundError

INDEX_NAME = "model.safetensors.index.json"

_TORCH_TO_ST = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


_ST_TO_TORCH = {name: dtype for dtype, name in _TORCH_TO_ST.items()}


def torch_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a safetensors dtype name (F32, BF16...), or None if unknown."""
    return _ST_TO_TORCH.get(name)


def st_dtype(dtype: torch.dtype) -> str:
    """The safetensors spelling of a torch dtype (F32, BF16...)."""
    try:
        return _TORCH_TO_ST[dtype]
    except KeyError as exc:
        raise InvalidInputError(f"dtype {dtype} has no safetensors name") from exc


def raw_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().to("cpu").contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def digest_of(name: str, tensor: torch.Tensor) -> str:
    """Digest of an in-memory tensor, equal to `digest_of_file_tensor` for the same bytes on disk."""
    return tensor_digest(name, st_dtype(tensor.dtype), tuple(tensor.shape), raw_bytes(tensor))


class Checkpoint:
    """A directory of safetensors files (single file or sharded with an index)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index = self.directory / INDEX_NAME
        self.weight_map: dict[str, str] = {}
        if index.is_file():
            try:
                self.weight_map = dict(json.loads(index.read_text())["weight_map"])
            except (KeyError, ValueError, TypeError) as exc:
                raise InvalidInputError(f"{index}: not a valid safetensors index") from exc
        else:
            from safetensors import safe_open

            for f in sorted(self.directory.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as fh:
                    for key in fh.keys():
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

    def read(self, stored_name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.directory / self.weight_map[stored_name]), framework="pt") as fh:
            return fh.get_tensor(stored_name)

    def digest(self, name: str, prefix: str | None = None) -> str:
        """Digest of a stored tensor, keyed by the model's own name (`name`), not the stored one."""
        return digest_of(name, self.read(self.find(name, prefix)))


def model_tensor(model: Any, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError as exc:
        raise NotFoundError(f"model has no tensor '{name}'", tensor=name) from exc
