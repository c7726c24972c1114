"""YAML -> Recipe. Errors name the file and the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pearzoo.digest import document_digest
from pearzoo.errors import InvalidInputError, NotFoundError, validation_location
from pearzoo.recipe.schema import RECIPE_SCHEMA_VERSION, Recipe


def parse_recipe(data: Any, *, source: str) -> Recipe:
    """Validate a recipe document (already parsed from YAML/JSON).

    Raises:
        InvalidInputError: naming `source` and the first offending field.
    """
    if not isinstance(data, dict):
        raise InvalidInputError(f"{source}: a recipe must be a mapping", path=source)
    version = data.get("schema_version")
    if version is not None and version != RECIPE_SCHEMA_VERSION:
        raise InvalidInputError(
            f"{source}: schema_version: {version!r} is not supported (this pearzoo reads {RECIPE_SCHEMA_VERSION})",
            path=source,
            field="schema_version",
        )
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        loc, msg = validation_location(exc)
        raise InvalidInputError(f"{source}: {loc}: {msg}", path=source, field=loc) from exc


def read_recipe_document(path: str | Path) -> dict[str, Any]:
    """Read a recipe file's raw mapping (safe YAML)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFoundError(f"{p}: recipe file not found", path=str(p)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{p}: cannot read recipe: {exc}", path=str(p)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise InvalidInputError(f"{p}:{where}: invalid YAML", path=str(p)) from exc
    return data


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
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
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
