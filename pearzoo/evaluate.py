"""`pearzoo eval`: copy accuracy on fresh held-out sequences, key-value retrieval, a random-heads control,
and perplexity, each with a 95% interval.

The patched model is the base with the manifest's coefficients applied by runtime hooks, which tests
show equal to the folded weights; the control applies the same coefficients to K other heads, drawn R
times. Every variant is scored on the same units (sequences, contexts, windows), and the per-unit scores
go into the report (`samples`) so that `pearzoo compare` can pair two reports. Scores and intervals: `pearzoo.eval_samples`.
Retrieval (`pearzoo.retrieval`) runs on models with a tokenizer unless turned off.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pearzoo import stats
from pearzoo.errors import InvalidInputError
from pearzoo.eval_samples import Intervals, Samples, UnitScores, intervals_from_samples
from pearzoo.eval_variants import score_variants
from pearzoo.heads import HeadGeometry, HeadId
from pearzoo.manifest.schema import Manifest
from pearzoo.proxy import (
    TokenSpace,
    _second_half_logits,
    generator,
    input_device,
    sample_sequences,
)
from pearzoo.retrieval import DEFAULT_CONTEXTS, DEFAULT_PAIRS, ID_CHARS, POSITIONS

DEFAULT_LENGTHS = (10, 25, 50)
DEFAULT_SEQUENCES = 500
DEFAULT_TEXT = "builtin:tinyshakespeare-test"
DEFAULT_DRAWS = 5
DEFAULT_WINDOWS = 32
# Batch sizes of the scorers (copy sequences, perplexity windows, key-value contexts); every variant scores the
# same batches, so that eval_variants can share the layers below a variant's lowest head.
COPY_BATCH = 32
WINDOW_BATCH = 8
KV_BATCH = 16
METHOD = (
    "95% percentile bootstrap resampling whole sequences (copy) and windows (perplexity), paired across variants, "
    "draws of the random-heads control resampled too; key-value cells: Wilson (levels) and Bonett-Price (paired gains) intervals over contexts"
)

class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CopyAccuracy(_Out):
    base: float
    patched: float | None = None
    random_heads: float | None = Field(default=None, description="Mean over the control's draws.")


class Perplexity(_Out):
    text: str
    windows: int
    window_length: int
    base: float
    patched: float | None = None
    random_heads: float | None = Field(default=None, description="Mean over the control's draws.")


class RetrievalAccuracy(_Out):
    base: float
    patched: float | None = None
    random_heads: float | None = Field(default=None, description="Mean over the control's draws.")


class Retrieval(_Out):
    contexts: int = Field(description="Contexts per number of pairs and position.")
    id_chars: int = Field(description="Length of the random hex ids.")
    max_positions: int | None = Field(description="The model's input limit; longer contexts are skipped.")
    tokens: dict[str, int] = Field(description="Longest context (through the answer) per number of pairs, in tokens.")
    skipped: list[int] = Field(default_factory=list, description="Numbers of pairs whose contexts exceed max_positions.")
    accuracy: dict[str, dict[str, RetrievalAccuracy]] = Field(
        description="Exact-match accuracy by number of pairs, then by position of the queried pair."
    )


class Controls(_Out):
    random_heads_draws: int = Field(description="Draws of K random heads (the manifest's coefficients) in the control.")
    seed: int = Field(description="The eval seed: draw r comes from its stream eval/random-heads[/r].")


class Bootstrap(_Out):
    level: float
    resamples: int
    method: str


class EvalReport(_Out):
    """What `pearzoo eval --json` prints."""

    model: str
    manifest: str | None = Field(default=None, description="Digest of the evaluated manifest.")
    sequences: int
    seed: int
    heads: list[str] = Field(default_factory=list)
    random_heads: list[str] = Field(default_factory=list, description="The control's first draw.")
    random_head_draws: list[list[str]] = Field(default_factory=list, description="Every draw of the control.")
    copy_accuracy: dict[str, CopyAccuracy]
    # A default, so a report printed without nulls (--json, --text none) reads back (pearzoo compare).
    perplexity: Perplexity | None = None
    retrieval: Retrieval | None = None
    intervals: Intervals | None = None
    controls: Controls | None = None
    bootstrap: Bootstrap | None = None
    samples: Samples | None = None
    seconds: float


def random_heads(geometry: HeadGeometry, exclude: list[HeadId], k: int, seed: int, draw: int = 0) -> list[HeadId]:
    """K heads drawn uniformly (seeded) from those not in `exclude`; draw 0 is the single draw of earlier versions."""
    pool = [h for h in geometry.all_heads() if h not in set(exclude)]
    stream = "eval/random-heads" if draw == 0 else f"eval/random-heads/{draw}"
    order = torch.randperm(len(pool), generator=generator(seed, stream))
    return sorted(pool[i] for i in order[:k].tolist())


def copy_counts(model: Any, sequences: torch.Tensor, length: int, prefix: int = 0, batch_size: int = 32) -> list[int]:
    """Per sequence, the number of correctly predicted copyable positions (n - 1 of them, as `copy_score`)."""
    out: list[int] = []
    with torch.inference_mode():
        for start in range(0, sequences.shape[0], batch_size):
            batch = sequences[start : start + batch_size]
            logits = _second_half_logits(model, batch, length, prefix)
            targets = batch[:, prefix + length : prefix + 2 * length].to(logits.device)
            out.extend((logits[:, 1:, :].argmax(-1) == targets[:, 1:]).sum(1).tolist())
    return out


def window_nll(model: Any, windows: torch.Tensor, batch_size: int = 8) -> list[float]:
    """Per window, the summed next-token negative log-likelihood (perplexity = exp(sum / tokens))."""
    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size].to(input_device(model))
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:].to(logits.device), reduction="none")
            out.extend(nll.double().sum(1).tolist())
    return out


def _sha(t: torch.Tensor | list) -> str:
    rows = t.tolist() if isinstance(t, torch.Tensor) else t
    return hashlib.sha256(str(rows).encode()).hexdigest()


def _scores(units: str, by_variant: dict[str, list]) -> UnitScores:
    draws = [v for k, v in by_variant.items() if k.startswith("random_heads/")]
    return UnitScores(units_sha256=units, base=by_variant["base"], patched=by_variant.get("patched"), random_heads=draws or None)


def _mean(x: list[float]) -> float:
    return sum(x) / len(x)


def _value(scores: UnitScores, scale: float) -> dict[str, float]:
    out = {"base": _mean(scores.base) * scale}
    if scores.patched is not None:
        out["patched"] = _mean(scores.patched) * scale
    if scores.random_heads:
        out["random_heads"] = _mean([_mean(d) for d in scores.random_heads]) * scale
    return out


def evaluate_model(
    model: Any,
    model_name: str,
    space: TokenSpace,
    *,
    geometry: HeadGeometry | None = None,
    manifest: Manifest | None = None,
    tokenizer: Any = None,
    lengths: tuple[int, ...] = DEFAULT_LENGTHS,
    sequences: int = DEFAULT_SEQUENCES,
    seed: int = 1234,
    text: str | None = DEFAULT_TEXT,
    windows: int = DEFAULT_WINDOWS,
    window_length: int = 128,
    kv: bool | None = None,
    kv_pairs: tuple[int, ...] = DEFAULT_PAIRS,
    kv_contexts: int = DEFAULT_CONTEXTS,
    random_draws: int = DEFAULT_DRAWS,
    resamples: int = stats.DEFAULT_RESAMPLES,
    progress: Callable[[int], None] | None = None,
    share: bool = True,
) -> EvalReport:
    """Evaluate a loaded model, and with a manifest its patched and random-heads variants, with intervals.

    Sequences come from stream ``eval/<n>`` of `seed`, which no build uses (builds draw ``locate``,
    ``train``, ``validation`` and ``metrics``), so they are held out from every stage of a build.
    Key-value contexts come from stream ``eval/kv/<P>`` of `seed`; control draw r from
    ``eval/random-heads/<r>`` (draw 0: ``eval/random-heads``); resamples from ``bootstrap/eval/...``.

    Args:
        kv (`bool`, *optional*): run key-value retrieval; the default runs it when there is a tokenizer.
        kv_pairs (`tuple[int, ...]`): numbers of pairs per context.
        kv_contexts (`int`): contexts per number of pairs and position of the queried pair.
        random_draws (`int`): draws of K random heads in the control (0: no control).
        resamples (`int`): bootstrap resamples per interval.
        share (`bool`): replay the base model's layers below each variant's lowest head instead of running
            them again (`pearzoo.eval_variants`); the scores are bit-identical either way.

    Raises:
        InvalidInputError: `kv` is true but the model has no tokenizer, or a count is out of range.
    """
    from pearzoo.text import read_text, text_windows

    start = time.perf_counter()
    if kv is None:
        kv = tokenizer is not None
    if kv and tokenizer is None:
        raise InvalidInputError("key-value retrieval needs a tokenizer, and the model has none", hint="pass --no-kv", field="kv")
    if random_draws < 0 or resamples < 1:
        raise InvalidInputError(f"random_draws {random_draws} / resamples {resamples}: need >= 0 / >= 1", field="random_draws")
    variants: dict[str, dict[HeadId, float] | None] = {"base": None}
    heads: list[HeadId] = []
    draws: list[list[HeadId]] = []
    if manifest is not None:
        assert geometry is not None
        heads = [HeadId(h.layer, h.head) for h in manifest.heads]
        taus = [h.coefficient for h in manifest.heads]
        variants["patched"] = dict(zip(heads, taus))
        for r in range(random_draws):
            draws.append(random_heads(geometry, heads, len(heads), seed, draw=r))
            variants[f"random_heads/{r}"] = dict(zip(draws[-1], taus))

    def run(units: Any, batch_size: int, score: Callable[[Any], list]) -> dict[str, list]:
        batches = [units[i : i + batch_size] for i in range(0, len(units), batch_size)]
        by_variant, _ = score_variants(model, geometry, variants, batches, score, share=share)
        if progress is not None:
            progress(len(variants))
        return by_variant

    copy: dict[str, UnitScores] = {}
    for n in lengths:
        seqs = sample_sequences(space, sequences, n, generator(seed, f"eval/{n}"))
        by_variant = run(seqs, COPY_BATCH, lambda b, n=n: copy_counts(model, b, n, space.prefix, batch_size=len(b)))
        copy[str(n)] = _scores(_sha(seqs), by_variant)
    ppl_scores = None
    ppl = None
    if text is not None and tokenizer is not None:
        win = text_windows(tokenizer, read_text(text), windows, window_length)
        ppl_scores = _scores(_sha(win), run(win, WINDOW_BATCH, lambda b: window_nll(model, b, batch_size=len(b))))
        per = window_length - 1
        values = {k: _perplexity(v, per) for k, v in (("base", ppl_scores.base), ("patched", ppl_scores.patched)) if v is not None}
        if ppl_scores.random_heads:
            values["random_heads"] = _mean([_perplexity(d, per) for d in ppl_scores.random_heads])
        ppl = Perplexity(text=text, windows=windows, window_length=window_length, **values)
    retrieval = kv_scores = None
    if kv:
        retrieval, kv_scores = _retrieval(model, tokenizer, variants, run, kv_pairs, kv_contexts, seed, progress)
    samples = Samples(copy_accuracy=copy, perplexity=ppl_scores, kv_retrieval=kv_scores)
    intervals = intervals_from_samples(samples, {str(n): n for n in lengths}, window_length - 1, seed=seed, resamples=resamples)
    return EvalReport(
        model=model_name,
        manifest=manifest.digest if manifest is not None else None,
        sequences=sequences,
        seed=seed,
        heads=[str(h) for h in heads],
        random_heads=[str(h) for h in draws[0]] if draws else [],
        random_head_draws=[[str(h) for h in d] for d in draws],
        copy_accuracy={n: CopyAccuracy(**_value(s, 1 / (int(n) - 1))) for n, s in copy.items()},
        perplexity=ppl,
        retrieval=retrieval,
        intervals=intervals,
        controls=Controls(random_heads_draws=len(draws), seed=seed),
        bootstrap=Bootstrap(level=stats.LEVEL, resamples=resamples, method=METHOD),
        samples=samples,
        seconds=round(time.perf_counter() - start, 3),
    )


def _perplexity(nll: list[float], tokens_per_window: int) -> float:
    import math

    return math.exp(sum(nll) / (len(nll) * tokens_per_window))


def _retrieval(
    model: Any,
    tokenizer: Any,
    variants: dict[str, dict[HeadId, float] | None],
    run: Callable[[Any, int, Callable[[Any], list]], dict[str, list]],
    pairs: tuple[int, ...],
    contexts: int,
    seed: int,
    progress: Callable[[int], None] | None,
) -> tuple[Retrieval, dict[str, dict[str, UnitScores]]]:
    from pearzoo.retrieval import (
        encode_context,
        max_positions,
        pad_id,
        sample_contexts,
        score_contexts,
    )

    limit = max_positions(model, tokenizer)
    pad = pad_id(tokenizer)
    tokens: dict[str, int] = {}
    skipped: list[int] = []
    accuracy: dict[str, dict[str, RetrievalAccuracy]] = {}
    scores: dict[str, dict[str, UnitScores]] = {}
    for p in pairs:
        encoded = {
            pos: [encode_context(tokenizer, c) for c in sample_contexts(p, contexts, pos, seed, ID_CHARS)]
            for pos in POSITIONS
        }
        tokens[str(p)] = max(len(e.ids) for batch in encoded.values() for e in batch)
        if limit is not None and tokens[str(p)] > limit:
            skipped.append(p)
            if progress is not None:
                progress(len(POSITIONS) * len(variants))
            continue
        accuracy[str(p)] = {}
        scores[str(p)] = {}
        for pos, batch in encoded.items():
            # score_contexts batches contexts sorted by length, 16 at a time; chunks of the sorted list are
            # exactly those batches, one model call each, which score_variants can share between variants.
            order = sorted(range(len(batch)), key=lambda i: len(batch[i].ids))
            ranked = [batch[i] for i in order]
            by_rank = run(ranked, KV_BATCH, lambda chunk: [int(x) for x in score_contexts(model, chunk, KV_BATCH, pad)])
            by_variant = {}
            for name, ranked_scores in by_rank.items():
                unsorted = [0] * len(batch)
                for rank, i in enumerate(order):
                    unsorted[i] = ranked_scores[rank]
                by_variant[name] = unsorted
            s = _scores(_sha([list(e.ids) + [e.start] for e in batch]), by_variant)
            scores[str(p)][pos] = s
            accuracy[str(p)][pos] = RetrievalAccuracy(**_value(s, 1.0))
    retrieval = Retrieval(
        contexts=contexts, id_chars=ID_CHARS, max_positions=limit, tokens=tokens, skipped=skipped, accuracy=accuracy
    )
    return retrieval, scores


def run_eval(
    model_ref: str,
    manifest_path: str | None = None,
    *,
    revision: str | None = None,
    device: str | None = None,
    dtype: str = "float32",
    lengths: tuple[int, ...] = DEFAULT_LENGTHS,
    sequences: int = DEFAULT_SEQUENCES,
    seed: int = 1234,
    text: str | None = DEFAULT_TEXT,
    windows: int = DEFAULT_WINDOWS,
    allow_pickle: bool = False,
    kv: bool | None = None,
    kv_pairs: tuple[int, ...] = DEFAULT_PAIRS,
    kv_contexts: int = DEFAULT_CONTEXTS,
    random_draws: int = DEFAULT_DRAWS,
    resamples: int = stats.DEFAULT_RESAMPLES,
    progress: Callable[[str, int], Any] | None = None,
) -> EvalReport:
    """Load a model (and verify it is the manifest's base) and evaluate it.

    Raises:
        IntegrityError: the model's tensors differ from the manifest's base digests.
    """
    from pearzoo.binding import base_digests, verify_base
    from pearzoo.build import BuildOptions, prepare
    from pearzoo.manifest.io import read_manifest

    manifest = read_manifest(manifest_path) if manifest_path else None
    options = BuildOptions(model=model_ref, revision=revision, device=device, dtype=dtype, allow_pickle=allow_pickle)
    if manifest is not None:
        from pathlib import Path

        from pearzoo.manifest.recorded import recorded_recipe

        # The manifest carries the exact recipe it was built with; evaluate under the same proxy settings.
        ctx = prepare(options, (recorded_recipe(manifest, manifest_path), Path(manifest_path)))
        verify_base(manifest.base.tensors, base_digests(ctx.source, ctx.model, manifest.base.tensors), model_ref)
    else:
        ctx = prepare(options)
    per_variant = 2 + random_draws if manifest is not None else 1
    kv_steps = len(kv_pairs) * len(POSITIONS) if (kv if kv is not None else ctx.tokenizer is not None) else 0
    bar = progress("eval", (len(lengths) + kv_steps) * per_variant) if progress is not None else None
    try:
        return evaluate_model(
            ctx.model,
            ctx.source.model_id,
            ctx.space,
            geometry=ctx.geometry,
            manifest=manifest,
            tokenizer=ctx.tokenizer,
            lengths=lengths,
            sequences=sequences,
            seed=seed,
            text=text,
            windows=windows,
            kv=kv,
            kv_pairs=kv_pairs,
            kv_contexts=kv_contexts,
            random_draws=random_draws,
            resamples=resamples,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()


def merge_reports(parts: list[EvalReport]) -> EvalReport:
    """One report from runs of the same eval that measured different copy lengths (a long eval split into
    processes); at most one part may hold perplexity and one retrieval.

    Each length draws its sequences (``eval/<n>``) and its resamples (``bootstrap/eval/copy/<n>/...``) from its
    own streams, and perplexity and retrieval from theirs, so every value and interval of the result is what
    one run over all the lengths gives (tested); `seconds` is the sum of the parts.

    Raises:
        InvalidInputError: the parts differ in model, manifest, seed, sequences, control draws or bootstrap,
            measure a length twice, or more than one holds perplexity or retrieval.
    """
    if not parts:
        raise InvalidInputError("no reports to merge", field="reports")
    first = parts[0]
    same = ("model", "manifest", "sequences", "seed", "heads", "random_head_draws", "controls", "bootstrap")
    for part in parts[1:]:
        for key in same:
            if getattr(part, key) != getattr(first, key):
                raise InvalidInputError(f"reports differ in {key}; only runs of one eval split by length merge", field=key)
    lengths = [n for p in parts for n in p.copy_accuracy]
    if len(set(lengths)) != len(lengths):
        raise InvalidInputError(f"copy lengths measured twice: {sorted(lengths, key=int)}", field="lengths")
    with_ppl = [p for p in parts if p.perplexity is not None]
    with_kv = [p for p in parts if p.retrieval is not None]
    if len(with_ppl) > 1 or len(with_kv) > 1:
        raise InvalidInputError("more than one report holds perplexity or retrieval", field="reports")
    ordered = sorted(lengths, key=int)
    by_n = {n: p for p in parts for n in p.copy_accuracy}
    ppl = with_ppl[0] if with_ppl else None
    kv = with_kv[0] if with_kv else None
    samples = Samples(
        copy_accuracy={n: by_n[n].samples.copy_accuracy[n] for n in ordered},
        perplexity=ppl.samples.perplexity if ppl else None,
        kv_retrieval=kv.samples.kv_retrieval if kv else None,
    )
    intervals = Intervals(
        copy_accuracy={n: by_n[n].intervals.copy_accuracy[n] for n in ordered},
        perplexity=ppl.intervals.perplexity if ppl else None,
        kv_retrieval=kv.intervals.kv_retrieval if kv else None,
    )
    return first.model_copy(
        update={
            "copy_accuracy": {n: by_n[n].copy_accuracy[n] for n in ordered},
            "perplexity": ppl.perplexity if ppl else None,
            "retrieval": kv.retrieval if kv else None,
            "samples": samples,
            "intervals": intervals,
            "seconds": round(sum(p.seconds for p in parts), 3),
        }
    )
