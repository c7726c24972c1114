"""pearzoo/patch/resolve.py: model and manifest resolution, through a real (temporary) Hugging Face cache."""

from __future__ import annotations

import json
import shutil

import pytest

from pearzoo.errors import NotFoundError, OfflineError, UnsafeInputError, UnsupportedArchitectureError
from pearzoo.patch.api import PatchOptions, find_manifest, patch_model
from pearzoo.patch.resolve import TRANSFORMERS_TWINS, resolve_source, transformers_twin
from pearzoo.registry.local import LocalRegistry
from tiny_checkpoints import hub_cache_layout, make_manifest, write_json

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_meta_original_ids_map_to_their_transformers_twins():
    assert transformers_twin("meta-llama/Llama-2-7b") == "meta-llama/Llama-2-7b-hf"
    assert transformers_twin("META-LLAMA/llama-2-13b-chat") == "meta-llama/Llama-2-13b-chat-hf"
    assert transformers_twin("meta-llama/Llama-2-7b-hf") is None
    assert all(key == key.lower() and twin.endswith("-hf") for key, twin in TRANSFORMERS_TWINS.items())


def test_a_twin_is_patched_from_the_hub_cache_and_said(hub_cache, tiny_dir, tmp_path):
    hub_cache_layout(hub_cache, "meta-llama/Llama-2-7b-hf", tiny_dir, COMMIT)
    registry = tmp_path / "reg"
    doc = make_manifest(tiny_dir, model_id="meta-llama/Llama-2-7b-hf", revision=COMMIT)
    LocalRegistry(registry).publish(write_json(doc, tmp_path / "m.json"))
    notes: list[str] = []
    result = patch_model(
        PatchOptions(model="meta-llama/Llama-2-7b", registry=str(registry), out=tmp_path / "out", dry_run=True),
        notify=notes.append,
    )
    assert notes == ["meta-llama/Llama-2-7b is in Meta's original format; using its transformers twin meta-llama/Llama-2-7b-hf"]
    assert (result.model_id, result.requested, result.source, result.revision) == (
        "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b", "hub", COMMIT,
    )  # fmt: skip
    assert result.manifest == doc["digest"]


def test_the_manifest_for_the_resolved_commit_beats_a_newer_one(hub_cache, tiny_dir, tmp_path):
    hub_cache_layout(hub_cache, "org/tiny", tiny_dir, COMMIT)
    registry = tmp_path / "reg"
    ours = make_manifest(tiny_dir, {(0, 1): 0.5}, model_id="org/tiny", revision=COMMIT)
    newer = make_manifest(tiny_dir, {(0, 1): 0.6}, model_id="org/tiny", revision="f" * 40)
    for i, doc in enumerate((ours, newer)):
        LocalRegistry(registry).publish(write_json(doc, tmp_path / f"m{i}.json"))
    assert find_manifest("org/tiny", registry=str(registry)).digest == ours["digest"]
    # Another commit of the same repo has no manifest of its own: the newest wins.
    hub_cache_layout(hub_cache, "org/tiny", tiny_dir, "e" * 40, refs=False)
    assert find_manifest("org/tiny", revision="e" * 40, registry=str(registry)).digest == newer["digest"]
    # A local directory's name is not a registry id here.
    assert find_manifest(str(tiny_dir), registry=str(registry)) is None


def test_no_manifest_names_the_recipe_that_would_build_one(tiny_dir, tmp_path):
    registry = tmp_path / "reg"  # an empty registry: index.json with no entries
    registry.mkdir()
    (registry / "index.json").write_text('{"schema_version": 1, "entries": []}')
    with pytest.raises(NotFoundError) as info:
        patch_model(PatchOptions(model=str(tiny_dir), registry=str(registry), out=tmp_path / "out"))
    assert str(info.value) == (
        f"no manifest for 'tiny-llama' in registry {registry}; recipe rope/llama 1.0.0 covers its architecture (llama)"
    )
    assert info.value.hint.startswith("pass --build to build one with rope/llama")
    assert info.value.exit_code == 4


def test_no_manifest_and_no_recipe_says_both(tiny_dir, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "mystery"}))
    (tmp_path / "reg").mkdir()
    (tmp_path / "reg" / "index.json").write_text('{"schema_version": 1, "entries": []}')
    with pytest.raises(UnsupportedArchitectureError, match="no manifest for 'odd' in registry .*, and no recipe covers model_type 'mystery'"):
        patch_model(PatchOptions(model=str(odd), registry=str(tmp_path / "reg"), out=tmp_path / "out"))


def test_offline_and_uncached_is_one_line(tmp_path):
    with pytest.raises(OfflineError, match="^model 'org/not-cached' is not in the Hugging Face cache and the Hub cannot be reached$") as info:
        patch_model(PatchOptions(model="org/not-cached", out=tmp_path / "out"))
    assert info.value.exit_code == 6


@pytest.mark.parametrize("bad", ["org/../../etc", "org/..", "a/b/../c"])
def test_ids_with_dotdot_are_rejected_before_touching_a_path(bad):
    with pytest.raises(UnsafeInputError, match="is not allowed"):
        resolve_source(bad)
