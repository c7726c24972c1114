"""`pearzoo eval`: copy accuracy on fresh held-out sequences, key-value retrieval, a random-heads control,
and perplexity.

The patched model is the base with the manifest's coefficients applied by runtime hooks, which tests
show equal to the folded weights; the control applies the same coefficients to K other heads. Retrieval
(`pearzoo.retrieval`) runs on models with a tokenizer unless turned off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from pearzoo.errors import InvalidInputError
from pearzoo.heads import HeadGeometry, HeadId
from pearzoo.hooks import scale_heads
from pearzoo.manifest.schema import Manifest
from pearzoo.proxy import TokenSpace, copy_score, generator, sample_sequences
from pearzoo.retrieval import DEFAULT_CONTEXTS, DEFAULT_PAIRS, ID_CHARS, POSITIONS

DEFAULT_LENGTHS = (10, 25, 50)
DEFAULT_SEQUENCES = 500
DEFAULT_TEXT = "builtin:tinyshakespeare-test"


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CopyAccuracy(_Out):
    base: float
    patched: float | None = None
    random_heads: float | None = None


class Perplexity(_Out):
    text: str
    windows: int
    window_length: int
    base: float
    patched: float | None = None
    random_heads: float | None = None


class RetrievalAccuracy(_Out):
    base: float
    patched: float | None = None
    random_heads: float | None = None


class Retrieval(_Out):
    contexts: int = Field(description="Contexts per number of pairs and position.")
    id_chars: int = Field(description="Length of the random hex ids.")
    max_positions: int | None = Field(description="The model's input limit; longer contexts are skipped.")
    tokens: dict[str, int] = Field(description="Longest context (through the answer) per number of pairs, in tokens.")
    skipped: list[int] = Field(default_factory=list, description="Numbers of pairs whose contexts exceed max_positions.")
    accuracy: dict[str, dict[str, RetrievalAccuracy]] = Field(
        description="Exact-match accuracy by number of pairs, then by position of the queried pair."
    )


class EvalReport(_Out):
    """What `pearzoo eval --json` prints."""

    model: str
    manifest: str | None = Field(default=None, description="Digest of the evaluated manifest.")
    sequences: int
    seed: int
    heads: list[str] = Field(default_factory=list)
    random_heads: list[str] = Field(default_factory=list)
    copy_accuracy: dict[str, CopyAccuracy]
    perplexity: Perplexity | None
    retrieval: Retrieval | None = None
    seconds: float


def random_heads(geometry: HeadGeometry, exclude: list[HeadId], k: int, seed: int) -> list[HeadId]:
    """K heads drawn uniformly (seeded) from those not in `exclude`."""
    pool = [h for h in geometry.all_heads() if h not in set(exclude)]
    order = torch.randperm(len(pool), generator=generator(seed, "eval/random-heads"))
    return sorted(pool[i] for i in order[:k].tolist())


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
    windows: int = 32,
    window_length: int = 128,
    kv: bool | None = None,
    kv_pairs: tuple[int, ...] = DEFAULT_PAIRS,
    kv_contexts: int = DEFAULT_CONTEXTS,
    progress: Callable[[int], None] | None = None,
) -> EvalReport:
    """Evaluate a loaded model, and with a manifest its patched and random-heads variants.

    Sequences come from stream ``eval/<n>`` of `seed`, which no build uses (builds draw ``locate``,
    ``train``, ``validation`` and ``metrics``), so they are held out from every stage of a build.
    Key-value contexts come from stream ``eval/kv/<P>`` of `seed`.

    Args:
        kv (`bool`, *optional*): run key-value retrieval; the default runs it when there is a tokenizer.
        kv_pairs (`tuple[int, ...]`): numbers of pairs per context.
        kv_contexts (`int`): contexts per number of pairs and position of the queried pair.

    Raises:
        InvalidInputError: `kv` is true but the model has no tokenizer.
    """
    from pearzoo.text import perplexity, read_text, text_windows

    start = time.perf_counter()
    if kv is None:
        kv = tokenizer is not None
    if kv and tokenizer is None:
        raise InvalidInputError("key-value retrieval needs a tokenizer, and the model has none", hint="pass --no-kv", field="kv")
    variants: dict[str, dict[HeadId, float] | None] = {"base": None}
    heads: list[HeadId] = []
    control: list[HeadId] = []
    if manifest is not None:
        assert geometry is not None
        heads = [HeadId(h.layer, h.head) for h in manifest.heads]
        taus = [h.coefficient for h in manifest.heads]
        control = random_heads(geometry, heads, len(heads), seed)
        variants["patched"] = dict(zip(heads, taus))
        variants["random_heads"] = dict(zip(control, taus))

    def run(coeffs: dict[HeadId, float] | None, fn: Callable[[], float]) -> float:
        if coeffs is None:
            return fn()
        with scale_heads(model, geometry, coeffs):
            return fn()

    copy: dict[str, dict[str, float]] = {}
    for n in lengths:
        seqs = sample_sequences(space, sequences, n, generator(seed, f"eval/{n}"))
        copy[str(n)] = {}
        for name, coeffs in variants.items():
            copy[str(n)][name] = run(coeffs, lambda: copy_score(model, seqs, n, space.prefix).accuracy)
            if progress is not None:
                progress(1)
    ppl = None
    if text is not None and tokenizer is not None:
        win = text_windows(tokenizer, read_text(text), windows, window_length)
        values = {name: run(coeffs, lambda: perplexity(model, win)) for name, coeffs in variants.items()}
        ppl = Perplexity(text=text, windows=windows, window_length=window_length, **values)
    retrieval = None
    if kv:
        retrieval = _retrieval(model, tokenizer, variants, run, kv_pairs, kv_contexts, seed, progress)
    return EvalReport(
        model=model_name,
        manifest=manifest.digest if manifest is not None else None,
        sequences=sequences,
        seed=seed,
        heads=[str(h) for h in heads],
        random_heads=[str(h) for h in control],
        copy_accuracy={k: CopyAccuracy(**v) for k, v in copy.items()},
        perplexity=ppl,
        retrieval=retrieval,
        seconds=round(time.perf_counter() - start, 3),
    )


def _retrieval(
    model: Any,
    tokenizer: Any,
    variants: dict[str, dict[HeadId, float] | None],
    run: Callable[[dict[HeadId, float] | None, Callable[[], float]], float],
    pairs: tuple[int, ...],
    contexts: int,
    seed: int,
    progress: Callable[[int], None] | None,
) -> Retrieval:
    from pearzoo.retrieval import encode_context, max_positions, pad_id, sample_contexts, score_contexts

    limit = max_positions(model, tokenizer)
    pad = pad_id(tokenizer)
    tokens: dict[str, int] = {}
    skipped: list[int] = []
    accuracy: dict[str, dict[str, RetrievalAccuracy]] = {}
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
        for pos, batch in encoded.items():
            values = {}
            for name, coeffs in variants.items():
                values[name] = run(coeffs, lambda: sum(score_contexts(model, batch, pad_id=pad)) / len(batch))
                if progress is not None:
                    progress(1)
            accuracy[str(p)][pos] = RetrievalAccuracy(**values)
    return Retrieval(
        contexts=contexts, id_chars=ID_CHARS, max_positions=limit, tokens=tokens, skipped=skipped, accuracy=accuracy
    )


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
    allow_pickle: bool = False,
    kv: bool | None = None,
    kv_pairs: tuple[int, ...] = DEFAULT_PAIRS,
    kv_contexts: int = DEFAULT_CONTEXTS,
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
    per_variant = 3 if manifest is not None else 1
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
            kv=kv,
            kv_pairs=kv_pairs,
            kv_contexts=kv_contexts,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
