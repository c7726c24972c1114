import pytest

from pearzoo.errors import InvalidInputError, NotFoundError, UnsupportedArchitectureError
from pearzoo.recipe.catalog import get_recipe, list_recipes, recipe_for_config
from pearzoo.recipe.load import apply_overrides, load_recipe, parse_recipe, read_recipe_document, recipe_digest

LLAMA = "rope/llama"


def _doc():
    recipe, path = get_recipe(LLAMA)
    return read_recipe_document(path)


def test_builtin_recipes_load_and_ids_match_paths():
    recipes = list_recipes()
    ids = {r.id for r in recipes}
    assert {"rope/llama", "rope/smollm2-135m"} <= ids


def test_overrides_apply_and_change_the_digest():
    base, _ = get_recipe(LLAMA)
    changed, _ = get_recipe(LLAMA, ["locate.k=4", "train.steps=20", "locate.scope=total"])
    assert (changed.locate.k, changed.train.steps, changed.locate.scope.value) == (4, 20, "total")
    assert recipe_digest(base) != recipe_digest(changed)
    assert recipe_digest(base) == recipe_digest(get_recipe(LLAMA)[0])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["locate"].__setitem__("kk", 3), "locate.kk: unknown key"),
        (lambda d: d["locate"].__setitem__("k", 0), "locate.k: Value error, must be >= 1"),
        (lambda d: d["heads"].__setitem__("layout", "diagonal"), "heads.layout: Input should be 'columns' or 'rows'"),
        (lambda d: d.__setitem__("version", "1.0"), "version: Value error, must be MAJOR.MINOR.PATCH"),
        (lambda d: d.__setitem__("id", "alibi/llama"), "Value error, id family 'alibi' does not match position_embedding 'rope'"),
    ],
)
def test_bad_recipes_name_file_and_field(tmp_path, mutate, message):
    import yaml

    doc = _doc()
    mutate(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidInputError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_schema_version_is_refused():
    doc = _doc() | {"schema_version": 2}
    with pytest.raises(InvalidInputError, match=r"x.yaml: schema_version: 2 is not supported"):
        parse_recipe(doc, source="x.yaml")


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(InvalidInputError, match="invalid YAML"):
        load_recipe(bad)
    with pytest.raises(NotFoundError):
        load_recipe(tmp_path / "none.yaml")
    with pytest.raises(NotFoundError, match="recipe 'rope/nope' not found"):
        get_recipe("rope/nope")


def test_override_syntax_errors():
    with pytest.raises(InvalidInputError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.steps"], source="x")
    with pytest.raises(InvalidInputError, match="train is not a mapping"):
        apply_overrides({"train": 3}, ["train.steps=2"], source="x")


def test_recipe_resolution_prefers_model_specific_instance():
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    assert recipe_for_config(config)[0].id == "rope/llama"
    assert recipe_for_config(config, "HuggingFaceTB/SmolLM2-135M-Instruct")[0].id == "rope/smollm2-135m"
    with pytest.raises(UnsupportedArchitectureError, match="^no recipe covers model_type 'falcon_h1'"):
        recipe_for_config({"model_type": "falcon_h1"})
    with pytest.raises(UnsupportedArchitectureError, match="^model_type 'mamba' cannot be patched: recurrent"):
        recipe_for_config({"model_type": "mamba"})


def test_checkpoint_layers_is_dumped_only_when_set():
    from pearzoo.heads import geometry_from_config

    llama, _ = get_recipe(LLAMA)
    assert "checkpoint_layers" not in llama.model_dump(mode="json")["heads"]
    gemma3, _ = get_recipe("rope/gemma3")
    assert gemma3.model_dump(mode="json")["heads"]["checkpoint_layers"] == "language_model.model.layers"
    config = {"model_type": "gemma3", "text_config": {"num_hidden_layers": 5, "num_attention_heads": 2, "head_dim": 8}}
    geometry = geometry_from_config(gemma3.heads, config)
    assert (geometry.num_layers, geometry.num_heads, geometry.head_dim) == (5, 2, 8)
    assert geometry.module_path(4) == "model.language_model.layers.4.self_attn.o_proj"
    assert geometry.tensor_name(4) == "language_model.model.layers.4.self_attn.o_proj.weight"


def test_position_family_follows_falcons_alibi_flag():
    """mixed/falcon covers RoPE and ALiBi Falcons; the model's `alibi` decides, absent = false (rope)."""
    from tiny_models import tiny_config

    rope, alibi = tiny_config("falcon", "rope"), tiny_config("falcon", "alibi")
    recipe, _ = recipe_for_config(rope)
    assert recipe.id == "mixed/falcon" and recipe_for_config(alibi)[0].id == "mixed/falcon"
    assert (recipe.position_family(rope), recipe.position_family(alibi)) == ("rope", "alibi")
    assert (recipe.position_family({"model_type": "falcon", "alibi": True}), recipe.position_family({"model_type": "falcon"})) == ("alibi", "rope")
    llama, _ = get_recipe(LLAMA)
    assert llama.position_family(alibi) == "rope"  # no switch: the recipe's own family, whatever the config says
