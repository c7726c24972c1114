"""kill -9 at random points of `pearzoo patch`: afterwards the output is absent or complete and valid.

The patch runs in its own process (`python -m pearzoo patch` through a small wrapper) with every step that
changes the filesystem counted: each write of shard bytes, fsync, mkdir, file write, copy, rename, the atomic
exchange and rmtree. A calibration run counts the steps of a whole patch; then each run picks a step at
random (seeded) and the process SIGKILLs itself just before it, so the kills land on every phase (temp
folder creation, mid-shard, between shards, plain files, the manifest copy, the final rename) rather than
mostly in the imports, as a kill after a random delay would.

After each kill: `--out` is absent or byte-identical to a reference patch (never partial), the source is
unchanged, and the next patch into the same folder reclaims the dead run's temp folder (its lock is free)
and succeeds. With `--force` over an earlier complete output, `--out` holds the earlier or the new output,
complete, at every kill point (never absent: the replacement is an atomic exchange).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pearzoo.patch.api import PatchOptions, patch_model
from pearzoo.patch.write import TEMP_PREFIX
from tiny_checkpoints import make_manifest, save_tiny_llama, tree_state, write_json

KILLS = int(os.environ.get("PEARZOO_CRASH_KILLS", "4"))

WRAPPER = r"""
import os, pathlib, shutil, signal, sys
kill_at, count_file = int(sys.argv[1]), pathlib.Path(sys.argv[2])
events = 0
def step(fn):
    def wrapped(*args, **kwargs):
        global events
        events += 1
        if events == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapped
import pearzoo.patch.write as write, pearzoo.patch.target as target
write._write_all = step(write._write_all)
target._exchange = step(target._exchange)
os.fsync, os.rename, os.mkdir = step(os.fsync), step(os.rename), step(os.mkdir)
shutil.copyfile, shutil.rmtree = step(shutil.copyfile), step(shutil.rmtree)
pathlib.Path.write_text = step(pathlib.Path.write_text)
from pearzoo.cli import main
try:
    main(sys.argv[3:])
finally:
    count_file.write_text(str(events))
"""


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _run(kill_at: int, count: Path, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, str(kill_at), str(count), *argv], capture_output=True, text=True, timeout=300, env=os.environ
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("crash") / "tiny-llama", max_shard_size="60KB")


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def test_a_patch_killed_at_random_steps_leaves_no_output_or_a_complete_one(model, tmp_path):
    manifest = write_json(make_manifest(model), tmp_path / "m.json")
    reference = tmp_path / "reference"
    patch_model(PatchOptions(model=str(model), manifest=manifest, out=reference))
    expected = _files(reference)
    source = tree_state(model)
    work, count = tmp_path / "work", tmp_path / "count"
    work.mkdir()
    out = work / "out"
    argv = ["patch", str(model), "--manifest", str(manifest), "--out", str(out)]
    calibration = _run(0, count, argv)
    assert calibration.returncode == 0, calibration.stderr
    total = int(count.read_text())
    assert total > 20 and _files(out) == expected  # the counted steps span the whole write
    (out / "config.json").unlink()  # not a pearzoo output any more: make room the plain way
    for p in out.iterdir():
        p.unlink()
    out.rmdir()
    seen = []
    for kill_at in sorted(random.Random(0).sample(range(1, total + 1), KILLS)):
        proc = _run(kill_at, count, argv)
        assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stderr)
        complete = out.exists()
        seen.append((kill_at, complete))
        if complete:
            assert _files(out) == expected, kill_at
        assert tree_state(model) == source
        # The next run reclaims what the dead one left (its lock is free) and writes a complete output.
        patch_model(PatchOptions(model=str(model), manifest=manifest, out=out, force=complete))
        assert _files(out) == expected and _temps(work) == []
        for p in out.iterdir():
            p.unlink()
        out.rmdir()
    assert len(seen) == KILLS


def test_a_forced_replacement_killed_at_random_steps_keeps_the_old_or_the_new_output_whole(model, tmp_path):
    old_manifest = write_json(make_manifest(model, {(0, 1): 0.5}), tmp_path / "old.json")
    new_manifest = write_json(make_manifest(model), tmp_path / "new.json")
    refs = {}
    for name, m in (("old", old_manifest), ("new", new_manifest)):
        patch_model(PatchOptions(model=str(model), manifest=m, out=tmp_path / name))
        refs[name] = _files(tmp_path / name)
    work, count = tmp_path / "work", tmp_path / "count"
    work.mkdir()
    out = work / "out"
    argv = ["patch", str(model), "--manifest", str(new_manifest), "--out", str(out), "--force"]

    def reset() -> None:
        if out.exists():
            patch_model(PatchOptions(model=str(model), manifest=old_manifest, out=out, force=True))
        else:
            patch_model(PatchOptions(model=str(model), manifest=old_manifest, out=out))
        assert _files(out) == refs["old"] and _temps(work) == []

    reset()
    calibration = _run(0, count, argv)
    assert calibration.returncode == 0, calibration.stderr
    total = int(count.read_text())
    assert _files(out) == refs["new"]
    # The last steps are the exchange and the removal of the old output: always among the kill points.
    points = sorted({total - 1, total, *random.Random(1).sample(range(1, total + 1), max(0, KILLS - 2))})
    outcomes = []
    for kill_at in points:
        reset()
        proc = _run(kill_at, count, argv)
        assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stderr)
        assert out.is_dir(), kill_at  # never absent
        now = _files(out)
        assert now in (refs["old"], refs["new"]), kill_at
        outcomes.append("new" if now == refs["new"] else "old")
        json.loads((out / "config.json").read_text())
    assert outcomes[-1] == "new"  # killed while removing the old output: the new one is in place
