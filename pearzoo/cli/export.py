"""`pearzoo export`: a manifest in another runtime's form (a PEFT IA3 adapter)."""

from __future__ import annotations

from pathlib import Path

import click

from pearzoo.cli._options import allow_pickle_option, model_option, revision_option
from pearzoo.cli._output import Output, json_option
from pearzoo.cli.registry import registry_option


@click.command()
@click.argument("manifest")
@click.option("--format", "format_", type=click.Choice(["peft"]), default="peft", show_default=True, help="peft: an IA3 adapter folder for PeftModel.from_pretrained.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Output folder (written to a temp folder, then renamed).")
@model_option(required=False, help="Check this model is the manifest's base first (as patch --dry-run), and name it in adapter_config.json.")
@revision_option(help="Hub revision of --model.")
@allow_pickle_option(help="Allow .bin/.pt weights for --model (they can run code when loaded).")
@registry_option
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@json_option
def export(manifest: str, format_: str, out: Path, model: str | None, revision: str | None, allow_pickle: bool, registry: str | None, force: bool, json_mode: bool) -> None:
    """Export a manifest as a PEFT IA3 adapter.

    MANIFEST is a manifest file, or a model name the registry has a manifest for (its newest). The adapter
    scales the input of each listed layer's attention output projection (IA3, feed-forward form): loaded with
    PeftModel.from_pretrained on the base, it gives the patched model, and merge_and_unload() gives the
    weights pearzoo patch writes. adapter_config.json names the base model and revision (the manifest's, or
    --model's); the card (README.md) carries the manifest digest and its metrics.

    \b
    Examples:
      pearzoo export smollm2.pear.json --out smollm2-pear-ia3
      pearzoo export llama-rope --out llama-rope-ia3 --model llama-rope
    """
    from pearzoo.formats.peft import export_peft
    from pearzoo.manifest.io import read_manifest
    from pearzoo.patch.resolve import manifest_file

    output = Output(json_mode=json_mode)
    m = read_manifest(manifest_file(manifest, registry))
    base, base_revision = None, None
    if model is not None:
        from pearzoo.patch.api import PatchOptions, patch_model
        from pearzoo.patch.resolve import resolve_source

        checked = patch_model(
            PatchOptions(model=model, revision=revision, dry_run=True, format="safetensors", allow_pickle=allow_pickle, out=out), manifest=m
        )
        source = resolve_source(model, revision)
        # A local folder is named by its path, so that from_pretrained finds it; a Hub model by its id.
        base = str(source.path) if source.kind == "directory" else checked.model_id
        base_revision = checked.revision
    done = export_peft(m, out, base_model=base, revision=base_revision, force=force)
    data = {
        "format": format_,
        "out": str(done.out),
        "manifest": m.digest,
        "base_model": done.base_model,
        "revision": done.revision,
        "modules": done.modules,
    }
    output.result(data, f"wrote {done.out}\nIA3 adapter for {done.base_model} ({len(done.modules)} module(s)), manifest {m.digest}")


def register(group: click.Group) -> None:
    group.add_command(export)
