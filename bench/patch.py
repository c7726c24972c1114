"""Benchmark: `pearzoo patch` (the API) vs a plain copy of the same files, same run, same disk.

    python bench/patch.py                      # TinyLlama-1.1B shapes (22 layers, 2.05 GiB bf16, ~1 min on 2 cores)
    python bench/patch.py --shape 7b           # Llama-2-7B shapes (32 layers, 12.6 GiB bf16; needs ~40 GiB disk)
    python bench/patch.py --shape 7b --layers 4 --keep   # 7B widths, fewer layers; keep the files in --workdir

A synthetic sharded checkpoint (random bf16, real Llama tensor names, shapes, index and config) is written
to --workdir; a manifest folding --heads heads spread over the layers is sealed for it (schema 2 by
default: every weight file bound by sha256, so patch hashes every byte it copies; `--schema 1` binds the
folded tensors only, and untouched bytes are copied in the kernel). Then, each in a fresh child process
so that peak RSS (`resource.getrusage(...).ru_maxrss`) belongs to that step alone: a plain copy
(`shutil.copyfile` + fsync per file, as patch fsyncs its shards: the baseline) and `patch_model`,
interleaved for `--rounds` rounds (alternating which goes first), each after `os.sync()`.
Prints a JSON report: per-round seconds (and CPU seconds) of both, the per-round ratio patch/copy with its
median and spread (min, max), the ratio of the medians and of the fastest of each, throughput, peak RSS
of each, the load average before and after, and the largest shard and tensor for comparison with the
memory bound.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    # TinyLlama/TinyLlama-1.1B (GQA, 4 KV heads)
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000},
    # meta-llama/Llama-2-7b-hf
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000},
}


def tensor_shapes(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, h))]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}"
        out += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (h, h)),
            (f"{p}.self_attn.k_proj.weight", (kv, h)),
            (f"{p}.self_attn.v_proj.weight", (kv, h)),
            (f"{p}.self_attn.o_proj.weight", (h, h)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (i, h)),
            (f"{p}.mlp.up_proj.weight", (i, h)),
            (f"{p}.mlp.down_proj.weight", (h, i)),
        ]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def write_checkpoint(directory: Path, config: dict, shard_bytes: int) -> dict:
    """Random bf16 weights in shards of at most `shard_bytes`, with an HF-style index and config."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensor_shapes(config):
        n = 2 * int(torch.Size(shape).numel())
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += n
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in group:
            tensors[name] = torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=gen).to(torch.bfloat16)
            weight_map[name] = fname
            total += 2 * tensors[name].numel()
        save_file(tensors, str(directory / fname), metadata={"format": "pt"})
        del tensors
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    full = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16", "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, **config,
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(full, indent=2))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return {"files": len(groups), "bytes": total}


def seal_manifest(directory: Path, config: dict, heads: int, path: Path, schema: int = 2) -> str:
    """A manifest folding `heads` heads spread over the layers (coefficients 0.5..1.5), bound by digest."""
    from pearzoo import __version__
    from pearzoo.binding import base_digests, base_files
    from pearzoo.manifest.io import seal
    from pearzoo.manifest.schema import Manifest
    from pearzoo.recipe.catalog import get_recipe
    from pearzoo.recipe.load import recipe_digest
    from pearzoo.source import ModelSource

    recipe, _ = get_recipe("rope/llama")
    layers, per_layer = config["num_hidden_layers"], config["num_attention_heads"]
    # Spread evenly over the layers (a located top-K usually touches most layers), distinct heads.
    pairs = sorted({(k * layers // heads, (k * 7) % per_layer) for k in range(heads)})
    names = {f"model.layers.{l}.self_attn.o_proj.weight" for l, _ in pairs}
    holder = type("Prefix", (), {"base_model_prefix": "model"})()
    source = ModelSource(kind="directory", path=directory, model_id="bench/llama")
    tensors = base_digests(source, holder, names)
    files = {"files": base_files(source)} if schema >= 2 else {}
    hd = config["hidden_size"] // per_layer
    document = {
        "schema_version": schema,
        "base": {"model_id": "bench/llama", "format": "safetensors", "model_type": "llama", "architectures": ["LlamaForCausalLM"],
                 "dtype": "bfloat16", "geometry": {"num_layers": layers, "num_heads": per_layer, "head_dim": hd, "layout": "columns"},
                 "tensors": tensors, **files},
        "recipe": {"id": recipe.id, "version": recipe.version, "digest": recipe_digest(recipe), "overrides": [], "settings": recipe.model_dump(mode="json")},
        "locate": {"scope": "path", "k": len(pairs), "configurations": [{"samples": 1, "length": 2, "clean_metric": 0.0}]},
        "heads": [{"layer": l, "head": h, "score": 0.0, "delta": 0.0, "coefficient": 0.5 + i / max(1, len(pairs) - 1)} for i, (l, h) in enumerate(pairs)],
        "metrics": {"copy_length": 2, "copy_sequences": 1, "copy_before": {"accuracy": 0.0, "loss": 0.0}, "copy_after": {"accuracy": 0.0, "loss": 0.0},
                    "perplexity_text": None, "perplexity_before": None, "perplexity_after": None, "perplexity_budget": 0.01,
                    "best_step": 0, "steps": 0, "history": []},
        "build": {"pearzoo": __version__, "torch": "-", "transformers": "-", "python": platform.python_version(), "device": "cpu",
                  "dtype": "bfloat16", "seed": 0, "seconds": {}},
    }  # fmt: skip
    sealed = seal(document)
    Manifest.model_validate(sealed)
    path.write_text(json.dumps(sealed, indent=2))
    return sealed["digest"]


def child(step: str, src: Path, dst: Path, manifest: Path, options: dict) -> None:
    """Run one step in this fresh process and print its result as JSON.

    The parent never imports torch, and each step is a new process, so `ru_maxrss` is the step's own peak
    (Linux carries ru_maxrss across exec, so a large parent would mask a small child).
    """
    if step == "prepare":
        t0 = time.perf_counter()
        ckpt = write_checkpoint(src, options["config"], options["shard_bytes"])
        ckpt["generate_seconds"] = round(time.perf_counter() - t0, 1)
        ckpt["manifest"] = seal_manifest(src, options["config"], options["heads"], manifest, options["schema"])
        print(json.dumps(ckpt))
        return
    t0 = time.perf_counter()
    if step == "patch":
        importlib.import_module("torch")  # before the clock starts: import time is reported apart
        from pearzoo.patch.api import PatchOptions, patch_model
    import_s = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    before_kib = usage.ru_maxrss  # interpreter + imports, before the step
    cpu_before = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    if step == "copy":
        dst.mkdir()
        for f in sorted(src.iterdir()):
            shutil.copyfile(f, dst / f.name)
            with open(dst / f.name, "rb+") as fh:
                os.fsync(fh.fileno())
        extra = {}
    else:
        result = patch_model(PatchOptions(model=str(src), manifest=manifest, out=dst))
        extra = {"import_seconds": round(import_s, 2), "tensors_folded": len(result.tensors), "bytes_written": result.bytes_written}
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds (user + system, kernel copies included) vary less than wall time with a shared disk.
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    print(json.dumps({"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
                      "rss_before_step_mib": round(before_kib / 1024, 1), **extra}))


def run_child(step: str, src: Path, dst: Path, manifest: Path, options: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", step, str(src), str(dst), str(manifest), json.dumps(options or {})],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--layers", type=int, default=None, help="Override the number of layers.")
    ap.add_argument("--shard-size-mb", type=int, default=None, help="Max shard size (default: 1000 for 1b, 5000 for 7b).")
    ap.add_argument("--heads", type=int, default=30, help="Heads to fold, spread over the layers (the recipe's K).")
    ap.add_argument("--workdir", type=Path, default=Path(".scratch/bench-patch"))
    ap.add_argument("--rounds", type=int, default=5, help="Interleaved copy/patch rounds (median and spread are reported).")
    ap.add_argument("--schema", type=int, choices=(1, 2), default=2, help="Manifest schema: 2 hashes every byte, 1 only folded tensors.")
    ap.add_argument("--keep", action="store_true", help="Keep the checkpoint and the manifest.")
    ap.add_argument("--child", nargs=5, metavar=("STEP", "SRC", "DST", "MANIFEST", "OPTIONS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        step, src, dst, manifest, options = args.child
        child(step, Path(src), Path(dst), Path(manifest), json.loads(options))
        return

    config = dict(SHAPES[args.shape])
    if args.layers:
        config["num_hidden_layers"] = args.layers
    shard_mb = args.shard_size_mb or (1000 if args.shape == "1b" else 5000)
    work = args.workdir.resolve()
    if work.exists():
        shutil.rmtree(work)
    src, manifest = work / "model", work / "bench.pear.json"
    work.mkdir(parents=True)
    ckpt = run_child("prepare", src, work, manifest, {"config": config, "shard_bytes": shard_mb * 10**6, "heads": args.heads, "schema": args.schema})
    load_before = os.getloadavg()

    # Interleaved rounds, each step starting after os.sync() (no dirty pages of an earlier step being written
    # back under it); the best of each is compared. Outputs are deleted between rounds. The order alternates
    # (copy first in even rounds, patch first in odd ones), so neither step always follows the same one.
    rounds: dict[str, list[dict]] = {"copy": [], "patch": []}
    for r in range(args.rounds):
        for step in ("copy", "patch") if r % 2 == 0 else ("patch", "copy"):
            os.sync()
            rounds[step].append(run_child(step, src, work / step, manifest))
            shutil.rmtree(work / step)
    copy = min(rounds["copy"], key=lambda r: r["seconds"])
    patch = min(rounds["patch"], key=lambda r: r["seconds"])
    ratios = sorted(p["seconds"] / c["seconds"] for p, c in zip(rounds["patch"], rounds["copy"]))
    median = statistics.median

    shapes = dict(tensor_shapes(config))
    largest_tensor = max(2 * math.prod(s) for s in shapes.values())
    largest_shard = max(f.stat().st_size for f in src.glob("*.safetensors"))
    report = {
        "shape": args.shape,
        "config": config,
        "checkpoint": {"files": ckpt["files"], "gib": round(ckpt["bytes"] / 2**30, 3), "largest_shard_mib": round(largest_shard / 2**20, 1),
                       "largest_tensor_mib": round(largest_tensor / 2**20, 1), "o_proj_mib": round(2 * config["hidden_size"] ** 2 / 2**20, 1)},
        "manifest": ckpt["manifest"],
        "generate_seconds": ckpt["generate_seconds"],
        "copy": copy,
        "patch": patch,
        "seconds_per_round": {k: [r["seconds"] for r in v] for k, v in rounds.items()},
        "cpu_seconds_per_round": {k: [r["cpu_seconds"] for r in v] for k, v in rounds.items()},
        "schema": args.schema,
        "ratio_per_round": [round(r, 3) for r in ratios],
        "ratio_median": round(median(ratios), 3),
        "ratio_spread": [round(ratios[0], 3), round(ratios[-1], 3)],
        "ratio_of_medians": round(median(r["seconds"] for r in rounds["patch"]) / median(r["seconds"] for r in rounds["copy"]), 3),
        "ratio_of_fastest": round(patch["seconds"] / copy["seconds"], 3),
        "load_average_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())],
        "patch_gib_per_s": round(ckpt["bytes"] / 2**30 / patch["seconds"], 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
