"""Options several commands share, declared once: the same name, type and default everywhere.

Each is a factory taking an optional `help`, so a command can say what the option means for it (patch takes
its help from `PatchOptions`' field descriptions) while the option itself stays the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

Decorator = Callable[[Any], Any]

DTYPES = ("float32", "bfloat16", "float16")


def model_option(*, required: bool = True, help: str = "Local directory, .gguf file, Hub id, or built-in name (smollm2-135m-instruct).") -> Decorator:
    # No default at all when required: click counts an explicit default of None as a value given.
    return click.option("--model", "-m", required=True, help=help) if required else click.option("--model", "-m", default=None, help=help)


def revision_option(*, help: str = "Hub revision (branch, tag or commit).") -> Decorator:
    return click.option("--revision", default=None, help=help)


def device_option(*, help: str = "Device for the whole model (cpu, cuda, cuda:1).") -> Decorator:
    return click.option("--device", default=None, help=help)


def dtype_option(*, help: str | None = "Model dtype; coefficients are always float32.") -> Decorator:
    return click.option("--dtype", default="float32", show_default=True, type=click.Choice(list(DTYPES)), help=help)


def allow_pickle_option(*, help: str = "Allow .bin/.pt weights (they can run code when loaded).") -> Decorator:
    return click.option("--allow-pickle", is_flag=True, help=help)


def overrides_option(*, help: str = "Override a recipe setting, e.g. --set train.steps=20 (repeatable).") -> Decorator:
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help)


def apply(f: Any, *decorators: Decorator) -> Any:
    """`f` with `decorators` applied so that `--help` lists the options in the order given."""
    for decorator in reversed(decorators):
        f = decorator(f)
    return f
