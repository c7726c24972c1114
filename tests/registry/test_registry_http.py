"""pearzoo/registry/http.py: a registry served as static files from a real loopback HTTP server."""

from __future__ import annotations

import json
import shutil

import pytest

from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError, OfflineError
from pearzoo.registry import open_registry
from pearzoo.registry.base import manifest_relpath
from pearzoo.registry.http import HttpRegistry
from pearzoo.registry.local import LocalRegistry
from tiny_checkpoints import closed_port_url, make_manifest, serve, tamper, write_json

MODEL = "pearzoo-test/tiny-llama"


@pytest.fixture
def registry_dir(manifest_doc, tiny_dir, tmp_path):
    root = tmp_path / "site" / "registry"
    for i, doc in enumerate([make_manifest(tiny_dir, {(1, 0): 0.8}), manifest_doc]):
        LocalRegistry(root).publish(write_json(doc, tmp_path / f"m{i}.json"))
    return root


def test_http_reads_the_same_as_local(registry_dir, manifest_doc):
    with serve(registry_dir.parent) as url:
        remote = open_registry(url + "registry")
        assert isinstance(remote, HttpRegistry)
        local = LocalRegistry(registry_dir)
        assert remote.index() == local.index()
        assert remote.list_models() == local.list_models()
        manifest = remote.get(MODEL)
        assert manifest.digest == manifest_doc["digest"] == local.get(MODEL).digest
        assert remote.show(MODEL).manifest == manifest


def test_http_refuses_a_tampered_manifest(registry_dir, manifest_doc):
    stored = registry_dir / manifest_relpath(MODEL, manifest_doc["digest"])
    stored.write_text(json.dumps(tamper(manifest_doc)))
    with serve(registry_dir) as url:
        with pytest.raises(IntegrityError, match=r"digest mismatch .*the manifest was modified") as info:
            open_registry(url).get(MODEL)
        assert info.value.exit_code == 5
        assert str(info.value).startswith(url + "manifests/models--pearzoo-test--tiny-llama/")


def test_http_refuses_a_valid_manifest_under_the_wrong_digest(registry_dir, manifest_doc):
    # A server answering the newest manifest's path with an older, valid manifest (a rollback).
    older = open_registry(str(registry_dir)).versions(MODEL)[0]
    newest = registry_dir / manifest_relpath(MODEL, manifest_doc["digest"])
    shutil.copyfile(registry_dir / older.path, newest)
    with serve(registry_dir) as url:
        with pytest.raises(IntegrityError, match=f"holds manifest {older.digest[:12]}, not {manifest_doc['digest'][:12]}"):
            open_registry(url).get(MODEL)


def test_http_missing_files_and_unreachable_servers(registry_dir, tmp_path):
    with serve(tmp_path / "site") as url:
        with pytest.raises(NotFoundError, match=r"index\.json: no registry index here"):
            open_registry(url).list_models()
        with pytest.raises(InvalidInputError, match="is read-only"):
            open_registry(url + "registry").publish(tmp_path / "m0.json")
    url = closed_port_url()
    with pytest.raises(OfflineError, match=f"registry {url} cannot be reached") as info:
        open_registry(url).list_models()
    assert info.value.exit_code == 6 and "\n" not in str(info.value)
