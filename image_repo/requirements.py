"""What a job needs from an image, read strictly from JSON.

A UNICORE job description is mapped onto this form once, at submit, by
``target_system.jobdesc`` (which names the UNICORE key when a value is refused here).

Example::

    {"os": {"distro": "debian", "version": ">=12"}, "architecture": "x86_64",
     "applications": [{"name": "python3", "version": ">=3.10, <4"}],
     "cpus": 2, "memory_mib": 1024, "vo": "atlas"}

Version fields take constraints with the operators of ``image_repo.versions``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from image_repo.schema import ARCHITECTURES
from image_repo.strict import document, from_json, spec, to_json
from image_repo.versions import Constraint, constraint_problem, parse_constraint

_CONSTRAINT_HINT = "a constraint like '>=12' or '>=3.10, <4'"


def _release_constraint_problem(text: str) -> str | None:
    """A constraint on an OS release, whose versions are numbers (``12``, ``>=22.04``)."""
    problem = constraint_problem(text)
    if problem is None and any(not str(term.version)[:1].isdigit()
                               for term in parse_constraint(text).terms):
        problem = f"expected a release constraint like '12' or '>=22.04', got {text!r}"
    return problem


@document
class OsRequirement:
    """Operating system wanted: distribution and a version constraint."""

    distro: str | None = spec(None, pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*",
                              hint="a distribution name like debian", doc="e.g. debian")
    version: str | None = spec(None, check=_release_constraint_problem,
                               doc="a release constraint like '12' or '>=22.04'")

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
    container_image_url: str | None = spec(None, doc="IMAGE_URL of a UNICORE CONTAINER job "
                                           "that names no registered container image: the VM "
                                           "image that is (or was built from) it")
    container_runtime: bool | None = spec(None, doc="an OCI runtime in the image (a CONTAINER "
                                          "job whose container image is registered)")

    @classmethod
    def from_dict(cls, doc: Any) -> Requirements:
        """Read requirements strictly; errors name the path (``requirements.os.version``)."""
        return from_json(cls, doc, "requirements")

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)
