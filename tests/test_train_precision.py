"""`train.precision` (pearzoo/train_precision.py): bfloat16 autocast for training and its checks.

float32 stays the default and leaves every recipe digest as it was; bfloat16 must really run the products in
bfloat16 (else it buys nothing), stay close to float32 (else the audit tolerance could not hold), stay
deterministic, and put the model's attention back as it found it.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from pearzoo.heads import HeadId, geometry_from_config
from pearzoo.hooks import scale_heads
from pearzoo.proxy import copy_loss, generator, sample_sequences, token_space
from pearzoo.recipe.catalog import get_recipe
from pearzoo.recipe.load import recipe_digest
from pearzoo.recipe.schema import TrainSpec
from pearzoo.train import train_coefficients
from pearzoo.train_precision import precision
from tiny_models import tiny_model


def _tiny():
    model, recipe = tiny_model("llama", "gqa")
    model.requires_grad_(False)
    space = token_space(recipe.proxy, model.config.vocab_size, {0, 1, 2}, model.config.bos_token_id)
    return model, geometry_from_config(recipe.heads, model.config), space


def test_float32_is_the_default_and_left_out_of_a_dump():
    recipe, _ = get_recipe("rope/llama")
    assert recipe.train.precision == "float32"
    assert "precision" not in recipe.model_dump(mode="json")["train"]
    bf16, _ = get_recipe("rope/llama", ["train.precision=bfloat16"])
    assert bf16.model_dump(mode="json")["train"]["precision"] == "bfloat16"
    assert recipe_digest(bf16) != recipe_digest(recipe)
    with pytest.raises(ValidationError, match="Input should be 'float32' or 'bfloat16'"):
        TrainSpec(precision="float16")


def test_bfloat16_runs_the_products_in_bfloat16_and_attention_in_float32():
    model, geometry, space = _tiny()
    assert model.config._attn_implementation == "sdpa"
    seen: dict[str, torch.dtype] = {}
    layer = model.model.layers[1]
    hooks = [
        layer.mlp.down_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("product", out.dtype)),
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("attention", a[0].dtype)),
    ]
    batch = sample_sequences(space, 4, 6, generator(0, "t"))
    heads = [HeadId(1, 0), HeadId(2, 3)]
    losses, grads = {}, {}
    try:
        for name in ("float32", "bfloat16"):
            tau = torch.tensor([0.7, 1.2], requires_grad=True)
            with scale_heads(model, geometry, {h: tau[i] for i, h in enumerate(heads)}), precision(model, name):
                loss = copy_loss(model, batch, 6)
                inside = model.config._attn_implementation
            loss.backward()  # outside the block: the graph keeps its dtypes
            losses[name], grads[name] = loss.item(), tau.grad.clone()
            assert (seen["product"], seen["attention"]) == ((torch.float32,) * 2 if name == "float32" else (torch.bfloat16, torch.float32))
            assert inside == ("sdpa" if name == "float32" else "pearzoo_sdpa_float32")
            assert model.config._attn_implementation == "sdpa"  # put back
    finally:
        for h in hooks:
            h.remove()
    assert losses["bfloat16"] != losses["float32"]  # not a no-op
    assert abs(losses["bfloat16"] - losses["float32"]) <= 2e-2 * abs(losses["float32"])
    assert torch.allclose(grads["bfloat16"], grads["float32"], rtol=0.1, atol=2e-3)
    assert grads["float32"].abs().min() > 1e-3


def test_bfloat16_training_is_deterministic_and_near_float32():
    model, geometry, space = _tiny()
    spec = {"steps": 6, "batch_size": 4, "length": 6, "validation_sequences": 8, "validate_every": 2, "lr": 0.05}
    heads = [HeadId(1, 0), HeadId(2, 3)]
    f32 = train_coefficients(model, geometry, heads, TrainSpec(**spec), space, 0)
    a = train_coefficients(model, geometry, heads, TrainSpec(**spec, precision="bfloat16"), space, 0)
    b = train_coefficients(model, geometry, heads, TrainSpec(**spec, precision="bfloat16"), space, 0)
    assert a.history == b.history  # bit-identical, the replayed validation passes included
    assert [p.step for p in a.history] == [0, 2, 4, 6]
    trained = [p for p in a.history if p.step == 6][0].coefficients
    reference = [p for p in f32.history if p.step == 6][0].coefficients
    assert max(abs(x - 1) for x in reference) > 0.1  # the coefficients moved, so the comparison means something
    assert max(abs(x - y) for x, y in zip(trained, reference)) <= 0.05  # the recipes' default audit tolerance
    assert all(isinstance(v, float) for v in trained)
    assert model.config._attn_implementation == "sdpa"


def test_bfloat16_leaves_an_eager_model_to_autocast():
    model, geometry, space = _tiny()
    model.config._attn_implementation = "eager"
    batch = sample_sequences(space, 2, 6, generator(0, "t"))
    with torch.no_grad(), precision(model, "bfloat16"):
        assert model.config._attn_implementation == "eager"
        logits = model(input_ids=batch).logits
    assert logits.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
