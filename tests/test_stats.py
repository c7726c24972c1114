"""Intervals (pearzoo/stats.py): widths against analytic ones, pairing, two levels, coverage, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from pearzoo import stats
from pearzoo.errors import InvalidInputError

Z = 1.959963984540054


def test_bootstrap_of_a_known_binomial_matches_the_analytic_width():
    # 400 independent units, 120 successes: the normal-approximation half-width is 1.96 sqrt(p(1-p)/n).
    x = [1.0] * 120 + [0.0] * 280
    lo, hi = stats.mean_interval(x, seed=7, stream="binomial", resamples=4000)
    analytic = 2 * Z * math.sqrt(0.3 * 0.7 / 400)  # 0.0898
    assert abs((hi - lo) / analytic - 1) < 0.06, (lo, hi, analytic)
    assert lo < 0.3 < hi and abs((lo + hi) / 2 - 0.3) < 0.005


def test_cluster_bootstrap_uses_the_spread_of_unit_means_not_of_positions():
    # 200 sequences of 9 positions that are all right or all wrong: 1,800 positions but only 200 independent
    # units, so the interval is sqrt(9) = 3 times the naive per-position binomial width.
    gen = torch.Generator().manual_seed(0)
    units = (torch.rand(200, generator=gen) < 0.4).double()
    per_sequence = units  # accuracy of a sequence: 9/9 or 0/9
    lo, hi = stats.mean_interval(per_sequence, seed=1, stream="cluster", resamples=4000)
    p = float(units.mean())
    cluster = 2 * Z * math.sqrt(p * (1 - p) / 200)
    naive = 2 * Z * math.sqrt(p * (1 - p) / 1800)
    assert abs((hi - lo) / cluster - 1) < 0.06
    assert (hi - lo) / naive > 2.7


def test_paired_interval_is_narrower_than_unpaired_on_correlated_data():
    gen = torch.Generator().manual_seed(3)
    difficulty = torch.rand(300, generator=gen)  # shared by both variants of a unit
    base = difficulty
    patched = difficulty + 0.03 + 0.02 * torch.randn(300, generator=gen)
    paired = stats.paired_diff_interval(base, patched, seed=0, stream="p")
    unpaired = stats.unpaired_diff_interval(base, patched, seed=0, stream="u")
    assert paired[0] > 0.02 and paired[1] < 0.04  # the gain (0.03) is resolved
    assert unpaired[0] < 0 < unpaired[1]  # ... and lost without pairing
    assert (paired[1] - paired[0]) < 0.1 * (unpaired[1] - unpaired[0])


def test_fixed_seed_reproduces_the_interval_exactly():
    x = torch.linspace(0, 1, 57)
    a = stats.mean_interval(x, seed=1234, stream="eval/copy/10/base")
    assert a == stats.mean_interval(x, seed=1234, stream="eval/copy/10/base")
    assert a != stats.mean_interval(x, seed=1235, stream="eval/copy/10/base")
    assert a != stats.mean_interval(x, seed=1234, stream="eval/copy/25/base")
    two = torch.rand(57, 5, generator=torch.Generator().manual_seed(2))
    assert stats.two_level_interval(two, x, seed=9, stream="r") == stats.two_level_interval(two, x, seed=9, stream="r")


def test_percentile_bootstrap_covers_about_95_percent():
    # 300 simulated data sets of 60 units with a known mean 0.3: the 95% interval should cover it about 285 times.
    gen = torch.Generator().manual_seed(11)
    covered = 0
    for i in range(300):
        x = (torch.rand(60, 5, generator=gen) < 0.3).double().mean(1)  # 5 positions per unit
        lo, hi = stats.mean_interval(x, seed=i, stream="coverage", resamples=500)
        covered += lo <= 0.3 <= hi
    assert 270 <= covered <= 296, covered


def test_two_level_interval_widens_with_draw_to_draw_spread():
    gen = torch.Generator().manual_seed(5)
    units = torch.rand(200, 1, generator=gen)
    same = units.repeat(1, 5)  # five draws that agree on every unit
    spread = same + torch.tensor([-0.1, -0.05, 0.0, 0.05, 0.1])  # five draws with different effects
    narrow = stats.two_level_interval(same, seed=0, stream="t")
    wide = stats.two_level_interval(spread, seed=0, stream="t")
    assert (wide[1] - wide[0]) > 1.5 * (narrow[1] - narrow[0])
    # Against the base on the same units, the shared unit effect cancels: the gain's interval is the draws' spread.
    gain = stats.two_level_interval(spread, units[:, 0], seed=0, stream="t")
    assert gain[0] < 0 < gain[1] and (gain[1] - gain[0]) < (wide[1] - wide[0])


def test_perplexity_intervals_pair_windows():
    gen = torch.Generator().manual_seed(4)
    base = 3.0 * 127 + 20 * torch.randn(32, generator=gen, dtype=torch.float64)  # summed nll per window of 127 tokens
    patched = base + 0.3  # every window 0.3 nats worse
    out = stats.perplexity_intervals(torch.stack([base, patched]), 127, seed=0, stream="ppl")
    expected = math.exp(0.3 / 127) - 1  # the change is the same in every resample
    assert out["change"][0] == pytest.approx(expected, rel=1e-9) and out["change"][1] == pytest.approx(expected, rel=1e-9)
    ppl = math.exp(float(base.sum()) / (32 * 127))
    assert out["base"][0] < ppl < out["base"][1]
    assert set(out) == {"base", "patched", "change"}
    with_control = stats.perplexity_intervals(torch.stack([base, patched, base - 0.1, base + 0.1]), 127, seed=0, stream="ppl")
    assert set(with_control) == {"base", "patched", "change", "random_heads", "random_heads_change"}
    assert with_control["random_heads_change"][0] < 0 < with_control["random_heads_change"][1]


def test_wilson_known_values():
    assert stats.wilson(0, 20) == (0.0, pytest.approx(Z * Z / (20 + Z * Z)))  # 0.1611
    lo, hi = stats.wilson(5, 20)
    assert (round(lo, 4), round(hi, 4)) == (0.1119, 0.4687)
    assert stats.wilson(20, 20)[1] == 1.0
    with pytest.raises(InvalidInputError, match=r"^wilson: 3 of 2 is not a proportion$"):
        stats.wilson(3, 2)


def test_binary_differences_do_not_collapse_when_every_context_agrees():
    zeros = [0] * 20
    lo, hi = stats.paired_binary_diff(zeros, zeros)
    half = Z * math.sqrt((2 / 22) / 22)  # Bonett-Price with no discordant pairs: 0.126
    assert (lo, hi) == (pytest.approx(-half), pytest.approx(half))
    # 100 contexts: 50 retrieved by both, 10 gained, none lost, 40 by neither. Bonett-Price centres on
    # (10+1 - (0+1)) / 102 and excludes 0; the same counts unpaired (Agresti-Caffo) do not.
    a = [1] * 50 + [0] * 10 + [0] * 40
    b = [1] * 50 + [1] * 10 + [0] * 40
    lo, hi = stats.paired_binary_diff(a, b)
    assert lo > 0.03 and round((lo + hi) / 2, 6) == round(10 / 102, 6)
    lo_u, hi_u = stats.unpaired_binary_diff(a, b)
    assert lo_u < 0 < hi_u
    with pytest.raises(InvalidInputError, match=r"^paired outcomes differ in length: 2 and 3$"):
        stats.paired_binary_diff([0, 1], [0, 1, 1])


def test_excludes_zero():
    assert stats.excludes_zero((0.01, 0.2)) and stats.excludes_zero((-0.3, -0.1))
    assert not stats.excludes_zero((0.0, 0.2)) and not stats.excludes_zero((-0.1, 0.1))
