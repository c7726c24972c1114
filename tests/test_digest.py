import hashlib

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pearzoo.digest import canonical_json, document_digest, tensor_digest
from pearzoo.shards import digest_of

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=5), json_values, max_size=6))
@settings(max_examples=100, deadline=None)
def test_document_digest_ignores_key_order(doc):
    reordered = dict(reversed(list(doc.items())))
    assert document_digest(doc) == document_digest(reordered)
    assert document_digest(doc) == hashlib.sha256(canonical_json(doc)).hexdigest()


def test_canonical_json_is_rfc8785():
    assert canonical_json({"b": 1, "a": [1.0, "x", None]}) == b'{"a":[1,"x",null],"b":1}'


def test_tensor_digest_pinned_value():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert digest_of("w", t) == tensor_digest("w", "F32", (2, 3), t.numpy().tobytes())
    # Pinned: a change to the digest format breaks every published manifest, so it must be deliberate.
    assert digest_of("w", t) == "8031c9a100e296421f14919ee4e59e9217b0be9fdbf676ee6478ac235f60f353"


@given(st.integers(1, 4), st.integers(1, 4))
@settings(max_examples=30, deadline=None)
def test_tensor_digest_separates_name_shape_dtype(rows, cols):
    t = torch.zeros(rows, cols)
    base = digest_of("a", t)
    assert base != digest_of("b", t)
    assert base != digest_of("a", t.reshape(cols, rows)) or rows == cols
    assert base != digest_of("a", t.to(torch.bfloat16))
    assert base != digest_of("a", t + 1)
