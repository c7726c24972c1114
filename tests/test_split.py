"""Builds and hooks on a model split by an accelerate device map, on the CPU.

One CPU cannot hold layers on two devices, but it can offload: a device map with `disk` entries (or a
`max_memory` bound that forces them) keeps those layers' weights on the meta device between calls, and
accelerate's hooks move them in around each module's forward. That is the same mechanism as a GPU + CPU split
on one GPU (there the overflow executes on the GPU), and what broke there: pearzoo read weights directly
(`lm_head` rows for locate's read-out, the embedding's device for inputs). These tests build with such maps and
require the manifest to match a build with the whole model in memory exactly (same CPU kernels, same order
of operations). What they cannot show: tensors crossing between devices (bench/build_split.py on a GPU).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from tiny_checkpoints import save_tiny_llama

pytest.importorskip("accelerate")

from pearzoo.build import BuildOptions, build_manifest  # noqa: E402
from pearzoo.heads import HeadId, geometry_from_config  # noqa: E402
from pearzoo.hooks import scale_heads  # noqa: E402
from pearzoo.recipe.catalog import get_recipe  # noqa: E402
from pearzoo.source import load_model, resolve_model  # noqa: E402

# Small locate and training settings: the comparison needs every stage to run, not a good manifest.
OVERRIDES = [
    "locate.k=4",
    "locate.configurations=[{samples: 6, length: 8}, {samples: 4, length: 12}]",
    "train.steps=4",
    "train.validate_every=2",
    "train.batch_size=4",
    "train.length=8",
    "train.validation_sequences=8",
]
# Embedding in memory, everything else offloaded to disk: what max_memory={"cpu": 200 kB} gives this model.
MAX_MEMORY = {"cpu": 200_000, "disk": "1GiB"}
# Embedding and lm_head offloaded too, layer 0 in memory: the inputs' device comes from the embedding's hook.
EXPLICIT_MAP = {
    "model.embed_tokens": "disk",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "disk",
    "lm_head": "disk",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("split") / "tiny-llama")


@pytest.fixture(scope="module")
def whole(model_dir: Path):
    return build_manifest(BuildOptions(model=str(model_dir), overrides=OVERRIDES))


def _split_options(model_dir: Path, tmp_path: Path, kind: str) -> dict:
    if kind == "max_memory":
        return {"device_map": "auto", "max_memory": MAX_MEMORY, "offload_folder": str(tmp_path / "offload")}
    return {"device_map": EXPLICIT_MAP, "offload_folder": str(tmp_path / "offload")}


@pytest.mark.parametrize("kind", ["max_memory", "explicit"])
def test_split_build_equals_whole_build(model_dir: Path, whole, tmp_path: Path, kind: str) -> None:
    options = _split_options(model_dir, tmp_path, kind)
    model, _ = load_model(resolve_model(str(model_dir)), **options)
    devices = {str(d) for d in model.hf_device_map.values()}
    assert devices == {"cpu", "disk"}, model.hf_device_map  # really split
    assert model.lm_head.weight.device.type == "meta"  # offloaded: not readable between calls
    del model

    split = build_manifest(BuildOptions(model=str(model_dir), overrides=OVERRIDES, **options))
    assert [(h.layer, h.head) for h in split.heads] == [(h.layer, h.head) for h in whole.heads]
    assert [(h.score, h.delta, h.coefficient) for h in split.heads] == [(h.score, h.delta, h.coefficient) for h in whole.heads]
    assert [c.clean_metric for c in split.locate.configurations] == [c.clean_metric for c in whole.locate.configurations]
    assert split.metrics.copy_after == whole.metrics.copy_after
    assert [p.loss for p in split.metrics.history] == [p.loss for p in whole.metrics.history]
    assert any(h.coefficient != 1.0 for h in split.heads)  # training moved them: the hooks were live


def _hooked_decode(model, geometry, coefficients, ids: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    # transformers 5 renames `past_key_values` to `cache` (argument and output); use whichever this one has.
    kw = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    with torch.inference_mode(), scale_heads(model, geometry, coefficients):
        out = model(input_ids=ids, use_cache=True)
        logits, cache = [out.logits[:, -1]], getattr(out, kw)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps):
            out = model(input_ids=token, use_cache=True, **{kw: cache})
            cache = getattr(out, kw)
            logits.append(out.logits[:, -1])
            token = out.logits[:, -1].argmax(-1, keepdim=True)
    return torch.stack(logits, 1), out.logits


def test_hooks_and_kv_cache_on_split_model(model_dir: Path, tmp_path: Path) -> None:
    source = resolve_model(str(model_dir))
    recipe, _ = get_recipe("rope/llama", [])
    coefficients = {HeadId(0, 1): 0.5, HeadId(1, 2): 1.75}
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    whole, _ = load_model(source)
    geometry = geometry_from_config(recipe.heads, whole.config)
    expected, _ = _hooked_decode(whole, geometry, coefficients, ids, 5)
    plain, _ = _hooked_decode(whole, geometry, {}, ids, 5)
    split, _ = load_model(source, **_split_options(model_dir, tmp_path, "explicit"))
    got, _ = _hooked_decode(split, geometry, coefficients, ids, 5)
    assert torch.equal(got, expected)
    assert (expected - plain).abs().max().item() > 1e-2  # the coefficients change the logits
