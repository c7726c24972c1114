"""CLI: exit codes, one-line errors, --json output validated against the published schemas."""

import json
import shutil
import subprocess
import sys

import jsonschema
import pytest
from click.testing import CliRunner

from _tolerances import LOCATE_ABS_FLOOR, LOCATE_RELATIVE
from pearzoo import __version__
from cli_run import FAST_BUILD, run_cli
from pearzoo.cli import cli
from pearzoo.schema_export import load_schema





def test_version_and_help_list_exit_codes():
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"pearzoo, version {__version__}"
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0
    for line in ("3  invalid input", "4  not found", "5  integrity failure"):
        assert line in r.output
    for command in ("build", "locate", "train", "eval", "verify", "recipes"):
        assert CliRunner().invoke(cli, [command, "--help"]).exit_code == 0


def test_recipes_list_json():
    r = CliRunner().invoke(cli, ["recipes", "list", "--json"])
    assert r.exit_code == 0
    ids = {item["id"] for item in json.loads(r.output)}
    assert {"rope/llama", "rope/smollm2-135m"} <= ids


def test_schemas_are_not_stale():
    r = CliRunner().invoke(cli, ["recipes", "schema", "--check"])
    assert r.exit_code == 0, r.output


def test_build_writes_a_manifest_that_verifies(stories260k_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    code, stdout, _ = run_cli(["build", "-m", str(stories260k_dir), "-r", "rope/llama", "--out", str(out), "--json", *FAST_BUILD], capsys)
    assert code == 0
    printed = json.loads(stdout)
    on_disk = json.loads(out.read_text())
    assert printed == on_disk
    jsonschema.validate(on_disk, load_schema("manifest"))
    assert on_disk["recipe"]["overrides"] == FAST_BUILD[1::2]
    code, stdout, _ = run_cli(["verify", str(out), "--json"], capsys)
    assert code == 0 and json.loads(stdout)["digest"] == on_disk["digest"]

    # eval with the manifest: patched and random-heads entries, under the manifest's own recipe settings.
    code, stdout, _ = run_cli(["eval", "-m", str(stories260k_dir), "--manifest", str(out), "--sequences", "6", "--lengths", "6", "--kv-pairs", "20", "--kv-contexts", "2", "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["manifest"] == on_disk["digest"]
    assert set(report["copy_accuracy"]["6"]) == {"base", "patched", "random_heads"}
    assert set(report["retrieval"]["accuracy"]["20"]["middle"]) == {"base", "patched", "random_heads"}
    assert report["heads"] == [f"{h['layer']}.{h['head']}" for h in on_disk["heads"]]
    assert not set(report["random_heads"]) & set(report["heads"]) and len(report["random_heads"]) == 2

    # One changed coefficient: verify refuses with exit 5 and one line naming the mismatch.
    on_disk["heads"][0]["coefficient"] += 0.001
    tampered = tmp_path / "t.json"
    tampered.write_text(json.dumps(on_disk))
    code, stdout, err = run_cli(["verify", str(tampered)], capsys)
    assert code == 5 and stdout == ""
    assert err.startswith(f"error: {tampered}: digest mismatch") and err.count("\n") == 1

    # NaN coefficient: a schema violation (exit 3).
    on_disk["heads"][0]["coefficient"] = float("nan")
    tampered.write_text(json.dumps(on_disk))
    code, _, err = run_cli(["verify", str(tampered)], capsys)
    assert code == 3 and err.count("\n") == 1 and "coefficient" in err


def test_eval_json_without_manifest_has_only_base(stories260k_dir, capsys):
    code, stdout, err = run_cli(["eval", "-m", str(stories260k_dir), "--sequences", "8", "--lengths", "5,8", "--kv-contexts", "4", "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert set(report["copy_accuracy"]) == {"5", "8"}
    assert set(report["copy_accuracy"]["5"]) == {"base"}
    assert set(report["perplexity"]) >= {"base"} and "patched" not in report["perplexity"]
    assert 0.0 <= report["copy_accuracy"]["8"]["base"] <= 1.0
    # Retrieval is on by default (the model has a tokenizer); 50 pairs do not fit stories260K's 512 positions.
    kv = report["retrieval"]
    assert {k: kv[k] for k in ("contexts", "id_chars", "max_positions", "skipped")} == {"contexts": 4, "id_chars": 3, "max_positions": 512, "skipped": [50]}
    assert list(kv["accuracy"]) == ["20"] and list(kv["accuracy"]["20"]) == ["first", "middle", "last"]
    assert kv["accuracy"]["20"]["last"] == {"base": 0.0}
    assert err == "warning: kv retrieval: 50 pairs skipped (631 tokens exceed the model's 512 positions)\n"


def test_eval_kv_options(stories260k_dir, tmp_path, capsys):
    code, stdout, _ = run_cli(["eval", "-m", str(stories260k_dir), "--sequences", "4", "--lengths", "5", "--text", "none", "--no-kv", "--json"], capsys)
    assert code == 0 and "retrieval" not in json.loads(stdout)
    code, stdout, _ = run_cli(["eval", "-m", str(stories260k_dir), "--sequences", "4", "--lengths", "5", "--text", "none", "--kv-pairs", "20", "--kv-contexts", "2"], capsys)
    assert code == 0
    # Each value with its interval (tests/cli/test_cli_eval_intervals.py): 0 of 2 contexts, Wilson [0, 0.658].
    assert [line[:38] for line in stdout.splitlines()[5:]] == [
        "   20  first     0.000 [0.000, 0.658] ",
        "   20  middle    0.000 [0.000, 0.658] ",
        "   20  last      0.000 [0.000, 0.658] ",
    ]
    code, _, err = run_cli(["eval", "-m", str(stories260k_dir), "--kv-pairs", "2"], capsys)
    assert code == 2 and "numbers of pairs must be >= 3" in err
    # Without its tokenizer files the model has no tokenizer: retrieval is off by default, and --kv is an error.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(stories260k_dir / name, bare / name)
    code, stdout, _ = run_cli(["eval", "-m", str(bare), "--sequences", "4", "--lengths", "5", "--json"], capsys)
    assert code == 0 and "retrieval" not in json.loads(stdout)
    code, stdout, err = run_cli(["eval", "-m", str(bare), "--sequences", "4", "--lengths", "5", "--kv"], capsys)
    assert (code, stdout) == (3, "")
    assert err == "error: key-value retrieval needs a tokenizer, and the model has none\nhint: pass --no-kv\n"


def test_locate_then_train_json(stories260k_dir, tmp_path, capsys):
    code, stdout, _ = run_cli(["locate", "-m", str(stories260k_dir), "-r", "rope/llama", "--json", *FAST_BUILD], capsys)
    assert code == 0
    loc = json.loads(stdout)
    assert len(loc["heads"]) == 40 and len(loc["selected"]) == 2
    assert loc["selected"] == [f"{h['layer']}.{h['head']}" for h in loc["heads"][:2]]
    path = tmp_path / "loc.json"
    path.write_text(stdout)
    code, stdout, _ = run_cli(["train", "-m", str(stories260k_dir), "-r", "rope/llama", "--locate-json", str(path), "--json", *FAST_BUILD], capsys)
    assert code == 0
    trained = json.loads(stdout)
    assert [f"{h['layer']}.{h['head']}" for h in trained["heads"]] == loc["selected"]
    assert [p["step"] for p in trained["history"]] == [0, 1, 2]


def test_locate_with_prescreen_scores_the_candidates_exactly(stories260k_dir, capsys):
    args = ["locate", "-m", str(stories260k_dir), "-r", "rope/llama", "--json", *FAST_BUILD]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    full = json.loads(stdout)
    assert full["candidates"] is None and all(h["exact"] for h in full["heads"])
    code, stdout, _ = run_cli([*args, "--candidates", "6"], capsys)
    assert code == 0
    screened = json.loads(stdout)
    assert len(screened["candidates"]) == 6 and set(screened["selected"]) <= set(screened["candidates"])
    exact = {f"{h['layer']}.{h['head']}": h["score"] for h in full["heads"]}
    flagged = [h for h in screened["heads"] if h["exact"]]
    assert [f"{h['layer']}.{h['head']}" for h in flagged] == [f"{h['layer']}.{h['head']}" for h in screened["heads"][:6]]
    for h in flagged:
        assert h["score"] == pytest.approx(exact[f"{h['layer']}.{h['head']}"], rel=LOCATE_RELATIVE, abs=LOCATE_ABS_FLOOR)
    code, _, err = run_cli([*args, "--candidates", "1"], capsys)
    assert code == 3 and err == "error: candidates: 1 is outside [K=2, 40 heads]\n"


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["build", "-m", "/nonexistent/model"], 4, "error: /nonexistent/model: no such file or directory"),
        (["build", "-m", "some/dir/model"], 4, "error: some/dir/model: no such file or directory"),
        (["build", "-m", "../evil/model"], 4, "error: ../evil/model: no such file or directory"),
        (["build", "-m", "org/../../etc"], 3, "error: model id 'org/../../etc' is not allowed"),
        (["build", "-m", "org/model"], 6, "error: model 'org/model' is not in the Hugging Face cache"),
        (["build", "-m", "STORIES", "-r", "rope/llama", "--set", "locate.k=999"], 3, "error: locate.k: 999 exceeds the model's 40 heads"),
        (["build", "-m", "STORIES", "-r", "rope/llama", "--set", "locate.kk=3"], 3, "locate.kk: unknown key"),
        (["build", "-m", "STORIES", "-r", "rope/nope"], 4, "error: recipe 'rope/nope' not found"),
        (["train", "-m", "STORIES", "-r", "rope/llama", "--heads", "5.0"], 3, "error: head 5.0: layer 5 out of range (model has 5 layers)"),
        (["train", "-m", "STORIES", "-r", "rope/llama", "--heads", "1.8"], 3, "error: head 1.8: head 8 out of range (model has 8 heads per layer)"),
        (["verify", "MISSING"], 4, "manifest not found"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(argv, code, message, stories260k_dir, tmp_path, capsys):
    argv = [str(stories260k_dir) if a == "STORIES" else str(tmp_path / "missing.json") if a == "MISSING" else a for a in argv]
    got, stdout, err = run_cli(argv, capsys)
    assert got == code, err
    assert stdout == ""
    first = err.splitlines()[0]
    assert message in first
    assert "Traceback" not in err and len(err.splitlines()) <= 2  # error line + at most one hint


def test_usage_error_exits_2():
    r = subprocess.run([sys.executable, "-m", "pearzoo", "build"], capture_output=True, text=True)
    assert r.returncode == 2 and "Missing option '--model'" in r.stderr
