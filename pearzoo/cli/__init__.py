"""The `pearzoo` command: a thin layer over the Python API, with one error boundary."""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from pearzoo import __version__, settings
from pearzoo.errors import PearzooError

EPILOG = """\b
Exit codes:
  0  success
  1  internal error (a bug: please report it with --debug output)
  2  usage error (bad option or argument)
  3  invalid input (recipe, manifest, option, head, architecture)
  4  not found (model, revision, manifest, recipe)
  5  integrity failure (digest mismatch, wrong base model, already patched)
  6  resource problem (offline, lock timeout, disk space)
  7  a build met no acceptance condition (e.g. the perplexity budget)
  8  drift: an audit's rebuild differs from the manifest beyond the recipe's tolerances
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="pearzoo")
@click.option("--debug", is_flag=True, envvar=settings.PEARZOO_DEBUG, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """PEAR attention re-weighting for causal language models.

    Locate the heads that suppress in-context copying, learn one coefficient per head,
    and fold the coefficients into the weights: better retrieval at zero inference cost.
    """
    ctx.obj = {"debug": debug}
    if not debug:
        # transformers' own loading bars and advisories would break the one-line stderr contract.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if "transformers" in sys.modules:  # already imported (embedding, tests): the env vars were read
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from pearzoo.cli import audit, build, compare, evaluate, export, patch, recipes, registry, verify

    for module in (build, evaluate, compare, recipes, verify, registry, patch, audit, export):
        module.register(cli)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; map pearzoo errors to `error: ...` on stderr and their exit code."""
    debug = settings.debug() or "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="pearzoo", standalone_mode=False)
    except PearzooError as exc:
        if debug:
            traceback.print_exc()
        from pearzoo.document import one_line

        # Messages quote input (ids, server replies, file names): escaped so they stay one line and inert.
        click.echo(f"error: {one_line(exc)}", err=True)
        if exc.hint:
            click.echo(f"hint: {one_line(exc.hint)}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)
