"""Benchmark: one model original, patched (`pearzoo patch`) and with runtime hooks (`scale_heads`), same run.

    python bench/inference.py                                    # zoo/models/llama-rope (8x384 Llama), a few minutes on 2 cores
    python bench/inference.py --model smollm2-135m-instruct      # the built-in GGUF (30 layers, 135M), a few minutes
    python bench/inference.py --device cuda --dtype bfloat16 --batch 16 --prompt-len 512 --new-tokens 128
    python bench/inference.py --model DIR --manifest m.pear.json  # an existing manifest instead of a quick build
    python bench/inference.py --shape llama-7b --device cuda --dtype bfloat16   # random Llama-2-7B weights (bench/shapes.py)

Without `--manifest`, a quick manifest is built with pearzoo's build API (the model's recipe, small locate
and training settings, `--k` heads; on CUDA on the GPU in `--dtype`, else on the CPU in float32). `--shape`
first writes a random-weights checkpoint of that shape to the temp directory. `patch_model` writes the
patched copy to a temp directory. Timed: the
original model, the patched copy (plain `from_pretrained`), the original under `pearzoo.hooks.scale_heads`
with the manifest's coefficients (hooks installed outside the timed region), and the original once more
("again", an A/A control: what no difference looks like on this machine, in this run). Two workloads:
prefill of a fixed random batch (`--batch` x `--prompt-len`, building the KV cache), and greedy decode of
`--new-tokens` single-token steps with that cache. Under `torch.inference_mode`, with a fixed thread
count, after `--warmup` untimed rounds, the variants run in `--rounds` interleaved rounds (the order
rotates each round); on CUDA the device is synchronized around every timed region.

Prints a JSON report to stdout and a one-line summary to stderr. Per workload: median, min and max
seconds per variant, and per-round ratios to the original (paired within a round) as median, min, max,
a 95% bootstrap interval of the median and the number of slower rounds. "Within noise": the interval of
patched/original overlaps that of again/original. "Slower": the interval of hooked/original lies above
it. (Rounds on a shared machine are not independent, so read the intervals as a guide, not a test.)
Also reported: max |logits| difference patched vs hooked (equal up to rounding: the fold rounds tau * W
once to the checkpoint's storage dtype, bf16 for llama-rope, while the hooks scale activations in
float32), patched vs original (the patch is not a no-op), and whether greedy tokens agree.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import SHAPES, write_random_model  # noqa: E402  (bench/shapes.py)

# "again" is the original model timed a second time in each round: an A/A control whose ratio to "original"
# shows what no difference looks like on this machine in this run.
VARIANTS = ("original", "again", "patched", "hooked")
RESAMPLES = 2000  # bootstrap resamples of the rounds for the 95% intervals of the median ratios
# Small settings for the quick manifest: locate and training only have to produce valid coefficients.
QUICK = [
    "locate.configurations=[{samples: 8, length: 8}]",
    "train.steps=6",
    "train.lr=0.05",  # enough for the coefficients to move away from 1 in 6 steps
    "train.batch_size=4",
    # Random weights have no natural-text perplexity worth keeping (~40,000): a 1% budget would refuse every step.
    "train.preservation.budget=1.0",
    "train.length=8",
    "train.validation_sequences=8",
    "train.validate_every=2",
    "train.preservation.windows=2",
    "train.preservation.window_length=32",
]


def quick_manifest(model: str, k: int, dtype: str, device: str | None = None) -> object:
    from pearzoo.build import BuildOptions, build_manifest

    return build_manifest(BuildOptions(model=model, overrides=[f"locate.k={k}", *QUICK], dtype=dtype, device=device))


def load(ref: str, dtype: str, device: str) -> torch.nn.Module:
    from pearzoo.source import load_model, resolve_model

    model, _ = load_model(resolve_model(ref), dtype=dtype, device=device)
    return model


class Timer:
    def __init__(self, device: str) -> None:
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)

    def __enter__(self) -> Timer:
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.seconds = time.perf_counter() - self.start


def prefill(model: torch.nn.Module, ids: torch.Tensor) -> object:
    return model(input_ids=ids, use_cache=True)


def _cache(out: object) -> object:
    # transformers 5 renamed `past_key_values` to `cache` (argument and output); take whichever this one has.
    return out.cache if hasattr(out, "cache") else out.past_key_values


def cache_kwarg(model: torch.nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def decode(model: torch.nn.Module, first: object, steps: int, kw: str) -> torch.Tensor:
    """Greedy decode `steps` tokens, one forward of one token each, from a prefill's output and cache."""
    cache = _cache(first)
    token = first.logits[:, -1].argmax(-1, keepdim=True)
    tokens = [token]
    for _ in range(steps):
        out = model(input_ids=token, use_cache=True, **{kw: cache})
        cache = _cache(out)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    return torch.cat(tokens, dim=1)


def summary(values: list[float], digits: int = 4) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits), "max": round(max(values), digits)}


def ratio_summary(ratios: list[float], seed: int) -> dict[str, object]:
    """Median, min and max of per-round ratios, a 95% bootstrap interval of the median, and slower rounds."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(RESAMPLES))
    ci = [round(medians[int(0.025 * RESAMPLES)], 3), round(medians[int(0.975 * RESAMPLES) - 1], 3)]
    return {**summary(ratios, 3), "ci95_median": ci, "slower_rounds": f"{sum(r > 1.0 for r in ratios)}/{len(ratios)}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "zoo/models/llama-rope"),
                    help="Directory, .gguf file, built-in name (smollm2-135m-instruct) or cached Hub id.")
    ap.add_argument("--manifest", type=Path, default=None, help="Manifest to apply (default: build a quick one).")
    ap.add_argument("--k", type=int, default=8, help="Heads in the quick manifest (ignored with --manifest).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (every variant).")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (fixed, so runs compare).")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32, help="Greedy decode steps with the KV cache.")
    ap.add_argument("--rounds", type=int, default=30, help="Interleaved timed rounds.")
    ap.add_argument("--warmup", type=int, default=2, help="Untimed rounds first.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="An existing directory for the temp dir that holds the patched copy (default: the system's).")
    ap.add_argument("--shape", default=None, choices=sorted(SHAPES), help="Random weights of this shape instead of --model.")
    ap.add_argument("--out", type=Path, default=None, help="Also write the JSON report here.")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from pearzoo.heads import HeadId, geometry_from_config
    from pearzoo.hooks import scale_heads
    from pearzoo.manifest.io import read_manifest, write_manifest
    from pearzoo.patch.api import PatchOptions, patch_model
    from pearzoo.recipe.load import parse_recipe

    seconds: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="pearzoo-bench-inference-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        if args.shape:
            args.model = str(write_random_model(args.shape, work / args.shape, args.dtype, args.device))
            seconds["random_model"] = time.perf_counter() - t0
            t0 = time.perf_counter()
        cuda = args.device.startswith("cuda")
        if args.manifest:
            manifest, manifest_path = read_manifest(args.manifest), args.manifest
        else:
            manifest = quick_manifest(args.model, args.k, args.dtype if cuda else "float32", args.device if cuda else None)
            manifest_path = write_manifest(manifest, work / "quick.pear.json")
            seconds["build"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        patched_dir = work / "patched"
        patch_model(PatchOptions(model=args.model, manifest=manifest_path, out=patched_dir))
        seconds["patch"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        models = {"original": load(args.model, args.dtype, args.device), "patched": load(str(patched_dir), args.dtype, args.device)}
        seconds["load"] = time.perf_counter() - t0
        recipe = parse_recipe(manifest.recipe.settings, source="manifest recipe.settings")
        geometry = geometry_from_config(recipe.heads, models["original"].config)
        coefficients = {HeadId(h.layer, h.head): h.coefficient for h in manifest.heads}

        vocab = models["original"].config.get_text_config().vocab_size
        g = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, vocab, (args.batch, args.prompt_len), generator=g).to(args.device)
        timer = Timer(args.device)
        kw = cache_kwarg(models["original"])
        times: dict[str, dict[str, list[float]]] = {w: {v: [] for v in VARIANTS} for w in ("prefill", "decode")}
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.inference_mode():
            for r in range(args.warmup + args.rounds):
                order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
                for v in order:
                    model = models["patched" if v == "patched" else "original"]
                    # Hooks are installed outside the timed regions: only the forward passes are timed.
                    hooks = scale_heads(model, geometry, coefficients) if v == "hooked" else contextlib.nullcontext()
                    with hooks:
                        with timer:
                            first = prefill(model, ids)
                        t_prefill = timer.seconds
                        with timer:
                            tokens = decode(model, first, args.new_tokens, kw)
                    if r >= args.warmup:
                        times["prefill"][v].append(t_prefill)
                        times["decode"][v].append(timer.seconds)
                    if v not in outputs:
                        outputs[v] = (first.logits.float().cpu(), tokens.cpu())
                    del first
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report: dict[str, object] = {
        "command": " ".join(sys.argv),
        "model": args.shape or args.model,
        "manifest": manifest.digest,
        "heads": [str(h) for h in sorted(coefficients)],
        "coefficients": [round(coefficients[h], 4) for h in sorted(coefficients)],
        "hooked_layers": len({h.layer for h in coefficients}),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(torch.device(args.device)),
        "dtype": args.dtype,
        "threads": torch.get_num_threads() if args.device == "cpu" else None,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "decode_steps": args.new_tokens,
        "rounds": args.rounds,
        "warmup": args.warmup,
    }
    verdict = {}
    for workload, by_variant in times.items():
        ratios = {
            v: ratio_summary([a / b for a, b in zip(by_variant[v], by_variant["original"])], args.seed)
            for v in ("again", "patched", "hooked")
        }
        aa, patched, hooked = ratios["again"]["ci95_median"], ratios["patched"]["ci95_median"], ratios["hooked"]["ci95_median"]
        report[workload] = {
            "seconds": {v: summary(by_variant[v], 5) for v in VARIANTS},
            "ratio_again_over_original": ratios["again"],
            "ratio_patched_over_original": ratios["patched"],
            "ratio_hooked_over_original": ratios["hooked"],
            "patched_within_noise": patched[0] <= aa[1] and aa[0] <= patched[1],
            "hooked_slower": hooked[0] > aa[1],
        }
        verdict[workload] = report[workload]
    # The hooks' cost per decode step: paired (same round) differences from the original, over the steps.
    steps = args.new_tokens
    dec = times["decode"]
    per_step = {v: [(a - b) / steps * 1e3 for a, b in zip(dec[v], dec["original"])] for v in ("again", "patched", "hooked")}
    report["decode"]["ms_per_step"] = {v: round(statistics.median(dec[v]) / steps * 1e3, 4) for v in VARIANTS}
    report["decode"]["extra_ms_per_step_vs_original"] = {v: summary(d, 4) for v, d in per_step.items()}
    (lp, tp), (lh, th), (lo, _) = outputs["patched"], outputs["hooked"], outputs["original"]
    report["logits_max_abs_diff"] = {"patched_vs_hooked": (lp - lh).abs().max().item(), "patched_vs_original": (lp - lo).abs().max().item()}
    report["greedy_tokens_equal_patched_vs_hooked"] = bool(torch.equal(tp, th))
    report["setup_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    import transformers

    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "platform": platform.platform()}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)

    def line(workload: str) -> str:
        w = verdict[workload]
        s = w["seconds"]
        return (f"{workload} {s['original']['median'] * 1e3:.1f} / {s['patched']['median'] * 1e3:.1f} / {s['hooked']['median'] * 1e3:.1f} ms "
                f"(patched {w['ratio_patched_over_original']['median']:.3f}x{'' if w['patched_within_noise'] else ' NOT'} within noise "
                f"[A/A {w['ratio_again_over_original']['median']:.3f}x], "
                f"hooks {w['ratio_hooked_over_original']['median']:.3f}x{'' if w['hooked_slower'] else ' NOT'} slower)")

    print(f"original / patched / hooked, medians of {args.rounds} rounds on {report['device']}: "
          f"{line('prefill')}; {line('decode')}; hooks +{report['decode']['extra_ms_per_step_vs_original']['hooked']['median']:.3f} ms "
          f"per decode step (A/A {report['decode']['extra_ms_per_step_vs_original']['again']['median']:+.3f}); "
          f"max |logits| patched-hooked {report['logits_max_abs_diff']['patched_vs_hooked']:.2e}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
