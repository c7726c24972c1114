"""`pearzoo patch`: fold a manifest's coefficients into a copy of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pearzoo.cli._options import allow_pickle_option, overrides_option, revision_option
from pearzoo.cli._output import Output, json_option, quiet_option
from pearzoo.cli.registry import registry_option
from pearzoo.patch.api import PatchOptions


def _help(field: str) -> str:
    return PatchOptions.model_fields[field].description or ""


@click.command()
@click.argument("model")
@revision_option(help=_help("revision"))
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None, help=_help("manifest"))
@registry_option
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None, help=_help("out"))
@click.option("--format", "format_", type=click.Choice(["auto", "safetensors", "gguf"]), default="auto", show_default=True, help=_help("format"))
@click.option("--dry-run", is_flag=True, help=_help("dry_run"))
@allow_pickle_option(help=_help("allow_pickle"))
@click.option("--force", is_flag=True, help=_help("force"))
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(dir_okay=False, path_type=Path), help=_help("public_keys"))
@click.option("--require-signature/--no-require-signature", default=None, help=_help("require_signature"))
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=Path), default=None, help=_help("sign_key"))
@click.option("--build", "build_missing", is_flag=True, help="If no registry manifest fits MODEL's weights, build one with the recipe that covers it, then patch.")
@overrides_option(help="With --build: override a recipe setting (repeatable).")
@json_option
@quiet_option
def patch(
    model: str,
    manifest: Path | None,
    registry: str | None,
    build_missing: bool,
    overrides: tuple[str, ...],
    json_mode: bool,
    quiet: bool,
    format_: str,
    **kw: Any,
) -> None:
    """Patch a model: fold a manifest's coefficients into a copy of its weights.

    MODEL is a Hub id (read through the Hugging Face cache; HF_HUB_OFFLINE is honoured), a local directory
    or a .gguf file. A GGUF source gives a GGUF file (same size and quantization types, the folded heads'
    block scales scaled; --format safetensors gives a float folder instead). The manifest is the registry's newest for MODEL that fits its weights (one built from a
    GGUF fits only that GGUF file, and no other fits a GGUF) unless --manifest pins one. The digest
    of every tensor the fold touches is checked on the bytes that are folded (a wrong base fails and leaves
    no output); the output keeps the input's shard layout, is written to a temp directory and renamed at
    the end, and loads with plain transformers `from_pretrained`.

    \b
    Examples:
      pearzoo patch smollm2-135m-instruct --out smollm2-pear.gguf
      pearzoo patch smollm2-135m-instruct --format safetensors --out smollm2-pear
      pearzoo patch HuggingFaceTB/SmolLM2-135M-Instruct --build --out smollm2-hub-pear
      pearzoo patch ./my-llama --manifest my-llama.pear.json --dry-run
      pearzoo patch org/model --registry https://example.org/registry --build --json
    """
    ctx = click.get_current_context()
    explicit_registry = ctx.get_parameter_source("registry") is click.core.ParameterSource.COMMANDLINE
    if manifest is not None and (explicit_registry or build_missing):
        raise click.UsageError("--manifest pins the manifest: give it without --registry and --build")
    if overrides and not build_missing:
        raise click.UsageError("--set applies to --build only")
    output = Output(json_mode=json_mode, quiet=quiet)
    kw["public_keys"] = list(kw["public_keys"])
    options = PatchOptions(model=model, manifest=manifest, registry=registry, format=format_, **kw)
    if build_missing:
        from pearzoo.ensure import patch_or_build

        result = patch_or_build(options, overrides=overrides, progress=output.progress, notify=output.warn, inform=output.info)
    else:
        from pearzoo.patch.api import patch_model

        result = patch_model(options, progress=output.progress, notify=output.warn)
    heads = ", ".join(f"{h.layer}.{h.head}={h.coefficient:.4f}" for h in result.heads)
    if result.dry_run:
        human = (
            f"dry run: {result.model_id} is the base of manifest {result.manifest}\n"
            f"would fold {len(result.tensors)} tensor(s): {heads}"
        )
    else:
        human = (
            f"wrote {result.out}\n"
            f"manifest: {result.manifest} ({result.recipe})\n"
            f"folded {len(result.tensors)} tensor(s) in {result.shards} {'GGUF file' if result.format == 'gguf' else 'shard(s)'}: {heads}"
        )
        if result.output_signature:
            human += f"\nsigned: {result.output_signature}"
    if result.signed_by:
        human += f"\nmanifest signature: ok (key {result.signed_by[:12]})"
    output.result(result, human)


def register(group: click.Group) -> None:
    group.add_command(patch)
