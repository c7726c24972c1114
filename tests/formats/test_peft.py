"""`pearzoo export --format peft` (pearzoo/formats/peft.py) with real peft, on the reference zoo's three trained
models (one per position family: llama-rope Linear, gpt2-learned Conv1D, bloom-alibi Linear with ALiBi) and
the shipped registry's manifests for them.

The chain, as peft's own tests check an adapter: the loaded adapter (unmerged), its `merge_and_unload()` and
pearzoo's folded copy agree, and all differ from the base.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _tolerances import FOLD_VS_HOOK_FP32, FOLD_VS_HOOK_FP32_DEEP
from pearzoo.formats.peft import export_peft
from pearzoo.patch.api import PatchOptions, patch_model
from pearzoo.registry import open_registry
from tiny_checkpoints import MIN_EFFECT

ZOO = Path(__file__).resolve().parents[2] / "zoo" / "models"
FAMILIES = ["llama-rope", "gpt2-learned", "bloom-alibi"]


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", FAMILIES)
def test_ia3_adapter_equals_the_fold(name, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = ZOO / name
    manifest = open_registry(None).show(name, None).manifest
    done = export_peft(manifest, tmp_path / "adapter", base_model=str(model_dir))
    patched = patch_model(PatchOptions(model=str(model_dir), out=tmp_path / "patched"))
    assert patched.manifest == manifest.digest

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["base_model_name_or_path"], config["revision"]) == ("IA3", str(model_dir), manifest.base.revision)
    assert config["fan_in_fan_out"] is (name == "gpt2-learned")

    from pearzoo.heads import HeadId, geometry_from_config
    from pearzoo.hooks import scale_heads
    from pearzoo.recipe.load import parse_recipe

    # float32: the adapter, unmerged and merged, against runtime hooks on the base (the exact tau).
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    geometry = geometry_from_config(parse_recipe(manifest.recipe.settings, source="manifest").heads, base.config)
    plain = _logits(base, ids)
    with scale_heads(base, geometry, {HeadId(h.layer, h.head): h.coefficient for h in manifest.heads}):
        hooked = _logits(base, ids)
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    unmerged = _logits(adapted, ids)
    merged = _logits(adapted.merge_and_unload(), ids)
    diffs = ((unmerged - hooked).abs().max().item(), (merged - hooked).abs().max().item())
    print(f"{name}: adapter (unmerged, merged) vs hooked base logits {diffs[0]:.2e}, {diffs[1]:.2e}")
    assert diffs[0] <= FOLD_VS_HOOK_FP32  # both scale the projection's input: the same float32 products
    # Merged: tau on the weight instead of the activation, re-associated; trained logits up to ~20.
    assert diffs[1] <= FOLD_VS_HOOK_FP32_DEEP
    assert (hooked - plain).abs().max().item() > MIN_EFFECT

    # The stored dtype (bfloat16 here): merge_and_unload multiplies in float32 and rounds once, as fold_weight
    # does, so the merged weights are pearzoo's folded weights bit for bit.
    native = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    merged_sd = PeftModel.from_pretrained(native, str(tmp_path / "adapter")).merge_and_unload().state_dict()
    folded_sd = AutoModelForCausalLM.from_pretrained(str(tmp_path / "patched")).state_dict()
    assert next(iter(folded_sd.values())).dtype == next(iter(merged_sd.values())).dtype
    for key, tensor in merged_sd.items():
        assert torch.equal(tensor, folded_sd[key]), key
    assert sorted(done.modules) == sorted({geometry.module_path(h.layer) for h in manifest.heads})


def test_adapter_card_parses(tmp_path):
    from huggingface_hub import ModelCard

    manifest = open_registry(None).show("llama-rope", None).manifest
    export_peft(manifest, tmp_path / "a")
    card = ModelCard.load(tmp_path / "a" / "README.md")
    d = card.data
    assert (d.base_model, d.base_model_relation, d.library_name) == ("llama-rope", "adapter", "peft")
    assert {"pearzoo", "pear", "peft", "ia3"} <= set(d.tags)
    assert d.pearzoo["manifest"] == manifest.digest and manifest.digest in card.text
    copy, ppl = d.eval_results
    assert (copy.metric_type, copy.metric_value) == ("accuracy", manifest.metrics.copy_after.accuracy)
    assert (ppl.metric_type, ppl.metric_value) == ("perplexity", manifest.metrics.perplexity_after)
    assert json.loads((tmp_path / "a" / "pearzoo.manifest.json").read_text())["digest"] == manifest.digest


def test_folded_card_parses(tmp_path):
    from huggingface_hub import ModelCard

    patch_model(PatchOptions(model=str(ZOO / "gpt2-learned"), out=tmp_path / "p"))
    manifest = open_registry(None).show("gpt2-learned", None).manifest
    card = ModelCard.load(tmp_path / "p" / "README.md")
    d = card.data
    assert (d.base_model, d.base_model_relation, d.library_name) == ("gpt2-learned", "finetune", "transformers")
    assert "closest of the Hub's values (adapter, merge, quantized, finetune)" in card.text
    assert [r.metric_value for r in d.eval_results] == [manifest.metrics.copy_after.accuracy, manifest.metrics.perplexity_after]
    assert d.eval_results[0].dataset_type == "pearzoo/copy-proxy"


def test_export_refuses_an_existing_folder_and_a_wrong_base(tmp_path, capsys):
    from cli_run import assert_one_error, run_cli

    (tmp_path / "a").mkdir()
    code, _, err = run_cli(["export", "llama-rope", "--out", str(tmp_path / "a")], capsys)
    assert code == 3
    assert_one_error(err, f"{tmp_path / 'a'} already exists")
    code, _, err = run_cli(["export", "llama-rope", "--out", str(tmp_path / "b"), "--model", str(ZOO / "gpt2-learned")], capsys)
    assert code == 5 and not (tmp_path / "b").exists()
    code, out, err = run_cli(["export", "llama-rope", "--out", str(tmp_path / "c"), "--model", str(ZOO / "llama-rope"), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["base_model"] == str(ZOO / "llama-rope") and result["format"] == "peft"


def test_force_replaces_only_an_adapter_pearzoo_exported(tmp_path, capsys):
    """--force never deletes what pearzoo did not write (issue #9): a user's folder stays, an old export is replaced."""
    from cli_run import assert_one_error, run_cli

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = run_cli(["export", "llama-rope", "--out", str(mine), "--force"], capsys)
    assert code == 3
    assert_one_error(err, f"{mine} exists and is not a folder pearzoo wrote")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"

    out = tmp_path / "adapter"
    assert run_cli(["export", "llama-rope", "--out", str(out)], capsys)[0] == 0
    from safetensors import safe_open

    def weights(folder):
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}

    first_meta, first = weights(out)
    code, _, err = run_cli(["export", "llama-rope", "--out", str(out), "--force"], capsys)
    assert code == 0, err
    meta, again = weights(out)
    assert meta == first_meta and meta["pearzoo.manifest"]
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pearzoo-patch-")]
