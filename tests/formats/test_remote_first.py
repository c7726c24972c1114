"""Remote-first patch (pearzoo/patch/resolve.py): the registry, the recipe and --out are checked before any
download; the Hub's file digests are compared with the manifest's before downloading; only the needed files
are fetched.

What runs here: huggingface_hub's offline/cache paths (the root conftest sets HF_HUB_OFFLINE and a temporary
cache), and, for the paths-info request, huggingface_hub's own client pointed (ENDPOINT, as HF_ENDPOINT sets
it) at a loopback server that answers that one documented endpoint with the documented JSON. The real Hub is
unreachable here, so the full online download path is not run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs

import pytest

from pearzoo.errors import IntegrityError, InvalidInputError, OfflineError
from pearzoo.patch.api import PatchOptions, patch_model
from pearzoo.patch.resolve import check_remote_files, fetch_patterns
from pearzoo.registry.local import LocalRegistry
from pearzoo.source import hub_reference
from tiny_checkpoints import hub_cache_layout, make_manifest, write_json

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _registry(tiny_dir, tmp_path):
    registry = tmp_path / "reg"
    LocalRegistry(registry).publish(write_json(make_manifest(tiny_dir, model_id="org/tiny", revision=COMMIT), tmp_path / "m.json"))
    return registry


def test_out_is_checked_before_the_download(tiny_dir, tmp_path, hub_cache):
    """Not cached and offline: today's order reported "not in the cache" first; --out is refused before any fetch."""
    registry = _registry(tiny_dir, tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidInputError, match="already exists"):
        patch_model(PatchOptions(model="org/tiny", registry=str(registry), out=tmp_path / "out"))
    with pytest.raises(OfflineError, match="not in the Hugging Face cache"):  # then the download is what fails
        patch_model(PatchOptions(model="org/tiny", registry=str(registry), out=tmp_path / "new"))
    assert not (hub_cache / "models--org--tiny").exists()


def test_cached_model_resolves_its_commit_from_refs_and_patches(tiny_dir, tmp_path, hub_cache):
    registry = _registry(tiny_dir, tmp_path)
    hub_cache_layout(hub_cache, "org/tiny", tiny_dir, COMMIT)
    ref = hub_reference("org/tiny", None)
    assert (ref.fetched, ref.revision, ref.path) == (False, COMMIT, hub_cache / "models--org--tiny")
    result = patch_model(PatchOptions(model="org/tiny", registry=str(registry), out=tmp_path / "out"))
    assert (result.source, result.revision, result.model_id) == ("hub", COMMIT, "org/tiny")


def test_fetch_patterns_follow_the_manifests_files():
    plain = SimpleNamespace(base=SimpleNamespace())  # schema 1: no base.files
    assert "*.safetensors" in fetch_patterns(plain)
    bound = SimpleNamespace(base=SimpleNamespace(files={"model-00001-of-00002.safetensors": "a" * 64, "model-00002-of-00002.safetensors": "b" * 64}))
    patterns = fetch_patterns(bound)
    # Only the bound weight files (a repo's consolidated.safetensors or other copies are not fetched).
    assert "*.safetensors" not in patterns
    assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "config.json", "model.safetensors.index.json"} <= set(patterns)


class _PathsInfo(BaseHTTPRequestHandler):
    files: dict[str, str] = {}
    requests: list[tuple[str, list[str]]] = []

    def do_POST(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        paths = parse_qs(body).get("paths", [])
        type(self).requests.append((self.path, paths))
        answer = [
            {"type": "file", "path": p, "size": 10, "oid": "0" * 40, "lfs": {"oid": self.files[p], "size": 10, "pointerSize": 134}}
            for p in paths if p in self.files
        ]  # fmt: skip
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _hub_stand_in(monkeypatch, files):
    import huggingface_hub.constants as hf_constants

    _PathsInfo.files, _PathsInfo.requests = files, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PathsInfo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield _PathsInfo.requests
    finally:
        server.shutdown()
        server.server_close()


def test_remote_digests_are_compared_before_downloading(monkeypatch, hub_cache):
    sha = hashlib.sha256(b"weights").hexdigest()
    manifest = SimpleNamespace(base=SimpleNamespace(files={"model.safetensors": sha}))
    source = SimpleNamespace(model_id="org/tiny", revision=COMMIT)
    with _hub_stand_in(monkeypatch, {"model.safetensors": sha}) as requests:
        assert check_remote_files(source, manifest) == 1
    assert requests == [(f"/api/models/org/tiny/paths-info/{COMMIT}", ["model.safetensors"])]
    with _hub_stand_in(monkeypatch, {"model.safetensors": "f" * 64}):
        with pytest.raises(IntegrityError) as exc:
            check_remote_files(source, manifest)
    assert str(exc.value) == (
        f"org/tiny at {COMMIT[:12]} is not the manifest's base: model.safetensors has sha256 ffffffffffff on the Hub, "
        f"the manifest binds {sha[:12]} (checked before downloading)"
    )
    with _hub_stand_in(monkeypatch, {}):
        with pytest.raises(IntegrityError, match=r"it has no model.safetensors \(checked before downloading\)"):
            check_remote_files(source, manifest)
    assert not list(hub_cache.glob("models--*"))  # nothing was downloaded


def test_offline_or_schema_1_asks_nothing():
    manifest = SimpleNamespace(base=SimpleNamespace(files={"model.safetensors": "a" * 64}))
    assert check_remote_files(SimpleNamespace(model_id="org/tiny", revision=None), manifest) == 0  # offline (conftest)
    assert check_remote_files(SimpleNamespace(model_id="org/tiny", revision=None), SimpleNamespace(base=SimpleNamespace())) == 0
