"""The creators' endpoints under the REST error-path properties (tests/tsf/rest/
test_error_properties.py), as a creator: whatever JSON body, file body or URL segment, never
a 500 and every error typed; and nothing becomes visible from a body that is not a valid
registration."""

from __future__ import annotations

import base64
import json

import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import threads

from base.identity import Caller
from tests.image_repo.examples import builder_document
from tests.tsf.rest.conftest import PASSWORDS
from tests.tsf.rest.test_error_properties import (
    PROPERTY,
    Connection,
    assert_typed,
    bodies,
    json_values,
    segments,
    url,
)

CAROL = {"Authorization": "Basic " + base64.b64encode(
    f"carol:{PASSWORDS['carol']}".encode()).decode()}
KERNEL, INITRD = b"kernel-bytes", b"initrd-bytes"


def _patches() -> st.SearchStrategy:
    """Merge patches: anything, or a change of one group of the document."""
    groups = st.sampled_from(["general", "origin", "semantic", "idb", "tsi", "schema_version"])
    return json_values | st.dictionaries(groups, json_values, max_size=2)


def any_creator_request(base: str, name: str, upload: str) -> None:
    connection = Connection(base)
    targets = [("POST", "images"), ("POST", "images?dryRun=true"), ("PATCH", f"images/{name}"),
               ("PATCH", f"images/{name}?dryRun=true"), ("POST", f"images/{name}/applications"),
               ("POST", f"images/{name}/endorsements"), ("POST", f"images/{name}/actions/x"),
               ("PUT", f"{upload}/files/initrd.img"), ("PUT", f"{upload}/files/other"),
               ("POST", "images/bundles")]
    patch_bodies = _patches().map(lambda v: json.dumps(v).encode())

    @PROPERTY
    @given(target=st.sampled_from(targets), body=bodies | patch_bodies,
           content_type=st.sampled_from(["application/json", "application/merge-patch+json",
                                         "application/octet-stream"]))
    def check(target, body, content_type):
        method, path = target
        answer = connection.request(method, url(connection.prefix, path), body,
                                    {**CAROL, "Content-Type": content_type})
        assert_typed(*answer, (target, body[:200]))

    templates = ["images/uploads/{}", "images/uploads/{}/files/{}", "images/{}/applications/{}",
                 f"images/{name}/applications/{{}}/{{}}", "images/{}/endorsements/{}",
                 f"images/{name}/endorsements/{{}}", "images/{}/actions/{}", "images/{}/bundle",
                 f"{upload}/files/{{}}"]

    @PROPERTY
    @given(template=st.sampled_from(templates), parts=st.lists(segments, min_size=2,
                                                                max_size=2),
           method=st.sampled_from(["GET", "DELETE", "PUT", "POST", "PATCH"]))
    def check_segments(template, parts, method):
        path = template.format(*parts[: template.count("{}")])
        answer = connection.request(method, url(connection.prefix, path), b"{}",
                                    {**CAROL, "Content-Type": "application/json"})
        assert_typed(*answer, (method, path[:300]))

    try:
        check()
        check_segments()
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_any_creator_request_is_answered_without_500(creators_site):
    site, http = creators_site
    doc = builder_document(KERNEL, INITRD, name="prop-image")
    started = await http("POST", "images", user="carol", json=doc)
    upload = started.headers["location"]
    await http("PUT", f"{upload}/files/vmlinuz", user="carol", content=KERNEL)
    await http("PUT", f"{upload}/files/initrd.img", user="carol", content=INITRD)
    pending = await http("POST", "images", user="carol",
                         json=builder_document(KERNEL, b"other", name="prop-pending"))
    before = {r.id for r in site.repository.list(Caller.of("root", admin=True))}
    await threads.deferToThread(any_creator_request, http.base, "prop-image",
                                pending.headers["location"].split("/rest/core/", 1)[1])
    after = site.repository.list(Caller.of("root", admin=True))
    made = [r for r in after if r.id not in before]
    # only new versions of prop-image (valid patches, applications) may have been made
    assert {r.name for r in made} <= {"prop-image"}, [r.ref for r in made]
