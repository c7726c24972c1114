"""Hypothesis fuzzing of the parsers that read someone else's files: manifests, recipes, registry indexes, trust
policies and signature bundles (pearzoo/document.py, manifest/io.py, recipe/load.py, registry/base.py,
signing.py). Whatever the input, only pearzoo's own errors may escape, and an accepted input is a valid model.

Inputs are arbitrary bytes, arbitrary JSON-like values, and valid documents with one value replaced or a few
bytes changed; `derandomize=True` makes the examples the same on every run, so the counts in the README
(`EXAMPLES`) are the inputs CI tries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pearzoo.document import parse_text
from pearzoo.errors import PearzooError
from pearzoo.manifest.io import parse_manifest
from pearzoo.recipe.load import apply_overrides, parse_recipe
from pearzoo.registry.base import Index, IndexEntry, parse_index, parse_trust, render_index

EXAMPLES = 200  # per fuzz test; 12 tests -> 2,400 hostile inputs per run
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "rope" / "llama.yaml"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replace(document: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    node = copy
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return copy


@st.composite
def one_value_replaced(draw: Any, document: Any) -> Any:
    path = draw(st.sampled_from(_paths(document)))
    return _replace(document, path, draw(json_values))


@st.composite
def bytes_mutated(draw: Any, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 16))]
        else:
            del out[at:]
    return bytes(out)


def only_ours(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `fn`; a PearzooError is a refusal (None), anything else escapes and fails the test."""
    try:
        return fn(*args, **kwargs)
    except PearzooError as exc:
        assert "\n" not in str(exc) and str(exc), repr(exc)
        return None


# --- manifests -------------------------------------------------------------------------------------------


def _manifest_from_bytes(data: bytes) -> Any:
    return parse_manifest(parse_text(data, source="m.json"), source="m.json")


@FUZZ
@given(st.binary(max_size=3000))
def test_manifest_parser_on_arbitrary_bytes(data):
    only_ours(_manifest_from_bytes, data)


@pytest.fixture(scope="module")
def manifest_bytes(manifest_doc) -> bytes:
    return json.dumps(manifest_doc, indent=2).encode()


def test_manifest_parser_on_mutated_bytes(manifest_bytes):
    @FUZZ
    @given(bytes_mutated(manifest_bytes))
    def run(data):
        accepted = only_ours(_manifest_from_bytes, data)
        # A change that still parses must be a whitespace-only change: the digest seals every value.
        if accepted is not None:
            assert accepted.digest == json.loads(manifest_bytes)["digest"]

    run()


def test_manifest_parser_on_one_value_replaced(manifest_doc):
    @FUZZ
    @given(one_value_replaced(manifest_doc))
    def run(document):
        accepted = only_ours(parse_manifest, document, source="m.json")
        if accepted is not None:
            assert accepted.model_dump(mode="json", exclude_unset=True) == document

    run()


@FUZZ
@given(json_values)
def test_manifest_parser_on_arbitrary_json(document):
    only_ours(parse_manifest, document, source="m.json")


# --- recipes ---------------------------------------------------------------------------------------------


def _recipe_from_bytes(data: bytes) -> Any:
    return parse_recipe(parse_text(data, source="r.yaml", fmt="yaml"), source="r.yaml")


@FUZZ
@given(st.binary(max_size=2000) | st.text(alphabet="[]{}:-&*!|>'\"\n #ab1.", max_size=400).map(str.encode))
def test_recipe_parser_on_arbitrary_bytes_and_yaml_punctuation(data):
    only_ours(_recipe_from_bytes, data)


def test_recipe_parser_on_mutated_bytes():
    original = RECIPE.read_bytes()

    @FUZZ
    @given(bytes_mutated(original))
    def run(data):
        only_ours(_recipe_from_bytes, data)

    run()


def test_recipe_parser_on_one_value_replaced_and_overrides():
    document = parse_text(RECIPE.read_bytes(), source="r", fmt="yaml")

    @FUZZ
    @given(one_value_replaced(document), st.lists(st.text(max_size=40), max_size=3))
    def run(doc, overrides):
        only_ours(parse_recipe, doc, source="r.yaml")
        changed = only_ours(apply_overrides, document, overrides, source="r.yaml")
        if changed is not None:
            only_ours(parse_recipe, changed, source="r.yaml")

    run()


# --- registry index, trust policy, signature bundles -------------------------------------------------------


@pytest.fixture(scope="module")
def index_bytes(manifest_doc) -> bytes:
    from pearzoo.registry.base import entry_for

    manifest = parse_manifest(manifest_doc, source="m")
    entry = entry_for(manifest, "2026-01-01T00:00:00+00:00")
    return render_index(Index(entries=[entry, entry.model_copy(update={"model_id": "org/other"})])).encode()


@FUZZ
@given(st.binary(max_size=3000))
def test_index_parser_on_arbitrary_bytes(data):
    only_ours(parse_index, data, source="index.json")


def test_index_parser_on_mutated_bytes_and_values(index_bytes):
    document = json.loads(index_bytes)

    @FUZZ
    @given(bytes_mutated(index_bytes) | one_value_replaced(document).map(lambda d: json.dumps(d).encode()))
    def run(data):
        index = only_ours(parse_index, data, source="index.json")
        if index is not None:
            for entry in index.entries:
                # an accepted entry is safe to print and to turn into a path
                assert all(c.isprintable() for c in entry.model_id + entry.recipe + entry.published)
                assert ".." not in entry.path and not entry.path.startswith("/")
                assert isinstance(entry, IndexEntry)

    run()


@FUZZ
@given(st.binary(max_size=2000) | json_values.map(lambda v: json.dumps(v).encode()))
def test_trust_policy_parser(data):
    only_ours(parse_trust, data, source="trust.json")


def test_signature_bundles_from_a_hostile_registry(tmp_path_factory, manifest_bytes):
    """Bundle bytes mutated from a real one: refused with IntegrityError, or (unchanged in meaning) accepted."""
    from pearzoo.signing import read_public_key, sign_path, verify_bytes
    from signing_keys import make_key_pair

    directory = tmp_path_factory.mktemp("sig")
    private, public, _ = make_key_pair(directory)
    (directory / "m.json").write_bytes(manifest_bytes)
    sign_path(directory / "m.json", private, directory / "m.sig")
    bundle = (directory / "m.sig").read_bytes()
    trusted = [read_public_key(public)]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(bytes_mutated(bundle))
    def run(mutated):
        only_ours(verify_bytes, manifest_bytes, mutated, trusted, source="m.sig")

    run()
