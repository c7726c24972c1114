"""pearzoo/source.py: model references resolved to files, and models loaded from them."""

import shutil

import pytest
import torch

from pearzoo.errors import InvalidInputError, NotFoundError, OfflineError, UnsafeInputError
from pearzoo.source import dtype_from_name, dtype_name, load_model, resolve_model, validate_hub_id


def test_a_directory_and_gguf_files_resolve_to_their_kind(tiny_dir, tmp_path):
    source = resolve_model(str(tiny_dir))
    assert (source.kind, source.path, source.model_id, source.revision, source.gguf_file) == (
        "directory", tiny_dir.resolve(), "tiny-llama", None, None,
    )  # fmt: skip
    gguf = tmp_path / "g" / "Model.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    for ref in (str(gguf), str(gguf.parent)):
        source = resolve_model(ref)
        assert (source.kind, source.path, source.model_id, source.gguf_file) == ("gguf", gguf.parent.resolve(), "Model.Q4_1", "Model.Q4_1.gguf")


@pytest.mark.parametrize(
    "ref, error, message",
    [
        ("./absent", NotFoundError, "./absent: no such file or directory"),
        ("a/b/c", NotFoundError, "a/b/c: no such file or directory"),
        ("x.gguf", NotFoundError, "x.gguf: no such file or directory"),
        ("org/../etc", UnsafeInputError, "model id 'org/../etc' is not allowed ('..', absolute or backslash path)"),
        ("org/name-", InvalidInputError, "model id 'org/name-' is not a valid Hub id (expected org/name)"),
        ("org/not-cached", OfflineError, "model 'org/not-cached' is not in the Hugging Face cache and the Hub cannot be reached"),
    ],
)
def test_bad_references_give_one_line(ref, error, message):
    with pytest.raises(error) as err:
        resolve_model(ref)
    assert str(err.value) == message


def test_a_directory_without_a_model_is_not_found(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InvalidInputError) as err:
        resolve_model(str(tmp_path / "notes.txt"))
    assert str(err.value) == f"{tmp_path / 'notes.txt'}: not a model (expected a directory with config.json or a .gguf file)"
    with pytest.raises(NotFoundError) as err:
        resolve_model(str(tmp_path))
    assert str(err.value) == f"{tmp_path}: no config.json (and not exactly one .gguf file)"


def test_hub_ids():
    assert validate_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert validate_hub_id("gpt2") == "gpt2"
    with pytest.raises(UnsafeInputError):
        validate_hub_id("/etc/passwd")


def test_dtypes():
    assert [dtype_from_name(n) for n in ("fp32", "BF16", "float16")] == [torch.float32, torch.bfloat16, torch.float16]
    assert dtype_name(torch.bfloat16) == "bfloat16"
    with pytest.raises(InvalidInputError) as err:
        dtype_from_name("int8")
    assert str(err.value) == "dtype 'int8' is not supported (float32, bfloat16, float16)"


def test_load_model_is_frozen_in_eval_mode_and_refuses_pickle(tiny_dir, tmp_path):
    model, _ = load_model(resolve_model(str(tiny_dir)), dtype="bfloat16")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_dir / "config.json", pickled / "config.json")
    (pickled / "model.pt").write_bytes(b"not loaded")
    with pytest.raises(UnsafeInputError) as err:
        load_model(resolve_model(str(pickled)))
    assert str(err.value) == f"{pickled}: only pickle weights (.bin/.pt) found; they can run code when loaded"
    with pytest.raises(NotFoundError) as err:
        load_model(resolve_model(str(pickled)), allow_pickle=True)
    assert str(err.value) == f"{pickled}: no pytorch_model.bin or pytorch_model.bin.index.json (the pickle weights transformers loads)"
