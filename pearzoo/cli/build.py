"""`pearzoo build`, `pearzoo locate`, `pearzoo train`: the builder and its stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pearzoo.cli._options import (
    allow_pickle_option,
    apply,
    device_option,
    dtype_option,
    model_option,
    overrides_option,
    revision_option,
)
from pearzoo.cli._output import Output, json_option, quiet_option
from pearzoo.errors import InvalidInputError


def model_options(f: Any) -> Any:
    return apply(
        f,
        model_option(),
        click.option("--recipe", "-r", default=None, help="Recipe file or id (e.g. rope/llama). Default: resolved from the model's config."),
        overrides_option(),
        revision_option(),
        device_option(),
        click.option("--device-map", default=None, help="accelerate device map (e.g. auto) for models larger than one device."),
        dtype_option(),
        allow_pickle_option(),
    )


def _options(kw: dict[str, Any]) -> Any:
    from pearzoo.build import BuildOptions

    return BuildOptions(
        model=kw["model"],
        recipe=kw["recipe"],
        overrides=list(kw["overrides"]),
        revision=kw["revision"],
        device=kw["device"],
        device_map=kw["device_map"],
        dtype=kw["dtype"],
        allow_pickle=kw["allow_pickle"],
    )


@click.command()
@model_options
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Manifest path. Default: <model name>.pear.json in the current directory.")
@json_option
@quiet_option
def build(out: Path | None, json_mode: bool, quiet: bool, **kw: Any) -> None:
    """Locate suppression heads, train their coefficients, and write a manifest.

    \b
    Examples:
      pearzoo build --model smollm2-135m-instruct --out smollm2.pear.json
      pearzoo build --model ./my-llama --recipe rope/llama --set locate.k=16
      pearzoo build -m org/model --set train.steps=20 --json > manifest.json
    """
    from pearzoo.build import build_manifest
    from pearzoo.manifest.io import write_manifest
    from pearzoo.patch.target import check_writable

    # Before the model is even loaded: a build takes minutes, an unwritable --out should not wait for it.
    check_writable(out or Path.cwd() / "model.pear.json", "--out", file=True)
    output = Output(json_mode=json_mode, quiet=quiet)
    manifest = build_manifest(_options(kw), progress=output.progress)
    target = out or Path(f"{manifest.base.model_id.replace('/', '--')}.pear.json")
    write_manifest(manifest, target)
    m = manifest.metrics
    heads = ", ".join(f"{h.layer}.{h.head}={h.coefficient:.3f}" for h in manifest.heads)
    ppl = ""
    if m.perplexity_before is not None and m.perplexity_after is not None:
        ppl = f"\nperplexity: {m.perplexity_before:.3f} -> {m.perplexity_after:.3f} (budget {m.perplexity_budget:.1%})"
    output.result(
        manifest,
        f"wrote {target}\n"
        f"digest: {manifest.digest}\n"
        f"heads: {heads}\n"
        f"copy accuracy (n={m.copy_length}): {m.copy_before.accuracy:.3f} -> {m.copy_after.accuracy:.3f} "
        f"(best step {m.best_step}/{m.steps}){ppl}",
    )


@click.command()
@model_options
@click.option(
    "--candidates",
    type=click.IntRange(min=1),
    default=None,
    help="Pre-screen every head with attribution patching (one gradient pass) and score only this many exactly; "
    "the top K comes from them. Faster, not exact: `pearzoo build` always scores every head.",
)
@json_option
@quiet_option
def locate(json_mode: bool, quiet: bool, candidates: int | None, **kw: Any) -> None:
    """Score every head's effect on copying and list the top-K suppression heads.

    \b
    Examples:
      pearzoo locate --model smollm2-135m-instruct
      pearzoo locate -m ./model --set locate.scope=total --set locate.k=8 --json
      pearzoo locate -m ./model --candidates 48      # attribution pre-screen, 48 heads scored exactly
    """
    from pearzoo.build import prepare, run_locate
    from pearzoo.locate.report import LocateReport

    output = Output(json_mode=json_mode, quiet=quiet)
    ctx = prepare(_options(kw))
    result = run_locate(ctx, output.progress, candidates=candidates)
    report = LocateReport.from_result(result, ctx.source.model_id, ctx.recipe)
    lines = [f"{'rank':>4}  {'head':>6}  {'score':>9}  {'delta':>9}"]
    for rank, h in enumerate(report.heads[: report.k], 1):
        lines.append(f"{rank:>4}  {f'{h.layer}.{h.head}':>6}  {h.score:>9.4f}  {h.delta:>9.4f}")
    output.result(report, "\n".join(lines))


def _parse_heads(heads: str | None, locate_json: Path | None) -> list[Any]:
    from pearzoo.heads import HeadId

    if heads and locate_json:
        raise click.UsageError("give --heads or --locate-json, not both")
    if heads:
        return [HeadId.parse(h) for h in heads.split(",") if h.strip()]
    if locate_json:
        try:
            data = json.loads(locate_json.read_text())
            return [HeadId.parse(h) for h in data["selected"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{locate_json}: not the output of `pearzoo locate --json`") from exc
    raise click.UsageError("give the heads to train: --heads 3.1,7.4 or --locate-json locate.json")


@click.command()
@model_options
@click.option("--heads", default=None, help="Comma-separated heads LAYER.HEAD, e.g. 14.15,26.28.")
@click.option("--locate-json", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Use the heads selected in `pearzoo locate --json` output.")
@json_option
@quiet_option
def train(heads: str | None, locate_json: Path | None, json_mode: bool, quiet: bool, **kw: Any) -> None:
    """Train coefficients for given heads (the model stays frozen).

    \b
    Examples:
      pearzoo train -m smollm2-135m-instruct --heads 3.1,7.4 --set train.steps=20
      pearzoo locate -m ./model --json > loc.json && pearzoo train -m ./model --locate-json loc.json
    """
    from pearzoo.build import prepare, run_train

    output = Output(json_mode=json_mode, quiet=quiet)
    head_ids = _parse_heads(heads, locate_json)
    ctx = prepare(_options(kw))
    for h in head_ids:
        ctx.geometry.check(h)
    result = run_train(ctx, head_ids, output.progress)
    data = {
        "model": ctx.source.model_id,
        "recipe": {"id": ctx.recipe.id, "version": ctx.recipe.version},
        "heads": [{"layer": h.layer, "head": h.head, "coefficient": c} for h, c in zip(result.heads, result.coefficients)],
        "best_step": result.best_step,
        "base_perplexity": result.base_perplexity,
        "history": [p.__dict__ | {"coefficients": list(p.coefficients)} for p in result.history],
        "seconds": round(result.seconds, 3),
    }
    lines = [f"best step {result.best_step}: val loss {result.best.loss:.4f} (start {result.start.loss:.4f}), accuracy {result.start.accuracy:.3f} -> {result.best.accuracy:.3f}"]
    lines += [f"{h}  {c:.4f}" for h, c in zip(result.heads, result.coefficients)]
    output.result(data, "\n".join(lines))


def register(group: click.Group) -> None:
    group.add_command(build)
    group.add_command(locate)
    group.add_command(train)
