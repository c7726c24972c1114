"""`pearzoo recipes list|show|validate|schema`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pearzoo.cli._output import Output, json_option


@click.group()
def recipes() -> None:
    """Browse, validate and export the schema of recipes."""


@recipes.command("list")
@json_option
def list_command(json_mode: bool) -> None:
    """List the built-in recipes.

    \b
    Examples:
      pearzoo recipes list
      pearzoo recipes list --json
    """
    from pearzoo.recipe.catalog import list_recipes

    items = list_recipes()
    data = [
        {"id": r.id, "version": r.version, "position_embedding": r.position_embedding.value, "model_types": r.match.model_types, "model_ids": r.match.model_ids, "description": r.description}
        for r in items
    ]
    lines = [f"{r.id:<26} {r.version:<8} {', '.join(r.match.model_types + r.match.model_ids)}" for r in items]
    Output(json_mode=json_mode).result(data, "\n".join(lines))


@recipes.command("show")
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Apply an override before showing.")
def show_command(recipe: str, overrides: tuple[str, ...]) -> None:
    """Print a recipe (file or id) with every default filled in, as JSON, plus its digest."""
    from pearzoo.recipe.catalog import get_recipe
    from pearzoo.recipe.load import recipe_digest

    r, _ = get_recipe(recipe, list(overrides))
    click.echo(json.dumps({"digest": recipe_digest(r), "recipe": r.model_dump(mode="json")}, indent=2))


@recipes.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate_command(paths: tuple[Path, ...]) -> None:
    """Validate recipe files against the schema; exit 3 naming the first problem.

    \b
    Examples:
      pearzoo recipes validate recipes/rope/llama.yaml
      pearzoo recipes validate recipes/*/*.yaml
    """
    from pearzoo.recipe.load import load_recipe

    for p in paths:
        r = load_recipe(p)
        click.echo(f"ok {p} ({r.id} {r.version})")


@recipes.command("schema")
@click.option("--check", is_flag=True, help="Exit 3 if the committed schemas are stale instead of printing.")
@click.option("--write", is_flag=True, help="Regenerate the committed schema files.")
@click.argument("name", type=click.Choice(["recipe", "manifest"]), default="recipe")
def schema_command(check: bool, write: bool, name: str) -> None:
    """Print the JSON Schema of recipes or manifests (generated from the pydantic models)."""
    from pearzoo.errors import InvalidInputError
    from pearzoo.schema_export import render, schemas, stale_schemas, write_schemas

    if check:
        stale = stale_schemas()
        if stale:
            raise InvalidInputError(f"committed schemas are stale: {', '.join(stale)}", hint="run `pearzoo recipes schema --write`")
        click.echo("schemas up to date")
        return
    if write:
        for p in write_schemas():
            click.echo(f"wrote {p}")
        return
    click.echo(render(schemas()[name]), nl=False)


@recipes.command("scaffold")
@click.argument("model")
@click.option(
    "--out", "out", type=click.Path(path_type=Path), default=None,
    help="Recipes root to write <family>/<model_type>.yaml under (default: the built-in recipes/).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing recipe file.")
@click.option("--check/--no-check", default=True, show_default=True, help="Run the fold checks on the written recipe.")
@json_option
def scaffold_command(model: str, out: Path | None, force: bool, check: bool, json_mode: bool) -> None:
    """Write a recipe for MODEL (a model_type, a model folder or a Hub id) by probing a tiny random model.

    Builds a tiny model of the architecture from its transformers config class, scales one head's output
    per layer and finds the projection whose input moves in exactly that head's slice, writes the recipe
    (extending the family's base recipe) and checks hooks == fold and tau = 1 on it. Exits 3, in one line,
    where no per-head projection exists. Review the file against the modeling code, add a tiny model to
    tests/tiny_models.py and run tests/test_architectures.py before committing.

    \b
    Examples:
      pearzoo recipes scaffold qwen3_moe
      pearzoo recipes scaffold ./my-model --out ./my-recipes
    """
    from pearzoo.recipe.catalog import builtin_recipes_dir
    from pearzoo.scaffold import scaffold_recipe

    result = scaffold_recipe(model, out or builtin_recipes_dir(), force=force, check=check)
    p = result.probe
    data = {
        "path": result.path,
        "recipe_id": result.recipe_id,
        "model_type": result.model_type,
        "heads": p.heads_section(),
        "probed": {"num_layers": p.num_layers, "num_heads": p.num_heads, "head_dim": p.head_dim},
        "checks": result.checks,
    }
    lines = [
        f"wrote {result.path} ({result.recipe_id})",
        f"  {p.layers}[i].{p.output_projection} ({p.layout}): {p.num_layers} layers x {p.num_heads} heads x head_dim {p.head_dim}",
        *(f"  ok {line}" for line in result.checks),
        "next: review it against the modeling code, add a tiny model to tests/tiny_models.py, run tests/test_architectures.py",
    ]
    Output(json_mode=json_mode).result(data, "\n".join(lines))


def register(group: click.Group) -> None:
    group.add_command(recipes)
