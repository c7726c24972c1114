"""Scoring every head (spec §2) over the recipe's configurations, batched by layer; the top K are the suppression heads.

The single-token ablation machinery is `pearzoo.locate.locator`; the optional first-order pre-screen is
`pearzoo.locate.prescreen`.
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
from pearzoo.locate.locator import _Clean, _Locator
from pearzoo.locate.prefix_cache import TiledCache, cache_bytes_per_row
from pearzoo.locate.prescreen import attribution
from pearzoo.proxy import TokenSpace, generator, sample_sequences
from pearzoo.recipe.schema import LocateSpec, Scope

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


# A layer whose heads give fewer rows than this shares its batch with the next layer(s): fewer, larger matmuls,
# at the price of recomputing the clean rows of the higher layers from the batch's lowest layer.
MIN_BATCH_ROWS = 128


@dataclass
class ConfigurationResult:
    samples: int
    length: int
    clean_metric: float
    ablated_metric: torch.Tensor  # [layers, heads]

    @property
    def delta(self) -> torch.Tensor:
        return self.ablated_metric - self.clean_metric

    @property
    def score(self) -> torch.Tensor:
        return self.ablated_metric / self.clean_metric - 1.0


@dataclass
class LocateResult:
    """Scores of every head, averaged over the configurations (spec §2.4), and the top-K set."""

    scope: Scope
    geometry: HeadGeometry
    configurations: list[ConfigurationResult]
    k: int
    seconds: float = 0.0
    ranking: list[HeadId] = field(default_factory=list)
    # With the attribution pre-screen: the heads scored exactly (the rest carry first-order estimates).
    exact: list[HeadId] | None = None

    @property
    def score(self) -> torch.Tensor:
        return torch.stack([c.score for c in self.configurations]).mean(0)

    @property
    def delta(self) -> torch.Tensor:
        return torch.stack([c.delta for c in self.configurations]).mean(0)

    @property
    def selected(self) -> list[HeadId]:
        return self.ranking[: self.k]


def _batches(heads: list[HeadId], samples: int, max_rows: int) -> list[list[HeadId]]:
    """Heads in layer order, packed into batches of at most `max_rows` rows (`samples` rows per head).

    A batch ends at a layer boundary once it holds `MIN_BATCH_ROWS` rows: a batch spanning layers recomputes the
    clean rows of its higher layers from its lowest one. A layer too large for one batch is split evenly.
    """
    per_batch = max(1, max_rows // samples)
    batches: list[list[HeadId]] = []
    current: list[HeadId] = []
    by_layer: dict[int, list[HeadId]] = {}
    for h in heads:
        by_layer.setdefault(h.layer, []).append(h)
    for layer_heads in by_layer.values():
        if current and len(current) * samples >= MIN_BATCH_ROWS:
            batches.append(current)
            current = []
        while layer_heads:
            room = per_batch - len(current)
            if room <= 0:
                batches.append(current)
                current, room = [], per_batch
            if not current and len(layer_heads) > per_batch:
                # Split a big layer into near-equal batches rather than full ones and a small remainder.
                parts = -(-len(layer_heads) // per_batch)
                room = -(-len(layer_heads) // parts)
            current.extend(layer_heads[:room])
            layer_heads = layer_heads[room:]
    if current:
        batches.append(current)
    return batches


def locate_heads(
    model: Any,
    geometry: HeadGeometry,
    spec: LocateSpec,
    space: TokenSpace,
    seed: int,
    progress: Progress | None = None,
    sequences: list[torch.Tensor] | None = None,
    candidates: int | None = None,
) -> LocateResult:
    """Score every head's effect on copying and pick the top-K suppression heads.

    Args:
        model: a loaded `*ForCausalLM` model in eval mode (any device or device_map).
        geometry (`HeadGeometry`): from `pearzoo.heads.geometry_from_config`.
        spec (`LocateSpec`): scope, K, configurations and batching bound.
        space (`TokenSpace`): ids to sample and the optional BOS.
        seed (`int`): the build seed; configuration i draws from stream ``locate/i``.
        progress (*optional*): called with the number of heads finished after each batch.
        sequences (*optional*): pre-drawn inputs per configuration (tests); shapes must match `spec`.
        candidates (*optional*): pre-screen with attribution patching (`pearzoo.locate.prescreen`) and score only this
            many heads exactly (K <= candidates <= all heads); the top K comes from them. Default: every head.

    Returns:
        `LocateResult` with per-configuration clean and ablated metrics, the averaged scores and ranking.
    """
    start = time.perf_counter()
    loc = _Locator(model, geometry)
    all_heads = geometry.all_heads()
    if candidates is not None and not spec.k <= candidates <= len(all_heads):
        raise InvalidInputError(f"candidates: {candidates} is outside [K={spec.k}, {len(all_heads)} heads]")
    results: list[ConfigurationResult] = []
    screened: list[_Run] = []  # with a pre-screen, every configuration's clean run waits for the candidates
    with torch.inference_mode():
        for index, conf in enumerate(spec.configurations):
            seqs = sequences[index] if sequences is not None else sample_sequences(
                space, conf.samples, conf.length, generator(seed, f"locate/{index}")
            )
            p = space.prefix + 2 * conf.length - 2
            clean = loc.clean(seqs, p)
            if loc.shared is None:
                loc.shared = loc.verify_shared(seqs, p, clean)
            if candidates is None:
                results.append(_score(loc, spec, _Run(conf, seqs, p, clean), all_heads, progress))
            else:
                screened.append(_Run(conf, seqs, p, clean, attribution(loc, seqs, p, clean, spec.scope)))
        heads = all_heads
        if screened:
            guess = torch.stack([run.estimate / run.clean.metric.mean().item() - 1.0 for run in screened]).mean(0)
            ranked = sorted(all_heads, key=lambda h: (-guess[h.layer, h.head].item(), h))
            heads = sorted(ranked[:candidates])
            results = [_score(loc, spec, run, heads, progress) for run in screened]
    result = LocateResult(scope=spec.scope, geometry=geometry, configurations=results, k=spec.k)
    score = result.score
    exact = set(heads)
    # Exactly scored heads first, so the top K always comes from them.
    order = sorted(all_heads, key=lambda h: (h not in exact, -score[h.layer, h.head].item(), h))
    result.ranking = order
    result.exact = None if candidates is None else sorted(heads)
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class _Run:
    """One configuration's inputs and clean run, and the pre-screen's estimate of its ablated metrics."""

    conf: Any
    seqs: torch.Tensor
    p: int
    clean: _Clean
    estimate: torch.Tensor | None = None


def _score(loc: _Locator, spec: LocateSpec, run: _Run, heads: list[HeadId], progress: Progress | None) -> ConfigurationResult:
    """Ablate `heads` (sorted by layer) exactly in one configuration; other heads keep the run's estimate."""
    conf, seqs, p, clean, estimate = run.conf, run.seqs, run.p, run.clean, run.estimate
    geometry = loc.geometry
    pi = clean.metric.mean().item()
    ablated = estimate.clone() if estimate is not None else torch.empty(geometry.num_layers, geometry.num_heads, dtype=torch.float64)
    max_rows = spec.max_batch_rows
    # Attention runs under an ablation in total scope, and where a module cannot be replayed; without the
    # shared-prefix path it then needs the prefix tiled per row, which max_cache_gib bounds.
    tiling = not loc.shared and (spec.scope is Scope.total or not all(clean.pure))
    if tiling:
        per_row = max(1, cache_bytes_per_row(clean.cache))
        max_rows = min(max_rows, int(spec.max_cache_gib * 2**30) // per_row)
    batches = _batches(heads, conf.samples, max_rows)
    tiled = None
    if tiling:
        tiled = TiledCache(clean.cache, conf.samples, max(len(b) for b in batches) * conf.samples, p)
    for chunk in batches:
        values = loc.ablate(seqs, p, clean, tiled, chunk, spec.scope).double().cpu()
        for head, value in zip(chunk, values.tolist()):
            ablated[head.layer, head.head] = value
        if progress is not None:
            progress(len(chunk))
    del tiled
    logger.info("locate: configuration N=%d, n=%d, clean metric %.4f", conf.samples, conf.length, pi)
    return ConfigurationResult(conf.samples, conf.length, pi, ablated)
