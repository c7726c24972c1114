"""Canonical JSON (RFC 8785) and sha256 digests of documents and tensors."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import rfc8785

from pearzoo.errors import InvalidInputError


def canonical_json(document: Any) -> bytes:
    """RFC 8785 canonical bytes of a JSON-compatible value.

    Raises:
        InvalidInputError: the value holds NaN or infinity (not representable in RFC 8785) or a
            non-JSON type.
    """
    try:
        return rfc8785.dumps(document)
    except (rfc8785.FloatDomainError, rfc8785.IntegerDomainError, rfc8785.CanonicalizationError) as exc:
        raise InvalidInputError(f"not canonical JSON: {exc}") from exc


def document_digest(document: Any) -> str:
    """sha256 hex of the canonical JSON of `document`."""
    return hashlib.sha256(canonical_json(document)).hexdigest()


def tensor_digest(name: str, dtype: str, shape: list[int] | tuple[int, ...], data: bytes | memoryview) -> str:
    """sha256 hex over a tensor's name, dtype, shape and raw little-endian bytes.

    The header is canonical JSON so that two tensors differing only in name or shape never collide.
    `dtype` is the safetensors spelling (``F32``, ``BF16``...), the same whether the bytes come from a
    file or from memory.
    """
    header = canonical_json({"dtype": dtype, "name": name, "shape": list(shape)})
    h = hashlib.sha256()
    h.update(len(header).to_bytes(8, "little"))
    h.update(header)
    h.update(data)
    return h.hexdigest()


FILE_CHUNK = 16 * 2**20


def file_digest(path: str | Path) -> str:
    """sha256 hex of a file's bytes (what the Hub records as an LFS file's sha256), read in chunks."""
    h = hashlib.sha256()
    buf = bytearray(FILE_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()
