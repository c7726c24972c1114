"""Signatures end to end: publish --sign-key, verify --public-key, patch --require-signature / --sign-key, a
registry's trust.json, and the stock `model_signing` CLI accepting what pearzoo signs (pearzoo/signing.py,
pearzoo/trust.py, pearzoo/registry)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli_run import assert_one_error, run_cli
from pearzoo.registry.base import manifest_relpath, signature_relpath
from signing_keys import make_key_pair
from tiny_checkpoints import make_manifest, serve, tree_state, write_json

MODEL = "pearzoo-test/tiny-llama"


def model_signing_verify(target: Path, signature: Path, public_key: Path) -> subprocess.CompletedProcess:
    """The unchanged `model_signing verify key` command, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(signature), "--public_key", str(public_key), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def keys(tmp_path):
    return {"a": make_key_pair(tmp_path / "keys", "a"), "b": make_key_pair(tmp_path / "keys", "b")}


@pytest.fixture
def signed_registry(manifest_doc, tmp_path, keys, capsys):
    src = write_json(manifest_doc, tmp_path / "m.json")
    root = tmp_path / "reg"
    code, stdout, err = run_cli(["publish", str(src), "--registry", str(root), "--sign-key", str(keys["a"][0]), "--json"], capsys)
    assert (code, err) == (0, "")
    return root, json.loads(stdout)


def test_publish_signs_the_stored_manifest_and_the_index_records_the_key(signed_registry, manifest_doc, keys, capsys):
    root, entry = signed_registry
    digest = manifest_doc["digest"]
    assert entry["signature"] == {"method": "key", "fingerprint": keys["a"][2]}
    index = json.loads((root / "index.json").read_text())
    assert index["schema_version"] == 2 and index["entries"][0]["signature"]["fingerprint"] == keys["a"][2]
    stored = root / manifest_relpath(MODEL, digest)
    sig = root / signature_relpath(MODEL, digest)
    assert sig.name == f"{digest}.sig" and sig.parent == stored.parent

    # pearzoo verify: default signature path is <digest>.sig beside the file
    code, stdout, err = run_cli(["verify", str(stored), "--public-key", str(keys["a"][1])], capsys)
    assert (code, err) == (0, "")
    assert stdout.strip().endswith(f"digest {digest}, signed by key {keys['a'][2][:12]}")

    # the stock tool accepts the bundle over the manifest file, and refuses it under the other key
    ok = model_signing_verify(stored, sig, keys["a"][1])
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stdout + ok.stderr
    bad = model_signing_verify(stored, sig, keys["b"][1])
    assert bad.returncode == 1, bad.stdout + bad.stderr

    # list and show say it is signed
    code, stdout, _ = run_cli(["list", "--registry", str(root)], capsys)
    assert code == 0 and stdout.splitlines()[1].split()[3] == "yes"
    code, stdout, _ = run_cli(["show", MODEL, "--registry", str(root)], capsys)
    assert code == 0 and stdout.splitlines()[1].endswith(f"signed {keys['a'][2][:12]}")


def test_verify_refuses_another_key_an_unsigned_file_and_changed_bytes(signed_registry, manifest_doc, keys, tmp_path, capsys):
    root, _ = signed_registry
    stored = root / manifest_relpath(MODEL, manifest_doc["digest"])
    code, _, err = run_cli(["verify", str(stored), "--public-key", str(keys["b"][1])], capsys)
    assert code == 5
    assert_one_error(err, f"{stored.with_suffix('.sig')}: signed by key {keys['a'][2][:12]}, which is not a trusted key ({keys['b'][2][:12]})")

    # two keys given: either may have signed
    code, _, err = run_cli(["verify", str(stored), "--public-key", str(keys["b"][1]), "--public-key", str(keys["a"][1])], capsys)
    assert (code, err) == (0, "")

    unsigned = write_json(manifest_doc, tmp_path / "plain.json")
    code, _, err = run_cli(["verify", str(unsigned), "--public-key", str(keys["a"][1])], capsys)
    assert code == 5
    assert_one_error(err, f"{unsigned}: not signed (no signature at {tmp_path / 'plain.sig'})")

    # same JSON content, other bytes (re-indented): the digest still matches, the signature does not
    reformatted = tmp_path / "re.json"
    reformatted.write_text(json.dumps(manifest_doc))
    code, _, err = run_cli(["verify", str(reformatted), "--public-key", str(keys["a"][1]), "--signature", str(stored.with_suffix(".sig"))], capsys)
    assert code == 5
    assert_one_error(err, f"{stored.with_suffix('.sig')}: signature does not verify: the bytes are not the ones signed")

    garbage = tmp_path / "garbage.sig"
    garbage.write_text('{"verificationMaterial": {"publicKey": {"hint": "' + keys["a"][2] + '"}}, "dsseEnvelope": {}}')
    code, _, err = run_cli(["verify", str(stored), "--public-key", str(keys["a"][1]), "--signature", str(garbage)], capsys)
    assert code == 5
    assert_one_error(err, f"{garbage}: signature does not verify: ")

    code, _, err = run_cli(["verify", str(stored), "--signature", str(garbage)], capsys)
    assert code == 2 and "--signature needs --public-key" in err

    not_a_key = tmp_path / "nokey.pub"
    not_a_key.write_text("hello")
    code, _, err = run_cli(["verify", str(stored), "--public-key", str(not_a_key)], capsys)
    assert code == 3
    assert_one_error(err, f"{not_a_key}: not a PEM public key")


@pytest.fixture
def manifest_file(tiny_dir, tmp_path):
    return write_json(make_manifest(tiny_dir), tmp_path / "m.json")


def _sign_file(path: Path, key: Path) -> Path:
    from pearzoo.signing import sign_path, signature_path_for

    sign_path(path, key, signature_path_for(path))
    return signature_path_for(path)


def test_patch_require_signature_refuses_unsigned_and_other_keys_and_writes_nothing(tiny_dir, manifest_file, keys, tmp_path, capsys):
    out = tmp_path / "out"
    before = tree_state(tmp_path)
    code, _, err = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest_file), "--out", str(out), "--require-signature", "--public-key", str(keys["a"][1])], capsys)
    assert code == 5
    assert_one_error(err, f"{manifest_file}: not signed (no m.sig beside it); a signature is required")
    assert tree_state(tmp_path) == before

    _sign_file(manifest_file, keys["b"][0])
    before = tree_state(tmp_path)
    code, _, err = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest_file), "--out", str(out), "--public-key", str(keys["a"][1])], capsys)
    assert code == 5
    assert_one_error(err, f"{tmp_path / 'm.sig'}: signed by key {keys['b'][2][:12]}, which is not a trusted key ({keys['a'][2][:12]})")
    assert tree_state(tmp_path) == before

    code, _, err = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest_file), "--out", str(out), "--require-signature"], capsys)
    assert code == 3
    assert_one_error(err, "--require-signature: no public key to check the signature with")

    code, stdout, err = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest_file), "--out", str(out), "--public-key", str(keys["b"][1]), "--json"], capsys)
    assert (code, err) == (0, "")
    assert json.loads(stdout)["signed_by"] == keys["b"][2] and (out / "config.json").is_file()


def test_patch_sign_key_output_verifies_with_the_model_signing_cli(tiny_dir, manifest_file, keys, tmp_path, capsys):
    out = tmp_path / "signed-out"
    code, stdout, err = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest_file), "--out", str(out), "--sign-key", str(keys["a"][0])], capsys)
    assert (code, err) == (0, "")
    assert stdout.splitlines()[-1] == f"signed: {out / 'model.sig'}"
    ok = model_signing_verify(out, out / "model.sig", keys["a"][1])
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stdout + ok.stderr
    wrong_key = model_signing_verify(out, out / "model.sig", keys["b"][1])
    assert wrong_key.returncode == 1
    # one byte of a shard changed after signing: the stock verifier refuses the folder
    shard = out / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    tampered = model_signing_verify(out, out / "model.sig", keys["a"][1])
    assert tampered.returncode == 1 and "model.safetensors" in tampered.stdout + tampered.stderr

    # a key that cannot sign fails before anything is written
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    code, _, err = run_cli(["patch", str(tiny_dir), "--manifest", str(manifest_file), "--out", str(tmp_path / "never"), "--sign-key", str(bad)], capsys)
    assert code == 3 and not (tmp_path / "never").exists()
    assert_one_error(err, f"{bad}: not an unencrypted PEM private key")


def _trust(root: Path, *public_keys: Path, require: bool = True) -> None:
    policy = {
        "schema_version": 1,
        "require_signature": require,
        "keys": [{"name": f"key {i}", "public_key": p.read_text()} for i, p in enumerate(public_keys)],
    }
    (root / "trust.json").write_text(json.dumps(policy, indent=2))


def _registry_with_model(local: Path, tmp_path: Path, key: Path | None) -> Path:
    from pearzoo.registry.local import LocalRegistry

    root = tmp_path / "site" / "reg"
    tmp_path.mkdir(parents=True, exist_ok=True)
    LocalRegistry(root).publish(write_json(make_manifest(local, model_id="tiny"), tmp_path / "m.json"), sign_key=key)
    return root


@pytest.mark.parametrize("served", [False, True], ids=["directory", "http"])
def test_a_registry_trust_policy_requires_its_keys_by_default(served, tiny_dir, keys, tmp_path, capsys):
    import shutil

    local = tmp_path / "models" / "tiny"  # a local directory named like the registry's model id
    shutil.copytree(tiny_dir, local)
    root = _registry_with_model(local, tmp_path, keys["b"][0])  # signed, but by a key the policy does not list
    _trust(root, keys["a"][1])

    def patch(registry: str, *extra: str) -> tuple[int, str, str]:
        return run_cli(["patch", str(local), "--registry", registry, "--out", str(tmp_path / "o"), "--dry-run", *extra], capsys)

    if served:
        with serve(root) as url:
            code, _, err = patch(url)
            code_off, _, err_off = patch(url, "--no-require-signature")
    else:
        code, _, err = patch(str(root))
        code_off, _, err_off = patch(str(root), "--no-require-signature")
    assert code == 5
    assert f"signed by key {keys['b'][2][:12]}, which is not a trusted key ({keys['a'][2][:12]})" in err
    assert_one_error(err, "")
    assert code_off == 0 and "requires signed manifests; --no-require-signature skips the check" in err_off

    _trust(root, keys["a"][1], keys["b"][1])
    code, stdout, err = patch(str(root), "--json")
    assert (code, err) == (0, "") and json.loads(stdout)["signed_by"] == keys["b"][2]

    # an advisory policy (require_signature: false) checks only when asked
    unsigned_root = _registry_with_model(local, tmp_path / "u", None)
    _trust(unsigned_root, keys["a"][1], require=False)
    assert patch(str(unsigned_root))[0] == 0
    code, _, err = patch(str(unsigned_root), "--require-signature")
    assert code == 5 and "is not signed" in err

    # a policy that does not validate is an error, never "no policy"
    (unsigned_root / "trust.json").write_text('{"schema_version": 1, "keys": [{"name": "x", "public_key": "nope"}]}')
    code, _, err = patch(str(unsigned_root))
    assert code == 3
    assert_one_error(err, f"{unsigned_root / 'trust.json'}: keys.0.public_key: not a PEM public key")


def test_a_manifest_built_in_this_run_is_refused_when_a_signature_is_required(manifest_doc, keys):
    from pearzoo.errors import IntegrityError
    from pearzoo.manifest.io import parse_manifest
    from pearzoo.trust import check_manifest_signature

    manifest = parse_manifest(manifest_doc, source="m")
    assert check_manifest_signature(manifest, origin="memory") is None  # nothing required, nothing checked
    with pytest.raises(IntegrityError, match=f"^manifest {manifest.digest[:12]} was built in this run and is not signed"):
        check_manifest_signature(manifest, origin="memory", public_keys=[keys["a"][1]])
