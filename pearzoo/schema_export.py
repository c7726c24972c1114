"""Write or check the committed JSON Schemas (pearzoo/schemas/*.schema.json), generated from the models."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def schemas() -> dict[str, dict]:
    from pearzoo.manifest.schema import Manifest
    from pearzoo.recipe.schema import Recipe

    out = {}
    for name, model in (("recipe", Recipe), ("manifest", Manifest)):
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://pearzoo.dev/schemas/{name}.schema.json"
        out[name] = schema
    return out


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names whose committed file differs from what the models generate."""
    stale = []
    for name, schema in schemas().items():
        path = directory / f"{name}.schema.json"
        if not path.is_file() or path.read_text() != render(schema):
            stale.append(name)
    return stale


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    from pearzoo.atomic import atomic_write_text

    return [atomic_write_text(directory / f"{name}.schema.json", render(s)) for name, s in schemas().items()]


def load_schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


if __name__ == "__main__":
    for p in write_schemas():
        print(p)
