"""A hostile static-HTTP registry on loopback (pearzoo/registry/http.py, base.py, cli/registry.py): deep nesting,
slow drip, huge bodies, redirects, broken HTTP, and ids or fields that try to inject paths, lines or terminal
escapes into `pearzoo list` / `show` output. Every case ends in one stderr line with a documented exit code, or
(where the data is valid but hostile) exit 0 with output that stays inert, and every case is bounded in time."""

from __future__ import annotations

import json

import pytest

from cli_run import assert_one_error, run_cli
from hostile_server import body, drip, elapsed, hostile, huge, raw, self_signed_cert, stall
from pearzoo.manifest.io import parse_manifest, seal
from pearzoo.registry.base import Index, entry_for, manifest_relpath, render_index

DEADLINE = 1.5  # the whole-request deadline the tests run under (the default is 60 s)
BOUND = 8.0  # each case, including every request it makes, ends well within this
MODEL = "pearzoo-test/tiny-llama"


@pytest.fixture(autouse=True)
def _short_deadline(monkeypatch):
    import pearzoo.registry.http as http

    monkeypatch.setattr(http, "DEADLINE_S", DEADLINE)


def _entry(**change) -> dict:
    entry = {
        "model_id": MODEL, "digest": "a" * 64, "recipe": "rope/llama", "recipe_version": "1.0.0",
        "model_type": "llama", "revision": None, "heads": 3, "published": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    entry.update(change)
    return entry


def _index(*entries: dict, **top) -> bytes:
    return json.dumps({"schema_version": 2, "entries": list(entries), **top}).encode()


HEADER = b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n"

# (id, index.json behaviour, exit code, start of the error message after "error: ")
INDEX_CASES = [
    ("deep-list", body(b"[" * 200_000), 3, "{url}index.json: nested too deeply"),
    ("deep-object", body(b'{"a":' * 100_000), 3, "{url}index.json: nested too deeply"),
    ("deep-under-the-limit-of-python", body(b'{"schema_version": 2, "entries": ' + b"[" * 200 + b"]" * 200 + b"}"), 3, "{url}index.json: nested too deeply (more than 64 levels)"),
    ("not-json", body(b"<html>hello</html>"), 3, "{url}index.json: not valid JSON (line 1)"),
    ("not-utf8", body(b'{"entries": "\xff\xfe"}'), 3, "{url}index.json: not UTF-8 text (byte 13)"),
    ("a-list", body(b"[]"), 3, "{url}index.json: an index must be a JSON object"),
    ("unknown-version", body(b'{"schema_version": 99, "entries": []}'), 3, "{url}index.json: schema_version: 99 is not supported (this pearzoo reads 1 and 2)"),
    ("version-true", body(b'{"schema_version": true, "entries": []}'), 3, "{url}index.json: schema_version: True is not supported"),
    ("extra-key", body(_index(evil=1)), 3, "{url}index.json: evil: unknown key"),
    ("entries-null", body(b'{"schema_version": 2, "entries": null}'), 3, "{url}index.json: entries: Input should be a valid list"),
    ("id-with-newline-and-ansi", body(_index(_entry(model_id="org/a\n\x1b[31merror: fake"))), 3, "{url}index.json: entries.0.model_id: Value error, model id 'org/a\\n\\x1b[31merror: fake' is not a valid Hub id"),
    ("id-path-traversal", body(_index(_entry(model_id="../../etc/passwd"))), 3, "{url}index.json: entries.0.model_id: Value error, model id '../../etc/passwd' is not allowed"),
    ("id-absolute", body(_index(_entry(model_id="/etc/passwd"))), 3, "{url}index.json: entries.0.model_id: Value error, model id '/etc/passwd' is not allowed"),
    ("id-bidi-override", body(_index(_entry(model_id="org/abc\u202edcba"))), 3, "{url}index.json: entries.0.model_id: Value error, model id 'org/abc\\u202edcba' is not a valid Hub id"),
    ("id-too-long", body(_index(_entry(model_id="org/" + "a" * 300))), 3, "{url}index.json: entries.0.model_id: Value error, longer than 200 characters"),
    ("recipe-with-newline", body(_index(_entry(recipe="rope/llama\nfake"))), 3, "{url}index.json: entries.0.recipe: String should match pattern"),
    ("published-with-escape", body(_index(_entry(published="\x1b]0;owned\x07"))), 3, "{url}index.json: entries.0.published: String should match pattern"),
    ("model-type-with-escape", body(_index(_entry(model_type="llama\x1b[2J"))), 3, "{url}index.json: entries.0.model_type: String should match pattern"),
    ("digest-path", body(_index(_entry(digest="../../../../etc/passwd"))), 3, "{url}index.json: entries.0.digest: String should match pattern"),
    ("heads-4400-digits", body(b'{"schema_version": 2, "entries": [{"heads": ' + b"9" * 4400 + b"}]}"), 3, "{url}index.json: not valid JSON: "),
    ("heads-nan", body(_index(_entry()).replace(b'"heads": 3', b'"heads": NaN')), 3, "{url}index.json: entries.0.heads: Input should be a finite number"),
    ("signature-bad-fingerprint", body(_index(_entry(signature={"method": "key", "fingerprint": "x"}))), 3, "{url}index.json: entries.0.signature.fingerprint: String should match pattern"),
    ("huge-body", huge(65 * 1024 * 1024), 6, "{url}index.json: larger than 64 MiB; not a registry file"),
    ("slow-drip-body", drip(HEADER), 6, "registry {url} did not deliver {url}index.json within 1.5 s"),
    ("slow-drip-headers", drip(b"HTTP/1.0 200 OK\r\n", byte=b"X"), 6, "registry {url} did not deliver {url}index.json within 1.5 s"),
    ("stall", stall(), 6, "registry {url} did not deliver {url}index.json within 1.5 s"),
    ("redirect-elsewhere", body(b"", status="302 Found", headers="Location: http://127.0.0.1:9/evil/index.json\r\n"), 6, "{url}index.json: the registry redirects (HTTP 302) to http://127.0.0.1:9/evil/index.json; pearzoo does not follow redirects"),
    ("redirect-loop", body(b"", status="301 Moved", headers="Location: /index.json\r\n"), 6, "{url}index.json: the registry redirects (HTTP 301) to /index.json"),
    ("redirect-escape-in-location", body(b"", status="302 Found", headers="Location: /x\x1b[31m\r\n"), 6, "{url}index.json: the registry redirects (HTTP 302) to /x\\x1b[31m"),
    ("status-500-ansi-reason", raw(b"HTTP/1.0 500 \x1b[31mboom\r\nContent-Length: 0\r\n\r\n"), 6, "{url}index.json: the registry answered HTTP 500 \\x1b[31mboom"),
    ("garbage-status-line", raw(b"garbage\r\n\r\n"), 6, "registry {url} cannot be read: BadStatusLine"),
    ("closes-at-once", raw(b""), 6, "registry {url} cannot be read: RemoteDisconnected"),
    ("truncated-body", raw(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n{\"schema_version\""), 6, "registry {url} cannot be read: {url}index.json ended after 17 of 1000 bytes"),
    ("header-flood", raw(b"HTTP/1.0 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"\r\n{}"), 6, "registry {url} cannot be read: HTTPException"),
]


@pytest.mark.parametrize("case", INDEX_CASES, ids=[c[0] for c in INDEX_CASES])
def test_hostile_index_over_http_list_and_patch(case, tmp_path, capsys):
    _, behaviour, exit_code, message = case
    with hostile({"/index.json": behaviour, "/trust.json": body(b"", status="404 Not Found")}) as (url, hits):
        (code, stdout, err), seconds = elapsed(lambda: run_cli(["list", "--registry", url], capsys))
        assert seconds < BOUND
        assert (code, stdout) == (exit_code, ""), err
        assert_one_error(err, message.format(url=url))
        assert "\x1b" not in err and "\x07" not in err
        assert all(h == "/index.json" for h in hits)  # no redirect was followed
        model = tmp_path / "tiny"
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "llama"}')
        (model / "model.safetensors").write_bytes(b"")
        (code, stdout, err), seconds = elapsed(lambda: run_cli(["patch", str(model), "--registry", url, "--out", str(tmp_path / "o")], capsys))
    assert seconds < BOUND and code == exit_code and not (tmp_path / "o").exists()
    assert_one_error(err, "")


@pytest.fixture
def hostile_manifest(manifest_doc) -> dict:
    """A valid, sealed manifest whose free-text fields try to write to the terminal."""
    doc = json.loads(json.dumps(manifest_doc))
    doc["recipe"]["overrides"] = ["locate.k=3\n\x1b[2J\x1b[Herror: everything is fine", "\u202etxt.exe"]
    doc["base"]["origin"] = "pypi\r\x1b]0;owned\x07"
    return seal(doc)


def test_show_keeps_hostile_manifest_text_inert(hostile_manifest, capsys):
    manifest = parse_manifest(hostile_manifest, source="m")
    index = render_index(Index(entries=[entry_for(manifest, "2026-01-01T00:00:00+00:00")])).encode()
    routes = {"/index.json": body(index), "/" + manifest_relpath(MODEL, manifest.digest): body(json.dumps(hostile_manifest).encode())}
    with hostile(routes) as (url, _):
        code, stdout, err = run_cli(["show", MODEL, "--registry", url], capsys)
        assert (code, err) == (0, "")
        assert not any(c in stdout for c in "\x1b\x07\r\u202e")
        lines = stdout.splitlines()
        assert len(lines) == 6 and lines[0] == f"{MODEL}: 1 version(s), newest last"
        assert lines[2] == "base: pearzoo-test/tiny-llama (safetensors from pypi\\r\\x1b]0;owned\\x07, float32)"
        assert lines[3] == "recipe: rope/llama 1.0.0 (--set locate.k=3\\n\\x1b[2J\\x1b[Herror: everything is fine \\u202etxt.exe)"
        # --json keeps the exact text (JSON escapes it) so the manifest still matches its digest
        code, stdout, _ = run_cli(["show", MODEL, "--registry", url, "--json"], capsys)
        assert code == 0 and "\x1b" not in stdout
        assert json.loads(stdout)["manifest"]["recipe"]["overrides"] == hostile_manifest["recipe"]["overrides"]


MANIFEST_CASES = [
    ("deep", body(b"[" * 200_000), 5, "{src}: nested too deeply (more than 64 levels): the stored manifest is damaged"),
    ("not-json", body(b"\x00\x01"), 5, "{src}: not valid JSON (line 1): the stored manifest is damaged"),
    ("slow-drip", drip(HEADER), 6, "registry {url} did not deliver {src} within 1.5 s"),
    ("huge", huge(65 * 1024 * 1024), 6, "{src}: larger than 64 MiB; not a registry file"),
    ("redirect", body(b"", status="307 Temporary Redirect", headers="Location: http://127.0.0.1:9/m.json\r\n"), 6, "{src}: the registry redirects (HTTP 307)"),
    ("other-manifest", None, 5, "{src}: holds manifest "),
]


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_hostile_manifest_over_http_show(case, manifest_doc, tiny_dir, capsys):
    from tiny_checkpoints import make_manifest

    _, behaviour, exit_code, message = case
    manifest = parse_manifest(manifest_doc, source="m")
    relpath = manifest_relpath(MODEL, manifest.digest)
    if behaviour is None:
        behaviour = body(json.dumps(make_manifest(tiny_dir, {(1, 0): 0.8})).encode())
    index = render_index(Index(entries=[entry_for(manifest, "2026-01-01T00:00:00+00:00")])).encode()
    with hostile({"/index.json": body(index), "/" + relpath: behaviour}) as (url, _):
        (code, stdout, err), seconds = elapsed(lambda: run_cli(["show", MODEL, "--registry", url], capsys))
    assert seconds < BOUND and (code, stdout) == (exit_code, ""), err
    assert_one_error(err, message.format(url=url, src=url + relpath))


def test_the_deadline_covers_the_whole_request_not_each_read(capsys):
    # One byte every 0.3 s: each read returns long before any per-read timeout, the request never ends.
    with hostile({"/index.json": drip(HEADER, every=0.3)}) as (url, _):
        from pearzoo.errors import OfflineError
        from pearzoo.registry.http import HttpRegistry

        with pytest.raises(OfflineError) as info:
            _, seconds = elapsed(lambda: HttpRegistry(url, deadline=1.0).index())
        assert "within 1 s" in str(info.value)
        _, seconds = elapsed(lambda: pytest.raises(OfflineError, HttpRegistry(url, deadline=1.0).index))
    assert 0.9 < seconds < 3.0


def test_https_gets_the_same_deadline_and_checks_certificates(tmp_path, monkeypatch, capsys):
    cert, key = self_signed_cert(tmp_path)
    index = _index(_entry())
    with hostile({"/index.json": body(index)}, tls=(cert, key)) as (url, _):
        # not trusted: a certificate error, one line, exit 6
        code, _, err = run_cli(["list", "--registry", url], capsys)
        assert code == 6
        assert_one_error(err, f"registry {url} cannot be reached: [SSL: CERTIFICATE_VERIFY_FAILED]")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        code, stdout, err = run_cli(["list", "--registry", url], capsys)
        assert (code, err) == (0, "") and stdout.splitlines()[1].startswith(MODEL)
    with hostile({"/index.json": drip(HEADER)}, tls=(cert, key)) as (url, _):
        (code, _, err), seconds = elapsed(lambda: run_cli(["list", "--registry", url], capsys))
    assert code == 6 and 1.4 < seconds < BOUND
    assert_one_error(err, f"registry {url} did not deliver {url}index.json within 1.5 s")
