"""Recipe tuning: build under a grid of recipe overrides and evaluate every result the way `pearzoo eval` does.

    python bench/recipe_sweep.py --model smollm2-135m-instruct --grid bench/grids/smollm2-135m.json --device cuda

The model is loaded once; locate runs once per distinct locate setting (scores are cached); each grid point
then trains and is evaluated on held-out copy sequences (base, patched, and the same coefficients on K random
heads, seeded as in `pearzoo eval`) and on held-out text perplexity. One JSON line per grid point goes to
stdout (and `--out`), so a recipe change can cite the sweep that chose it.

The grid file is a JSON list of {"name": str, "set": ["key=value", ...]} entries (the same `--set` syntax as
`pearzoo build`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pearzoo.build import BuildOptions, prepare, run_locate, run_train
from pearzoo.evaluate import DEFAULT_TEXT, random_heads
from pearzoo.hooks import scale_heads
from pearzoo.proxy import copy_score, generator, sample_sequences
from pearzoo.recipe.catalog import get_recipe
from pearzoo.text import perplexity, read_text, text_windows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--recipe", default=None, help="Base recipe (default: resolved from the model).")
    ap.add_argument("--grid", required=True, type=Path)
    ap.add_argument("--device", default=None)
    ap.add_argument("--sequences", type=int, default=500)
    ap.add_argument("--lengths", default="10,25,50")
    ap.add_argument("--seed", type=int, default=1234, help="Held-out evaluation seed (as `pearzoo eval`).")
    ap.add_argument("--text-windows", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    grid = json.loads(args.grid.read_text())
    lengths = [int(x) for x in args.lengths.split(",")]
    ctx = prepare(BuildOptions(model=args.model, recipe=args.recipe, device=args.device))
    base_recipe, base_path = ctx.recipe, ctx.recipe_path
    model = ctx.model
    eval_sets = {n: sample_sequences(ctx.space, args.sequences, n, generator(args.seed, f"eval/{n}")) for n in lengths}
    windows = text_windows(ctx.tokenizer, read_text(DEFAULT_TEXT), args.text_windows, 128)

    def measure(coeffs: dict | None) -> dict:
        def run() -> dict:
            acc = {str(n): copy_score(model, s, n, ctx.space.prefix).accuracy for n, s in eval_sets.items()}
            return {"copy": acc, "perplexity": perplexity(model, windows)}

        if coeffs is None:
            return run()
        with scale_heads(model, ctx.geometry, coeffs):
            return run()

    base = measure(None)
    print(json.dumps({"name": "base", **base}), flush=True)
    located_cache: dict[str, object] = {}
    out = args.out.open("w") if args.out else None
    for point in grid:
        start = time.perf_counter()
        recipe, _ = get_recipe(str(base_path), point["set"])
        ctx.recipe = recipe
        # K only cuts the ranking, so every K shares one locate run.
        key = json.dumps([recipe.locate.model_dump(mode="json", exclude={"k"}), recipe.seed], sort_keys=True)
        if key not in located_cache:
            located_cache[key] = run_locate(ctx)
        located = located_cache[key]
        trained = run_train(ctx, located.ranking[: recipe.locate.k])
        coeffs = dict(zip(trained.heads, trained.coefficients))
        control = random_heads(ctx.geometry, trained.heads, len(trained.heads), args.seed)
        patched = measure(coeffs)
        rand = measure(dict(zip(control, trained.coefficients)))
        row = {
            "name": point["name"],
            "set": point["set"],
            "heads": [str(h) for h in trained.heads],
            "coefficients": [round(c, 4) for c in trained.coefficients],
            "scores": [round(float(located.score[h.layer, h.head]), 4) for h in trained.heads],
            "best_step": trained.best_step,
            "val": [(p.step, round(p.accuracy, 4), round(p.perplexity or 0, 3)) for p in trained.history],
            "gain": {n: round(patched["copy"][n] - base["copy"][n], 4) for n in base["copy"]},
            "random_gain": {n: round(rand["copy"][n] - base["copy"][n], 4) for n in base["copy"]},
            "ppl_change": round(patched["perplexity"] / base["perplexity"] - 1, 5),
            "random_ppl_change": round(rand["perplexity"] / base["perplexity"] - 1, 5),
            "patched": patched,
            "random_heads": rand,
            "seconds": round(time.perf_counter() - start, 1),
        }
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()
    ctx.recipe = base_recipe
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
