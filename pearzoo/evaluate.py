"""`pearzoo eval`: copy accuracy on fresh held-out sequences, a random-heads control, and perplexity.

The patched model is the base with the manifest's coefficients applied by runtime hooks, which tests
show equal to the folded weights; the control applies the same coefficients to K other heads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from pearzoo.heads import HeadGeometry, HeadId
from pearzoo.hooks import scale_heads
from pearzoo.manifest.schema import Manifest
from pearzoo.proxy import TokenSpace, copy_score, generator, sample_sequences

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
    progress: Callable[[int], None] | None = None,
) -> EvalReport:
    """Evaluate a loaded model, and with a manifest its patched and random-heads variants.

    Sequences come from stream ``eval/<n>`` of `seed`, which no build uses (builds draw ``locate``,
    ``train``, ``validation`` and ``metrics``), so they are held out from every stage of a build.
    """
    from pearzoo.text import perplexity, read_text, text_windows

    start = time.perf_counter()
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
    return EvalReport(
        model=model_name,
        manifest=manifest.digest if manifest is not None else None,
        sequences=sequences,
        seed=seed,
        heads=[str(h) for h in heads],
        random_heads=[str(h) for h in control],
        copy_accuracy={k: CopyAccuracy(**v) for k, v in copy.items()},
        perplexity=ppl,
        seconds=round(time.perf_counter() - start, 3),
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

        from pearzoo.recipe.load import parse_recipe

        # The manifest carries the exact recipe it was built with; evaluate under the same proxy settings.
        source = f"{manifest_path}: recipe.settings"
        ctx = prepare(options, (parse_recipe(manifest.recipe.settings, source=source), Path(manifest_path)))
        verify_base(manifest.base.tensors, base_digests(ctx.source, ctx.model, manifest.base.tensors), model_ref)
    else:
        ctx = prepare(options)
    per_variant = 3 if manifest is not None else 1
    bar = progress("eval", len(lengths) * per_variant) if progress is not None else None
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
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
