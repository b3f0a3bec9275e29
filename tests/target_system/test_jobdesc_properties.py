"""Property: whatever JSON value a client sends as a job description, the parser answers
a JobDescription or a JobDescriptionError naming the key (never another exception)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target_system.jobdesc import (
    EXPORT_KEYS,
    IMPORT_KEYS,
    RESOURCE_KEYS,
    TOP_LEVEL_KEYS,
    JobDescription,
    JobDescriptionError,
    parse_job,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
#: Text with what breaks parsers: controls, lone surrogates, digits of other scripts.
TEXT = st.text(st.characters(codec=None), max_size=12) | st.sampled_from(
    ["", "1", "-1", "0", "1e400", "nan", "inf", "10min", "2G", "1.5", "true", "false",
     "inline://dummy", "http://x/", "uspace://j/a", "a/../b", "/etc/passwd", "\udc80", "٣"])
SCALARS = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
           | st.floats(allow_nan=True, allow_infinity=True) | TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


def objects(keys: set[str], values=JSON):
    """Objects mostly of the known ``keys``, sometimes one key more."""
    return st.dictionaries(st.sampled_from(sorted(keys)) | TEXT, values, max_size=6)


ENTRIES = st.lists(objects(IMPORT_KEYS | EXPORT_KEYS), max_size=3)
DESCRIPTIONS = objects(TOP_LEVEL_KEYS, JSON | objects(RESOURCE_KEYS) | ENTRIES)


def check(doc) -> None:
    try:
        job = parse_job(doc)
    except JobDescriptionError as err:
        assert err.path or not isinstance(doc, dict), err
        assert str(err).startswith(err.path)
        return
    assert isinstance(job, JobDescription)
    for text in (job.name, job.executable or "", *job.arguments, *job.environment.values()):
        text.encode("utf-8")  # what reaches a VM is valid text


@PROPERTY
@given(JSON)
def test_any_json_value(doc):
    check(doc)


@PROPERTY
@given(DESCRIPTIONS)
def test_descriptions_of_the_known_keys(doc):
    check(doc)
