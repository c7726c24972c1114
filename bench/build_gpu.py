"""Benchmark: locate and train on a Llama-2-7B-shaped model on one GPU, with the naive locate in the same run.

    python bench/build_gpu.py                      # Llama-2-7B shape, bf16, cuda
    python bench/build_gpu.py --layers 4 --device cpu --dtype float32   # smoke test of the script

The weights are random (transformers' own init, seeded): locate and train cost the same whatever the
weights are. The recipe is `rope/llama` with its four default locate configurations. Each phase is timed
with CUDA synchronisation and its peak GPU memory recorded (`torch.cuda.max_memory_allocated`, reset per
phase). The naive reference (one full forward pass per head and configuration, `bench/locate.py`) is timed
on `--sample-heads` heads spread over the layers and scaled to all heads; its scores are compared with
pearzoo's. Prints one JSON report.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from locate import naive_head  # bench/locate.py
    from pearzoo.heads import geometry_from_config, output_projection
    from pearzoo.locate import locate_heads
    from pearzoo.locate.locator import _Readout
    from pearzoo.proxy import generator, sample_sequences, token_space
    from pearzoo.recipe.catalog import get_recipe
    from pearzoo.train import train_coefficients

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=None, help="Fewer layers than 32 (same widths).")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--scope", default="total", choices=["total", "path"])
    ap.add_argument("--sample-heads", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--set", action="append", default=[], help="Recipe override, as `pearzoo build --set`.")
    args = ap.parse_args()

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtype = getattr(torch, args.dtype)
    shape = dict(LLAMA2_7B)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = LlamaConfig(**shape)
    recipe, _ = get_recipe("rope/llama", [f"locate.scope={args.scope}", *args.set])

    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(dtype)
    model.eval().requires_grad_(False)
    sync()
    load_s = time.perf_counter() - t0

    geometry = geometry_from_config(recipe.heads, config)
    space = token_space(recipe.proxy, config.vocab_size, {0, 1, 2}, config.bos_token_id)
    report: dict = {
        "shape": "llama-2-7b" if not args.layers else f"llama-2-7b widths, {args.layers} layers",
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "recipe": recipe.id,
        "scope": args.scope,
        "configurations": [[c.samples, c.length] for c in recipe.locate.configurations],
        "init_seconds": round(load_s, 1),
    }

    def phase(name: str, fn):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        value = fn()
        sync()
        report[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
        if cuda:
            report[f"{name}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return value

    located = phase("locate", lambda: locate_heads(model, geometry, recipe.locate, space, recipe.seed))

    total = geometry.total_heads
    sample = geometry.all_heads()[:: max(1, total // args.sample_heads)][: args.sample_heads]
    readout = _Readout(model)
    worst = 0.0
    worst_abs = 0.0

    def naive() -> None:
        nonlocal worst, worst_abs
        with torch.inference_mode():
            for index, conf in enumerate(recipe.locate.configurations):
                seqs = sample_sequences(space, conf.samples, conf.length, generator(recipe.seed, f"locate/{index}"))
                seqs = seqs.to(args.device)
                p = space.prefix + 2 * conf.length - 2
                clean_in, clean_out, handles = {}, {}, []
                for layer in range(geometry.num_layers):
                    mod = output_projection(model, geometry, layer)
                    handles.append(mod.register_forward_pre_hook(lambda m, a, l=layer: clean_in.__setitem__(l, a[0])))
                    handles.append(mod.register_forward_hook(lambda m, a, o, l=layer: clean_out.__setitem__(l, o)))
                model(input_ids=seqs, use_cache=False)
                for h in handles:
                    h.remove()
                for head in sample:
                    value = naive_head(model, geometry, seqs, p, head.layer, head.head, args.scope, clean_in, clean_out, readout)
                    ours = located.configurations[index].ablated_metric[head.layer, head.head].item()
                    worst_abs = max(worst_abs, abs(value - ours))
                    worst = max(worst, abs(value - ours) / max(1e-9, abs(value)))

    phase("naive_sample", naive)
    report["naive_heads_sampled"] = len(sample)
    report["naive_seconds_scaled"] = round(report["naive_sample_seconds"] * total / len(sample), 1)
    report["locate_speedup"] = round(report["naive_seconds_scaled"] / report["locate_seconds"], 1)
    # With random weights the metric (target logit minus mean logit) sits near 0, so a relative difference
    # says little; the absolute one is compared with the clean metrics' magnitude.
    report["max_relative_diff_on_sample"] = worst
    report["max_abs_diff_on_sample"] = worst_abs
    report["clean_metrics"] = [round(c.clean_metric, 5) for c in located.configurations]

    spec = recipe.train.model_copy(update={"steps": args.train_steps})
    trained = phase("train", lambda: train_coefficients(model, geometry, located.selected, spec, space, recipe.seed))
    report["train_steps"] = args.train_steps
    report["train_batch"] = [spec.batch_size, spec.length]
    report["top_k"] = [str(h) for h in located.selected]
    report["coefficients_finite"] = all(torch.isfinite(torch.tensor(trained.coefficients)).tolist())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
