"""`pearzoo eval` with intervals: the JSON keys the issue specifies, the human table, --quick."""

from __future__ import annotations

import json

import jsonschema
import pytest
from cli_run import run_cli

from pearzoo.evaluate import EvalReport


@pytest.fixture(scope="module")
def manifest_path(stories260k_dir, tmp_path_factory):
    from tiny_checkpoints import make_manifest, write_json

    return write_json(make_manifest(stories260k_dir, {(1, 2): 0.5, (3, 4): 1.5}), tmp_path_factory.mktemp("m") / "a.pear.json")


def test_eval_json_keeps_its_keys_and_adds_intervals_and_controls(stories260k_dir, manifest_path, capsys):
    code, stdout, err = run_cli(["eval", "-m", str(stories260k_dir), "--manifest", str(manifest_path), "--lengths", "5",
                                 "--sequences", "16", "--kv-pairs", "20", "--kv-contexts", "2", "--random-draws", "2",
                                 "--resamples", "200", "--json"], capsys)  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    jsonschema.validate(report, EvalReport.model_json_schema(mode="serialization"))
    assert set(report) == {"model", "manifest", "sequences", "seed", "heads", "random_heads", "random_head_draws", "copy_accuracy",
                           "perplexity", "retrieval", "intervals", "controls", "bootstrap", "samples", "seconds"}  # fmt: skip
    assert report["controls"] == {"random_heads_draws": 2, "seed": 1234}
    assert set(report["intervals"]) == {"copy_accuracy", "perplexity", "kv_retrieval"}
    cell = report["intervals"]["copy_accuracy"]["5"]
    assert set(cell) == {"base", "patched", "random_heads", "gain", "random_heads_gain"}
    assert all(len(v) == 2 and v[0] <= v[1] for v in cell.values())
    assert set(report["intervals"]["perplexity"]) == {"base", "patched", "change", "random_heads", "random_heads_change"}
    assert set(report["intervals"]["kv_retrieval"]["20"]["last"]) == set(cell)
    assert report["bootstrap"]["resamples"] == 200 and report["bootstrap"]["level"] == 0.95
    assert len(report["samples"]["copy_accuracy"]["5"]["random_heads"]) == 2
    assert len(report["samples"]["copy_accuracy"]["5"]["base"]) == 16


def test_eval_human_table_prints_each_number_with_its_interval(stories260k_dir, capsys):
    code, stdout, _ = run_cli(["eval", "-m", str(stories260k_dir), "--lengths", "5", "--sequences", "16", "--text", "none",
                               "--kv-pairs", "20", "--kv-contexts", "2", "--resamples", "200"], capsys)  # fmt: skip
    assert code == 0
    lines = stdout.splitlines()
    report_lines = {
        0: "copy accuracy, 95% intervals (200 bootstrap resamples of whole sequences)",
        2: "kv retrieval, exact match (2 contexts, 3-hex ids; Wilson / Bonett-Price 95% intervals)",
    }
    assert lines[0] == report_lines[0]
    assert lines[1].split() == ["n", "base", "patched", "random", "(0", "draws)", "gain", "(points)", "random", "gain", "(points)"]
    assert lines[2].startswith("   5  0.") and lines[2].count("[") == 1 and lines[2].rstrip().endswith("-")
    assert lines[3] == report_lines[2]
    # 0 of 2 contexts: Wilson [0, z^2 / (2 + z^2)] = [0, 0.658].
    assert lines[5].startswith("   20  first     0.000 [0.000, 0.658]")


def test_quick_sets_smaller_defaults_and_explicit_options_win(stories260k_dir, manifest_path, capsys):
    argv = ["eval", "-m", str(stories260k_dir), "--manifest", str(manifest_path), "--quick", "--json"]
    code, stdout, err = run_cli(argv, capsys)
    report = json.loads(stdout)
    assert code == 0, err
    # n = 25 only, 48 sequences, 8 perplexity windows, no retrieval (the model has a tokenizer), 2 draws.
    assert set(report["copy_accuracy"]) == {"25"} and report["sequences"] == 48 and "retrieval" not in report
    assert report["perplexity"]["windows"] == 8 and len(report["samples"]["perplexity"]["base"]) == 8
    assert report["controls"]["random_heads_draws"] == 2 and report["bootstrap"]["resamples"] == 1000
    explicit = ["--lengths", "4", "--sequences", "12", "--random-draws", "1", "--text", "none", "--kv", "--kv-pairs", "20", "--kv-contexts", "2"]
    code, stdout, _ = run_cli([*argv, *explicit], capsys)
    report = json.loads(stdout)
    assert code == 0 and set(report["copy_accuracy"]) == {"4"} and report["sequences"] == 12
    assert report["controls"]["random_heads_draws"] == 1 and report["retrieval"]["contexts"] == 2 and "perplexity" not in report


def test_eval_rejects_bad_counts(stories260k_dir, capsys):
    code, _, err = run_cli(["eval", "-m", str(stories260k_dir), "--resamples", "10"], capsys)
    assert code == 2 and "--resamples" in err
    code, _, err = run_cli(["eval", "-m", str(stories260k_dir), "--sequences", "1"], capsys)
    assert code == 2 and "--sequences" in err
