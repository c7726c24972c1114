"""Every name the tools print works everywhere: `pearzoo list`'s names (the zoo's included) in show, patch, audit
and eval, and the built-in names in show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_run import assert_one_error, run_cli
from pearzoo.source import resolve_model

ZOO = Path(__file__).resolve().parents[2] / "zoo" / "models"


def _listed(capsys) -> list[str]:
    code, out, _ = run_cli(["list", "--json"], capsys)
    assert code == 0
    return [m["model_id"] for m in json.loads(out)]


def test_every_listed_name_shows(capsys):
    names = _listed(capsys)
    assert {"llama-rope", "gpt2-learned", "bloom-alibi", "mpt-alibi", "HuggingFaceTB/SmolLM2-135M-Instruct"} <= set(names)
    for name in names:
        code, out, err = run_cli(["show", name], capsys)
        assert code == 0, err
        assert out.startswith(f"{name}: ")


def test_a_builtin_name_shows_its_hub_id(capsys):
    code, out, err = run_cli(["show", "smollm2-135m-instruct"], capsys)
    assert code == 0, err
    assert out.startswith("HuggingFaceTB/SmolLM2-135M-Instruct: 2 version(s), newest last")
    assert "rope/smollm2-135m 1.2.0" in out.splitlines()[2]  # the newest: what patch picks


@pytest.mark.parametrize("name", ["llama-rope", "gpt2-learned", "bloom-alibi", "mpt-alibi"])
def test_a_zoo_name_is_its_checkout(name, tmp_path, capsys):
    source = resolve_model(name)
    assert (source.kind, source.path, source.model_id) == ("directory", (ZOO / name).resolve(), name)
    code, out, err = run_cli(["patch", name, "--dry-run", "--out", str(tmp_path / "o"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["model_id"] == name


def test_audit_and_eval_take_listed_names(tmp_path):
    from pearzoo.audit import default_model
    from pearzoo.manifest.io import read_manifest
    from pearzoo.patch.resolve import manifest_file

    path = manifest_file("llama-rope")
    assert path.parent.parent.name == "manifests" and path.is_file()
    manifest = read_manifest(path)
    assert default_model(manifest, str(path)) == ("llama-rope", None)  # no --model needed for a zoo base
    assert manifest_file(tmp_path / "m.json") == tmp_path / "m.json"  # a file stays a file


def test_an_unknown_name_is_not_found(capsys):
    code, _, err = run_cli(["show", "no-such-model"], capsys)
    assert code == 4
    assert_one_error(err, "")


def test_eval_takes_a_listed_name_for_model_and_manifest(capsys):
    code, out, err = run_cli(["eval", "-m", "llama-rope", "--manifest", "llama-rope", "--lengths", "10", "--sequences", "2", "--text", "none", "--no-kv", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert (report["model"], report["heads"]) == ("llama-rope", ["2.2", "2.0", "6.0", "3.3", "3.1", "1.3", "5.6", "5.0"])
