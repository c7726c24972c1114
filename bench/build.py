"""Benchmark: each stage of `pearzoo build`, this tree against a baseline pearzoo, interleaved in one run.

    git worktree add --detach /tmp/pearzoo-base ce51e0a     # before the exact-arithmetic speed-ups
    git worktree add --detach /tmp/pearzoo-6809 6809f57     # before train.precision (SmolLM2 recipe 1.1.0)
    python bench/build.py --base /tmp/pearzoo-base --steps 10 --rounds 2
    python bench/build.py --base /tmp/pearzoo-6809 --model smollm2 --steps 5 --rounds 2 --heads-from MANIFEST
    python bench/build.py --base /tmp/pearzoo-base --model zoo --rounds 3

Each tree builds with its own recipes, so against 6809f57 SmolLM2 compares recipe 1.1.0 (float32) with 1.2.0
(`train.precision: bfloat16`): `same_heads` and `max_coefficient_diff` then say how far the cheaper arithmetic
moved the result.

Each round builds every model once with the baseline and once with this tree (order alternating), each build in
its own Python process whose PYTHONPATH points at that tree, so both are timed under the same load. A worker runs
`build_manifest` with timers around the functions `pearzoo.train` calls (the same names in both trees): forward
(`copy_loss`, `text_loss`), backward (`Tensor.backward` and the optimizer step), validation (`copy_score`) and
perplexity (`perplexity`); `metrics` is the rest of the build after training (the manifest's held-out copy
scores). Every stage gets wall and CPU seconds: on a machine shared with other jobs the wall time grows with
the load, while the CPU time of a one-thread run (`--threads 1`, the default) is close to what the build costs
on a core of its own. The report (printed and written to `--out`) gives per-stage medians, ratios base/new and
the 1-minute load average around every build, and checks that both trees chose the same heads and coefficients.

`--heads-from MANIFEST` skips locate and the held-out metrics: load, then train that manifest's heads (the
train stages alone, for a quick comparison). `--steps N` shortens training (`--set train.steps=N`) to keep a baseline SmolLM2 build in minutes; the per-step
and per-check costs (`per_unit`) carry over to the recipe's 60 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "smollm2": {"model": "smollm2-135m-instruct", "recipe": None},
    "zoo": {"model": str(ROOT / "zoo" / "models" / "llama-rope"), "recipe": "rope/zoo-llama-rope"},
}
STAGES = ("load", "locate", "train", "forward", "backward", "validation", "perplexity", "metrics", "total")


def _load() -> float:
    return os.getloadavg()[0]


# --- worker: one build in this process, with the tree under test first on sys.path ---------------------------


class _Timer:
    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.depth = 0

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            # Nested timed calls (text_loss inside a timed forward) count once, in the outer stage.
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - wall
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - cpu
                self.calls[stage] = self.calls.get(stage, 0) + 1

        return timed


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import pearzoo.build as build
    import pearzoo.train as train

    timer = _Timer()
    train.copy_loss = timer.wrap("forward", train.copy_loss)
    train.text_loss = timer.wrap("forward", train.text_loss)
    train.copy_score = timer.wrap("validation", train.copy_score)
    train.perplexity = timer.wrap("perplexity", train.perplexity)
    torch.Tensor.backward = timer.wrap("backward", torch.Tensor.backward)
    torch.optim.AdamW.step = timer.wrap("backward", torch.optim.AdamW.step)
    stamps: dict[str, tuple[float, float]] = {}
    for name in ("prepare", "run_locate", "run_train"):
        original = getattr(build, name)

        def stamped(*a, _name=name, _fn=original, **k):
            out = _fn(*a, **k)
            stamps[_name] = (time.perf_counter(), time.process_time())
            return out

        setattr(build, name, stamped)
    overrides = [f"train.steps={args.steps}"] if args.steps is not None else []
    options = build.BuildOptions(model=args.model, recipe=args.recipe, overrides=overrides)
    if args.heads_from:
        train_only(args, build, options, timer, stamps)
        return
    wall0, cpu0 = time.perf_counter(), time.process_time()
    manifest = build.build_manifest(options)
    wall1, cpu1 = time.perf_counter(), time.process_time()
    marks = [("load", "prepare"), ("locate", "run_locate"), ("train", "run_train")]
    wall, cpu = {}, {}
    prev = (wall0, cpu0)
    for stage, name in marks:
        wall[stage] = stamps[name][0] - prev[0]
        cpu[stage] = stamps[name][1] - prev[1]
        prev = stamps[name]
    wall["metrics"], cpu["metrics"] = wall1 - prev[0], cpu1 - prev[1]
    wall["total"], cpu["total"] = wall1 - wall0, cpu1 - cpu0
    for stage in ("forward", "backward", "validation", "perplexity"):
        wall[stage] = timer.wall.get(stage, 0.0)
        cpu[stage] = timer.cpu.get(stage, 0.0)
    json.dump(
        {
            "wall": wall,
            "cpu": cpu,
            "calls": timer.calls,
            "threads": torch.get_num_threads(),
            "steps": manifest.metrics.steps,
            "validations": len(manifest.metrics.history),
            "heads": [[h.layer, h.head] for h in manifest.heads],
            "coefficients": [h.coefficient for h in manifest.heads],
            "scores": [h.score for h in manifest.heads],
            "metrics": manifest.metrics.model_dump(mode="json", exclude={"history"}),
            "history": [p.model_dump(mode="json") for p in manifest.metrics.history],
        },
        sys.stdout,
    )


def train_only(args, build, options, timer, stamps) -> None:
    """Load, then train the heads a manifest lists (no locate, no held-out metrics): the train stages alone."""
    from pearzoo.heads import HeadId

    doc = json.loads(Path(args.heads_from).read_text())
    heads = [HeadId(h["layer"], h["head"]) for h in doc["heads"]]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    ctx = build.prepare(options)
    result = build.run_train(ctx, heads)
    wall1, cpu1 = time.perf_counter(), time.process_time()
    wall = {"load": stamps["prepare"][0] - wall0, "locate": 0.0, "train": wall1 - stamps["prepare"][0], "metrics": 0.0}
    cpu = {"load": stamps["prepare"][1] - cpu0, "locate": 0.0, "train": cpu1 - stamps["prepare"][1], "metrics": 0.0}
    wall["total"], cpu["total"] = wall1 - wall0, cpu1 - cpu0
    for stage in ("forward", "backward", "validation", "perplexity"):
        wall[stage] = timer.wall.get(stage, 0.0)
        cpu[stage] = timer.cpu.get(stage, 0.0)
    json.dump(
        {
            "wall": wall,
            "cpu": cpu,
            "calls": timer.calls,
            "threads": __import__("torch").get_num_threads(),
            "steps": ctx.recipe.train.steps,
            "validations": len(result.history),
            "heads": [[h.layer, h.head] for h in result.heads],
            "coefficients": list(result.coefficients),
            "scores": [],
            "metrics": {"base_perplexity": result.base_perplexity, "best_step": result.best_step},
            "history": [
                {"step": p.step, "loss": p.loss, "accuracy": p.accuracy, "perplexity": p.perplexity, "within_budget": p.within_budget}
                for p in result.history
            ],
        },
        sys.stdout,
    )


# --- driver -------------------------------------------------------------------------------------------------


def run_one(tree: Path, model: dict, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(args.threads), "--model", model["model"]]
    if model["recipe"]:
        cmd += ["--recipe", model["recipe"]]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    if args.heads_from:
        cmd += ["--heads-from", str(args.heads_from.resolve())]
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(args.threads), TQDM_DISABLE="1")
    before = _load()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=str(tree), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({tree}): {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - start
    out["load_before"], out["load_after"] = before, _load()
    return out


def _per_unit(run: dict, key: str) -> dict[str, float]:
    steps, checks = run["steps"], run["validations"]
    return {
        "forward_per_step": run[key]["forward"] / steps if steps else 0.0,
        "backward_per_step": run[key]["backward"] / steps if steps else 0.0,
        "validation_per_check": run[key]["validation"] / checks,
        # The base perplexity plus one check per validation after step 0.
        "perplexity_per_check": run[key]["perplexity"] / checks,
    }


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for key in ("wall", "cpu"):
        out[key] = {}
        for stage in STAGES:
            base = statistics.median(r["base"][key][stage] for r in runs)
            new = statistics.median(r["new"][key][stage] for r in runs)
            out[key][stage] = {"base": round(base, 2), "new": round(new, 2), "ratio": round(base / new, 2) if new else None}
        units = {}
        for unit in _per_unit(runs[0]["base"], key):
            base = statistics.median(_per_unit(r["base"], key)[unit] for r in runs)
            new = statistics.median(_per_unit(r["new"], key)[unit] for r in runs)
            units[unit] = {"base": round(base, 3), "new": round(new, 3), "ratio": round(base / new, 2) if new else None}
        out[key + "_per_unit"] = units
    b, n = runs[0]["base"], runs[0]["new"]
    out["same_heads"] = b["heads"] == n["heads"]
    out["max_coefficient_diff"] = max(abs(x - y) for x, y in zip(b["coefficients"], n["coefficients"])) if out["same_heads"] else None
    out["same_history"] = b["history"] == n["history"]
    out["same_metrics"] = b["metrics"] == n["metrics"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help="worker: model reference; driver: smollm2, zoo or both (default)")
    ap.add_argument("--recipe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, default=Path("/tmp/pearzoo-base"), help="baseline pearzoo tree (a git worktree)")
    ap.add_argument("--steps", type=int, default=None, help="train.steps override (default: the recipe's)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each build (default 1)")
    ap.add_argument("--heads-from", type=Path, default=None, help="train the heads of this manifest: load and train only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not (args.base / "pearzoo" / "__init__.py").is_file():
        raise SystemExit(f"--base {args.base}: not a pearzoo tree (git worktree add --detach {args.base} ce51e0a)")
    names = ["smollm2", "zoo"] if args.model in (None, "both") else [args.model]
    base_commit = subprocess.run(["git", "-C", str(args.base), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    new_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "pearzoo"], capture_output=True, text=True).stdout.strip())
    report: dict = {
        "command": " ".join([Path(sys.executable).name, "bench/build.py", *sys.argv[1:]]),
        "base": {"tree": str(args.base), "commit": base_commit},
        "new": {"tree": str(ROOT), "commit": new_commit, "uncommitted_changes": dirty},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "threads": args.threads,
        "steps": args.steps,
        "heads_from": str(args.heads_from) if args.heads_from else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_start": list(os.getloadavg()),
        "models": {},
    }
    for name in names:
        runs = []
        for r in range(args.rounds):
            order = ("base", "new") if r % 2 == 0 else ("new", "base")
            pair = {}
            for side in order:
                tree = args.base if side == "base" else ROOT
                pair[side] = run_one(tree, MODELS[name], args)
                print(f"{name} round {r} {side}: {pair[side]['wall']['total']:.1f} s wall, {pair[side]['cpu']['total']:.1f} s cpu, "
                      f"load {pair[side]['load_before']:.1f}->{pair[side]['load_after']:.1f}", file=sys.stderr, flush=True)
            runs.append(pair)
        report["models"][name] = {"model": MODELS[name], "summary": summarize(runs), "runs": runs}
    report["load_end"] = list(os.getloadavg())
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(report, indent=1)
    print(json.dumps({n: m["summary"] for n, m in report["models"].items()}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
