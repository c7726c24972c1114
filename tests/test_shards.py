"""pearzoo/shards.py: validated safetensors layout, index reading, per-tensor reads and digests."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError
from pearzoo.shards import INDEX_NAME, Checkpoint, digest_of, read_file_layout


def test_layout_of_a_real_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(5, dtype=torch.bfloat16)}, str(path), metadata={"format": "pt"})
    layout = read_file_layout(path)
    assert {k: (e.dtype, e.shape, e.end - e.begin) for k, e in layout.entries.items()} == {"a": ("F32", (3, 4), 48), "b": ("BF16", (5,), 10)}
    assert layout.data_len == 58 and layout.file_size == path.stat().st_size and layout.metadata == {"format": "pt"}


def test_checkpoint_reads_digests_and_finds_names_without_the_prefix(tmp_path):
    tensors = {"h.0.attn.c_proj.weight": torch.randn(4, 4), "wte.weight": torch.randn(8, 4)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint(tmp_path)
    assert ckpt.files == ["model.safetensors"]
    assert ckpt.find("transformer.h.0.attn.c_proj.weight", "transformer") == "h.0.attn.c_proj.weight"
    name = "transformer.h.0.attn.c_proj.weight"
    assert ckpt.digest(name, "transformer") == digest_of(name, tensors["h.0.attn.c_proj.weight"])
    assert torch.equal(ckpt.read("wte.weight"), tensors["wte.weight"])
    with pytest.raises(NotFoundError, match="tensor 'missing' not in the checkpoint"):
        ckpt.find("missing")


def test_an_index_must_agree_with_its_shards(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "s1.safetensors"))
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}}))
    with pytest.raises(IntegrityError, match=r"s1.safetensors: tensor b is not in this shard, as its index says"):
        Checkpoint(tmp_path)
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": {"a": 3}}))
    with pytest.raises(InvalidInputError, match="weight_map must map names to file names"):
        Checkpoint(tmp_path)
