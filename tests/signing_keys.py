"""EC P-256 key pairs made at test time (never committed): private PEM, public PEM, fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path


def make_key_pair(directory: Path, name: str = "key") -> tuple[Path, Path, str]:
    """Write `<name>.pem` (PKCS#8, unencrypted) and `<name>.pub` (SubjectPublicKeyInfo) into `directory`;
    return their paths and the public key's fingerprint (sha256 of the PEM, model_signing's key hint)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public.write_bytes(pem)
    return private, public, hashlib.sha256(pem).hexdigest()
