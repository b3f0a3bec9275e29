"""Registrations in pieces (image_repo.uploads): nothing visible until every file verified,
retries after a wrong file, idempotent re-sends, quota, expiry; IDB applications added and
removed one at a time."""

from __future__ import annotations

import io
import shutil
import threading
import time

import pytest

from base.identity import Caller
from base.reasons import Reason
from image_repo.errors import BadRequest, ChecksumMismatch, QuotaExceeded, UploadNotFound
from image_repo.repository import ImageRepository
from image_repo.uploads import Uploads
from tests.image_repo.examples import builder_document, variant

CREATOR = Caller.of("carol", groups=["images"])
OTHER = Caller.of("dave", groups=["images"])
KERNEL, INITRD = b"k" * 5000, b"i" * 7000


def _doc(**changes):
    return variant(builder_document(KERNEL, INITRD, name="piecewise"), **changes)


def _send(uploads, pending, name, data, caller=CREATOR):
    return uploads.receive(pending.id, name, io.BytesIO(data), len(data), caller)


def test_visible_only_after_the_last_file_verified(repo):
    uploads = Uploads(repo)
    started = uploads.begin(_doc(), CREATOR)
    pending = started.pending
    assert started.image is None and sorted(pending.missing) == ["initrd.img", "vmlinuz"]
    assert _send(uploads, pending, "vmlinuz", KERNEL).pending is pending
    assert repo.list(CREATOR) == []
    done = _send(uploads, pending, "initrd.img", INITRD)
    assert done.image is not None and done.image.ref == "piecewise:1"
    assert [r.ref for r in repo.list(CREATOR)] == ["piecewise:1"]
    assert not pending.directory.exists()
    with pytest.raises(UploadNotFound):
        uploads.get(pending.id, CREATOR)


def test_a_wrong_file_is_refused_naming_it_and_the_registration_waits(repo):
    uploads = Uploads(repo)
    pending = uploads.begin(_doc(), CREATOR).pending
    with pytest.raises(ChecksumMismatch) as err:
        _send(uploads, pending, "initrd.img", b"x" * len(INITRD))
    assert err.value.reason == Reason.IMAGE_CHECKSUM_MISMATCH
    assert err.value.path == "origin.content[1]" and "initrd.img" in str(err.value)
    with pytest.raises(ChecksumMismatch, match="7001 bytes"):
        _send(uploads, pending, "initrd.img", INITRD + b"!")
    assert list(pending.directory.iterdir()) == []
    _send(uploads, pending, "initrd.img", INITRD)
    assert _send(uploads, pending, "vmlinuz", KERNEL).image.version == 1


def test_an_identical_document_again_is_the_same_registration_or_image(repo):
    uploads = Uploads(repo)
    first = uploads.begin(_doc(), CREATOR).pending
    again = uploads.begin(_doc(), CREATOR)
    assert again.existing and again.pending is first
    _send(uploads, first, "vmlinuz", KERNEL)
    image = _send(uploads, first, "initrd.img", INITRD).image
    resent = uploads.begin(_doc(), CREATOR)
    assert resent.existing and resent.image.id == image.id
    changed = uploads.begin(_doc(**{"general.title": "another title"}), CREATOR)
    assert not changed.existing and changed.image.version == 2  # files are in the store


def test_others_cannot_send_files_to_my_registration(repo):
    uploads = Uploads(repo)
    pending = uploads.begin(_doc(), CREATOR).pending
    with pytest.raises(UploadNotFound):
        _send(uploads, pending, "vmlinuz", KERNEL, OTHER)
    with pytest.raises(BadRequest, match="waits for"):
        _send(uploads, pending, "other.bin", b"")


def test_quota_counts_stored_and_awaited_bytes(repo):
    uploads = Uploads(repo, quota_bytes=len(KERNEL) + len(INITRD) + 100)
    pending = uploads.begin(_doc(), CREATOR).pending
    bigger = _doc(**{"general.name": "second"})
    bigger["origin"]["content"][0].update(sha512="a" * 128, size=50)
    with pytest.raises(QuotaExceeded, match=r"limits\.image_quota_mib") as err:
        uploads.begin(bigger, CREATOR)
    assert err.value.reason == Reason.QUOTA_EXCEEDED
    uploads.cancel(pending.id, CREATOR)
    assert not pending.directory.exists()
    assert uploads.begin(bigger, CREATOR).pending is not None
    assert uploads.begin(bigger, Caller.of("root", admin=True)).pending is not None


def test_expired_registrations_are_dropped_with_their_files(repo):
    now = [1000.0]
    uploads = Uploads(repo, expiry_s=60, clock=lambda: now[0])
    pending = uploads.begin(_doc(), CREATOR).pending
    _send(uploads, pending, "vmlinuz", KERNEL)
    now[0] += 61
    assert uploads.expire() == [pending.id]
    assert not pending.directory.exists() and repo.list(CREATOR) == []


def test_a_registration_waiting_for_files_survives_a_restart(database_url, tmp_path):
    first_run = ImageRepository(database_url, tmp_path / "store")
    pending = Uploads(first_run).begin(_doc(), CREATOR).pending
    _send(Uploads(first_run), pending, "vmlinuz", KERNEL)  # any instance: the rows are shared
    first_run.close()

    again = ImageRepository(database_url, tmp_path / "store")  # the server restarted
    try:
        uploads = Uploads(again)
        waiting = uploads.get(pending.id, CREATOR)
        assert waiting.missing == ["initrd.img"] and waiting.caller == CREATOR
        assert waiting.expires == pending.expires and waiting.key == pending.key
        with pytest.raises(UploadNotFound):  # still the creator's own
            uploads.get(pending.id, OTHER)
        assert uploads.begin(_doc(), CREATOR).pending.id == pending.id  # idempotent still
        done = _send(uploads, waiting, "initrd.img", INITRD)
        assert done.image is not None and done.image.ref == "piecewise:1"
        assert not waiting.directory.exists() and Uploads(again).pending() == []
    finally:
        again.close()


def test_stale_registrations_and_stray_files_are_removed_at_the_start(repo):
    now = [1000.0]
    uploads = Uploads(repo, expiry_s=60, clock=lambda: now[0])
    expired = uploads.begin(_doc(), CREATOR).pending
    lost = uploads.begin(_doc(**{"general.name": "lost-files"}), CREATOR).pending
    shutil.rmtree(lost.directory)  # its files went (e.g. the store was cleaned by hand)
    now[0] += 30
    kept = uploads.begin(_doc(**{"general.name": "kept"}), CREATOR).pending
    _send(uploads, kept, "vmlinuz", KERNEL)
    stray = repo.store.uploads / "0123456789abcdef"
    stray.mkdir()
    now[0] += 31  # the first one's hour is over, the last one's is not
    restarted = Uploads(repo, expiry_s=60, clock=lambda: now[0])
    assert [p.id for p in restarted.pending()] == [kept.id]
    assert restarted.get(kept.id, CREATOR).missing == ["initrd.img"]
    assert not expired.directory.exists() and not stray.exists()
    assert sorted(p.name for p in repo.store.uploads.iterdir()) == [kept.id]
    with pytest.raises(UploadNotFound):
        restarted.get(lost.id, CREATOR)


def test_applications_are_added_and_removed_one_at_a_time(repo, tmp_path):
    uploads = Uploads(repo)
    pending = uploads.begin(_doc(), CREATOR).pending
    _send(uploads, pending, "vmlinuz", KERNEL)
    _send(uploads, pending, "initrd.img", INITRD)
    added = repo.add_application("piecewise", {"name": "R", "version": "4.3",
                                               "executable": "/usr/bin/R"}, CREATOR)
    names = [a.name for a in added.metadata.idb.applications]
    assert added.version == 2 and names == ["python3", "bash", "sh", "R"]
    with pytest.raises(BadRequest, match="listed twice"):
        repo.add_application("piecewise", {"name": "R", "version": "4.3"}, CREATOR)
    removed = repo.remove_application("piecewise", "bash", None, CREATOR)
    assert [a.name for a in removed.metadata.idb.applications] == ["python3", "sh", "R"]
    assert removed.base_id == added.id
    with pytest.raises(BadRequest, match="no application perl") as err:
        repo.remove_application("piecewise", "perl", None, CREATOR)
    assert err.value.path == "idb.applications"


def test_stored_bytes_counts_distinct_files_of_live_images(repo):
    uploads = Uploads(repo)
    pending = uploads.begin(_doc(), CREATOR).pending
    _send(uploads, pending, "vmlinuz", KERNEL)
    _send(uploads, pending, "initrd.img", INITRD)
    repo.new_version("piecewise", {"general": {"title": "v2"}}, CREATOR)
    assert repo.stored_bytes("carol") == len(KERNEL) + len(INITRD)
    assert repo.stored_bytes("dave") == 0


def test_files_staged_in_the_store_are_linked_and_still_verified(repo):
    directory = repo.store.open_staging()
    (directory / "vmlinuz").write_bytes(KERNEL)
    (directory / "initrd.img").write_bytes(b"not the initrd")
    files = {"vmlinuz": directory / "vmlinuz", "initrd.img": directory / "initrd.img"}
    with pytest.raises(ChecksumMismatch, match=r"initrd\.img"):
        repo.register(_doc(), files, CREATOR)
    assert repo.list(CREATOR) == [] and list(repo.store.digests()) == []
    (directory / "initrd.img").write_bytes(INITRD)
    record = repo.register(_doc(), files, CREATOR)
    stored = repo.content_paths(record.id, CREATOR)["initrd.img"]
    assert stored.stat().st_ino == (directory / "initrd.img").stat().st_ino  # linked
    assert stored.read_bytes() == INITRD


def test_an_identical_document_during_the_commit_finds_the_image(repo):
    uploads = Uploads(repo)
    pending = uploads.begin(_doc(), CREATOR).pending
    _send(uploads, pending, "vmlinuz", KERNEL)
    entered, release = threading.Event(), threading.Event()
    register = repo.register

    def slow_register(*args, **kwargs):
        entered.set()
        release.wait(10)
        return register(*args, **kwargs)

    repo.register = slow_register
    committing = threading.Thread(target=_send, args=(uploads, pending, "initrd.img", INITRD))
    committing.start()
    assert entered.wait(10)
    repo.register = register
    with pytest.raises(BadRequest, match="too late to cancel"):
        uploads.cancel(pending.id, CREATOR)
    answers = []
    again = threading.Thread(target=lambda: answers.append(uploads.begin(_doc(), CREATOR)))
    again.start()
    time.sleep(0.2)
    release.set()
    committing.join(10)
    again.join(10)
    [answer] = answers
    assert answer.existing and answer.image is not None and answer.image.version == 1
    assert [r.ref for r in repo.list(CREATOR)] == ["piecewise:1"]
    assert uploads.pending() == []


def test_a_patch_replacing_general_by_a_non_object_names_general(repo):
    uploads = Uploads(repo)
    pending = uploads.begin(_doc(), CREATOR).pending
    _send(uploads, pending, "vmlinuz", KERNEL)
    _send(uploads, pending, "initrd.img", INITRD)
    for value in ([], "x", 3):
        with pytest.raises(BadRequest) as err:
            repo.derive("piecewise", {"general": value}, CREATOR)
        assert err.value.path == "general"
