"""pearzoo/shards.py: validated safetensors layout, index reading, per-tensor reads and digests."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError
from pearzoo.shards import (
    INDEX_NAME,
    Checkpoint,
    digest_of,
    model_tensor,
    read_file_layout,
    st_dtype,
    torch_dtype,
)
from tiny_checkpoints import save_tiny_llama, tiny_llama

O_PROJ = "model.layers.1.self_attn.o_proj.weight"


def test_dtype_names_round_trip():
    for dtype, name in [(torch.float32, "F32"), (torch.bfloat16, "BF16"), (torch.float16, "F16"), (torch.int64, "I64")]:
        assert st_dtype(dtype) == name and torch_dtype(name) is dtype
    assert torch_dtype("F8_E4M3") is None
    with pytest.raises(InvalidInputError) as err:
        st_dtype(torch.complex64)
    assert str(err.value) == "dtype torch.complex64 has no safetensors name"


def test_file_digests_equal_in_memory_digests_single_and_sharded(tiny_dir, tmp_path):
    model = tiny_llama()
    one = Checkpoint(tiny_dir)
    sharded = Checkpoint(save_tiny_llama(tmp_path / "sharded", max_shard_size="20KB"))
    assert one.files == ["model.safetensors"] and len(sharded.files) > 1
    for name in (O_PROJ, "model.embed_tokens.weight", "lm_head.weight"):
        expected = digest_of(name, model_tensor(model, name))
        assert one.digest(name) == sharded.digest(name) == expected
    # The digest covers the name, dtype and shape as well as the bytes.
    t = model_tensor(model, O_PROJ)
    assert digest_of("other", t) != digest_of(O_PROJ, t) != digest_of(O_PROJ, t.to(torch.float16))


def test_tensors_stored_without_the_base_model_prefix_are_found(tmp_path):
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    save_file({"h.0.attn.c_proj.weight": weight}, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint(tmp_path)
    assert ckpt.find("transformer.h.0.attn.c_proj.weight", "transformer") == "h.0.attn.c_proj.weight"
    assert ckpt.digest("transformer.h.0.attn.c_proj.weight", "transformer") == digest_of("transformer.h.0.attn.c_proj.weight", weight)
    with pytest.raises(NotFoundError) as err:
        ckpt.find("transformer.h.1.attn.c_proj.weight", "transformer")
    assert str(err.value) == f"{tmp_path}: tensor 'transformer.h.1.attn.c_proj.weight' not in the checkpoint"


def test_unreadable_checkpoints_give_one_line(tmp_path):
    with pytest.raises(NotFoundError) as err:
        Checkpoint(tmp_path)
    assert str(err.value) == f"{tmp_path}: no safetensors weights"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(InvalidInputError) as err:
        Checkpoint(tmp_path)
    assert str(err.value) == f"{tmp_path / 'model.safetensors.index.json'}: not a valid safetensors index (weight_map must map names to file names)"
    with pytest.raises(NotFoundError) as err:
        model_tensor(tiny_llama(), "model.layers.9.self_attn.o_proj.weight")
    assert str(err.value) == "model has no tensor 'model.layers.9.self_attn.o_proj.weight'"


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
