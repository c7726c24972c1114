"""The fast training path against the plain computation it replaces (issue #15).

Two changes, both meant to leave every number as it was: the copy task's logits gathered by a position tensor
(one contiguous product) instead of the full or strided logits, and `FrozenPrefix`, which replays the layers
below the lowest re-weighted one for inputs it has already seen.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

import pearzoo.build as build_module
import pearzoo.train as train_module
from pearzoo.build import BuildOptions, build_manifest, prepare
from pearzoo.heads import HeadId, decoder_layers, geometry_from_config
from pearzoo.hooks import scale_heads
from pearzoo.proxy import TokenSpace, copy_loss, copy_score, generator, sample_sequences
from pearzoo.replay import FrozenPrefix
from pearzoo.text import perplexity, text_loss
from pearzoo.train import TrainResult, TrainSeconds, train_coefficients
from tiny_models import tiny_model
from _tolerances import GATHERED_VS_FULL_LOGITS

FAST = [
    "locate.k=3",
    "locate.configurations=[{samples: 6, length: 8}, {samples: 8, length: 5}]",
    "train.steps=6",
    "train.batch_size=4",
    "train.length=8",
    "train.validation_sequences=8",
    "train.validate_every=2",
    "train.preservation.windows=2",
    "train.preservation.window_length=32",
]

ARCHITECTURES = ["llama", "gpt2", "bloom", "gpt_neox"]


def _setup(model_type: str):
    model, recipe = tiny_model(model_type)
    model.requires_grad_(False)
    geometry = geometry_from_config(recipe.heads, model.config)
    vocab = model.get_input_embeddings().weight.shape[0]
    space = TokenSpace(allowed=torch.arange(3, vocab), bos_id=None)
    return model, geometry, space


def _plain_loss(model, batch, length):
    # The definition (spec §3): all logits, cross-entropy of positions n-1 .. 2n-2 against tokens n .. 2n-1.
    logits = model(input_ids=batch, use_cache=False).logits[:, length - 1 : 2 * length - 1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, length:].reshape(-1))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_gathered_copy_loss_and_gradient_equal_the_full_logits(model_type):
    model, geometry, space = _setup(model_type)
    heads = [HeadId(geometry.num_layers - 1, 0), HeadId(1, 1)]
    batch = sample_sequences(space, 4, 7, generator(0, "t"))
    results = []
    for loss_fn in (lambda b: _plain_loss(model, b, 7), lambda b: copy_loss(model, b, 7)):
        tau = torch.tensor([0.6, 1.3], requires_grad=True)
        with scale_heads(model, geometry, {h: tau[i] for i, h in enumerate(heads)}):
            loss = loss_fn(batch)
        loss.backward()
        results.append((loss.item(), tau.grad.clone()))
    (plain, plain_grad), (fast, fast_grad) = results
    assert abs(plain - fast) <= GATHERED_VS_FULL_LOGITS * abs(plain)
    assert torch.allclose(fast_grad, plain_grad, rtol=GATHERED_VS_FULL_LOGITS, atol=0)
    assert plain_grad.abs().min() > 1e-4  # both heads matter, so the comparison means something


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_frozen_prefix_replays_bit_identical_scores_and_skips_the_layers(model_type):
    model, geometry, space = _setup(model_type)
    layers = decoder_layers(model, geometry)
    seqs = sample_sequences(space, 6, 5, generator(0, "v"))
    windows = sample_sequences(space, 3, 8, generator(0, "w"))
    coefficients = {HeadId(1, 0): 0.5, HeadId(2, 1): 1.7}
    with scale_heads(model, geometry, coefficients):
        plain = copy_score(model, seqs, 5, batch_size=4), perplexity(model, windows, batch_size=2)
    frozen = FrozenPrefix(model, geometry, 1)
    replays = []
    for _ in range(3):
        with scale_heads(model, geometry, coefficients), frozen.active():
            replays.append((copy_score(model, seqs, 5, batch_size=4), perplexity(model, windows, batch_size=2)))
    assert all(r == plain for r in replays)  # exact: CopyScore and float equality
    # 2 copy batches + 2 text batches, recorded on the first round and replayed on the other two.
    assert len(frozen.recorded) == 4 and frozen.replayed == 2 * 4
    assert all("forward" not in layer.__dict__ for layer in layers)


def test_frozen_prefix_does_not_run_the_frozen_layers_on_replay():
    model, geometry, space = _setup("llama")
    layers = decoder_layers(model, geometry)
    calls = [0]
    handle = layers[0].mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    seqs = sample_sequences(space, 4, 5, generator(0, "v"))
    frozen = FrozenPrefix(model, geometry, 2)
    try:
        with frozen.active():
            for _ in range(3):
                copy_score(model, seqs, 5)
        outside = copy_score(model, seqs, 5)
    finally:
        handle.remove()
    assert calls[0] == 2  # the recording pass, and the pass after the block
    assert outside == copy_score(model, seqs, 5)


def test_frozen_prefix_leaves_gradient_passes_and_positional_calls_alone():
    model, geometry, space = _setup("llama")
    seqs = sample_sequences(space, 2, 5, generator(0, "v"))
    frozen = FrozenPrefix(model, geometry, 2)
    with frozen.active():
        copy_loss(model, seqs, 5)  # autograd on: neither recorded nor replayed
        with torch.no_grad():
            model(seqs)  # input ids by position: no key
    assert frozen.recorded == {} and frozen.replayed == 0


def test_frozen_prefix_restores_an_instance_forward():
    model, geometry, _ = _setup("llama")
    layer = decoder_layers(model, geometry)[0]
    own = layer.forward  # a bound method stored on the instance, as accelerate's hooks do
    layer.forward = own
    with FrozenPrefix(model, geometry, 1).active():
        assert layer.forward is not own
    assert layer.__dict__["forward"] is own


@contextmanager
def _plain_path(monkeypatch):
    """Training and the build's metrics as before issue #15: every layer on every pass, strided logits."""

    class NoReplay(FrozenPrefix):
        def __init__(self, model, geometry, layer):
            super().__init__(model, geometry, 0)

    def strided_logits(model, batch, length, prefix):
        out = model(input_ids=batch, use_cache=False, logits_to_keep=length + 1)
        return out.logits[:, :-1, :]

    with monkeypatch.context() as m:
        m.setattr(train_module, "FrozenPrefix", NoReplay)
        m.setattr("pearzoo.replay.FrozenPrefix", NoReplay)
        m.setattr("pearzoo.proxy._second_half_logits", strided_logits)
        yield


def test_fast_build_equals_the_plain_build(stories260k_dir, monkeypatch):
    options = BuildOptions(model=str(stories260k_dir), recipe="rope/llama", overrides=FAST)
    fast = build_manifest(options)
    with _plain_path(monkeypatch):
        plain = build_manifest(options)
    assert min(h.layer for h in fast.heads) > 0  # the replay had layers to skip
    assert [(h.layer, h.head, h.score, h.coefficient) for h in fast.heads] == [
        (h.layer, h.head, h.score, h.coefficient) for h in plain.heads
    ]
    assert fast.metrics == plain.metrics


def test_train_result_is_typed_and_times_its_parts(stories260k_dir):
    ctx = prepare(BuildOptions(model=str(stories260k_dir), recipe="rope/llama", overrides=FAST))
    windows = build_module.text_windows_for(ctx)
    result = train_coefficients(ctx.model, ctx.geometry, [HeadId(4, 0), HeadId(3, 1)], ctx.recipe.train, ctx.space, 0, windows)
    doc = result.model_dump(mode="json")
    assert TrainResult.model_validate(doc) == result
    assert doc["heads"] == [{"layer": 4, "head": 0}, {"layer": 3, "head": 1}]
    assert [p["step"] for p in doc["history"]] == [0, 2, 4, 6]
    stages = result.stages
    assert isinstance(stages, TrainSeconds) and stages.total == result.seconds
    parts = stages.forward + stages.backward + stages.validation + stages.perplexity
    assert 0 < parts <= stages.total
    with pytest.raises(ValueError, match="extra"):
        TrainResult.model_validate(doc | {"unknown": 1})


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_perplexity_and_text_loss_equal_the_full_logits(model_type):
    model, geometry, space = _setup(model_type)
    windows = sample_sequences(space, 3, 8, generator(0, "w"))
    head = HeadId(1, 0)
    tau = torch.tensor(0.7, requires_grad=True)
    with scale_heads(model, geometry, {head: tau}):
        logits = model(input_ids=windows, use_cache=False).logits[:, :-1]
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="none")
        plain = per_token.mean()
        (plain_grad,) = torch.autograd.grad(plain, tau)
        fast = text_loss(model, windows)
        (fast_grad,) = torch.autograd.grad(fast, tau)
        fast_ppl = perplexity(model, windows, batch_size=2)
    assert abs(fast.item() - plain.item()) <= GATHERED_VS_FULL_LOGITS * plain.item()
    assert abs(fast_grad.item() - plain_grad.item()) <= GATHERED_VS_FULL_LOGITS * abs(plain_grad.item())
    assert abs(fast_grad.item()) > 1e-4
    assert abs(math.log(fast_ppl) - plain.item()) <= GATHERED_VS_FULL_LOGITS * plain.item()
