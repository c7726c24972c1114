"""`pearzoo compare` (pearzoo/compare.py, pearzoo/cli/compare.py): paired differences of two eval reports."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from cli_run import assert_one_error, run_cli

from pearzoo.compare import Comparison
from pearzoo.evaluate import DEFAULT_TEXT


ZOO_GPT2 = Path(__file__).resolve().parents[1] / "zoo" / "models" / "gpt2-learned"


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Eval reports on the zoo GPT-2 (it copies: about 0.2 at n=10): its registry manifest (a) and the same heads
    with the coefficients' distance from 1 doubled (b), with seed 1234 and 99, and the base alone."""
    from pearzoo.evaluate import run_eval
    from pearzoo.manifest.io import seal

    tmp = tmp_path_factory.mktemp("compare")
    registry = Path(__file__).resolve().parents[1] / "registry" / "manifests" / "models--gpt2-learned"
    a_doc = json.loads(sorted(registry.glob("*.json"))[-1].read_text())
    b_doc = json.loads(json.dumps(a_doc))
    for head in b_doc["heads"]:
        head["coefficient"] = round(1 + 2 * (head["coefficient"] - 1), 4)
    b_doc.pop("digest")
    out = {"a.pear": tmp / "a.pear.json", "b.pear": tmp / "b.pear.json"}
    out["a.pear"].write_text(json.dumps(a_doc))
    out["b.pear"].write_text(json.dumps(seal(b_doc)))
    runs = {"a1234": ("a.pear", 1234, DEFAULT_TEXT), "b1234": ("b.pear", 1234, DEFAULT_TEXT), "a99": ("a.pear", 99, None), "base1234": (None, 1234, None)}
    for name, (manifest, seed, text) in runs.items():
        report = run_eval(
            str(ZOO_GPT2), str(out[manifest]) if manifest else None, lengths=(10,), sequences=60, seed=seed, text=text,
            kv=False, random_draws=1, resamples=500,
        )  # fmt: skip
        out[name] = tmp / f"{name}.json"
        out[name].write_text(report.model_dump_json(exclude_none=True))
    return out


def test_compare_same_sequences_is_paired_and_the_difference_is_b_minus_a(reports, capsys):
    code, stdout, err = run_cli(["compare", str(reports["a1234"]), str(reports["b1234"]), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    jsonschema.validate(doc, Comparison.model_json_schema(mode="serialization"))
    a, b = json.loads(reports["a1234"].read_text()), json.loads(reports["b1234"].read_text())
    rows = {(d["cell"], d["quantity"]): d for d in doc["differences"]}
    assert list(rows) == [("copy n=10", "value"), ("copy n=10", "gain"), ("perplexity", "value")]
    value = rows[("copy n=10", "value")]
    assert value["paired"] and value["a"] == pytest.approx(a["copy_accuracy"]["10"]["patched"], rel=1e-12)
    assert value["b"] == pytest.approx(b["copy_accuracy"]["10"]["patched"], rel=1e-12)
    assert value["difference"] == pytest.approx(value["b"] - value["a"])
    # Same base, same sequences: the gains differ exactly as the patched values do, with the same interval.
    gain = rows[("copy n=10", "gain")]
    assert gain["difference"] == pytest.approx(value["difference"]) and gain["interval"] == value["interval"]
    ppl = rows[("perplexity", "value")]
    assert ppl["difference"] == pytest.approx(b["perplexity"]["patched"] / a["perplexity"]["patched"] - 1)
    assert ppl["interval"][0] <= ppl["difference"] <= ppl["interval"][1]
    # A report against itself: a zero difference with a zero-width paired interval.
    code, stdout, _ = run_cli(["compare", str(reports["a1234"]), str(reports["a1234"]), "--json"], capsys)
    same = json.loads(stdout)["differences"][0]
    assert (same["difference"], same["interval"], same["excludes_zero"]) == (0.0, [0.0, 0.0], False)


def test_other_sequences_are_compared_unpaired_and_wider(reports, capsys):
    # The base alone against the patched model on the same sequences: the difference is the report's own gain.
    _, stdout, _ = run_cli(["compare", str(reports["base1234"]), str(reports["a1234"]), "--json"], capsys)
    doc = json.loads(stdout)
    paired = doc["differences"][0]
    own = json.loads(reports["a1234"].read_text())
    assert (doc["a"]["variant"], doc["b"]["variant"]) == ("base", "patched")
    assert paired["difference"] == pytest.approx(own["copy_accuracy"]["10"]["patched"] - own["copy_accuracy"]["10"]["base"])
    # The same pairing with another seed's sequences is unpaired, and its interval is wider.
    _, stdout, _ = run_cli(["compare", str(reports["base1234"]), str(reports["a99"]), "--json"], capsys)
    unpaired = json.loads(stdout)["differences"][0]
    assert paired["paired"] and not unpaired["paired"]
    assert unpaired["interval"][1] - unpaired["interval"][0] > 1.5 * (paired["interval"][1] - paired["interval"][0])


def test_compare_human_output(reports, capsys):
    code, stdout, _ = run_cli(["compare", str(reports["a1234"]), str(reports["b1234"])], capsys)
    lines = stdout.splitlines()
    assert code == 0 and lines[0] == f"A: {reports['a1234']} (gpt2-learned, patched, seed 1234)"
    assert lines[2].split() == ["cell", "quantity", "A", "B", "B", "-", "A", "[95%", "interval]", "paired"]
    assert lines[3].startswith("copy n=10         value       0.") and lines[3].split()[-2:] == ["points", "yes"]
    assert lines[5].startswith("perplexity        value") and "%" in lines[5]


def test_compare_errors_have_one_line_and_their_exit_code(reports, tmp_path, capsys):
    code, _, err = run_cli(["compare", str(reports["a1234"]), str(tmp_path / "missing.json")], capsys)
    assert code == 4
    assert_one_error(err, f"file '{tmp_path / 'missing.json'}' not found")
    code, _, err = run_cli(["compare", str(reports["a1234"]), str(reports["a.pear"])], capsys)
    assert code == 3
    assert_one_error(err, f"{reports['a1234']} and {reports['a.pear']}: give two eval reports or two manifests")
    code, _, err = run_cli(["compare", str(reports["a.pear"]), str(reports["b.pear"])], capsys)
    assert (code, err) == (3, "error: comparing two manifests needs the model to evaluate them on\nhint: pass --model\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "x"}')
    code, _, err = run_cli(["compare", str(bad), str(reports["a1234"])], capsys)
    assert code == 3 and err.startswith(f"error: {bad}: not an eval report (") and err.count("\n") == 1
    old = json.loads(reports["a1234"].read_text())
    del old["samples"], old["intervals"], old["controls"], old["bootstrap"], old["random_head_draws"]
    bad.write_text(json.dumps(old))
    code, _, err = run_cli(["compare", str(bad), str(reports["a1234"])], capsys)
    assert code == 3 and err == f"error: {bad}: the report has no per-unit scores (made before intervals); run pearzoo eval again\n"


def test_compare_two_manifests_on_one_model(reports, capsys):
    argv = ["compare", str(reports["a.pear"]), str(reports["b.pear"]), "-m", str(ZOO_GPT2), "--lengths", "10",
            "--sequences", "60", "--text", "none", "--resamples", "500", "--json"]  # fmt: skip
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    first = doc["differences"][0]
    assert first["paired"] and [d["cell"] for d in doc["differences"]] == ["copy n=10", "copy n=10"]
    assert doc["differences"] == json.loads(run_cli(["compare", str(reports["a1234"]), str(reports["b1234"]), "--resamples", "500", "--json"], capsys)[1])["differences"][:2]
    # The same sequences and coefficients as the stored reports: the same numbers.
    stored = json.loads(reports["a1234"].read_text())
    assert first["a"] == pytest.approx(stored["copy_accuracy"]["10"]["patched"], rel=1e-12)
    assert doc["reports"]["a"]["controls"]["random_heads_draws"] == 0


def test_compare_help_states_the_method_and_exit_codes():
    from click.testing import CliRunner

    from pearzoo.cli import cli

    r = CliRunner().invoke(cli, ["compare", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "Exit codes: 0 compared (whatever the result), 2 usage, 3 invalid input" in text
    assert "the interval is paired, resampling sequences once for both sides (percentile bootstrap, --resamples)" in text
