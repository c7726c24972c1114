"""pearzoo/cli/registry.py: publish, list, show; --json validated; errors are one line with their exit code."""

from __future__ import annotations

import json

import jsonschema

from cli_run import assert_one_error, run_cli
from pearzoo.registry.base import IndexEntry, ModelDetails, ModelSummary, manifest_relpath
from pearzoo.schema_export import load_schema
from tiny_checkpoints import closed_port_url, serve, tamper, write_json

MODEL = "pearzoo-test/tiny-llama"




def test_publish_list_show_json(manifest_doc, tmp_path, capsys):
    src = write_json(manifest_doc, tmp_path / "m.json")
    registry = str(tmp_path / "reg")
    code, out, err = run_cli(["publish", str(src), "--registry", registry, "--json"], capsys)
    assert (code, err) == (0, "")
    entry = json.loads(out)
    jsonschema.validate(entry, IndexEntry.model_json_schema())
    assert (entry["model_id"], entry["digest"]) == (MODEL, manifest_doc["digest"])

    code, out, _ = run_cli(["list", "--registry", registry, "--json"], capsys)
    assert code == 0
    [summary] = json.loads(out)
    jsonschema.validate(summary, ModelSummary.model_json_schema())
    assert (summary["model_id"], summary["versions"], summary["latest"]) == (MODEL, 1, entry)

    code, out, _ = run_cli(["show", MODEL, "--registry", registry, "--json"], capsys)
    assert code == 0
    details = json.loads(out)
    jsonschema.validate(details, ModelDetails.model_json_schema())
    jsonschema.validate(details["manifest"], load_schema("manifest"))
    assert details["manifest"] == manifest_doc and details["versions"] == [entry]


def test_show_human_and_registry_from_env(manifest_doc, tmp_path, capsys, monkeypatch):
    registry = tmp_path / "reg"
    run_cli(["publish", str(write_json(manifest_doc, tmp_path / "m.json")), "--registry", str(registry)], capsys)
    monkeypatch.setenv("PEARZOO_REGISTRY", str(registry))
    code, out, _ = run_cli(["show", MODEL], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{MODEL}: 1 version(s), newest last"
    assert lines[1].startswith(f" * {manifest_doc['digest']}  ") and lines[1].endswith("rope/llama 1.0.0  3 heads")
    assert "heads: 0.1=0.5000, 1.2=1.7500, 1.3=0.2500" in lines
    assert f"base: {MODEL} (safetensors, float32)" in lines
    assert "copy accuracy (n=8): 0.250 -> 0.500" in lines
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0 and out.splitlines()[1].split()[:3] == [MODEL, "1", manifest_doc["digest"][:12]]


def test_show_names_the_gguf_a_manifest_was_built_from(tiny_dir, tmp_path, capsys):
    from tiny_checkpoints import make_manifest

    doc = make_manifest(tiny_dir, model_id="org/tiny", base_format="gguf", file="tiny.Q4_1.gguf", origin="pypi:tiny==1.0")
    registry = str(tmp_path / "reg")
    run_cli(["publish", str(write_json(doc, tmp_path / "m.json")), "--registry", registry], capsys)
    code, out, _ = run_cli(["show", "org/tiny", "--registry", registry], capsys)
    assert code == 0
    assert "base: org/tiny (gguf tiny.Q4_1.gguf from pypi:tiny==1.0, float32)" in out.splitlines()


def test_the_builtin_registry_is_readable(capsys):
    code, out, _ = run_cli(["list", "--json"], capsys)
    assert code == 0 and isinstance(json.loads(out), list)


def test_publish_errors(manifest_doc, tmp_path, capsys):
    registry = str(tmp_path / "reg")
    src = write_json(manifest_doc, tmp_path / "m.json")
    assert run_cli(["publish", str(src), "--registry", registry], capsys)[0] == 0
    code, out, err = run_cli(["publish", str(src), "--registry", registry], capsys)
    assert code == 3 and out == ""
    assert_one_error(err, f"{MODEL} {manifest_doc['digest'][:12]} is already published")
    tampered = write_json(tamper(manifest_doc), tmp_path / "t.json")
    code, _, err = run_cli(["publish", str(tampered), "--registry", registry], capsys)
    assert code == 5
    assert_one_error(err, f"{tampered}: digest mismatch")
    code, _, err = run_cli(["publish", str(src)], capsys)
    assert code == 2 and "Missing option '--registry'" in err


def test_show_and_list_errors(manifest_doc, tmp_path, capsys):
    registry = tmp_path / "reg"
    run_cli(["publish", str(write_json(manifest_doc, tmp_path / "m.json")), "--registry", str(registry)], capsys)
    code, _, err = run_cli(["show", "org/absent", "--registry", str(registry)], capsys)
    assert code == 4
    assert_one_error(err, f"no manifest for 'org/absent' in registry {registry}")
    for bad in ("../../etc/passwd", "/abs/model"):
        code, _, err = run_cli(["show", bad, "--registry", str(registry)], capsys)
        assert code == 3
        assert_one_error(err, f"model id '{bad}' is not allowed")

    (registry / manifest_relpath(MODEL, manifest_doc["digest"])).write_text(json.dumps(tamper(manifest_doc)))
    with serve(registry) as url:
        code, out, err = run_cli(["show", MODEL, "--registry", url, "--json"], capsys)
    assert code == 5 and out == ""
    assert_one_error(err, f"{url}manifests/models--pearzoo-test--tiny-llama/{manifest_doc['digest']}.json: digest mismatch")

    url = closed_port_url()
    code, _, err = run_cli(["list", "--registry", url], capsys)
    assert code == 6
    assert_one_error(err, f"registry {url} cannot be reached")
