"""`pearzoo eval`: copy accuracy, key-value retrieval, random-heads control and perplexity."""

from __future__ import annotations

import click

from pearzoo.cli._output import Output, json_option, quiet_option


@click.command("eval")
@click.option("--model", "-m", required=True, help="Local directory, .gguf file, Hub id, or built-in name.")
@click.option("--manifest", default=None, type=click.Path(dir_okay=False), help="Manifest to evaluate (patched + random-heads control).")
@click.option("--lengths", default="10,25,50", show_default=True, help="Comma-separated copy lengths n.")
@click.option("--sequences", default=500, show_default=True, type=click.IntRange(min=1), help="Held-out sequences per length.")
@click.option("--seed", default=1234, show_default=True, type=int, help="Seed of the held-out sequences and key-value contexts.")
@click.option("--text", default="builtin:tinyshakespeare-test", show_default=True, help="Text for perplexity (builtin:NAME or a file); 'none' to skip.")
@click.option("--kv/--no-kv", default=None, help="Key-value retrieval (exact match by position of the queried pair). [default: on when the model has a tokenizer]")
@click.option("--kv-pairs", default="20,50", show_default=True, help="Comma-separated numbers of key-value pairs per context.")
@click.option("--kv-contexts", default=100, show_default=True, type=click.IntRange(min=1), help="Contexts per number of pairs and position.")
@click.option("--revision", default=None, help="Hub revision.")
@click.option("--device", default=None, help="Device (cpu, cuda).")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--allow-pickle", is_flag=True, help="Allow .bin/.pt weights.")
@json_option
@quiet_option
def eval_command(model: str, manifest: str | None, lengths: str, sequences: int, seed: int, text: str, kv: bool | None, kv_pairs: str, kv_contexts: int, revision: str | None, device: str | None, dtype: str, allow_pickle: bool, json_mode: bool, quiet: bool) -> None:
    """Measure copy accuracy, key-value retrieval and perplexity, before and after a manifest.

    Retrieval asks for the value of one key in a dict of random 3-hex-character ids and counts exact
    matches, with the queried pair first, in the middle or last (see pearzoo/retrieval.py). It runs
    (pairs x 3 positions x contexts) forward passes per variant, the most expensive part of eval on
    larger models; --no-kv or a smaller --kv-contexts shortens it.

    \b
    Examples:
      pearzoo eval --model smollm2-135m-instruct
      pearzoo eval -m smollm2-135m-instruct --manifest smollm2.pear.json --json
      pearzoo eval -m zoo/models/gpt2-learned --kv-pairs 20 --kv-contexts 20 --text none
    """
    from pearzoo.evaluate import run_eval

    output = Output(json_mode=json_mode, quiet=quiet)
    try:
        ns = tuple(int(x) for x in lengths.split(",") if x.strip())
    except ValueError as exc:
        raise click.BadParameter("expected comma-separated integers", param_hint="--lengths") from exc
    if not ns or min(ns) < 2:
        raise click.BadParameter("lengths must be >= 2", param_hint="--lengths")
    try:
        ps = tuple(int(x) for x in kv_pairs.split(",") if x.strip())
    except ValueError as exc:
        raise click.BadParameter("expected comma-separated integers", param_hint="--kv-pairs") from exc
    if not ps or min(ps) < 3:
        raise click.BadParameter("numbers of pairs must be >= 3", param_hint="--kv-pairs")
    from pearzoo.patch.resolve import manifest_file

    report = run_eval(
        model, str(manifest_file(manifest)) if manifest else None, revision=revision, device=device, dtype=dtype, lengths=ns, sequences=sequences, seed=seed,
        text=None if text.lower() == "none" else text, allow_pickle=allow_pickle, kv=kv, kv_pairs=ps,
        kv_contexts=kv_contexts, progress=output.progress,
    )
    lines = [f"{'n':>4}  {'base':>7}  {'patched':>7}  {'random':>7}"]
    fmt = lambda v: f"{v:7.3f}" if v is not None else f"{'-':>7}"  # noqa: E731
    for n, acc in report.copy_accuracy.items():
        lines.append(f"{n:>4}  {fmt(acc.base)}  {fmt(acc.patched)}  {fmt(acc.random_heads)}")
    if report.perplexity is not None:
        p = report.perplexity
        lines.append(f"perplexity ({p.text}): base {p.base:.3f}" + (f", patched {p.patched:.3f}, random {p.random_heads:.3f}" if p.patched is not None else ""))
    if report.retrieval is not None:
        r = report.retrieval
        lines.append(f"kv retrieval, exact match ({r.contexts} contexts, {r.id_chars}-hex ids)")
        lines.append(f"{'pairs':>5}  {'position':<8}  {'base':>7}  {'patched':>7}  {'random':>7}")
        for pairs, by_position in r.accuracy.items():
            for pos, acc in by_position.items():
                lines.append(f"{pairs:>5}  {pos:<8}  {fmt(acc.base)}  {fmt(acc.patched)}  {fmt(acc.random_heads)}")
        for pairs in r.skipped:
            output.warn(f"kv retrieval: {pairs} pairs skipped ({r.tokens[str(pairs)]} tokens exceed the model's {r.max_positions} positions)")
    # Without a manifest the patched and random-heads entries are absent, not null.
    output.result(report.model_dump(mode="json", exclude_none=True), "\n".join(lines))


def register(group: click.Group) -> None:
    group.add_command(eval_command)
