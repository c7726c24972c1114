"""Where a patch writes: the --out checks, this run's temp folders (claimed by a lock), and the final rename.

- `--out` is checked before anything is downloaded, loaded or built (`check_out`): its nearest existing
  folder must take a new entry, and an existing `--out` is replaced (`--force`) only when it is an empty
  folder or one pearzoo wrote (`written_by_pearzoo`: its `pearzoo.manifest.json` and the `pearzoo` block of
  its config.json name the same manifest). Anything else is exit 3: `--out . --force` never empties a folder
  of the user's.
- Temp folders sit beside the target (``.pearzoo-patch-<token>-<name>``, same filesystem, so the final
  rename is atomic) and belong to a run that holds ``.pearzoo-patch-<token>.lock`` (filelock: flock on
  POSIX). A later run removes a temp folder only when it can take that lock, i.e. when no live process
  holds it, whatever its PID namespace or host (on a shared filesystem that supports locks). That is
  huggingface_hub's rule for its cache's `.incomplete` files, instead of guessing from a PID.
- The output replaces an existing folder with one atomic exchange (`renameat2(RENAME_EXCHANGE)`, Linux)
  where the kernel offers it, so `--out` always holds the old or the new complete model.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from pearzoo.errors import InvalidInputError, LockTimeoutError, ResourceError
from pearzoo.patch.card import CONFIG_KEY, MANIFEST_NAME

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".pearzoo-patch-"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's name; `pearzoo export` stamps its metadata
_LOCK_RE = re.compile(rf"^{re.escape(TEMP_PREFIX)}([0-9a-f]{{12}})\.lock$")


def written_by_pearzoo(folder: Path) -> bool:
    """Whether `folder` is an output pearzoo wrote: a manifest copy named by the `pearzoo` block of its config.json
    (a patched model) or by the `pearzoo.manifest` metadata of its adapter weights (a `pearzoo export` adapter)."""
    from pearzoo.errors import PearzooError

    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    digest = manifest.get("digest") if isinstance(manifest, dict) else None
    if not isinstance(digest, str):
        return False
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        config = None
    if config is not None:
        block = config.get(CONFIG_KEY) if isinstance(config, dict) else None
        return isinstance(block, dict) and block.get("manifest") == digest
    from pearzoo.shards import read_file_layout

    try:
        metadata = read_file_layout(folder / ADAPTER_WEIGHTS).metadata or {}
    except (OSError, PearzooError):
        return False
    return metadata.get("pearzoo.manifest") == digest


def stamped_gguf(path: Path) -> bool:
    """Whether `path` is a GGUF file pearzoo patched: its header carries the `pearzoo.manifest` key."""
    from pearzoo.errors import PearzooError
    from pearzoo.formats.gguf_header import MANIFEST_KEY, open_gguf

    try:
        return MANIFEST_KEY in open_gguf(path).strings
    except PearzooError:
        return False


def _replaceable(out: Path) -> bool:
    if out.is_symlink():
        return False
    if out.is_file():
        return stamped_gguf(out)
    return out.is_dir() and (not any(out.iterdir()) or written_by_pearzoo(out))


def check_out(out: Path, *, force: bool, file: bool = False) -> None:
    """Refuse an --out that cannot be written or must not be replaced, before any download or build.

    `file`: the output is one file (a GGUF), which `force` replaces only when pearzoo stamped it (`stamped_gguf`).

    Raises:
        InvalidInputError: `out` exists and `force` is off; `out` exists, `force` is on, and it is not an empty
            folder or a pearzoo output; `out` holds the current directory; its nearest existing ancestor is not a
            folder or does not take a new entry (read-only, no permission); `file` and `out` is a folder.
    """
    if out.exists() or out.is_symlink():
        if not force:
            raise InvalidInputError(f"{out} already exists", hint="pass --force to replace it, or choose --out", path=str(out))
        if file and not out.is_dir() and not _replaceable(out):
            raise InvalidInputError(
                f"{out} exists and is not a GGUF file pearzoo wrote; --force replaces only those",
                hint="choose another --out, or remove it yourself",
                path=str(out),
            )
        if not _replaceable(out):
            raise InvalidInputError(
                f"{out} exists and is not a folder pearzoo wrote (nor empty); --force replaces only those",
                hint="choose another --out, or remove it yourself",
                path=str(out),
            )
        cwd = Path.cwd().resolve()
        if out.resolve() == cwd or out.resolve() in cwd.parents:
            raise InvalidInputError(f"--out {out} holds the current directory; choose another", path=str(out))
    check_writable(out, file=file)


def check_writable(target: Path, what: str = "--out", *, file: bool = False) -> None:
    """Check that `target` (a folder, or with `file` a file, to be created or replaced) can be written: not a
    folder where a file is wanted, and its nearest existing ancestor is a folder in which a new entry can be
    made (tried, not guessed from mode bits, which root ignores).

    Raises:
        InvalidInputError: naming `what`, the folder and the reason.
    """
    if file and target.is_dir():
        raise InvalidInputError(f"{what} {target}: a folder, not a file", path=str(target))
    parent = target.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidInputError(f"{what} {target}: {parent} is not a folder", path=str(target))
    try:
        probe = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise InvalidInputError(f"{what} {target}: cannot write in {parent} ({exc.strerror or exc})", path=str(target)) from exc


class RunTemp:
    """This run's temp folders (or files: a GGUF output) beside `out`, claimed by a lock file that the run holds until it ends.

    The lock is taken before any folder exists and released after they are all removed, so a folder whose
    lock can be taken belongs to a dead run (`clean_stale_temps`).
    """

    def __init__(self, out: Path) -> None:
        from filelock import FileLock

        self.out = out
        self.token = secrets.token_hex(6)
        self.lock_path = out.parent / f"{TEMP_PREFIX}{self.token}.lock"
        self._lock = FileLock(self.lock_path, timeout=0)

    def path(self, suffix: str = "") -> Path:
        return self.out.parent / f"{TEMP_PREFIX}{self.token}-{self.out.name}{suffix}"

    def __enter__(self) -> "RunTemp":
        from filelock import Timeout

        self.out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(self.out.parent)
        try:
            self._lock.acquire()
        except Timeout as exc:  # a fresh random token: only a clash of 48 random bits gets here
            raise LockTimeoutError(f"{self.lock_path} is held by another run", path=str(self.lock_path)) from exc
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        _remove_token(self.out.parent, self.token)
        self._lock.release()
        self.lock_path.unlink(missing_ok=True)


def _remove_token(parent: Path, token: str) -> list[Path]:
    removed = []
    for child in parent.glob(f"{TEMP_PREFIX}{token}-*"):
        if child.is_symlink():
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
        elif child.is_file():  # a GGUF output and its signature are temp files, not folders
            child.unlink(missing_ok=True)
            removed.append(child)
    return removed


def clean_stale_temps(parent: Path) -> list[Path]:
    """Remove the temp folders and files in `parent` of patch runs that are gone (their lock is free), and their locks."""
    from filelock import FileLock, Timeout

    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for child in parent.iterdir():
        m = _LOCK_RE.match(child.name)
        if not m or child.is_symlink():
            continue
        lock = FileLock(child, timeout=0)
        try:
            lock.acquire()
        except (Timeout, OSError):
            continue  # a live run holds it (or it is not ours to take)
        try:
            for folder in _remove_token(parent, m.group(1)):
                logger.info("removed %s, left by an interrupted patch", folder)
                removed.append(folder)
            child.unlink(missing_ok=True)
        finally:
            lock.release()
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the kernel or libc lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them (no ldconfig run)
    except OSError:
        return False
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(b))


def move_into_place(tmp: Path, out: Path, run: RunTemp, *, force: bool) -> None:
    """Rename the finished `tmp` to `out`; with `force`, replace an `out` that `check_out` allows (re-checked)."""
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)
        return
    check_out(out, force=force, file=not tmp.is_dir())  # it may have appeared, or changed, since the early check
    if not tmp.is_dir():
        os.replace(tmp, out)  # one file: rename(2) replaces it atomically
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old output
        return
    old = run.path(".old")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(exc: OSError, out: Path) -> ResourceError:
    """An OSError while writing the output, as one line (exit 6; ENOSPC as DiskSpaceError)."""
    from pearzoo.errors import DiskSpaceError

    if exc.errno == 28:  # ENOSPC
        return DiskSpaceError(f"{out.parent}: no space left while writing the patched model", path=str(out))
    return ResourceError(f"cannot write {out}: {exc.strerror or exc}", path=str(out))
