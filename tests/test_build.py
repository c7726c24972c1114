"""The builder end to end on stories260K (real weights, seconds on a CPU)."""

import json

import jsonschema
import pytest
import torch

from _tolerances import COPY_LOSS_RECOMPUTED
from pearzoo.build import BuildOptions, build_manifest, prepare
from pearzoo.errors import InvalidInputError, UnsupportedArchitectureError
from pearzoo.heads import HeadId
from pearzoo.hooks import scale_heads
from pearzoo.manifest.io import manifest_digest, read_manifest, write_manifest
from pearzoo.schema_export import load_schema

FAST = [
    "locate.k=3",
    "locate.configurations=[{samples: 6, length: 8}, {samples: 8, length: 5}]",
    "train.steps=6",
    "train.batch_size=4",
    "train.length=8",
    "train.validation_sequences=8",
    "train.validate_every=2",
    "train.preservation.windows=2",
    "train.preservation.window_length=32",
]


@pytest.fixture(scope="module")
def manifest(stories260k_dir):
    return build_manifest(BuildOptions(model=str(stories260k_dir), recipe="rope/llama", overrides=FAST))


def test_manifest_has_the_interface_keys_and_validates(manifest, tmp_path):
    doc = manifest.model_dump(mode="json")
    assert {"schema_version", "base", "recipe", "heads", "metrics", "build", "digest"} <= set(doc)
    assert doc["digest"] == manifest_digest(doc)
    jsonschema.validate(doc, load_schema("manifest"))
    assert doc["recipe"]["id"] == "rope/llama" and doc["recipe"]["overrides"] == FAST
    assert len(doc["heads"]) == 3
    assert set(doc["base"]["tensors"]) == {f"model.layers.{h['layer']}.self_attn.o_proj.weight" for h in doc["heads"]}
    assert all(len(v) == 64 for v in doc["base"]["tensors"].values())
    assert doc["base"]["geometry"] == {"num_layers": 5, "num_heads": 8, "head_dim": 8, "layout": "columns"}
    path = write_manifest(manifest, tmp_path / "m.json")
    assert read_manifest(path) == manifest


def test_heads_are_the_top_k_of_the_scores(stories260k_dir, manifest):
    ctx = prepare(BuildOptions(model=str(stories260k_dir), recipe="rope/llama", overrides=FAST))
    from pearzoo.build import run_locate

    located = run_locate(ctx)
    assert [(h.layer, h.head) for h in manifest.heads] == [(h.layer, h.head) for h in located.selected]
    scores = [h.score for h in manifest.heads]
    assert scores == sorted(scores, reverse=True)
    others = [located.score[h.layer, h.head].item() for h in located.ranking[3:]]
    assert min(scores) >= max(others)


def test_unsupported_and_oversized_requests(stories260k_dir, tmp_path):
    cfg = json.loads((stories260k_dir / "config.json").read_text())
    other = tmp_path / "falcon_h1"  # no recipe; mamba now gets recipes/unsupported.yaml's reason instead
    other.mkdir()
    (other / "config.json").write_text(json.dumps(cfg | {"model_type": "falcon_h1", "architectures": ["FalconH1ForCausalLM"]}))
    with pytest.raises(UnsupportedArchitectureError, match="no recipe covers model_type 'falcon_h1'"):
        prepare(BuildOptions(model=str(other)))
    with pytest.raises(InvalidInputError, match="locate.k: 41 exceeds the model's 40 heads"):
        prepare(BuildOptions(model=str(stories260k_dir), recipe="rope/llama", overrides=["locate.k=41"]))


def test_manifest_coefficients_reproduce_the_metrics(stories260k_dir, manifest):
    from pearzoo.build import METRIC_SEQUENCES
    from pearzoo.proxy import copy_score, generator, sample_sequences

    ctx = prepare(BuildOptions(model=str(stories260k_dir), recipe="rope/llama", overrides=FAST))
    seqs = sample_sequences(ctx.space, METRIC_SEQUENCES, ctx.recipe.train.length, generator(0, "metrics"))
    coeffs = {HeadId(h.layer, h.head): h.coefficient for h in manifest.heads}
    with scale_heads(ctx.model, ctx.geometry, coeffs):
        after = copy_score(ctx.model, seqs, ctx.recipe.train.length)
    assert after.accuracy == manifest.metrics.copy_after.accuracy
    assert after.loss == pytest.approx(manifest.metrics.copy_after.loss, rel=COPY_LOSS_RECOMPUTED)
    assert torch.isfinite(torch.tensor([h.coefficient for h in manifest.heads])).all()


def test_a_run_with_no_trained_step_within_the_budget_is_refused():
    """Step 0 (all ones) always meets the budget; a build whose trained steps all miss it exits 7, not a no-op."""
    from pearzoo.build import require_budget
    from pearzoo.errors import BudgetError
    from pearzoo.train import TrainResult, ValidationPoint

    def run(*points):
        history = [
            ValidationPoint(step=step, loss=1.0, accuracy=0.5, perplexity=ppl, within_budget=ok, coefficients=(1.0,))
            for step, ppl, ok in points
        ]
        return TrainResult(heads=[HeadId(0, 0)], coefficients=[1.0], best_step=0, history=history, base_perplexity=10.0)

    with pytest.raises(BudgetError) as err:
        require_budget(run((0, 10.0, True), (2, 10.5, False), (4, 10.2, False)), 0.01)
    assert str(err.value) == "train: no step kept perplexity within the 1.0% budget (base 10.000, lowest after a step 10.200)"
    assert err.value.exit_code == 7
    require_budget(run((0, 10.0, True), (2, 10.5, False), (4, 10.05, True)), 0.01)  # one trained step is enough
    require_budget(run((0, 10.0, True)), 0.01)  # no trained step at all (train.steps=0): nothing to refuse
