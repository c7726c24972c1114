"""pearzoo/evaluate.py: per-unit scores agree with the aggregate scorers, intervals follow from the samples."""

from __future__ import annotations

import math

import pytest
import torch

from pearzoo.evaluate import copy_counts, evaluate_model, intervals_from_samples, random_heads, window_nll
from pearzoo.proxy import copy_score, generator, sample_sequences


@pytest.fixture(scope="module")
def stories(stories260k_dir):
    from pearzoo.build import BuildOptions, prepare

    return prepare(BuildOptions(model=str(stories260k_dir), recipe="rope/llama"))


def test_per_sequence_counts_and_window_losses_match_the_aggregate_scorers(stories):
    from pearzoo.text import perplexity, read_text, text_windows

    seqs = sample_sequences(stories.space, 40, 7, generator(1, "eval/7"))
    counts = copy_counts(stories.model, seqs, 7, stories.space.prefix, batch_size=16)
    assert len(counts) == 40 and all(0 <= c <= 6 for c in counts)
    assert sum(counts) / (40 * 6) == copy_score(stories.model, seqs, 7, stories.space.prefix).accuracy
    win = text_windows(stories.tokenizer, read_text("builtin:tinyshakespeare-test"), 6, 32)
    nll = window_nll(stories.model, win, batch_size=4)
    assert math.exp(sum(nll) / (6 * 31)) == pytest.approx(perplexity(stories.model, win), rel=1e-6)


def test_random_heads_draw_zero_is_the_earlier_single_draw(stories):
    from pearzoo.heads import HeadId

    exclude = [HeadId(0, 1)]
    # Draw 0 uses the stream of the single draw before intervals, so old reports keep their control heads.
    order = torch.randperm(stories.geometry.total_heads - 1, generator=generator(1234, "eval/random-heads"))
    pool = [h for h in stories.geometry.all_heads() if h not in exclude]
    assert random_heads(stories.geometry, exclude, 3, 1234) == sorted(pool[i] for i in order[:3].tolist())
    draws = [random_heads(stories.geometry, exclude, 3, 1234, draw=r) for r in range(4)]
    assert len({tuple(d) for d in draws}) == 4 and all(HeadId(0, 1) not in d for d in draws)


def test_report_values_and_intervals_follow_from_its_samples(stories, stories260k_dir):
    from tiny_checkpoints import make_manifest

    from pearzoo.manifest.schema import Manifest

    manifest = Manifest.model_validate(make_manifest(stories260k_dir, {(1, 2): 0.5, (3, 4): 1.5}))
    report = evaluate_model(
        stories.model, "stories260K", stories.space, geometry=stories.geometry, manifest=manifest,
        tokenizer=stories.tokenizer, lengths=(5, 8), sequences=24, windows=6, window_length=32,
        kv_pairs=(20,), kv_contexts=3, random_draws=3, resamples=300,
    )  # fmt: skip
    s = report.samples
    assert report.controls.model_dump() == {"random_heads_draws": 3, "seed": 1234}
    assert report.random_heads == report.random_head_draws[0] and len(report.random_head_draws) == 3
    for n in ("5", "8"):
        cell, acc, iv = s.copy_accuracy[n], report.copy_accuracy[n], report.intervals.copy_accuracy[n]
        m = int(n) - 1
        assert acc.base == sum(cell.base) / (24 * m) and acc.patched == sum(cell.patched) / (24 * m)
        assert acc.random_heads == pytest.approx(sum(map(sum, cell.random_heads)) / (3 * 24 * m))
        for name, value in (("base", acc.base), ("patched", acc.patched), ("random_heads", acc.random_heads),
                            ("gain", acc.patched - acc.base), ("random_heads_gain", acc.random_heads - acc.base)):  # fmt: skip
            lo, hi = getattr(iv, name)
            assert lo - 1e-9 <= value <= hi + 1e-9, (n, name, lo, value, hi)
    # The intervals are a function of the samples and the seed alone: recomputed, they are identical.
    assert intervals_from_samples(s, {"5": 5, "8": 8}, 31, seed=1234, resamples=300) == report.intervals
    assert intervals_from_samples(s, {"5": 5, "8": 8}, 31, seed=1235, resamples=300) != report.intervals
    ppl, pi = report.perplexity, report.intervals.perplexity
    assert pi.base[0] < ppl.base < pi.base[1]
    assert pi.change[0] <= ppl.patched / ppl.base - 1 <= pi.change[1]
    # stories260K retrieves nothing: 0 of 3 everywhere; Wilson gives [0, z^2 / (3 + z^2)] = [0, 0.5615].
    kv = report.intervals.kv_retrieval["20"]["middle"]
    assert kv.base == (0.0, 0.561497) and kv.patched == kv.base and kv.random_heads == kv.base
    # With one draw, the control is exactly the first draw of the three (same stream).
    one = evaluate_model(
        stories.model, "stories260K", stories.space, geometry=stories.geometry, manifest=manifest,
        lengths=(5,), sequences=24, text=None, kv=False, random_draws=1, resamples=300,
    )  # fmt: skip
    assert one.samples.copy_accuracy["5"].random_heads == [s.copy_accuracy["5"].random_heads[0]]
    assert one.copy_accuracy["5"].base == report.copy_accuracy["5"].base


def test_sharing_the_base_models_lower_layers_changes_no_score(stories, stories260k_dir):
    from tiny_checkpoints import make_manifest

    from pearzoo.eval_variants import score_variants
    from pearzoo.heads import HeadId
    from pearzoo.manifest.schema import Manifest

    variants = {"base": None, "a": {HeadId(2, 1): 0.5, HeadId(4, 0): 1.7}, "b": {HeadId(1, 3): 1.9}, "c": {HeadId(0, 2): 0.1}}
    seqs = sample_sequences(stories.space, 20, 9, generator(5, "eval/9"))
    batches = [seqs[:8], seqs[8:16], seqs[16:]]

    def score(b):
        return copy_counts(stories.model, b, 9, stories.space.prefix, batch_size=len(b))

    shared, replayed = score_variants(stories.model, stories.geometry, variants, batches, score)
    alone, none = score_variants(stories.model, stories.geometry, variants, batches, score, share=False)
    # Variants "a" (from layer 2) and "b" (from layer 1) replay on each of the 3 batches; "c" starts at layer 0.
    assert shared == alone and (replayed, none) == (6, 0)
    assert shared["a"] != shared["base"]  # the scaling took effect on the replayed passes
    # The whole report, copy, perplexity and key-value retrieval, is bit-identical with and without sharing.
    manifest = Manifest.model_validate(make_manifest(stories260k_dir, {(2, 2): 0.3, (3, 4): 1.8}))
    kw = {"geometry": stories.geometry, "manifest": manifest, "tokenizer": stories.tokenizer, "lengths": (6,), "sequences": 40,
          "windows": 10, "window_length": 32, "kv_pairs": (20,), "kv_contexts": 3, "random_draws": 2, "resamples": 200}  # fmt: skip
    a = evaluate_model(stories.model, "stories260K", stories.space, **kw)
    b = evaluate_model(stories.model, "stories260K", stories.space, share=False, **kw)
    assert a.samples == b.samples and a.intervals == b.intervals and a.copy_accuracy == b.copy_accuracy
    assert a.perplexity == b.perplexity and a.retrieval == b.retrieval


def test_reports_split_by_length_merge_into_the_single_run(stories, stories260k_dir):
    from tiny_checkpoints import make_manifest

    from pearzoo.errors import InvalidInputError
    from pearzoo.evaluate import merge_reports
    from pearzoo.manifest.schema import Manifest

    manifest = Manifest.model_validate(make_manifest(stories260k_dir, {(1, 2): 0.5, (3, 4): 1.5}))
    kw = {"geometry": stories.geometry, "manifest": manifest, "tokenizer": stories.tokenizer, "sequences": 16,
          "windows": 4, "window_length": 32, "kv": False, "random_draws": 2, "resamples": 200}  # fmt: skip
    whole = evaluate_model(stories.model, "stories260K", stories.space, lengths=(5, 8), **kw)
    a = evaluate_model(stories.model, "stories260K", stories.space, lengths=(8,), **kw)
    b = evaluate_model(stories.model, "stories260K", stories.space, lengths=(5,), **{**kw, "text": None})
    merged = merge_reports([a, b])
    assert merged.model_dump(exclude={"seconds"}) == whole.model_dump(exclude={"seconds"})
    assert list(merged.copy_accuracy) == ["5", "8"] and merged.seconds == round(a.seconds + b.seconds, 3)
    with pytest.raises(InvalidInputError, match="^copy lengths measured twice"):
        merge_reports([a, a])
    c = evaluate_model(stories.model, "stories260K", stories.space, lengths=(6,), **{**kw, "text": None, "seed": 7})
    with pytest.raises(InvalidInputError, match="^reports differ in seed"):
        merge_reports([a, c])
