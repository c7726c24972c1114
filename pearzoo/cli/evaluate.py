"""`pearzoo eval`: copy accuracy, key-value retrieval, random-heads control and perplexity."""

from __future__ import annotations

import click

from pearzoo.cli._options import (
    allow_pickle_option,
    device_option,
    dtype_option,
    model_option,
    revision_option,
)
from pearzoo.cli._output import Output, json_option, quiet_option

# What --quick changes (any of these options given explicitly wins). Sized on SmolLM2-135M, whose load alone
# takes 25-45 s on the shared 2 cores: 4 variants x (48 sequences x 50 tokens + 8 windows x 128 tokens), about
# 13,700 tokens of forward passes, 1/46 of the default with --no-kv. At 64 sequences SmolLM2's gain came out
# +5.7 [+4.1, +7.2] points; 48 widen that by sqrt(64/48) = 1.15, still clear of zero for a 3-point gain.
# Retrieval is off: at 10 contexts a cell's Wilson interval is at least 0.28 wide, and 3 positions x 10
# contexts x ~220 tokens would cost as much as the copy task.
QUICK = {"lengths": "25", "sequences": 48, "windows": 8, "kv": False, "random_draws": 2, "resamples": 1000}


@click.command("eval")
@model_option()
@click.option("--manifest", default=None, type=click.Path(dir_okay=False), help="Manifest to evaluate (patched + random-heads control).")
@click.option("--lengths", default="10,25,50", show_default=True, help="Comma-separated copy lengths n.")
@click.option("--sequences", default=500, show_default=True, type=click.IntRange(min=2), help="Held-out sequences per length.")
@click.option("--seed", default=1234, show_default=True, type=int, help="Seed of the held-out sequences, key-value contexts, control draws and resamples.")
@click.option("--text", default="builtin:tinyshakespeare-test", show_default=True, help="Text for perplexity (builtin:NAME or a file); 'none' to skip.")
@click.option("--windows", default=32, show_default=True, type=click.IntRange(min=2), help="Perplexity windows of 128 tokens.")
@click.option("--kv/--no-kv", default=None, help="Key-value retrieval (exact match by position of the queried pair). [default: on when the model has a tokenizer]")
@click.option("--kv-pairs", default="20,50", show_default=True, help="Comma-separated numbers of key-value pairs per context.")
@click.option("--kv-contexts", default=100, show_default=True, type=click.IntRange(min=1), help="Contexts per number of pairs and position.")
@click.option("--random-draws", default=5, show_default=True, type=click.IntRange(min=0), help="Draws of K random heads for the control (0: none).")
@click.option("--resamples", default=2000, show_default=True, type=click.IntRange(min=100), help="Bootstrap resamples per interval.")
@click.option("--quick", is_flag=True, help="A first look: n=25 only, 48 sequences, 8 perplexity windows, no kv retrieval, 2 control draws, 1000 resamples (options given explicitly win). About 1/46 of the default --no-kv work; copy intervals about 3.2x as wide as the default's (sqrt(500/48); a gain's about +-1.8 points on SmolLM2), perplexity's about 2x, and the control's covers which heads were drawn only roughly (2 draws).")
@revision_option()
@device_option()
@dtype_option()
@allow_pickle_option()
@json_option
@quiet_option
@click.pass_context
def eval_command(ctx: click.Context, model: str, manifest: str | None, lengths: str, sequences: int, seed: int, text: str, windows: int, kv: bool | None, kv_pairs: str, kv_contexts: int, random_draws: int, resamples: int, quick: bool, revision: str | None, device: str | None, dtype: str, allow_pickle: bool, json_mode: bool, quiet: bool) -> None:
    """Measure copy accuracy, key-value retrieval and perplexity, before and after a manifest, with 95% intervals.

    Every number comes with a 95% interval. Copy accuracy and perplexity: percentile bootstrap (--resamples,
    default 2000) that resamples whole sequences (or text windows), since the predictions inside one are not
    independent; gains are paired (the same sequences with and without the manifest, resampled together).
    The random-heads control puts the manifest's coefficients on K random heads, drawn --random-draws times;
    its value is the mean over draws and its interval resamples draws and sequences. Key-value cells (one
    exact match per context) use Wilson's score interval, and Bonett and Price's paired interval for the gain.
    A fixed --seed reproduces every number and interval. Method: pearzoo/stats.py.

    Retrieval asks for the value of one key in a dict of random 3-hex-character ids and counts exact
    matches, with the queried pair first, in the middle or last (see pearzoo/retrieval.py). It runs
    (pairs x 3 positions x contexts) forward passes per variant (2 + draws variants with a manifest), the
    most expensive part of eval on larger models; --no-kv, a smaller --kv-contexts or --quick (no kv) shortens it.

    Cost, measured on SmolLM2-135M (float32, 2 CPU cores): the default with a manifest is about 63 CPU-minutes
    of forward passes without retrieval and 3 CPU-hours more with it; --quick about 2 CPU-minutes, a model
    load included (README, "Intervals": wall times and load averages). Variants share the base model's layers
    below their lowest re-weighted head, which changes no number.

    \b
    Examples:
      pearzoo eval --model smollm2-135m-instruct --quick
      pearzoo eval -m smollm2-135m-instruct --manifest smollm2.pear.json --no-kv --json
      pearzoo eval -m zoo/models/gpt2-learned --kv-pairs 20 --kv-contexts 20 --text none
    """
    from pearzoo.evaluate import run_eval

    output = Output(json_mode=json_mode, quiet=quiet)
    if quick:
        given = {"lengths": lengths, "sequences": sequences, "windows": windows, "kv": kv, "random_draws": random_draws, "resamples": resamples}
        for name, value in QUICK.items():
            if ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT:
                given[name] = value
        lengths, sequences, windows, kv, random_draws, resamples = (given[k] for k in QUICK)
    ns = _ints(lengths, "--lengths", 2, "lengths must be >= 2")
    ps = _ints(kv_pairs, "--kv-pairs", 3, "numbers of pairs must be >= 3")
    from pearzoo.patch.resolve import manifest_file

    report = run_eval(
        model, str(manifest_file(manifest)) if manifest else None, revision=revision, device=device, dtype=dtype, lengths=ns, sequences=sequences, seed=seed,
        text=None if text.lower() == "none" else text, windows=windows, allow_pickle=allow_pickle, kv=kv, kv_pairs=ps,
        kv_contexts=kv_contexts, random_draws=random_draws, resamples=resamples, progress=output.progress,
    )
    if report.retrieval is not None:
        for pairs in report.retrieval.skipped:
            r = report.retrieval
            output.warn(f"kv retrieval: {pairs} pairs skipped ({r.tokens[str(pairs)]} tokens exceed the model's {r.max_positions} positions)")
    # Without a manifest the patched and random-heads entries are absent, not null.
    output.result(report.model_dump(mode="json", exclude_none=True), render_report(report))


def _ints(text: str, hint: str, low: int, message: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise click.BadParameter("expected comma-separated integers", param_hint=hint) from exc
    if not values or min(values) < low:
        raise click.BadParameter(message, param_hint=hint)
    return values


def _acc(v: float | None, i: tuple[float, float] | None) -> str:
    return f"{'-':>20}" if v is None or i is None else f"{v:5.3f} [{i[0]:5.3f}, {i[1]:5.3f}]"


def _pts(v: float | None, i: tuple[float, float] | None) -> str:
    return f"{'-':>19}" if v is None or i is None else f"{100 * v:+5.1f} [{100 * i[0]:+5.1f}, {100 * i[1]:+5.1f}]"


def _row(values: object, cell: object) -> str:
    base, patched, rand = values.base, values.patched, values.random_heads  # type: ignore[attr-defined]
    gain = None if patched is None else patched - base
    rgain = None if rand is None else rand - base
    return "  ".join([
        _acc(base, cell.base), _acc(patched, cell.patched), _acc(rand, cell.random_heads),  # type: ignore[attr-defined]
        _pts(gain, cell.gain), _pts(rgain, cell.random_heads_gain),  # type: ignore[attr-defined]
    ])  # fmt: skip


def render_report(report: object) -> str:
    """The human table: each value with its 95% interval; gains in points."""
    r = report  # an EvalReport
    iv = r.intervals  # type: ignore[attr-defined]
    draws = r.controls.random_heads_draws if r.controls is not None else 0  # type: ignore[attr-defined]
    cols = f"{'base':<20}  {'patched':<20}  {'random (' + str(draws) + ' draws)':<20}  {'gain (points)':<19}  {'random gain (points)':<19}"
    lines = [f"copy accuracy, 95% intervals ({r.bootstrap.resamples} bootstrap resamples of whole sequences)", f"{'n':>4}  {cols}".rstrip()]  # type: ignore[attr-defined]
    for n, acc in r.copy_accuracy.items():  # type: ignore[attr-defined]
        lines.append(f"{n:>4}  {_row(acc, iv.copy_accuracy[n])}".rstrip())
    if r.perplexity is not None and iv.perplexity is not None:  # type: ignore[attr-defined]
        p, pi = r.perplexity, iv.perplexity  # type: ignore[attr-defined]
        line = f"perplexity ({p.text}, {p.windows} windows): base {p.base:.3f} [{pi.base[0]:.3f}, {pi.base[1]:.3f}]"
        if p.patched is not None:
            line += f", patched {p.patched:.3f} [{pi.patched[0]:.3f}, {pi.patched[1]:.3f}], change {100 * (p.patched / p.base - 1):+.2f}% [{100 * pi.change[0]:+.2f}%, {100 * pi.change[1]:+.2f}%]"
        if p.random_heads is not None:
            line += f", random {p.random_heads:.3f}, change {100 * (p.random_heads / p.base - 1):+.2f}% [{100 * pi.random_heads_change[0]:+.2f}%, {100 * pi.random_heads_change[1]:+.2f}%]"
        lines.append(line)
    if r.retrieval is not None:  # type: ignore[attr-defined]
        kv = r.retrieval  # type: ignore[attr-defined]
        lines.append(f"kv retrieval, exact match ({kv.contexts} contexts, {kv.id_chars}-hex ids; Wilson / Bonett-Price 95% intervals)")
        lines.append(f"{'pairs':>5}  {'position':<8}  {cols}".rstrip())
        for pairs, by_position in kv.accuracy.items():
            for pos, acc in by_position.items():
                lines.append(f"{pairs:>5}  {pos:<8}  {_row(acc, iv.kv_retrieval[pairs][pos])}".rstrip())
    return "\n".join(lines)


def register(group: click.Group) -> None:
    group.add_command(eval_command)
