"""A registry in a local directory (or a git checkout): readable, and writable by `publish`.

Manifests are immutable: a path is written once, atomically, and never replaced. The index is rewritten
atomically (temp file + `os.replace`) under a file lock, so concurrent publishers serialize and none is lost.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from pearzoo.atomic import atomic_write_text, write_error
from pearzoo.errors import PearzooError, IntegrityError, InvalidInputError, LockTimeoutError, NotFoundError, ResourceError
from pearzoo.manifest.io import check_published_schema, parse_manifest, read_manifest, read_manifest_document
from pearzoo.manifest.schema import Manifest
from pearzoo.registry.base import (
    INDEX_NAME,
    TRUST_NAME,
    EntrySignature,
    Index,
    IndexEntry,
    Registry,
    entry_for,
    manifest_relpath,
    parse_index,
    render_index,
    signature_relpath,
    TrustKey,
    TrustPolicy,
)

logger = logging.getLogger(__name__)

LOCK_NAME = ".index.lock"
LOCK_TIMEOUT_S = 60.0


class LocalRegistry(Registry):
    """A registry rooted at a directory.

    Example:
        >>> registry = LocalRegistry("registry")
        >>> entry = registry.publish("smollm2.pear.json")
        >>> registry.get(entry.model_id).digest == entry.digest
        True
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.location = str(self.root)

    def describe(self, relpath: str) -> str:
        return str(self.root / relpath)

    def read_bytes(self, relpath: str) -> bytes:
        path = self.root / relpath
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFoundError(f"{path}: not found", path=str(path)) from exc
        except OSError as exc:
            raise ResourceError(f"{path}: cannot read: {exc.strerror or exc}", path=str(path)) from exc

    def publish(self, path: str | Path, *, sign_key: str | Path | None = None) -> IndexEntry:
        """Validate a manifest file and add it to the registry.

        Checks, in order: the pydantic model, the digest and the coefficient bounds, the committed JSON Schema,
        a safe model id, and that the recipe exists at the manifest's version. Then, under the registry's lock,
        writes the manifest to `manifests/models--org--name/<digest>.json`, with `sign_key` its OMS signature
        `<digest>.sig` beside it (signed over the bytes stored), and appends it to the index last: a publish
        killed at any point leaves the index as it was or complete, and re-publishing finishes it.

        Args:
            path (`str` or `Path`): the manifest file.
            sign_key (`str` or `Path`, *optional*): an EC private key (PEM) to sign the manifest with.

        Returns:
            `IndexEntry`: the new entry.

        Raises:
            NotFoundError: no such file, or the recipe (at that version) is unknown.
            InvalidInputError: the manifest fails its schema, or is already published.
            UnsafeInputError: the model id could escape the registry directory.
            IntegrityError: the digest does not match the content, or a different file sits at its path.
            LockTimeoutError: another publisher held the lock too long.
            ResourceError / DiskSpaceError: the registry directory cannot be written (exit 6).
        """
        from pearzoo.signing import signing_key_fingerprint

        manifest, document = _read_for_publish(Path(path))
        relpath = manifest_relpath(manifest.base.model_id, manifest.digest)  # validates the id first
        check_recipe(manifest, source=str(path))
        if sign_key is not None:
            signing_key_fingerprint(sign_key)  # a bad key fails before the registry is touched
        text = json.dumps(document, indent=2) + "\n"
        try:
            with _locked(self.root):
                entry = self._publish_locked(manifest, relpath, text, sign_key)
        except OSError as exc:
            if isinstance(exc, PearzooError):
                raise
            raise write_error(exc, self.root) from exc
        logger.info("published %s %s to %s", manifest.base.model_id, manifest.digest, self.root)
        return entry

    def _publish_locked(self, manifest: Manifest, relpath: str, text: str, sign_key: str | Path | None) -> IndexEntry:
        from pearzoo.signing import sign_path

        index = self._index_or_empty()
        self._refuse_conflicts(index, manifest, relpath)
        target = self.root / relpath
        if not target.exists():
            atomic_write_text(target, text)
        signature = None
        if sign_key is not None:
            # Signed after the manifest is in place, over the stored bytes (they are what readers fetch), and
            # written atomically: a kill leaves no index entry, and re-publishing signs again.
            key_id = sign_path(target, sign_key, self.root / signature_relpath(manifest.base.model_id, manifest.digest))
            signature = EntrySignature(fingerprint=key_id)
        entry = entry_for(manifest, datetime.now(timezone.utc).isoformat(timespec="seconds"), signature)
        updated = Index(entries=[*index.entries, entry])
        atomic_write_text(self.root / INDEX_NAME, render_index(updated))
        return entry

    def update_trust(
        self, *, add: tuple[Path, str] | None = None, remove: str | None = None, require: bool | None = None
    ) -> TrustPolicy:
        """Change the registry's `trust.json` under the publish lock (atomic rewrite).

        Args:
            add (`(Path, str)`, *optional*): a PEM public key file and who holds it; a key already listed is
                not added twice (same fingerprint).
            remove (`str`, *optional*): a key fingerprint (or a prefix of 8+ characters) to drop.
            require (`bool`, *optional*): set `require_signature`.

        Returns:
            `TrustPolicy`: the policy as written.

        Raises:
            NotFoundError: no key with that fingerprint; no policy to change.
            InvalidInputError: a bad key or name, or removing the last key (delete trust.json instead).
            ResourceError: the registry cannot be written.
        """
        from pearzoo.document import validate_into
        from pearzoo.signing import fingerprint, read_public_key

        try:
            with _locked(self.root):
                current = self.trust_policy()
                keys = list(current.keys) if current else []
                if add is not None:
                    pem = read_public_key(add[0])
                    if fingerprint(pem) not in {fingerprint(k.public_key.encode("ascii")) for k in keys}:
                        keys.append(validate_into(TrustKey, {"name": add[1], "public_key": pem.decode("ascii")}, source="--name"))
                if remove is not None:
                    if len(remove) < 8:
                        raise InvalidInputError(f"fingerprint '{remove}': give at least 8 characters", field="fingerprint")
                    kept = [k for k in keys if not fingerprint(k.public_key.encode("ascii")).startswith(remove.lower())]
                    if len(kept) == len(keys):
                        raise NotFoundError(f"{self.root / TRUST_NAME}: no key with fingerprint {remove}")
                    keys = kept
                if not keys:
                    raise InvalidInputError(
                        f"{self.root / TRUST_NAME}: a trust policy needs at least one key",
                        hint=f"to stop requiring signatures, delete {self.root / TRUST_NAME}",
                    )
                policy = TrustPolicy(
                    require_signature=require if require is not None else (current.require_signature if current else True),
                    keys=keys,
                )
                atomic_write_text(self.root / TRUST_NAME, json.dumps(policy.model_dump(mode="json"), indent=2) + "\n")
        except OSError as exc:
            if isinstance(exc, PearzooError):
                raise
            raise write_error(exc, self.root) from exc
        return policy

    def _index_or_empty(self) -> Index:
        path = self.root / INDEX_NAME
        if not path.exists():
            return Index()  # publishing into a new directory creates the registry
        return parse_index(self.read_bytes(INDEX_NAME), source=str(path))

    def _refuse_conflicts(self, index: Index, manifest: Manifest, relpath: str) -> None:
        model_id = manifest.base.model_id
        existing = index.versions(model_id)
        if existing and existing[0].model_id != model_id:
            raise InvalidInputError(
                f"registry {self.root} lists this model as '{existing[0].model_id}', not '{model_id}'",
                repo_id=model_id,
            )
        target = self.root / relpath
        listed = index.find(model_id, manifest.digest) is not None
        if target.exists():
            stored = _digest_of_file(target)
            if stored != manifest.digest:
                raise IntegrityError(
                    f"{target}: conflicts: a different file is stored under digest {manifest.digest[:12]}",
                    path=str(target),
                    expected=manifest.digest,
                    actual=stored,
                )
            if listed:
                raise InvalidInputError(
                    f"{model_id} {manifest.digest[:12]} is already published in {self.root}",
                    repo_id=model_id,
                    digest=manifest.digest,
                )
            # An interrupted publish wrote the file but not the index: re-publishing completes it.
        elif listed:
            raise IntegrityError(
                f"registry {self.root} lists {model_id} {manifest.digest[:12]} but {target} is missing",
                path=str(target),
            )


def _read_for_publish(path: Path) -> tuple[Manifest, dict]:
    document = read_manifest_document(path)
    manifest = parse_manifest(document, source=str(path))
    check_published_schema(document, source=str(path))
    return manifest, document


def check_recipe(manifest: Manifest, *, source: str) -> None:
    """The manifest's recipe must exist in the catalog at its version, and its settings must match its digest.

    Raises:
        NotFoundError: no recipe with that id, or not at that version.
        IntegrityError: `recipe.settings` do not hash to `recipe.digest`.
    """
    from pearzoo.recipe.catalog import list_recipe_files
    from pearzoo.digest import document_digest
    from pearzoo.recipe.load import load_recipe, parse_recipe

    ref = manifest.recipe
    # Look the id up among the catalog's files; never treat a manifest's recipe id as a path.
    entry = next((e for e in list_recipe_files() if e.id == ref.id), None)
    if entry is None:
        raise NotFoundError(f"{source}: recipe '{ref.id}' not found (see `pearzoo recipes list`)", recipe=ref.id)
    recipe = load_recipe(entry.path)
    if recipe.version != ref.version:
        raise NotFoundError(
            f"{source}: recipe {ref.id} {ref.version} not found (this pearzoo has {ref.id} {recipe.version})",
            recipe=ref.id,
        )
    used = parse_recipe(ref.settings, source=f"{source}: recipe.settings")
    if used.id != ref.id or used.version != ref.version:
        raise IntegrityError(f"{source}: recipe.settings are {used.id} {used.version}, not {ref.id} {ref.version}")
    # The digest covers the settings exactly as recorded, so a later pearzoo that adds a defaulted setting
    # still accepts manifests built before it existed.
    if document_digest(ref.settings) != ref.digest:
        raise IntegrityError(f"{source}: recipe.settings do not match recipe.digest {ref.digest[:12]}")


def _digest_of_file(path: Path) -> str | None:
    try:
        return read_manifest(path).digest
    except PearzooError:  # any unreadable or invalid file is simply "not this manifest"
        return None


class _locked:
    """The registry's publish lock (a `filelock.FileLock` beside the index)."""

    def __init__(self, root: Path) -> None:
        from filelock import FileLock

        root.mkdir(parents=True, exist_ok=True)  # OSError: converted by publish
        self.path = root / LOCK_NAME
        self.lock = FileLock(str(self.path), timeout=LOCK_TIMEOUT_S)

    def __enter__(self) -> None:
        from filelock import Timeout

        try:
            self.lock.acquire()
        except Timeout as exc:
            raise LockTimeoutError(
                f"{self.path}: another publisher held the registry lock for more than {LOCK_TIMEOUT_S:.0f} s",
                hint="retry; if no publisher is running, delete the lock file",
                path=str(self.path),
            ) from exc

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
