"""Property: whatever document is registered as image metadata, ``schema.validate`` answers
ImageMetadata or a BadRequest naming the path (never another exception)."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_repo.errors import BadRequest
from image_repo.schema import ImageMetadata, validate
from tests.image_repo.examples import builder_document
from tests.target_system.test_jobdesc_properties import JSON

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
VALID = builder_document()


def _paths(doc, prefix=()):
    """Every path into ``doc`` (keys and list indexes), the document itself first."""
    yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(
        doc, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


PATHS = list(_paths(VALID))


@st.composite
def mutants(draw):
    """The valid document with one to three of its values replaced by any JSON value, or
    with a key added next to one."""
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        if not path:
            continue
        parent = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent[draw(JSON.filter(lambda v: isinstance(v, str)) | st.just("x"))] = draw(JSON)
            else:
                parent[path[-1]] = draw(JSON)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed the path
    return doc


def check(doc) -> None:
    try:
        metadata = validate(doc)
    except BadRequest as err:
        assert err.path, err
        return
    assert isinstance(metadata, ImageMetadata)


@PROPERTY
@given(JSON)
def test_any_json_value(doc):
    check(doc)


@PROPERTY
@given(mutants())
def test_a_valid_document_with_values_replaced(doc):
    check(doc)
