"""Which signatures `pearzoo patch` requires, checked once before anything is read or written for the patch.

The rule, after pip's hash-checking mode (naming one hash switches checking on for everything):

- `--public-key PUB` (repeatable) or `--require-signature` requires the manifest to carry an OMS signature by
  one of the given keys, or by a key of the registry's trust policy;
- a registry whose `trust.json` says `require_signature: true` requires it by default;
- `--no-require-signature` turns the registry's default off (with a note on stderr), never an explicit key.

A required signature that is missing, made by another key or not matching the bytes is exit 5 and nothing
is written. A manifest just built in the same run (`--build`) or passed in memory has no signature to check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError
from pearzoo.manifest.schema import Manifest

Notify = Callable[[str], None]


def check_manifest_signature(
    manifest: Manifest,
    *,
    origin: str,
    manifest_path: Path | None = None,
    registry: str | Path | None = None,
    public_keys: Sequence[Path] = (),
    require: bool | None = None,
    notify: Notify | None = None,
) -> str | None:
    """Verify the signature `patch` requires of `manifest`, if any.

    Args:
        manifest (`Manifest`): the manifest about to be applied (already digest-verified).
        origin (`str`): `file` (`manifest_path`), `registry` (`registry`) or `memory` (built in this run).
        public_keys (`Sequence[Path]`): PEM public keys the user trusts; any one of them may have signed.
        require (`bool`, *optional*): True/False forces the requirement on/off; None: on when keys are given or
            the registry's trust policy requires it.

    Returns:
        `str` or None: the fingerprint of the key that signed, None when no signature was required.

    Raises:
        IntegrityError: required and unsigned, signed by a key not trusted, or not matching (exit 5).
        InvalidInputError: a signature is required but there is no key to check it with; a bad key or policy.
    """
    from pearzoo.signing import read_public_key

    keys = [read_public_key(p) for p in public_keys]
    policy = None
    reg = None
    if origin == "registry":
        from pearzoo.registry import open_registry

        reg = open_registry(registry)
        policy = reg.trust_policy()
    policy_keys = [k.public_key.encode("ascii") for k in policy.keys] if policy else []
    required = require if require is not None else bool(keys) or bool(policy and policy.require_signature)
    if not required:
        if require is False and policy is not None and policy.require_signature and notify:
            notify(f"registry {reg.location} requires signed manifests; --no-require-signature skips the check")  # type: ignore[union-attr]
        return None
    trusted = keys + policy_keys
    if not trusted:
        raise InvalidInputError(
            "--require-signature: no public key to check the signature with",
            hint="give --public-key PUB.pem, or patch from a registry whose trust.json lists keys",
        )
    if origin == "memory":
        raise IntegrityError(f"manifest {manifest.digest[:12]} was built in this run and is not signed; a signature is required")
    if origin == "file":
        return _check_file(manifest, Path(manifest_path), trusted)  # type: ignore[arg-type]
    entry = reg.index().find(manifest.base.model_id, manifest.digest)  # type: ignore[union-attr]
    if entry is None:
        raise NotFoundError(f"registry {reg.location} does not list manifest {manifest.digest[:12]}")  # type: ignore[union-attr]
    return reg.verify_signature(entry, trusted)  # type: ignore[union-attr]


def _check_file(manifest: Manifest, path: Path, trusted: list[bytes]) -> str:
    from pearzoo.document import parse_text, read_capped
    from pearzoo.manifest.io import parse_manifest
    from pearzoo.signing import MAX_BUNDLE_BYTES, signature_path_for, verify_bytes

    sig = signature_path_for(path)
    try:
        bundle = read_capped(sig, what="signature", max_bytes=MAX_BUNDLE_BYTES)
    except NotFoundError as exc:
        raise IntegrityError(f"{path}: not signed (no {sig.name} beside it); a signature is required", path=str(path)) from exc
    data = read_capped(path, what="manifest")
    key = verify_bytes(data, bundle, trusted, source=str(sig))
    # The bytes that verified must be the manifest being applied (the file could change between two reads).
    signed = parse_manifest(parse_text(data, source=str(path)), source=str(path))
    if signed.digest != manifest.digest:
        raise IntegrityError(f"{path}: changed while it was read; the signed manifest is not the one applied", path=str(path))
    return key


def check_signing_key(sign_key: Path | None) -> None:
    """Fail before patching starts when `--sign-key` cannot sign (missing, encrypted, not EC)."""
    if sign_key is not None:
        from pearzoo.signing import signing_key_fingerprint

        signing_key_fingerprint(sign_key)


def sign_output(folder: Path, sign_key: Path) -> str:
    """Sign a finished patched folder: `folder/model.sig`, which `model_signing verify key` checks as is.

    Called on the complete temp folder before its final rename, so the output appears signed or not at all.

    Returns:
        `str`: the signing key's fingerprint.
    """
    from pearzoo.signing import FOLDER_SIGNATURE, sign_path

    return sign_path(folder, sign_key, folder / FOLDER_SIGNATURE)


def sign_file(path: Path, sign_key: Path, signature: Path, *, name: str, scratch: Path) -> str:
    """Sign one finished output file (a GGUF) still at its temp `path`, as if it were named `name`.

    model_signing records a file's name in the signed statement (and checks only its bytes), so the temp file is
    hard-linked as `scratch/name` (a folder beside it: the same filesystem) and signed there; where links are
    not allowed it is signed under its temp name. The stock `model_signing verify key --signature SIG FILE`
    checks it.

    Returns:
        `str`: the signing key's fingerprint.
    """
    import os
    import shutil

    from pearzoo.signing import sign_path

    scratch.mkdir()
    try:
        target = scratch / name
        try:
            os.link(path, target)
        except OSError:
            target = path
        return sign_path(target, sign_key, signature)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
