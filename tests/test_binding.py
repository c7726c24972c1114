"""pearzoo/binding.py: a manifest's base bound by tensor digests, and the check that a model is that base."""

import pytest
import torch

from pearzoo.binding import base_digests, verify_base
from pearzoo.errors import IntegrityError
from pearzoo.shards import digest_of, model_tensor
from pearzoo.source import ModelSource, load_model, resolve_model
from tiny_checkpoints import tiny_llama

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
