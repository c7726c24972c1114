"""pearzoo/train.py: coefficients trained with the model frozen, the best validated step, the perplexity budget."""

import pytest
import torch

from pearzoo.build import BuildOptions, prepare
from pearzoo.errors import InvalidInputError
from pearzoo.heads import HeadId, geometry_from_config
from pearzoo.hooks import scale_heads
from pearzoo.proxy import token_space
from pearzoo.recipe.schema import TrainSpec
from pearzoo.train import train_coefficients
from test_build import FAST
from tiny_models import tiny_model


def _tiny():
    model, recipe = tiny_model("llama", "gqa")
    space = token_space(recipe.proxy, model.config.vocab_size, {0, 1, 2}, model.config.bos_token_id)
    return model, geometry_from_config(recipe.heads, model.config), space


SPEC = {"steps": 4, "batch_size": 2, "length": 6, "validation_sequences": 4, "validate_every": 2}


def test_progress_and_validation_schedule_on_a_tiny_model():
    model, geometry, space = _tiny()
    ticks = []
    result = train_coefficients(model, geometry, [HeadId(2, 1)], TrainSpec(**SPEC), space, 0, progress=ticks.append)
    assert ticks == [1, 1, 1, 1] and [p.step for p in result.history] == [0, 2, 4]
    assert result.start.coefficients == (1.0,) and result.base_perplexity is None
    assert all(p.perplexity is None and p.within_budget for p in result.history)  # no text: no budget
    assert result.best == min(result.history, key=lambda p: (p.loss, p.step))


def test_a_text_term_without_text_is_refused():
    model, geometry, space = _tiny()
    spec = TrainSpec(**SPEC, preservation={"weight": 1.0})
    with pytest.raises(InvalidInputError) as err:
        train_coefficients(model, geometry, [HeadId(0, 0)], spec, space, 0)
    assert str(err.value) == "train.preservation.weight > 0 needs natural text, and the model has no tokenizer"


def test_training_is_bit_reproducible_and_keeps_the_best_step(stories260k_dir):
    ctx = prepare(BuildOptions(model=str(stories260k_dir), recipe="rope/llama", overrides=FAST))
    heads = [HeadId(4, 0), HeadId(2, 3)]
    a = train_coefficients(ctx.model, ctx.geometry, heads, ctx.recipe.train, ctx.space, 0)
    b = train_coefficients(ctx.model, ctx.geometry, heads, ctx.recipe.train, ctx.space, 0)
    assert a.coefficients == b.coefficients  # bit-identical floats
    assert [p.step for p in a.history] == [0, 2, 4, 6]
    best = min(a.history, key=lambda p: (p.loss, p.step))
    assert a.best_step == best.step and list(best.coefficients) == a.coefficients
    assert a.history[0].coefficients == (1.0, 1.0)
    assert all(p.grad is None for p in ctx.model.parameters())


def test_perplexity_budget_zero_keeps_only_steps_that_do_not_hurt(stories260k_dir):
    ctx = prepare(BuildOptions(model=str(stories260k_dir), recipe="rope/llama", overrides=FAST + ["train.preservation.budget=0.0", "train.lr=0.5"]))
    from pearzoo.build import text_windows_for

    windows = text_windows_for(ctx)
    r = train_coefficients(ctx.model, ctx.geometry, [HeadId(4, 0), HeadId(3, 1)], ctx.recipe.train, ctx.space, 0, windows)
    best = r.best
    assert best.within_budget and best.perplexity <= r.base_perplexity
    assert all(p.within_budget == (p.perplexity <= r.base_perplexity) for p in r.history)


def test_preservation_weight_trades_copy_loss_for_text_loss(stories260k_dir):
    """The text term uses windows after the budget's, and pulls training towards lower text loss."""
    from pearzoo.build import run_train, text_windows_for, train_text_for
    from pearzoo.text import read_text, text_loss, text_windows

    heads = [HeadId(4, 0), HeadId(3, 1), HeadId(2, 3)]
    runs = {}
    for weight in (0.0, 50.0):
        ctx = prepare(BuildOptions(
            model=str(stories260k_dir), recipe="rope/llama",
            overrides=FAST + ["train.lr=0.2", "train.preservation.budget=10", f"train.preservation.weight={weight}"],
        ))
        runs[weight] = (ctx, run_train(ctx, heads))
    ctx, plain = runs[0.0]
    _, kept = runs[50.0]
    budget, pool = text_windows_for(ctx), train_text_for(prepare(BuildOptions(
        model=str(stories260k_dir), recipe="rope/llama", overrides=FAST + ["train.preservation.weight=1"])))
    assert train_text_for(ctx) is None  # weight 0: no extra text is read
    n = ctx.recipe.train.preservation.windows
    assert pool.shape[1] == budget.shape[1] and pool.shape[0] >= 4
    # disjoint from the budget windows: the pool starts right after them
    both = text_windows(ctx.tokenizer, read_text(ctx.recipe.train.preservation.text), n + 1, budget.shape[1])
    assert torch.equal(both[:n], budget) and torch.equal(both[n], pool[0])
    # Compare where the two trajectories end (the best-step choice is a separate concern).
    end_plain, end_kept = plain.history[-1].coefficients, kept.history[-1].coefficients
    assert end_plain != end_kept

    def loss(coefficients):
        with torch.no_grad(), scale_heads(ctx.model, ctx.geometry, dict(zip(heads, coefficients))):
            return text_loss(ctx.model, pool).item()

    assert loss(end_kept) < loss(end_plain)
