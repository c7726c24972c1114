"""pearzoo/manifest/recorded.py: the recipe a manifest recorded, as audit, eval and patch read it."""

import json
from pathlib import Path

import pytest

from pearzoo.errors import InvalidInputError
from pearzoo.manifest.io import parse_manifest, read_manifest, seal
from pearzoo.manifest.recorded import recorded_recipe
from pearzoo.recipe.schema import Scope

GOLDEN_V1 = Path(__file__).resolve().parents[1] / "golden" / "manifest-v1.json"


def test_the_recorded_recipe_is_the_one_the_build_ran():
    manifest = read_manifest(GOLDEN_V1)
    recipe = recorded_recipe(manifest, GOLDEN_V1)
    assert (recipe.id, recipe.version, recipe.seed) == (manifest.recipe.id, manifest.recipe.version, manifest.build.seed)
    assert (recipe.locate.scope, recipe.locate.k) == (manifest.locate.scope, manifest.locate.k) == (Scope.total, 8)
    assert recipe.train.steps == manifest.metrics.steps


@pytest.mark.parametrize(
    "where, prefix", [(None, "manifest recipe.settings"), ("my.pear.json", "my.pear.json: recipe.settings")]
)
def test_settings_that_no_longer_validate_name_the_manifest(where, prefix):
    doc = json.loads(GOLDEN_V1.read_text())
    doc["recipe"]["settings"]["locate"]["k"] = 0
    manifest = parse_manifest(seal(doc), source="test")
    with pytest.raises(InvalidInputError) as err:
        recorded_recipe(manifest, where)
    assert str(err.value).startswith(f"{prefix}: locate.k: ")
