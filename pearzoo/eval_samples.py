"""The per-unit scores of an eval report (`Samples`) and every interval computed from them: what
`pearzoo eval` puts in `samples` and `intervals`, and what `pearzoo compare` pairs. Statistics: `pearzoo.stats`.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from pearzoo import stats

Interval = tuple[float, float]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CellIntervals(_Out):
    """95% intervals of one cell; gains are differences of accuracies (patched - base, control - base)."""

    base: Interval
    patched: Interval | None = None
    random_heads: Interval | None = None
    gain: Interval | None = None
    random_heads_gain: Interval | None = None


class PerplexityIntervals(_Out):
    """95% intervals of perplexity; changes are relative (patched / base - 1)."""

    base: Interval
    patched: Interval | None = None
    change: Interval | None = None
    random_heads: Interval | None = None
    random_heads_change: Interval | None = None


class Intervals(_Out):
    copy_accuracy: dict[str, CellIntervals]
    perplexity: PerplexityIntervals | None = None
    kv_retrieval: dict[str, dict[str, CellIntervals]] | None = None


class UnitScores(_Out):
    """Per-unit scores of one cell, for pairing reports (`pearzoo compare`)."""

    units_sha256: str = Field(description="sha256 of the units (token ids); equal digests mean the same units.")
    base: list[float]
    patched: list[float] | None = None
    random_heads: list[list[float]] | None = Field(default=None, description="Per draw, per unit.")


class Samples(_Out):
    """Per-unit scores: copy (correct positions of n - 1 per sequence), kv (1/0 per context), perplexity
    (summed negative log-likelihood per window of window_length - 1 predicted tokens)."""

    copy_accuracy: dict[str, UnitScores]
    perplexity: UnitScores | None = None
    kv_retrieval: dict[str, dict[str, UnitScores]] | None = None


def _round(i: Interval) -> Interval:
    return round(i[0], 6), round(i[1], 6)


def cell_intervals(s: UnitScores, scale: float, *, seed: int, stream: str, resamples: int, binary: bool = False) -> CellIntervals:
    """Intervals of one cell from its unit scores; `scale` turns a unit score into an accuracy (1 / positions)."""
    base = [x * scale for x in s.base]
    kw = {"seed": seed, "resamples": resamples}
    out: dict[str, Interval] = {}
    if binary:
        out["base"] = stats.wilson(round(sum(base)), len(base))
    else:
        out["base"] = stats.mean_interval(base, stream=f"{stream}/base", **kw)
    if s.patched is not None:
        patched = [x * scale for x in s.patched]
        if binary:
            out["patched"] = stats.wilson(round(sum(patched)), len(patched))
            out["gain"] = stats.paired_binary_diff(base, patched)
        else:
            out["patched"] = stats.mean_interval(patched, stream=f"{stream}/patched", **kw)
            out["gain"] = stats.paired_diff_interval(base, patched, stream=f"{stream}/gain", **kw)
    if s.random_heads:
        x = torch.tensor(s.random_heads, dtype=torch.float64).T * scale  # [units, draws]
        out["random_heads"] = stats.two_level_interval(x, stream=f"{stream}/random", **kw)
        out["random_heads_gain"] = stats.two_level_interval(x, base, stream=f"{stream}/random-gain", **kw)
        if binary and out["random_heads"][0] == out["random_heads"][1]:
            # Every context and draw scored alike: the percentile bootstrap has zero width; fall back on the
            # score intervals of the first draw (as if there were one draw).
            first = x[:, 0].tolist()
            out["random_heads"] = stats.wilson(round(sum(first)), len(first))
            out["random_heads_gain"] = stats.paired_binary_diff(base, first)
    return CellIntervals(**{k: _round(v) for k, v in out.items()})


def intervals_from_samples(samples: Samples, lengths: dict[str, int], tokens: int, *, seed: int, resamples: int) -> Intervals:
    """Every interval of a report from its per-unit scores (`lengths`: copy n by key; `tokens`: per window)."""
    copy = {
        n: cell_intervals(s, 1 / (lengths[n] - 1), seed=seed, stream=f"eval/copy/{n}", resamples=resamples)
        for n, s in samples.copy_accuracy.items()
    }
    ppl = None
    if samples.perplexity is not None:
        p = samples.perplexity
        rows = [p.base] + ([p.patched] if p.patched is not None else []) + (p.random_heads or [])
        found = stats.perplexity_intervals(rows, tokens, seed=seed, stream="eval/perplexity", resamples=resamples)
        ppl = PerplexityIntervals(**{k: _round(v) for k, v in found.items()})
    kv = None
    if samples.kv_retrieval is not None:
        kv = {
            p: {pos: cell_intervals(s, 1.0, seed=seed, stream=f"eval/kv/{p}/{pos}", resamples=resamples, binary=True) for pos, s in cells.items()}
            for p, cells in samples.kv_retrieval.items()
        }
    return Intervals(copy_accuracy=copy, perplexity=ppl, kv_retrieval=kv)
