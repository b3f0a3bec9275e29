"""What a job needs from an image, read strictly from JSON (or from a UNICORE job).

Example::

    {"os": {"distro": "debian", "version": ">=12"}, "architecture": "x86_64",
     "applications": [{"name": "python3", "version": ">=3.10, <4"}],
     "cpus": 2, "memory_mib": 1024, "vo": "atlas"}

Version fields take constraints with the operators of ``image_repo.versions``.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any

from image_repo.errors import BadRequest
from image_repo.schema import ARCHITECTURES
from image_repo.strict import document, from_json, spec, to_json
from image_repo.versions import Constraint, constraint_problem, parse_constraint

_CONSTRAINT_HINT = "a constraint like '>=12' or '>=3.10, <4'"


@document
class OsRequirement:
    """Operating system wanted: distribution and a version constraint."""

    distro: str | None = spec(None, pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*",
                              hint="a distribution name like debian", doc="e.g. debian")
    version: str | None = spec(None, check=constraint_problem, doc=_CONSTRAINT_HINT)

    @cached_property
    def constraint(self) -> Constraint | None:
        return parse_constraint(self.version) if self.version else None


@document
class ApplicationRequirement:
    """An application wanted (UNICORE ApplicationName/ApplicationVersion)."""

    name: str = spec(pattern=r"[A-Za-z0-9][A-Za-z0-9._+-]*", hint="an application name",
                     doc="application name, compared case-insensitively")
    version: str | None = spec(None, check=constraint_problem, doc=_CONSTRAINT_HINT)

    @cached_property
    def constraint(self) -> Constraint | None:
        return parse_constraint(self.version) if self.version else None


@document
class Requirements:
    """Everything a job may require of an image; every key is optional."""

    image: str | None = spec(None, pattern=r"[A-Za-z0-9][A-Za-z0-9._+-]*(:[0-9]+)?",
                             hint="an image id, name or name:version",
                             doc="this image only (id, name or name:version)")
    os: OsRequirement | None = spec(None, doc="operating system")
    architecture: str | None = spec(None, choices=ARCHITECTURES, doc="CPU architecture")
    applications: list[ApplicationRequirement] = spec(default_factory=list,
                                                      doc="applications, each with a version "
                                                      "constraint")
    cpus: int | None = spec(None, minimum=1, doc="CPUs the job needs")
    memory_mib: int | None = spec(None, minimum=1, doc="memory the job needs, MiB")
    disk_gib: int | None = spec(None, minimum=0, doc="disk the job needs, GiB")
    runtime_s: int | None = spec(None, minimum=1, doc="run time the job needs, seconds")
    vo: str | None = spec(None, doc="the VO the job runs for")
    community: str | None = spec(None, doc="the community the job belongs to")
    container_image_url: str | None = spec(None, doc="IMAGE_URL of a UNICORE CONTAINER job")

    @classmethod
    def from_dict(cls, doc: Any) -> Requirements:
        """Read requirements strictly; errors name the path (``requirements.os.version``)."""
        return from_json(cls, doc, "requirements")

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_unicore_job(cls, job: dict[str, Any], **extra: Any) -> Requirements:
        """Requirements of a UNICORE job description (ApplicationName/Version, Resources,
        CONTAINER's IMAGE_URL, Resources.Image); ``extra`` adds keys such as ``vo``."""
        doc: dict[str, Any] = {}
        app = job.get("ApplicationName")
        params = job.get("Parameters") or {}
        if app == "CONTAINER" and params.get("IMAGE_URL"):
            doc["container_image_url"] = str(params["IMAGE_URL"])
        elif app:
            wanted = {"name": str(app)}
            if job.get("ApplicationVersion"):
                wanted["version"] = str(job["ApplicationVersion"])
            doc["applications"] = [wanted]
        resources = job.get("Resources") or {}
        cpus = resources.get("CPUs") or resources.get("TotalCPUs") or resources.get(
            "CPUsPerNode")
        if cpus is not None:
            doc["cpus"] = _integer(cpus, "Resources.CPUs")
        if resources.get("Memory") is not None:
            doc["memory_mib"] = _mebibytes(resources["Memory"], "Resources.Memory")
        if resources.get("Runtime") is not None:
            doc["runtime_s"] = _seconds(resources["Runtime"], "Resources.Runtime")
        if resources.get("Image"):
            doc["image"] = str(resources["Image"])
        doc.update(extra)
        return cls.from_dict(doc)


_UNITS = {"": 1 / (1 << 20), "b": 1 / (1 << 20), "k": 1 / 1024, "kb": 1 / 1024, "m": 1,
          "mb": 1, "g": 1024, "gb": 1024, "t": 1 << 20, "tb": 1 << 20}
_TIME_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _integer(value: Any, path: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise BadRequest(f"expected a whole number, got {value!r}", path) from None


def _mebibytes(value: Any, path: str) -> int:
    """UNICORE memory: bytes, or a number with k/M/G/T (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise BadRequest(f"expected a memory size like 2G or 512M, got {value!r}", path)
    return max(1, round(float(match.group(1)) * _UNITS[match.group(2).lower()]))


def _seconds(value: Any, path: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _TIME_UNITS:
        raise BadRequest(f"expected a run time like 3600, 90min or 2h, got {value!r}", path)
    return max(1, int(match.group(1)) * _TIME_UNITS[match.group(2).lower()])
