"""Patch through huggingface_hub's real cache with HF_HUB_OFFLINE=1, and a patch process killed mid-write."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from pearzoo.patch.api import PatchOptions, patch_model
from pearzoo.patch.target import clean_stale_temps
from pearzoo.patch.write import TEMP_PREFIX
from pearzoo.registry.local import LocalRegistry
from tiny_checkpoints import hub_cache_layout, make_manifest, tree_state, write_json

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"

# Runs `pearzoo ARGS...` with shard writing slowed down: after the first shard it touches FLAG and sleeps,
# so the test can kill the process while the output is half written.
SLOW_SHARDS = """
import pathlib, sys, time
import pearzoo.patch.write as write
flag, real = pathlib.Path(sys.argv[1]), write.write_shard
def slow(*args, **kwargs):
    n = real(*args, **kwargs)
    flag.touch()
    time.sleep(120)
    return n
write.write_shard = slow
from pearzoo.cli import main
main(sys.argv[2:])
"""


def test_patch_by_repo_id_from_the_hub_cache_leaves_the_cache_untouched(sharded_dir, hub_cache, tmp_path):
    # In-process: the root conftest set HF_HUB_OFFLINE=1 and HF_HUB_CACHE, and patched the huggingface_hub constants
    # that it reads from them at import. snapshot_download itself is real.
    import huggingface_hub.constants as hf_constants

    cache = hub_cache
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hf_constants.HF_HUB_OFFLINE
    snapshot = hub_cache_layout(cache, "pearzoo-test/tiny-llama", sharded_dir, COMMIT)
    registry = tmp_path / "reg"
    doc = make_manifest(snapshot, model_id="pearzoo-test/tiny-llama", revision=COMMIT)
    LocalRegistry(registry).publish(write_json(doc, tmp_path / "m.json"))
    before = tree_state(cache)
    out = tmp_path / "out"
    result = patch_model(PatchOptions(model="pearzoo-test/tiny-llama", registry=str(registry), out=out))
    assert (result.source, result.revision, result.manifest) == ("hub", COMMIT, doc["digest"])
    assert tree_state(cache) == before  # same bytes, same mtimes, same symlinks: the cache was only read
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([*(p.name for p in snapshot.iterdir()), "README.md", "pearzoo.manifest.json"])
    assert not any(p.is_symlink() for p in out.iterdir())  # copies, not links into the cache's blobs
    blobs = {p.stat().st_ino for p in (cache / "models--pearzoo-test--tiny-llama" / "blobs").iterdir()}
    assert not blobs & {p.stat().st_ino for p in out.iterdir()}  # and not hard links either


def test_a_patch_killed_mid_write_leaves_no_output(sharded_dir, tmp_path):
    manifest = write_json(make_manifest(sharded_dir), tmp_path / "m.json")
    out, flag = tmp_path / "out", tmp_path / "first-shard-written"
    args = ["patch", str(sharded_dir), "--manifest", str(manifest), "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SHARDS, str(flag), *args], env=os.environ)
    try:
        deadline = time.monotonic() + 90
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), f"the patch never wrote a shard (exit {proc.poll()})"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    [temp, lock] = sorted(p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX))
    token = lock.name.removeprefix(TEMP_PREFIX).removesuffix(".lock")
    assert re.fullmatch("[0-9a-f]{12}", token) and temp.name == f"{TEMP_PREFIX}{token}-out"
    assert len(list(temp.glob("*.safetensors"))) == 1
    # The next patch into the same directory takes the dead run's free lock, removes its temp dir, then succeeds.
    patch_model(PatchOptions(model=str(sharded_dir), manifest=manifest, out=out))
    assert not temp.exists() and not lock.exists() and (out / "model.safetensors.index.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)] == []


def test_a_live_runs_temp_folder_is_kept_whatever_its_pid(tiny_dir, tmp_path):
    # A run in another PID namespace or on another host sharing the folder: its PID means nothing here, its lock
    # does. Held here by another lock object on the same file (a separate open file description, as another
    # process would have), with a PID that does not exist.
    from filelock import FileLock

    manifest = write_json(make_manifest(tiny_dir), tmp_path / "m.json")
    token = "0123456789ab"
    lock_path, temp = tmp_path / f"{TEMP_PREFIX}{token}.lock", tmp_path / f"{TEMP_PREFIX}{token}-other"
    held = FileLock(lock_path, timeout=0)
    held.acquire()
    try:
        temp.mkdir()
        (temp / "model.safetensors").write_bytes(b"half written")
        patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest, out=tmp_path / "out"))
        assert (temp / "model.safetensors").read_bytes() == b"half written"  # alive: kept
    finally:
        held.release()
    assert clean_stale_temps(tmp_path) == [temp] and not temp.exists()  # released: the next run reclaims it


def test_a_schema_1_registry_manifest_still_patches_its_zoo_model_with_a_warning(tmp_path):
    # Manifests built before base.files (schema 1; the shipped SmolLM2 one is) keep working, and say what they bind.
    # The zoo's llama-rope manifest, written back as schema 1 (no base.files, re-sealed), published to a registry.
    import json
    from pathlib import Path

    from pearzoo.manifest.io import seal
    from pearzoo.registry import builtin_registry_dir

    zoo = Path(__file__).resolve().parents[2] / "zoo" / "models" / "llama-rope"
    shipped = LocalRegistry(builtin_registry_dir())
    [entry] = shipped.versions("llama-rope")
    document = shipped.read_manifest(entry).model_dump(mode="json", exclude_none=True)
    document["schema_version"] = 1
    del document["base"]["files"]
    (tmp_path / "v1.json").write_text(json.dumps(seal(document)))
    registry = LocalRegistry(tmp_path / "registry")
    registry.publish(tmp_path / "v1.json")
    [entry] = registry.versions("llama-rope")
    manifest = registry.read_manifest(entry)
    assert manifest.schema_version == 1 and manifest.base.files is None
    notes: list[str] = []
    result = patch_model(PatchOptions(model=str(zoo), out=tmp_path / "out", registry=str(tmp_path / "registry")),
                         notify=notes.append)
    assert result.manifest == manifest.digest and len(result.tensors) == len({h.layer for h in manifest.heads})
    assert notes == [
        f"manifest {manifest.digest[:12]} is schema_version 1: it binds the base only where it folds "
        f"({len(manifest.base.tensors)} tensors); the other weights are copied unchecked"
    ]


def test_write_shard_never_copies_a_bound_file_unhashed(tiny_dir, tmp_path):
    # Called directly, without the pool write_patched passes, a shard with a digest in the plan is still hashed.
    import pytest

    from pearzoo.errors import IntegrityError
    from pearzoo.manifest.io import seal
    from pearzoo.manifest.schema import Manifest
    from pearzoo.patch.plan import plan_folds, read_config
    from pearzoo.patch.write import write_shard

    doc = make_manifest(tiny_dir)
    doc["base"]["files"] = {"model.safetensors": "0" * 64}
    manifest = Manifest.model_validate(seal(doc))
    plan = plan_folds(tiny_dir, read_config(tiny_dir), manifest)
    assert plan.file_digests == {"model.safetensors": "0" * 64}
    with pytest.raises(IntegrityError, match="is not the manifest's base: weight file model.safetensors differs"):
        write_shard(tiny_dir / "model.safetensors", tmp_path / "x.safetensors", plan.folds["model.safetensors"], plan, {})
