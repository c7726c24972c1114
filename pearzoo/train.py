"""Learning the coefficients (spec §3): one float32 scalar per located head, the model frozen.

The best step is chosen on held-out copy sequences, among the steps whose natural-text perplexity
stays within the recipe's budget (issue #2), so the stopping point is reproducible, not hand-picked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from pearzoo.errors import InvalidInputError
from pearzoo.heads import HeadGeometry, HeadId
from pearzoo.hooks import scale_heads
from pearzoo.proxy import TokenSpace, copy_loss, copy_score, generator, sample_sequences
from pearzoo.recipe.schema import TrainSpec
from pearzoo.replay import FrozenPrefix
from pearzoo.text import perplexity, text_loss
from pearzoo.train_precision import precision

logger = logging.getLogger(__name__)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidationPoint(_Out):
    """One validated step: held-out copy scores, the perplexity budget check, the coefficients then."""

    step: int = Field(description="Optimizer steps taken (0: all coefficients 1).")
    loss: float = Field(description="Mean second-half cross-entropy on the validation sequences.")
    accuracy: float = Field(description="Copy accuracy on the validation sequences (spec §1).")
    perplexity: float | None = Field(description="Perplexity on the budget's text windows; null without a tokenizer.")
    within_budget: bool = Field(description="perplexity <= base perplexity x (1 + budget), or no budget to check.")
    coefficients: tuple[float, ...] = Field(description="The coefficients at this step, in head order.")


class TrainSeconds(_Out):
    """Wall time of each part of training (sums to about `total`; the rest is sampling and bookkeeping)."""

    forward: float = Field(description="Training forward passes and losses.")
    backward: float = Field(description="Backward passes and optimizer steps.")
    validation: float = Field(description="Copy scores on the validation sequences.")
    perplexity: float = Field(description="Perplexity budget checks, the base perplexity included.")
    total: float


class TrainResult(_Out):
    """What `train_coefficients` returns; `model_dump(mode="json")` is what `pearzoo train --json` prints."""

    heads: list[HeadId] = Field(description="The re-weighted heads, in the order of `coefficients`.")
    coefficients: list[float] = Field(description="The coefficients of the best step.")
    best_step: int = Field(description="The validated step with the lowest loss among those within the budget.")
    history: list[ValidationPoint]
    base_perplexity: float | None = Field(default=None, description="Perplexity of the unmodified model.")
    seconds: float = Field(default=0.0, description="Wall time of the whole of training.")
    stages: TrainSeconds | None = Field(default=None, description="`seconds`, part by part.")

    @property
    def best(self) -> ValidationPoint:
        return next(p for p in self.history if p.step == self.best_step)

    @property
    def start(self) -> ValidationPoint:
        return self.history[0]


class _Clock:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(("forward", "backward", "validation", "perplexity"), 0.0)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


def train_coefficients(
    model: Any,
    geometry: HeadGeometry,
    heads: list[HeadId],
    spec: TrainSpec,
    space: TokenSpace,
    seed: int,
    text_windows: torch.Tensor | None = None,
    train_text: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one coefficient per head on the copying task and keep the best validated step.

    Args:
        model: a loaded, frozen `*ForCausalLM` model.
        heads (`list[HeadId]`): the heads to re-weight (usually `LocateResult.selected`).
        spec (`TrainSpec`): optimizer, schedule, batch, validation and preservation settings.
        space (`TokenSpace`): ids to sample.
        seed (`int`): training batches come from stream ``train``, validation from ``validation``.
        text_windows (`torch.Tensor`, *optional*): token windows for the perplexity budget; without
            them the budget is not checked (recorded as `perplexity: None`).
        train_text (`torch.Tensor`, *optional*): token windows, disjoint from `text_windows`, for the
            preservation term (`spec.preservation.weight` > 0); each step draws `text_batch` of them.
        progress (*optional*): called with 1 after each optimizer step.

    Returns:
        `TrainResult` with the coefficients of the best step (step 0 means all ones).
    """
    start_time = time.perf_counter()
    clock = _Clock()
    for h in heads:
        geometry.check(h)
    model.requires_grad_(False)
    tau = torch.ones(len(heads), dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.AdamW([tau], lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(1, spec.steps)))
    train_gen = generator(seed, "train")
    text_gen = generator(seed, "train/text")
    weight = spec.preservation.weight
    if weight > 0 and train_text is None:
        raise InvalidInputError(
            "train.preservation.weight > 0 needs natural text, and the model has no tokenizer",
            field="train.preservation.weight",
        )
    validation = sample_sequences(space, spec.validation_sequences, spec.length, generator(seed, "validation"))
    # Validation and the budget score fixed inputs at every check: the layers below the lowest re-weighted one
    # run once per input and are replayed after that (pearzoo.replay; same values).
    frozen = FrozenPrefix(model, geometry, min((h.layer for h in heads), default=0))

    def coefficients(values: torch.Tensor) -> dict[HeadId, Any]:
        return {h: values[i] for i, h in enumerate(heads)}

    # Every pass below runs with the recipe's arithmetic (float32 unless train.precision says bfloat16); the
    # replayed prefix is recorded under it too, so replays stay bit-identical to the passes they stand for.
    arithmetic = spec.precision
    base_ppl = None
    if text_windows is not None:
        with clock("perplexity"), frozen.active(), precision(model, arithmetic):
            base_ppl = perplexity(model, text_windows)
    history: list[ValidationPoint] = []

    def validate(step: int) -> None:
        snapshot = tau.detach().clone()
        with scale_heads(model, geometry, coefficients(snapshot)), frozen.active(), precision(model, arithmetic):
            with clock("validation"):
                score = copy_score(model, validation, spec.length, space.prefix)
            with clock("perplexity"):
                ppl = perplexity(model, text_windows) if text_windows is not None and step > 0 else base_ppl
        within = base_ppl is None or ppl <= base_ppl * (1.0 + spec.preservation.budget)
        history.append(
            ValidationPoint(
                step=step,
                loss=score.loss,
                accuracy=score.accuracy,
                perplexity=ppl,
                within_budget=within,
                coefficients=tuple(float(v) for v in snapshot.tolist()),
            )
        )
        logger.info("train: step %d val loss %.4f acc %.4f ppl %s", step, score.loss, score.accuracy, ppl)

    validate(0)
    for step in range(1, spec.steps + 1):
        batch = sample_sequences(space, spec.batch_size, spec.length, train_gen)
        with clock("forward"), scale_heads(model, geometry, coefficients(tau)), precision(model, arithmetic):
            loss = copy_loss(model, batch, spec.length, space.prefix)
            if weight > 0:
                # Copying is bought with general language modelling (issue #2); pricing the latter into the
                # objective moves the coefficients along a better trade-off than early stopping alone.
                pick = torch.randperm(train_text.shape[0], generator=text_gen)[: spec.preservation.text_batch]
                loss = loss + weight * text_loss(model, train_text[pick])
        with clock("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if not torch.isfinite(tau).all():
            raise FloatingPointError(f"coefficients diverged at step {step}: {tau.tolist()}")
        if step % spec.validate_every == 0 or step == spec.steps:
            validate(step)
        if progress is not None:
            progress(1)
    eligible = [p for p in history if p.within_budget]
    best = min(eligible, key=lambda p: (p.loss, p.step))
    total = time.perf_counter() - start_time
    return TrainResult(
        heads=list(heads),
        coefficients=list(best.coefficients),
        best_step=best.step,
        history=history,
        base_perplexity=base_ppl,
        seconds=total,
        stages=TrainSeconds(**clock.seconds, total=total),
    )
