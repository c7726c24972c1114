"""`pearzoo publish`, `pearzoo list`, `pearzoo show`: the manifest registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pearzoo import settings
from pearzoo.cli._output import Output, json_option

REGISTRY_HELP = "Registry directory or http(s) URL. Default: the registry shipped with pearzoo."


def registry_option(f: Any) -> Any:
    return click.option("--registry", default=None, envvar=settings.PEARZOO_REGISTRY, show_envvar=True, help=REGISTRY_HELP)(f)


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--registry", required=True, envvar=settings.PEARZOO_REGISTRY, show_envvar=True, help="Registry directory to publish into (created if absent).")
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Sign the manifest with this EC private key (PEM): an OMS bundle <digest>.sig beside it.")
@json_option
def publish(manifest: Path, registry: str, sign_key: Path | None, json_mode: bool) -> None:
    """Publish a manifest into a registry directory.

    The manifest must pass the schema, match its digest, keep its coefficients inside its recipe's
    train.tau_range, and name a recipe that exists at its version. A manifest already in the registry, or a
    different file under its digest, is refused. Publishing is safe to run concurrently: the index is
    rewritten atomically under a file lock. With --sign-key the stored manifest is signed (OpenSSF Model
    Signing bundle, verifiable with `model_signing verify key`) and the index records the key's fingerprint.
    Exits 6 when the registry directory cannot be written (permissions, disk full).

    \b
    Examples:
      pearzoo publish smollm2.pear.json --registry ./registry
      pearzoo publish smollm2.pear.json --registry ./registry --sign-key signing-key.pem
      PEARZOO_REGISTRY=./registry pearzoo publish model.pear.json --json
    """
    from pearzoo.registry import open_registry

    entry = open_registry(registry).publish(manifest, sign_key=sign_key)
    signed = f", signed by key {entry.signature.fingerprint[:12]}" if entry.signature else ""
    Output(json_mode=json_mode).result(entry, f"published {entry.model_id} {entry.digest} to {registry}{signed}")


@click.command("list")
@registry_option
@json_option
def list_command(registry: str | None, json_mode: bool) -> None:
    """List the models a registry has manifests for.

    \b
    Examples:
      pearzoo list
      pearzoo list --registry https://example.org/pearzoo-registry --json
    """
    from pearzoo.registry import open_registry

    models = open_registry(registry).list_models()
    lines = [f"{'model':<40} {'versions':>8}  {'latest':<12}  {'signed':<6}  recipe"]
    for m in models:
        signed = "yes" if m.latest.signature else "no"
        lines.append(f"{m.model_id:<40} {m.versions:>8}  {m.latest.digest[:12]}  {signed:<6}  {m.latest.recipe} {m.latest.recipe_version}")
    human = _terminal_safe(lines) if models else "no manifests in this registry"
    Output(json_mode=json_mode).result([m.model_dump(mode="json") for m in models], human)


@click.command()
@click.argument("model")
@click.option("--digest", default=None, help="Show this version (a digest prefix of 8+ characters). Default: the newest.")
@registry_option
@json_option
def show(model: str, digest: str | None, registry: str | None, json_mode: bool) -> None:
    """Show a model's manifest versions, recipe, heads and metrics.

    \b
    Examples:
      pearzoo show HuggingFaceTB/SmolLM2-135M-Instruct
      pearzoo show org/model --digest 9f2c41ab --json
    """
    from pearzoo.registry import open_registry
    from pearzoo.source import registry_name

    details = open_registry(registry).show(registry_name(model), digest)
    # exclude_unset keeps the manifest exactly as sealed, so the printed copy still matches its digest.
    Output(json_mode=json_mode).result(details.model_dump(mode="json", exclude_unset=True), _render(details))


def _render(details: Any) -> str:
    m = details.manifest
    lines = [f"{details.model_id}: {len(details.versions)} version(s), newest last"]
    for e in details.versions:
        mark = "*" if e.digest == m.digest else " "
        signed = f"  signed {e.signature.fingerprint[:12]}" if e.signature else ""
        lines.append(f" {mark} {e.digest}  {e.published}  {e.recipe} {e.recipe_version}  {e.heads} heads{signed}")
    base = m.base
    # A GGUF base says which file (and where it came from): patch applies the manifest only to that file.
    form = " ".join(x for x in (base.format, base.file, f"from {base.origin}" if base.origin else None) if x)
    lines.append(f"base: {base.model_id}" + (f" @ {base.revision}" if base.revision else "") + f" ({form}, {base.dtype})")
    lines.append(f"recipe: {m.recipe.id} {m.recipe.version}" + (f" (--set {' '.join(m.recipe.overrides)})" if m.recipe.overrides else ""))
    lines.append("heads: " + ", ".join(f"{h.layer}.{h.head}={h.coefficient:.4f}" for h in m.heads))
    x = m.metrics
    lines.append(f"copy accuracy (n={x.copy_length}): {x.copy_before.accuracy:.3f} -> {x.copy_after.accuracy:.3f}")
    if x.perplexity_before is not None and x.perplexity_after is not None:
        lines.append(f"perplexity: {x.perplexity_before:.3f} -> {x.perplexity_after:.3f} (budget {x.perplexity_budget:.1%})")
    return _terminal_safe(lines)


def _terminal_safe(lines: list[str]) -> str:
    """Registry data is someone else's: each line with its newlines, escapes and control characters escaped,
    so a model id or a recipe override cannot add lines or drive the terminal (`--json` escapes them itself)."""
    from pearzoo.document import one_line

    return "\n".join(one_line(line) for line in lines)


@click.group()
def trust() -> None:
    """A registry's trust policy (trust.json): the keys whose signatures `pearzoo patch` requires.

    The policy lives at the registry root, beside index.json, and is served with it. While it says
    require_signature (the default), patching from the registry needs a manifest signed by one of its keys.
    """


@trust.command("add")
@click.argument("public_key", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Who holds the key (shown in messages).")
@click.option("--registry", required=True, envvar=settings.PEARZOO_REGISTRY, show_envvar=True, help="Registry directory.")
@click.option("--require/--advisory", "require", default=None, help="Require signatures when patching from it (default: unchanged; a new policy requires).")
@json_option
def trust_add(public_key: Path, name: str, registry: str, require: bool | None, json_mode: bool) -> None:
    """Add a public key to a registry's trust policy (created if absent).

    \b
    Examples:
      pearzoo trust add maintainers.pub --name maintainers --registry ./registry
    """
    from pearzoo.registry.local import LocalRegistry

    policy = LocalRegistry(registry).update_trust(add=(public_key, name), require=require)
    Output(json_mode=json_mode).result(policy, _render_policy(policy, registry))


@trust.command("remove")
@click.argument("fingerprint")
@click.option("--registry", required=True, envvar=settings.PEARZOO_REGISTRY, show_envvar=True, help="Registry directory.")
@json_option
def trust_remove(fingerprint: str, registry: str, json_mode: bool) -> None:
    """Remove a key (by fingerprint, 8+ characters) from a registry's trust policy.

    \b
    Examples:
      pearzoo trust remove 30a8a401e7a5 --registry ./registry
    """
    from pearzoo.registry.local import LocalRegistry

    policy = LocalRegistry(registry).update_trust(remove=fingerprint)
    Output(json_mode=json_mode).result(policy, _render_policy(policy, registry))


@trust.command("show")
@registry_option
@json_option
def trust_show(registry: str | None, json_mode: bool) -> None:
    """Show a registry's trust policy (a directory or an http(s) URL).

    \b
    Examples:
      pearzoo trust show --registry https://example.org/pearzoo-registry
    """
    from pearzoo.registry import open_registry

    reg = open_registry(registry)
    policy = reg.trust_policy()
    if policy is None:
        Output(json_mode=json_mode).result(None, f"{reg.location}: no trust policy (patching from it requires no signature)")
        return
    Output(json_mode=json_mode).result(policy, _render_policy(policy, reg.location))


def _render_policy(policy: Any, location: str) -> str:
    from pearzoo.signing import fingerprint

    mode = "requires signatures" if policy.require_signature else "advisory (signatures checked only when asked)"
    lines = [f"{location}: trust policy, {mode}"]
    lines += [f"  {fingerprint(k.public_key.encode('ascii'))}  {k.name}" for k in policy.keys]
    return _terminal_safe(lines)


def register(group: click.Group) -> None:
    group.add_command(trust)
    group.add_command(publish)
    group.add_command(list_command)
    group.add_command(show)
