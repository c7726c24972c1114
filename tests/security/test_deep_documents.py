"""JSON and YAML built to exhaust the parser (deep nesting, alias bombs, huge files, odd numbers) where pearzoo reads
a manifest, a recipe or an index from a file: one line, exit 3, through the real CLI (pearzoo/document.py)."""

from __future__ import annotations

import pytest

from cli_run import assert_one_error, run_cli

DEEP_JSON = {
    "list": "[" * 100_000,
    "object": '{"a": ' * 100_000,
    "mixed-under-python-limit": '{"schema_version": 1, "base": ' + "[" * 300 + "]" * 300 + "}",
}
DEEP_YAML = {
    "flow": "[" * 100_000,
    "block": "".join(" " * i + "- \n" for i in range(0, 2000, 1)),
    "mapping": "".join(" " * i + "a:\n" for i in range(0, 3000, 1)),
}
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize("name", DEEP_JSON)
@pytest.mark.parametrize("command", ["verify", "publish", "audit"])
def test_deep_json_manifest_is_exit_3(name, command, tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text(DEEP_JSON[name])
    argv = [command, str(path)] + (["--registry", str(tmp_path / "reg")] if command == "publish" else [])
    code, stdout, err = run_cli(argv, capsys)
    assert (code, stdout) == (3, "")
    assert_one_error(err, f"{path}: nested too deeply")
    assert not (tmp_path / "reg").exists()


def test_deep_json_index_in_a_local_registry_is_exit_3(tmp_path, capsys):
    (tmp_path / "index.json").write_text("[" * 100_000)
    for argv in (["list", "--registry", str(tmp_path)], ["show", "org/m", "--registry", str(tmp_path)]):
        code, _, err = run_cli(argv, capsys)
        assert code == 3
        assert_one_error(err, f"{tmp_path / 'index.json'}: nested too deeply")


@pytest.mark.parametrize("name", DEEP_YAML)
def test_deep_yaml_recipe_is_exit_3(name, tiny_dir, tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text(DEEP_YAML[name])
    for argv in (["recipes", "validate", str(path)], ["build", "-m", str(tiny_dir), "-r", str(path), "--out", str(tmp_path / "m.json")]):
        code, _, err = run_cli(argv, capsys)
        assert code == 3, err
        assert_one_error(err, f"{path}: nested too deeply")


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)  # 9^9 = 387 million leaves once expanded
    code, _, err = run_cli(["recipes", "validate", str(path)], capsys)
    assert code == 3
    assert_one_error(err, f"{path}: line 2: invalid YAML (aliases are not allowed (a recipe never needs one))")


def test_oversized_manifest_file_is_refused_unread(tmp_path, capsys):
    path = tmp_path / "big.json"
    with open(path, "wb") as fh:
        fh.truncate(64 * 1024 * 1024 + 1)  # sparse: no disk used
    code, _, err = run_cli(["verify", str(path)], capsys)
    assert code == 3
    assert_one_error(err, f"{path}: larger than 64 MiB; not a manifest")


def test_set_override_values_nested_too_deeply(tmp_path, capsys):
    code, _, err = run_cli(["recipes", "show", "rope/llama", "--set", "train.steps=" + "[" * 100_000], capsys)
    assert code == 3
    assert_one_error(err, "--set 'train.steps=" + "[" * 100_000 + "': value is not valid YAML")
