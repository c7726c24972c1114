"""Recipe inheritance (`extends`) and K as a percentage of the heads."""

import pytest
import yaml

from pearzoo.errors import InvalidInputError, NotFoundError
from pearzoo.recipe.catalog import get_recipe, list_recipes
from pearzoo.recipe.load import load_recipe, read_recipe_document, recipe_digest
from pearzoo.recipe.schema import LocateSpec

# The digests the shipped registry manifests record (registry/manifests/*/*.json, recipe.digest). These recipes
# moved to `extends`; their resolved content, and so these digests, must not change, or `pearzoo audit` of the
# shipped manifests would report a different recipe.
SHIPPED = {
    "rope/smollm2-135m": "1119ac6c9d1962cb488d653c52e0435ac51d6845e8d630c7691db5d5abab4565",  # 1.2.0
    "rope/zoo-llama-rope": "1b28789d9d35c0517988a58a2ede5be1ab4584bc653cd63ecb0e9df2dd4e7de8",
    "learned/zoo-gpt2-learned": "a6dd3b4f1359a1e97e416728ba392a806043c5a66f7116d98b52b080f12c9e51",
    "alibi/zoo-bloom-alibi": "2307a5ce0da0d641248fa8dfef019751820bab8de64f98185bd81cae50860b80",
    "alibi/zoo-mpt-alibi": "1fd5f937213c942c3cd993ae996a231d5c4bf188cec096dc685da3b9926984e8",
}


@pytest.mark.parametrize("recipe_id", sorted(SHIPPED))
def test_instances_extend_and_keep_their_resolved_digest(recipe_id):
    recipe, path = get_recipe(recipe_id)
    assert "extends" in read_recipe_document(path)
    assert recipe_digest(recipe) == SHIPPED[recipe_id]


def test_registry_manifests_record_the_resolved_digest():
    import json
    from pathlib import Path

    recorded = {}
    for path in sorted(Path(__file__).resolve().parents[2].glob("registry/manifests/*/*.json")):
        doc = json.loads(path.read_text())
        recorded.setdefault(doc["recipe"]["id"], set()).add((doc["recipe"]["version"], doc["recipe"]["digest"]))
    # The newest version of each recipe is today's; older versions keep the digests they were published with.
    newest = {k: max(v, key=lambda e: tuple(int(x) for x in e[0].split(".")))[1] for k, v in recorded.items()}
    assert newest == SHIPPED
    assert recorded["rope/smollm2-135m"] == {
        ("1.1.0", "bd438a3f4b6806d7e434a89b77f18efab69cf16c9241f63aeea2184ddeaa3e1d"),
        ("1.2.0", SHIPPED["rope/smollm2-135m"]),
    }


def _write(root, recipe_id, doc):
    path = root / f"{recipe_id}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_child_overrides_only_what_it_names(tmp_path):
    path = _write(tmp_path, "rope/child", {
        "schema_version": 1, "extends": "rope/llama", "id": "rope/child", "version": "2.0.0",
        "match": {"model_types": ["child"]}, "heads": {"output_projection": "attn.out"}, "locate": {"k": "3%"},
    })  # fmt: skip
    child = load_recipe(path)
    llama, _ = get_recipe("rope/llama")
    assert child.heads.output_projection == "attn.out"
    assert child.heads.layers == llama.heads.layers == "model.layers"
    assert child.locate.k == "3%"
    assert child.locate.configurations == llama.locate.configurations
    assert child.train == llama.train
    # Not inherited: the parent's description and match.
    assert (child.description, child.match.model_types) == ("", ["child"])


def test_chains_resolve_beside_the_file_first(tmp_path):
    _write(tmp_path, "rope/mid", {"schema_version": 1, "extends": "rope/llama", "id": "rope/mid", "version": "1.0.0",
                                  "match": {"model_types": ["mid"]}, "train": {"steps": 7}})  # fmt: skip
    leaf = _write(tmp_path, "rope/leaf", {"schema_version": 1, "extends": "rope/mid", "id": "rope/leaf",
                                          "version": "1.0.0", "match": {"model_types": ["leaf"]}, "locate": {"k": 2}})  # fmt: skip
    recipe = load_recipe(leaf)
    assert (recipe.train.steps, recipe.locate.k, recipe.train.lr) == (7, 2, 0.005)
    assert [r.id for r in list_recipes(tmp_path)] == ["rope/leaf", "rope/mid"]


def test_extends_errors_are_one_line(tmp_path):
    a = _write(tmp_path, "rope/a", {"schema_version": 1, "extends": "rope/b", "id": "rope/a", "version": "1.0.0"})
    _write(tmp_path, "rope/b", {"schema_version": 1, "extends": "rope/a", "id": "rope/b", "version": "1.0.0"})
    with pytest.raises(InvalidInputError) as info:
        load_recipe(a)
    assert str(info.value) == f"{tmp_path / 'rope/b.yaml'}: extends: 'rope/a' is circular or too deep (rope/a -> rope/b -> rope/a)"
    missing = _write(tmp_path, "rope/m", {"schema_version": 1, "extends": "rope/nope", "id": "rope/m", "version": "1.0.0"})
    with pytest.raises(NotFoundError) as info:
        load_recipe(missing)
    assert str(info.value) == f"{missing}: extends: recipe 'rope/nope' not found"
    bad = _write(tmp_path, "rope/x", {"schema_version": 1, "extends": ["rope/llama"], "id": "rope/x", "version": "1.0.0"})
    with pytest.raises(InvalidInputError, match=r"x.yaml: extends: must be a recipe id such as 'rope/llama'$"):
        load_recipe(bad)


@pytest.mark.parametrize(
    "k, heads, want",
    [(16, 270, 16), ("3%", 270, 8), ("3%", 1024, 31), ("3%", 12, 1), ("3%", 50, 2), ("2.5%", 60, 2), ("100%", 7, 7), ("0.1%", 10, 1)],
)
def test_k_percentage_resolves_half_up_at_least_one(k, heads, want):
    assert LocateSpec(k=k).resolve_k(heads) == want


@pytest.mark.parametrize("k", ["0%", "101%", "3", "3 %%", "-1%", 0, -2, "x%"])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="must be"):
        LocateSpec(k=k)
