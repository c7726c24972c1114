"""A manifest as a PEFT IA3 adapter: `pearzoo export MANIFEST --format peft --out DIR`.

PEAR scales head h's slice of the output projection's input by tau (spec §4). IA3 in its feed-forward form
does exactly that to a module: it multiplies the module's input by a learned vector, one factor per input
feature (`ia3_l`, shape (1, in_features)), and `merge_and_unload()` multiplies the weight's input columns
(Linear) or rows (Conv1D, `fan_in_fan_out`) by the same vector. So the adapter targets the output
projection of every layer with a head, feed-forward, with `ia3_l` = 1 except tau over each head's
head_dim features. The product is taken in float32, as `patch.fold.fold_weight` takes it, so merging a
float32 base gives the folded weights bit for bit.

The adapter is written from the manifest alone (no base weights are read): the module names come from
the recipe the manifest carries, the feature count from its geometry. `--model` checks the base first,
as `pearzoo patch --dry-run` does, and names it in `adapter_config.json`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pearzoo.errors import InvalidInputError
from pearzoo.manifest.schema import Manifest

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class AdapterExport:
    out: Path
    base_model: str
    revision: str | None
    modules: list[str]
    in_features: int


def ia3_vectors(manifest: Manifest) -> tuple[dict[str, Any], int, bool]:
    """(module path -> ia3_l (1, in_features) float32, in_features, fan_in_fan_out) from the manifest's recipe."""
    import torch

    from pearzoo.recipe.load import parse_recipe
    from pearzoo.recipe.schema import Layout

    recipe = parse_recipe(manifest.recipe.settings, source="manifest recipe.settings")
    g = manifest.base.geometry
    in_features = g.num_heads * g.head_dim
    vectors: dict[str, Any] = {}
    for h in manifest.heads:
        module = f"{recipe.heads.layers}.{h.layer}.{recipe.heads.output_projection}"
        vec = vectors.setdefault(module, torch.ones(1, in_features, dtype=torch.float32))
        vec[0, h.head * g.head_dim : (h.head + 1) * g.head_dim] = float(h.coefficient)
    return vectors, in_features, g.layout is Layout.rows


def export_peft(manifest: Manifest, out: Path, *, base_model: str | None = None, revision: str | None = None, force: bool = False) -> AdapterExport:
    """Write `manifest` as a PEFT IA3 adapter folder (config, weights, card, the manifest); atomic.

    Args:
        base_model (`str`, *optional*): the base to name in `adapter_config.json` (default: the manifest's).
        revision (`str`, *optional*): its revision (default: the manifest's).

    Raises:
        InvalidInputError: `out` exists (without `force`) or is a file.
    """
    from peft import IA3Config
    from safetensors.torch import save_file

    from pearzoo.manifest.io import write_manifest
    from pearzoo.patch.card import CARD_NAME, MANIFEST_NAME, render_adapter_card
    from pearzoo.patch.target import RunTemp, check_out, fsync_dir, move_into_place, write_error

    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; the adapter is a folder", path=str(out))
    check_out(out, force=force)  # --force replaces only an empty folder or one pearzoo wrote
    base_model = base_model or manifest.base.model_id
    revision = revision if revision is not None else manifest.base.revision
    vectors, in_features, conv1d = ia3_vectors(manifest)
    # Exactly these modules (a full-match regex over module names), feed-forward: the input is scaled.
    pattern = "^(" + "|".join(re.escape(m) for m in sorted(vectors)) + ")$"
    config = IA3Config(
        task_type="CAUSAL_LM",
        target_modules=pattern,
        feedforward_modules=pattern,
        fan_in_fan_out=conv1d,
        base_model_name_or_path=base_model,
        revision=revision,
        init_ia3_weights=True,
    )
    with RunTemp(out) as run:
        tmp = run.path()
        tmp.mkdir()
        try:
            config.save_pretrained(str(tmp))
            save_file(
                {f"base_model.model.{m}.ia3_l": v.contiguous() for m, v in sorted(vectors.items())},
                str(tmp / ADAPTER_WEIGHTS),
                metadata={"format": "pt", "pearzoo.manifest": manifest.digest},
            )
            (tmp / CARD_NAME).write_text(render_adapter_card(manifest, base_model=base_model, revision=revision), encoding="utf-8")
            write_manifest(manifest, tmp / MANIFEST_NAME)
            fsync_dir(tmp)
            move_into_place(tmp, out, run, force=force)
        except OSError as exc:
            raise write_error(exc, out) from exc
    return AdapterExport(out, base_model, revision, sorted(vectors), in_features)


def adapter_config(directory: Path) -> dict[str, Any]:
    return json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
