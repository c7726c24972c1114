"""pearzoo/hooks.py: runtime head scaling, the un-folded form of PEAR (spec §3)."""

import pytest
import torch

from _tolerances import MIN_LOGIT_EFFECT
from pearzoo.errors import InvalidInputError
from pearzoo.heads import HeadId, geometry_from_config, output_projection
from pearzoo.hooks import scale_heads
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def llama():
    model, recipe = tiny_model("llama", "gqa")
    model.requires_grad_(False)
    ids = torch.randint(3, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    return model, geometry_from_config(recipe.heads, model.config), ids


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _by_hand(model, geometry, ids, layer, head, tau):
    """The head's slice of the output-projection input multiplied by tau, written plainly."""
    hd = geometry.head_dim

    def pre(mod, args):
        x = args[0].clone()
        x[..., head * hd : (head + 1) * hd] *= tau
        return (x,)

    handle = output_projection(model, geometry, layer).register_forward_pre_hook(pre)
    try:
        return _logits(model, ids)
    finally:
        handle.remove()


def test_tau_one_changes_nothing_and_hooks_are_removed(llama):
    model, geometry, ids = llama
    base = _logits(model, ids)
    with scale_heads(model, geometry, {HeadId(0, 1): 1.0, HeadId(1, 0): torch.tensor(1.0)}):
        same = _logits(model, ids)
    assert torch.equal(same, base)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_scaling_equals_the_slice_scaled_by_hand(llama):
    model, geometry, ids = llama
    base = _logits(model, ids)
    with scale_heads(model, geometry, {HeadId(1, 2): 0.25}):
        scaled = _logits(model, ids)
    assert torch.equal(scaled, _by_hand(model, geometry, ids, 1, 2, 0.25))
    assert (scaled - base).abs().max().item() > MIN_LOGIT_EFFECT


def test_tensor_coefficients_are_differentiable(llama):
    model, geometry, ids = llama
    tau = torch.tensor(0.5, requires_grad=True)
    with scale_heads(model, geometry, {HeadId(0, 3): tau}):
        model(input_ids=ids).logits.sum().backward()
    assert tau.grad is not None and tau.grad.item() != 0.0


def test_a_head_outside_the_model_is_refused(llama):
    model, geometry, _ = llama
    with pytest.raises(InvalidInputError) as err:
        with scale_heads(model, geometry, {HeadId(geometry.num_layers, 0): 0.5}):
            pass
    assert str(err.value) == f"head {geometry.num_layers}.0: layer {geometry.num_layers} out of range (model has {geometry.num_layers} layers)"
