"""pearzoo/text.py: held-out natural text, its token windows, and perplexity (the budget of issue #2)."""

import math

import pytest
import torch

from _tolerances import REORDERED_FP32
from pearzoo.errors import InvalidInputError, NotFoundError
from pearzoo.text import builtin_texts, perplexity, read_text, text_loss, text_windows


def test_builtin_and_file_texts(tmp_path):
    assert builtin_texts() == ["tinyshakespeare-test", "tinyshakespeare-validation"]
    assert read_text("builtin:tinyshakespeare-test").startswith("BAPTISTA:\nNot in my house, Lucentio;")
    path = tmp_path / "t.txt"
    path.write_text("héllo\n", encoding="utf-8")
    assert read_text(str(path)) == "héllo\n"


def test_missing_and_binary_texts_give_one_line(tmp_path):
    with pytest.raises(NotFoundError) as err:
        read_text("builtin:nope")
    assert str(err.value) == "text 'builtin:nope' is not built in (have: tinyshakespeare-test, tinyshakespeare-validation)"
    with pytest.raises(NotFoundError) as err:
        read_text(str(tmp_path / "absent.txt"))
    assert str(err.value) == f"text file '{tmp_path / 'absent.txt'}' not found"
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidInputError) as err:
        read_text(str(tmp_path / "bin.txt"))
    assert str(err.value) == f"{tmp_path / 'bin.txt'}: not UTF-8 text"


@pytest.fixture(scope="module")
def stories(stories260k_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(stories260k_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(stories260k_dir)


def test_windows_are_consecutive_and_offset(stories):
    _, tok = stories
    text = read_text("builtin:tinyshakespeare-validation")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    windows = text_windows(tok, text, 3, 16)
    assert windows.shape == (3, 16) and windows.flatten().tolist() == ids[:48]
    assert text_windows(tok, text, 2, 16, offset=1).flatten().tolist() == ids[16:48]
    with pytest.raises(InvalidInputError) as err:
        text_windows(tok, "a b", 2, 16)
    assert str(err.value) == f"text has {len(tok('a b', add_special_tokens=False)['input_ids'])} tokens; 32 are needed for 2 windows of 16"
    with pytest.raises(InvalidInputError) as err:
        text_windows(None, text, 2, 16)
    assert str(err.value) == "perplexity needs a tokenizer, and the model has none"


def test_perplexity_is_exp_of_the_mean_text_loss(stories):
    model, tok = stories
    windows = text_windows(tok, read_text("builtin:tinyshakespeare-validation"), 5, 32)
    with torch.no_grad():
        loss = text_loss(model, windows).item()
    for batch_size in (8, 2):  # equal windows: the per-batch means average to the overall mean
        assert perplexity(model, windows, batch_size=batch_size) == pytest.approx(math.exp(loss), rel=REORDERED_FP32["rtol"])
