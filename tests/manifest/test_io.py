import json
from pathlib import Path

import jsonschema
import pytest

from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError
from pearzoo.manifest.io import manifest_digest, read_manifest, seal, write_manifest
from pearzoo.schema_export import load_schema, render, schemas, stale_schemas

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
# A real manifest (SmolLM2-135M-Instruct, quick build) at schema_version 1. Old versions must keep loading.
GOLDEN_V1 = GOLDEN / "manifest-v1.json"
GOLDEN_V1_DIGEST = "88be2edb5be72002c9b43dae48ceeda0df739837d99f89842fc0082769cf63bc"
# A real `pearzoo build` of tests/tiny_checkpoints' tiny llama (quick settings) at schema_version 2: base.files.
GOLDEN_V2 = GOLDEN / "manifest-v2.json"
GOLDEN_V2_DIGEST = "d7afac2c56eed8fa8d9498b5f5662e79cd20b341e267f7c3ae8961f7a0f7bbba"


def test_golden_v1_loads_with_pinned_digest():
    m = read_manifest(GOLDEN_V1)
    assert m.digest == GOLDEN_V1_DIGEST
    assert m.schema_version == 1
    assert len(m.heads) == 8 and m.base.model_type == "llama"
    jsonschema.validate(json.loads(GOLDEN_V1.read_text()), load_schema("manifest"))


def test_golden_v2_loads_with_pinned_digest_and_binds_every_weight_file(tmp_path):
    m = read_manifest(GOLDEN_V2)
    assert (m.digest, m.schema_version) == (GOLDEN_V2_DIGEST, 2)
    assert m.base.files == {"model.safetensors": "763494651db3a984e3fb32342aabc655726471c0dc865051d36113c9dd8511a3"}
    jsonschema.validate(json.loads(GOLDEN_V2.read_text()), load_schema("manifest"))
    assert manifest_digest(json.loads(write_manifest(m, tmp_path / "x.json").read_text())) == GOLDEN_V2_DIGEST
    # v1 dumps keep no `files` key (its digest would change); v2 needs it; v1 may not have it.
    assert "files" not in read_manifest(GOLDEN_V1).model_dump(mode="json")["base"]
    for version, files, message in [(2, None, "base.files: required from schema_version 2"), (1, {"a.safetensors": "0" * 64}, "base.files: not part of schema_version 1")]:
        doc = json.loads(GOLDEN_V2.read_text())
        doc["schema_version"] = version
        doc["base"].pop("files")
        if files:
            doc["base"]["files"] = files
        path = write_json_file(tmp_path / f"v{version}.json", seal(doc))
        with pytest.raises(InvalidInputError, match=message):
            read_manifest(path)


@pytest.mark.parametrize("name", ["../m.safetensors", "/etc/passwd", "sub/m.safetensors", "..", "a\\b"])
def test_file_names_in_a_manifest_cannot_leave_the_model_folder(tmp_path, name):
    doc = json.loads(GOLDEN_V2.read_text())
    doc["base"]["files"] = {name: "0" * 64}
    with pytest.raises(InvalidInputError, match="is not a plain file name"):
        read_manifest(write_json_file(tmp_path / "m.json", seal(doc)))
    doc = json.loads(GOLDEN_V2.read_text())
    doc["base"]["file"] = name
    with pytest.raises(InvalidInputError, match="base.file: Value error, '.*' is not a plain file name"):
        read_manifest(write_json_file(tmp_path / "m.json", seal(doc)))


def write_json_file(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_round_trip_is_stable(tmp_path):
    m = read_manifest(GOLDEN_V1)
    out = write_manifest(m, tmp_path / "x.json")
    assert read_manifest(out) == m
    assert manifest_digest(json.loads(out.read_text())) == GOLDEN_V1_DIGEST


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda d: d["heads"][0].__setitem__("coefficient", d["heads"][0]["coefficient"] + 1e-6), IntegrityError, "digest mismatch"),
        (lambda d: d["base"]["tensors"].__setitem__(next(iter(d["base"]["tensors"])), "0" * 64), IntegrityError, "digest mismatch"),
        (lambda d: d.__setitem__("schema_version", 3), InvalidInputError, "schema_version: 3 is not supported (this pearzoo reads 1 and 2)"),
        (lambda d: d.__setitem__("extra", 1), InvalidInputError, "extra: unknown key"),
        (lambda d: d["heads"][0].__setitem__("layer", 30), InvalidInputError, "layer out of range (model has 30 layers)"),
        (lambda d: d["heads"][0].__setitem__("head", 9), InvalidInputError, "head out of range (model has 9 heads per layer)"),
        (lambda d: d["heads"].append(dict(d["heads"][0])), InvalidInputError, "listed twice"),
    ],
)
def test_tampered_or_invalid_manifests_are_refused(tmp_path, mutate, error, message):
    doc = json.loads(GOLDEN_V1.read_text())
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(error) as info:
        read_manifest(path)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_coefficients_are_refused(tmp_path, value):
    doc = json.loads(GOLDEN_V1.read_text())
    doc["heads"][0]["coefficient"] = value
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidInputError, match="heads.0.coefficient: Input should be a finite number"):
        read_manifest(path)
    with pytest.raises(InvalidInputError, match="not representable"):
        seal(doc)


def test_unreadable_inputs(tmp_path):
    with pytest.raises(NotFoundError):
        read_manifest(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        read_manifest(bad)


def test_committed_schemas_match_the_models():
    assert stale_schemas() == []
    for name, schema in schemas().items():
        committed = (Path(__file__).resolve().parents[2] / "pearzoo" / "schemas" / f"{name}.schema.json").read_text()
        assert committed == render(schema)


def test_write_leaves_no_temp_files(tmp_path):
    m = read_manifest(GOLDEN_V1)
    write_manifest(m, tmp_path / "m.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    # A registry is served as static files: a manifest readable only by its writer would be a 403.
    import os

    old = os.umask(0o022)
    try:
        path = write_manifest(read_manifest(GOLDEN_V1), tmp_path / "m.json")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
