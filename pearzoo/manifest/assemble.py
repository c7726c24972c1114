"""A build's results -> a sealed `Manifest`: the one place the manifest document is put together.

`build_manifest` runs the stages and hands their results here; nothing else writes a manifest's fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pearzoo.manifest.io import parse_manifest, seal
from pearzoo.manifest.schema import MANIFEST_SCHEMA_VERSION, BuildInfo, Manifest
from pearzoo.recipe.load import recipe_digest
from pearzoo.recipe.schema import Recipe

if TYPE_CHECKING:
    from pearzoo.heads import HeadGeometry
    from pearzoo.locate import LocateResult
    from pearzoo.source import ModelSource
    from pearzoo.train import TrainResult


def assemble_manifest(
    *,
    source: ModelSource,
    model: Any,
    geometry: HeadGeometry,
    recipe: Recipe,
    overrides: list[str],
    located: LocateResult,
    trained: TrainResult,
    tensors: dict[str, str],
    files: dict[str, str] | None = None,
    label: str | None = None,
    k: int | None = None,
    copy_before: Any,
    copy_after: Any,
    copy_sequences: int,
    environment: BuildInfo,
) -> Manifest:
    """Put a build's results into a manifest, validate it and seal it with its content digest.

    Args:
        source (`ModelSource`): the base as resolved (id, revision, GGUF file, origin).
        model: the loaded base (its config and weight dtype are recorded).
        geometry (`HeadGeometry`): the head layout the recipe gave for this model.
        recipe (`Recipe`): the recipe as the build ran it, `overrides` applied.
        overrides (`list[str]`): the `--set` overrides, recorded as given.
        located (`LocateResult`): the locate stage; its top K are the manifest's heads.
        trained (`TrainResult`): the train stage on those heads.
        tensors (`dict[str, str]`): sha256 of each base tensor the fold touches.
        files (`dict[str, str]`, *optional*): sha256 of every weight file of the base (schema 2's whole-base binding).
        label (`str`, *optional*): the model as the user named it, for errors (default: the model id).
        k (`int`, *optional*): the number of heads located, resolved for this model (a recipe may give a percentage);
            default the recipe's `locate.k`.
        copy_before, copy_after: the held-out copy score (`accuracy`, `loss`) without and with the coefficients.
        copy_sequences (`int`): how many held-out sequences those scores used.
        environment (`BuildInfo`): from `pearzoo.manifest.environment.build_environment`.

    Returns:
        `Manifest`, digest set.
    """
    from pearzoo.source import dtype_name

    spec = recipe.train
    score = located.score
    delta = located.delta
    config = model.config
    best = trained.best
    document = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "base": {
            "model_id": source.model_id,
            "revision": source.revision,
            "format": "gguf" if source.gguf_file else "safetensors",
            "file": source.gguf_file,
            "origin": source.origin,
            "model_type": config.model_type,
            "architectures": list(getattr(config, "architectures", None) or []),
            "dtype": dtype_name(model.get_input_embeddings().weight.dtype),
            "geometry": {
                "num_layers": geometry.num_layers,
                "num_heads": geometry.num_heads,
                "head_dim": geometry.head_dim,
                "layout": geometry.layout.value,
            },
            "tensors": tensors,
            "files": files,
        },
        "recipe": {
            "id": recipe.id,
            "version": recipe.version,
            "digest": recipe_digest(recipe),
            "overrides": list(overrides),
            "settings": recipe.model_dump(mode="json"),
        },
        "locate": {
            "scope": recipe.locate.scope.value,
            "k": recipe.locate.k if k is None else k,
            "configurations": [
                {"samples": c.samples, "length": c.length, "clean_metric": c.clean_metric} for c in located.configurations
            ],
        },
        "heads": [
            {
                "layer": h.layer,
                "head": h.head,
                "score": float(score[h.layer, h.head]),
                "delta": float(delta[h.layer, h.head]),
                "coefficient": float(tau),
            }
            for h, tau in zip(trained.heads, trained.coefficients)
        ],
        "metrics": {
            "copy_length": spec.length,
            "copy_sequences": copy_sequences,
            "copy_before": {"accuracy": copy_before.accuracy, "loss": copy_before.loss},
            "copy_after": {"accuracy": copy_after.accuracy, "loss": copy_after.loss},
            "perplexity_text": spec.preservation.text if trained.base_perplexity is not None else None,
            "perplexity_before": trained.base_perplexity,
            "perplexity_after": best.perplexity,
            "perplexity_budget": spec.preservation.budget,
            "best_step": trained.best_step,
            "steps": spec.steps,
            "history": [
                {"step": p.step, "loss": p.loss, "accuracy": p.accuracy, "perplexity": p.perplexity, "within_budget": p.within_budget}
                for p in trained.history
            ],
        },
        "build": environment.model_dump(mode="json"),
    }
    # Parsed as every reader parses it, so a build cannot seal what verify, publish or patch would refuse (tau bounds).
    return parse_manifest(seal(document), source=f"manifest built for {label or source.model_id}")
