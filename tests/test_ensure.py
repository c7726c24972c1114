"""pearzoo/ensure.py: patch with the registry's manifest, or build one first when none fits (`patch --build`)."""

from __future__ import annotations

import shutil

from cli_run import FAST_BUILD
from pearzoo.ensure import ensure_manifest, patch_or_build
from pearzoo.manifest.io import read_manifest
from pearzoo.patch.api import PatchOptions
from pearzoo.registry.local import LocalRegistry
from tiny_checkpoints import make_manifest, write_json

OVERRIDES = FAST_BUILD[1::2]


def test_a_fitting_registry_manifest_is_used_and_nothing_is_built(tiny_dir, tmp_path):
    local = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_dir, local)
    registry = tmp_path / "reg"
    doc = make_manifest(local, model_id="tiny")
    LocalRegistry(registry).publish(write_json(doc, tmp_path / "m.json"))
    notes: list[str] = []
    options = PatchOptions(model=str(local), registry=str(registry), out=tmp_path / "o")
    assert ensure_manifest(options, overrides=OVERRIDES, inform=notes.append) is None
    result = patch_or_build(options, overrides=OVERRIDES, inform=notes.append)
    assert (result.manifest, notes) == (doc["digest"], [])


def test_no_fitting_manifest_builds_one_with_the_overrides_then_patches(tiny_dir, tmp_path):
    registry = tmp_path / "reg"
    registry.mkdir()
    (registry / "index.json").write_text('{"schema_version": 1, "entries": []}')
    notes: list[str] = []
    out = tmp_path / "o"
    result = patch_or_build(PatchOptions(model=str(tiny_dir), registry=str(registry), out=out), overrides=OVERRIDES, inform=notes.append)
    built = read_manifest(out / "pearzoo.manifest.json")
    assert result.manifest == built.digest and built.recipe.overrides == OVERRIDES and len(built.heads) == 2
    assert notes == [
        f"no manifest in the registry fits {tiny_dir}: building one",
        f"built manifest {built.digest} (rope/llama 1.0.0, 2 heads)",
    ]
