"""In-memory index of the catalogue for fast matching.

Each image version becomes a compact :class:`ImageProfile` (only what matching and
visibility need), with a compact summary of each endorsement (its signature and files are
checked here, once per change; image_repo.trust).  Profiles are kept in posting sets by
architecture, OS distribution, application, VO, community, name, source URL and being
endorsed, so a requirement can narrow 100k images to the few that may pass before the
filters look at each one.  The index follows the catalogue through its change numbers
(``images.change_seq``): a refresh reads only rows changed since.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from image_repo.models import (
    LAYER_BASE,
    ImageApplicationRow,
    ImageEndorsementRow,
    ImageFileRow,
    ImageLabelRow,
    ImageRow,
    SequenceRow,
)
from image_repo.trust import EndorsementSummary, ImageIdentity, summarize
from image_repo.versions import Version

#: the key under which images that do not state a property are filed
UNSTATED = None


@dataclass(slots=True)
class AppEntry:
    name: str
    version: str | None
    parsed: Version | None


@dataclass(slots=True)
class ImageProfile:
    """What matching knows about one image version."""

    id: str
    name: str
    version: int
    status: str
    owner: str
    group: str | None
    mode: int
    vos: frozenset[str]
    communities: frozenset[str]
    architecture: str | None
    os_distro: str | None
    os_version: Version | None
    apps: dict[str, list[AppEntry]]  # by lower-case name
    limit_cpus: int | None
    limit_memory_mib: int | None
    limit_disk_gib: int | None
    limit_runtime_s: int | None
    source_url: str | None
    created: float
    endorsements: tuple[EndorsementSummary, ...] = ()
    content_type: str | None = None
    container_runtimes: frozenset[str] = frozenset()  #: OCI runtimes it offers (crun, runc)
    backing_image: str | None = None  #: a layer's base (an image id), whose disk boots with it

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class CatalogueIndex:
    """Profiles of every image plus posting sets; refresh it with a session.

    ``profiles`` is replaced, never changed in place, by a refresh (copy on write), so a
    reader that took it under ``lock`` holds a consistent snapshot without copying it.
    """

    def __init__(self) -> None:
        self.profiles: dict[str, ImageProfile] = {}
        self.postings: dict[str, defaultdict[object, set[str]]] = {
            key: defaultdict(set) for key in ("architecture", "os_distro", "app", "vo",
                                              "community", "name", "source_url",
                                              "endorsed", "runtime")}
        self.change_number = 0
        self._certificates: dict = {}  # endorser certificates by fingerprint, parsed once
        self.lock = threading.RLock()

    def ids(self, posting: str, key: object) -> set[str]:
        return self.postings[posting].get(key, _EMPTY)

    def refresh(self, session: Session) -> None:
        """Take in every catalogue change since the last refresh."""
        with self.lock:
            newest = session.execute(select(SequenceRow.value)
                                     .where(SequenceRow.name == "catalogue")).scalar_one()
            if newest == self.change_number:
                return
            since = self.change_number
            changed = ImageRow.change_seq > since
            apps: defaultdict[str, dict[str, list[AppEntry]]] = defaultdict(dict)
            for image_id, name, key, version in session.execute(
                    select(ImageApplicationRow.image_id, ImageApplicationRow.name,
                           ImageApplicationRow.name_key, ImageApplicationRow.version)
                    .join(ImageRow, ImageRow.id == ImageApplicationRow.image_id)
                    .where(changed).order_by(ImageApplicationRow.position)):
                apps[image_id].setdefault(key, []).append(
                    AppEntry(name, version, Version(version) if version else None))
            labels: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
            for image_id, kind, value in session.execute(
                    select(ImageLabelRow.image_id, ImageLabelRow.kind, ImageLabelRow.value)
                    .join(ImageRow, ImageRow.id == ImageLabelRow.image_id).where(changed)):
                labels[(image_id, kind)].add(value)
            endorsements = self._endorsements(session, changed)
            profiles = dict(self.profiles)
            columns = [ImageRow.id, ImageRow.name, ImageRow.version, ImageRow.status,
                       ImageRow.owner, ImageRow.group_name, ImageRow.mode,
                       ImageRow.architecture, ImageRow.os_distro, ImageRow.os_version,
                       ImageRow.limit_cpus, ImageRow.limit_memory_mib, ImageRow.limit_disk_gib,
                       ImageRow.limit_runtime_s, ImageRow.source_url, ImageRow.created,
                       ImageRow.content_type]
            for row in session.execute(select(*columns).where(changed)):
                self._put(profiles, ImageProfile(
                    id=row.id, name=row.name, version=row.version, status=row.status,
                    owner=row.owner, group=row.group_name, mode=row.mode,
                    vos=frozenset(labels.get((row.id, "vo"), ())),
                    communities=frozenset(labels.get((row.id, "community"), ())),
                    architecture=row.architecture,
                    os_distro=row.os_distro.lower() if row.os_distro else None,
                    os_version=Version(row.os_version) if row.os_version else None,
                    apps=apps.get(row.id, {}), limit_cpus=row.limit_cpus,
                    limit_memory_mib=row.limit_memory_mib, limit_disk_gib=row.limit_disk_gib,
                    limit_runtime_s=row.limit_runtime_s, source_url=row.source_url,
                    created=_timestamp(row.created),
                    endorsements=endorsements.get(row.id, ()), content_type=row.content_type,
                    container_runtimes=frozenset(labels.get((row.id, "runtime"), ())),
                    backing_image=next(iter(labels.get((row.id, LAYER_BASE), ())), None)))
            self.profiles = profiles
            # Writers reserve change numbers under the sequence row's lock and commit them
            # with their rows, so every change up to ``newest`` has been read.  Rows committed
            # after ``newest`` was read may have been read too; reading them again is harmless.
            self.change_number = newest

    def _endorsements(self, session: Session,
                      changed) -> dict[str, tuple[EndorsementSummary, ...]]:
        """Summaries of the endorsements of the changed images (few images have any)."""
        rows = list(session.scalars(
            select(ImageEndorsementRow).join(ImageRow, ImageRow.id == ImageEndorsementRow.image_id)
            .where(changed).order_by(ImageEndorsementRow.signed, ImageEndorsementRow.fingerprint)))
        if not rows:
            return {}
        endorsed = (ImageRow.id.in_(select(ImageEndorsementRow.image_id)), changed)
        files: defaultdict[str, dict[str, str]] = defaultdict(dict)
        for image_id, file, sha512 in session.execute(
                select(ImageFileRow.image_id, ImageFileRow.file, ImageFileRow.sha512)
                .join(ImageRow, ImageRow.id == ImageFileRow.image_id).where(*endorsed)):
            files[image_id][file] = sha512
        images = {image_id: ImageIdentity(image_id, name, version, files[image_id])
                  for image_id, name, version in session.execute(
                      select(ImageRow.id, ImageRow.name, ImageRow.version).where(*endorsed))}
        found: defaultdict[str, list[EndorsementSummary]] = defaultdict(list)
        for row in rows:
            found[row.image_id].append(summarize(row.stored(), images[row.image_id],
                                                 self._certificates))
        return {image_id: tuple(summaries) for image_id, summaries in found.items()}

    def _put(self, profiles: dict[str, ImageProfile], profile: ImageProfile) -> None:
        old = profiles.get(profile.id)
        if old is not None:
            for posting, key in _keys(old):
                self.postings[posting][key].discard(old.id)
        profiles[profile.id] = profile
        for posting, key in _keys(profile):
            self.postings[posting][key].add(profile.id)


_EMPTY: set[str] = set()


def _keys(profile: ImageProfile) -> list[tuple[str, object]]:
    keys: list[tuple[str, object]] = [
        ("architecture", profile.architecture), ("os_distro", profile.os_distro),
        ("name", profile.name), ("source_url", profile.source_url)]
    keys += [("app", name) for name in profile.apps] or [("app", UNSTATED)]
    keys += [("vo", vo) for vo in profile.vos] or [("vo", UNSTATED)]
    keys += [("community", c) for c in profile.communities] or [("community", UNSTATED)]
    keys += [("runtime", name) for name in profile.container_runtimes]
    if profile.endorsements:  # only these: unendorsed images cost nothing here
        keys.append(("endorsed", True))
    return keys


def _timestamp(stamp: datetime) -> float:
    """Seconds since the epoch; SQLite hands back naive datetimes that are UTC."""
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()
