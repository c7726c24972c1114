"""Read, verify and write manifests. Writes are atomic; reads check the schema and the digest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pearzoo.atomic import atomic_write_text, write_error
from pearzoo.digest import document_digest
from pearzoo.document import check_version, one_line, parse_text, read_capped, validate_into
from pearzoo.errors import IntegrityError, InvalidInputError
from pearzoo.manifest.bounds import check_coefficients
from pearzoo.manifest.schema import SUPPORTED_MANIFEST_VERSIONS, Manifest

__all__ = [
    "atomic_write_text",  # re-exported for callers that imported it from here before pearzoo.atomic existed
    "check_published_schema",
    "manifest_digest",
    "manifest_json",
    "parse_manifest",
    "read_manifest",
    "read_manifest_document",
    "seal",
    "write_manifest",
]


def manifest_digest(document: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a manifest document without its `digest` field."""
    return document_digest({k: v for k, v in document.items() if k != "digest"})


def seal(document: dict[str, Any]) -> dict[str, Any]:
    """Return the document with `digest` set."""
    body = {k: v for k, v in document.items() if k != "digest"}
    return {**body, "digest": manifest_digest(body)}


def parse_manifest(document: Any, *, source: str, verify_digest: bool = True) -> Manifest:
    """Validate a manifest document, its coefficient bounds and (by default) its digest.

    Raises:
        InvalidInputError: not a mapping, an unknown schema_version, a schema violation (file:field), or a
            coefficient that is not finite or outside the recipe's `train.tau_range`.
        IntegrityError: the digest does not match the content.
    """
    check_version(
        document, source=source, supported=SUPPORTED_MANIFEST_VERSIONS, not_a_mapping="a manifest must be a JSON object"
    )
    manifest = validate_into(Manifest, document, source=source)
    if verify_digest:
        actual = manifest_digest(document)
        if actual != manifest.digest:
            raise IntegrityError(
                f"{source}: digest mismatch (recorded {manifest.digest[:12]}, content {actual[:12]}): the manifest was modified",
                path=source,
                expected=manifest.digest,
                actual=actual,
            )
    # After the digest: a tampered coefficient is reported as tampering (exit 5), a sealed one out of range as
    # invalid input (exit 3): the build that sealed it was wrong, or its author is hostile.
    check_coefficients(manifest, source=source)
    return manifest


def read_manifest_document(path: str | Path) -> dict[str, Any]:
    """The raw JSON document of a manifest file, unvalidated (size-capped, depth-capped).

    Raises:
        NotFoundError: no such file.
        InvalidInputError: unreadable, too large, not JSON, or nested too deep.
    """
    return parse_text(read_capped(path, what="manifest"), source=str(path))


def check_published_schema(document: Any, *, source: str) -> None:
    """Validate against the committed JSON Schema, which other tools use; it must agree with the model.

    Raises:
        InvalidInputError: naming `source` and the offending field.
    """
    import jsonschema

    from pearzoo.schema_export import load_schema

    try:
        jsonschema.validate(document, load_schema("manifest"))
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "<root>"
        # jsonschema quotes the offending value, which comes from the file: one line, and not all of it.
        message = one_line(f"{source}: {where}: {exc.message}")
        raise InvalidInputError(message if len(message) <= 300 else message[:297] + "...", path=source, field=where) from exc


def read_manifest(path: str | Path, *, verify_digest: bool = True) -> Manifest:
    """Read and verify a manifest file.

    Raises:
        NotFoundError: no such file.
        InvalidInputError: not JSON, or fails the schema.
        IntegrityError: digest mismatch.
    """
    return parse_manifest(read_manifest_document(path), source=str(path), verify_digest=verify_digest)


def manifest_json(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"


def write_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write a manifest atomically after checking that its digest matches its content."""
    document = manifest.model_dump(mode="json")
    if manifest_digest(document) != manifest.digest:
        raise IntegrityError("refusing to write a manifest whose digest does not match its content")
    try:
        return atomic_write_text(path, manifest_json(manifest))
    except OSError as exc:
        raise write_error(exc, path) from exc
