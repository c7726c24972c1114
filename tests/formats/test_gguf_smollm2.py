"""GGUF in -> GGUF out on the real SmolLM2-135M-Instruct Q4_1 (the built-in model) with the shipped registry's
manifest. Slow: transformers dequantizes the whole model twice.

This is where the head -> column mapping is checked against transformers' GGUF loader on a real file: the
patched file's o_proj, as transformers loads it, must be the base's with each head's 64 columns scaled.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from pearzoo.heads import HeadId
from pearzoo.hooks import scale_heads
from pearzoo.patch.api import PatchOptions, patch_model
from tiny_checkpoints import MIN_EFFECT

pytestmark = pytest.mark.slow

# The largest relative error of a folded block (vs coefficient x base, relative to the block's largest
# value): the new fp16 d and m are each rounded once (2^-11), and Q4_1's value d*q + m can cancel.
BLOCK_RELATIVE = 2**-9
# The Q4_1 scales' fp16 rounding moves the patched logits from the runtime-hooked base's by about 5e-3
# (logits up to ~35); the fold itself moves them by about 1.
LOGITS_VS_HOOKS = 2e-2


def test_smollm2_gguf_out(smollm2, tmp_path):
    from pearzoo.formats.gguf import open_gguf
    from pearzoo.registry import open_registry
    from tiny_gguf import load_gguf_model

    src = smollm2.source.path / smollm2.source.gguf_file
    digest_before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "smollm2-pear.gguf"
    result = patch_model(PatchOptions(model="smollm2-135m-instruct", out=out))  # the shipped registry's manifest
    assert result.format == "gguf" and hashlib.sha256(src.read_bytes()).hexdigest() == digest_before
    a, b = open_gguf(src), open_gguf(out)
    assert [(t.name, t.tensor_type, t.n_bytes) for t in a.tensors] == [(t.name, t.tensor_type, t.n_bytes) for t in b.tensors]
    assert out.stat().st_size - src.stat().st_size == b.data_offset - a.data_offset < 64 * 1024
    assert json.loads(b.strings["pearzoo.manifest_json"])["digest"] == result.manifest

    patched = load_gguf_model(out)
    base = smollm2.model
    manifest = open_registry(None).show("HuggingFaceTB/SmolLM2-135M-Instruct", None).manifest
    assert result.manifest == manifest.digest
    heads = {(h.layer, h.head): h.coefficient for h in manifest.heads}
    worst = 0.0
    sd0, sd1 = base.state_dict(), patched.state_dict()
    for name in sd0:
        if name not in result.tensors:
            assert torch.equal(sd0[name], sd1[name]), name
    for name in result.tensors:
        layer = int(name.split(".")[2])
        for head in range(9):
            tau = heads.get((layer, head), 1.0)
            sl = slice(head * 64, (head + 1) * 64)
            w0, w1 = sd0[name][:, sl], sd1[name][:, sl]
            if tau == 1.0:
                assert torch.equal(w0, w1)
                continue
            expected = (w0 * tau).reshape(-1, 2, 32)  # two Q4_1 blocks of 32 per row of a head
            rel = ((w1.reshape(-1, 2, 32) - expected).abs().amax(-1) / expected.abs().amax(-1)).max().item()
            worst = max(worst, rel)
    print(f"largest relative error of a folded block: {worst:.3e}")
    assert 0 < worst <= BLOCK_RELATIVE

    ids = torch.randint(100, 2000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = base(ids).logits
        with scale_heads(base, smollm2.geometry, {HeadId(l, h): t for (l, h), t in heads.items()}):
            hooked = base(ids).logits
        folded = patched(ids).logits
    print(f"patched GGUF vs hooked base: {(folded - hooked).abs().max().item():.3e}; vs base {(folded - plain).abs().max().item():.3f}")
    assert (folded - hooked).abs().max().item() <= LOGITS_VS_HOOKS
    assert (folded - plain).abs().max().item() > MIN_EFFECT
