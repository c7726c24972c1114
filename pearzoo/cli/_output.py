"""The one output sink: results to stdout (human text or --json), everything else to stderr."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import click


@dataclass
class Output:
    json_mode: bool = False
    quiet: bool = False

    def result(self, data: Any, human: str | None = None) -> None:
        """Print a result: `data` as JSON under --json, else the human text."""
        if self.json_mode:
            if hasattr(data, "model_dump"):
                data = data.model_dump(mode="json")
            click.echo(json.dumps(data, indent=2))
        elif human is not None:
            click.echo(human)

    def info(self, message: str) -> None:
        if not self.quiet and not self.json_mode:
            click.echo(message, err=True)

    def warn(self, message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    def progress(self, desc: str, total: int) -> Any:
        """A tqdm bar on stderr; silent under --json, --quiet, or when stderr is not a terminal."""
        from tqdm.auto import tqdm

        disable = self.json_mode or self.quiet or not sys.stderr.isatty()
        return tqdm(total=total, desc=desc, file=sys.stderr, disable=disable, leave=False)


def json_option(f: Any) -> Any:
    return click.option("--json", "json_mode", is_flag=True, help="Print the result as JSON on stdout.")(f)


def quiet_option(f: Any) -> Any:
    return click.option("--quiet", "-q", is_flag=True, help="No progress or informational messages.")(f)
