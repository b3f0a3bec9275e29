"""Requirement matching: ranked candidates, and for every rejected visible image, why.

Matching runs in three steps:

1. **Visibility** — only images the caller may read (``image_repo.access``) take part;
   invisible images are never mentioned.  Deleted images take part only when the
   requirement names an image explicitly (so the answer can say it was deleted).
2. **Filters** — one small class per requirement (Nova style).  ``reasons()`` returns why an
   image fails (nothing when it passes); a property the image does not state is no
   constraint.  ``narrow()`` gives the ids that can pass, from the index's posting sets, so
   most images are never looked at one by one.
3. **Ranking** — see :func:`rank_key`.

A site that requires endorsements (a ``TrustPolicy`` with ``require``, image_repo.trust)
adds :class:`TrustFilter`: an image no trusted endorsement vouches for now is rejected with
``IMAGE_UNTRUSTED`` and why.  Without such a policy nothing changes.

Each :class:`Reason` carries a machine code, the metadata path, the required and offered
values and a sentence fit to show a grid user, e.g. ``os.version 11 < required 12``.

One IDB lookup, :func:`select_application`, decides both whether an image provides a wanted
application (:class:`ApplicationFilter`) and which of its IDB entries a job runs
(:func:`find_application`, used by the job runner), so an image that matches never fails
the job for want of the application.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Protocol, TypeVar

from base.identity import Caller
from base.reasons import Reason as Failure
from image_repo import access
from image_repo.errors import NoMatchingImage
from image_repo.index import UNSTATED, CatalogueIndex, ImageProfile
from image_repo.requirements import Requirements
from image_repo.schema import (
    CONTAINER_CONTENT_TYPES,
    CONTAINER_RUNTIMES,
    Application,
    ImageMetadata,
)
from image_repo.trust import TrustPolicy
from image_repo.versions import OPERATORS, Constraint, Version


@dataclass(frozen=True)
class Reason:
    """Why one image does not fit one requirement."""

    code: str          #: e.g. OS_VERSION, APPLICATION_MISSING
    path: str          #: metadata path of the image property, e.g. semantic.os.version
    required: Any      #: what the requirement asked for
    offered: Any       #: what the image states
    message: str       #: a sentence for the user, e.g. "os.version 11 < required 12"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "path": self.path, "required": self.required,
                "offered": self.offered, "message": self.message}


@dataclass(frozen=True)
class Candidate:
    """An image that fits; ``stated`` lists the requirements it fits by stating the property."""

    id: str
    name: str
    version: int
    status: str
    stated: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ref": self.ref, "status": self.status,
                "stated": list(self.stated)}


@dataclass(frozen=True)
class Rejection:
    """A visible image that does not fit, with every reason."""

    id: str
    name: str
    version: int
    reasons: tuple[Reason, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ref": self.ref,
                "reasons": [r.to_dict() for r in self.reasons]}


# --------------------------------------------------------------------------- IDB lookup ------

class IdbEntry(Protocol):
    """An IDB application: the index's summary of it or the metadata's full entry."""

    name: str

    @property
    def parsed(self) -> Version | None: ...


Entry = TypeVar("Entry", bound=IdbEntry)


def select_application(entries: Iterable[Entry], name: str,
                       constraint: Constraint | None) -> Entry | None:
    """The first entry named ``name`` (case-insensitively) whose version satisfies
    ``constraint``; an entry that states no version satisfies any constraint."""
    wanted = name.lower()
    for entry in entries:
        if entry.name.lower() == wanted and (
                constraint is None or entry.parsed is None or constraint.holds(entry.parsed)):
            return entry
    return None


def find_application(metadata: ImageMetadata, name: str,
                     constraint: Constraint | None) -> Application | None:
    """The IDB application of an image that a job asking for ``name`` (with a version
    ``constraint``) runs; None when the image does not provide it."""
    return select_application(metadata.idb.applications, name, constraint)


# --------------------------------------------------------------------------- filters ---------

class ImageFilter:
    """One requirement.  Subclasses set ``requirement`` and implement ``reasons``."""

    requirement = ""

    def applies(self, req: Requirements) -> bool:
        return getattr(req, self.requirement) not in (None, [], "")

    def reasons(self, image: ImageProfile, req: Requirements) -> list[Reason]:
        raise NotImplementedError

    def stated(self, image: ImageProfile, req: Requirements) -> bool:
        """Whether the image states the property (it then ranks above one that is silent)."""
        return True

    def narrow(self, index: CatalogueIndex, req: Requirements) -> list[set[str]] | None:
        """Posting sets whose union holds every id that may pass; None: cannot narrow."""
        return None


class ImageNameFilter(ImageFilter):
    requirement = "image"

    def reasons(self, image, req):
        wanted = req.image
        if wanted in (image.id, image.name, image.ref):
            if image.status == "deleted":
                return [Reason("IMAGE_DELETED", "general.status", "active", "deleted",
                               f"{image.ref} is deleted")]
            return []
        return [Reason("IMAGE_NAME", "general.name", wanted, image.ref,
                       f"image {image.ref} is not the requested {wanted}")]

    def narrow(self, index, req):
        wanted = req.image
        if wanted in index.profiles:
            return [{wanted}]
        return [index.ids("name", wanted.split(":", 1)[0])]


class ArchitectureFilter(ImageFilter):
    requirement = "architecture"

    def reasons(self, image, req):
        if image.architecture in (None, req.architecture):
            return []
        return [Reason("ARCHITECTURE", "origin.architecture", req.architecture,
                       image.architecture, f"architecture is {image.architecture}, required "
                       f"{req.architecture}")]

    def stated(self, image, req):
        return image.architecture is not None

    def narrow(self, index, req):
        return [index.ids("architecture", req.architecture),
                index.ids("architecture", UNSTATED)]


class OperatingSystemFilter(ImageFilter):
    requirement = "os"

    def reasons(self, image, req):
        wanted, found = req.os, []
        if wanted.distro and image.os_distro and image.os_distro != wanted.distro.lower():
            found.append(Reason("OS_DISTRO", "semantic.os.distro", wanted.distro,
                                image.os_distro, f"os.distro is {image.os_distro}, required "
                                f"{wanted.distro}"))
        if wanted.constraint and image.os_version is not None:
            term = wanted.constraint.failing(image.os_version)
            if term is not None:
                found.append(Reason("OS_VERSION", "semantic.os.version", wanted.version,
                                    str(image.os_version),
                                    term.operator.explain("os.version", image.os_version,
                                                          term.version)))
        return found

    def stated(self, image, req):
        return (not req.os.distro or image.os_distro is not None) and (
            not req.os.version or image.os_version is not None)

    def narrow(self, index, req):
        if not req.os.distro:
            return None
        return [index.ids("os_distro", req.os.distro.lower()), index.ids("os_distro", UNSTATED)]


class ApplicationFilter(ImageFilter):
    """Each wanted application must be in the IDB (an image without an IDB is silent)."""

    requirement = "applications"

    def reasons(self, image, req):
        if not image.apps:
            return []
        found = []
        for i, wanted in enumerate(req.applications):
            entries = image.apps.get(wanted.name.lower())
            if entries is None:
                provided = ", ".join(sorted(e.name for v in image.apps.values() for e in v))
                found.append(Reason("APPLICATION_MISSING", "idb.applications", wanted.name,
                                    provided, f"application {wanted.name} is not provided "
                                    f"(provides {provided})"))
                continue
            if select_application(entries, wanted.name, wanted.constraint) is not None:
                continue
            versions = [e.parsed for e in entries]
            offered = ", ".join(str(v) for v in versions)
            if len(versions) == 1:
                term = wanted.constraint.failing(versions[0])
                message = term.operator.explain(f"{wanted.name} version", versions[0],
                                                term.version)
            else:
                message = f"{wanted.name} versions {offered} do not satisfy {wanted.version}"
            found.append(Reason("APPLICATION_VERSION", f"idb.applications[{i}].version",
                                wanted.version, offered, message))
        return found

    def stated(self, image, req):
        for wanted in req.applications:
            entries = image.apps.get(wanted.name.lower())
            if not entries or (wanted.constraint and all(e.parsed is None for e in entries)):
                return False
        return True

    def narrow(self, index, req):
        # Narrowing by the first application is enough to shrink the pool; the filter
        # checks every application of each image in the pool.
        first = req.applications[0].name.lower()
        return [index.ids("app", first), index.ids("app", UNSTATED)]


@dataclass
class LimitFilter(ImageFilter):
    """A resource the job needs must be within the image's resource limit, when it has one."""

    requirement: str = ""
    limit: str = ""
    label: str = ""
    least: int = 1  #: the smallest value the requirement may have

    def reasons(self, image, req):
        needed, limit = getattr(req, self.requirement), getattr(image, self.limit)
        if limit is None or needed <= limit:
            return []
        message = (OPERATORS["<="].explain(self.label, needed, limit)
                   + f" (this image's limit: {self.label} {self.least} to {limit})")
        return [Reason(f"{self.requirement.split('_')[0].upper()}_LIMIT",
                       f"idb.resource_limits.{self.limit.removeprefix('limit_')}", needed,
                       limit, message)]

    def stated(self, image, req):
        return getattr(image, self.limit) is not None


class LabelFilter(ImageFilter):
    """The job's VO or community must be one of the image's, when it lists any."""

    def __init__(self, requirement: str, attribute: str, path: str, code: str, word: str):
        self.requirement, self.attribute, self.path = requirement, attribute, path
        self.code, self.word = code, word

    def reasons(self, image, req):
        labels, wanted = getattr(image, self.attribute), getattr(req, self.requirement)
        if not labels or wanted in labels:
            return []
        offered = sorted(labels)
        return [Reason(self.code, self.path, wanted, offered,
                       f"image is for {self.word} {', '.join(offered)}, not {wanted}")]

    def stated(self, image, req):
        return bool(getattr(image, self.attribute))

    def narrow(self, index, req):
        posting = self.attribute[:-1] if self.attribute == "vos" else "community"
        wanted = getattr(req, self.requirement)
        return [index.ids(posting, wanted), index.ids(posting, UNSTATED)]


class ContainerFilter(ImageFilter):
    """A CONTAINER job's IMAGE_URL that is no registered container image: the VM image is
    that container (its name, or the ``source_url`` it was built from), or declares the
    CONTAINER application.  An image that states neither does not run it on its own OS."""

    requirement = "container_image_url"

    @staticmethod
    def _names(image) -> tuple:
        """IMAGE_URL may name the image itself: its name, name:version or id."""
        return (image.source_url, image.name, image.ref, image.id)

    def reasons(self, image, req):
        url = req.container_image_url
        if url in self._names(image) or "container" in image.apps:
            return []
        offered = image.source_url or "no CONTAINER application"
        return [Reason("CONTAINER_IMAGE", "origin.source_url", url, offered,
                       f"image is not {url} and does not provide the CONTAINER application")]


class ContainerRuntimeFilter(ImageFilter):
    """A CONTAINER job whose container image is registered: a VM image with an OCI runtime."""

    requirement = "container_runtime"

    def reasons(self, image, req):
        if image.container_runtimes:
            return []
        return [Reason("CONTAINER_RUNTIME", "semantic.container_runtime", "an OCI runtime",
                       None, "image offers no container runtime")]

    def narrow(self, index, req):
        return [index.ids("runtime", name) for name in CONTAINER_RUNTIMES]


class BootableFilter(ImageFilter):
    """Every match is for a VM to boot: a container image runs inside one, never alone."""

    requirement = "bootable"

    def applies(self, req):
        return True

    def reasons(self, image, req):
        if image.content_type not in CONTAINER_CONTENT_TYPES:
            return []
        return [Reason("CONTAINER_NOT_BOOTABLE", "origin.content_type", "a VM image",
                       image.content_type, f"a container image ({image.content_type}) runs in "
                       f"a VM image with a container runtime, it does not boot")]

    def stated(self, image, req):
        return False


class TrustFilter(ImageFilter):
    """The site's condition, not the job's: an endorsement the policy trusts at ``now`` (one
    instant for the whole match), for the image and, for a layer, for each base below it
    (their disks boot with it).  ``profiles`` is the match's snapshot, where bases are found."""

    requirement = "endorsement"
    MAX_BASES = 16  #: bounds the walk down a chain (registration allows fewer)

    def __init__(self, policy: TrustPolicy, now: datetime,
                 profiles: dict[str, ImageProfile] | None = None):
        self.policy, self.now, self.profiles = policy, now, profiles or {}

    def applies(self, req):
        return self.policy.require

    def reasons(self, image, req):
        verdict = self.policy.verdict(image.endorsements, self.now)
        if not verdict.trusted:
            return [Reason(Failure.IMAGE_UNTRUSTED, "endorsements",
                           "an endorsement this site trusts",
                           [f.to_dict() for f in verdict.findings], verdict.message)]
        base_id, seen = image.backing_image, 0
        while base_id is not None and seen < self.MAX_BASES:
            base, seen = self.profiles.get(base_id), seen + 1
            if base is None or base.status == "deleted":
                return [Reason(Failure.IMAGE_UNAVAILABLE, "origin.backing_image",
                               "a usable base", base_id,
                               f"a layer on {base_id}, which is not in the catalogue")]
            verdict = self.policy.verdict(base.endorsements, self.now)
            if not verdict.trusted:
                return [Reason(Failure.IMAGE_UNTRUSTED, "origin.backing_image",
                               "an endorsement this site trusts, for every base", base.ref,
                               f"a layer on {base.ref}, which is not trusted: "
                               f"{verdict.message}")]
            base_id = base.backing_image
        return []

    def stated(self, image, req):
        return False  # every candidate is endorsed: no reason to rank one above another

    def narrow(self, index, req):
        return [index.ids("endorsed", True)]


FILTERS: tuple[ImageFilter, ...] = (
    ImageNameFilter(),
    ArchitectureFilter(),
    OperatingSystemFilter(),
    ApplicationFilter(),
    LimitFilter("cpus", "limit_cpus", "cpus"),
    LimitFilter("memory_mib", "limit_memory_mib", "memory_mib"),
    LimitFilter("disk_gib", "limit_disk_gib", "disk_gib", least=0),
    LimitFilter("runtime_s", "limit_runtime_s", "runtime_s"),
    LabelFilter("vo", "vos", "semantic.vos", "VO", "VOs"),
    LabelFilter("community", "communities", "general.communities", "COMMUNITY", "communities"),
    ContainerFilter(),
    ContainerRuntimeFilter(),
    BootableFilter(),
)


def rank_key(image: ImageProfile, stated: int) -> tuple:
    """Best first: active before deprecated; more requirements met by stated properties
    before fewer; newer registrations before older; then name and version for stability."""
    return (image.status != "active", -stated, -image.created, image.name, -image.version)


# --------------------------------------------------------------------------- result ----------

class MatchResult:
    """Ranked ``candidates`` and, per visible rejected image, ``rejected`` with reasons.

    ``rejected`` is worked out on first use (from the same snapshot), so a caller that only
    wants the best candidate does not pay for explaining every other image.
    """

    def __init__(self, requirements: Requirements, candidates: list[Candidate],
                 explain: Callable[[], list[Rejection]]):
        self.requirements = requirements
        self.candidates = candidates
        self._explain = explain

    @cached_property
    def rejected(self) -> list[Rejection]:
        return self._explain()

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def require(self) -> Candidate:
        """The best candidate, or :class:`NoMatchingImage` saying why each image failed."""
        if self.best is not None:
            return self.best
        raise NoMatchingImage(self.summary(), self)

    def summary(self, limit: int = 5) -> str:
        """One line: why nothing matched (the first ``limit`` images)."""
        if self.candidates:
            return f"{len(self.candidates)} images match; best {self.candidates[0].ref}"
        if not self.rejected:
            return "no image is visible to you"
        parts = [f"{r.ref}: {'; '.join(x.message for x in r.reasons)}"
                 for r in self.rejected[:limit]]
        more = len(self.rejected) - limit
        tail = f"; and {more} more images" if more > 0 else ""
        return "no image matches — " + " | ".join(parts) + tail

    def to_dict(self) -> dict[str, Any]:
        return {"requirements": self.requirements.to_dict(),
                "candidates": [c.to_dict() for c in self.candidates],
                "rejected": [r.to_dict() for r in self.rejected]}


# --------------------------------------------------------------------------- matcher ---------

@dataclass
class Matcher:
    """Applies ``filters`` to the images of an index."""

    filters: tuple[ImageFilter, ...] = field(default=FILTERS)

    def match(self, index: CatalogueIndex, req: Requirements, caller: Caller,
              limit: int | None = None, policy: TrustPolicy | None = None) -> MatchResult:
        active = [f for f in self.filters if f.applies(req)]
        with index.lock:
            profiles = index.profiles  # a snapshot: refreshes replace it (copy on write)
            if policy is not None and policy.require:
                active.append(TrustFilter(policy, policy.now(), profiles))
            pool = self._pool(index, active, req)
        considered = self._considered(req)
        candidates: list[tuple[tuple, Candidate]] = []
        for image_id in (pool if pool is not None else profiles):
            image = profiles.get(image_id)
            if image is None or not considered(image) or not _visible(image, caller):
                continue
            if any(f.reasons(image, req) for f in active):
                continue
            stated = tuple(f.requirement for f in active if f.stated(image, req))
            candidates.append((rank_key(image, len(stated)),
                               Candidate(image.id, image.name, image.version, image.status,
                                         stated)))
        candidates.sort(key=lambda pair: pair[0])
        ranked = [c for _, c in candidates[:limit]]
        chosen = {c.id for _, c in candidates}

        def explain() -> list[Rejection]:
            rejected = []
            for image in profiles.values():
                if image.id in chosen or not considered(image) or not _visible(image, caller):
                    continue
                reasons = [r for f in active for r in f.reasons(image, req)]
                if reasons:
                    rejected.append(Rejection(image.id, image.name, image.version,
                                              tuple(reasons)))
            rejected.sort(key=lambda r: (len(r.reasons), r.name, -r.version))
            return rejected

        return MatchResult(req, ranked, explain)

    @staticmethod
    def _pool(index: CatalogueIndex, active: Iterable[ImageFilter],
              req: Requirements) -> set[str] | None:
        """The ids every narrowing filter allows, or None for all.

        The smallest union of posting sets is materialised; the others are only probed for
        membership, so large sets (all x86_64 images) cost nothing to build.
        """
        narrowed = [sets for f in active if (sets := f.narrow(index, req)) is not None]
        if not narrowed:
            return None
        narrowed.sort(key=lambda sets: sum(len(s) for s in sets))
        pool = set().union(*narrowed[0])
        for sets in narrowed[1:]:
            if len(sets) == 1:
                pool &= sets[0]
            else:
                pool = {i for i in pool if any(i in s for s in sets)}
            if not pool:
                break
        return pool

    @staticmethod
    def _considered(req: Requirements) -> Callable[[ImageProfile], bool]:
        if req.image:
            return lambda image: True
        return lambda image: image.status != "deleted"


def _visible(image: ImageProfile, caller: Caller) -> bool:
    return access.can_read(caller, image.owner, image.group, image.mode, image.vos)


__all__ = ["FILTERS", "Candidate", "ImageFilter", "MatchResult", "Matcher", "Reason",
           "Rejection", "TrustFilter", "find_application", "rank_key", "select_application"]
