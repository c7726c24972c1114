"""Running the CLI through its real error boundary (`pearzoo.cli.main`), for the tests under tests/cli."""

from __future__ import annotations

import pytest

from pearzoo.cli import main

# Settings small enough for a build on a tiny or stories260K model to take seconds.
FAST_BUILD = [
    "--set", "locate.k=2",
    "--set", "locate.configurations=[{samples: 4, length: 6}]",
    "--set", "train.steps=2",
    "--set", "train.batch_size=2",
    "--set", "train.length=6",
    "--set", "train.validation_sequences=4",
    "--set", "train.validate_every=1",
    "--set", "train.preservation.windows=2",
    "--set", "train.preservation.window_length=16",
]  # fmt: skip


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `pearzoo ARGV`."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def assert_one_error(err: str, starts: str) -> None:
    """stderr is one `error: ...` line, optionally followed by one `hint: ...` line, and no traceback."""
    lines = err.splitlines()
    assert lines[0].startswith(f"error: {starts}"), err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), err
    assert "Traceback" not in err
