"""Binding manifests to base weights: digests of the tensors a fold touches and of every weight file, and
their verification.

Schema 2 binds the whole base: `base.files` holds the sha256 of every weight file (pip's hash-checking mode:
every artifact read must match a recorded hash, and a file without one is refused). For a Hub model that is
the file's LFS sha256, which huggingface_hub also uses as the blob's name in its cache, so a cached file can
be compared with the manifest by name before a byte of it is read (`cache_blob_sha256`), and with the Hub's
metadata before it is downloaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pearzoo.errors import IntegrityError
from pearzoo.source import ModelSource

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


def weight_files(source: ModelSource) -> list[str]:
    """The weight files a source is read from, by name in its folder (each confined to the folder): the GGUF
    file; else the safetensors files of its checkpoint (the index's, or every `*.safetensors`); else the
    pickle files transformers loads (`pytorch_model.bin` or its index's shards)."""
    from pearzoo.source import confined

    if source.gguf_file:
        return [source.gguf_file]
    if any(source.path.glob("*.safetensors")):
        from pearzoo.shards import Checkpoint

        return Checkpoint(source.path).files
    from transformers.utils import WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    index = source.path / WEIGHTS_INDEX_NAME
    if index.is_file():
        from pearzoo.shards import read_index

        names = sorted(set(read_index(confined(source.path, WEIGHTS_INDEX_NAME, what="the pickle index")).values()))
    else:
        names = [WEIGHTS_NAME] if (source.path / WEIGHTS_NAME).is_file() else []
    if not names:
        from pearzoo.errors import NotFoundError

        raise NotFoundError(
            f"{source.path}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} (the pickle weights transformers loads)",
            path=str(source.path),
        )
    for name in names:
        confined(source.path, name, what="weights")
    return names


def cache_blob_sha256(path: Path) -> str | None:
    """The sha256 that names the blob a huggingface_hub snapshot file links to (`../../blobs/<sha256>`), or None
    when `path` is not such a link. huggingface_hub names a blob by its etag, which for an LFS file is its sha256."""
    import os

    if not path.is_symlink() or path.parent.parent.name != "snapshots":
        return None
    name = Path(os.readlink(path)).name
    return name if _SHA256.match(name) else None


def base_files(source: ModelSource) -> dict[str, str]:
    """sha256 of every weight file of `source` (`weight_files`), by file name: `Manifest.base.files`.

    Raises:
        IntegrityError: a huggingface_hub cache blob whose bytes are not the sha256 it is named by (a corrupt
            cache: re-download it).
    """
    from pearzoo.digest import file_digest

    out = {}
    for name in weight_files(source):
        path = source.path / name
        out[name] = file_digest(path)
        named = cache_blob_sha256(path)
        if named is not None and named != out[name]:
            raise IntegrityError(
                f"{path}: the cached blob is named {named[:12]} but its bytes hash to {out[name][:12]}: the Hugging Face cache is corrupt",
                hint="delete it and download again (huggingface-cli download --force-download)",
                path=str(path),
            )
    return out


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


def file_mismatch(model_id: str, name: str, expected: str, actual: str | None) -> IntegrityError:
    """The error for a weight file whose sha256 is not the manifest's (or that is missing or unbound)."""
    if actual is None:
        return IntegrityError(f"{model_id} is not the manifest's base: weight file {name} is missing", file=name, expected=expected, actual=None)
    return IntegrityError(
        f"{model_id} is not the manifest's base: weight file {name} differs (expected sha256 {expected[:12]}, found {actual[:12]})",
        file=name,
        expected=expected,
        actual=actual,
    )
