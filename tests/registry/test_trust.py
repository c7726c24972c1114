"""`pearzoo trust add/remove/show` and `LocalRegistry.update_trust` (pearzoo/registry/local.py, cli/registry.py)."""

from __future__ import annotations

import json

from cli_run import assert_one_error, run_cli
from signing_keys import make_key_pair
from tiny_checkpoints import serve


def test_trust_add_show_remove_round_trip(tmp_path, capsys):
    _, pub_a, fp_a = make_key_pair(tmp_path / "keys", "a")
    _, pub_b, fp_b = make_key_pair(tmp_path / "keys", "b")
    reg = tmp_path / "reg"
    code, stdout, err = run_cli(["trust", "add", str(pub_a), "--name", "alice", "--registry", str(reg)], capsys)
    assert (code, err) == (0, "")
    assert stdout.splitlines() == [f"{reg}: trust policy, requires signatures", f"  {fp_a}  alice"]
    # the same key twice is listed once; a second key and --advisory
    assert run_cli(["trust", "add", str(pub_a), "--name", "again", "--registry", str(reg)], capsys)[0] == 0
    code, stdout, _ = run_cli(["trust", "add", str(pub_b), "--name", "bob", "--registry", str(reg), "--advisory", "--json"], capsys)
    policy = json.loads(stdout)
    assert code == 0 and policy["require_signature"] is False and [k["name"] for k in policy["keys"]] == ["alice", "bob"]
    assert json.loads((reg / "trust.json").read_text()) == policy

    with serve(reg) as url:  # read-only over HTTP
        code, stdout, _ = run_cli(["trust", "show", "--registry", url], capsys)
    assert code == 0 and stdout.splitlines()[1:] == [f"  {fp_a}  alice", f"  {fp_b}  bob"]

    code, stdout, _ = run_cli(["trust", "remove", fp_a[:12], "--registry", str(reg)], capsys)
    assert code == 0 and stdout.splitlines()[1:] == [f"  {fp_b}  bob"]
    code, _, err = run_cli(["trust", "remove", fp_a[:12], "--registry", str(reg)], capsys)
    assert code == 4
    assert_one_error(err, f"{reg / 'trust.json'}: no key with fingerprint {fp_a[:12]}")
    code, _, err = run_cli(["trust", "remove", fp_b, "--registry", str(reg)], capsys)
    assert code == 3
    assert_one_error(err, f"{reg / 'trust.json'}: a trust policy needs at least one key")
    assert json.loads((reg / "trust.json").read_text())["keys"][0]["name"] == "bob"  # unchanged on refusal


def test_trust_add_refuses_bad_keys_and_names(tmp_path, capsys):
    private, pub, _ = make_key_pair(tmp_path / "keys", "a")
    reg = tmp_path / "reg"
    code, _, err = run_cli(["trust", "add", str(private), "--name", "x", "--registry", str(reg)], capsys)
    assert code == 3
    assert_one_error(err, f"{private}: not a PEM public key")
    code, _, err = run_cli(["trust", "add", str(pub), "--name", "evil\n\x1b[31m", "--registry", str(reg)], capsys)
    assert code == 3 and "\x1b" not in err
    assert_one_error(err, "--name: name: String should match pattern")
    assert not (reg / "trust.json").exists()
    code, stdout, _ = run_cli(["trust", "show", "--registry", str(reg)], capsys)
    assert code == 0 and stdout.strip() == f"{reg}: no trust policy (patching from it requires no signature)"
