"""Signatures: OpenSSF Model Signing (OMS) bundles made and checked by the `model_signing` library.

A signature is a Sigstore bundle over an in-toto statement listing the sha256 of every signed file, exactly
what `model_signing sign key` writes, so the stock tool verifies what pearzoo signs:

    model_signing verify key --signature registry/manifests/models--org--m/<digest>.sig --public_key pub.pem \
        registry/manifests/models--org--m/<digest>.json
    model_signing verify key --signature OUT/model.sig --public_key pub.pem OUT

Keys are elliptic-curve (P-256/384/521) PEM files, as `model_signing` supports. A key's fingerprint is the
sha256 of its PEM SubjectPublicKeyInfo: the `publicKey.hint` that `model_signing` writes into every bundle,
so a bundle names the key that made it and pearzoo picks the trusted key to check it with by that hint.

Nothing here is cryptography of ours: hashing, the statement, the DSSE envelope and ECDSA are the library's.
Keyless Sigstore signing (an OIDC identity, a Fulcio certificate and a Rekor entry) is the library's default
and needs the network; pearzoo does not wrap it (see README "Signing").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError

SIGNATURE_SUFFIX = ".sig"
#: The signature of a signed patched folder, where `model_signing verify` looks by convention.
FOLDER_SIGNATURE = "model.sig"
# A bundle is about 2 kB for a manifest and grows with the number of files signed; 8 MiB is far beyond both.
MAX_BUNDLE_BYTES = 8 * 1024 * 1024


def signature_path_for(path: str | Path) -> Path:
    """Where a file's signature lives by default: `<stem>.sig` beside it (`<digest>.json` -> `<digest>.sig`)."""
    return Path(path).with_suffix(SIGNATURE_SUFFIX)


def public_pem(key_pem: bytes, *, source: str) -> bytes:
    """The PEM SubjectPublicKeyInfo of a public key, normalized (the form fingerprints are taken of).

    Raises:
        InvalidInputError: not a PEM public key on a curve `model_signing` supports.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(key_pem)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{source}: not a PEM public key", path=source) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise InvalidInputError(f"{source}: not an elliptic-curve P-256/384/521 key (model_signing needs one)", path=source)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(pem: bytes) -> str:
    """sha256 hex of a normalized PEM public key: what `model_signing` records as the bundle's key hint."""
    return hashlib.sha256(pem).hexdigest()


def _read_key_file(path: str | Path, what: str) -> bytes:
    """A key file's bytes (at most 1 MiB: a PEM key is a few hundred), its absence or unreadability as one line."""
    p = Path(path)
    try:
        return p.read_bytes()[: 1 << 20]
    except FileNotFoundError as exc:
        raise NotFoundError(f"{p}: {what} not found", path=str(p)) from exc
    except OSError as exc:
        raise InvalidInputError(f"{p}: cannot read {what}: {exc.strerror or exc}", path=str(p)) from exc


def read_public_key(path: str | Path) -> bytes:
    """Read and normalize a public key file.

    Raises:
        NotFoundError: no such file.
        InvalidInputError: unreadable, or not a supported public key.
    """
    return public_pem(_read_key_file(path, "public key"), source=str(path))


def signing_key_fingerprint(private_key: str | Path) -> str:
    """Load a private key (to fail before any work) and return its public key's fingerprint.

    Raises:
        NotFoundError: no such file.
        InvalidInputError: unreadable, encrypted, or not an EC private key `model_signing` supports.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p = Path(private_key)
    data = _read_key_file(p, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: the key is encrypted (model_signing can take a password; pearzoo does not prompt yet).
        raise InvalidInputError(f"{p}: not an unencrypted PEM private key", path=str(p)) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInputError(f"{p}: not an elliptic-curve private key (model_signing needs P-256/384/521)", path=str(p))
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_pem(pem, source=str(p))  # refuses an unsupported curve
    return fingerprint(pem)


def sign_path(target: str | Path, private_key: str | Path, signature: str | Path) -> str:
    """Sign a file or a folder with an EC private key; write the OMS bundle to `signature`.

    A folder is signed file by file (the library's default "files" serialization); the signature file itself
    is left out when it sits inside the folder, as `model_signing sign` does. The bundle is written to a temp
    file and renamed, so a reader never sees a partial one.

    Returns:
        `str`: the signing key's fingerprint.

    Raises:
        NotFoundError, InvalidInputError: the key (see `signing_key_fingerprint`).
        ResourceError: the signature cannot be written.
    """
    import model_signing

    from pearzoo.atomic import atomic_write_bytes, write_error

    key_id = signing_key_fingerprint(private_key)
    target, signature = Path(target), Path(signature)
    hashing = model_signing.hashing.Config()
    if target.is_dir():
        hashing.set_ignored_paths(paths=[signature.name] if signature.parent.resolve() == target.resolve() else [])
    config = model_signing.signing.Config().set_hashing_config(hashing).use_elliptic_key_signer(private_key=private_key)
    with tempfile.TemporaryDirectory(prefix=".pearzoo-sign-") as scratch:
        staged = Path(scratch) / "bundle.sig"
        config.sign(target, staged)
        try:
            atomic_write_bytes(signature, staged.read_bytes())
        except OSError as exc:
            raise write_error(exc, signature) from exc
    return key_id


def bundle_key_hint(bundle: bytes, *, source: str) -> str:
    """The key fingerprint a bundle names (`verificationMaterial.publicKey.hint`).

    Raises:
        IntegrityError: not an OMS key-signed bundle, or one that names no key.
    """
    try:
        document = json.loads(bundle)
        hint = document["verificationMaterial"]["publicKey"]["hint"]
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise IntegrityError(f"{source}: not a key-signed OMS signature bundle", path=source) from exc
    if not isinstance(hint, str) or len(hint) != 64 or any(c not in "0123456789abcdef" for c in hint):
        raise IntegrityError(f"{source}: the signature names no key (publicKey.hint)", path=source)
    return hint


def verify_path(target: str | Path, bundle: bytes, trusted: Sequence[bytes], *, source: str) -> str:
    """Check an OMS bundle over a file or folder against the trusted public keys (normalized PEMs).

    Returns:
        `str`: the fingerprint of the key that signed.

    Raises:
        IntegrityError: the bundle is malformed, signed by a key not in `trusted`, or does not match the bytes
            (naming `source`).
    """
    import model_signing

    if len(bundle) > MAX_BUNDLE_BYTES:
        raise IntegrityError(f"{source}: larger than {MAX_BUNDLE_BYTES // 2**20} MiB; not a signature", path=source)
    hint = bundle_key_hint(bundle, source=source)
    keys = {fingerprint(pem): pem for pem in trusted}
    if hint not in keys:
        known = ", ".join(sorted(k[:12] for k in keys)) or "none"
        raise IntegrityError(
            f"{source}: signed by key {hint[:12]}, which is not a trusted key ({known})",
            path=source,
            expected=sorted(keys),
            actual=hint,
        )
    with tempfile.TemporaryDirectory(prefix=".pearzoo-verify-") as scratch:
        key_path, sig_path = Path(scratch) / "key.pub", Path(scratch) / "bundle.sig"
        key_path.write_bytes(keys[hint])
        sig_path.write_bytes(bundle)
        # The hashing settings (and the paths the signer left out, e.g. model.sig) come from the signed
        # statement itself, as `model_signing verify` reads them: the signer chose them, under its key.
        config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key_path)
        try:
            with _stdout_to_stderr():
                config.verify(Path(target), sig_path)
        except Exception as exc:  # noqa: BLE001 - see below
            # model_signing reports a bad bundle with whatever its parsers raise (ValueError, KeyError,
            # IndexError, InvalidSignature, protobuf and pydantic errors...): any failure to verify is one.
            reason = "the bytes are not the ones signed" if str(exc).startswith("Signature mismatch") else _first_line(exc)
            raise IntegrityError(f"{source}: signature does not verify: {reason}", path=source) from exc
    return hint


def verify_bytes(data: bytes, bundle: bytes, trusted: Sequence[bytes], *, source: str) -> str:
    """`verify_path` for a file held in memory (a manifest read over HTTP): the bytes are checked, not a path."""
    with tempfile.TemporaryDirectory(prefix=".pearzoo-verify-") as scratch:
        copy = Path(scratch) / "document"
        copy.write_bytes(data)
        return verify_path(copy, bundle, trusted, source=source)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """model_signing prints advisories to stdout; stdout carries only results (house style)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _first_line(exc: BaseException) -> str:
    from pearzoo.document import one_line

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = one_line(text)
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = [
    "FOLDER_SIGNATURE",
    "SIGNATURE_SUFFIX",
    "bundle_key_hint",
    "fingerprint",
    "public_pem",
    "read_public_key",
    "sign_path",
    "signature_path_for",
    "signing_key_fingerprint",
    "verify_bytes",
    "verify_manifest_file",
    "verify_path",
]


def verify_manifest_file(
    path: str | Path, public_keys: Sequence[str | Path] = (), signature: str | Path | None = None
) -> tuple[object, str | None]:
    """Read a manifest file once and, when keys are given, check its signature over exactly those bytes.

    Returns:
        `(document, fingerprint)`: the parsed (unvalidated) JSON document, and the signing key's fingerprint
        (None when no key was given).

    Raises:
        NotFoundError, InvalidInputError: the manifest, a key or the signature cannot be read.
        IntegrityError: unsigned (no signature file), another key, or not matching.
    """
    from pearzoo.document import parse_text, read_capped

    data = read_capped(path, what="manifest")
    signed_by = None
    if public_keys:
        sig = Path(signature) if signature is not None else signature_path_for(path)
        trusted = [read_public_key(k) for k in public_keys]
        try:
            bundle = read_capped(sig, what="signature", max_bytes=MAX_BUNDLE_BYTES)
        except NotFoundError as exc:
            raise IntegrityError(f"{path}: not signed (no signature at {sig})", path=str(path)) from exc
        except InvalidInputError as exc:
            raise IntegrityError(str(exc), path=str(sig)) from exc
        signed_by = verify_bytes(data, bundle, trusted, source=str(sig))
    return parse_text(data, source=str(path)), signed_by
