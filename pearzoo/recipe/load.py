"""YAML -> Recipe. Errors name the file and the field."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from pearzoo.digest import document_digest
from pearzoo.document import check_version, parse_text, read_capped, validate_into
from pearzoo.errors import InvalidInputError, NotFoundError
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
    data = resolve_extends(read_recipe_document(path), Path(path))
    if overrides:
        data = apply_overrides(data, overrides, source=str(path))
    return parse_recipe(data, source=str(path))


# A recipe states these itself; they are never inherited (a child that inherited `match` would cover its parent's
# model_types a second time).
NOT_INHERITED = ("id", "version", "description", "match")
MAX_EXTENDS_DEPTH = 8


def resolve_extends(data: Any, path: Path, chain: tuple[str, ...] = ()) -> Any:
    """Merge a recipe document onto the recipe its `extends` names, recursively; return the resolved document.

    `extends: rope/llama` names a recipe id, looked up beside the file (`<root>/rope/llama.yaml` for a file at
    `<root>/<family>/<name>.yaml`) and then among the built-in recipes. Mappings merge key by key; lists and
    scalars replace; `id`, `version`, `description` and `match` come only from the file itself. The result has
    no `extends` key: it is the recipe a manifest records (and digests).

    Raises:
        InvalidInputError: `extends` is not a recipe id, is circular or too deep.
        NotFoundError: no recipe has that id.
    """
    if not isinstance(data, dict) or "extends" not in data:
        return data
    parent_id = data["extends"]
    if not isinstance(parent_id, str) or not _ID_LIKE.match(parent_id):
        raise InvalidInputError(f"{path}: extends: must be a recipe id such as 'rope/llama'", path=str(path), field="extends")
    own_id = data.get("id") if isinstance(data.get("id"), str) else str(path)
    if parent_id in chain or parent_id == own_id or len(chain) >= MAX_EXTENDS_DEPTH:
        raise InvalidInputError(
            f"{path}: extends: '{parent_id}' is circular or too deep ({' -> '.join((*chain, own_id, parent_id))})",
            path=str(path),
            field="extends",
        )
    parent_path = _parent_path(parent_id, path)
    parent = resolve_extends(read_recipe_document(parent_path), parent_path, (*chain, own_id))
    if not isinstance(parent, dict):
        raise InvalidInputError(f"{parent_path}: a recipe must be a mapping", path=str(parent_path))
    base = {k: v for k, v in parent.items() if k not in NOT_INHERITED}
    return _merge(base, {k: v for k, v in data.items() if k != "extends"})


_ID_LIKE = re.compile(r"^[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*$")


def builtin_recipes_dir() -> Path:
    """The recipes shipped with pearzoo (inside the wheel, or the repo's `recipes/` in a checkout)."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "_recipes"
    if packaged.is_dir():
        return packaged
    return here.parent / "recipes"


def _parent_path(parent_id: str, path: Path) -> Path:
    for root in (path.resolve().parent.parent, builtin_recipes_dir()):
        candidate = root / f"{parent_id}.yaml"
        if candidate.is_file():
            return candidate
    raise NotFoundError(f"{path}: extends: recipe '{parent_id}' not found", path=str(path), field="extends")


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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
