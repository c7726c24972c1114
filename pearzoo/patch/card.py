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


# The Hub's base_model_relation values are adapter, merge, quantized and finetune. Folded weights are none of the
# first three: the base's output projections are changed by learned coefficients, so the closest is finetune.
FOLDED_RELATION = "finetune"
FOLDED_RELATION_REASON = (
    "`base_model_relation: finetune` is the closest of the Hub's values (adapter, merge, quantized, finetune): the "
    "coefficients were learned on the frozen base and are folded into its weights, so this is neither an adapter "
    "(nothing to load beside the base), a merge of several models, nor a quantization."
)


def eval_results(manifest: Manifest) -> list[Any]:
    """The manifest's held-out copy accuracy and perplexity (after patching) as huggingface_hub `EvalResult`s, the
    Hub's model-index form. The base's values are in the card's table."""
    from huggingface_hub.repocard_data import EvalResult

    m = manifest.metrics
    results = [
        EvalResult(
            task_type="text-generation",
            task_name="in-context copying (PEAR proxy task)",
            dataset_type="pearzoo/copy-proxy",
            dataset_name=f"pearzoo copy proxy: {m.copy_sequences} held-out random sequences of {m.copy_length} tokens, repeated",
            metric_type="accuracy",
            metric_name="copy accuracy",
            metric_value=m.copy_after.accuracy,
        )
    ]
    if m.perplexity_after is not None:
        text = (m.perplexity_text or "text").split(":")[-1]  # "builtin:tinyshakespeare-validation"
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="language modeling",
                dataset_type=f"pearzoo/{text}",
                dataset_name=text,
                metric_type="perplexity",
                metric_name="perplexity",
                metric_value=m.perplexity_after,
            )
        )
    return results


def _card_data(manifest: Manifest, *, base_model: str, library: str, relation: str, tags: list[str], license_: Any = None, **extra: Any) -> Any:
    from huggingface_hub.repocard_data import ModelCardData

    return ModelCardData(
        base_model=base_model,
        base_model_relation=relation,
        library_name=library,
        license=license_,
        tags=tags,
        model_name=f"{base_model.split('/')[-1]}-pear",
        eval_results=eval_results(manifest),
        pearzoo={"manifest": manifest.digest, **{k: v for k, v in config_block(manifest).items() if k != "manifest"}},
        **extra,
    )


def _tables(manifest: Manifest) -> str:
    m = manifest.metrics
    heads = "\n".join(f"| {h.layer}.{h.head} | {h.coefficient:.6g} | {h.score:.4g} |" for h in manifest.heads)
    ppl = ""
    if m.perplexity_before is not None and m.perplexity_after is not None:
        ppl = f"| perplexity ({m.perplexity_text}) | {m.perplexity_before:.4f} | {m.perplexity_after:.4f} |\n"
    return f"""| head | coefficient | score |
|---|---|---|
{heads}

| metric | base | patched |
|---|---|---|
| copy accuracy (n={m.copy_length}) | {m.copy_before.accuracy:.4f} | {m.copy_after.accuracy:.4f} |
{ppl}"""


def render_card(manifest: Manifest, source_dir: Path) -> str:
    """A model card for the patched model: huggingface_hub `ModelCardData` as YAML, then the body."""
    readme = source_dir / CARD_NAME
    license_ = _source_license(readme) if readme.is_file() else None
    data = _card_data(
        manifest, base_model=manifest.base.model_id, library="transformers", relation=FOLDED_RELATION, tags=["pearzoo", "pear"], license_=license_
    )
    body = f"""
# {manifest.base.model_id} + PEAR

This is `{manifest.base.model_id}` with PEAR attention re-weighting folded into its weights by
pearzoo {__version__}: each listed head's slice of the attention output projection is multiplied by its
coefficient. The architecture, size and speed are unchanged; load it like the base model.

- manifest digest: `{manifest.digest}` (the full manifest is `{MANIFEST_NAME}`; check it with `pearzoo verify {MANIFEST_NAME}`)
- recipe: `{manifest.recipe.id}` {manifest.recipe.version}
- base revision: `{manifest.base.revision or "unknown"}`
- {FOLDED_RELATION_REASON}

{_tables(manifest)}"""
    # What str(ModelCard(...)) of this text gives (ModelCard.load reads it back), without importing repocard.
    return f"---\n{data.to_yaml()}\n---\n{body}"


def render_adapter_card(manifest: Manifest, *, base_model: str, revision: str | None) -> str:
    """The card of a PEFT IA3 adapter (`pearzoo export --format peft`): `base_model_relation: adapter`."""
    data = _card_data(manifest, base_model=base_model, library="peft", relation="adapter", tags=["pearzoo", "pear", "peft", "ia3"])
    gguf = ""
    if manifest.base.format == "gguf":
        gguf = (
            f"\nThe coefficients were learned on `{manifest.base.file}` dequantized to {manifest.base.dtype}"
            f"{f' ({manifest.base.origin})' if manifest.base.origin else ''}, not on the Hub's weights of `{base_model}`.\n"
        )
    body = f"""
# PEAR IA3 adapter for {base_model}

An IA3 adapter that applies PEAR attention re-weighting: it scales the input of each listed layer's attention
output projection, one factor per input feature, a head's coefficient repeated over its features. Load it with
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_model}"{f', revision="{revision}"' if revision else ''}), DIR)`;
`merge_and_unload()` gives the weights `pearzoo patch` writes.
{gguf}
- manifest digest: `{manifest.digest}` (the full manifest is `{MANIFEST_NAME}`; check it with `pearzoo verify {MANIFEST_NAME}`)
- recipe: `{manifest.recipe.id}` {manifest.recipe.version}
- base revision: `{revision or "unknown"}`

{_tables(manifest)}"""
    return f"---\n{data.to_yaml()}\n---\n{body}"
