"""OAI-PMH 2.0 over the catalogue, harvested with a real harvester (sickle) over HTTP on
127.0.0.1: all six verbs, both formats, sets, datestamps, resumption tokens, deleted
records, every error code, and what an anonymous harvester may see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree
from sickle import Sickle, oaiexceptions

from image_repo.oaipmh import GRIDVM, OAI, OaiProvider, ProviderInfo

from .conftest import ALICE
from .oai_catalogue import PUBLISHER, anonymous_visible, fill, serve_provider

COUNT = 2000


def info(page_size: int = 100) -> ProviderInfo:
    return ProviderInfo("test catalogue", "http://127.0.0.1/oai", "ops@example.org",
                        "test.gridvm.example", page_size)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A catalogue of 2000 images (SQLite), some deleted and some deprecated."""
    from image_repo.repository import ImageRepository

    root = tmp_path_factory.mktemp("oai")
    repository = ImageRepository(f"sqlite:///{root / 'c.sqlite'}", root / "store")
    fill(repository, COUNT)
    for i in (1, 2, 3):  # readable by others, no VO
        repository.delete(f"oai-image-{i:05d}:1", PUBLISHER)
    repository.deprecate("oai-image-00006:1", PUBLISHER)
    yield repository
    repository.close()


@pytest.fixture(scope="module")
def harvester(big):
    with serve_provider(OaiProvider(big, info())) as url:
        yield Sickle(url, max_retries=0, timeout=30)


def test_identify_and_formats(harvester):
    identify = harvester.Identify()
    assert identify.protocolVersion == "2.0"
    assert identify.deletedRecord == "persistent"
    assert identify.granularity == "YYYY-MM-DDThh:mm:ssZ"
    assert identify.repositoryName == "test catalogue"
    prefixes = {f.metadataPrefix for f in harvester.ListMetadataFormats()}
    assert prefixes == {"oai_dc", "gridvm"}


def test_anonymous_harvest_of_all_records_in_pages(harvester):
    records = list(harvester.ListRecords(metadataPrefix="oai_dc"))
    assert len(records) == anonymous_visible(COUNT)  # 1200 of 2000, in 12 pages
    deleted = [r for r in records if r.deleted]
    assert len(deleted) == 3
    assert all(r.xml.find(f"{{{OAI}}}metadata") is None for r in deleted)
    live = next(r for r in records if not r.deleted)
    assert live.metadata["type"] == ["Software"] and live.metadata["title"][0].startswith(
        "Image number")
    assert len({r.header.identifier for r in records}) == len(records)
    headers = list(harvester.ListIdentifiers(metadataPrefix="gridvm"))
    assert [h.identifier for h in headers] == [r.header.identifier for r in records]


def test_sets_and_selective_harvesting(harvester, big):
    specs = {s.setSpec for s in harvester.ListSets()}
    assert {"community:hep", "community:bio", "purpose:teaching",
            "purpose:analysis"} <= specs
    assert not any(s.startswith("vo:") for s in specs)  # VO images are hidden from anonymous
    hep = list(harvester.ListIdentifiers(metadataPrefix="oai_dc", set="community:hep"))
    assert hep and all("community:hep" in h.setSpecs for h in hep)
    teaching = list(harvester.ListRecords(metadataPrefix="gridvm", set="purpose:teaching"))
    assert teaching and all("purpose:teaching" in r.header.setSpecs for r in teaching)
    later = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(oaiexceptions.NoRecordsMatch):
        list(harvester.ListIdentifiers(metadataPrefix="oai_dc",
                                       **{"from": later.strftime("%Y-%m-%d")}))
    until = list(harvester.ListIdentifiers(metadataPrefix="oai_dc",
                                           until=later.strftime("%Y-%m-%dT%H:%M:%SZ")))
    assert len(until) == anonymous_visible(COUNT)


def test_datestamps_follow_status_changes(big):
    provider = OaiProvider(big, info())
    stamp = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    big._clock = lambda: stamp  # the next status change happens "later"
    try:
        big.deprecate("oai-image-00007:1", PUBLISHER)
    finally:
        from image_repo.repository import _now

        big._clock = _now
    with serve_provider(provider) as url:
        changed = list(Sickle(url, http_method="GET").ListIdentifiers(
            metadataPrefix="oai_dc", **{"from": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    assert [h.identifier.rsplit(":", 1)[1] for h in changed] == [
        big.get("oai-image-00007:1", PUBLISHER).id]


def test_get_record_in_the_native_format_carries_the_full_metadata(harvester, big):
    record = big.get("oai-image-00009:1", PUBLISHER)
    got = harvester.GetRecord(identifier=f"oai:test.gridvm.example:{record.id}",
                              metadataPrefix="gridvm")
    image = got.xml.find(f".//{{{GRIDVM}}}image")
    assert image.get("id") == record.id
    assert image.findtext(f"{{{GRIDVM}}}general/{{{GRIDVM}}}name") == "oai-image-00009"
    assert image.findtext(f"{{{GRIDVM}}}origin/{{{GRIDVM}}}source_url") == \
        "docker://example.org/img:9"
    assert image.findtext(f"{{{GRIDVM}}}general/{{{GRIDVM}}}status") == "active"


def test_error_codes(harvester, big):
    hidden = big.get("oai-image-00004:1", PUBLISHER)  # others may not read it
    with pytest.raises(oaiexceptions.IdDoesNotExist):
        harvester.GetRecord(identifier=f"oai:test.gridvm.example:{hidden.id}",
                            metadataPrefix="oai_dc")
    with pytest.raises(oaiexceptions.IdDoesNotExist):
        harvester.GetRecord(identifier="oai:elsewhere:1", metadataPrefix="oai_dc")
    with pytest.raises(oaiexceptions.CannotDisseminateFormat):
        harvester.ListRecords(metadataPrefix="marc21")
    with pytest.raises(oaiexceptions.BadResumptionToken):
        harvester.ListRecords(resumptionToken="not-a-token")
    with pytest.raises(oaiexceptions.BadArgument):
        harvester.ListRecords(metadataPrefix="oai_dc", **{"from": "yesterday"})
    with pytest.raises(oaiexceptions.BadArgument):
        harvester.ListRecords(metadataPrefix="oai_dc", **{"from": "2026-01-02",
                                                          "until": "2026-01-01"})
    with pytest.raises(oaiexceptions.BadArgument):
        harvester.ListRecords(metadataPrefix="oai_dc", set="colour:blue")
    with pytest.raises(oaiexceptions.BadArgument):
        harvester.ListRecords()  # no metadataPrefix
    with pytest.raises(oaiexceptions.BadArgument):
        harvester.ListRecords(metadataPrefix="oai_dc", resumptionToken="x")
    answer = harvester.harvest(verb="ListEverything")  # sickle raises only when iterating
    assert answer.xml.find(f".//{{{OAI}}}error").get("code") == "badVerb"


def test_repeated_and_oversized_arguments_and_a_missing_verb(big):
    provider = OaiProvider(big, info())

    def error(arguments) -> tuple[str, dict]:
        root = etree.fromstring(provider.handle(arguments))
        node = root.find(f"{{{OAI}}}error")
        return node.get("code"), dict(root.find(f"{{{OAI}}}request").attrib)

    assert error({}) == ("badVerb", {})
    assert error({"verb": ["Identify", "Identify"]})[0] == "badArgument"
    assert error({"verb": ["GetRecord"], "identifier": ["x" * 5000],
                  "metadataPrefix": ["oai_dc"]})[0] == "badArgument"
    assert error({"verb": ["Identify"], "extra": ["1"]})[0] == "badArgument"
    for text in ("\x1f", "\0", "\ufffe"):  # no XML can carry them: lxml raised before
        assert error({"verb": ["ListRecords"], "metadataPrefix": ["oai_dc"],
                      "set": [f"vo:{text}"]}) == ("badArgument", {})
        assert error({"verb": [text]}) == ("badArgument", {})
    code, request = error({"verb": ["GetRecord"], "identifier": ["oai:x:y"],
                           "metadataPrefix": ["oai_dc"]})
    assert code == "idDoesNotExist" and request["verb"] == "GetRecord"


def test_a_member_of_a_vo_harvests_its_images_too(big):
    provider = OaiProvider(big, info(page_size=500))
    with serve_provider(provider, ALICE) as url:  # ALICE is in VO atlas
        atlas = list(Sickle(url).ListIdentifiers(metadataPrefix="oai_dc", set="vo:atlas"))
    assert len(atlas) == sum(1 for i in range(COUNT) if i % 5 == 0 and i % 4)
