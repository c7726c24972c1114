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
    from pearzoo.manifest.recorded import recorded_recipe
    from pearzoo.source import load_config

    args.out.mkdir(parents=True, exist_ok=True)
    for ref in args.models:
        source, manifest_path = registry_entry(ref, args.registry)
        manifest = read_manifest(manifest_path)
        print(f"{ref}: manifest {manifest.digest[:12]} ({len(manifest.heads)} heads, {manifest.recipe.id})", file=sys.stderr)
        t0 = time.perf_counter()
        report = run_eval(
            ref, str(manifest_path), device=args.device, dtype=args.dtype, sequences=args.sequences,
            kv=False if args.no_kv else None, kv_pairs=tuple(args.kv_pairs), kv_contexts=args.kv_contexts,
            random_draws=args.random_draws,
        )
        eval_seconds = time.perf_counter() - t0
        path = args.out / f"{_slug(source.model_id)}.json"
        rel = manifest_path.relative_to(ROOT) if manifest_path.is_relative_to(ROOT) else manifest_path
        kv_args = "--no-kv" if args.no_kv else f"--kv-pairs {','.join(map(str, args.kv_pairs))} --kv-contexts {args.kv_contexts}"
        if args.rounds:
            lat = latency(ref, manifest_path, args.device, args.dtype, args.rounds)
        else:
            # --rounds 0 keeps the latency of the previous result for this model (the fold's cost does not depend
            # on the eval), and says so.
            old = json.loads(path.read_text(encoding="utf-8")).get("latency") if path.is_file() else None
            lat = {**old, "kept_from_previous_measure": True} if old else None
        previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        result = {
            "model": ref,
            "model_id": source.model_id,
            # Per model, not per recipe: mixed/falcon is RoPE or ALiBi by the model's config.
            "family": recorded_recipe(manifest, manifest_path).position_family(load_config(source)),
            "recipe": f"{manifest.recipe.id} {manifest.recipe.version}",
            "k": len(manifest.heads),
            "heads": manifest.base.geometry.num_layers * manifest.base.geometry.num_heads,
            "manifest": manifest.digest,
            "manifest_path": str(rel),
            "eval_command": (f"pearzoo eval -m {ref} --manifest {rel} --device {args.device} --dtype {args.dtype} "
                             f"--sequences {args.sequences} {kv_args} --random-draws {args.random_draws} --json"),
            "eval": report.model_dump(mode="json", exclude_none=True),
            "eval_seconds": round(eval_seconds, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "latency": lat,
            # --no-kv keeps the previous measure's retrieval (no intervals) so the table can still show it, marked.
            "previous_retrieval": (
                {"retrieval": previous["eval"]["retrieval"], "eval_command": previous.get("eval_command")}
                if args.no_kv and (previous.get("eval") or {}).get("retrieval") else previous.get("previous_retrieval") if args.no_kv else None
            ),
            "environment": {
                "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
                "cpus": os.cpu_count(),
                "pearzoo": pearzoo.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
        }
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"{ref}: eval {eval_seconds:.0f} s -> {path}", file=sys.stderr)


def _points(before: float, after: float) -> str:
    return f"{100 * (after - before):+.1f}"


def _iv(i: list[float], scale: float = 100, fmt: str = "+.1f") -> str:
    return f"[{scale * i[0]:{fmt}}, {scale * i[1]:{fmt}}]"


def beats_control(ev: dict, n: str) -> list[float] | None:
    """95% interval of patched - control copy accuracy at n, paired over sequences, draws resampled (None without samples)."""
    from pearzoo import stats

    s = ((ev.get("samples") or {}).get("copy_accuracy") or {}).get(n)
    if not s or not s.get("random_heads"):
        return None
    import torch

    scale = 1 / (int(n) - 1)
    control = torch.tensor(s["random_heads"], dtype=torch.float64).T * scale
    patched = torch.tensor(s["patched"], dtype=torch.float64) * scale
    lo, hi = stats.two_level_interval(control, patched, seed=ev["seed"], stream=f"eval/copy/{n}/patched-vs-control")
    return [-hi, -lo]


def verdict(ev: dict, n: str) -> str:
    """'gain' only where the gain's interval excludes zero and the patched model beats the control (its interval of
    patched - control excludes zero too); 'above base, not above control' where only the first holds; 'loss' where
    the gain's interval lies below zero; else 'unresolved'."""
    iv = ev["intervals"]["copy_accuracy"][n]
    gain = iv["gain"]
    vs = beats_control(ev, n)
    if gain[0] > 0 and vs is not None and vs[0] > 0:
        return "gain"
    if gain[0] > 0:
        return "above base, not above control"
    return "loss" if gain[1] < 0 else "unresolved"


def table(results: list[dict]) -> str:
    """The README's table: one row per model; copy gains and the control's with 95% intervals, retrieval before -> after."""
    head = ("| model | family | K / heads | copy n=10 | copy n=25 | copy n=50 | random heads, R draws (points) "
            "| kv P=20 first / middle / last | kv P=50 first / middle / last | perplexity | latency patched / original (prefill, decode) | measured on |")
    lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for r in results:
        ev = r["eval"]
        copy = ev["copy_accuracy"]
        iv = (ev.get("intervals") or {}).get("copy_accuracy", {})
        cells = [f"`{r['model_id']}`", r["family"], f"{r['k']} / {r['heads']}"]
        for n in ("10", "25", "50"):
            c = copy[n]
            gain = f"{_points(c['base'], c['patched'])} {_iv(iv[n]['gain'])}" if n in iv else _points(c["base"], c["patched"])
            mark = f", {verdict(ev, n)}" if n in iv else ""
            cells.append(f"{c['base']:.3f} → {c['patched']:.3f} ({gain}{mark})")
        draws = (ev.get("controls") or {}).get("random_heads_draws", 1)
        cells.append(f"R={draws}: " + " / ".join(
            f"{_points(copy[n]['base'], copy[n]['random_heads'])}" + (f" {_iv(iv[n]['random_heads_gain'])}" if n in iv else "")
            for n in ("10", "25", "50")
        ))  # fmt: skip
        retrieval = ev.get("retrieval") or (r.get("previous_retrieval") or {}).get("retrieval")
        kv = (retrieval or {}).get("accuracy", {})
        kv_iv = (ev.get("intervals") or {}).get("kv_retrieval") or {}
        for p in ("20", "50"):
            if p in kv:
                text = []
                for pos in POSITIONS:
                    cell = f"{kv[p][pos]['base']:.2f} → {kv[p][pos]['patched']:.2f}"
                    if p in kv_iv and kv_iv[p][pos]["gain"][0] > 0:
                        cell += " (gain)"
                    elif p in kv_iv and kv_iv[p][pos]["gain"][1] < 0:
                        cell += " (loss)"
                    text.append(cell)
                cells.append(" / ".join(text) + ("" if ev.get("retrieval") else " (earlier measure, no intervals)"))
            else:
                cells.append("skipped (too long)" if retrieval else "not run")
        ppl = ev.get("perplexity")
        pch = ((ev.get("intervals") or {}).get("perplexity") or {}).get("change")
        cells.append(f"{ppl['base']:.2f} → {ppl['patched']:.2f} ({100 * (ppl['patched'] / ppl['base'] - 1):+.2f}%"
                     + (f" {_iv(pch, 100, '+.2f')}" if pch else "") + ")" if ppl else "-")  # fmt: skip
        lat = r.get("latency")
        cells.append(f"{lat['prefill']['patched_over_original']:.2f}x, {lat['decode']['patched_over_original']:.2f}x "
                     f"(A/A {lat['prefill']['again_over_original']:.2f}x, {lat['decode']['again_over_original']:.2f}x)" if lat else "-")
        env = r["environment"]
        kv_note = f"{retrieval['contexts']} kv contexts" if retrieval else "no kv"
        note = "" if ev.get("intervals") else ", before intervals (not re-run)"
        cells.append(f"{env['device']}, {ev['sequences']} sequences, {kv_note}{note}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def retrieval(r: dict) -> dict:
        return r["eval"].get("retrieval") or (r.get("previous_retrieval") or {}).get("retrieval") or {}

    with_kv = [r for r in results if retrieval(r).get("accuracy")]
    pairs = sorted({p for r in with_kv for p in retrieval(r)["accuracy"]}, key=int)
    fig, axes = plt.subplots(len(pairs), len(with_kv), figsize=(3.2 * len(with_kv), 2.8 * len(pairs)), squeeze=False, sharey=True)
    x = range(len(POSITIONS))
    for col, r in enumerate(with_kv):
        kv = retrieval(r)["accuracy"]
        for row, p in enumerate(pairs):
            ax = axes[row][col]
            if p not in kv:
                ax.text(0.5, 0.5, "context too long\nfor the model", ha="center", va="center", transform=ax.transAxes)
            else:
                kv_iv = ((r["eval"].get("intervals") or {}).get("kv_retrieval") or {}).get(p, {})
                for shift, (variant, style) in zip((-0.08, 0.0, 0.08), (("base", "o--"), ("patched", "s-"), ("random_heads", "x:"))):
                    y = [kv[p][pos][variant] for pos in POSITIONS]
                    xs = [i + shift for i in x]
                    if kv_iv:  # 95% intervals (Wilson; the control's over contexts and draws)
                        err = [[y[i] - kv_iv[pos][variant][0] for i, pos in enumerate(POSITIONS)],
                               [kv_iv[pos][variant][1] - y[i] for i, pos in enumerate(POSITIONS)]]
                        ax.errorbar(xs, y, yerr=err, fmt=style, capsize=2, label=variant.replace("_", " "))
                    else:
                        ax.plot(xs, y, style, label=variant.replace("_", " "))
            ax.set_xticks(list(x), POSITIONS)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{r['model_id'].split('/')[-1]}\n({r['family']}, K={r['k']})", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"exact match, {p} pairs")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Key-value retrieval by position of the queried pair, before and after PEAR (95% intervals)", fontsize=10)
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
    m.add_argument("--no-kv", action="store_true", help="skip key-value retrieval")
    m.add_argument("--random-draws", type=int, default=5, help="draws of the random-heads control")
    m.add_argument("--rounds", type=int, default=30, help="bench/inference.py rounds (0: keep the previous result's latency)")
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
