"""UNICORE job descriptions: parsed strictly, with errors that name the offending key.

Values are accepted the lenient UNICORE way (booleans as ``"true"``/``"false"``, numbers as
strings, ``Runtime`` and ``Memory`` with units, ``Environment`` as a list or an object);
keys are not: an unknown key is an error naming it, so a typo never silently drops a
requirement.  The result separates what picks the image (:attr:`JobDescription.requirements`,
image_repo's :class:`~image_repo.requirements.Requirements`, checked here once, so a value
image_repo refuses is an error naming its UNICORE key at submit) from what runs in it.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from base.errors import GridvmError
from base.reasons import Reason
from image_repo.errors import BadRequest
from image_repo.requirements import ApplicationRequirement, Requirements
from target_system.containers import ContainerToRun


class JobDescriptionError(GridvmError, ValueError):
    """A job description that cannot be run; ``path`` names the key."""

    reason = Reason.BAD_REQUEST

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


#: Keys gridvm runs; the value says where the key's meaning lives in this module.
TOP_LEVEL_KEYS = {
    "Name", "Executable", "Arguments", "Environment", "Parameters", "ApplicationName",
    "ApplicationVersion", "Stdout", "Stderr", "Stdin", "IgnoreNonZeroExitCode", "Resources",
    "Project", "Imports", "Exports", "haveClientStageIn", "Job type", "Tags", "Umask",
    "User precommand", "User postcommand", "RunUserPrecommandOnLoginNode",
    "RunUserPostcommandOnLoginNode", "UserPrecommandIgnoreNonZeroExitCode",
    "UserPostcommandIgnoreNonZeroExitCode", "UserPrecommandIgnoreNonZeroExitcode",
    "UserPostcommandIgnoreNonZeroExitcode", "Notification", "NotificationSettings",
    "User email", "Login node",
}
#: Accepted but with no effect in a VM site; listed so that clients that send them work.
IGNORED_KEYS = {"Project", "User email", "Login node", "Umask",
                "RunUserPrecommandOnLoginNode", "RunUserPostcommandOnLoginNode"}
#: The one partition (UNICORE queue) of a VM site; ``Resources.Queue`` may name only it.
PARTITION = "batch"
#: Batch-system resources a VM site cannot honour: a value other than the harmless one
#: (None: there is none) is an error naming the key, never silently ignored.  UNICORE job
#: arrays (ArraySize, ArrayLimit) are among them until the site runs arrays.
UNSUPPORTED_RESOURCES: dict[str, str | None] = {
    "Queue": PARTITION, "Exclusive": "false", "GPUsPerNode": "0", "QoS": None,
    "Reservation": None, "NodeConstraints": None, "ArraySize": None, "ArrayLimit": None,
}
RESOURCE_KEYS = {
    "Runtime", "Queue", "Nodes", "CPUsPerNode", "TotalCPUs", "CPUs", "GPUsPerNode", "Memory",
    "MemoryPerNode", "Reservation", "NodeConstraints", "QoS", "Exclusive", "ArraySize",
    "ArrayLimit", "Project",
    # gridvm's image requirements
    "Image", "OperatingSystem", "OperatingSystemVersion", "CPUArchitecture", "Disk", "VO",
}
#: The Resources that give the CPUs and the memory of the job's one node.
CPU_KEYS = ("CPUs", "TotalCPUs", "CPUsPerNode")
MEMORY_KEYS = ("Memory", "MemoryPerNode")
IMPORT_KEYS = {"From", "To", "Data", "FailOnError", "Permissions", "Mode", "ReadOnly",
               "Credentials", "ExtraParameters"}
EXPORT_KEYS = {"From", "To", "FailOnError", "Credentials", "ExtraParameters"}
#: UNICORE's NotificationSettings: the job states to notify of (``bssStatus``, the batch
#: system's own states, is accepted and has no effect: a VM site has no batch system).
NOTIFICATION_KEYS = {"status", "bssStatus"}
NOTIFIED_BY_DEFAULT = ("RUNNING", "SUCCESSFUL", "FAILED")
JOB_STATES = ("READY", "STAGINGIN", "QUEUED", "RUNNING", "STAGINGOUT", "SUCCESSFUL", "FAILED")
JOB_TYPES = {"batch": "BATCH", "normal": "BATCH", "on_login_node": "ON_LOGIN_NODE",
             "interactive": "ON_LOGIN_NODE"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: UNICORE's time units: a unit given is a prefix of one of these words ("m" is minutes)
_UNITS_TIME = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
_UNITS_MEM = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: Bounds of the numbers a description may give: far above any VM, far below overflow.
MAX_COUNT = 1 << 20  #: CPUs, Nodes
MAX_RUNTIME_S = 1 << 32  #: Runtime, seconds
MAX_BYTES = 1 << 60  #: Memory, Disk
MAX_NAME = 512  #: characters of a job's Name
MAX_TEXT = 1 << 16  #: characters of any other string of a description
#: Control characters no string may hold (a shell line, a file name, a log line breaks on
#: them); tab is allowed, and newlines in the user pre- and postcommands (scripts).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_IN_SCRIPT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: values the job script quotes as one word (arguments, environment and parameter values):
#: line breaks are kept inside the quotes (``$'...'``), so ``python3 -c "<a script>"`` works
_CONTROL_IN_VALUE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _bool(path: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise JobDescriptionError(path, f"expected true or false, got {value!r}")


def _str(path: str, value: Any, *, maximum: int = MAX_TEXT,
         control: re.Pattern = _CONTROL) -> str:
    """``value`` as text a VM can be given: at most ``maximum`` characters, valid Unicode
    (no lone surrogates), no character ``control`` matches."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise JobDescriptionError(path, f"expected a string, got {type(value).__name__}")
    if len(value) > maximum:
        raise JobDescriptionError(path, f"at most {maximum} characters, got {len(value)}")
    if (bad := control.search(value)) is not None:
        raise JobDescriptionError(path, f"must not contain the control character "
                                        f"U+{ord(bad.group()):04X}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise JobDescriptionError(path, f"not valid Unicode: a lone surrogate "
                                        f"U+{ord(value[err.start]):04X}") from None
    return value


def _within(path: str, number: float, maximum: int) -> float:
    """``number`` when it is a number no larger than ``maximum`` (so not NaN or infinite)."""
    if math.isnan(number) or number > maximum:
        raise JobDescriptionError(path, f"must be a number of at most {maximum}")
    return number


def _float(text: str) -> float | None:
    """The number in ``text``; None when there is none (``"nan"`` is none either)."""
    try:
        number = float(text)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _int(path: str, value: Any, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
    number = value
    if isinstance(value, str):
        parsed = _float(value)
        number = None if parsed is None else int(_within(path, parsed, maximum))
    if not isinstance(number, int) or isinstance(number, bool) or number < minimum:
        raise JobDescriptionError(path, f"expected a whole number >= {minimum}, got {value!r}")
    return int(_within(path, number, maximum))


def parse_runtime(path: str, value: Any) -> int:
    """Seconds from ``3600``, ``"3600"``, ``"30s"``, ``"10min"``/``"10m"``, ``"2h"``/``"2hours"``,
    ``"1d"``: as in UNICORE, the unit is a prefix of seconds, minutes, hours or days, so
    ``"2months"`` or ``"2x"`` is an error, not a guess."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        factor = _time_unit(match.group(2)) if match else None
        if match is None or factor is None:
            raise JobDescriptionError(path, "expected seconds or a time in seconds, minutes, "
                                            f"hours or days, like 10min or 2h: {value!r}")
        seconds = float(match.group(1)) * factor
    if seconds <= 0:
        raise JobDescriptionError(path, "must be positive")
    return int(_within(path, seconds, MAX_RUNTIME_S))


def _time_unit(unit: str) -> int | None:
    """Seconds per ``unit`` (empty: seconds), or None when it names no UNICORE time unit."""
    unit = unit.lower()
    if not unit:
        return 1
    return next((factor for word, factor in _UNITS_TIME.items() if word.startswith(unit)), None)


def parse_memory(path: str, value: Any) -> int:
    """Bytes from ``1073741824``, ``"512M"``, ``"1G"``, ``"2GiB"`` (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTbB]?)(?:i?[bB])?\s*", str(value))
        if not match:
            raise JobDescriptionError(path, f"expected bytes or a size like 512M, 1G: {value!r}")
        size = float(match.group(1)) * _UNITS_MEM[match.group(2).lower()]
    if size <= 0:
        raise JobDescriptionError(path, "must be positive")
    return int(_within(path, size, MAX_BYTES))


#: Where server-side imports may come from: http(s) URLs (if the site allows them) and
#: ``uspace://JOBID/PATH``, a file of another job of the same owner on this site (the REST
#: layer turns this site's own ``…/storages/JOBID-uspace/files/PATH`` URLs into that form).
IMPORT_SCHEMES = ("http://", "https://", "uspace://")


@dataclass(frozen=True)
class Credentials:
    """What the site presents to a data server for one transfer (UNICORE's ``Credentials``:
    ``Username`` + ``Password``, or ``BearerToken``); never shown in logs or reprs."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def authorization(self) -> str:
        """The HTTP ``Authorization`` header value."""
        if self.token is not None:
            return f"Bearer {self.token}"
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass
class InputFile:
    """An import written to ``To`` before the job starts: inline ``Data``, or fetched by the
    site from ``url`` (then ``data`` is None)."""

    to: str
    data: bytes | None
    mode: int | None = None
    url: str | None = None
    fail_on_error: bool = True
    credentials: Credentials | None = None


@dataclass
class OutputFile:
    """An export: the job's file ``source`` uploaded by the site to ``url`` after the job."""

    source: str
    url: str
    fail_on_error: bool = True
    credentials: Credentials | None = None


@dataclass
class JobDescription:
    """What a UNICORE client asked for, split into image requirements and the run."""

    name: str = "N/A"
    job_type: str = "BATCH"
    executable: str | None = None
    arguments: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    application: str | None = None
    application_version: str | None = None
    stdout: str = "stdout"
    stderr: str = "stderr"
    stdin: str | None = None
    ignore_nonzero_exit: bool = False
    runtime: int | None = None  #: seconds
    cpus: int | None = None
    memory: int | None = None  #: bytes
    disk: int | None = None  #: bytes
    nodes: int | None = None
    #: what the image must offer, from ApplicationName/Version, IMAGE_URL and Resources
    requirements: Requirements = field(default_factory=Requirements)
    imports: list[InputFile] = field(default_factory=list)
    exports: list[OutputFile] = field(default_factory=list)
    client_stage_in: bool = False
    tags: list[str] = field(default_factory=list)
    precommand: str | None = None
    postcommand: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    notification: str | None = None  #: URL the site POSTs the job's status to
    notify_states: tuple[str, ...] = NOTIFIED_BY_DEFAULT
    #: the registered container image a CONTAINER job runs (set by the site at submit)
    container: ContainerToRun | None = None

    @property
    def wanted_application(self) -> ApplicationRequirement | None:
        """The IDB application the job runs (ApplicationName, ApplicationVersion), if any."""
        return self.requirements.applications[0] if self.requirements.applications else None

    def run_in_image(self, ref: str) -> None:
        """Run a CONTAINER job in the catalogue image its IMAGE_URL names (``ref``)."""
        self.requirements = dataclasses.replace(self.requirements, image=ref,
                                                container_image_url=None)

    def run_container(self, container: ContainerToRun) -> None:
        """Run a CONTAINER job's registered container image: on a VM image with an OCI
        runtime for the container's architecture (a different ``CPUArchitecture`` is an
        error naming it)."""
        wanted = self.requirements.architecture
        if container.architecture and wanted and wanted != container.architecture:
            raise JobDescriptionError(
                "Resources.CPUArchitecture", f"the container image {container.ref} is for "
                f"{container.architecture}, not {wanted}")
        self.container = container
        self.requirements = dataclasses.replace(
            self.requirements, container_image_url=None, container_runtime=True,
            architecture=container.architecture or wanted)


def _check_keys(path: str, value: dict, allowed: set[str]) -> None:
    for key in value:
        if key not in allowed:
            near = [k for k in allowed if k.lower() == str(key).lower()]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            text = str(key)  # an empty or unprintable key is named by its repr
            name = text if text.strip() and text.isprintable() else repr(text)
            raise JobDescriptionError(f"{path}{name}", f"unknown key{hint}")


def _notification(job: JobDescription, doc: dict[str, Any]) -> None:
    """UNICORE's ``Notification`` (an http(s) URL) and ``NotificationSettings``."""
    if "Notification" in doc:
        url = _str("Notification", doc["Notification"])
        if not url.startswith(("http://", "https://")) or len(url) > 2048:
            raise JobDescriptionError("Notification", "expected an http(s) URL (at most 2048 "
                                      "characters)")
        job.notification = url
    if "NotificationSettings" in doc:
        settings = doc["NotificationSettings"]
        if not isinstance(settings, dict):
            raise JobDescriptionError("NotificationSettings", "expected an object")
        _check_keys("NotificationSettings.", settings, NOTIFICATION_KEYS)
        for key in NOTIFICATION_KEYS:
            if key in settings and not isinstance(settings[key], list):
                raise JobDescriptionError(f"NotificationSettings.{key}",
                                          "expected a list of strings")
        if "status" in settings:
            states = [_str(f"NotificationSettings.status[{i}]", s)
                      for i, s in enumerate(settings["status"])]
            for i, state in enumerate(states):
                if state not in JOB_STATES:
                    raise JobDescriptionError(f"NotificationSettings.status[{i}]",
                                              f"not a job state: {state!r} (one of "
                                              f"{', '.join(JOB_STATES)})")
            job.notify_states = tuple(states)


def parse_job(doc: Any) -> JobDescription:
    """A :class:`JobDescription` from a decoded JSON document; raises JobDescriptionError."""
    if not isinstance(doc, dict):
        raise JobDescriptionError("", "a job description is a JSON object")
    _check_keys("", doc, TOP_LEVEL_KEYS)
    job = JobDescription(raw=doc)
    _command(job, doc)
    _application(job, doc)
    _streams_and_flags(job, doc)
    _notification(job, doc)
    _resources(job, doc.get("Resources", {}))
    job.requirements = _requirements(job, doc.get("Resources", {}))
    _imports(job, doc.get("Imports", []))
    _exports(job, doc.get("Exports", []))
    if not job.executable and not job.application:
        raise JobDescriptionError("Executable", "give an Executable or an ApplicationName")
    return job


def _command(job: JobDescription, doc: dict[str, Any]) -> None:
    """Name, job type, executable, arguments, environment."""
    if "Name" in doc:
        job.name = _str("Name", doc["Name"], maximum=MAX_NAME)
    if "Job type" in doc:
        kind = _str("Job type", doc["Job type"]).lower()
        if kind not in JOB_TYPES:
            raise JobDescriptionError("Job type", f"unsupported job type {doc['Job type']!r}")
        job.job_type = JOB_TYPES[kind]
    if "Executable" in doc:
        job.executable = _str("Executable", doc["Executable"])
        if not job.executable.strip():
            raise JobDescriptionError("Executable", "must not be empty")
    if "Arguments" in doc:
        job.arguments = _strings("Arguments", doc["Arguments"], control=_CONTROL_IN_VALUE)
    job.environment = _environment(doc.get("Environment", {}))


def _application(job: JobDescription, doc: dict[str, Any]) -> None:
    """Parameters, and the IDB application (with CONTAINER's IMAGE_URL)."""
    if "Parameters" in doc:
        params = doc["Parameters"]
        if not isinstance(params, dict):
            raise JobDescriptionError("Parameters", "expected an object")
        job.parameters = {_env_name(f"Parameters.{k}", k):
                          _str(f"Parameters.{k}", v, control=_CONTROL_IN_VALUE)
                          for k, v in params.items()}
    if "ApplicationName" in doc:
        job.application = _str("ApplicationName", doc["ApplicationName"])
    if "ApplicationVersion" in doc:
        job.application_version = _str("ApplicationVersion", doc["ApplicationVersion"])
    if job.application == "CONTAINER" and not job.parameters.get("IMAGE_URL"):
        raise JobDescriptionError("Parameters.IMAGE_URL", "a CONTAINER application needs IMAGE_URL")


def _streams_and_flags(job: JobDescription, doc: dict[str, Any]) -> None:
    """Stdout/Stderr/Stdin, exit-code and stage-in flags, tags, user pre/postcommands."""
    for key, attr in (("Stdout", "stdout"), ("Stderr", "stderr"), ("Stdin", "stdin")):
        if key in doc:
            setattr(job, attr, _relative_path(key, _str(key, doc[key])))
    if "IgnoreNonZeroExitCode" in doc:
        job.ignore_nonzero_exit = _bool("IgnoreNonZeroExitCode", doc["IgnoreNonZeroExitCode"])
    if "haveClientStageIn" in doc:
        job.client_stage_in = _bool("haveClientStageIn", doc["haveClientStageIn"])
    if "Tags" in doc:
        job.tags = _strings("Tags", doc["Tags"])
    if "User precommand" in doc:
        job.precommand = _str("User precommand", doc["User precommand"],
                              control=_CONTROL_IN_SCRIPT)
    if "User postcommand" in doc:
        job.postcommand = _str("User postcommand", doc["User postcommand"],
                               control=_CONTROL_IN_SCRIPT)


def _strings(path: str, value: Any, *, control: re.Pattern = _CONTROL) -> list[str]:
    if not isinstance(value, list):
        raise JobDescriptionError(path, "expected a list of strings")
    return [_str(f"{path}[{i}]", item, control=control) for i, item in enumerate(value)]


def _env_name(path: str, name: Any) -> str:
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise JobDescriptionError(path, f"not a valid environment variable name: {name!r}")
    return name


def _environment(value: Any) -> dict[str, str]:
    env: dict[str, str] = {}
    if isinstance(value, dict):
        for key, val in value.items():
            env[_env_name(f"Environment.{key}", key)] = _str(f"Environment.{key}", val,
                                                             control=_CONTROL_IN_VALUE)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            text = _str(f"Environment[{i}]", item, control=_CONTROL_IN_VALUE)
            name, sep, val = text.partition("=")
            if not sep:
                raise JobDescriptionError(f"Environment[{i}]", f"expected NAME=value: {text!r}")
            env[_env_name(f"Environment[{i}]", name)] = val
    else:
        raise JobDescriptionError("Environment", "expected a list of NAME=value or an object")
    return env


def _relative_path(path: str, name: str) -> str:
    """A file name inside the job directory: no absolute paths, no ``..``."""
    parts = name.split("/")
    if not name or name.startswith("/") or ".." in parts or "\0" in name or "\n" in name:
        raise JobDescriptionError(path, f"must be a relative path inside the job directory: "
                                        f"{name!r}")
    return name


def _resources(job: JobDescription, res: Any) -> None:
    if not isinstance(res, dict):
        raise JobDescriptionError("Resources", "expected an object")
    _check_keys("Resources.", res, RESOURCE_KEYS)
    _unsupported_resources(res)
    if "Runtime" in res:
        job.runtime = parse_runtime("Resources.Runtime", res["Runtime"])
    if "Nodes" in res:
        job.nodes = _int("Resources.Nodes", res["Nodes"], minimum=1)
    if (job.nodes or 1) > 1:
        job.cpus = _cpus_per_node(res, job.nodes)
    else:  # one node: CPUs, TotalCPUs and CPUsPerNode are one number (each one is checked)
        job.cpus = _same(res, CPU_KEYS, lambda path, value: _int(path, value, minimum=1))
    job.memory = _same(res, MEMORY_KEYS, parse_memory)
    if "Disk" in res:
        job.disk = parse_memory("Resources.Disk", res["Disk"])


def _same(res: dict[str, Any], keys: tuple[str, ...], parse) -> Any:
    """The one value the given ``keys`` of ``res`` state (each parsed, so each is bounded),
    None when none is given; keys that disagree are an error naming the second."""
    found: tuple[str, Any] | None = None
    for key in keys:
        if key not in res:
            continue
        value = parse(f"Resources.{key}", res[key])
        if found is not None and value != found[1]:
            raise JobDescriptionError(f"Resources.{key}", f"disagrees with Resources.{found[0]} "
                                                          "(a VM target system has one node)")
        found = found or (key, value)
    return found and found[1]


def _cpus_per_node(res: dict[str, Any], nodes: int) -> int | None:
    """The CPUs of each of ``nodes`` VMs: ``CPUsPerNode``, or the total (``CPUs`` or
    ``TotalCPUs``, which must agree) split evenly; both given must agree too."""
    def count(path: str, value: Any) -> int:
        return _int(path, value, minimum=1)

    per_node = count("Resources.CPUsPerNode", res["CPUsPerNode"]) \
        if "CPUsPerNode" in res else None
    total = _same({k: v for k, v in res.items() if k in ("CPUs", "TotalCPUs")},
                  ("CPUs", "TotalCPUs"), count)
    total_key = "Resources.TotalCPUs" if "TotalCPUs" in res else "Resources.CPUs"
    if total is not None and per_node is not None and total != per_node * nodes:
        raise JobDescriptionError(total_key, f"{total} is not Nodes x CPUsPerNode "
                                             f"({nodes} x {per_node})")
    if total is not None and per_node is None:
        if total % nodes:
            raise JobDescriptionError(total_key, f"{total} CPUs cannot be split evenly over "
                                                 f"{nodes} nodes: give CPUsPerNode")
        per_node = total // nodes
    return per_node


def _unsupported_resources(res: dict[str, Any]) -> None:
    """Refuse a batch-system resource a VM site would ignore (see UNSUPPORTED_RESOURCES)."""
    for key, harmless in UNSUPPORTED_RESOURCES.items():
        if key not in res:
            continue
        given = res[key]
        text = str(given).lower() if isinstance(given, str | int | bool) else None
        if harmless is not None and text == harmless:
            continue
        allowed = f" (only {harmless!r} is)" if harmless is not None else ""
        raise JobDescriptionError(f"Resources.{key}", f"not supported on a VM site{allowed}: "
                                                      f"{given!r}")


#: The UNICORE key each image requirement comes from, named when image_repo refuses a value.
REQUIREMENT_SOURCES = {
    "image": "Resources.Image", "os.distro": "Resources.OperatingSystem",
    "os.version": "Resources.OperatingSystemVersion",
    "architecture": "Resources.CPUArchitecture", "vo": "Resources.VO",
    "applications[0].name": "ApplicationName", "applications[0].version": "ApplicationVersion",
    "container_image_url": "Parameters.IMAGE_URL", "cpus": "Resources.CPUs",
    "memory_mib": "Resources.Memory", "disk_gib": "Resources.Disk",
    "runtime_s": "Resources.Runtime",
}


def requirement_sources(job: JobDescription) -> dict[str, str]:
    """:data:`REQUIREMENT_SOURCES` with the sizes named by the keys this job gave
    (``Resources.TotalCPUs`` rather than ``Resources.CPUs``)."""
    res = job.raw.get("Resources")
    res = res if isinstance(res, dict) else {}
    cpu_keys = ("CPUsPerNode", *CPU_KEYS) if (job.nodes or 1) > 1 else CPU_KEYS
    given = {name: next((f"Resources.{key}" for key in keys if key in res), None)
             for name, keys in (("cpus", cpu_keys), ("memory_mib", MEMORY_KEYS))}
    return REQUIREMENT_SOURCES | {name: key for name, key in given.items() if key}


def _requirements(job: JobDescription, res: dict[str, Any]) -> Requirements:
    """The image requirements of a job whose run and Resources are parsed (``res`` checked
    by :func:`_resources`), read by image_repo now."""
    def text(key: str) -> str:
        return _str(f"Resources.{key}", res[key]) if key in res else ""

    doc: dict[str, Any] = {
        name: value for name, key in (("image", "Image"), ("architecture", "CPUArchitecture"),
                                      ("vo", "VO")) if (value := text(key))}
    os = {name: value for name, key in (("distro", "OperatingSystem"),
                                        ("version", "OperatingSystemVersion"))
          if (value := text(key))}
    if os:
        doc["os"] = os
    if job.application == "CONTAINER":
        doc["container_image_url"] = job.parameters["IMAGE_URL"]
    elif job.application:
        doc["applications"] = [{"name": job.application}]
        if job.application_version:
            doc["applications"][0]["version"] = job.application_version
    for name, value in (("cpus", job.cpus), ("runtime_s", job.runtime),
                        ("memory_mib", job.memory and -(-job.memory // (1 << 20))),
                        ("disk_gib", job.disk and -(-job.disk // (1 << 30)))):
        if value:
            doc[name] = value
    try:
        return Requirements.from_dict(doc)
    except BadRequest as err:
        where = (err.path or "").removeprefix("requirements.")
        raise JobDescriptionError(REQUIREMENT_SOURCES.get(where, where), err.message) from None


def _entries(name: str, value: Any, keys: set[str]):
    """(path, entry) of a list of objects such as ``Imports``, each checked for its keys."""
    if not isinstance(value, list):
        raise JobDescriptionError(name, "expected a list")
    for i, item in enumerate(value):
        path = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise JobDescriptionError(path, "expected an object")
        _check_keys(f"{path}.", item, keys)
        yield path, item


def _imports(job: JobDescription, imports: Any) -> None:
    for path, item in _entries("Imports", imports, IMPORT_KEYS):
        to = _relative_path(f"{path}.To", _str(f"{path}.To", item.get("To", "")))
        source = item.get("From")
        if "Data" in item and source in (None, "", "inline://dummy", "inline://"):
            if "Credentials" in item:
                raise JobDescriptionError(f"{path}.Credentials", "only for a From URL")
            data = item["Data"]
            if not isinstance(data, str):
                raise JobDescriptionError(f"{path}.Data", "expected a string")
            try:
                content = data.encode()
            except UnicodeEncodeError:
                raise JobDescriptionError(f"{path}.Data", "not valid Unicode (a lone "
                                                          "surrogate)") from None
            mode = None
            if "Permissions" in item:
                mode = _permissions(f"{path}.Permissions", item["Permissions"])
            job.imports.append(InputFile(to=to, data=content, mode=mode))
        elif isinstance(source, str) and source.startswith(IMPORT_SCHEMES):
            if "Data" in item:
                raise JobDescriptionError(f"{path}.Data", "give either From or Data")
            mode = None
            if "Permissions" in item:
                mode = _permissions(f"{path}.Permissions", item["Permissions"])
            job.imports.append(InputFile(to=to, data=None, mode=mode, url=source,
                                         fail_on_error=_bool(f"{path}.FailOnError",
                                                             item.get("FailOnError", True)),
                                         credentials=_credentials(path, item)))
        else:
            raise JobDescriptionError(
                f"{path}.From", f"unsupported source {source!r}: give inline Data, an "
                                "http(s) URL the site allows, this site's URL of a file of "
                                "another of your jobs, or upload the file into the working "
                                "directory")


def _exports(job: JobDescription, exports: Any) -> None:
    for path, item in _entries("Exports", exports, EXPORT_KEYS):
        source = _relative_path(f"{path}.From", _str(f"{path}.From", item.get("From", "")))
        target = _str(f"{path}.To", item.get("To", ""))
        if not target.startswith(("http://", "https://")):
            raise JobDescriptionError(f"{path}.To", f"unsupported target {target!r}: give an "
                                                    "http(s) URL the site allows, or fetch "
                                                    "results from the working directory")
        job.exports.append(OutputFile(source, target, _bool(f"{path}.FailOnError",
                                                            item.get("FailOnError", True)),
                                      _credentials(path, item)))


def _credentials(path: str, item: dict[str, Any]) -> Credentials | None:
    """An entry's ``Credentials`` for an http(s) transfer: Username + Password, or
    BearerToken."""
    if "Credentials" not in item:
        return None
    value, where = item["Credentials"], f"{path}.Credentials"
    if not isinstance(value, dict):
        raise JobDescriptionError(where, "expected an object: {Username, Password} or "
                                         "{BearerToken}")
    _check_keys(f"{where}.", value, {"Username", "Password", "BearerToken"})
    if set(value) == {"BearerToken"}:
        return Credentials(token=_str(f"{where}.BearerToken", value["BearerToken"]))
    if set(value) == {"Username", "Password"}:
        return Credentials(_str(f"{where}.Username", value["Username"]),
                           _str(f"{where}.Password", value["Password"]))
    raise JobDescriptionError(where, "give Username and Password, or BearerToken")


def _permissions(path: str, value: Any) -> int:
    text = _str(path, value)
    if re.fullmatch(r"[0-7]{3,4}", text):
        return int(text, 8)
    if re.fullmatch(r"[r-][w-][x-]", text):
        bits = (4 if text[0] == "r" else 0) | (2 if text[1] == "w" else 0) | (
            1 if text[2] == "x" else 0)
        return bits << 6
    raise JobDescriptionError(path, f"expected an octal mode like 755 or rwx: {value!r}")
