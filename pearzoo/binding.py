"""Binding manifests to base weights: digests of the tensors a fold touches, and their verification."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pearzoo.errors import IntegrityError
from pearzoo.source import ModelSource


def base_digests(source: ModelSource, model: Any, names: Iterable[str]) -> dict[str, str]:
    """Digests of `names`, from the safetensors files when the source has them, else from the loaded model.

    The file bytes are what `pearzoo patch` reads, whatever dtype a build loaded the model in; a GGUF base
    is digested as dequantized in memory, which is also what patch reads.
    """
    from pearzoo.shards import Checkpoint, digest_of, model_tensor

    names = sorted(set(names))
    if source.gguf_file is None:
        ckpt = Checkpoint(source.path)
        prefix = getattr(model, "base_model_prefix", None)
        return {name: ckpt.digest(name, prefix) for name in names}
    return {name: digest_of(name, model_tensor(model, name)) for name in names}


def verify_base(expected: dict[str, str], actual: dict[str, str], model_id: str) -> None:
    """Raise `IntegrityError` naming the first tensor whose digest differs.

    Raises:
        IntegrityError: a tensor differs or is missing: the model is not the manifest's base.
    """
    for name in sorted(expected):
        if actual.get(name) != expected[name]:
            got = actual.get(name)
            raise IntegrityError(
                f"{model_id} is not the manifest's base: tensor {name} differs "
                f"(expected {expected[name][:12]}, found {got[:12] if got else 'nothing'})",
                tensor=name,
                expected=expected[name],
                actual=got,
            )
