"""Key-value retrieval (pearzoo/retrieval.py): contexts, answer spans, exact-match scoring, eval integration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pearzoo.errors import InvalidInputError
from pearzoo.retrieval import (
    POSITIONS,
    KVContext,
    answer_predictions,
    encode_context,
    max_positions,
    pad_id,
    query_index,
    sample_contexts,
    score_contexts,
)

ZOO_GPT2 = Path(__file__).resolve().parents[1] / "zoo" / "models" / "gpt2-learned"


@pytest.fixture(scope="module")
def gpt2_learned():
    """pearzoo's zoo GPT-2 (8x384, code-trained, 512 positions), loaded with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ZOO_GPT2, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(ZOO_GPT2)


def test_contexts_are_seeded_paired_and_well_formed():
    by_position = {pos: sample_contexts(20, 5, pos, seed=1234) for pos in POSITIONS}
    assert sample_contexts(20, 5, "middle", seed=1234) == by_position["middle"]
    assert sample_contexts(20, 5, "middle", seed=1235) != by_position["middle"]
    # Pinned: the stream eval/kv/20 of seed 1234 is the same on every machine.
    first = by_position["middle"][0]
    assert (first.key, first.value, first.pairs[:2]) == ("b71", "289", (("da7", "14a"), ("0f5", "24a")))
    for pos, contexts in by_position.items():
        for j, c in enumerate(contexts):
            assert c.query == query_index(pos, 20) == {"first": 0, "middle": 10, "last": 19}[pos]
            ids = [x for pair in c.pairs for x in pair]
            assert len(set(ids)) == 40 and all(re.fullmatch(r"[0-9a-f]{3}", x) for x in ids)
            # Paired design: only the queried pair moves between positions.
            ref = by_position["first"][j]
            assert (c.key, c.value) == (ref.key, ref.value)
            assert sorted(c.pairs) == sorted(ref.pairs)
            assert c.prompt.count(c.value) == 1 and c.prompt.count(f'"{c.key}"') == 2
            assert c.prompt.endswith(f'assert data["{c.key}"] == "') and c.text == c.prompt + c.value + '"'
    assert first.prompt.startswith('data = {"da7": "14a", "0f5": "24a", ')


def test_bad_settings_give_one_message():
    with pytest.raises(InvalidInputError, match=r"^position 'centre' is not one of first, middle, last$"):
        query_index("centre", 20)
    with pytest.raises(InvalidInputError, match=r"^kv pairs: 2 is below 3"):
        sample_contexts(2, 1, "first", seed=0)
    with pytest.raises(InvalidInputError, match=r"^1025 pairs need more distinct 3-character ids than exist$"):
        sample_contexts(1025, 1, "first", seed=0)


class _MergingTokenizer:
    """One token per character, except that a quote merges with the character next to it (toward the value)."""

    def __call__(self, text: str, return_offsets_mapping: bool = False, verbose: bool = True) -> dict:
        offsets, i = [], 0
        while i < len(text):
            merge = i + 1 < len(text) and (text[i] == '"' and text[i + 1].isalnum() or text[i + 1] == '"' and text[i].isalnum())
            offsets.append((i, i + 2 if merge else i + 1))
            i = offsets[-1][1]
        return {"input_ids": [ord(text[s]) for s, _ in offsets], "offset_mapping": offsets}


def test_answer_span_takes_tokens_that_straddle_the_quotes():
    c = KVContext((("aaa", "bbb"), ("ccc", "ddd")), query=1)
    enc = encode_context(_MergingTokenizer(), c)
    # Tokens ..., ' ', '"d', 'd', 'd"': the context stops before '"d' and the answer runs through 'd"'.
    assert [chr(t) for t in enc.ids[enc.start - 1 : enc.start]] == [" "]
    assert len(enc.ids) - enc.start == 3 and enc.ids[-1] == ord("d")


def test_answer_tokens_spell_the_value(gpt2_learned):
    _, tok = gpt2_learned
    for c in sample_contexts(20, 20, "last", seed=7):
        enc = encode_context(tok, c)
        assert tok.decode(list(enc.ids[enc.start :])) == c.value
        assert tok.decode(list(enc.ids[: enc.start])) == c.prompt
    assert max_positions(gpt2_learned[0], tok) == 512


def test_batched_scoring_equals_unbatched_and_greedy_decoding(gpt2_learned):
    model, tok = gpt2_learned
    # P=20: the first 16 contexts at the first position (where this model retrieves), 4 in the middle and last.
    cases = {pos: [encode_context(tok, c) for c in sample_contexts(20, 4, pos, seed=1234)] for pos in POSITIONS}
    cases["first"] = [encode_context(tok, c) for c in sample_contexts(20, 16, "first", seed=1234)]
    hits = {}
    for pos, encoded in cases.items():
        batched = answer_predictions(model, encoded, batch_size=16, pad_id=pad_id(tok))
        single = answer_predictions(model, encoded, batch_size=1, pad_id=pad_id(tok))
        assert all(torch.equal(a, b) for a, b in zip(batched, single)), pos
        hits[pos] = [torch.equal(p, torch.tensor(e.ids[e.start :])) for p, e in zip(batched, encoded)]
    assert score_contexts(model, cases["first"], pad_id=pad_id(tok)) == hits["first"]
    # Which contexts this model retrieves is a property of its weights: bench/zoo_pins.py checks it.

    # Teacher-forced argmax is what greedy decoding emits, up to and including the first wrong token.
    for enc in cases["first"][1:6:2] + cases["middle"][:1]:
        answer = torch.tensor(enc.ids[enc.start :])
        out = model.generate(
            torch.tensor([enc.ids[: enc.start]]), do_sample=False, max_new_tokens=len(answer), pad_token_id=pad_id(tok)
        )
        greedy = out[0, enc.start :]
        pred = answer_predictions(model, [enc])[0]
        wrong = (pred != answer).nonzero()
        upto = int(wrong[0]) + 1 if len(wrong) else len(answer)
        assert torch.equal(greedy[:upto], pred[:upto])
        assert torch.equal(greedy, answer) == (len(wrong) == 0)


def test_evaluate_model_reports_retrieval_and_skips_what_does_not_fit(stories260k_dir):
    from pearzoo.build import BuildOptions, prepare
    from pearzoo.evaluate import evaluate_model

    ctx = prepare(BuildOptions(model=str(stories260k_dir), recipe="rope/llama"))
    report = evaluate_model(
        ctx.model, "stories260K", ctx.space, geometry=ctx.geometry, tokenizer=ctx.tokenizer, lengths=(5,),
        sequences=4, text=None, kv_pairs=(20, 50), kv_contexts=3,
    )  # fmt: skip
    r = report.retrieval
    assert r is not None and r.max_positions == 512 and r.skipped == [50]
    # stories260K's 512-token vocabulary spells ids character by character: 50 pairs take 631 tokens.
    assert r.tokens == {"20": 271, "50": 631}
    assert set(r.accuracy) == {"20"} and list(r.accuracy["20"]) == list(POSITIONS)
    # A story model cannot do the task (measured: 0 of 3 everywhere); the test is about the mechanics.
    assert all(acc.base == 0.0 and acc.patched is None for acc in r.accuracy["20"].values())
    off = evaluate_model(ctx.model, "stories260K", ctx.space, tokenizer=ctx.tokenizer, lengths=(5,), sequences=4, text=None, kv=False)
    assert off.retrieval is None
    with pytest.raises(InvalidInputError, match=r"^key-value retrieval needs a tokenizer, and the model has none$"):
        evaluate_model(ctx.model, "stories260K", ctx.space, lengths=(5,), sequences=4, text=None, kv=True)
