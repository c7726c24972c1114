"""The reference-zoo report: every published model evaluated before and after its registry manifest.

    python bench/zoo_report.py measure zoo/models/llama-rope zoo/models/bloom-alibi zoo/models/gpt2-learned --device cuda
    python bench/zoo_report.py measure smollm2-135m-instruct --kv-contexts 50     # CPU
    python bench/zoo_report.py render                                               # README table + PNG plot

`measure` takes model references (a zoo directory, the built-in `smollm2-135m-instruct`, a cached Hub id),
finds each model's newest manifest in a registry (default: the repo's `registry/`), and runs, in one
process per model:
- `pearzoo.evaluate.run_eval` with that manifest: copy accuracy at n = 10/25/50 (base, patched, and the
  same coefficients on K random heads), perplexity on the held-out Shakespeare text, and key-value
  retrieval with the queried pair first, in the middle or last;
- `bench/inference.py --manifest` on the same model: original, patched (`pearzoo patch`) and hooked,
  interleaved rounds with an A/A control; its medians of per-round ratios go in the table.
One JSON file per model goes to `--out` (default `bench/results/zoo/`), with the command, device and
versions. `render` reads those files, prints the Markdown table that the README carries and draws the
retrieval-by-position plot (`docs/zoo-retrieval.png`; needs matplotlib: `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "zoo"
PLOT = ROOT / "docs" / "zoo-retrieval.png"
POSITIONS = ("first", "middle", "last")


def _slug(model_id: str) -> str:
    return model_id.replace("/", "--")


def registry_entry(model_ref: str, registry: Path) -> tuple[object, Path]:
    """The model's source and the path of its newest manifest in a local registry."""
    from pearzoo.errors import NotFoundError
    from pearzoo.registry import open_registry
    from pearzoo.source import resolve_model

    source = resolve_model(model_ref)
    entries = open_registry(registry).versions(source.model_id)
    if not entries:
        raise NotFoundError(f"no manifest for '{source.model_id}' in registry {registry}")
    return source, registry / entries[-1].path


def latency(model_ref: str, manifest: Path, device: str, dtype: str, rounds: int) -> dict:
    """bench/inference.py's report for this model and manifest (a separate process: its own threads and memory)."""
    cmd = [sys.executable, str(ROOT / "bench" / "inference.py"), "--model", model_ref, "--manifest", str(manifest),
           "--device", device, "--dtype", dtype, "--rounds", str(rounds)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    print(done.stderr.strip().splitlines()[-1], file=sys.stderr)
    report = json.loads(done.stdout)
    return {
        "command": " ".join(["python", "bench/inference.py", *cmd[2:]]).replace(str(ROOT) + "/", ""),
        "device": report["device"],
        "threads": report["threads"],
        "batch": report["batch"],
        "prompt_len": report["prompt_len"],
        "decode_steps": report["decode_steps"],
        "rounds": report["rounds"],
        **{
            w: {
                "original_s": report[w]["seconds"]["original"]["median"],
                "patched_s": report[w]["seconds"]["patched"]["median"],
                "patched_over_original": report[w]["ratio_patched_over_original"]["median"],
                "again_over_original": report[w]["ratio_again_over_original"]["median"],
                "patched_within_noise": report[w]["patched_within_noise"],
            }
            for w in ("prefill", "decode")
        },
        "logits_max_abs_diff_patched_vs_hooked": report["logits_max_abs_diff"]["patched_vs_hooked"],
    }


def measure(args: argparse.Namespace) -> None:
    import torch
    import transformers

    import pearzoo
    from pearzoo.evaluate import run_eval
    from pearzoo.manifest.io import read_manifest

    args.out.mkdir(parents=True, exist_ok=True)
    for ref in args.models:
        source, manifest_path = registry_entry(ref, args.registry)
        manifest = read_manifest(manifest_path)
        print(f"{ref}: manifest {manifest.digest[:12]} ({len(manifest.heads)} heads, {manifest.recipe.id})", file=sys.stderr)
        t0 = time.perf_counter()
        report = run_eval(
            ref, str(manifest_path), device=args.device, dtype=args.dtype, sequences=args.sequences,
            kv_pairs=tuple(args.kv_pairs), kv_contexts=args.kv_contexts,
        )
        eval_seconds = time.perf_counter() - t0
        result = {
            "model": ref,
            "model_id": source.model_id,
            "family": manifest.recipe.settings["position_embedding"],
            "recipe": f"{manifest.recipe.id} {manifest.recipe.version}",
            "k": len(manifest.heads),
            "heads": manifest.base.geometry.num_layers * manifest.base.geometry.num_heads,
            "manifest": manifest.digest,
            "manifest_path": str(manifest_path.relative_to(ROOT)) if manifest_path.is_relative_to(ROOT) else str(manifest_path),
            "eval_command": (f"pearzoo eval -m {ref} --manifest {manifest_path.relative_to(ROOT) if manifest_path.is_relative_to(ROOT) else manifest_path} --device {args.device} --dtype {args.dtype} "
                             f"--sequences {args.sequences} --kv-pairs {','.join(map(str, args.kv_pairs))} --kv-contexts {args.kv_contexts} --json"),
            "eval": report.model_dump(mode="json"),
            "eval_seconds": round(eval_seconds, 1),
            "latency": latency(ref, manifest_path, args.device, args.dtype, args.rounds) if args.rounds else None,
            "environment": {
                "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
                "cpus": os.cpu_count(),
                "pearzoo": pearzoo.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
        }
        path = args.out / f"{_slug(source.model_id)}.json"
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"{ref}: eval {eval_seconds:.0f} s -> {path}", file=sys.stderr)


def _points(before: float, after: float) -> str:
    return f"{100 * (after - before):+.1f}"


def table(results: list[dict]) -> str:
    """The README's table: one row per model, copy and retrieval as accuracy before -> after."""
    head = ("| model | family | K / heads | copy n=10 | copy n=25 | copy n=50 | random heads (points) "
            "| kv P=20 first / middle / last | kv P=50 first / middle / last | perplexity | latency patched / original (prefill, decode) | measured on |")
    lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for r in results:
        ev = r["eval"]
        copy = ev["copy_accuracy"]
        cells = [f"`{r['model_id']}`", r["family"], f"{r['k']} / {r['heads']}"]
        for n in ("10", "25", "50"):
            c = copy[n]
            cells.append(f"{c['base']:.3f} → {c['patched']:.3f} ({_points(c['base'], c['patched'])})")
        cells.append(" / ".join(_points(copy[n]["base"], copy[n]["random_heads"]) for n in ("10", "25", "50")))
        kv = (ev.get("retrieval") or {}).get("accuracy", {})
        for p in ("20", "50"):
            if p in kv:
                cells.append(" / ".join(f"{kv[p][pos]['base']:.2f} → {kv[p][pos]['patched']:.2f}" for pos in POSITIONS))
            else:
                cells.append("skipped (too long)" if ev.get("retrieval") else "not run")
        ppl = ev.get("perplexity")
        cells.append(f"{ppl['base']:.2f} → {ppl['patched']:.2f} ({100 * (ppl['patched'] / ppl['base'] - 1):+.2f}%)" if ppl else "-")
        lat = r.get("latency")
        cells.append(f"{lat['prefill']['patched_over_original']:.2f}x, {lat['decode']['patched_over_original']:.2f}x "
                     f"(A/A {lat['prefill']['again_over_original']:.2f}x, {lat['decode']['again_over_original']:.2f}x)" if lat else "-")
        env = r["environment"]
        cells.append(f"{env['device']}, {ev.get('retrieval', {}).get('contexts', '-')} kv contexts")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_kv = [r for r in results if (r["eval"].get("retrieval") or {}).get("accuracy")]
    pairs = sorted({p for r in with_kv for p in r["eval"]["retrieval"]["accuracy"]}, key=int)
    fig, axes = plt.subplots(len(pairs), len(with_kv), figsize=(3.2 * len(with_kv), 2.8 * len(pairs)), squeeze=False, sharey=True)
    x = range(len(POSITIONS))
    for col, r in enumerate(with_kv):
        kv = r["eval"]["retrieval"]["accuracy"]
        for row, p in enumerate(pairs):
            ax = axes[row][col]
            if p not in kv:
                ax.text(0.5, 0.5, "context too long\nfor the model", ha="center", va="center", transform=ax.transAxes)
            else:
                for variant, style in (("base", "o--"), ("patched", "s-"), ("random_heads", "x:")):
                    ax.plot(x, [kv[p][pos][variant] for pos in POSITIONS], style, label=variant.replace("_", " "))
            ax.set_xticks(list(x), POSITIONS)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{r['model_id'].split('/')[-1]}\n({r['family']}, K={r['k']})", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"exact match, {p} pairs")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Key-value retrieval by position of the queried pair, before and after PEAR", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def render(args: argparse.Namespace) -> None:
    files = sorted(args.results.glob("*.json"))
    if not files:
        raise SystemExit(f"no results in {args.results}: run `python bench/zoo_report.py measure ...` first")
    order = {"rope": 0, "alibi": 1, "learned": 2}
    results = sorted((json.loads(f.read_text(encoding="utf-8")) for f in files), key=lambda r: (order.get(r["family"], 9), r["model_id"]))
    print(table(results))
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="evaluate models with their registry manifests; one JSON per model")
    m.add_argument("models", nargs="+", help="model references (zoo directory, built-in name, cached Hub id)")
    m.add_argument("--registry", type=Path, default=ROOT / "registry", help="local registry directory")
    m.add_argument("--device", default="cpu")
    m.add_argument("--dtype", default="float32")
    m.add_argument("--sequences", type=int, default=500, help="held-out copy sequences per n")
    m.add_argument("--kv-pairs", type=int, nargs="+", default=[20, 50])
    m.add_argument("--kv-contexts", type=int, default=100)
    m.add_argument("--rounds", type=int, default=30, help="bench/inference.py rounds (0: skip latency)")
    m.add_argument("--out", type=Path, default=RESULTS)
    r = sub.add_parser("render", help="print the README table from measured JSON and draw the plot")
    r.add_argument("--results", type=Path, default=RESULTS)
    r.add_argument("--plot", type=Path, default=PLOT, help="PNG path ('' to skip)")
    args = ap.parse_args()
    if args.command == "render" and args.plot == Path(""):
        args.plot = None
    (measure if args.command == "measure" else render)(args)


if __name__ == "__main__":
    main()
