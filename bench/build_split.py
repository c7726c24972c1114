"""Benchmark: `build_manifest` on one device against the same build split by accelerate's `max_memory`.

    python bench/build_split.py --model zoo/models/llama-rope --device cuda          # GPU + CPU offload
    python bench/build_split.py --shape llama-1b --device cuda --dtype bfloat16      # random TinyLlama-1.1B shape
    python bench/build_split.py --model zoo/models/llama-rope --device cpu --set train.steps=4   # CPU + disk

For each model: a build with the whole model on `--device`, then one with `device_map="auto"` and `max_memory`
giving the first device `--fraction` of the weights' bytes; the rest goes to the CPU, or on a CPU-only run to
disk under a temp dir. accelerate keeps the overflow layers' weights off the device and moves them in around
each call (the layers still execute on the device: that is what a split across one GPU and the CPU is). With
`--spread` (several GPUs), accelerate's balanced map over all GPUs instead, nothing offloaded. The two
manifests' heads, scores and coefficients are compared with `pearzoo.audit.compare` under the recipe's audit
tolerances, and exactly (largest differences). Then the split model runs the runtime hooks (`scale_heads`, the
built coefficients) over a prefill and a few greedy decode steps with the KV cache, against the single-device
model under the same hooks. Reported: seconds and peak memory per build (`torch.cuda.max_memory_allocated`,
reset per build; the process's peak RSS, a lifetime maximum), the device map (modules per device) and every
comparison. Prints one JSON report (and writes it to `--out`).

`--shape` writes a random-weights model (transformers' seeded init) and the zoo tokenizer (8192 ids, for the
perplexity budget) to a temp dir first.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from shapes import SHAPES, write_random_model  # noqa: E402  (bench/shapes.py)


def weight_bytes(directory: Path, dtype: str) -> int:
    """Bytes of the checkpoint's tensors once loaded in `dtype`."""
    from safetensors import safe_open

    numel = 0
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                shape = f.get_slice(name).get_shape()
                numel += int(torch.tensor(shape).prod().item()) if shape else 1
    return numel * torch.empty((), dtype=getattr(torch, dtype)).element_size()


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # ru_maxrss is KiB on Linux


def timed_build(options, cuda: bool) -> tuple[object, dict]:
    from pearzoo.build import build_manifest

    if cuda:
        torch.cuda.empty_cache()
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)
        torch.cuda.synchronize()
    start = time.perf_counter()
    manifest = build_manifest(options)
    if cuda:
        torch.cuda.synchronize()
    info = {"seconds": round(time.perf_counter() - start, 2), "stages": manifest.build.seconds, "peak_rss_gib": peak_rss_gib()}
    if cuda:
        info["peak_gpu_gib"] = [round(torch.cuda.max_memory_allocated(i) / 2**30, 3) for i in range(torch.cuda.device_count())]
    return manifest, info


def compare_manifests(single, split) -> dict:
    from pearzoo.audit import compare
    from pearzoo.recipe.load import parse_recipe

    recipe = parse_recipe(single.recipe.settings, source="manifest recipe.settings")
    published = [((h.layer, h.head), h.score, h.coefficient) for h in single.heads]
    rebuilt = [((h.layer, h.head), h.coefficient) for h in split.heads]
    # A manifest records scores of its K heads only: compare the split build's scores of the same heads.
    split_scores = {(h.layer, h.head): h.score for h in split.heads}
    scores = {key: split_scores.get(key, float("nan")) for key, _, _ in published}
    _, checks = compare(published, rebuilt, scores, recipe.audit)
    same = [(a, b) for a in single.heads for b in split.heads if (a.layer, a.head) == (b.layer, b.head)]
    return {
        "audit": json.loads(checks.model_dump_json()),
        "passed": all(c.passed for c in (checks.head_overlap, checks.rank_correlation, checks.coefficient_diff)),
        "heads_identical_order": [(h.layer, h.head) for h in single.heads] == [(h.layer, h.head) for h in split.heads],
        "max_abs_score_diff": max((abs(a.score - b.score) for a, b in same), default=None),
        "max_abs_delta_diff": max((abs(a.delta - b.delta) for a, b in same), default=None),
        "max_abs_coefficient_diff": max((abs(a.coefficient - b.coefficient) for a, b in same), default=None),
        "clean_metrics": [[c.clean_metric for c in m.locate.configurations] for m in (single, split)],
        "copy_after": [single.metrics.copy_after.accuracy, split.metrics.copy_after.accuracy],
        "best_step": [single.metrics.best_step, split.metrics.best_step],
    }


def hooked_generation(model, manifest, ids: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill + greedy decode with the KV cache under `scale_heads`: (prefill logits, tokens)."""
    from pearzoo.heads import HeadId, geometry_from_config
    from pearzoo.hooks import scale_heads
    from pearzoo.proxy import input_device
    from pearzoo.recipe.load import parse_recipe

    recipe = parse_recipe(manifest.recipe.settings, source="manifest recipe.settings")
    geometry = geometry_from_config(recipe.heads, model.config)
    coefficients = {HeadId(h.layer, h.head): h.coefficient for h in manifest.heads}
    with torch.inference_mode(), scale_heads(model, geometry, coefficients):
        out = model(input_ids=ids.to(input_device(model)), use_cache=True)
        logits = out.logits.float().cpu()
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        kw = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [token.cpu()]
        for _ in range(steps):
            out = model(input_ids=token, use_cache=True, **{kw: cache})
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token.cpu())
    return logits, torch.cat(tokens, 1)


def run_model(model_dir: Path, args: argparse.Namespace, work: Path) -> dict:
    from pearzoo.build import BuildOptions
    from pearzoo.source import load_model, resolve_model

    cuda = args.device.startswith("cuda")
    size = weight_bytes(model_dir, args.dtype)
    first = 0 if cuda else "cpu"
    rest = "cpu" if cuda else "disk"
    max_memory = {first: int(size * args.fraction), rest: "200GiB"}
    device_map = "auto"
    if args.spread:  # several GPUs: accelerate's balanced map over all of them, nothing offloaded
        max_memory, device_map = None, "balanced"
    offload = str(work / "offload")
    common = {"model": str(model_dir), "overrides": list(args.set), "dtype": args.dtype}
    split_opts = BuildOptions(**common, device_map=device_map, max_memory=max_memory, offload_folder=offload)
    report: dict = {"model": str(model_dir), "weights_bytes": size, "device_map_request": device_map,
                    "max_memory": {str(k): v for k, v in max_memory.items()} if max_memory else None}

    # The device map the split build gets (same call as the build's), to show that it is split.
    source = resolve_model(str(model_dir))
    model, _ = load_model(source, dtype=args.dtype, device_map=device_map, max_memory=max_memory, offload_folder=offload)
    counts = collections.Counter(str(d) for d in model.hf_device_map.values())
    report["device_map_modules"] = dict(counts)
    report["device_map"] = {k: str(v) for k, v in model.hf_device_map.items()}
    del model
    if len(counts) < 2:
        report["error"] = f"max_memory {max_memory} did not split the model: {dict(counts)}"
        return report

    single, report["single"] = timed_build(BuildOptions(**common, device=args.device), cuda)
    split, report["split"] = timed_build(split_opts, cuda)
    report["comparison"] = compare_manifests(single, split)
    report["digests"] = [single.digest, split.digest]

    # Runtime hooks + KV cache on the split model against the single-device model.
    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    whole, _ = load_model(source, dtype=args.dtype, device=args.device)
    ref_logits, ref_tokens = hooked_generation(whole, single, ids, args.decode_steps)
    del whole
    parted, _ = load_model(source, dtype=args.dtype, device_map=device_map, max_memory=max_memory, offload_folder=offload)
    logits, tokens = hooked_generation(parted, single, ids, args.decode_steps)
    del parted
    report["hooked_inference"] = {
        "prefill_logits_max_abs_diff": (logits - ref_logits).abs().max().item(),
        "prefill_logits_scale": ref_logits.abs().max().item(),
        "greedy_tokens_equal": bool(torch.equal(tokens, ref_tokens)),
        "decode_steps": args.decode_steps,
    }
    if cuda:
        torch.cuda.empty_cache()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], help="Model directory (repeatable).")
    ap.add_argument("--shape", action="append", default=[], choices=sorted(SHAPES), help="Random-weights shape (repeatable).")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--fraction", type=float, default=0.5, help="Share of the weights' bytes the first device may hold.")
    ap.add_argument("--set", action="append", default=[], help="Recipe override for both builds (repeatable).")
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--spread", action="store_true", help="Several GPUs: device_map=balanced over all, no max_memory.")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import accelerate
    import transformers

    work = Path(tempfile.mkdtemp(prefix="pearzoo-bench-split-"))
    report: dict = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "dtype": args.dtype,
        "overrides": args.set,
        "models": [],
    }
    try:
        dirs = [Path(m) for m in args.model]
        for shape in args.shape:
            dirs.append(write_random_model(shape, work / shape, args.dtype, args.device))
        for directory in dirs:
            entry = run_model(directory, args, work)
            report["models"].append(entry)
            if args.out:  # each model's result survives a later one's failure or timeout
                args.out.write_text(json.dumps(report, indent=2) + "\n")
            if "error" in entry:
                print(f"{directory.name}: {entry['error']}", file=sys.stderr, flush=True)
                continue
            c, s, p = entry["comparison"], entry["single"], entry["split"]
            print(f"{directory.name}: map {entry['device_map_modules']}; single {s['seconds']} s, split {p['seconds']} s; "
                  f"audit {'pass' if c['passed'] else 'FAIL'} (max |score diff| {c['max_abs_score_diff']:.2e}, "
                  f"|tau diff| {c['max_abs_coefficient_diff']:.2e}); hooked prefill diff "
                  f"{entry['hooked_inference']['prefill_logits_max_abs_diff']:.2e}, tokens equal "
                  f"{entry['hooked_inference']['greedy_tokens_equal']}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
