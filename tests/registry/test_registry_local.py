"""pearzoo/registry/local.py and base.py: publish, read back, refuse what must be refused."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError, UnsafeInputError
from pearzoo.manifest.io import seal
from pearzoo.registry import open_registry
from pearzoo.registry.base import manifest_relpath, parse_index
from pearzoo.registry.local import LocalRegistry
from tiny_checkpoints import make_manifest, tamper, write_json

MODEL = "pearzoo-test/tiny-llama"
FOLDER = "manifests/models--pearzoo-test--tiny-llama"


def _index(root: Path) -> dict:
    return json.loads((root / "index.json").read_text())


def test_publish_writes_manifest_by_digest_and_indexes_it(manifest_doc, tmp_path):
    src = write_json(manifest_doc, tmp_path / "m.json")
    root = tmp_path / "reg"
    entry = LocalRegistry(root).publish(src)
    digest = manifest_doc["digest"]
    assert (entry.model_id, entry.digest, entry.recipe, entry.recipe_version, entry.heads) == (MODEL, digest, "rope/llama", "1.0.0", 3)
    stored = root / FOLDER / f"{digest}.json"
    assert json.loads(stored.read_text()) == manifest_doc
    index = _index(root)
    assert index["schema_version"] == 2 and [e["digest"] for e in index["entries"]] == [digest]
    parse_index((root / "index.json").read_bytes(), source="index.json")

    registry = open_registry(str(root))
    assert registry.get(MODEL).digest == digest
    assert registry.get(MODEL.upper(), digest[:8]).digest == digest  # Hub ids compare case-insensitively
    [summary] = registry.list_models()
    assert (summary.model_id, summary.versions, summary.latest.digest) == (MODEL, 1, digest)
    assert open_registry(f"file://{root}").get(MODEL).digest == digest


def test_newest_version_wins_and_older_stay_addressable(tiny_dir, tmp_path):
    root = tmp_path / "reg"
    docs = [make_manifest(tiny_dir, {(0, 1): tau}) for tau in (0.5, 0.6, 0.7)]
    for i, doc in enumerate(docs):
        LocalRegistry(root).publish(write_json(doc, tmp_path / f"m{i}.json"))
    registry = LocalRegistry(root)
    assert [e.digest for e in registry.versions(MODEL)] == [d["digest"] for d in docs]
    assert registry.get(MODEL).heads[0].coefficient == 0.7
    assert registry.get(MODEL, docs[0]["digest"]).heads[0].coefficient == 0.5
    details = registry.show(MODEL, docs[1]["digest"][:10])
    assert len(details.versions) == 3 and details.manifest.digest == docs[1]["digest"]
    with pytest.raises(InvalidInputError, match="at least 8"):
        registry.get(MODEL, "abc")
    with pytest.raises(NotFoundError, match="no manifest of"):
        registry.get(MODEL, "f" * 12)
    with pytest.raises(NotFoundError, match="no manifest for 'org/other'"):
        registry.get("org/other")


def test_publish_refuses_duplicates_and_conflicts(manifest_doc, tiny_dir, tmp_path):
    root = tmp_path / "reg"
    src = write_json(manifest_doc, tmp_path / "m.json")
    LocalRegistry(root).publish(src)
    before = (root / "index.json").read_bytes()
    with pytest.raises(InvalidInputError, match="already published") as info:
        LocalRegistry(root).publish(src)
    assert info.value.exit_code == 3

    # A different file stored under a digest: a conflict (exit 5), and the index is not touched.
    other = make_manifest(tiny_dir, {(1, 1): 0.3})
    path = root / manifest_relpath(MODEL, other["digest"])
    path.write_text(json.dumps(manifest_doc))
    with pytest.raises(IntegrityError, match="conflicts") as info:
        LocalRegistry(root).publish(write_json(other, tmp_path / "o.json"))
    assert info.value.exit_code == 5
    assert (root / "index.json").read_bytes() == before


def test_interrupted_publish_is_completed_by_publishing_again(manifest_doc, tmp_path):
    root = tmp_path / "reg"
    src = write_json(manifest_doc, tmp_path / "m.json")
    # The manifest file landed but the index update did not (a crash between the two renames).
    stored = root / manifest_relpath(MODEL, manifest_doc["digest"])
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps(manifest_doc))
    entry = LocalRegistry(root).publish(src)
    assert [e["digest"] for e in _index(root)["entries"]] == [entry.digest]


def test_publish_refuses_a_changed_coefficient(manifest_doc, tmp_path):
    root = tmp_path / "reg"
    src = write_json(tamper(manifest_doc), tmp_path / "t.json")
    with pytest.raises(IntegrityError, match="digest mismatch"):
        LocalRegistry(root).publish(src)
    assert not (root / "index.json").exists() and not (root / "manifests").exists()


def test_publish_checks_the_recipe_at_its_version(manifest_doc, tmp_path):
    root = tmp_path / "reg"
    doc = json.loads(json.dumps(manifest_doc))
    doc["recipe"]["version"] = "9.9.9"
    with pytest.raises(NotFoundError, match=r"recipe rope/llama 9\.9\.9 not found \(this pearzoo has rope/llama 1\.0\.0\)"):
        LocalRegistry(root).publish(write_json(seal(doc), tmp_path / "v.json"))
    doc["recipe"]["version"] = "1.0.0"
    doc["recipe"]["id"] = "rope/no-such-recipe"
    with pytest.raises(NotFoundError, match="recipe 'rope/no-such-recipe' not found"):
        LocalRegistry(root).publish(write_json(seal(doc), tmp_path / "i.json"))
    doc["recipe"]["id"] = "rope/llama"
    doc["recipe"]["settings"]["seed"] = 7  # settings that no longer hash to recipe.digest
    with pytest.raises(IntegrityError, match="recipe.settings do not match recipe.digest"):
        LocalRegistry(root).publish(write_json(seal(doc), tmp_path / "s.json"))
    assert not (root / "index.json").exists()


def test_publish_refuses_schema_violations(manifest_doc, tmp_path):
    doc = json.loads(json.dumps(manifest_doc))
    doc["heads"][0]["colour"] = "red"
    with pytest.raises(InvalidInputError, match=r"heads\.0\.colour: unknown key"):
        LocalRegistry(tmp_path / "reg").publish(write_json(seal(doc), tmp_path / "x.json"))
    with pytest.raises(NotFoundError, match="manifest not found"):
        LocalRegistry(tmp_path / "reg").publish(tmp_path / "absent.json")


@pytest.mark.parametrize("bad_id", ["../../escape", "org/../../escape", "/abs/path", "org\\name"])
def test_model_ids_that_could_escape_are_rejected(bad_id, manifest_doc, tmp_path):
    doc = json.loads(json.dumps(manifest_doc))
    doc["base"]["model_id"] = bad_id
    root = tmp_path / "deep" / "reg"
    with pytest.raises(UnsafeInputError) as info:
        LocalRegistry(root).publish(write_json(seal(doc), tmp_path / "bad.json"))
    assert info.value.exit_code == 3
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.json"]
    with pytest.raises(UnsafeInputError):
        LocalRegistry(root).get(bad_id)


def test_a_manifest_edited_in_the_registry_is_refused_on_read(manifest_doc, tmp_path):
    root = tmp_path / "reg"
    LocalRegistry(root).publish(write_json(manifest_doc, tmp_path / "m.json"))
    stored = root / manifest_relpath(MODEL, manifest_doc["digest"])
    stored.write_text(json.dumps(tamper(manifest_doc)))
    with pytest.raises(IntegrityError, match="digest mismatch") as info:
        LocalRegistry(root).get(MODEL)
    assert info.value.exit_code == 5


def test_a_registry_without_index_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="no registry index here"):
        open_registry(str(tmp_path / "nowhere")).list_models()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text('{"schema_version": 1, "entries": [{"model_id": "x"}]}')
    with pytest.raises(InvalidInputError, match=r"index.json: entries\.0\.digest: Field required"):
        open_registry(str(tmp_path / "bad")).list_models()


def _publish_all(root: str, paths: list[str]) -> None:
    for p in paths:
        LocalRegistry(root).publish(p)


def test_concurrent_publishers_all_land(tiny_dir, tmp_path):
    root = tmp_path / "reg"
    docs = [make_manifest(tiny_dir, {(0, i % 4): 0.5 + i / 100}) for i in range(16)]
    paths = [str(write_json(d, tmp_path / f"m{i}.json")) for i, d in enumerate(docs)]
    ctx = multiprocessing.get_context("fork")  # the children only do file I/O, no torch
    workers = [ctx.Process(target=_publish_all, args=(str(root), paths[w::4])) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    index = parse_index((root / "index.json").read_bytes(), source="index.json")
    assert sorted(e.digest for e in index.entries) == sorted(d["digest"] for d in docs)
    assert len({e.digest for e in index.entries}) == 16
    for d in docs:
        assert LocalRegistry(root).get(MODEL, d["digest"]).digest == d["digest"]


def test_publishing_into_a_version_1_index_keeps_its_entries_and_writes_version_2(manifest_doc, tiny_dir, tmp_path):
    root = tmp_path / "reg"
    LocalRegistry(root).publish(write_json(make_manifest(tiny_dir, {(1, 0): 0.8}), tmp_path / "old.json"))
    index = _index(root)
    for entry in index["entries"]:
        del entry["signature"]
    index["schema_version"] = 1
    (root / "index.json").write_text(json.dumps(index))  # as a pearzoo before signatures wrote it
    old_entries = LocalRegistry(root).index().entries
    assert LocalRegistry(root).index().schema_version == 1
    LocalRegistry(root).publish(write_json(manifest_doc, tmp_path / "m.json"))
    upgraded = _index(root)
    assert upgraded["schema_version"] == 2 and len(upgraded["entries"]) == 2
    assert LocalRegistry(root).index().entries[0] == old_entries[0]
    assert [e["signature"] for e in upgraded["entries"]] == [None, None]
