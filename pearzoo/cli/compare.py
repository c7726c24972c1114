"""`pearzoo compare`: B - A of two eval reports (or two manifests on one model), with 95% intervals."""

from __future__ import annotations

import click

from pearzoo.cli._options import device_option, dtype_option, model_option
from pearzoo.cli._output import Output, json_option, quiet_option


@click.command("compare")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@model_option(required=False, help="With two manifests: the model to evaluate both on (same settings, so every cell is paired).")
@click.option("--lengths", default="10,25,50", show_default=True, help="Manifests only: comma-separated copy lengths n.")
@click.option("--sequences", default=500, show_default=True, type=click.IntRange(min=2), help="Manifests only: held-out sequences per length.")
@click.option("--seed", default=1234, show_default=True, type=int, help="Manifests only: eval seed (both runs).")
@click.option("--text", default="builtin:tinyshakespeare-test", show_default=True, help="Manifests only: text for perplexity; 'none' to skip.")
@click.option("--kv/--no-kv", default=False, show_default=True, help="Manifests only: key-value retrieval too (slow on CPU).")
@click.option("--kv-pairs", default="20,50", show_default=True, help="Manifests only: numbers of key-value pairs per context.")
@click.option("--kv-contexts", default=100, show_default=True, type=click.IntRange(min=1), help="Manifests only: contexts per cell.")
@click.option("--resamples", default=2000, show_default=True, type=click.IntRange(min=100), help="Bootstrap resamples per interval.")
@device_option(help="Manifests only: device (cpu, cuda).")
@dtype_option()
@json_option
@quiet_option
def compare_command(a: str, b: str, model: str | None, lengths: str, sequences: int, seed: int, text: str, kv: bool, kv_pairs: str, kv_contexts: int, resamples: int, device: str | None, dtype: str, json_mode: bool, quiet: bool) -> None:
    """Compare two eval reports (B - A), or evaluate two manifests on one model and compare them.

    A and B are `pearzoo eval --json` reports (or bench/zoo_report.py results), or two manifests with
    --model. Each side's headline is its patched model (its base without a manifest); with manifests on
    both sides the gains over each one's base are compared too. Every difference has a 95% interval: when
    both sides scored the same sequences (same seed and settings: equal units_sha256) the interval is paired,
    resampling sequences once for both sides (percentile bootstrap, --resamples); otherwise the sides are
    resampled independently. Key-value cells (binary per context) use Bonett-Price (paired) or Agresti-Caffo
    intervals. Perplexity compares B / A - 1. With manifests, the control is not run (it is not compared).

    \b
    Exit codes: 0 compared (whatever the result), 2 usage, 3 invalid input (not a report or manifest, a
    report without per-unit scores, a report and a manifest, manifests without --model, no common cell),
    4 a file not found, 5 a manifest whose base is not the model.

    \b
    Examples:
      pearzoo compare old.eval.json new.eval.json
      pearzoo compare a.pear.json b.pear.json -m smollm2-135m-instruct --sequences 200 --json
    """
    from pearzoo.cli.evaluate import _ints
    from pearzoo.compare import compare_files

    output = Output(json_mode=json_mode, quiet=quiet)
    options = dict(
        lengths=_ints(lengths, "--lengths", 2, "lengths must be >= 2"), sequences=sequences, seed=seed,
        text=None if text.lower() == "none" else text, kv=kv, kv_pairs=_ints(kv_pairs, "--kv-pairs", 3, "numbers of pairs must be >= 3"),
        kv_contexts=kv_contexts, device=device, dtype=dtype, random_draws=0, progress=output.progress,
    )  # fmt: skip
    result = compare_files(a, b, model=model, resamples=resamples, **options)
    lines = [
        f"A: {result.a.source} ({result.a.model}, {result.a.variant}, seed {result.a.seed})",
        f"B: {result.b.source} ({result.b.model}, {result.b.variant}, seed {result.b.seed})",
        f"{'cell':<16}  {'quantity':<8}  {'A':>7}  {'B':>7}  {'B - A [95% interval]':<28}  paired",
    ]
    for d in result.differences:
        if d.cell == "perplexity":
            diff = f"{100 * d.difference:+.2f}% [{100 * d.interval[0]:+.2f}%, {100 * d.interval[1]:+.2f}%]"
            va, vb = f"{d.a:7.3f}", f"{d.b:7.3f}"
        else:
            diff = f"{100 * d.difference:+.1f} [{100 * d.interval[0]:+.1f}, {100 * d.interval[1]:+.1f}] points"
            va, vb = f"{d.a:7.3f}" if d.quantity == "value" else f"{100 * d.a:+7.1f}", f"{d.b:7.3f}" if d.quantity == "value" else f"{100 * d.b:+7.1f}"
        lines.append(f"{d.cell:<16}  {d.quantity:<8}  {va}  {vb}  {diff:<28}  {'yes' if d.paired else 'no'}")
    output.result(result.model_dump(mode="json", exclude_none=True), "\n".join(lines))


def register(group: click.Group) -> None:
    group.add_command(compare_command)
