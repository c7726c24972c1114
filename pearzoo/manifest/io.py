"""Read, verify and write manifests. Writes are atomic; reads check the schema and the digest."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pearzoo.digest import document_digest
from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError, validation_location
from pearzoo.manifest.schema import SUPPORTED_MANIFEST_VERSIONS, Manifest


def manifest_digest(document: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a manifest document without its `digest` field."""
    return document_digest({k: v for k, v in document.items() if k != "digest"})


def seal(document: dict[str, Any]) -> dict[str, Any]:
    """Return the document with `digest` set."""
    body = {k: v for k, v in document.items() if k != "digest"}
    return {**body, "digest": manifest_digest(body)}


def parse_manifest(document: Any, *, source: str, verify_digest: bool = True) -> Manifest:
    """Validate a manifest document and (by default) its digest.

    Raises:
        InvalidInputError: not a mapping, an unknown schema_version, or a schema violation (file:field).
        IntegrityError: the digest does not match the content.
    """
    if not isinstance(document, dict):
        raise InvalidInputError(f"{source}: a manifest must be a JSON object", path=source)
    version = document.get("schema_version")
    if version not in SUPPORTED_MANIFEST_VERSIONS or isinstance(version, bool):
        readable = " and ".join(str(v) for v in SUPPORTED_MANIFEST_VERSIONS)
        raise InvalidInputError(
            f"{source}: schema_version: {version!r} is not supported (this pearzoo reads {readable})",
            path=source,
            field="schema_version",
        )
    try:
        manifest = Manifest.model_validate(document)
    except ValidationError as exc:
        loc, msg = validation_location(exc)
        raise InvalidInputError(f"{source}: {loc}: {msg}", path=source, field=loc) from exc
    if verify_digest:
        actual = manifest_digest(document)
        if actual != manifest.digest:
            raise IntegrityError(
                f"{source}: digest mismatch (recorded {manifest.digest[:12]}, content {actual[:12]}): the manifest was modified",
                path=source,
                expected=manifest.digest,
                actual=actual,
            )
    return manifest


def read_manifest_document(path: str | Path) -> dict[str, Any]:
    """The raw JSON document of a manifest file, unvalidated.

    Raises:
        NotFoundError: no such file.
        InvalidInputError: unreadable, or not JSON.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFoundError(f"{p}: manifest not found", path=str(p)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{p}: cannot read manifest: {exc}", path=str(p)) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{p}: not valid JSON (line {exc.lineno})", path=str(p)) from exc


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
        raise InvalidInputError(f"{source}: {where}: {exc.message}", path=source, field=where) from exc


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a temp file beside `path`, then rename: readers never see a partial file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file owner-only (0600); a manifest or an index served by a web server must get
        # the mode a plain open() would give it.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def write_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write a manifest atomically after checking that its digest matches its content."""
    document = manifest.model_dump(mode="json")
    if manifest_digest(document) != manifest.digest:
        raise IntegrityError("refusing to write a manifest whose digest does not match its content")
    return atomic_write_text(path, manifest_json(manifest))
