"""locate: the batching plan, the execution paths a model can take, and (slow) the real SmolLM2-135M against a plain
per-head reference. Every architecture's tiny model is checked against the reference in tests/test_architectures.py."""

import pytest
import torch

import pearzoo.locate.locator as locate_module
from _tolerances import FOLD_VS_HOOK_FP32_DEEP, LOCATE_RELATIVE, MIN_LOGIT_EFFECT, PREFIX_LOGITS_FP32, REORDERED_FP32
from pearzoo.heads import HeadGeometry, HeadId, geometry_from_config, output_projection
from pearzoo.hooks import scale_heads
from pearzoo.locate import locate_heads
from pearzoo.locate.scan import _batches
from pearzoo.patch.fold import fold_weight
from pearzoo.proxy import generator, sample_sequences, token_space
from pearzoo.recipe.schema import Layout, LocateConfiguration, LocateSpec, Scope
from tiny_models import tiny_model

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
    assert torch.equal(logits[:, :p], clean_logits[:, :p]) or torch.allclose(logits[:, :p], clean_logits[:, :p], atol=PREFIX_LOGITS_FP32)
    final = logits[:, p]
    target = seqs[:, p + 1]
    return (final.gather(1, target[:, None]).squeeze(1) - final.mean(-1)).mean().item()


# --- batching plan -------------------------------------------------------------------------------------------


def _geometry(layers: int, heads: int) -> HeadGeometry:
    return HeadGeometry(layers, heads, 8, Layout.columns, "model.layers", "self_attn.o_proj")


def _plan(batches: list[list[HeadId]]) -> list[list[str]]:
    return [[str(h) for h in batch] for batch in batches]


def test_batches_hold_one_layer_when_it_gives_enough_rows():
    # SmolLM2's shape: 9 heads x 20 samples = 180 rows >= MIN_BATCH_ROWS, so no batch recomputes clean rows.
    batches = _batches(_geometry(30, 9).all_heads(), 20, 1024)
    assert len(batches) == 30
    assert all(len({h.layer for h in batch}) == 1 and len(batch) == 9 for batch in batches)


def test_batches_split_a_large_layer_evenly():
    # 9 heads x 100 samples = 900 rows > 500: two batches of 5 and 4 heads per layer, not 5 + 4 across layers.
    batches = _batches(_geometry(2, 9).all_heads(), 100, 500)
    assert [len(b) for b in batches] == [5, 4, 5, 4]
    assert [{h.layer for h in b} for b in batches] == [{0}, {0}, {1}, {1}]


def test_batches_pack_small_layers_up_to_the_row_bound():
    # 4 heads x 5 samples = 20 rows < MIN_BATCH_ROWS: layers share batches of at most 35 rows (7 heads).
    batches = _batches(_geometry(3, 4).all_heads(), 5, 35)
    assert _plan(batches) == [["0.0", "0.1", "0.2", "0.3", "1.0", "1.1", "1.2"], ["1.3", "2.0", "2.1", "2.2", "2.3"]]


# --- execution paths on a tiny model ----------------------------------------------------------------------------

TINY_SPEC = dict(k=2, configurations=[LocateConfiguration(samples=6, length=8)], max_batch_rows=24)


def _tiny(model_type: str, variant: str):
    model, recipe = tiny_model(model_type, variant)
    cfg = model.config
    special = {i for i in (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) if isinstance(i, int)}
    space = token_space(recipe.proxy, cfg.vocab_size, special, cfg.bos_token_id)
    return model, geometry_from_config(recipe.heads, cfg), space


def _ablated(model, geometry, space, scope: Scope) -> torch.Tensor:
    spec = LocateSpec(scope=scope, **TINY_SPEC)
    return locate_heads(model, geometry, spec, space, seed=0).configurations[0].ablated_metric


@pytest.mark.parametrize("scope", [Scope.total, Scope.path], ids=["total", "path"])
@pytest.mark.parametrize("model_type,variant", [("llama", "gqa"), ("mistral", "sliding")])
def test_chunked_prefix_equals_one_run(monkeypatch, model_type, variant, scope):
    """The clean prefix run in chunks of 2 samples (joined caches, sliding-window layers included) changes nothing."""
    model, geometry, space = _tiny(model_type, variant)
    whole = _ablated(model, geometry, space, scope)
    monkeypatch.setattr(locate_module, "PREFIX_TOKENS", 2 * (space.prefix + 14))  # chunks of 2 samples
    chunked = _ablated(model, geometry, space, scope)
    assert torch.allclose(chunked, whole, **REORDERED_FP32)


@pytest.mark.parametrize("scope", [Scope.total, Scope.path], ids=["total", "path"])
def test_shared_prefix_attention_equals_tiled_cache(monkeypatch, scope):
    """Llama takes the shared-prefix attention; forced onto the tiled cache it gives the same scores."""
    model, geometry, space = _tiny("llama", "gqa")
    verified: list[bool] = []
    original = locate_module._Locator.verify_shared
    monkeypatch.setattr(
        locate_module._Locator, "verify_shared", lambda self, *a: verified.append(original(self, *a)) or verified[-1]
    )
    shared = _ablated(model, geometry, space, scope)
    assert verified == [True]
    monkeypatch.setattr(locate_module._Locator, "verify_shared", lambda self, *a: False)
    tiled = _ablated(model, geometry, space, scope)
    assert torch.allclose(shared, tiled, **REORDERED_FP32)
    assert model.config._attn_implementation == "sdpa"  # restored after every shared-prefix step


def test_attention_that_adds_the_residual_runs_in_full():
    """BLOOM's attention adds the residual itself: it is not replayed, and its model is not offered the shared prefix."""
    model, geometry, space = _tiny("bloom", "bias")
    loc = locate_module._Locator(model, geometry)
    seqs = sample_sequences(space, 6, 8, generator(0, "locate/0"))
    p = space.prefix + 2 * 8 - 2
    with torch.inference_mode():
        clean = loc.clean(seqs, p)
        assert clean.pure == [False] * geometry.num_layers
        assert loc.verify_shared(seqs, p, clean) is False


# --- the real model (slow) ----------------------------------------------------------------------------------------


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert (hooked - base).abs().max().item() > MIN_LOGIT_EFFECT
