"""`pearzoo compare`: the difference between two eval reports (or two manifests on one model), with intervals.

Each report's headline variant is the patched model when it has a manifest, else the base. For every
cell both reports measured (copy n, perplexity, key-value pairs and position) the comparison gives B - A
of the headline value and, when both have manifests, of the gain over each one's base. A cell is paired
when both reports scored the same units (equal `units_sha256`: same seed, settings and token space); its
interval then resamples units once for both sides, so what the units share cancels. Otherwise the two
sides are resampled independently. Methods: `pearzoo.stats`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pearzoo import stats
from pearzoo.errors import InvalidInputError, NotFoundError, validation_location
from pearzoo.evaluate import EvalReport, UnitScores

Interval = tuple[float, float]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Side(_Out):
    source: str = Field(description="The file compared (a report, or a manifest evaluated here).")
    model: str
    manifest: str | None
    seed: int
    variant: str = Field(description="The headline variant: patched with a manifest, else base.")


class Difference(_Out):
    cell: str = Field(description="copy n=N, perplexity, or kv P=N POSITION.")
    quantity: str = Field(description="value (the headline variant) or gain (over each report's own base).")
    a: float
    b: float
    difference: float = Field(description="b - a; for perplexity values b / a - 1.")
    interval: Interval
    paired: bool
    excludes_zero: bool


class Comparison(_Out):
    """What `pearzoo compare --json` prints."""

    a: Side
    b: Side
    level: float
    resamples: int
    differences: list[Difference]
    reports: dict[str, EvalReport] | None = Field(default=None, description="The two reports, when compare ran them.")


def load_report(path: str) -> EvalReport:
    """An eval report from `pearzoo eval --json`, or from a `bench/zoo_report.py` result (its "eval").

    Raises:
        NotFoundError: no such file. InvalidInputError: not JSON, not an eval report, or no per-unit scores.
    """
    doc = _read_json(path)
    if isinstance(doc, dict) and isinstance(doc.get("eval"), dict):
        doc = doc["eval"]
    try:
        report = EvalReport.model_validate(doc)
    except ValidationError as exc:
        loc, msg = validation_location(exc)
        raise InvalidInputError(f"{path}: not an eval report ({loc}: {msg})", path=path) from exc
    if report.samples is None:
        raise InvalidInputError(f"{path}: the report has no per-unit scores (made before intervals); run pearzoo eval again", path=path)
    return report


def _read_json(path: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"file '{path}' not found", path=path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path}: not JSON ({exc.__class__.__name__})", path=path) from exc


def is_manifest(path: str) -> bool:
    doc = _read_json(path)
    return isinstance(doc, dict) and "schema_version" in doc and "copy_accuracy" not in doc


def _headline(report: EvalReport) -> str:
    return "patched" if report.manifest is not None else "base"


def _rows(s: UnitScores, variant: str, scale: float) -> torch.Tensor:
    return torch.tensor(getattr(s, variant), dtype=torch.float64) * scale


def _gain(s: UnitScores, scale: float) -> torch.Tensor | None:
    if s.patched is None:
        return None
    return (torch.tensor(s.patched, dtype=torch.float64) - torch.tensor(s.base, dtype=torch.float64)) * scale


def _mean_diff(xa: torch.Tensor, xb: torch.Tensor, paired: bool, seed: int, stream: str, resamples: int, binary: bool) -> Interval:
    if binary:
        fn = stats.paired_binary_diff if paired else stats.unpaired_binary_diff
        return fn(xa.tolist(), xb.tolist())
    fn = stats.paired_diff_interval if paired else stats.unpaired_diff_interval
    return fn(xa, xb, seed=seed, stream=stream, resamples=resamples)


def _cell(cell: str, sa: UnitScores, sb: UnitScores, va: str, vb: str, scale: float, *, seed: int, resamples: int, binary: bool) -> list[Difference]:
    paired = sa.units_sha256 == sb.units_sha256 and len(sa.base) == len(sb.base)
    out = []
    xa, xb = _rows(sa, va, scale), _rows(sb, vb, scale)
    # One resample stream per cell: value and gain are resampled over the same units.
    found = _mean_diff(xa, xb, paired, seed, f"compare/{cell}", resamples, binary)
    out.append(_difference(cell, "value", float(xa.mean()), float(xb.mean()), found, paired))
    ga, gb = _gain(sa, scale), _gain(sb, scale)
    if ga is not None and gb is not None:
        found = _mean_diff(ga, gb, paired, seed, f"compare/{cell}", resamples, False)
        out.append(_difference(cell, "gain", float(ga.mean()), float(gb.mean()), found, paired))
    return out


def _difference(cell: str, quantity: str, a: float, b: float, interval: Interval, paired: bool, ratio: bool = False) -> Difference:
    lo, hi = round(interval[0], 6), round(interval[1], 6)
    return Difference(
        cell=cell, quantity=quantity, a=a, b=b, difference=(b / a - 1) if ratio else b - a, interval=(lo, hi),
        paired=paired, excludes_zero=stats.excludes_zero((lo, hi)),
    )  # fmt: skip


def _perplexity(sa: UnitScores, sb: UnitScores, va: str, vb: str, tokens: int, *, seed: int, resamples: int) -> Difference:
    paired = sa.units_sha256 == sb.units_sha256 and len(sa.base) == len(sb.base)
    xa, xb = _rows(sa, va, 1.0), _rows(sb, vb, 1.0)
    gen = stats._gen(seed, "compare/perplexity")
    wa = stats.resample_weights(xa.shape[0], resamples, gen)
    wb = wa if paired else stats.resample_weights(xb.shape[0], resamples, gen)
    ppl_a = torch.exp(wa @ xa / (xa.shape[0] * tokens))
    ppl_b = torch.exp(wb @ xb / (xb.shape[0] * tokens))
    a = float(torch.exp(xa.mean() / tokens))
    b = float(torch.exp(xb.mean() / tokens))
    return _difference("perplexity", "value", a, b, stats.percentile(ppl_b / ppl_a - 1), paired, ratio=True)


def compare_reports(a: EvalReport, b: EvalReport, *, source_a: str, source_b: str, resamples: int = stats.DEFAULT_RESAMPLES, seed: int = 1234) -> Comparison:
    """B - A for every cell both reports measured.

    Raises:
        InvalidInputError: the reports share no cell.
    """
    assert a.samples is not None and b.samples is not None
    va, vb = _headline(a), _headline(b)
    kw = {"seed": seed, "resamples": resamples}
    diffs: list[Difference] = []
    for n, sa in a.samples.copy_accuracy.items():
        sb = b.samples.copy_accuracy.get(n)
        if sb is not None:
            diffs += _cell(f"copy n={n}", sa, sb, va, vb, 1 / (int(n) - 1), binary=False, **kw)
    pa, pb = a.samples.perplexity, b.samples.perplexity
    if pa is not None and pb is not None and a.perplexity is not None and b.perplexity is not None:
        if a.perplexity.window_length == b.perplexity.window_length:
            diffs.append(_perplexity(pa, pb, va, vb, a.perplexity.window_length - 1, **kw))
    for p, cells in (a.samples.kv_retrieval or {}).items():
        for pos, sa in cells.items():
            sb = (b.samples.kv_retrieval or {}).get(p, {}).get(pos)
            if sb is not None:
                diffs += _cell(f"kv P={p} {pos}", sa, sb, va, vb, 1.0, binary=True, **kw)
    if not diffs:
        raise InvalidInputError(f"{source_a} and {source_b} share no measured cell (copy lengths, perplexity, kv pairs)")
    side = lambda r, src, v: Side(source=src, model=r.model, manifest=r.manifest, seed=r.seed, variant=v)  # noqa: E731
    return Comparison(a=side(a, source_a, va), b=side(b, source_b, vb), level=stats.LEVEL, resamples=resamples, differences=diffs)


def compare_files(path_a: str, path_b: str, *, model: str | None = None, resamples: int = stats.DEFAULT_RESAMPLES, **eval_options: Any) -> Comparison:
    """Compare two eval reports, or evaluate two manifests on `model` with the same settings and compare them.

    Raises:
        InvalidInputError: one file is a report and the other a manifest, or manifests without `model`.
    """
    manifests = (is_manifest(path_a), is_manifest(path_b))
    if manifests == (False, False):
        return compare_reports(load_report(path_a), load_report(path_b), source_a=path_a, source_b=path_b, resamples=resamples)
    if manifests != (True, True):
        raise InvalidInputError(f"{path_a} and {path_b}: give two eval reports or two manifests, not one of each")
    if model is None:
        raise InvalidInputError("comparing two manifests needs the model to evaluate them on", hint="pass --model", field="model")
    from pearzoo.evaluate import run_eval

    a = run_eval(model, path_a, resamples=resamples, **eval_options)
    b = run_eval(model, path_b, resamples=resamples, **eval_options)
    out = compare_reports(a, b, source_a=path_a, source_b=path_b, resamples=resamples, seed=a.seed)
    return out.model_copy(update={"reports": {"a": a, "b": b}})
