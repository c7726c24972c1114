"""pearzoo/cli/_options.py: an option several commands take is the same option everywhere."""

import click

from pearzoo.cli import cli

SHARED = ["--model", "--revision", "--device", "--dtype", "--allow-pickle", "--set"]


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= _commands(command, f"{prefix}{name} ")
        else:
            found[prefix + name] = command
    return found


def _shape(option: click.Option) -> tuple:
    choices = tuple(option.type.choices) if isinstance(option.type, click.Choice) else None
    default = None if option.default is getattr(click.core, "UNSET", None) else option.default  # no default given
    return (option.name, tuple(option.opts), option.type.name, choices, default, option.is_flag, option.multiple)


def test_shared_options_have_one_name_type_and_default():
    seen: dict[str, dict[tuple, list[str]]] = {}
    for name, command in _commands(cli).items():
        for param in command.params:
            flag = next((o for o in param.opts if o in SHARED), None)
            if isinstance(param, click.Option) and flag:
                seen.setdefault(flag, {}).setdefault(_shape(param), []).append(name)
    assert set(seen) == set(SHARED)
    assert {flag: len(shapes) for flag, shapes in seen.items()} == dict.fromkeys(SHARED, 1), seen
    assert sorted(next(iter(seen["--dtype"].values()))) == ["build", "compare", "eval", "locate", "train"]


def test_a_required_model_is_required_everywhere():
    from click.testing import CliRunner

    for command in ("build", "locate", "train", "eval"):
        result = CliRunner().invoke(cli, [command])
        assert result.exit_code == 2 and "Missing option '--model' / '-m'." in result.output, command
