"""recipe -> locate -> train -> Manifest. The only build orchestrator."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pearzoo.binding import base_digests, base_files
from pearzoo.errors import BudgetError, InvalidInputError
from pearzoo.heads import HeadGeometry, HeadId, geometry_from_config, text_config
from pearzoo.manifest.schema import Manifest
from pearzoo.recipe.catalog import get_recipe, recipe_for_config
from pearzoo.recipe.schema import Recipe
from pearzoo.source import ModelSource, load_config, load_model, resolve_model

logger = logging.getLogger(__name__)

# A progress factory takes (description, total) and returns an update(n) callable plus a close().
ProgressFactory = Callable[[str, int], Any]

METRIC_SEQUENCES = 128


@dataclass
class BuildOptions:
    """What to build: a model, an optional recipe and settings overrides, and where to run."""

    model: str
    recipe: str | None = None
    overrides: list[str] = field(default_factory=list)
    revision: str | None = None
    device: str | None = None
    device_map: str | dict[str, Any] | None = None
    dtype: str = "float32"
    allow_pickle: bool = False
    max_memory: dict[Any, str] | None = None  # with device_map: accelerate's per-device bound (forces a split)
    offload_folder: str | None = None  # with device_map: where `disk` entries live


@dataclass
class BuildContext:
    options: BuildOptions
    source: ModelSource
    recipe: Recipe
    recipe_path: Path
    model: Any
    tokenizer: Any
    geometry: HeadGeometry
    space: Any
    k: int = 0  # locate.k resolved against this model's heads (a recipe may give a percentage)
    seconds: dict[str, float] = field(default_factory=dict)


def _special_ids(tokenizer: Any, config: Any) -> set[int]:
    ids: set[int] = set()
    if tokenizer is not None:
        ids |= {int(i) for i in tokenizer.all_special_ids if i is not None}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids |= {int(v) for v in value}
    return ids


def resolve_recipe(options: BuildOptions, source: ModelSource) -> tuple[Recipe, Path]:
    if options.recipe:
        return get_recipe(options.recipe, options.overrides)
    recipe, path = recipe_for_config(load_config(source), source.model_id)
    if options.overrides:
        recipe, path = get_recipe(str(path), options.overrides)
    return recipe, path


def prepare(options: BuildOptions, recipe: tuple[Recipe, Path] | None = None) -> BuildContext:
    """Resolve and load the model and the recipe, and check that they fit together.

    `recipe` (a recipe and where it came from) replaces `options.recipe`, e.g. the settings a manifest recorded.
    """
    from pearzoo.proxy import token_space

    start = time.perf_counter()
    source = resolve_model(options.model, options.revision)
    recipe, recipe_path = recipe or resolve_recipe(options, source)
    model, tokenizer = load_model(
        source,
        dtype=options.dtype,
        device=options.device,
        device_map=options.device_map,
        allow_pickle=options.allow_pickle,
        max_memory=options.max_memory,
        offload_folder=options.offload_folder,
    )
    config = model.config
    if config.model_type not in recipe.match.model_types:
        raise InvalidInputError(
            f"recipe {recipe.id} covers {', '.join(recipe.match.model_types)}, not model_type '{config.model_type}'",
            field="recipe",
        )
    geometry = geometry_from_config(recipe.heads, config)
    k = recipe.locate.resolve_k(geometry.total_heads)
    if k > geometry.total_heads:
        raise InvalidInputError(f"locate.k: {k} exceeds the model's {geometry.total_heads} heads", field="locate.k")
    vocab = model.get_input_embeddings().weight.shape[0]
    if tokenizer is not None:
        # A tokenizer that emits ids the embedding has no row for would fail later as an IndexError.
        if len(tokenizer) > vocab:
            raise InvalidInputError(
                f"{source.path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only {vocab} "
                "(tokenizer files of another model?)",
                field="tokenizer",
            )
        vocab = min(vocab, len(tokenizer))
    text_cfg = text_config(config)
    space = token_space(recipe.proxy, vocab, _special_ids(tokenizer, text_cfg), getattr(text_cfg, "bos_token_id", None))
    ctx = BuildContext(options, source, recipe, recipe_path, model, tokenizer, geometry, space, k=k)
    ctx.seconds["load"] = time.perf_counter() - start
    return ctx


def _bar(factory: ProgressFactory | None, desc: str, total: int) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    if factory is None:
        return None, lambda: None
    bar = factory(desc, total)
    return bar.update, bar.close


def run_locate(ctx: BuildContext, progress: ProgressFactory | None = None, candidates: int | None = None) -> Any:
    """Locate with the recipe's settings; `candidates` pre-screens and scores only that many heads exactly."""
    from pearzoo.locate import locate_heads

    scored = candidates if candidates is not None else ctx.geometry.total_heads
    total = scored * len(ctx.recipe.locate.configurations)
    update, close = _bar(progress, f"locate ({ctx.recipe.locate.scope.value})", total)
    try:
        result = locate_heads(
            ctx.model, ctx.geometry, ctx.recipe.locate.model_copy(update={"k": ctx.k}), ctx.space, ctx.recipe.seed,
            update, candidates=candidates,
        )
    finally:
        close()
    ctx.seconds["locate"] = result.seconds
    return result


def text_windows_for(ctx: BuildContext) -> Any:
    from pearzoo.text import read_text, text_windows

    pres = ctx.recipe.train.preservation
    if ctx.tokenizer is None:
        logger.warning("model has no tokenizer: the perplexity budget is not checked")
        return None
    return text_windows(ctx.tokenizer, read_text(pres.text), pres.windows, pres.window_length)


def train_text_for(ctx: BuildContext) -> Any:
    """Windows for the training-time preservation term: every whole window after the budget's windows."""
    from pearzoo.text import read_text, text_windows

    pres = ctx.recipe.train.preservation
    if pres.weight == 0 or ctx.tokenizer is None:
        return None
    ids = len(ctx.tokenizer(read_text(pres.text), add_special_tokens=False)["input_ids"])
    available = ids // pres.window_length - pres.windows
    if available < pres.text_batch:
        raise InvalidInputError(
            f"train.preservation.text has {ids} tokens: too few for {pres.windows} budget windows plus "
            f"{pres.text_batch} training windows of {pres.window_length}",
            field="train.preservation",
        )
    return text_windows(ctx.tokenizer, read_text(pres.text), available, pres.window_length, offset=pres.windows)


def run_train(ctx: BuildContext, heads: list[HeadId], progress: ProgressFactory | None = None) -> Any:
    from pearzoo.train import train_coefficients

    windows = text_windows_for(ctx)
    train_text = train_text_for(ctx)
    update, close = _bar(progress, "train", ctx.recipe.train.steps)
    try:
        result = train_coefficients(
            ctx.model, ctx.geometry, heads, ctx.recipe.train, ctx.space, ctx.recipe.seed, windows, train_text, update
        )
    finally:
        close()
    ctx.seconds["train"] = result.seconds
    return result


def require_budget(trained: Any, budget: float) -> None:
    """Refuse a training run none of whose trained steps kept perplexity within the budget.

    Step 0 (every coefficient 1) is always within the budget, so without this check such a run would give a
    manifest that changes nothing.
    """
    trained_steps = [p for p in trained.history if p.step > 0]
    if trained_steps and not any(p.within_budget for p in trained_steps):
        lowest = min(p.perplexity for p in trained_steps)
        raise BudgetError(
            f"train: no step kept perplexity within the {budget:.1%} budget "
            f"(base {trained.base_perplexity:.3f}, lowest after a step {lowest:.3f})",
            hint="raise train.preservation.budget or lower train.lr",
        )


def build_manifest(options: BuildOptions, progress: ProgressFactory | None = None) -> Manifest:
    """Run locate and train for a model and return a sealed manifest.

    Args:
        options (`BuildOptions`): the model, recipe, overrides and device settings.
        progress (*optional*): a factory of progress bars for the long stages.

    Returns:
        `Manifest`, digest set.

    Raises:
        NotFoundError, OfflineError: the model or recipe cannot be found.
        UnsupportedArchitectureError: no recipe covers the model.
        InvalidInputError: the recipe does not fit the model (K, heads, dtype).
        BudgetError: no trained step kept perplexity within the recipe's budget.

    Example:
        >>> manifest = build_manifest(BuildOptions(model="smollm2-135m-instruct"))
        >>> [str(h.layer) + "." + str(h.head) for h in manifest.heads][:3]
    """
    from pearzoo.hooks import scale_heads
    from pearzoo.manifest.assemble import assemble_manifest
    from pearzoo.manifest.environment import build_environment
    from pearzoo.proxy import copy_score, generator, sample_sequences
    from pearzoo.replay import FrozenPrefix

    start = time.perf_counter()
    ctx = prepare(options)
    located = run_locate(ctx, progress)
    heads = located.selected
    trained = run_train(ctx, heads, progress)
    require_budget(trained, ctx.recipe.train.preservation.budget)

    spec = ctx.recipe.train
    held_out = sample_sequences(ctx.space, METRIC_SEQUENCES, spec.length, generator(ctx.recipe.seed, "metrics"))
    coefficients = dict(zip(heads, trained.coefficients))
    # The layers below the lowest re-weighted one compute the same for both scores: run once, replayed for `after`.
    # Always in the model's own arithmetic, whatever train.precision says: these are the numbers a user checks
    # against the patched model (tests/patch/test_e2e_smollm2.py compares them exactly).
    frozen = FrozenPrefix(ctx.model, ctx.geometry, min(h.layer for h in heads))
    with frozen.active():
        before = copy_score(ctx.model, held_out, spec.length, ctx.space.prefix)
        with scale_heads(ctx.model, ctx.geometry, coefficients):
            after = copy_score(ctx.model, held_out, spec.length, ctx.space.prefix)
    ctx.seconds["total"] = time.perf_counter() - start
    return assemble_manifest(
        source=ctx.source,
        model=ctx.model,
        geometry=ctx.geometry,
        recipe=ctx.recipe,
        overrides=options.overrides,
        located=located,
        trained=trained,
        tensors=base_digests(ctx.source, ctx.model, {ctx.geometry.tensor_name(h.layer) for h in heads}),
        files=base_files(ctx.source),
        label=options.model,
        k=ctx.k,
        copy_before=before,
        copy_after=after,
        copy_sequences=METRIC_SEQUENCES,
        environment=build_environment(ctx.model, dtype=options.dtype, seed=ctx.recipe.seed, seconds=ctx.seconds),
    )
