"""GGUF out under the same rules as the safetensors patch (issue #9): temp files claimed by the run's lock,
`--force` only over a GGUF pearzoo stamped, a schema-2 manifest's file sha256 checked on every byte copied,
`--sign-key` verified by the stock model_signing CLI, and a kill -9 that leaves nothing half written."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_run import assert_one_error, run_cli
from pearzoo.patch.api import PatchOptions, patch_model
from pearzoo.patch.target import TEMP_PREFIX
from signing_keys import make_key_pair
from tiny_checkpoints import manifest_document, write_json
from tiny_gguf import load_gguf_model, write_tiny_llama_gguf

HEADS = {(0, 1): 0.7132351994514465, (1, 2): 1.2805}
MODEL = "pearzoo-test/tiny-llama"

# Runs `pearzoo ARGS...` with the GGUF copy slowed down: after its first chunk it touches FLAG and sleeps, so
# the test can kill the process while the temp file is half written.
SLOW_COPY = """
import pathlib, sys, time
import pearzoo.formats.gguf as gguf
flag, real = pathlib.Path(sys.argv[1]), gguf._copy
def slow(*args, **kwargs):
    real(*args, **kwargs)
    flag.touch()
    time.sleep(120)
gguf._copy = slow
from pearzoo.cli import main
main(sys.argv[2:])
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(src: Path, dest: Path, *, files: dict[str, str] | None = None, heads=HEADS) -> Path:
    """A manifest binding `src`'s folded tensors; with `files` a schema-2 one binding those file digests."""
    from pearzoo.binding import base_digests
    from pearzoo.source import ModelSource

    model = load_gguf_model(src)
    source = ModelSource(kind="gguf", path=src.parent, model_id=MODEL, gguf_file=src.name)
    names = {f"model.layers.{layer}.self_attn.o_proj.weight" for layer, _ in heads}
    doc = manifest_document(model.config, base_digests(source, model, names), heads, model_id=MODEL, base_format="gguf", file=src.name, files=files)
    return write_json(doc, dest)


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what building the manifests printed (transformers' progress bars)
    return run_cli(argv, capsys)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


@pytest.fixture
def src(tmp_path) -> Path:
    (tmp_path / "src").mkdir()
    return write_tiny_llama_gguf(tmp_path / "src" / "tiny.gguf", "Q8_0")


def test_base_files_names_the_gguf_file_as_the_patch_looks_it_up(src):
    from pearzoo.binding import base_files
    from pearzoo.source import ModelSource

    assert base_files(ModelSource(kind="gguf", path=src.parent, model_id=MODEL, gguf_file=src.name)) == {"tiny.gguf": _sha(src)}


def test_schema2_manifest_is_checked_on_every_byte(src, tmp_path, capsys):
    good = _manifest(src, tmp_path / "good.json", files={"tiny.gguf": _sha(src)})
    out = tmp_path / "out" / "p.gguf"
    result = patch_model(PatchOptions(model=str(src), manifest=good, out=out))
    assert result.out == str(out) and out.stat().st_size == result.bytes_written
    assert _temps(out.parent) == []

    wrong = _manifest(src, tmp_path / "wrong.json", files={"tiny.gguf": "0" * 64})
    other = tmp_path / "other"
    for extra in ([], ["--dry-run"]):
        code, _, err = _cli(["patch", str(src), "--manifest", str(wrong), "--out", str(other / "p.gguf"), *extra], capsys)
        assert code == 5
        assert_one_error(err, f"tiny is not the manifest's base: weight file tiny.gguf differs (expected sha256 000000000000, found {_sha(src)[:12]})")
    assert not other.exists() or os.listdir(other) == []

    elsewhere = _manifest(src, tmp_path / "elsewhere.json", files={"model.gguf": _sha(src)})
    code, _, err = _cli(["patch", str(src), "--manifest", str(elsewhere), "--out", str(other / "p.gguf")], capsys)
    assert code == 5
    assert_one_error(err, "tiny is not the manifest's base: weight file model.gguf is missing")
    assert not other.exists() or os.listdir(other) == []


def test_a_file_that_changes_between_fold_and_copy_is_refused(src, tmp_path):
    """A schema-1 manifest binds only the folded tensors: their bytes, as the copy reads them, must be the ones folded."""
    from pearzoo.errors import IntegrityError
    from pearzoo.formats.gguf import open_gguf, write_gguf

    reader = open_gguf(src)
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_output.weight")
    out = tmp_path / "o.gguf"
    with pytest.raises(IntegrityError, match=r"tensor blk\.0\.attn_output\.weight changed while the file was read"):
        write_gguf(reader, src, out, {tensor.name: b"\0" * tensor.n_bytes}, {}, originals={tensor.name: "0" * 64})
    assert not out.exists() and _temps(tmp_path) == []


def test_truncated_source_is_one_line_and_leaves_nothing(src, tmp_path, capsys):
    manifest = _manifest(src, tmp_path / "m.json", files={"tiny.gguf": _sha(src)})
    data = src.read_bytes()
    src.write_bytes(data[:-100])
    out = tmp_path / "out" / "p.gguf"
    code, _, err = _cli(["patch", str(src), "--manifest", str(manifest), "--out", str(out)], capsys)
    assert code == 3
    assert_one_error(err, f"{src}: not a readable GGUF file (tensor ")
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_force_replaces_only_a_gguf_pearzoo_stamped(src, tmp_path, capsys):
    first = _manifest(src, tmp_path / "a.json")
    second = _manifest(src, tmp_path / "b.json", heads={(0, 3): 0.5})
    user = tmp_path / "user.gguf"
    for content in (b"not a model of pearzoo's", src.read_bytes()):  # a user file; an unpatched GGUF
        user.write_bytes(content)
        code, _, err = _cli(["patch", str(src), "--manifest", str(first), "--out", str(user), "--force"], capsys)
        assert code == 3
        assert_one_error(err, f"{user} exists and is not a GGUF file pearzoo wrote; --force replaces only those")
        assert user.read_bytes() == content
    assert _temps(tmp_path) == []

    out = tmp_path / "p.gguf"
    code, _, err = _cli(["patch", str(src), "--manifest", str(first), "--out", str(out)], capsys)
    assert code == 0, err
    code, _, err = _cli(["patch", str(src), "--manifest", str(second), "--out", str(out)], capsys)
    assert code == 3 and "already exists" in err
    code, _, err = _cli(["patch", str(src), "--manifest", str(second), "--out", str(out), "--force"], capsys)
    assert code == 0, err
    from pearzoo.formats.gguf import stamped_manifest, open_gguf

    assert stamped_manifest(open_gguf(out)) == json.loads(second.read_text())["digest"]
    assert _temps(tmp_path) == []


def test_stale_temp_file_is_reclaimed_by_its_lock_not_its_pid(src, tmp_path):
    from filelock import FileLock

    manifest = _manifest(src, tmp_path / "m.json")
    out = tmp_path / "out" / "p.gguf"
    out.parent.mkdir()
    # A dead run's temp file, named with this process's PID (alive): its lock is free, so it is reclaimed.
    dead = out.parent / f"{TEMP_PREFIX}{'a' * 12}-p.gguf"
    dead_lock = out.parent / f"{TEMP_PREFIX}{'a' * 12}.lock"
    dead.write_bytes(f"pid {os.getpid()}".encode())
    dead_lock.touch()
    # A live run elsewhere (its PID means nothing here): its lock is held, so its files stay.
    live_lock = out.parent / f"{TEMP_PREFIX}{'b' * 12}.lock"
    live = [out.parent / f"{TEMP_PREFIX}{'b' * 12}-p.gguf", out.parent / f"{TEMP_PREFIX}{'b' * 12}-p.gguf.sig"]
    held = FileLock(live_lock, timeout=0)
    held.acquire()
    try:
        for f in live:
            f.write_bytes(b"half written")
        patch_model(PatchOptions(model=str(src), manifest=manifest, out=out))
        assert not dead.exists() and not dead_lock.exists()
        assert all(f.read_bytes() == b"half written" for f in live)
    finally:
        held.release()
    assert out.is_file()


def test_sign_key_signs_the_gguf_for_the_stock_verifier(src, tmp_path, capsys):
    private, public, _ = make_key_pair(tmp_path / "keys")
    manifest = _manifest(src, tmp_path / "m.json", files={"tiny.gguf": _sha(src)})
    out = tmp_path / "out" / "p.gguf"
    result = patch_model(PatchOptions(model=str(src), manifest=manifest, out=out, sign_key=private))
    sig = tmp_path / "out" / "p.gguf.sig"
    assert result.output_signature == str(sig) and sig.is_file()
    assert sorted(os.listdir(out.parent)) == ["p.gguf", "p.gguf.sig"]

    def verify() -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(sig), "--public_key", str(public), str(out)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    done = verify()
    assert done.returncode == 0, done.stdout + done.stderr
    payload = json.loads(__import__("base64").b64decode(json.loads(sig.read_text())["dsseEnvelope"]["payload"]))
    assert payload["subject"][0]["name"] == "p.gguf"  # signed as the file's final name, not the temp's
    data = bytearray(out.read_bytes())
    data[-1] ^= 1
    out.write_bytes(bytes(data))
    assert verify().returncode != 0
    # Replacing the (stamped) output without --sign-key drops the signature that would no longer match.
    out.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 1]))
    code, _, err = _cli(["patch", str(src), "--manifest", str(manifest), "--out", str(out), "--force"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out.parent)) == ["p.gguf"]


def test_a_gguf_patch_killed_mid_write_leaves_nothing(src, tmp_path):
    manifest = _manifest(src, tmp_path / "m.json")
    out, flag = tmp_path / "out" / "p.gguf", tmp_path / "copying"
    args = ["patch", str(src), "--manifest", str(manifest), "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COPY, str(flag), *args], env=os.environ)
    try:
        deadline = time.monotonic() + 90
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), f"the patch never copied a chunk (exit {proc.poll()})"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    [temp, lock] = _temps(out.parent)
    token = lock.removeprefix(TEMP_PREFIX).removesuffix(".lock")
    assert re.fullmatch("[0-9a-f]{12}", token) and temp == f"{TEMP_PREFIX}{token}-p.gguf"
    assert 0 < (out.parent / temp).stat().st_size < src.stat().st_size  # killed while half written
    # The next patch takes the dead run's free lock, removes its temp file, and writes a complete GGUF.
    result = patch_model(PatchOptions(model=str(src), manifest=manifest, out=out))
    assert _temps(out.parent) == [] and out.stat().st_size == result.bytes_written
