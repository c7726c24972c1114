"""`pearzoo recipes scaffold` and the probe behind it (pearzoo/probe.py, pearzoo/scaffold.py), and the unsupported catalog."""

import json

import pytest
import yaml

from cli_run import run_cli
from pearzoo.errors import UnsupportedArchitectureError
from pearzoo.recipe.catalog import list_recipes, recipe_for_config, unsupported_reasons
from pearzoo.recipe.load import load_recipe
from pearzoo.probe import probe_model, scaffold_probe, tiny_config, tiny_model


@pytest.mark.parametrize(
    "model_type, layers, projection, layout, head_dim, head_dim_keys",
    [
        ("llama", "model.layers", "self_attn.o_proj", "columns", 16, ["head_dim"]),  # head_dim != 48 / 4
        ("olmoe", "model.layers", "self_attn.o_proj", "columns", 12, []),  # no head_dim key: hidden // heads
        # Qwen2MoeConfig declares no head_dim, but Qwen2MoeAttention reads getattr(config, "head_dim", ...).
        ("qwen2_moe", "model.layers", "self_attn.o_proj", "columns", 16, ["head_dim"]),
        ("gpt2", "transformer.h", "attn.c_proj", "rows", 12, []),  # Conv1D
        ("deepseek_v3", "model.layers", "self_attn.o_proj", "columns", 12, ["v_head_dim"]),  # MLA
        ("gemma3", "model.language_model.layers", "self_attn.o_proj", "columns", 16, ["head_dim"]),  # nested
        ("phi", "model.layers", "self_attn.dense", "columns", 16, ["head_dim"]),
    ],
)
def test_probe_finds_the_projection_and_layout(model_type, layers, projection, layout, head_dim, head_dim_keys):
    probe, _ = scaffold_probe(model_type)
    assert (probe.layers, probe.output_projection, probe.layout) == (layers, projection, layout)
    assert (probe.num_layers, probe.num_heads, probe.head_dim, probe.head_dim_keys) == (3, 4, head_dim, head_dim_keys)


def test_probe_agrees_with_every_shipped_scaffolded_recipe():
    """The probe re-derives the heads section of each recipe whose tiny model it can run."""
    from tiny_models import SCAFFOLDED

    by_type = {mt: r for r in list_recipes() for mt in r.match.model_types}
    for model_type in SCAFFOLDED:
        probe, _ = scaffold_probe(model_type)
        heads = by_type[model_type].heads
        assert (heads.layers, heads.output_projection, heads.layout.value) == (
            probe.layers, probe.output_projection, probe.layout,
        ), model_type  # fmt: skip


def test_probe_refuses_mixed_heads_in_one_line():
    # BitNet normalises the concatenated heads (attn_sub_norm) before o_proj: no input is a per-head slice.
    with pytest.raises(UnsupportedArchitectureError) as info:
        probe_model(tiny_model(tiny_config("bitnet")))
    assert str(info.value) == (
        "model_type 'bitnet': no single projection in layer 0 takes the per-head outputs as its input "
        "(candidates: none): heads are mixed before any projection"
    )


def test_probe_refuses_models_outside_the_attention_interface():
    # MPT computes attention inline: the probe cannot scale a head, so it refuses rather than guess by name.
    with pytest.raises(UnsupportedArchitectureError, match="^model_type 'mpt': its attention never calls"):
        probe_model(tiny_model(tiny_config("mpt")))


def test_cli_scaffold_writes_a_recipe_that_loads(tmp_path, capsys):
    code, out, err = run_cli(["recipes", "scaffold", "olmo2", "--out", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    path = tmp_path / "rope" / "olmo2.yaml"
    assert data["path"] == str(path)
    assert data["heads"]["output_projection"] == "self_attn.o_proj"
    assert [line.split(":")[0] for line in data["checks"]] == ["hooks == fold", "tau = 1", "geometry"]
    recipe = load_recipe(path)
    assert (recipe.id, recipe.locate.k, recipe.match.model_types) == ("rope/olmo2", "3%", ["olmo2"])
    assert yaml.safe_load(path.read_text())["extends"] == "rope/llama"
    code, _, err = run_cli(["recipes", "scaffold", "olmo2", "--out", str(tmp_path)], capsys)
    assert code == 3
    assert err.strip().splitlines() == [f"error: {path}: exists (pass --force to overwrite)"]


@pytest.mark.parametrize(
    "model_type, message",
    [
        ("no_such_type", "error: transformers 5.25.0 has no model_type 'no_such_type'"),
        ("mamba", "error: model_type 'mamba': cannot be patched: recurrent (state-space or RNN) layers, no attention heads (recipes/unsupported.yaml)"),
    ],
)
def test_cli_scaffold_refusals_are_one_line_exit_3(tmp_path, capsys, model_type, message):
    code, _, err = run_cli(["recipes", "scaffold", model_type, "--out", str(tmp_path)], capsys)
    assert code == 3
    assert err.strip().splitlines() == [message]
    assert list(tmp_path.iterdir()) == []


def test_unsupported_catalog_is_disjoint_from_recipes_and_explains_build():
    covered = {mt for r in list_recipes() for mt in r.match.model_types}
    reasons = unsupported_reasons()
    assert covered & set(reasons) == set()
    with pytest.raises(UnsupportedArchitectureError) as info:
        recipe_for_config({"model_type": "jamba", "architectures": ["JambaForCausalLM"]})
    assert str(info.value) == (
        "model_type 'jamba' cannot be patched: hybrid layers (attention in only some layers, recurrent, "
        "linear-attention or convolution blocks in the rest), which a recipe's one projection per layer cannot describe"
    )


def test_build_explains_an_unsupported_model_in_one_line(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    code, _, err = run_cli(["build", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.json")], capsys)
    assert code == 3
    assert err.strip().splitlines() == [
        "error: model_type 'mamba' cannot be patched: recurrent (state-space or RNN) layers, no attention heads"
    ]
    assert not (tmp_path / "x.json").exists()
