"""prescreen: the attribution estimate is the first-order term of the exact ablation (checked by finite
differences against a plain full-forward reference), and `locate_heads(candidates=M)` scores M heads exactly."""

import pytest
import torch

import pearzoo.locate.locator as locate_module
from pearzoo.errors import InvalidInputError
from pearzoo.heads import output_projection
from pearzoo.locate import locate_heads
from pearzoo.locate.prescreen import attribution
from pearzoo.proxy import generator, sample_sequences
from pearzoo.recipe.schema import LocateConfiguration, LocateSpec, Scope
from _tolerances import LOCATE_ABS_FLOOR, LOCATE_RELATIVE, PRESCREEN_SLOPE_FLOOR, PRESCREEN_SLOPE_RELATIVE, RESCORED_FP32, SCOPES_DIFFER
from test_locate import _tiny

# Finite-difference step, as a fraction of the way from x to the mean. The tiny models compute their norms in
# float32 even in float64, so a smaller step drowns in rounding; at 1e-2 the O(eps^2) term is about 1e-4 relative.
EPS = 1e-2
CONF = LocateConfiguration(samples=6, length=8)


def attribution_of(loc, seqs, p, clean, scope):
    """`attribution` as locate calls it: inside inference mode."""
    with torch.inference_mode():
        return attribution(loc, seqs, p, clean, scope)


def _partial_ablation(model, geometry, seqs, p, head, scope, eps):
    """Mean metric with head's slice at p moved eps of the way to the mean (a full forward, written plainly)."""
    proj = [output_projection(model, geometry, l) for l in range(geometry.num_layers)]
    clean_in, clean_out = {}, {}
    hs = [m.register_forward_pre_hook(lambda m, a, l=l: clean_in.__setitem__(l, a[0])) for l, m in enumerate(proj)]
    hs += [m.register_forward_hook(lambda m, a, o, l=l: clean_out.__setitem__(l, o)) for l, m in enumerate(proj)]
    model(input_ids=seqs)
    for h in hs:
        h.remove()
    sl = slice(head[1] * geometry.head_dim, (head[1] + 1) * geometry.head_dim)
    x = clean_in[head[0]][:, p, sl]
    moved = x + eps * (x.mean(0, keepdim=True) - x)

    def ablate(m, a):
        y = a[0].clone()
        y[:, p, sl] = moved
        return (y,)

    hs = [proj[head[0]].register_forward_pre_hook(ablate)]
    if scope is Scope.path:
        for later in range(head[0] + 1, geometry.num_layers):
            def freeze(m, a, o, later=later):
                o = o.clone()
                o[:, p] = clean_out[later][:, p]
                return o
            hs.append(proj[later].register_forward_hook(freeze))
    logits = model(input_ids=seqs).logits.double()
    for h in hs:
        h.remove()
    final, target = logits[:, p], seqs[:, p + 1]
    return (final.gather(1, target[:, None]).squeeze(1) - final.mean(-1)).mean().item()


@pytest.mark.parametrize("scope", [Scope.total, Scope.path], ids=["total", "path"])
@pytest.mark.parametrize("model_type,variant", [("llama", "gqa"), ("gpt2", "conv1d"), ("bloom", "bias")])
def test_attribution_is_the_derivative_of_the_ablation(model_type, variant, scope):
    model, geometry, space = _tiny(model_type, variant)
    model = model.double()
    seqs = sample_sequences(space, CONF.samples, CONF.length, generator(0, "locate/0"))
    p = space.prefix + 2 * CONF.length - 2
    loc = locate_module._Locator(model, geometry)
    with torch.inference_mode():
        clean = loc.clean(seqs, p)
    estimate = attribution_of(loc, seqs, p, clean, scope)
    pi = clean.metric.mean().item()
    assert estimate.shape == (geometry.num_layers, geometry.num_heads)
    other = attribution_of(loc, seqs, p, clean, Scope.path if scope is Scope.total else Scope.total)
    # The scopes must be told apart: below the top layer they take different paths.
    assert (estimate[:-1] - other[:-1]).abs().max() > SCOPES_DIFFER * (estimate - pi).abs().max()
    # float32 rounding in the reference (see EPS) is absolute: judge small slopes against the largest one.
    floor = PRESCREEN_SLOPE_FLOOR * (estimate - pi).abs().max().item()
    with torch.no_grad():
        for layer in range(geometry.num_layers):
            for head in range(geometry.num_heads):
                # Central difference, both sides from the plain reference: no O(eps) term, no mixing of code paths.
                up = _partial_ablation(model, geometry, seqs, p, (layer, head), scope, EPS)
                down = _partial_ablation(model, geometry, seqs, p, (layer, head), scope, -EPS)
                slope = (up - down) / (2 * EPS)
                assert estimate[layer, head].item() - pi == pytest.approx(slope, rel=PRESCREEN_SLOPE_RELATIVE, abs=floor), (layer, head)


def test_attribution_leaves_no_grad_and_no_hooks():
    model, geometry, space = _tiny("llama", "gqa")
    seqs = sample_sequences(space, CONF.samples, CONF.length, generator(0, "locate/0"))
    p = space.prefix + 2 * CONF.length - 2
    loc = locate_module._Locator(model, geometry)
    with torch.inference_mode():
        clean = loc.clean(seqs, p)
        attribution(loc, seqs, p, clean, Scope.total)
    assert all(param.grad is None for param in model.parameters())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("scope", [Scope.total, Scope.path], ids=["total", "path"])
def test_candidates_are_scored_exactly_and_hold_the_top_k(scope):
    model, geometry, space = _tiny("llama", "gqa")
    spec = LocateSpec(scope=scope, k=2, configurations=[CONF, LocateConfiguration(samples=4, length=6)], max_batch_rows=24)
    full = locate_heads(model, geometry, spec, space, seed=0)
    assert full.exact is None
    m = 4
    screened = locate_heads(model, geometry, spec, space, seed=0, candidates=m)
    assert len(screened.exact) == m
    assert set(screened.selected) <= set(screened.exact)
    for h in screened.exact:
        assert screened.score[h.layer, h.head].item() == pytest.approx(full.score[h.layer, h.head].item(), rel=LOCATE_RELATIVE, abs=LOCATE_ABS_FLOOR)
    # With every head a candidate the pre-screen changes nothing.
    everything = locate_heads(model, geometry, spec, space, seed=0, candidates=geometry.num_layers * geometry.num_heads)
    assert everything.selected == full.selected
    assert torch.allclose(everything.score, full.score, **RESCORED_FP32)


def test_candidates_outside_k_and_head_count_are_refused():
    model, geometry, space = _tiny("llama", "gqa")
    spec = LocateSpec(scope=Scope.path, k=3, configurations=[CONF])
    total = geometry.num_layers * geometry.num_heads
    for bad in (2, total + 1):
        with pytest.raises(InvalidInputError, match=rf"^candidates: {bad} is outside \[K=3, {total} heads\]$"):
            locate_heads(model, geometry, spec, space, seed=0, candidates=bad)
