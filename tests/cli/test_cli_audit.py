"""`pearzoo audit`: exit codes, the --json report, the table, one-line errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli_run import FAST_BUILD, assert_one_error, run_cli
from pearzoo.audit import AuditReport
from pearzoo.cli import cli
from pearzoo.manifest.io import seal
from tiny_checkpoints import write_json


def test_help_documents_the_exit_codes():
    r = CliRunner().invoke(cli, ["audit", "--help"])
    assert r.exit_code == 0
    for line in ("0  every check passed", "8  drift: at least one check failed", "5  the manifest was modified"):
        assert line in r.output
    assert "8  drift" in CliRunner().invoke(cli, ["--help"]).output


def test_build_then_audit_passes_and_a_changed_coefficient_is_drift(stories260k_dir, tmp_path, capsys):
    built = tmp_path / "m.json"
    code, _, _ = run_cli(["build", "-m", str(stories260k_dir), "-r", "rope/llama", "--out", str(built), "-q", *FAST_BUILD], capsys)
    assert code == 0

    code, stdout, err = run_cli(["audit", str(built), "--model", str(stories260k_dir), "--json"], capsys)
    assert code == 0 and err == ""
    report = AuditReport.model_validate(json.loads(stdout))
    assert report.passed
    assert [c.value for _, c in report.checks] == [1.0, 1.0, 0.0]
    assert report.manifest == str(built) and report.model == str(stories260k_dir)

    # One coefficient moved by 0.1 and re-sealed: a valid manifest the rebuild no longer reproduces.
    doc = json.loads(built.read_text())
    tau = doc["heads"][0]["coefficient"]
    doc["heads"][0]["coefficient"] = tau + 0.1
    drifted = write_json(seal(doc), tmp_path / "drifted.json")
    code, stdout, err = run_cli(["audit", str(drifted), "-m", str(stories260k_dir)], capsys)
    assert code == 8
    assert_one_error(err, f"{drifted}: the rebuild drifted from the manifest: coefficient_diff 0.1 > 0.05")
    lines = stdout.splitlines()
    assert lines[0] == f"audit {drifted}: stories260K, recipe rope/llama 1.0.0, seed 0, K=2"
    assert lines[2].split() == ["head", "overlap", "1", ">=", "0.75", "pass"]
    assert lines[3].split() == ["rank", "correlation", "1", ">=", "0.9", "pass"]
    assert lines[4].split() == ["max", "|tau", "-", "tau'|", "0.1", "<=", "0.05", "DRIFT"]
    head = f"{doc['heads'][0]['layer']}.{doc['heads'][0]['head']}"
    assert lines[6].split()[:2] == [head, "both"] and lines[6].split()[4:] == [f"{tau + 0.1:.6g}", f"{tau:.6g}"]
    assert lines[-3].startswith("manifest: pearzoo ") and lines[-2].startswith("rebuild:  pearzoo ")
    assert lines[-1] == "drift: coefficient_diff"

    # Content changed without re-sealing: refused before any rebuild (exit 5), nothing on stdout.
    doc["digest"] = json.loads(built.read_text())["digest"]
    tampered = write_json(doc, tmp_path / "tampered.json")
    code, stdout, err = run_cli(["audit", str(tampered), "-m", str(stories260k_dir), "--json"], capsys)
    assert code == 5 and stdout == ""
    assert_one_error(err, f"{tampered}: digest mismatch (recorded {doc['digest'][:12]}, content ")

    # Without --model, a local base cannot be found from the manifest: exit 3 with a hint.
    code, stdout, err = run_cli(["audit", str(built)], capsys)
    assert code == 3 and stdout == ""
    assert_one_error(err, f"{built}: base 'stories260K' was built from local files")
    assert err.splitlines()[1] == "hint: pass --model with the path of that model"


def test_another_base_exits_5_naming_the_tensor(manifest_doc, stories260k_dir, tmp_path, capsys):
    path = write_json(manifest_doc, tmp_path / "tiny.json")
    code, stdout, err = run_cli(["audit", str(path), "-m", str(stories260k_dir), "--json"], capsys)
    assert code == 5 and stdout == ""
    assert_one_error(err, "stories260K is not the manifest's base: tensor model.layers.0.self_attn.o_proj.weight differs")


def test_missing_manifest_exits_4(tmp_path, capsys):
    code, stdout, err = run_cli(["audit", str(tmp_path / "none.json")], capsys)
    assert code == 4 and stdout == ""
    assert_one_error(err, f"{tmp_path / 'none.json'}: manifest not found")
