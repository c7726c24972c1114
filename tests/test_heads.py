import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pearzoo.errors import InvalidInputError
from pearzoo.heads import HeadId, geometry_from_config
from pearzoo.patch.fold import fold_weight
from pearzoo.recipe.schema import Heads, Layout

LLAMA_HEADS = Heads(layers="model.layers", output_projection="self_attn.o_proj", layout="columns", head_dim=["head_dim"])


def test_head_id_round_trip_and_errors():
    assert str(HeadId.parse("14.15")) == "14.15"
    assert HeadId.parse(" 3.0 ") == HeadId(3, 0)
    with pytest.raises(InvalidInputError, match="expected LAYER.HEAD"):
        HeadId.parse("3-1")


def test_geometry_reads_head_dim_from_config_or_derives_it():
    g = geometry_from_config(LLAMA_HEADS, {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "head_dim": 24})
    assert (g.num_layers, g.num_heads, g.head_dim) == (2, 4, 24)
    assert g.tensor_name(1) == "model.layers.1.self_attn.o_proj.weight"
    assert g.expected_shape(64) == (64, 96)
    g2 = geometry_from_config(LLAMA_HEADS, {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64})
    assert g2.head_dim == 16
    with pytest.raises(InvalidInputError, match="not divisible"):
        geometry_from_config(LLAMA_HEADS, {"num_hidden_layers": 2, "num_attention_heads": 5, "hidden_size": 64})
    with pytest.raises(InvalidInputError, match="config has none of num_hidden_layers"):
        geometry_from_config(LLAMA_HEADS, {"num_attention_heads": 4, "hidden_size": 64})


def test_out_of_range_heads_are_refused():
    g = geometry_from_config(LLAMA_HEADS, {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64})
    with pytest.raises(InvalidInputError, match=r"head 2.0: layer 2 out of range \(model has 2 layers\)"):
        g.check(HeadId(2, 0))
    with pytest.raises(InvalidInputError, match=r"head 1.4: head 4 out of range \(model has 4 heads per layer\)"):
        g.check(HeadId(1, 4))


@given(
    heads=st.integers(1, 6),
    head_dim=st.integers(1, 5),
    hidden=st.integers(1, 7),
    layout=st.sampled_from([Layout.columns, Layout.rows]),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_fold_scales_exactly_one_slice_per_head(heads, head_dim, hidden, layout, data):
    inner = heads * head_dim
    shape = (hidden, inner) if layout is Layout.columns else (inner, hidden)
    w = torch.randn(shape)
    chosen = data.draw(st.dictionaries(st.integers(0, heads - 1), st.floats(-2, 2, allow_nan=False), max_size=heads))
    out = fold_weight(w, chosen, head_dim, layout)
    for h in range(heads):
        sl = slice(h * head_dim, (h + 1) * head_dim)
        a = out[:, sl] if layout is Layout.columns else out[sl, :]
        b = w[:, sl] if layout is Layout.columns else w[sl, :]
        expected = b * chosen.get(h, 1.0)
        assert torch.equal(a, expected.to(w.dtype)) if h not in chosen or chosen[h] == 1.0 else torch.allclose(a, expected)


def test_fold_ones_is_bit_identical_and_bf16_rounds_once():
    w = torch.randn(8, 12, dtype=torch.bfloat16)
    assert torch.equal(fold_weight(w, {0: 1.0, 2: 1.0}, 4, Layout.columns), w)
    out = fold_weight(w, {1: 0.3}, 4, Layout.columns)
    assert torch.equal(out[:, 4:8], (w[:, 4:8].float() * 0.3).to(torch.bfloat16))


def test_fold_rejects_bad_coefficients():
    w = torch.randn(4, 8)
    with pytest.raises(InvalidInputError, match="head 2 out of range"):
        fold_weight(w, {2: 0.5}, 4, Layout.columns)
    with pytest.raises(InvalidInputError, match="not finite"):
        fold_weight(w, {0: float("nan")}, 4, Layout.columns)
    with pytest.raises(InvalidInputError, match="not finite"):
        fold_weight(w, {0: float("inf")}, 4, Layout.columns)
