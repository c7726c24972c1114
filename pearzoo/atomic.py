"""Atomic file writes: a temp file beside the target, fsync, then `os.replace`; readers never see a part.

Generic on purpose: manifests, registry indexes, signature bundles and the committed JSON Schemas all use it,
so it imports nothing of pearzoo's (it breaks the old manifest/io.py <-> schema_export.py import circle).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`.

    Raises:
        OSError: the directory cannot be created or written (the caller converts it where it enters).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file owner-only (0600); a manifest or an index served by a web server must get
        # the mode a plain open() would give it.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_error(exc: OSError, path: str | Path) -> Exception:
    """The pearzoo error for an OSError met while writing `path`: no space -> `DiskSpaceError`, anything else
    (permissions, a read-only file system, a file where a folder should be) -> `ResourceError`; both exit 6."""
    import errno

    from pearzoo.errors import DiskSpaceError, ResourceError

    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError(f"{path}: no space left to write it ({reason})", path=str(path))
    return ResourceError(f"{path}: cannot write: {reason}", path=str(path))
