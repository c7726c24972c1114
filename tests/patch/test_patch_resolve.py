"""pearzoo/patch/resolve.py: model and manifest resolution, through a real (temporary) Hugging Face cache.

Which form of weights a manifest fits is tested with manifests that record a GGUF base (`base.format`,
`base.file`, `base.origin`) over the tiny checkpoint's own digests: a GGUF fixture would need a converter,
and the selection reads only `base`, so a GGUF source is a `ModelSource` naming a file that is not read."""

from __future__ import annotations

import json
import shutil

import pytest

from pearzoo.errors import NotFoundError, OfflineError, UnsafeInputError, UnsupportedArchitectureError
from pearzoo.manifest.schema import Manifest
from pearzoo.patch.api import PatchOptions, find_manifest, patch_model
from pearzoo.patch.resolve import TRANSFORMERS_TWINS, fits, registry_manifest, resolve_source, transformers_twin
from pearzoo.registry.local import LocalRegistry
from pearzoo.source import ModelSource
from tiny_checkpoints import hub_cache_layout, make_manifest, write_json

COMMIT = "0123456789abcdef0123456789abcdef01234567"
GGUF = "tiny-llama.Q4_1.gguf"
ORIGIN = "pypi:tiny-llama-gguf==0.1.0"


def publish_all(registry, docs, tmp_path):
    """Publish manifest documents in order (the last is the newest)."""
    for i, doc in enumerate(docs):
        LocalRegistry(registry).publish(write_json(doc, tmp_path / f"m{i}.json"))


def gguf_source(tiny_dir, model_id="org/tiny", gguf_file=GGUF):
    """A built-in-style GGUF source (the file is never read by manifest selection)."""
    return ModelSource(kind="builtin", path=tiny_dir, model_id=model_id, gguf_file=gguf_file, origin=ORIGIN)


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


def test_a_hub_source_skips_a_manifest_built_from_a_gguf(hub_cache, tiny_dir, tmp_path):
    hub_cache_layout(hub_cache, "org/tiny", tiny_dir, COMMIT)
    registry = tmp_path / "reg"
    # Same digests as the cached weights: only the recorded form keeps the Hub source from taking it.
    doc = make_manifest(tiny_dir, model_id="org/tiny", revision=COMMIT, base_format="gguf", file=GGUF, origin=ORIGIN)
    publish_all(registry, [doc], tmp_path)
    assert find_manifest("org/tiny", registry=str(registry)) is None
    with pytest.raises(NotFoundError) as info:
        patch_model(PatchOptions(model="org/tiny", registry=str(registry), out=tmp_path / "out"))
    assert str(info.value) == (
        f"no manifest for 'org/tiny' in registry {registry} fits its safetensors weights: the registry's 1 manifest "
        f"for it was built from the GGUF {GGUF} ({ORIGIN}); recipe rope/llama 1.0.0 covers its architecture (llama)"
    )
    assert info.value.hint.startswith("pass --build to build one with rope/llama")
    assert info.value.exit_code == 4 and not (tmp_path / "out").exists()
    # Pinned, the same manifest is not filtered by form: the digests decide (here they match).
    pinned = patch_model(PatchOptions(model="org/tiny", manifest=tmp_path / "m0.json", out=tmp_path / "out", dry_run=True))
    assert pinned.manifest == doc["digest"]


def test_no_fitting_manifest_counts_every_form_the_registry_has(hub_cache, tiny_dir, tmp_path):
    hub_cache_layout(hub_cache, "org/tiny", tiny_dir, COMMIT)
    registry = tmp_path / "reg"
    docs = [
        make_manifest(tiny_dir, {(0, 1): 0.5}, model_id="org/tiny", base_format="gguf", file=GGUF, origin=ORIGIN),
        make_manifest(tiny_dir, {(0, 1): 0.6}, model_id="org/tiny", base_format="gguf", file="tiny-llama.Q8_0.gguf"),
        make_manifest(tiny_dir, {(0, 1): 0.7}, model_id="org/tiny", base_format="gguf", file=GGUF, origin=ORIGIN),
    ]
    publish_all(registry, docs, tmp_path)
    with pytest.raises(NotFoundError, match=(
        rf"^no manifest for 'org/tiny' in registry .* fits its safetensors weights: the registry's 3 manifests for it "
        rf"were built from the GGUF tiny-llama\.Q4_1\.gguf \({ORIGIN}\) and the GGUF tiny-llama\.Q8_0\.gguf; "
        rf"recipe rope/llama 1\.0\.0 covers its architecture \(llama\)$"
    )):  # fmt: skip
        patch_model(PatchOptions(model="org/tiny", registry=str(registry), out=tmp_path / "out"))


def test_a_registry_with_both_forms_gives_each_source_its_own(hub_cache, tiny_dir, tmp_path):
    hub_cache_layout(hub_cache, "org/tiny", tiny_dir, COMMIT)
    registry = tmp_path / "reg"
    hub_ours = make_manifest(tiny_dir, {(0, 1): 0.5}, model_id="org/tiny", revision=COMMIT)
    gguf_q4 = make_manifest(tiny_dir, {(0, 1): 0.6}, model_id="org/tiny", revision=COMMIT, base_format="gguf", file=GGUF, origin=ORIGIN)
    hub_newer = make_manifest(tiny_dir, {(0, 1): 0.7}, model_id="org/tiny", revision="f" * 40)
    gguf_q8 = make_manifest(tiny_dir, {(0, 1): 0.8}, model_id="org/tiny", base_format="gguf", file="tiny-llama.Q8_0.gguf")
    publish_all(registry, [hub_ours, gguf_q4, hub_newer, gguf_q8], tmp_path)

    # The Hub source: the safetensors manifest for its commit, past a newer GGUF one for the same commit.
    result = patch_model(PatchOptions(model="org/tiny", registry=str(registry), out=tmp_path / "out", dry_run=True))
    assert result.manifest == hub_ours["digest"]
    # Another commit: the newest safetensors manifest, not the newest entry (a GGUF one).
    hub_cache_layout(hub_cache, "org/tiny", tiny_dir, "e" * 40, refs=False)
    assert find_manifest("org/tiny", revision="e" * 40, registry=str(registry)).digest == hub_newer["digest"]
    # GGUF sources: the manifest of their own file, past newer ones of the other form or another file.
    assert registry_manifest(gguf_source(tiny_dir), str(registry)).digest == gguf_q4["digest"]
    assert registry_manifest(gguf_source(tiny_dir, gguf_file="tiny-llama.Q8_0.gguf"), str(registry)).digest == gguf_q8["digest"]
    assert registry_manifest(gguf_source(tiny_dir, gguf_file="tiny-llama.F16.gguf"), str(registry)) is None


def test_fits_compares_the_form_and_the_gguf_file(tiny_dir):
    hub = ModelSource(kind="hub", path=tiny_dir, model_id="org/tiny", revision=COMMIT)
    directory = ModelSource(kind="directory", path=tiny_dir, model_id="tiny-llama")
    gguf_file = ModelSource(kind="gguf", path=tiny_dir, model_id="tiny-llama.Q4_1", gguf_file=GGUF)

    def base(**kw):
        return Manifest.model_validate(make_manifest(tiny_dir, model_id="org/tiny", **kw)).base

    safetensors, pytorch = base(), base(base_format="pytorch")
    q4, q8, unnamed = base(base_format="gguf", file=GGUF), base(base_format="gguf", file="x.Q8_0.gguf"), base(base_format="gguf")
    assert [fits(b, hub) for b in (safetensors, pytorch, q4, q8, unnamed)] == [True, True, False, False, False]
    assert [fits(b, directory) for b in (safetensors, pytorch, q4, q8, unnamed)] == [True, True, False, False, False]
    # A GGUF manifest that names no file fits any GGUF; one that names a file fits only that file.
    assert [fits(b, gguf_file) for b in (safetensors, pytorch, q4, q8, unnamed)] == [False, False, True, False, True]
    assert [fits(b, gguf_source(tiny_dir)) for b in (safetensors, q4, q8)] == [False, True, False]


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
