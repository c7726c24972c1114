"""YAML -> Recipe. Errors name the file and the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pearzoo.digest import document_digest
from pearzoo.document import check_version, parse_text, read_capped, validate_into
from pearzoo.errors import InvalidInputError
from pearzoo.recipe.schema import RECIPE_SCHEMA_VERSION, Recipe


def parse_recipe(data: Any, *, source: str) -> Recipe:
    """Validate a recipe document (already parsed from YAML/JSON).

    Raises:
        InvalidInputError: naming `source` and the first offending field.
    """
    check_version(
        data, source=source, supported=(RECIPE_SCHEMA_VERSION,), not_a_mapping="a recipe must be a mapping", required=False
    )
    return validate_into(Recipe, data, source=source)


def read_recipe_document(path: str | Path) -> dict[str, Any]:
    """Read a recipe file's raw mapping (safe YAML without aliases, size- and depth-capped)."""
    return parse_text(read_capped(path, what="recipe file"), source=str(path), fmt="yaml")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe file, optionally applying `key.path=value` overrides.

    Args:
        path (`str` or `Path`): the YAML file.
        overrides (`list[str]`, *optional*): settings such as ``train.steps=20``; values are parsed as YAML.

    Returns:
        `Recipe`: the validated recipe.

    Raises:
        NotFoundError: the file does not exist.
        InvalidInputError: invalid YAML, an unknown key, a value out of range, or a bad override.

    Example:
        >>> load_recipe("recipes/rope/llama.yaml", ["locate.k=4"]).locate.k
        4
    """
    data = read_recipe_document(path)
    if overrides:
        data = apply_overrides(data, overrides, source=str(path))
    return parse_recipe(data, source=str(path))


def apply_overrides(data: dict[str, Any], overrides: list[str], *, source: str) -> dict[str, Any]:
    """Return a copy of `data` with each ``dotted.key=value`` set (value parsed as YAML)."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--set {item!r}: expected KEY=VALUE", field=item)
        try:
            value = parse_text(raw, source=f"--set {item!r}", fmt="yaml")
        except InvalidInputError as exc:
            raise InvalidInputError(f"--set {item!r}: value is not valid YAML", field=key) from exc
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise InvalidInputError(f"--set {item!r}: {part} is not a mapping", field=key)
            node = child
        node[parts[-1]] = value
    return out


def recipe_digest(recipe: Recipe) -> str:
    """sha256 of the recipe's canonical JSON (every setting, defaults included)."""
    return document_digest(recipe.model_dump(mode="json"))
