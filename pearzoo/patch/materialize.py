"""Patching weights that have no safetensors to stream: a GGUF file, or (with `allow_pickle`) pickle files.

They are loaded with transformers (GGUF dequantized to the manifest's dtype), verified in memory, saved as
safetensors to a staging folder beside the target, and patched from there (`write.write_patched`). Memory is
then the whole model, not one tensor. Under a schema-2 manifest the source files are hashed against
`base.files` before they are loaded, so a pickle that is not the manifest's base is never unpickled.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pearzoo.binding import file_mismatch, verify_base
from pearzoo.errors import IntegrityError, NotFoundError, UnsafeInputError
from pearzoo.manifest.schema import Manifest
from pearzoo.patch.plan import FoldPlan, TensorFold, bound_files, coefficients_by_layer, plan_folds, read_config, verify_plan
from pearzoo.patch.target import RunTemp
from pearzoo.patch.write import WriteReport, write_patched
from pearzoo.source import ModelSource

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
ProgressFactory = Callable[[str, int], Any]


def verify_source_files(source: ModelSource, manifest: Manifest) -> None:
    """Schema 2: hash the files a GGUF or pickle source is loaded from against `base.files` (before loading).

    Raises:
        IntegrityError: a file missing, unbound, or other bytes.
    """
    from pearzoo.binding import weight_files
    from pearzoo.digest import file_digest

    expected = manifest.base.files
    if expected is None:
        return
    names = weight_files(source)
    bound_files(source.path, names, expected, source.model_id)
    for name in names:
        actual = file_digest(source.path / name)
        if actual != expected[name]:
            raise file_mismatch(source.model_id, name, expected[name], actual)


def patch_materialized(
    source: ModelSource,
    manifest: Manifest,
    out: Path,
    *,
    dry_run: bool,
    allow_pickle: bool,
    force: bool,
    progress: ProgressFactory | None,
    finish: Callable[[Path], Any] | None = None,
) -> tuple[FoldPlan, WriteReport | None]:
    """GGUF or pickle: verify the files, load with transformers, verify in memory, stage as safetensors, patch that."""
    from pearzoo.heads import geometry_from_config
    from pearzoo.manifest.recorded import recorded_recipe
    from pearzoo.shards import digest_of, model_tensor
    from pearzoo.source import load_model

    if not source.gguf_file:
        if not any(f.suffix in PICKLE_SUFFIXES for f in source.path.iterdir()):
            raise NotFoundError(f"{source.path}: no weights (no .safetensors, .bin or .pt files)", path=str(source.path))
        if not allow_pickle:
            raise UnsafeInputError(
                f"{source.path}: only pickle weights (.bin/.pt) found; they can run code when loaded",
                hint="pass --allow-pickle if you trust this model",
                path=str(source.path),
            )
        read_config(source.path)  # refuses an already-patched pickle checkpoint before loading it
    verify_source_files(source, manifest)
    model, tokenizer = load_model(source, dtype=manifest.base.dtype, allow_pickle=allow_pickle)
    recipe = recorded_recipe(manifest)
    geometry = geometry_from_config(recipe.heads, model.config)
    names = set(manifest.base.tensors)
    for h in manifest.heads:
        if geometry.tensor_name(h.layer) not in names:
            name = geometry.tensor_name(h.layer)
            raise IntegrityError(f"the manifest does not bind tensor {name} (no digest in base.tensors)", tensor=name)
    actual = {}
    for name in names:
        try:
            actual[name] = digest_of(name, model_tensor(model, name))
        except LookupError:
            continue
    verify_base(manifest.base.tensors, actual, source.model_id)
    if dry_run:
        by_layer = coefficients_by_layer(manifest)
        in_memory = {
            geometry.tensor_name(layer): TensorFold(geometry.tensor_name(layer), taus, manifest.base.tensors[geometry.tensor_name(layer)])
            for layer, taus in by_layer.items()
        }
        return FoldPlan(source.path, [], {"": in_memory}, geometry.head_dim, geometry.layout), None
    with RunTemp(out) as run:
        stage = run.path(".stage")
        try:
            stage_safetensors(model, tokenizer, stage)
            del model
            config = read_config(stage)
            # The stage is ours, from a verified load: its files have no manifest digest (bind_files off), and
            # the folded tensors are checked again as write_patched reads them.
            plan = plan_folds(stage, config, manifest, model_id=source.model_id, bind_files=False)
            verify_plan(plan, manifest, source.model_id, defer_folded=True)
            return plan, write_patched(plan, manifest, config, out, force=force, progress=progress, run=run, finish=finish)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def stage_safetensors(model: Any, tokenizer: Any, directory: Path, max_shard_size: str = "5GB") -> None:
    """Save a loaded model as a plain safetensors checkpoint (config, shards and index, tokenizer).

    transformers refuses `save_pretrained` for a GGUF-loaded model (its quantizer is not serializable), and
    the dequantized weights are all we need, so the state dict is written here: tied weights once (the
    first name; transformers re-ties them on load), shards as huggingface_hub splits them, and the config
    without its `quantization_config`.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    state: dict[str, Any] = {}
    seen: set[tuple[int, Any, tuple[int, ...]]] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().contiguous()
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config = model.config.to_diff_dict()
    config.pop("quantization_config", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.to_json_file(str(directory / "generation_config.json"))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
