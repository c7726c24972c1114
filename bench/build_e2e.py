"""Benchmark: `pearzoo build` end to end (local folder -> sealed manifest) on a random-weights model of a shape.

    python bench/build_e2e.py --shape llama-7b --device cuda --dtype bfloat16 --drop-caches
    python bench/build_e2e.py --shape llama-tiny --device cpu --dtype float32 --set train.steps=2   # smoke test

Writes the checkpoint (transformers' seeded init, safetensors, the zoo tokenizer for the perplexity budget) to a
temp dir, optionally drops the OS page cache so that loading reads the disk (`--drop-caches`, Linux, root; a
failure is recorded, not fatal), then runs the CLI, `python -m pearzoo build --model DIR --device ... --dtype
... --out M --quiet`, in a subprocess timed from start to exit (interpreter start, imports and CUDA init
included). The breakdown is the manifest's own `build.seconds` (load, locate, train, total; total minus the
three is the before/after copy metrics and sealing), and the manifest is read back (`read_manifest` checks its
digest). The recipe is the one the model resolves to (rope/llama for these shapes) with `--set` overrides.
Prints one JSON report (and writes it to `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from shapes import SHAPES, write_random_model  # noqa: E402  (bench/shapes.py)


def drop_caches() -> str:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped"
    except OSError as exc:
        return f"not dropped: {exc}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-7b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--set", action="append", default=[], help="Recipe override (repeatable), as `pearzoo build --set`.")
    ap.add_argument("--drop-caches", action="store_true", help="Drop the page cache before the build (cold load).")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from pearzoo.manifest.io import read_manifest

    work = Path(tempfile.mkdtemp(prefix="pearzoo-bench-e2e-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        model_dir = write_random_model(args.shape, work / args.shape, args.dtype, args.device)
        write_s = time.perf_counter() - t0
        weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
        cache = drop_caches() if args.drop_caches else "warm (just written)"
        target = work / "m.pear.json"
        cmd = [sys.executable, "-m", "pearzoo", "build", "--model", str(model_dir), "--device", args.device,
               "--dtype", args.dtype, "--out", str(target), "--quiet"]
        for s in args.set:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"pearzoo build failed ({proc.returncode}): {proc.stderr[-3000:]}")
        manifest = read_manifest(target)
        stages = dict(manifest.build.seconds)
        stages["metrics_and_seal"] = round(stages["total"] - sum(stages.get(k, 0.0) for k in ("load", "locate", "train")), 3)
        report = {
            "command": " ".join(sys.argv),
            "cli": " ".join(Path(c).name if c == sys.executable else c for c in cmd),
            "shape": args.shape,
            "parameters_bytes_on_disk": weights,
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "transformers": manifest.build.transformers,
            "python": platform.python_version(),
            "dtype": args.dtype,
            "recipe": manifest.recipe.id,
            "overrides": args.set,
            "page_cache": cache,
            "write_checkpoint_seconds": round(write_s, 1),
            "process_wall_seconds": round(wall, 2),
            "stages_seconds": stages,
            "within_60_s": {"process_wall": wall <= 60, "manifest_total": stages["total"] <= 60},
            "manifest_digest": manifest.digest,
            "heads": [f"{h.layer}.{h.head}" for h in manifest.heads],
            "coefficients": [round(h.coefficient, 4) for h in manifest.heads],
            "copy_before_after": [manifest.metrics.copy_before.accuracy, manifest.metrics.copy_after.accuracy],
            "perplexity_before_after": [manifest.metrics.perplexity_before, manifest.metrics.perplexity_after],
            "best_step": manifest.metrics.best_step,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    s = report["stages_seconds"]
    print(f"pearzoo build {args.shape} {args.dtype} on {report['device']}: process {wall:.1f} s; load {s.get('load', 0):.1f} + "
          f"locate {s.get('locate', 0):.1f} + train {s.get('train', 0):.1f} + metrics {s['metrics_and_seal']:.1f} = "
          f"{s['total']:.1f} s (page cache: {cache})", file=sys.stderr)


if __name__ == "__main__":
    main()
