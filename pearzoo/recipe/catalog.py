"""The recipe catalog: find recipes by id, and the recipe that covers a model's config.

Recipes are loaded lazily from disk each time they are asked for; nothing is registered at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pearzoo.errors import InvalidInputError, NotFoundError, UnsupportedArchitectureError
from pearzoo.recipe.load import builtin_recipes_dir, load_recipe
from pearzoo.recipe.schema import Recipe


@dataclass(frozen=True)
class RecipeEntry:
    id: str
    path: Path


def list_recipe_files(root: Path | None = None) -> list[RecipeEntry]:
    """Every `<family>/<name>.yaml` under `root` (default: the built-in recipes), sorted by id."""
    root = root or builtin_recipes_dir()
    entries = [
        RecipeEntry(id=str(p.relative_to(root).with_suffix("")).replace("\\", "/"), path=p)
        for p in root.glob("*/*.yaml")
    ]
    return sorted(entries, key=lambda e: e.id)


def list_recipes(root: Path | None = None) -> list[Recipe]:
    """Load and validate every recipe; a file whose `id` disagrees with its path is an error."""
    return [recipe for _, recipe in _loaded(root)]


# (root, signature of every recipe file under it and under the built-in root) -> loaded recipes. Reading ~100
# YAML files (each `extends` re-reading its parent) takes about a second, and recipe_for_config runs once per
# model load; the signature (path, mtime, size of each file) changes whenever a file does, so an edited,
# added or removed recipe is never served stale.
_CACHE: dict[tuple[Path, tuple], list[tuple[RecipeEntry, Recipe]]] = {}


def _signature(entries: list[RecipeEntry]) -> tuple:
    out = []
    for entry in entries:
        st = entry.path.stat()
        out.append((str(entry.path), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _loaded(root: Path | None) -> list[tuple[RecipeEntry, Recipe]]:
    root = (root or builtin_recipes_dir()).resolve()
    entries = list_recipe_files(root)
    builtin = builtin_recipes_dir().resolve()
    key = (root, _signature(entries) + (_signature(list_recipe_files(builtin)) if root != builtin else ()))
    if key not in _CACHE:
        loaded = []
        for entry in entries:
            recipe = load_recipe(entry.path)
            if recipe.id != entry.id:
                raise InvalidInputError(
                    f"{entry.path}: id: '{recipe.id}' must equal its path '{entry.id}'", path=str(entry.path)
                )
            loaded.append((entry, recipe))
        _CACHE.clear()  # one catalog at a time: the cache never grows
        _CACHE[key] = loaded
    return _CACHE[key]


def get_recipe(ref: str, overrides: list[str] | None = None, root: Path | None = None) -> tuple[Recipe, Path]:
    """Resolve a recipe reference: a file path, or an id such as ``rope/llama``.

    Raises:
        NotFoundError: neither a file nor a known id.
    """
    candidate = Path(ref)
    if candidate.suffix in {".yaml", ".yml"} or candidate.is_file():
        return load_recipe(candidate, overrides), candidate
    for entry in list_recipe_files(root):
        if entry.id == ref:
            return load_recipe(entry.path, overrides), entry.path
    raise NotFoundError(f"recipe '{ref}' not found (try `pearzoo recipes list`)", recipe=ref)


def _config_value(config: Any, key: str) -> Any:
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def recipe_for_config(config: Any, model_id: str | None = None, root: Path | None = None) -> tuple[Recipe, Path]:
    """The recipe that covers a model, from its config (a dict or a `PretrainedConfig`).

    A recipe whose ``match.model_ids`` names `model_id` wins; otherwise the generic recipe whose
    ``match.model_types`` contains the config's `model_type` (and, if it lists architectures, one of them).

    Raises:
        UnsupportedArchitectureError: no recipe matches.
    """
    model_type = _config_value(config, "model_type")
    architectures = _config_value(config, "architectures") or []
    generic: list[tuple[Recipe, Path]] = []
    for entry, recipe in _loaded(root):
        m = recipe.match
        if model_type not in m.model_types:
            continue
        if m.architectures and not set(m.architectures) & set(architectures):
            continue
        if m.model_ids:
            if model_id is not None and _normalise_id(model_id) in {_normalise_id(i) for i in m.model_ids}:
                return recipe, entry.path
            continue
        generic.append((recipe, entry.path))
    if generic:
        return generic[0]
    reason = unsupported_reasons(root).get(model_type)
    if reason is not None:
        raise UnsupportedArchitectureError(
            f"model_type '{model_type}' cannot be patched: {reason}", model_type=model_type
        )
    raise UnsupportedArchitectureError(
        f"no recipe covers model_type '{model_type}' (architectures: {', '.join(architectures) or 'none'})",
        hint="see `pearzoo recipes list`; docs/adding-an-architecture.md explains how to add one",
        model_type=model_type,
    )


def _normalise_id(model_id: str) -> str:
    return model_id.strip().lower()


UNSUPPORTED_FILE = "unsupported.yaml"


def unsupported_reasons(root: Path | None = None) -> dict[str, str]:
    """model_type -> why pearzoo cannot patch it, from `<recipes>/unsupported.yaml` (empty if absent).

    Raises:
        InvalidInputError: the file fails its schema.
    """
    from pydantic import ValidationError

    from pearzoo.errors import validation_location
    from pearzoo.recipe.load import read_recipe_document
    from pearzoo.recipe.schema import UnsupportedCatalog

    path = (root or builtin_recipes_dir()) / UNSUPPORTED_FILE
    if not path.is_file():
        return {}
    try:
        catalog = UnsupportedCatalog.model_validate(read_recipe_document(path))
    except ValidationError as exc:
        loc, msg = validation_location(exc)
        raise InvalidInputError(f"{path}: {loc}: {msg}", path=str(path), field=loc) from exc
    return {mt: " ".join(entry.reason.split()) for entry in catalog.unsupported for mt in entry.model_types}
