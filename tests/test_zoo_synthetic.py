"""The zoo's copy and lookup pressure (zoo/train.py SyntheticSpans, run 5): what it writes into training windows."""

import ast
import sys
from pathlib import Path

import pytest
import torch

ZOO = Path(__file__).resolve().parents[1] / "zoo"
sys.path.insert(0, str(ZOO))
train = pytest.importorskip("train")  # zoo/train.py
copy_accuracy = pytest.importorskip("copy_accuracy")

from tokenizers import Tokenizer

HEX = set("0123456789abcdef")


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(ZOO / "tokenizer" / "tokenizer.json"))


def spans(tokenizer, seed=7, **shares):
    cfg = {"seed": seed, "repeat": 0.0, "random_repeat": 0.0, "kv": 0.0, **shares}
    return train.SyntheticSpans(cfg, tokenizer, copy_accuracy.allowed_ids(8192, [0]), 512)


def test_kv_texts_are_python_and_their_lookup_is_answered_by_the_listing(tokenizer):
    s = spans(tokenizer)
    for _ in range(300):
        text = s.kv_text()
        listing, lookup = ast.parse(text).body
        table = ast.literal_eval(listing.value)
        key = lookup.test.left.slice.value if isinstance(lookup, ast.Assert) else lookup.value.args[0].value
        answer = lookup.test.comparators[0].value if isinstance(lookup, ast.Assert) else text.rsplit("# ", 1)[1].strip()[1:-1]
        assert table[key] == answer and 2 <= len(table) <= 40
        # pearzoo's eval draws 3-character all-hex ids; training never does, so no eval context is a training one.
        assert not any(len(k) == 3 and set(k) <= HEX for k in list(table) + list(table.values()))


def test_repeats_copy_their_span_and_shares_follow_the_config(tokenizer):
    torch.manual_seed(0)
    s = spans(tokenizer, repeat=0.5, random_repeat=0.5)
    window = torch.randint(1, 8192, (400, 513))
    before = window.clone()
    s.apply(window)
    assert s.counts["repeat"] + s.counts["random_repeat"] == 400 and 150 < s.counts["repeat"] < 250
    for row in range(400):
        changed = (window[row] != before[row]).nonzero().flatten()
        assert changed.numel() > 0
        # every changed position holds a token that also sits at another position of the row: a copy
        values = window[row, changed]
        assert all((window[row] == v).sum() >= 2 for v in values.tolist())


def test_same_seed_same_windows(tokenizer):
    out = []
    for _ in range(2):
        window = torch.zeros(64, 513, dtype=torch.long)
        spans(tokenizer, seed=3, repeat=0.2, random_repeat=0.2, kv=0.3).apply(window)
        out.append(window)
    assert torch.equal(out[0], out[1]) and out[0].count_nonzero() > 0
