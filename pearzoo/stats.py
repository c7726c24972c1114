"""Confidence intervals for eval numbers: resampling whole units (sequences, contexts, windows), seeded.

The unit is what was drawn independently. The predictions inside one copy sequence (or the tokens of one
perplexity window) share that sequence and are not independent, so every resample draws whole units with
replacement and recomputes the statistic from them (the cluster bootstrap). Intervals are percentile
intervals (the 2.5% and 97.5% quantiles of the resampled statistic, linear interpolation) over
`DEFAULT_RESAMPLES` resamples. With hundreds of units per cell the statistics here (means of bounded
per-unit scores, a ratio of sums for perplexity) are close to normal and the percentile interval has close
to its nominal coverage; BCa would move the ends by less than the resampling noise (about 0.1 point at 2000
resamples) and is not used.

- **Paired.** A difference of two variants measured on the same units (the gain: one sequence with and
  without the manifest) resamples the units once and takes the difference inside each resample, so what
  the variants share cancels.
- **Two levels.** The random-heads control is drawn R times; each draw is scored on every unit. A resample
  draws units and draws independently (Owen's "pigeonhole" bootstrap for a crossed design, which is slightly
  conservative), so the interval covers both which sequences and which random heads happened to be drawn.
- **Binary outcomes** (key-value retrieval: one exact match per context) use closed-form intervals instead:
  Wilson's score interval for one proportion, Bonett and Price's adjusted Wald interval for a paired
  difference, Agresti and Caffo's for an unpaired one. They treat contexts as the independent units, as
  resampling contexts does, but unlike the percentile bootstrap they do not collapse to a zero-width interval
  when every context scored the same (0 of 20 gives [0, 0.16], not [0, 0]).

Every resample stream is `pearzoo.proxy.generator(seed, stream)`: a fixed seed reproduces an interval
exactly on any machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import torch

from pearzoo.errors import InvalidInputError

DEFAULT_RESAMPLES = 2000
LEVEL = 0.95

Interval = tuple[float, float]
# A statistic of row-weighted units: (weights [B, N], values [N, ...]) -> [B].
Statistic = Callable[[torch.Tensor], torch.Tensor]


def _gen(seed: int, stream: str) -> torch.Generator:
    from pearzoo.proxy import generator

    return generator(seed, f"bootstrap/{stream}")


def resample_weights(units: int, resamples: int, gen: torch.Generator) -> torch.Tensor:
    """[resamples, units] float64 counts: how often each unit appears in each resample (drawn with replacement)."""
    if units < 1:
        raise InvalidInputError("a bootstrap needs at least one unit", field="units")
    idx = torch.randint(0, units, (resamples, units), generator=gen)
    w = torch.zeros((resamples, units), dtype=torch.float64)
    w.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return w


def percentile(stats: torch.Tensor, level: float = LEVEL) -> Interval:
    """The central `level` percentile interval of resampled statistics."""
    a = (1 - level) / 2
    q = torch.quantile(stats.to(torch.float64), torch.tensor([a, 1 - a], dtype=torch.float64))
    return float(q[0]), float(q[1])


def _as_rows(x: torch.Tensor | list) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def mean_interval(x, *, seed: int, stream: str, resamples: int = DEFAULT_RESAMPLES, level: float = LEVEL) -> Interval:
    """Interval of the mean of per-unit values `x` [N], resampling units."""
    x = _as_rows(x)
    w = resample_weights(x.shape[0], resamples, _gen(seed, stream))
    return percentile(w @ x / x.shape[0], level)


def paired_diff_interval(a, b, *, seed: int, stream: str, resamples: int = DEFAULT_RESAMPLES, level: float = LEVEL) -> Interval:
    """Interval of mean(b) - mean(a) over the same units, resampling units once for both."""
    a, b = _as_rows(a), _as_rows(b)
    if a.shape != b.shape:
        raise InvalidInputError(f"paired values differ in shape: {tuple(a.shape)} and {tuple(b.shape)}", field="units")
    return mean_interval(b - a, seed=seed, stream=stream, resamples=resamples, level=level)


def unpaired_diff_interval(a, b, *, seed: int, stream: str, resamples: int = DEFAULT_RESAMPLES, level: float = LEVEL) -> Interval:
    """Interval of mean(b) - mean(a) for independent samples, each resampled on its own."""
    a, b = _as_rows(a), _as_rows(b)
    wa = resample_weights(a.shape[0], resamples, _gen(seed, f"{stream}/a"))
    wb = resample_weights(b.shape[0], resamples, _gen(seed, f"{stream}/b"))
    return percentile(wb @ b / b.shape[0] - wa @ a / a.shape[0], level)


def two_level_interval(
    x, base=None, *, seed: int, stream: str, resamples: int = DEFAULT_RESAMPLES, level: float = LEVEL
) -> Interval:
    """Interval of the mean over units and draws of `x` [N, R] (minus `base` [N] on the same units if given).

    Units and draws are resampled independently in each resample.
    """
    x = _as_rows(x)
    n, r = x.shape
    gen = _gen(seed, stream)
    w = resample_weights(n, resamples, gen)
    v = resample_weights(r, resamples, gen)
    per_draw = w @ x / n  # [B, R]
    if base is not None:
        per_draw = per_draw - (w @ _as_rows(base) / n)[:, None]
    return percentile((per_draw * v).sum(1) / r, level)


def perplexity_intervals(
    nll: torch.Tensor | list,
    tokens: int,
    *,
    seed: int,
    stream: str,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = LEVEL,
) -> dict[str, Interval]:
    """Perplexity intervals from per-window summed negative log-likelihoods, resampling windows.

    `nll` is [variants, W] (row 0 the base; then optionally the patched model; then the R control draws),
    each window holding `tokens` predicted tokens. Returns intervals of perplexity exp(sum nll / sum tokens)
    for "base" and, with more rows, "patched" and "change" (patched / base - 1); rows from the third on are
    the control draws: "random_heads" (mean of the draws' perplexities) and "random_heads_change", with draws
    resampled too.
    """
    nll = _as_rows(nll)
    windows = nll.shape[1]
    gen = _gen(seed, stream)
    w = resample_weights(windows, resamples, gen)
    ppl = torch.exp(w @ nll.T / (w.sum(1, keepdim=True) * tokens))  # [B, variants]
    out = {"base": percentile(ppl[:, 0], level)}
    if nll.shape[0] > 1:
        out["patched"] = percentile(ppl[:, 1], level)
        out["change"] = percentile(ppl[:, 1] / ppl[:, 0] - 1, level)
    if nll.shape[0] > 2:
        draws = nll.shape[0] - 2
        v = resample_weights(draws, resamples, gen)
        control = (ppl[:, 2:] * v).sum(1) / draws
        out["random_heads"] = percentile(control, level)
        out["random_heads_change"] = percentile(control / ppl[:, 0] - 1, level)
    return out


def _z(level: float) -> float:
    return NormalDist().inv_cdf(1 - (1 - level) / 2)


def wilson(k: int, n: int, level: float = LEVEL) -> Interval:
    """Wilson's score interval for k successes in n independent trials."""
    if n < 1 or not 0 <= k <= n:
        raise InvalidInputError(f"wilson: {k} of {n} is not a proportion", field="n")
    z = _z(level)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Clamp the rounding at the ends: at k = 0 the lower end is exactly 0.
    return max(0.0, centre - half) if k else 0.0, min(1.0, centre + half) if k < n else 1.0


def _counts(a, b) -> tuple[int, int, int]:
    a = [bool(x) for x in a]
    b = [bool(x) for x in b]
    if len(a) != len(b) or not a:
        raise InvalidInputError(f"paired outcomes differ in length: {len(a)} and {len(b)}", field="units")
    only_b = sum(y and not x for x, y in zip(a, b))
    only_a = sum(x and not y for x, y in zip(a, b))
    return len(a), only_b, only_a


def paired_binary_diff(a, b, level: float = LEVEL) -> Interval:
    """Bonett and Price's (2012) adjusted Wald interval for mean(b) - mean(a), binary outcomes on the same units.

    Only the discordant units carry information; one is added to each discordant count and two to n, so
    that no discordance at all (every context scored alike) gives a symmetric interval about 0, not [0, 0].
    """
    n, only_b, only_a = _counts(a, b)
    pb, pa = (only_b + 1) / (n + 2), (only_a + 1) / (n + 2)
    d = pb - pa
    half = _z(level) * math.sqrt(max(0.0, pb + pa - d * d) / (n + 2))
    return max(-1.0, d - half), min(1.0, d + half)


def unpaired_binary_diff(a, b, level: float = LEVEL) -> Interval:
    """Agresti and Caffo's (2000) interval for mean(b) - mean(a), independent binary samples (one success and
    one failure added to each)."""
    if not a or not b:
        raise InvalidInputError("a difference of proportions needs outcomes on both sides", field="units")
    pa = (sum(map(bool, a)) + 1) / (len(a) + 2)
    pb = (sum(map(bool, b)) + 1) / (len(b) + 2)
    d = pb - pa
    half = _z(level) * math.sqrt(pa * (1 - pa) / (len(a) + 2) + pb * (1 - pb) / (len(b) + 2))
    return max(-1.0, d - half), min(1.0, d + half)


def excludes_zero(interval: Interval) -> bool:
    return interval[0] > 0 or interval[1] < 0
