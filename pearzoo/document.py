"""Read a file format: bytes with a size cap -> parse (JSON or safe YAML) -> schema_version -> pydantic model.

Manifests, recipes and registry indexes are read the same way, and every one of them can come from someone
else (a registry over HTTP, a downloaded recipe), so each step turns whatever the input provokes into one of
pearzoo's errors naming the file (and the field): a file larger than the cap, bytes that are not UTF-8, JSON
or YAML nested deep enough to exhaust Python's recursion, YAML aliases (a few hundred bytes can alias
themselves into billions of nodes), an unknown `schema_version`, or a schema violation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from pearzoo.errors import InvalidInputError, NotFoundError, validation_location

# A manifest or an index is a few hundred kB, a recipe a few kB; anything far larger is not one of ours.
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
# Our formats nest at most about 8 levels (recipe.settings inside a manifest); 64 leaves room and stays far
# below the depth where the canonical-JSON digest or pydantic would recurse out of the stack.
MAX_DEPTH = 64

M = TypeVar("M", bound=BaseModel)


def read_capped(path: str | Path, *, what: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of a local file, refused beyond `max_bytes`.

    Raises:
        NotFoundError: no such file.
        InvalidInputError: unreadable (a directory, permissions), or larger than `max_bytes`.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise NotFoundError(f"{p}: {what} not found", path=str(p)) from exc
    except OSError as exc:
        raise InvalidInputError(f"{p}: cannot read {what}: {exc.strerror or exc}", path=str(p)) from exc
    if len(data) > max_bytes:
        raise InvalidInputError(f"{p}: larger than {max_bytes // 2**20} MiB; not a {what}", path=str(p))
    return data


class _NoAliasLoader:
    """Built lazily (PyYAML is imported only when YAML is read)."""

    loader: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.loader is None:
            import yaml

            class Loader(yaml.SafeLoader):
                def compose_node(self, parent: Any, index: Any) -> Any:
                    if self.check_event(yaml.AliasEvent):
                        event = self.peek_event()
                        raise yaml.composer.ComposerError(
                            None, None, "aliases are not allowed (a recipe never needs one)", event.start_mark
                        )
                    return super().compose_node(parent, index)

            cls.loader = Loader
        return cls.loader


def parse_text(data: bytes | str, *, source: str, fmt: Literal["json", "yaml"] = "json") -> Any:
    """Parse JSON or safe YAML (no aliases), refusing documents nested deeper than `MAX_DEPTH`.

    Raises:
        InvalidInputError: not UTF-8, not valid JSON/YAML, or nested too deep.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source}: not UTF-8 text (byte {exc.start})", path=source) from exc
    try:
        if fmt == "json":
            document = json.loads(text)
        else:
            import yaml

            try:
                document = yaml.load(text, Loader=_NoAliasLoader.get())  # noqa: S506 - a SafeLoader subclass
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" line {mark.line + 1}" if mark is not None else ""
                problem = getattr(exc, "problem", None)
                detail = f" ({problem})" if problem and "alias" in str(problem) else ""
                raise InvalidInputError(f"{source}:{where}: invalid YAML{detail}", path=source) from exc
    except InvalidInputError:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{source}: not valid JSON (line {exc.lineno})", path=source) from exc
    except RecursionError as exc:
        raise InvalidInputError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)", path=source) from exc
    except ValueError as exc:  # e.g. an integer literal with more digits than Python converts
        raise InvalidInputError(f"{source}: not valid {fmt.upper()}: {one_line(exc)}", path=source) from exc
    if _depth_exceeds(document, MAX_DEPTH):
        raise InvalidInputError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)", path=source)
    return document


def _depth_exceeds(document: Any, limit: int) -> bool:
    """Whether lists/dicts nest deeper than `limit`, checked without recursion."""
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def check_version(
    document: Any, *, source: str, supported: tuple[int, ...], not_a_mapping: str, required: bool = True
) -> int | None:
    """The document's `schema_version`, refused unless it is one this pearzoo reads.

    `required=False` accepts a document without the key (recipes and old indexes omit it).

    Raises:
        InvalidInputError: not a mapping, or an unknown schema_version.
    """
    if not isinstance(document, dict):
        raise InvalidInputError(f"{source}: {not_a_mapping}", path=source)
    version = document.get("schema_version")
    if version is None and not required:
        return None
    # bool is an int in Python: `true` must not read as version 1.
    if isinstance(version, bool) or version not in supported:
        reads = " and ".join(str(v) for v in supported)
        raise InvalidInputError(
            f"{source}: schema_version: {_short(version)} is not supported (this pearzoo reads {reads})",
            path=source,
            field="schema_version",
        )
    return version


def validate_into(model: type[M], document: Any, *, source: str) -> M:
    """`model.model_validate(document)`, a failure named `source: field: message`.

    Raises:
        InvalidInputError: the first schema violation.
    """
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        loc, msg = validation_location(exc)
        raise InvalidInputError(one_line(f"{source}: {loc}: {msg}"), path=source, field=loc) from exc
    except RecursionError as exc:
        raise InvalidInputError(f"{source}: nested too deeply", path=source) from exc


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def one_line(value: Any) -> str:
    """A message from foreign text on one line: control characters (newlines, ANSI escapes) escaped."""
    text = str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
