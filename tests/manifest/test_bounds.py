"""pearzoo/manifest/bounds.py and recipe train.tau_range: a sealed manifest with an absurd coefficient is refused
by every reader (build, verify, publish, patch) with exit 3 and one line; a recipe may widen the range."""

from __future__ import annotations

import json

import pytest

from cli_run import FAST_BUILD, assert_one_error, run_cli
from pearzoo.digest import document_digest
from pearzoo.errors import InvalidInputError
from pearzoo.manifest.io import parse_manifest, seal
from pearzoo.recipe.schema import TauRange
from tiny_checkpoints import write_json


def _with_tau(document: dict, tau: float, tau_range: dict | None = None) -> dict:
    """The manifest with head 0's coefficient set (and the recipe's range), sealed again: a valid digest."""
    doc = json.loads(json.dumps(document))
    doc["heads"][0]["coefficient"] = tau
    if tau_range is not None:
        doc["recipe"]["settings"]["train"]["tau_range"] = tau_range
        doc["recipe"]["digest"] = document_digest(doc["recipe"]["settings"])
    return seal(doc)


@pytest.mark.parametrize(
    "tau, shown",
    [(1e39, "1e+39"), (0.0, "0"), (-1.0, "-1"), (4.0001, "4.0001")],
)
def test_sealed_out_of_range_coefficients_fail_verify_publish_and_patch(manifest_doc, tiny_dir, tmp_path, capsys, tau, shown):
    path = write_json(_with_tau(manifest_doc, tau), tmp_path / "m.json")
    message = f"{path}: heads.0.coefficient: {shown} (head 0.1) is outside (0, 4], the recipe's train.tau_range"
    for argv in (
        ["verify", str(path)],
        ["publish", str(path), "--registry", str(tmp_path / "reg")],
        ["patch", str(tiny_dir), "--manifest", str(path), "--out", str(tmp_path / "out")],
    ):
        code, stdout, err = run_cli(argv, capsys)
        assert (code, stdout) == (3, ""), argv
        assert_one_error(err, message)
    assert not (tmp_path / "reg").exists() and not (tmp_path / "out").exists()


def test_the_upper_bound_is_inclusive_and_a_recipe_may_allow_zero(manifest_doc):
    assert parse_manifest(_with_tau(manifest_doc, 4.0), source="m").heads[0].coefficient == 4.0
    zero_ok = _with_tau(manifest_doc, 0.0, {"low": 0.0, "high": 4.0, "include_low": True})
    assert parse_manifest(zero_ok, source="m").heads[0].coefficient == 0.0
    wide = _with_tau(manifest_doc, 9.5, {"low": 0.1, "high": 10.0})
    assert parse_manifest(wide, source="m").heads[0].coefficient == 9.5
    with pytest.raises(InvalidInputError, match=r"^m: heads.0.coefficient: 0.05 \(head 0.1\) is outside \(0.1, 10\], "):
        parse_manifest(_with_tau(manifest_doc, 0.05, {"low": 0.1, "high": 10.0}), source="m")


@pytest.mark.parametrize(
    "tau_range, message",
    [
        ({"low": 1.0, "high": 1.0}, "low must be below high"),
        ({"low": -1.0, "high": 4.0}, "low: Input should be greater than or equal to 0"),
        ({"low": 0.0, "high": 1e39}, "high: Input should be less than or equal to 100"),
        ({"low": 0.0, "high": "inf"}, "high: Input should be a finite number"),
        ({"low": 0.0, "high": 4.0, "extra": 1}, "extra: unknown key"),
    ],
)
def test_a_manifest_cannot_declare_an_absurd_range(manifest_doc, tau_range, message):
    with pytest.raises(InvalidInputError) as info:
        parse_manifest(_with_tau(manifest_doc, 1.0, tau_range), source="m")
    assert str(info.value).startswith("m: recipe.settings.train.tau_range: ") and message in str(info.value)


def test_manifests_without_a_recorded_range_get_the_default(manifest_doc):
    doc = json.loads(json.dumps(manifest_doc))
    # A recipe that keeps the default range records none (its digest stays that of the shipped manifests).
    assert "tau_range" not in doc["recipe"]["settings"]["train"]
    doc["recipe"]["digest"] = document_digest(doc["recipe"]["settings"])
    assert parse_manifest(seal(doc), source="m").heads[0].coefficient == manifest_doc["heads"][0]["coefficient"]
    with pytest.raises(InvalidInputError, match=r"is outside \(0, 4\]"):
        doc["heads"][0]["coefficient"] = 5.0
        parse_manifest(seal(doc), source="m")
    assert str(TauRange()) == "(0, 4]" and str(TauRange(include_low=True)) == "[0, 4]"


def test_build_refuses_to_seal_coefficients_outside_the_recipe_range(stories260k_dir, tmp_path, capsys):
    # Training starts every tau at 1 and two tiny steps keep it near 1: outside (0, 0.5].
    out = tmp_path / "m.json"
    code, stdout, err = run_cli(
        ["build", "-m", str(stories260k_dir), *FAST_BUILD, "--set", "train.tau_range={low: 0, high: 0.5}", "--out", str(out)], capsys
    )
    assert code == 3 and not out.exists()
    assert_one_error(err, f"manifest built for {stories260k_dir}: heads.0.coefficient: ")
    assert "is outside (0, 0.5], the recipe's train.tau_range" in err
