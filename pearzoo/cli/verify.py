"""`pearzoo verify`: check a manifest's schema, digest, coefficient bounds and (with a key) its signature."""

from __future__ import annotations

from pathlib import Path

import click

from pearzoo.cli._output import Output, json_option


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(dir_okay=False, path_type=Path), help="Also check the manifest's OMS signature against this EC public key (PEM); repeatable: any one may have signed.")
@click.option("--signature", type=click.Path(dir_okay=False, path_type=Path), default=None, help="The signature bundle. Default: <manifest without suffix>.sig beside it (a registry's <digest>.sig).")
@json_option
def verify(manifest: Path, public_keys: tuple[Path, ...], signature: Path | None, json_mode: bool) -> None:
    """Verify a manifest: JSON Schema, pydantic model, content digest, coefficient bounds, signature.

    Exits 3 when the manifest breaks the schema or a coefficient lies outside its recipe's train.tau_range,
    and 5 when its digest does not match its content or (with --public-key) it is unsigned, signed by
    another key, or its signature does not match its bytes.

    \b
    Examples:
      pearzoo verify smollm2.pear.json
      pearzoo verify registry/manifests/models--org--m/<digest>.json --public-key maintainers.pub
    """
    from pearzoo.manifest.io import check_published_schema, parse_manifest
    from pearzoo.signing import verify_manifest_file

    if signature is not None and not public_keys:
        raise click.UsageError("--signature needs --public-key (the key to check it with)")

    document, signed_by = verify_manifest_file(manifest, public_keys, signature)
    # The published JSON Schema first: it is what third-party tools check, so its message is theirs too.
    check_published_schema(document, source=str(manifest))
    m = parse_manifest(document, source=str(manifest))
    signed = f", signed by key {signed_by[:12]}" if signed_by else ""
    Output(json_mode=json_mode).result(
        {"path": str(manifest), "valid": True, "digest": m.digest, "model_id": m.base.model_id, "heads": len(m.heads), "signed_by": signed_by},
        f"ok {manifest}: {m.base.model_id}, {len(m.heads)} heads, digest {m.digest}{signed}",
    )


def register(group: click.Group) -> None:
    group.add_command(verify)
