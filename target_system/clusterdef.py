"""Cluster definitions (a gridvm extension): named services of nodes on a private network.

A definition is JSON::

    {"Name": "htc",
     "Services": {
       "head":   {"Resources": {"Image": "…"}, "Count": 1,
                  "Context": {"Files": {"motd": "hello"}, "Environment": {"ROLE": "head"},
                              "Start": ["python3 -m http.server 8000 &"]}},
       "worker": {"Resources": {"Image": "…", "CPUs": 1}, "Min": 1, "Max": 4, "Count": 2,
                  "DependsOn": ["head"], "OnFailure": "degrade"}}}

``Resources`` are a job's (without ``Nodes``); a service has a fixed ``Count`` or is scalable
between ``Min`` and ``Max`` (starting at ``Count``, by default ``Min``).  ``Context`` files go
to ``/etc/gridvm/service/`` in each of the service's nodes, its environment is in
``/etc/gridvm/service/env``, and its start commands run as root once the node's cluster
network is up, before its agent starts.  ``DependsOn`` names services that must be READY
first; ``OnFailure`` says whether a failed node fails the cluster (``fail``, the default of
fixed services) or degrades it (``degrade``, the default of scalable ones).  Every size and
count is bounded; unknown keys are errors naming the key (:class:`JobDescriptionError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from target_system.jobdesc import (
    JobDescription,
    JobDescriptionError,
    _check_keys,
    _environment,
    _int,
    _str,
    parse_job,
)

TOP_KEYS = {"Name", "Services"}
SERVICE_KEYS = {"Resources", "Count", "Min", "Max", "Context", "DependsOn", "OnFailure"}
CONTEXT_KEYS = {"Files", "Environment", "Start"}
ON_FAILURE = ("fail", "degrade")
MAX_SERVICES = 8
MAX_FILES = 32  #: per service
MAX_FILE_BYTES = 64 << 10
MAX_CONTEXT_BYTES = 256 << 10  #: files of one service together
MAX_START = 16
MAX_COMMAND = 4096
_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")  #: a service name, also its nodes' host names
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FILE_PART = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


@dataclass(frozen=True)
class ServiceContext:
    files: dict[str, bytes] = field(default_factory=dict)  #: path below the service dir
    environment: dict[str, str] = field(default_factory=dict)
    start: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceDefinition:
    """One service: its nodes' image requirements and size, how many, what they run."""

    name: str
    resources: JobDescription  #: the requirements and size, read as a job's Resources
    count: int
    minimum: int
    maximum: int
    context: ServiceContext = field(default_factory=ServiceContext)
    depends_on: tuple[str, ...] = ()
    on_failure: str = "fail"

    @property
    def scalable(self) -> bool:
        return self.minimum != self.maximum


@dataclass(frozen=True)
class ClusterDefinition:
    name: str
    services: dict[str, ServiceDefinition]  #: in start order (dependencies first)
    raw: dict[str, Any] = field(default_factory=dict)

    def nodes_at_most(self) -> int:
        return sum(s.maximum for s in self.services.values())


def parse_cluster(doc: Any, max_nodes: int = 16) -> ClusterDefinition:
    """A definition from JSON; JobDescriptionError (a 400) naming the first bad key."""
    if not isinstance(doc, dict):
        raise JobDescriptionError("", "a cluster definition is a JSON object")
    _check_keys("", doc, TOP_KEYS)
    name = _str("Name", doc.get("Name", "cluster"))
    if not _CLUSTER_NAME.match(name):
        raise JobDescriptionError("Name", "1 to 64 letters, digits, '.', '_' or '-'")
    services_doc = doc.get("Services")
    if not isinstance(services_doc, dict) or not services_doc:
        raise JobDescriptionError("Services", "expected an object of at least one service")
    if len(services_doc) > MAX_SERVICES:
        raise JobDescriptionError("Services", f"at most {MAX_SERVICES} services")
    services = {}
    for key, value in services_doc.items():
        if not isinstance(key, str) or not _NAME.match(key):
            raise JobDescriptionError(f"Services.{key}", "a service name is a lower-case "
                                      "letter and up to 15 lower-case letters or digits")
        services[key] = _service(f"Services.{key}.", key, value)
    for service in services.values():
        for dep in service.depends_on:
            if dep not in services or dep == service.name:
                raise JobDescriptionError(f"Services.{service.name}.DependsOn",
                                          f"no other service {dep!r}")
    ordered = _start_order(services)
    definition = ClusterDefinition(name, ordered, doc)
    if definition.nodes_at_most() > max_nodes:
        raise JobDescriptionError("Services", f"{definition.nodes_at_most()} nodes at most "
                                  f"is outside this site's limit: 1 to {max_nodes}")
    return definition


def _service(path: str, name: str, doc: Any) -> ServiceDefinition:
    if not isinstance(doc, dict):
        raise JobDescriptionError(path.rstrip("."), "expected an object")
    _check_keys(path, doc, SERVICE_KEYS)
    resources = doc.get("Resources", {})
    if isinstance(resources, dict) and "Nodes" in resources:
        raise JobDescriptionError(f"{path}Resources.Nodes", "a service's size is its Count")
    try:
        job = parse_job({"Executable": "true", "Resources": resources})
    except JobDescriptionError as err:
        raise JobDescriptionError(f"{path}{err.path}", str(err).split(": ", 1)[-1]) from None

    def count(key: str, default: int | None) -> int | None:
        return _int(f"{path}{key}", doc[key], minimum=0) if key in doc else default

    fixed = "Min" not in doc and "Max" not in doc
    if fixed:
        number = count("Count", 1) or 0
        if number < 1:
            raise JobDescriptionError(f"{path}Count", "at least 1")
        minimum = maximum = number
    else:
        minimum = count("Min", 0) or 0
        maximum = count("Max", None)
        if maximum is None or maximum < max(minimum, 1):
            raise JobDescriptionError(f"{path}Max", f"a scalable service needs Max >= Min "
                                                    f"and >= 1 (Min is {minimum})")
        number = count("Count", minimum)
        if not minimum <= number <= maximum:
            raise JobDescriptionError(f"{path}Count", f"{number} is not within Min..Max "
                                                      f"({minimum}..{maximum})")
    depends = doc.get("DependsOn", [])
    if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends) or \
            len(depends) > MAX_SERVICES:
        raise JobDescriptionError(f"{path}DependsOn", "expected a list of service names")
    on_failure = _str(f"{path}OnFailure", doc.get("OnFailure", "fail" if fixed else "degrade"))
    if on_failure not in ON_FAILURE:
        raise JobDescriptionError(f"{path}OnFailure", f"one of {', '.join(ON_FAILURE)}")
    return ServiceDefinition(name, job, number, minimum, maximum,
                             _context(f"{path}Context.", doc.get("Context", {})),
                             tuple(dict.fromkeys(depends)), on_failure)


def _context(path: str, doc: Any) -> ServiceContext:
    if not isinstance(doc, dict):
        raise JobDescriptionError(path.rstrip("."), "expected an object")
    _check_keys(path, doc, CONTEXT_KEYS)
    files_doc = doc.get("Files", {})
    if not isinstance(files_doc, dict) or len(files_doc) > MAX_FILES:
        raise JobDescriptionError(f"{path}Files", f"expected an object of at most {MAX_FILES} "
                                                  "files")
    files: dict[str, bytes] = {}
    for name, content in files_doc.items():
        where = f"{path}Files.{name}"
        parts = str(name).split("/")
        if not all(_FILE_PART.match(p) and p not in (".", "..") for p in parts):
            raise JobDescriptionError(where, "a relative path of letters, digits, '.', '_' "
                                             "and '-'")
        if not isinstance(content, str) or len(content.encode()) > MAX_FILE_BYTES:
            raise JobDescriptionError(where, f"expected text of at most {MAX_FILE_BYTES} bytes")
        files[name] = content.encode()
    if sum(map(len, files.values())) > MAX_CONTEXT_BYTES:
        raise JobDescriptionError(f"{path}Files", f"at most {MAX_CONTEXT_BYTES} bytes together")
    start = doc.get("Start", [])
    if not isinstance(start, list) or len(start) > MAX_START:
        raise JobDescriptionError(f"{path}Start", f"expected a list of at most {MAX_START} "
                                                  "commands")
    commands = tuple(_str(f"{path}Start[{i}]", c) for i, c in enumerate(start))
    for i, command in enumerate(commands):
        if len(command) > MAX_COMMAND or "\n" in command or "\0" in command:
            raise JobDescriptionError(f"{path}Start[{i}]", f"one line of at most "
                                                           f"{MAX_COMMAND} characters")
    environment = _environment(doc.get("Environment", {}))
    if len(environment) > 64:
        raise JobDescriptionError(f"{path}Environment", "at most 64 variables")
    return ServiceContext(files, environment, commands)


def _start_order(services: dict[str, ServiceDefinition]) -> dict[str, ServiceDefinition]:
    """The services with every one after those it depends on (a cycle is an error)."""
    ordered: dict[str, ServiceDefinition] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise JobDescriptionError(f"Services.{name}.DependsOn", "the dependencies form "
                                                                    "a cycle")
        visiting.add(name)
        for dep in services[name].depends_on:
            visit(dep)
        ordered[name] = services[name]

    for name in services:
        visit(name)
    return ordered
