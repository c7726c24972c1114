"""Benchmark: pearzoo's locate vs the naive reference (one full forward pass per head), same run.

    python bench/locate.py --model smollm2-135m-instruct --scope total --sample-heads 6
    python bench/locate.py --scope path --out bench/results/locate-cpu-path.json

The naive reference is timed on `--sample-heads` heads (spread over the layers) and scaled to all
heads; its scores for those heads are compared with pearzoo's. Prints a JSON report (and writes it to
`--out`), with the 1-minute load average before and after each of the two timings: on a shared machine
the absolute times move with the load and the host, the ratio much less.

`--candidates 32 48` also runs locate with the attribution pre-screen (`pearzoo.locate.prescreen`) at each candidate
count and reports its time, its speedup over the naive reference and whether it picks the exact scan's top K.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def naive_head(model, geometry, seqs, p, layer, head, scope, clean_in, clean_out, readout):
    from pearzoo.heads import output_projection

    hd = geometry.head_dim
    sl = slice(head * hd, (head + 1) * hd)
    mean = clean_in[layer][:, p].mean(0)

    def ablate(mod, args):
        x = args[0].clone()
        x[:, p, sl] = mean[sl]
        return (x, *args[1:])

    handles = [output_projection(model, geometry, layer).register_forward_pre_hook(ablate)]
    if scope == "path":
        for later in range(layer + 1, geometry.num_layers):
            def freeze(mod, args, out, later=later):
                out = out.clone()
                out[:, p] = clean_out[later][:, p]
                return out
            handles.append(output_projection(model, geometry, later).register_forward_hook(freeze))
    try:
        logits = model(input_ids=seqs, use_cache=False).logits  # a plain forward, as a first implementation would do
    finally:
        for h in handles:
            h.remove()
    final = logits[:, p].float()
    target = seqs[:, p + 1]
    return (final.gather(1, target[:, None]).squeeze(1) - final.mean(-1)).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--recipe", default=None)
    ap.add_argument("--scope", choices=["path", "total"], default="total")
    ap.add_argument("--sample-heads", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", type=Path, default=None, help="Also write the JSON report here.")
    ap.add_argument("--candidates", type=int, nargs="*", default=[],
                    help="Also run the attribution pre-screen with these candidate counts and compare its top K.")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pearzoo.build import BuildOptions, prepare
    from pearzoo.heads import output_projection
    from pearzoo.locate import locate_heads
    from pearzoo.proxy import generator, sample_sequences

    ctx = prepare(BuildOptions(model=args.model, recipe=args.recipe, overrides=[f"locate.scope={args.scope}"], device=args.device, dtype=args.dtype))
    spec = ctx.recipe.locate
    g = ctx.geometry
    sync = torch.cuda.synchronize if torch.cuda.is_available() and args.device and "cuda" in args.device else (lambda: None)

    load = {"before_pearzoo": os.getloadavg()[0]}
    sync()
    t0 = time.perf_counter()
    fast = locate_heads(ctx.model, g, spec, ctx.space, ctx.recipe.seed)
    sync()
    fast_s = time.perf_counter() - t0
    load["after_pearzoo"] = os.getloadavg()[0]

    total = g.total_heads
    step = max(1, total // args.sample_heads)
    sample = g.all_heads()[::step][: args.sample_heads]
    from pearzoo.locate.locator import _Readout

    readout = _Readout(ctx.model)
    worst = 0.0
    naive_s = 0.0
    with torch.inference_mode():
        for index, conf in enumerate(spec.configurations):
            seqs = sample_sequences(ctx.space, conf.samples, conf.length, generator(ctx.recipe.seed, f"locate/{index}")).to(ctx.model.device)
            p = ctx.space.prefix + 2 * conf.length - 2
            clean_in, clean_out, handles = {}, {}, []
            for l in range(g.num_layers):
                mod = output_projection(ctx.model, g, l)
                handles.append(mod.register_forward_pre_hook(lambda m, a, l=l: clean_in.__setitem__(l, a[0])))
                handles.append(mod.register_forward_hook(lambda m, a, o, l=l: clean_out.__setitem__(l, o)))
            ctx.model(input_ids=seqs, use_cache=False)
            for h in handles:
                h.remove()
            sync()
            t0 = time.perf_counter()
            for head in sample:
                value = naive_head(ctx.model, g, seqs, p, head.layer, head.head, args.scope, clean_in, clean_out, readout)
                ours = fast.configurations[index].ablated_metric[head.layer, head.head].item()
                worst = max(worst, abs(value - ours) / max(1e-9, abs(value)))
            sync()
            naive_s += time.perf_counter() - t0
    load["after_naive"] = os.getloadavg()[0]
    naive_all = naive_s * total / len(sample)
    screens = []
    exact_top = set(fast.selected)
    for m in args.candidates:
        sync()
        t0 = time.perf_counter()
        screened = locate_heads(ctx.model, g, spec, ctx.space, ctx.recipe.seed, candidates=m)
        sync()
        seconds = time.perf_counter() - t0
        screens.append({
            "candidates": m,
            "seconds": round(seconds, 2),
            "speedup_vs_naive": round(naive_all / seconds, 1),
            "same_top_k": set(screened.selected) == exact_top,
            "top_k_overlap": len(set(screened.selected) & exact_top),
            "exact_top_k_missed": sorted(str(h) for h in exact_top - set(screened.exact)),
            "top_k": [str(h) for h in screened.selected],
        })
        load[f"after_candidates_{m}"] = os.getloadavg()[0]
    report = {
        "model": ctx.source.model_id,
        "scope": args.scope,
        "heads": total,
        "configurations": [[c.samples, c.length] for c in spec.configurations],
        "device": str(ctx.model.device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "load_average_1min": {k: round(v, 2) for k, v in load.items()},
        "pearzoo_seconds": round(fast_s, 2),
        "naive_seconds_sampled": round(naive_s, 2),
        "naive_heads_sampled": len(sample),
        "naive_seconds_scaled": round(naive_all, 1),
        "speedup": round(naive_all / fast_s, 1),
        "max_relative_diff_on_sample": worst,
        "top_k": [str(h) for h in fast.selected],
        "prescreen": screens,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
