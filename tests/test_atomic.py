"""pearzoo/atomic.py: atomic writes (mode, no temp left behind) and the OSError -> exit-6 mapping."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from pearzoo.atomic import atomic_write_bytes, atomic_write_text, write_error
from pearzoo.errors import DiskSpaceError, ResourceError


def test_atomic_write_replaces_with_the_umask_mode_and_leaves_no_temp(tmp_path):
    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "sub" / "index.json", "one\n")
        atomic_write_bytes(target, b"two\n")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"two\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["index.json"]


def test_a_failed_write_leaves_the_target_and_no_temp(tmp_path):
    target = tmp_path / "index.json"
    target.write_text("old\n")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["index.json"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        atomic_write_text(blocker / "sub" / "index.json", "x")
    error = write_error(info.value, blocker / "index.json")
    assert isinstance(error, ResourceError) and error.exit_code == 6
    assert str(error) == f"{blocker / 'index.json'}: cannot write: Not a directory"


def test_no_space_maps_to_disk_space_error():
    error = write_error(OSError(errno.ENOSPC, "No space left on device"), "/reg")
    assert isinstance(error, DiskSpaceError) and error.exit_code == 6
    assert str(error) == "/reg: no space left to write it (No space left on device)"


def test_no_import_circle_between_manifest_io_and_schema_export():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pearzoo"

    def imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert "pearzoo.manifest.io" not in imports(root / "schema_export.py")
    assert not {m for m in imports(root / "atomic.py") if m.startswith("pearzoo") and m != "pearzoo.errors"}
