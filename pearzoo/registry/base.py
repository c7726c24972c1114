"""The registry layout, its index model, and the read logic every backend shares.

A registry is a directory tree that reads the same from a local path, a git checkout and static HTTP::

    index.json                                     which manifests exist, oldest first
    trust.json                                     optional: the keys whose signatures patch requires
    manifests/models--<org>--<name>/<digest>.json  immutable, named by content hash
    manifests/models--<org>--<name>/<digest>.sig   optional: its OMS signature bundle

Backends supply only `read_bytes(relpath)` (and, for writable ones, `publish`). Every read is verified here:
a manifest must pass the schema, match its own digest, and be the manifest the index names, so a tampered
file, a wrong file at the right path or a path-escaping id is refused wherever the registry is served from.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pearzoo.document import check_version, parse_text, validate_into
from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError
from pearzoo.manifest.io import parse_manifest
from pearzoo.manifest.schema import Manifest
from pearzoo.source import validate_hub_id

INDEX_NAME = "index.json"
TRUST_NAME = "trust.json"
# 2: entries may record a signature. Version 1 indexes (no signatures) are still read; publishing into one
# rewrites it as version 2.
INDEX_SCHEMA_VERSION = 2
INDEX_SCHEMA_VERSIONS = (1, 2)
TRUST_SCHEMA_VERSION = 1
MANIFESTS_DIR = "manifests"

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_FINGERPRINT = r"^[0-9a-f]{64}$"


class EntrySignature(_Strict):
    """How a published manifest is signed: an OMS bundle at `<digest>.sig` beside it."""

    method: Literal["key"] = Field(default="key", description="`key`: an elliptic-curve key (offline).")
    fingerprint: str = Field(pattern=_FINGERPRINT, description="sha256 of the signing key's PEM public key.")


class IndexEntry(_Strict):
    """One published manifest: a version of a model's coefficients.

    Every string is constrained to the characters its kind needs: an index is data from a server, and
    `pearzoo list` prints it to a terminal (no newlines, no escape sequences).
    """

    model_id: str = Field(description="The manifest's `base.model_id`.")
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="The manifest's digest (its file name).")
    recipe: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*$", max_length=200, description="Recipe id the manifest was built with.")
    recipe_version: str = Field(pattern=r"^\d+\.\d+\.\d+$", max_length=50, description="Recipe version.")
    model_type: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100, description="`config.model_type` of the base model.")
    revision: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_./-]+$", max_length=200, description="Hub commit of the base model, where known.")
    heads: int = Field(ge=1, description="Number of heads the manifest scales.")
    published: str = Field(pattern=r"^[0-9T:.+-]+Z?$", max_length=40, description="UTC time of publication (ISO 8601).")
    signature: EntrySignature | None = Field(default=None, description="Set when the manifest was published signed.")

    @field_validator("model_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if len(value) > 200:
            raise ValueError("longer than 200 characters")
        validate_hub_id(value)  # its errors are ValueErrors, so pydantic names the field
        return value

    @property
    def path(self) -> str:
        return manifest_relpath(self.model_id, self.digest)


class Index(_Strict):
    """`index.json`: every published manifest, in publication order (the last one of a model is its newest)."""

    schema_version: Literal[1, 2] = INDEX_SCHEMA_VERSION
    entries: list[IndexEntry] = Field(default_factory=list)

    def versions(self, model_id: str) -> list[IndexEntry]:
        """Entries of `model_id`, oldest first (ids compare case-insensitively, as on the Hub)."""
        key = model_id.lower()
        return [e for e in self.entries if e.model_id.lower() == key]

    def find(self, model_id: str, digest: str) -> IndexEntry | None:
        for entry in self.versions(model_id):
            if entry.digest == digest:
                return entry
        return None


class ModelSummary(_Strict):
    """A model in a registry: how many versions, and the newest."""

    model_id: str
    versions: int
    latest: IndexEntry


class ModelDetails(_Strict):
    """`pearzoo show`: every version of a model, and the full manifest of the one shown."""

    model_id: str
    versions: list[IndexEntry]
    manifest: Manifest


def repo_folder(model_id: str) -> str:
    """`org/name` -> `models--org--name`, the Hugging Face cache's form; the id is validated first.

    Raises:
        UnsafeInputError: `..`, an absolute path or a backslash in the id.
        InvalidInputError: not a Hub-style id.
    """
    validate_hub_id(model_id)
    return "models--" + model_id.replace("/", "--")


def manifest_relpath(model_id: str, digest: str) -> str:
    """Where a manifest lives inside a registry, relative to its root (always `/`-separated)."""
    if not _DIGEST.match(digest):
        raise InvalidInputError(f"'{digest}' is not a manifest digest (64 lowercase hex characters)", field="digest")
    return f"{MANIFESTS_DIR}/{repo_folder(model_id)}/{digest}.json"


def signature_relpath(model_id: str, digest: str) -> str:
    """Where a manifest's signature bundle lives: `<digest>.sig` beside `<digest>.json`."""
    return manifest_relpath(model_id, digest)[: -len(".json")] + ".sig"


class TrustKey(_Strict):
    """A public key whose signatures a registry's trust policy accepts."""

    name: str = Field(pattern=r"^[A-Za-z0-9 _.@+-]{1,100}$", description="Who holds the key (for messages).")
    public_key: str = Field(max_length=4096, description="PEM SubjectPublicKeyInfo of an EC P-256/384/521 key.")


class TrustPolicy(_Strict):
    """`trust.json` at a registry's root: which keys must have signed what `pearzoo patch` applies from it."""

    schema_version: Literal[1] = TRUST_SCHEMA_VERSION
    require_signature: bool = Field(default=True, description="Patching from this registry requires a signature.")
    keys: list[TrustKey] = Field(min_length=1, max_length=100)


def parse_trust(data: bytes, *, source: str) -> TrustPolicy:
    """Validate `trust.json` bytes, keys included (each must load as a supported public key).

    Raises:
        InvalidInputError: not JSON, an unknown schema_version, a schema violation, or a key that does not load.
    """
    from pearzoo.signing import public_pem

    document = parse_text(data, source=source)
    check_version(document, source=source, supported=(TRUST_SCHEMA_VERSION,), not_a_mapping="a trust policy must be a JSON object")
    policy = validate_into(TrustPolicy, document, source=source)
    for i, key in enumerate(policy.keys):
        public_pem(key.public_key.encode("ascii", "replace"), source=f"{source}: keys.{i}.public_key")
    return policy


def parse_index(data: bytes, *, source: str) -> Index:
    """Validate `index.json` bytes (schema_version 1 and 2 are read; a missing one reads as 1).

    Raises:
        InvalidInputError: not JSON, nested too deep, or fails the index schema (file:field).
    """
    document = parse_text(data, source=source)
    check_version(
        document, source=source, supported=INDEX_SCHEMA_VERSIONS, not_a_mapping="an index must be a JSON object", required=False
    )
    return validate_into(Index, document, source=source)


def render_index(index: Index) -> str:
    return json.dumps(index.model_dump(mode="json"), indent=2) + "\n"


def entry_for(manifest: Manifest, published: str, signature: EntrySignature | None = None) -> IndexEntry:
    return IndexEntry(
        model_id=manifest.base.model_id,
        digest=manifest.digest,
        recipe=manifest.recipe.id,
        recipe_version=manifest.recipe.version,
        model_type=manifest.base.model_type,
        revision=manifest.base.revision,
        heads=len(manifest.heads),
        published=published,
        signature=signature,
    )


class Registry(ABC):
    """A manifest registry. Subclasses read files by relative path; reads are verified here."""

    #: Where the registry is, as the user gave it (a path or a URL); used in messages.
    location: str

    @abstractmethod
    def read_bytes(self, relpath: str) -> bytes:
        """The bytes of a file in the registry.

        Raises:
            NotFoundError: no such file.
            OfflineError / ResourceError: the registry cannot be reached or read.
        """

    def describe(self, relpath: str) -> str:
        """A file's location for messages (a path or a URL)."""
        return f"{self.location.rstrip('/')}/{relpath}"

    def publish(self, path: Any, *, sign_key: Any = None) -> IndexEntry:
        """Add a manifest file to the registry. Only local directories are writable."""
        raise InvalidInputError(
            f"registry {self.location} is read-only",
            hint="publish to a directory (--registry DIR), then serve or push that directory",
        )

    def index(self) -> Index:
        """The registry's index. A registry without `index.json` is an error, not an empty registry."""
        try:
            data = self.read_bytes(INDEX_NAME)
        except NotFoundError as exc:
            raise NotFoundError(
                f"{self.describe(INDEX_NAME)}: no registry index here", path=self.describe(INDEX_NAME)
            ) from exc
        return parse_index(data, source=self.describe(INDEX_NAME))

    def trust_policy(self) -> TrustPolicy | None:
        """The registry's `trust.json`, or None when it has none.

        Raises:
            InvalidInputError: a trust.json that does not validate (never silently "no policy").
        """
        try:
            data = self.read_bytes(TRUST_NAME)
        except NotFoundError:
            return None
        return parse_trust(data, source=self.describe(TRUST_NAME))

    def verify_signature(self, entry: IndexEntry, trusted: list[bytes]) -> str:
        """Check the signature of a published manifest against trusted public keys (normalized PEMs).

        The bundle covers the bytes stored at the entry's path; those bytes must also be the manifest the
        entry names (digest and model id), so a valid signature over another manifest does not pass.

        Returns:
            `str`: the fingerprint of the key that signed.

        Raises:
            IntegrityError: unsigned, signed by another key, or the signature does not match.
        """
        from pearzoo.signing import verify_bytes

        sig_rel = signature_relpath(entry.model_id, entry.digest)
        try:
            bundle = self.read_bytes(sig_rel)
        except NotFoundError as exc:
            raise IntegrityError(
                f"{self.describe(sig_rel)}: manifest {entry.digest[:12]} of '{entry.model_id}' is not signed",
                path=self.describe(sig_rel),
            ) from exc
        data = self.read_bytes(manifest_relpath(entry.model_id, entry.digest))
        key = verify_bytes(data, bundle, trusted, source=self.describe(sig_rel))
        self._check_entry(entry, data)
        return key

    def list_models(self) -> list[ModelSummary]:
        """One summary per model, sorted by id."""
        by_id: dict[str, list[IndexEntry]] = {}
        for entry in self.index().entries:
            by_id.setdefault(entry.model_id.lower(), []).append(entry)
        return [
            ModelSummary(model_id=entries[-1].model_id, versions=len(entries), latest=entries[-1])
            for _, entries in sorted(by_id.items())
        ]

    def versions(self, model_id: str) -> list[IndexEntry]:
        """Every published version of `model_id`, oldest first.

        Raises:
            NotFoundError: the registry has no manifest for the model.
        """
        validate_hub_id(model_id)
        entries = self.index().versions(model_id)
        if not entries:
            raise NotFoundError(
                f"no manifest for '{model_id}' in registry {self.location}", repo_id=model_id, registry=self.location
            )
        return entries

    def resolve_digest(self, model_id: str, digest: str | None = None) -> IndexEntry:
        """The entry for `digest` (a prefix of 8 or more characters is enough), or the newest one."""
        return _pick(self.versions(model_id), model_id, digest)

    def get(self, model_id: str, digest: str | None = None) -> Manifest:
        """The manifest of `model_id` with `digest` (default: the newest), verified.

        Raises:
            NotFoundError: no such model or version.
            IntegrityError: the stored file fails its digest, or is not the manifest the index names.
        """
        return self.read_manifest(self.resolve_digest(model_id, digest))


    def read_manifest(self, entry: IndexEntry) -> Manifest:
        """Read and verify the manifest an index entry names."""
        return self._check_entry(entry, self.read_bytes(manifest_relpath(entry.model_id, entry.digest)))

    def _check_entry(self, entry: IndexEntry, data: bytes) -> Manifest:
        """The manifest in `data`, verified, and the one `entry` names."""
        source = self.describe(manifest_relpath(entry.model_id, entry.digest))
        try:
            document = parse_text(data, source=source)
        except InvalidInputError as exc:
            raise IntegrityError(f"{exc}: the stored manifest is damaged", path=source) from exc
        # parse_manifest recomputes the digest: a manifest edited in place is refused here.
        manifest = parse_manifest(document, source=source)
        if manifest.digest != entry.digest:
            raise IntegrityError(
                f"{source}: holds manifest {manifest.digest[:12]}, not {entry.digest[:12]} as the index says",
                path=source,
                expected=entry.digest,
                actual=manifest.digest,
            )
        if manifest.base.model_id.lower() != entry.model_id.lower():
            raise IntegrityError(
                f"{source}: is a manifest for '{manifest.base.model_id}', not '{entry.model_id}'",
                path=source,
                expected=entry.model_id,
                actual=manifest.base.model_id,
            )
        return manifest

    def show(self, model_id: str, digest: str | None = None) -> ModelDetails:
        """Versions of `model_id` and the verified manifest of one (default: the newest)."""
        entries = self.versions(model_id)
        entry = _pick(entries, model_id, digest)
        return ModelDetails(model_id=entry.model_id, versions=entries, manifest=self.read_manifest(entry))


def _pick(entries: list[IndexEntry], model_id: str, digest: str | None) -> IndexEntry:
    if digest is None:
        return entries[-1]
    if len(digest) < 8:
        raise InvalidInputError(f"digest '{digest}': give at least 8 characters", field="digest")
    matches = [e for e in entries if e.digest.startswith(digest.lower())]
    if len(matches) != 1:
        what = "no" if not matches else "more than one"
        raise NotFoundError(f"{what} manifest of '{model_id}' has a digest starting with '{digest}'", repo_id=model_id)
    return matches[0]
