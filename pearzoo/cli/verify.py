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
    import json

    import jsonschema

    from pearzoo.errors import InvalidInputError
    from pearzoo.manifest.io import read_manifest
    from pearzoo.schema_export import load_schema

    try:
        document = json.loads(manifest.read_text())
        jsonschema.validate(document, load_schema("manifest"))
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "<root>"
        raise InvalidInputError(f"{manifest}: {where}: {exc.message}", path=str(manifest)) from exc
    except (OSError, ValueError):
        pass  # read_manifest below reports unreadable files and bad JSON with their own messages
    m = read_manifest(manifest)
    Output(json_mode=json_mode).result(
        {"path": str(manifest), "valid": True, "digest": m.digest, "model_id": m.base.model_id, "heads": len(m.heads)},
        f"ok {manifest}: {m.base.model_id}, {len(m.heads)} heads, digest {m.digest}",
    )


def register(group: click.Group) -> None:
    group.add_command(verify)
