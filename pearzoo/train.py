"""Learning the coefficients (spec §3): one float32 scalar per located head, the model frozen.

The best step is chosen on held-out copy sequences, among the steps whose natural-text perplexity
stays within the recipe's budget (issue #2), so the stopping point is reproducible, not hand-picked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pearzoo.errors import InvalidInputError
from pearzoo.heads import HeadGeometry, HeadId
from pearzoo.hooks import scale_heads
from pearzoo.proxy import TokenSpace, copy_loss, copy_score, generator, sample_sequences
from pearzoo.recipe.schema import TrainSpec
from pearzoo.text import perplexity, text_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationPoint:
    step: int
    loss: float
    accuracy: float
    perplexity: float | None
    within_budget: bool
    coefficients: tuple[float, ...]


@dataclass
class TrainResult:
    heads: list[HeadId]
    coefficients: list[float]
    best_step: int
    history: list[ValidationPoint] = field(default_factory=list)
    base_perplexity: float | None = None
    seconds: float = 0.0

    @property
    def best(self) -> ValidationPoint:
        return next(p for p in self.history if p.step == self.best_step)

    @property
    def start(self) -> ValidationPoint:
        return self.history[0]


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

    def coefficients(values: torch.Tensor) -> dict[HeadId, Any]:
        return {h: values[i] for i, h in enumerate(heads)}

    base_ppl = perplexity(model, text_windows) if text_windows is not None else None
    history: list[ValidationPoint] = []

    def validate(step: int) -> None:
        snapshot = tau.detach().clone()
        with scale_heads(model, geometry, coefficients(snapshot)):
            score = copy_score(model, validation, spec.length, space.prefix)
            ppl = perplexity(model, text_windows) if text_windows is not None and step > 0 else base_ppl
        within = base_ppl is None or ppl <= base_ppl * (1.0 + spec.preservation.budget)
        history.append(
            ValidationPoint(step, score.loss, score.accuracy, ppl, within, tuple(float(v) for v in snapshot.tolist()))
        )
        logger.info("train: step %d val loss %.4f acc %.4f ppl %s", step, score.loss, score.accuracy, ppl)

    validate(0)
    for step in range(1, spec.steps + 1):
        batch = sample_sequences(space, spec.batch_size, spec.length, train_gen)
        with scale_heads(model, geometry, coefficients(tau)):
            loss = copy_loss(model, batch, spec.length, space.prefix)
            if weight > 0:
                # Copying is bought with general language modelling (issue #2); pricing the latter into the
                # objective moves the coefficients along a better trade-off than early stopping alone.
                pick = torch.randperm(train_text.shape[0], generator=text_gen)[: spec.preservation.text_batch]
                loss = loss + weight * text_loss(model, train_text[pick])
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
    return TrainResult(
        heads=list(heads),
        coefficients=list(best.coefficients),
        best_step=best.step,
        history=history,
        base_perplexity=base_ppl,
        seconds=time.perf_counter() - start_time,
    )
