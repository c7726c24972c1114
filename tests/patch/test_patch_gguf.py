"""pearzoo/patch/api.py on a GGUF base: SmolLM2-135M-Instruct Q4_1 (the built-in model), dequantized to float32,
verified in memory, staged as safetensors and folded. Slow: it loads and saves a 135M model."""

from __future__ import annotations

import pytest
import torch

from _tolerances import FOLD_VS_HOOK_FP32
from pearzoo.heads import HeadId
from pearzoo.hooks import scale_heads
from pearzoo.patch.api import PatchOptions, patch_model
from pearzoo.patch.write import TEMP_PREFIX
from tiny_checkpoints import MIN_EFFECT, load_logits, manifest_document, write_json

pytestmark = pytest.mark.slow

# Powers of two: exact in both float32 roundings (hooks: tau*x, fold: tau*W), see test_patch_api.
HEADS = {(3, 1): 0.5, (14, 4): 2.0, (29, 8): 0.25}


def test_gguf_patch_matches_runtime_hooks(smollm2, tmp_path):
    from pearzoo.binding import base_digests

    ctx = smollm2
    names = {ctx.geometry.tensor_name(layer) for layer, _ in HEADS}
    doc = manifest_document(
        ctx.model.config, base_digests(ctx.source, ctx.model, names), HEADS, model_id=ctx.source.model_id,
        recipe_id="rope/smollm2-135m", base_format="gguf", file=ctx.source.gguf_file,
    )  # fmt: skip
    out = tmp_path / "out"
    result = patch_model(PatchOptions(model="smollm2-135m-instruct", manifest=write_json(doc, tmp_path / "m.json"), out=out, format="safetensors"))
    assert result.source == "builtin" and result.tensors == sorted(names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]  # the stage is gone
    assert not list(out.glob("*.gguf")) and (out / "tokenizer.json").is_file()

    ids = torch.randint(100, 2000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = ctx.model(ids).logits
        with scale_heads(ctx.model, ctx.geometry, {HeadId(l, h): tau for (l, h), tau in HEADS.items()}):
            hooked = ctx.model(ids).logits
    patched = load_logits(out, ids)
    assert (patched - hooked).abs().max().item() <= FOLD_VS_HOOK_FP32
    assert (patched - base).abs().max().item() > MIN_EFFECT
