"""pearzoo/binding.py: the base bound by tensor digests and (schema 2) by the sha256 of every weight file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from pearzoo.binding import (
    base_digests,
    base_files,
    cache_blob_sha256,
    verify_base,
    weight_files,
)
from pearzoo.errors import IntegrityError, NotFoundError
from pearzoo.shards import digest_of, model_tensor
from pearzoo.source import ModelSource, load_model, resolve_model
from tiny_checkpoints import hub_cache_layout, save_tiny_llama, tiny_llama

NAMES = ["model.layers.1.self_attn.o_proj.weight", "model.layers.0.self_attn.o_proj.weight"]


def test_digests_come_from_the_files_whatever_dtype_the_model_was_loaded_in(tiny_dir):
    source = resolve_model(str(tiny_dir))
    model, _ = load_model(source, dtype="bfloat16")
    digests = base_digests(source, model, NAMES + NAMES[:1])
    reference = tiny_llama()
    assert list(digests) == sorted(NAMES)
    assert digests == {name: digest_of(name, model_tensor(reference, name)) for name in NAMES}  # the float32 bytes


def test_a_gguf_base_is_digested_from_the_loaded_model(tiny_dir):
    model = tiny_llama()
    source = ModelSource(kind="gguf", path=tiny_dir, model_id="tiny", gguf_file="tiny.gguf")
    with torch.no_grad():
        bf16 = model.to(torch.bfloat16)
    assert base_digests(source, bf16, NAMES) == {name: digest_of(name, model_tensor(bf16, name)) for name in NAMES}


def test_verify_names_the_first_tensor_that_differs_or_is_missing():
    expected = {"a.weight": "1" * 64, "b.weight": "2" * 64}
    verify_base(expected, dict(expected), "m")
    with pytest.raises(IntegrityError) as err:
        verify_base(expected, {"a.weight": "1" * 64, "b.weight": "3" * 64}, "org/m")
    assert str(err.value) == "org/m is not the manifest's base: tensor b.weight differs (expected 222222222222, found 333333333333)"
    assert (err.value.tensor, err.value.exit_code) == ("b.weight", 5)
    with pytest.raises(IntegrityError) as err:
        verify_base(expected, {"b.weight": "2" * 64}, "m")
    assert str(err.value) == "m is not the manifest's base: tensor a.weight differs (expected 111111111111, found nothing)"


def _source(path: Path, **kw) -> ModelSource:
    return ModelSource(kind="directory", path=path, model_id="t", **kw)


def test_base_files_are_the_sha256_of_each_shard_the_index_names(tmp_path):
    model = save_tiny_llama(tmp_path / "m", max_shard_size="60KB")
    (model / "consolidated.safetensors").write_bytes(b"not part of the checkpoint")  # not in the index: not bound
    shards = sorted(p.name for p in model.glob("model-*.safetensors"))
    assert len(shards) > 2 and weight_files(_source(model)) == shards
    assert base_files(_source(model)) == {n: hashlib.sha256((model / n).read_bytes()).hexdigest() for n in shards}


def test_in_the_hub_cache_a_files_sha256_is_its_blob_name_and_a_blob_that_is_not_its_name_is_refused(tmp_path):
    model = save_tiny_llama(tmp_path / "m")
    snapshot = hub_cache_layout(tmp_path / "cache", "org/m", model)
    files = base_files(_source(snapshot))
    assert files == {"model.safetensors": cache_blob_sha256(snapshot / "model.safetensors")}
    assert cache_blob_sha256(model / "model.safetensors") is None  # not a cache link
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model.safetensors: the cached blob is named [0-9a-f]{12} but its bytes hash to [0-9a-f]{12}: the Hugging Face cache is corrupt"):
        base_files(_source(snapshot))


def test_weight_files_of_a_gguf_and_of_pickles(tmp_path):
    assert weight_files(ModelSource(kind="gguf", path=tmp_path, model_id="m", gguf_file="m.Q4.gguf")) == ["m.Q4.gguf"]
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    assert weight_files(_source(tmp_path)) == ["pytorch_model.bin"]
    (tmp_path / "pytorch_model.bin").unlink()
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(NotFoundError, match="no pytorch_model.bin or pytorch_model.bin.index.json"):
        weight_files(_source(tmp_path))
