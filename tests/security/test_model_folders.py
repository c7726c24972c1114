"""Hostile and broken model folders against `pearzoo patch` (issue #9: confinement, completeness, no traceback).

Each case starts from a copy of a real sharded tiny Llama (several safetensors shards and an index), breaks
one thing as an attacker or a failed download would, and runs the CLI through its real error boundary. Every
case asserts the exit code, one `error:` line on stderr (and at most a hint), nothing on stdout, no output
folder and no temp folder left, nothing written anywhere else in the workspace, and the source unchanged.
The manifest is sealed over the intact model first (schema 2: every weight file bound), as a user who
downloaded a good manifest and a bad model would have it.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from cli_run import assert_one_error, run_cli
from pearzoo.patch.write import TEMP_PREFIX
from tiny_checkpoints import make_manifest, save_tiny_llama, tree_state, write_json

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("pristine") / "tiny-llama", max_shard_size="60KB")


@pytest.fixture(scope="module")
def sealed(pristine: Path) -> dict:
    return make_manifest(pristine)


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8 : 8 + n])


def _rewrite_header(path: Path, change: Callable[[dict], None]) -> None:
    data = path.read_bytes()
    n, header = _header(path)
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _index_points_at(folder: Path, target: str) -> None:
    index = json.loads((folder / INDEX).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = target
    (folder / INDEX).write_text(json.dumps(index))


def _traversal(folder: Path) -> None:
    # The case: a weight_map entry pointing at ../shards/m.safetensors, which exists and is valid.
    shards = folder.parent / "shards"
    shards.mkdir()
    shutil.copy(_shards(folder)[0], shards / "m.safetensors")
    _index_points_at(folder, "../shards/m.safetensors")


def _symlink_out(name: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        outside = folder.parent / f"outside-{name}"
        shutil.copy(folder / name, outside)
        (folder / name).unlink()
        (folder / name).symlink_to(outside)

    return mutate


def _truncate_last(folder: Path) -> None:
    last = _shards(folder)[-1]
    last.write_bytes(last.read_bytes()[:-100])


def _flip_unfolded_tensor(folder: Path) -> None:
    # A bit flipped in a tensor the manifest does not fold (an MLP weight of layer 1): the file digest catches it.
    for shard in _shards(folder):
        n, header = _header(shard)
        if "model.layers.1.mlp.down_proj.weight" in header:
            begin, _ = header["model.layers.1.mlp.down_proj.weight"]["data_offsets"]
            data = bytearray(shard.read_bytes())
            data[8 + n + begin + 5] ^= 0x10
            shard.write_bytes(bytes(data))
            return
    raise AssertionError("no shard holds the MLP weight")


def _config(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config = change(config) or config
        (folder / "config.json").write_text(json.dumps(config))

    return mutate


def _raw(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def _first_shard(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda folder: _rewrite_header(_shards(folder)[0], change)


def _shift_offsets(header: dict) -> None:
    name = next(k for k in header if k != "__metadata__")
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b + 2, e + 2]


def _first_entry(key: str, value: object) -> Callable[[dict], None]:
    def change(header: dict) -> None:
        header[next(k for k in header if k != "__metadata__")][key] = value

    return change


def _shard_name(folder: Path) -> str:
    return _shards(folder)[0].name


# (id, mutation, exit code, start of the error line; {src} is the model folder, {shard}/{last} shard paths)
CASES = [
    ("index-traversal", _traversal, 3, "{src}/model.safetensors.index.json: weight_map: '../shards/m.safetensors' is not a file name"),
    ("index-absolute-path", lambda f: _index_points_at(f, "/etc/passwd"), 3, "{src}/model.safetensors.index.json: weight_map: '/etc/passwd' is not a file name"),
    ("index-dotdot", lambda f: _index_points_at(f, ".."), 3, "{src}/model.safetensors.index.json: weight_map: '..' is not a file name"),
    ("index-missing-shard", lambda f: _index_points_at(f, "nope.safetensors"), 4, "{src}/nope.safetensors: no such file"),
    ("index-not-json", _raw(INDEX, b"{not json"), 3, "{src}/model.safetensors.index.json: not a valid safetensors index"),
    ("index-weight-map-list", _raw(INDEX, b'{"weight_map": ["a"]}'), 3, "{src}/model.safetensors.index.json: not a valid safetensors index"),
    ("index-deep-nesting", _raw(INDEX, b"[" * 100_000 + b"]" * 100_000), 3, "{src}/model.safetensors.index.json: not a valid safetensors index"),
    ("index-symlink-out", _symlink_out(INDEX), 3, "{src}/model.safetensors.index.json resolves to"),
    ("shard-symlink-out", lambda f: _symlink_out(_shard_name(f))(f), 3, "{shard} resolves to"),
    ("config-symlink-out", _symlink_out("config.json"), 3, "{src}/config.json resolves to"),
    ("tokenizer-symlink-out", _symlink_out("tokenizer_config.json"), 3, "{src}/tokenizer_config.json resolves to"),
    ("shard-truncated-100-bytes", _truncate_last, 5, "{last}: truncated or corrupt safetensors file (truncated: the tensors end at"),
    ("shard-empty", lambda f: _shards(f)[-1].write_bytes(b""), 5, "{last}: truncated or corrupt safetensors file (0 bytes)"),
    ("shard-garbage", lambda f: _shards(f)[0].write_bytes(os.urandom(4096)), 5, "{shard}: truncated or corrupt safetensors file"),
    ("shard-header-not-json", lambda f: _shards(f)[0].write_bytes(struct.pack("<Q", 4) + b"{{{{" + b"\0" * 64), 5, "{shard}: truncated or corrupt safetensors file (header is not JSON)"),
    ("shard-header-huge", lambda f: _shards(f)[0].write_bytes(struct.pack("<Q", 2**62) + b"{}"), 5, "{shard}: truncated or corrupt safetensors file (header of"),
    ("shard-header-list", lambda f: _shards(f)[0].write_bytes(struct.pack("<Q", 2) + b"[]"), 5, "{shard}: truncated or corrupt safetensors file (header is not a JSON object)"),
    ("shard-offsets-shifted", _first_shard(_shift_offsets), 5, "{shard}: truncated or corrupt safetensors file"),
    ("shard-unknown-dtype", _first_shard(_first_entry("dtype", "F128")), 5, "{shard}: truncated or corrupt safetensors file (tensor"),
    ("shard-shape-strings", _first_shard(_first_entry("shape", ["64", "64"])), 5, "{shard}: truncated or corrupt safetensors file (tensor"),
    ("shard-offsets-negative", _first_shard(_first_entry("data_offsets", [-8, 0])), 5, "{shard}: truncated or corrupt safetensors file (tensor"),
    ("shard-metadata-not-strings", _first_shard(lambda h: h.__setitem__("__metadata__", {"format": 1})), 5, "{shard}: truncated or corrupt safetensors file (__metadata__"),
    ("shard-trailing-bytes", lambda f: _shards(f)[0].write_bytes(_shards(f)[0].read_bytes() + b"x" * 64), 5, "{shard}: truncated or corrupt safetensors file (trailing bytes"),
    ("bit-flip-in-unfolded-mlp", _flip_unfolded_tensor, 5, "tiny-llama is not the manifest's base: weight file"),
    ("config-heads-a-string", _config(lambda c: c.__setitem__("num_attention_heads", "four")), 3, "{src}/config.json: num_attention_heads must be a whole number, got 'four'"),
    ("config-layers-null", _config(lambda c: c.__setitem__("num_hidden_layers", None)), 3, "{src}/config.json: config has none of num_hidden_layers"),
    ("config-head-dim-a-list", _config(lambda c: c.__setitem__("head_dim", [16])), 3, "{src}/config.json: head_dim must be a whole number, got '[16]'"),
    ("config-not-json", _raw("config.json", b"\xff\xfe not json"), 3, "{src}/config.json: not a readable JSON config"),
    ("config-a-list", _raw("config.json", b"[1, 2]"), 3, "{src}/config.json: not a JSON object"),
    ("config-deep-nesting", _raw("config.json", b"[" * 100_000 + b"]" * 100_000), 3, "{src}/config.json: not a readable JSON config"),
    ("config-other-model-type", _config(lambda c: c.__setitem__("model_type", "gpt2")), 5, "{src} is a 'gpt2' model; the manifest is for a 'llama' model"),
    ("config-already-patched", _config(lambda c: c.__setitem__("pearzoo", {"manifest": "ab" * 32})), 5, "{src} is already patched by pearzoo"),
    ("no-weights", lambda f: [p.unlink() for p in [*_shards(f), f / INDEX]], 4, "{src}: no weights"),
]


def _workspace(root: Path) -> dict[str, tuple[str, int, str | None]]:
    return tree_state(root)


@pytest.mark.parametrize("case, mutate, code, starts", CASES, ids=[c[0] for c in CASES])
def test_a_hostile_model_folder_is_refused_in_one_line_and_nothing_is_written(pristine, sealed, tmp_path, capsys, case, mutate, code, starts):
    src = tmp_path / "tiny-llama"
    shutil.copytree(pristine, src)
    manifest = write_json(sealed, tmp_path / "m.json")
    shard, last = _shards(src)[0], _shards(src)[-1]
    mutate(src)
    before = _workspace(tmp_path)
    out = tmp_path / "out"
    result = run_cli(["patch", str(src), "--manifest", str(manifest), "--out", str(out)], capsys)
    code_, stdout, err = result
    assert (code_, stdout) == (code, ""), err
    assert_one_error(err, starts.format(src=src, shard=shard, last=last))
    assert not out.exists()
    assert _workspace(tmp_path) == before  # the source and everything beside it unchanged, no temp folder left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_the_hub_cache_layout_keeps_working_and_a_blob_named_by_another_sha_is_refused_before_reading(pristine, hub_cache_dir, tmp_path, capsys):
    # huggingface_hub's snapshot files are symlinks into ../../blobs: inside the repo folder, so allowed.
    from pearzoo.errors import IntegrityError
    from pearzoo.patch.api import PatchOptions, patch_model
    from tiny_checkpoints import hub_cache_layout

    snapshot = hub_cache_layout(hub_cache_dir, "org/tiny", pristine, "a" * 40)
    doc = make_manifest(snapshot, model_id="org/tiny")
    manifest = write_json(doc, tmp_path / "m.json")
    result = patch_model(PatchOptions(model="org/tiny", manifest=manifest, out=tmp_path / "ok"))
    assert result.manifest == doc["digest"] and (tmp_path / "ok" / INDEX).is_file()
    # A snapshot link to a blob whose name (its LFS sha256) is not the manifest's: refused by that name, before its
    # bytes are hashed or copied (the error shows the name, not a hash of the bytes).
    first = sorted(snapshot.glob("*.safetensors"))[0]
    other = first.parent.parent.parent / "blobs" / ("f" * 64)
    data = bytearray(first.read_bytes())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    first.unlink()
    first.symlink_to(Path("..") / ".." / "blobs" / ("f" * 64))
    with pytest.raises(IntegrityError, match=rf"org/tiny is not the manifest's base: weight file {first.name} differs \(expected sha256 [0-9a-f]{{12}}, found ffffffffffff\)"):
        patch_model(PatchOptions(model="org/tiny", manifest=manifest, out=tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


@pytest.fixture
def hub_cache_dir() -> Path:
    import huggingface_hub.constants as hf_constants

    return Path(hf_constants.HF_HUB_CACHE)


def test_a_schema_1_manifest_patches_with_a_warning_that_only_folded_tensors_are_bound(pristine, tmp_path, capsys):
    # The documented limit of schema 1 (the registry's shipped manifests): the same bit flip patches, with a warning.
    src = tmp_path / "tiny-llama"
    shutil.copytree(pristine, src)
    doc = make_manifest(pristine, schema_version=1)
    _flip_unfolded_tensor(src)
    code, _, err = run_cli(["patch", str(src), "--manifest", str(write_json(doc, tmp_path / "m.json")), "--out", str(tmp_path / "o")], capsys)
    assert code == 0
    assert err == (
        f"warning: manifest {doc['digest'][:12]} is schema_version 1: it binds the base only where it folds "
        "(2 tensors); the other weights are copied unchecked\n"
    )


def test_a_broken_tokenizer_is_copied_as_is(pristine, sealed, tmp_path, capsys):
    # pearzoo never parses the tokenizer: a broken one is the input's, copied byte for byte beside correct weights.
    src = tmp_path / "tiny-llama"
    shutil.copytree(pristine, src)
    (src / "tokenizer.json").write_bytes(b'{"model": {"vocab": [' + b"[" * 1000)
    out = tmp_path / "o"
    code, _, err = run_cli(["patch", str(src), "--manifest", str(write_json(sealed, tmp_path / "m.json")), "--out", str(out)], capsys)
    assert (code, err) == (0, "")
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()


def test_a_fold_that_overflows_fp16_is_refused_before_anything_is_written(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    src = save_tiny_llama(tmp_path / "fp16")
    weights = {k: v.to(torch.float16) for k, v in load_file(src / "model.safetensors").items()}
    weights["model.layers.0.self_attn.o_proj.weight"][:, 16:32] = 30000.0  # head 1 of 4 (head_dim 16)
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    manifest = write_json(make_manifest(src, {(0, 1): 3.0}), tmp_path / "m.json")
    before = _workspace(tmp_path)
    code, stdout, err = run_cli(["patch", str(src), "--manifest", str(manifest), "--out", str(tmp_path / "o")], capsys)
    assert (code, stdout) == (3, "")
    assert_one_error(err, "model.layers.0.self_attn.o_proj.weight: coefficient 3 for head 1 overflows float16 (largest |weight| in its slice 30000)")
    assert _workspace(tmp_path) == before
    # A coefficient that stays inside float16 folds, and the result is finite.
    ok = write_json(make_manifest(src, {(0, 1): 2.0}), tmp_path / "ok.json")
    code, _, err = run_cli(["patch", str(src), "--manifest", str(ok), "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    folded = load_file(tmp_path / "o" / "model.safetensors")["model.layers.0.self_attn.o_proj.weight"]
    assert torch.isfinite(folded).all() and folded[0, 16].item() == 60000.0


def test_hostile_weights_and_options_are_one_line_each(pristine, tmp_path, capsys, monkeypatch):
    """A garbage .gguf, a .gguf with the magic and garbage after it, a pickle that does not unpickle (under
    --allow-pickle), an unwritable --out (under /proc, and under a regular file), `--out . --force` over a
    folder of the user's, and `pearzoo build --out` unwritable: one line and a documented exit code each,
    and nothing written."""
    v1 = write_json(make_manifest(pristine, schema_version=1), tmp_path / "v1.json")
    v2 = write_json(make_manifest(pristine), tmp_path / "v2.json")
    src = tmp_path / "models"
    src.mkdir()
    (src / "garbage.gguf").write_bytes(os.urandom(4096))
    (src / "magic.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(64))
    pickled = src / "pickled"
    pickled.mkdir()
    shutil.copy(pristine / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04garbage, not a pickle")
    user = tmp_path / "user-folder"
    user.mkdir()
    (user / "thesis.tex").write_text("months of work")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    before = _workspace(tmp_path)
    cases = [
        (["patch", str(src / "garbage.gguf"), "--manifest", str(v1), "--out", str(tmp_path / "o")], 3, f"{src / 'garbage.gguf'}: not a GGUF file (no GGUF magic bytes)"),
        (["patch", str(src / "magic.gguf"), "--manifest", str(v1), "--out", str(tmp_path / "o")], 3, f"{src / 'magic.gguf'}: not a readable GGUF file (truncated header)"),
        (["patch", str(pickled), "--manifest", str(v1), "--out", str(tmp_path / "o"), "--allow-pickle"], 3, f"{pickled}: cannot load the model: "),
        # schema 2: the pickle's bytes are checked before anything unpickles them
        (["patch", str(pickled), "--manifest", str(v2), "--out", str(tmp_path / "o"), "--allow-pickle"], 5, "pickled is not the manifest's base: weight file model-00001-of"),
        (["patch", str(pristine), "--manifest", str(v2), "--out", "/proc/pearzoo-out"], 3, "--out /proc/pearzoo-out: cannot write in /proc"),
        (["patch", str(pristine), "--manifest", str(v2), "--out", str(a_file / "out")], 3, f"--out {a_file / 'out'}: {a_file} is not a folder"),
        (["patch", str(pristine), "--manifest", str(v2), "--out", str(user), "--force"], 3, f"{user} exists and is not a folder pearzoo wrote (nor empty)"),
        (["build", "-m", "org/never-loaded", "--out", "/proc/pearzoo.pear.json"], 3, "--out /proc/pearzoo.pear.json: cannot write in /proc"),
    ]
    for argv, code, starts in cases:
        got, stdout, err = run_cli(argv, capsys)
        assert (got, stdout) == (code, ""), (argv, err)
        assert_one_error(err, starts)
    # `cd folder; pearzoo patch model.gguf --force --out .`: the folder holds the user's files and the GGUF itself
    monkeypatch.chdir(user)
    shutil.copy(src / "magic.gguf", user / "model.gguf")
    before_user = _workspace(user)
    got, _, err = run_cli(["patch", "model.gguf", "--manifest", str(v1), "--out", ".", "--force"], capsys)
    assert got == 3 and (user / "thesis.tex").read_text() == "months of work" and _workspace(user) == before_user
    assert_one_error(err, f"{user} exists and is not a folder pearzoo wrote")
    (user / "model.gguf").unlink()
    assert _workspace(tmp_path) == before
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.rglob(f"{TEMP_PREFIX}*")]


def test_a_gguf_in_the_current_folder_is_the_source_not_its_folder(tmp_path, monkeypatch):
    # `cd dir; pearzoo patch model.gguf` writes dir/model-pear: only an --out that is, or holds, the file overlaps.
    from pearzoo.errors import InvalidInputError
    from pearzoo.patch.api import _check_overlap
    from pearzoo.source import resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    source = resolve_model("model.gguf")
    assert (source.kind, source.path, source.gguf_file, source.weights_path) == ("gguf", tmp_path, "model.gguf", tmp_path / "model.gguf")
    _check_overlap(tmp_path / "model-pear", source)  # beside the file: fine
    for out in (tmp_path, tmp_path / "model.gguf"):
        with pytest.raises(InvalidInputError, match="overlaps the source model"):
            _check_overlap(out, source)
