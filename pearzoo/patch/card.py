"""The provenance a patched model carries: the `pearzoo` block of its config.json and its model card."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pearzoo import __version__
from pearzoo.manifest.schema import Manifest

CONFIG_KEY = "pearzoo"
MANIFEST_NAME = "pearzoo.manifest.json"
CARD_NAME = "README.md"
# huggingface_hub.repocard.REGEX_YAML_BLOCK: a card's YAML block (group 2).
_YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


def config_block(manifest: Manifest) -> dict[str, Any]:
    """The `pearzoo` block added to config.json: what was applied, by which pearzoo."""
    return {
        "version": __version__,
        "manifest": manifest.digest,
        "base_model": manifest.base.model_id,
        "base_revision": manifest.base.revision,
        "recipe": f"{manifest.recipe.id} {manifest.recipe.version}",
        "heads": [f"{h.layer}.{h.head}" for h in manifest.heads],
        "coefficients": [h.coefficient for h in manifest.heads],
    }


def _source_license(readme: Path) -> Any:
    """The `license` in a model card's YAML block, or None (also for a card we cannot parse).

    Read with huggingface_hub's own block pattern and `yaml.safe_load`, as `ModelCard.load` reads it, but
    without importing `huggingface_hub.repocard` (which pulls in its whole Hub client: ~0.6 s per patch).
    """
    import yaml

    try:
        match = _YAML_BLOCK.search(readme.read_text(encoding="utf-8"))
        data = yaml.safe_load(match.group(2)) if match else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data.get("license") if isinstance(data, dict) else None


def render_card(manifest: Manifest, source_dir: Path) -> str:
    """A model card for the patched model: huggingface_hub `ModelCardData` as YAML, then the body."""
    from huggingface_hub.repocard_data import ModelCardData

    readme = source_dir / CARD_NAME
    license_ = _source_license(readme) if readme.is_file() else None
    m = manifest.metrics
    data = ModelCardData(
        base_model=manifest.base.model_id,
        library_name="transformers",
        license=license_,
        tags=["pearzoo", "pear"],
        pearzoo={"manifest": manifest.digest, **{k: v for k, v in config_block(manifest).items() if k != "manifest"}},
    )
    heads = "\n".join(f"| {h.layer}.{h.head} | {h.coefficient:.6g} | {h.score:.4g} |" for h in manifest.heads)
    ppl = ""
    if m.perplexity_before is not None and m.perplexity_after is not None:
        ppl = f"| perplexity ({m.perplexity_text}) | {m.perplexity_before:.4f} | {m.perplexity_after:.4f} |\n"
    body = f"""
# {manifest.base.model_id} + PEAR

This is `{manifest.base.model_id}` with PEAR attention re-weighting folded into its weights by
pearzoo {__version__}: each listed head's slice of the attention output projection is multiplied by its
coefficient. The architecture, size and speed are unchanged; load it like the base model.

- manifest digest: `{manifest.digest}` (the full manifest is `{MANIFEST_NAME}`; check it with `pearzoo verify {MANIFEST_NAME}`)
- recipe: `{manifest.recipe.id}` {manifest.recipe.version}
- base revision: `{manifest.base.revision or "unknown"}`

| head | coefficient | score |
|---|---|---|
{heads}

| metric | base | patched |
|---|---|---|
| copy accuracy (n={m.copy_length}) | {m.copy_before.accuracy:.4f} | {m.copy_after.accuracy:.4f} |
{ppl}"""
    # What str(ModelCard(...)) of this text gives (ModelCard.load reads it back), without importing repocard.
    return f"---\n{data.to_yaml()}\n---\n{body}"
