"""`pearzoo publish` under kill -9 at random points, on a full disk, and into a path it cannot write: the registry
is unchanged or holds the complete entry, its index is valid, and errors are one line with exit 6."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_run import assert_one_error, run_cli
from pearzoo.registry.base import parse_index
from pearzoo.registry.local import LocalRegistry
from signing_keys import make_key_pair
from tiny_checkpoints import make_manifest, write_json

MODEL = "pearzoo-test/tiny-llama"
ROOT = Path(__file__).resolve().parents[2]
KILLS = 6  # kill points tried (the delays are drawn from a fixed seed)


def _publish_cmd(manifest: Path, registry: Path, key: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "pearzoo", "publish", str(manifest), "--registry", str(registry)]
    return cmd + (["--sign-key", str(key)] if key else [])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _check_consistent(registry: Path, before_digests: list[str], digest: str, signed: bool) -> str:
    """The registry after a kill: the index is valid and either unchanged or complete with the new entry."""
    index_path = registry / "index.json"
    index = parse_index(index_path.read_bytes(), source=str(index_path))  # valid JSON and schema, or this raises
    digests = [e.digest for e in index.entries]
    if digests == before_digests:
        return "unchanged"
    assert digests == [*before_digests, digest]
    # complete: the manifest verifies, and a signed entry's bundle is there and verifies
    reg = LocalRegistry(registry)
    entry = index.entries[-1]
    assert reg.get(MODEL, digest).digest == digest
    if signed:
        from pearzoo.signing import read_public_key

        assert entry.signature is not None
        assert reg.verify_signature(entry, [read_public_key(registry.parent / "keys" / "k.pub")]) == entry.signature.fingerprint
    leftovers = [p.name for p in registry.rglob(".*.tmp")]
    assert leftovers == [] or all(p.startswith((".index.json.", f".{digest}.")) for p in leftovers)
    return "complete"


def test_kill_9_at_random_points_of_publish_leaves_the_registry_unchanged_or_complete(tiny_dir, tmp_path):
    key, _, _ = make_key_pair(tmp_path / "keys", "k")
    registry = tmp_path / "reg"
    LocalRegistry(registry).publish(write_json(make_manifest(tiny_dir, {(1, 0): 0.8}), tmp_path / "first.json"))
    doc = make_manifest(tiny_dir)
    manifest = write_json(doc, tmp_path / "m.json")
    before = [e.digest for e in LocalRegistry(registry).index().entries]
    snapshot = tmp_path / "snapshot"
    shutil.copytree(registry, snapshot)

    # How long a full publish takes here (interpreter start included), to spread the kill points over it.
    start = time.monotonic()
    done = subprocess.run(_publish_cmd(manifest, registry, key), env=_env(), capture_output=True, text=True, timeout=120)
    full = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert _check_consistent(registry, before, doc["digest"], signed=True) == "complete"

    rng = random.Random(9)
    outcomes = []
    for i in range(KILLS):
        shutil.rmtree(registry)
        shutil.copytree(snapshot, registry)
        signed = i % 2 == 0
        proc = subprocess.Popen(_publish_cmd(manifest, registry, key if signed else None), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Most of a publish is interpreter and import start-up: aim the kills at its last third as often as not.
        delay = rng.uniform(0.6, 1.05) * full if i % 3 else rng.uniform(0.0, full)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        outcome = _check_consistent(registry, before, doc["digest"], signed=signed and proc.returncode == 0)
        if outcome == "unchanged":
            # whatever the kill left (a written manifest, a bundle, the lock) a second publish completes
            again = subprocess.run(_publish_cmd(manifest, registry, key if signed else None), env=_env(), capture_output=True, text=True, timeout=120)
            assert again.returncode == 0, again.stderr
            assert _check_consistent(registry, before, doc["digest"], signed=signed) == "complete"
        outcomes.append((proc.returncode, outcome))
    # Both halves of the claim were exercised: some publishes died with the registry unchanged.
    print("publish kill outcomes:", outcomes)
    assert any(code == -signal.SIGKILL for code, _ in outcomes), outcomes


@pytest.mark.parametrize("appears", ["json", "sig"])
def test_kill_9_the_moment_a_publish_writes_the_manifest_or_its_signature(appears, tiny_dir, tmp_path):
    """Kill points inside the writes themselves: poll for the file and SIGKILL as soon as it exists."""
    from pearzoo.registry.base import manifest_relpath, signature_relpath

    key, _, _ = make_key_pair(tmp_path / "keys", "k")
    registry = tmp_path / "reg"
    LocalRegistry(registry).publish(write_json(make_manifest(tiny_dir, {(1, 0): 0.8}), tmp_path / "first.json"))
    doc = make_manifest(tiny_dir)
    manifest = write_json(doc, tmp_path / "m.json")
    before = [e.digest for e in LocalRegistry(registry).index().entries]
    watched = registry / (manifest_relpath if appears == "json" else signature_relpath)(MODEL, doc["digest"])
    proc = subprocess.Popen(_publish_cmd(manifest, registry, key), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not watched.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    outcome = _check_consistent(registry, before, doc["digest"], signed=False)
    print(f"killed after {watched.name} appeared: exit {proc.returncode}, registry {outcome}")
    if outcome == "unchanged":
        again = subprocess.run(_publish_cmd(manifest, registry, key), env=_env(), capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
    assert _check_consistent(registry, before, doc["digest"], signed=True) == "complete"


def test_publish_into_a_path_it_cannot_create_is_exit_6(manifest_doc, tmp_path, capsys):
    manifest = write_json(manifest_doc, tmp_path / "m.json")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, stdout, err = run_cli(["publish", str(manifest), "--registry", str(blocker / "reg")], capsys)
    assert (code, stdout) == (6, "")
    assert_one_error(err, f"{blocker / 'reg'}: cannot write: Not a directory")


def test_publish_on_a_full_disk_is_exit_6_and_leaves_the_index_valid(manifest_doc, tmp_path):
    """A real full file system: a 64 kB tmpfs in a private mount namespace (skipped where namespaces are off)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not available")
    manifest = write_json(manifest_doc, tmp_path / "m.json")
    mount = tmp_path / "small"
    mount.mkdir()
    filler = "dd if=/dev/zero of={m}/fill bs=1k count=200 2>/dev/null; rm -f {m}/fill.keep".format(m=mount)
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {mount} || exit 97; "
        f"mkdir {mount}/reg && cp {tmp_path}/index.json {mount}/reg/index.json; "
        f"{filler}; "
        f"{sys.executable} -m pearzoo publish {manifest} --registry {mount}/reg; echo rc=$?; "
        f"{sys.executable} -c 'import sys; from pearzoo.registry.base import parse_index; "
        f"parse_index(open(sys.argv[1], \"rb\").read(), source=\"i\"); print(\"index ok\")' {mount}/reg/index.json"
    )
    (tmp_path / "index.json").write_text('{"schema_version": 1, "entries": []}\n')
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    if result.returncode == 97 or "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.skip(f"no private tmpfs here: {result.stderr.strip()[:100]}")
    assert result.stdout.splitlines() == ["rc=6", "index ok"], result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {mount}/reg: no space left to write it (No space left on device)"], result.stderr
    assert "Traceback" not in result.stderr
