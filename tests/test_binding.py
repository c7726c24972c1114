"""pearzoo/binding.py: the sha256 of every weight file (schema 2), through the huggingface_hub cache too."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pearzoo.binding import base_files, cache_blob_sha256, weight_files
from pearzoo.errors import IntegrityError, NotFoundError
from pearzoo.source import ModelSource
from tiny_checkpoints import hub_cache_layout, save_tiny_llama


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
