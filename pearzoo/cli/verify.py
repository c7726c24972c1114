"""`pearzoo verify`: check a manifest's schema and digest."""

from __future__ import annotations

from pathlib import Path

import click

from pearzoo.cli._output import Output, json_option


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def verify(manifest: Path, json_mode: bool) -> None:
    """Verify a manifest: JSON Schema, pydantic model and content digest.

    Exits 3 when the manifest breaks the schema and 5 when its digest does not match its content.

    \b
    Examples:
      pearzoo verify smollm2.pear.json
    """
    from pearzoo.manifest.io import check_published_schema, parse_manifest, read_manifest_document

    document = read_manifest_document(manifest)
    # The published JSON Schema first: it is what third-party tools check, so its message is theirs too.
    check_published_schema(document, source=str(manifest))
    m = parse_manifest(document, source=str(manifest))
    Output(json_mode=json_mode).result(
        {"path": str(manifest), "valid": True, "digest": m.digest, "model_id": m.base.model_id, "heads": len(m.heads)},
        f"ok {manifest}: {m.base.model_id}, {len(m.heads)} heads, digest {m.digest}",
    )


def register(group: click.Group) -> None:
    group.add_command(verify)
