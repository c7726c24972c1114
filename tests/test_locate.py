"""locate on the real SmolLM2-135M: the fast path equals a plain per-head reference."""

import pytest
import torch

from _tolerances import FOLD_VS_HOOK_FP32_DEEP, LOCATE_RELATIVE
from pearzoo.heads import HeadId, output_projection
from pearzoo.hooks import scale_heads
from pearzoo.locate import locate_heads
from pearzoo.patch.fold import fold_weight
from pearzoo.proxy import generator, sample_sequences
from pearzoo.recipe.schema import LocateConfiguration, Scope

SAMPLE = [HeadId(0, 0), HeadId(7, 4), HeadId(15, 8), HeadId(22, 1), HeadId(29, 8)]


def reference(model, geometry, seqs, p, head, scope):
    """One full forward pass with head (l, h) mean-ablated at p (spec §2.3), written plainly."""
    proj = [output_projection(model, geometry, l) for l in range(geometry.num_layers)]
    clean_in, clean_out = {}, {}
    hs = [m.register_forward_pre_hook(lambda m, a, l=l: clean_in.__setitem__(l, a[0])) for l, m in enumerate(proj)]
    hs += [m.register_forward_hook(lambda m, a, o, l=l: clean_out.__setitem__(l, o)) for l, m in enumerate(proj)]
    clean_logits = model(input_ids=seqs).logits
    for h in hs:
        h.remove()
    sl = slice(head.head * geometry.head_dim, (head.head + 1) * geometry.head_dim)
    mean = clean_in[head.layer][:, p].mean(0)

    def ablate(m, a):
        x = a[0].clone()
        x[:, p, sl] = mean[sl]
        return (x,)

    hs = [proj[head.layer].register_forward_pre_hook(ablate)]
    if scope is Scope.path:
        for later in range(head.layer + 1, geometry.num_layers):
            def freeze(m, a, o, later=later):
                o = o.clone()
                o[:, p] = clean_out[later][:, p]
                return o
            hs.append(proj[later].register_forward_hook(freeze))
    logits = model(input_ids=seqs).logits
    for h in hs:
        h.remove()
    # Positions before p never change (causal attention).
    assert torch.equal(logits[:, :p], clean_logits[:, :p]) or torch.allclose(logits[:, :p], clean_logits[:, :p], atol=1e-5)
    final = logits[:, p]
    target = seqs[:, p + 1]
    return (final.gather(1, target[:, None]).squeeze(1) - final.mean(-1)).mean().item()


@pytest.mark.parametrize("scope", [Scope.total, Scope.path])
def test_fast_locate_equals_reference_on_smollm2(smollm2, scope):
    ctx = smollm2
    spec = ctx.recipe.locate.model_copy(
        update={"scope": scope, "configurations": [LocateConfiguration(samples=4, length=10)], "max_batch_rows": 64}
    )
    result = locate_heads(ctx.model, ctx.geometry, spec, ctx.space, seed=0)
    seqs = sample_sequences(ctx.space, 4, 10, generator(0, "locate/0"))
    p = 18
    with torch.no_grad():
        for head in SAMPLE:
            ref = reference(ctx.model, ctx.geometry, seqs, p, head, scope)
            fast = result.configurations[0].ablated_metric[head.layer, head.head].item()
            assert fast == pytest.approx(ref, rel=LOCATE_RELATIVE), head
    assert result.ranking[: spec.k] == result.selected
    assert len(result.ranking) == 270


def test_fold_equals_hooks_on_smollm2(smollm2):
    ctx = smollm2
    coeffs = {HeadId(3, 2): 0.25, HeadId(17, 0): 1.7, HeadId(29, 8): -0.1}
    seqs = sample_sequences(ctx.space, 2, 12, generator(0, "fold-test"))
    with torch.no_grad():
        base = ctx.model(input_ids=seqs).logits
        with scale_heads(ctx.model, ctx.geometry, coeffs):
            hooked = ctx.model(input_ids=seqs).logits
        saved = {}
        for layer in {h.layer for h in coeffs}:
            w = output_projection(ctx.model, ctx.geometry, layer).weight
            saved[layer] = w.detach().clone()
            w.copy_(fold_weight(w, {h.head: t for h, t in coeffs.items() if h.layer == layer}, ctx.geometry.head_dim, ctx.geometry.layout))
        try:
            folded = ctx.model(input_ids=seqs).logits
        finally:
            for layer, w in saved.items():
                output_projection(ctx.model, ctx.geometry, layer).weight.copy_(w)
    assert (hooked - folded).abs().max().item() <= FOLD_VS_HOOK_FP32_DEEP
    assert (hooked - base).abs().max().item() > 1e-2
