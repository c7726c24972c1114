"""The recipe a manifest recorded: `recipe.settings`, overrides applied, as the build used it.

Audit, eval and patch use this recipe rather than whatever the catalog holds now, so a later recipe release
changes neither what a manifest means nor how it is checked.
"""

from __future__ import annotations

from pathlib import Path

from pearzoo.manifest.schema import Manifest
from pearzoo.recipe.load import parse_recipe
from pearzoo.recipe.schema import Recipe


def recorded_recipe(manifest: Manifest, where: str | Path | None = None) -> Recipe:
    """Parse and validate the recipe recorded in `manifest`.

    Args:
        manifest (`Manifest`): a validated manifest.
        where (`str` or `Path`, *optional*): the manifest's file, named in errors
            (`<where>: recipe.settings...`); without it errors say `manifest recipe.settings`.

    Raises:
        InvalidInputError: the recorded settings no longer validate as a recipe.
    """
    source = f"{where}: recipe.settings" if where is not None else "manifest recipe.settings"
    return parse_recipe(manifest.recipe.settings, source=source)
