"""``--require KEY=VALUE``: short requirement keys mapped onto a UNICORE job description.

| key | goes to |
|---|---|
| ``os`` | ``Resources.OperatingSystem`` |
| ``os_version`` | ``Resources.OperatingSystemVersion`` (``12``, ``>=12``) |
| ``arch`` | ``Resources.CPUArchitecture`` |
| ``cpus`` | ``Resources.CPUs`` |
| ``memory`` | ``Resources.Memory`` (``512M``, ``2G``) |
| ``disk`` | ``Resources.Disk`` |
| ``runtime`` | ``Resources.Runtime`` (``600``, ``10min``, ``2h``) |
| ``image`` | ``Resources.Image`` (name, ``name:version`` or id) |
| ``vo`` | ``Resources.VO`` |
| ``app`` | ``ApplicationName`` and, after a colon, ``ApplicationVersion`` |

A value given on the command line replaces the one in the job file.
"""

from __future__ import annotations

import copy
from typing import Any

from base.reasons import Reason
from client.errors import EXIT_USAGE, CliError

RESOURCE_KEYS = {
    "os": "OperatingSystem",
    "os_version": "OperatingSystemVersion",
    "arch": "CPUArchitecture",
    "cpus": "CPUs",
    "memory": "Memory",
    "disk": "Disk",
    "runtime": "Runtime",
    "image": "Image",
    "vo": "VO",
}
KEYS = (*RESOURCE_KEYS, "app")
#: Other names of the same resource, removed so that they cannot contradict the new value.
ALIASES = {"CPUs": ("TotalCPUs", "CPUsPerNode"), "Memory": ("MemoryPerNode",)}


def parse_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip().lower().replace("-", "_")
    if not sep or not key or not value.strip():
        raise CliError(f"--require {text!r}: expected KEY=VALUE (keys: {', '.join(KEYS)})",
                       EXIT_USAGE, reason=Reason.BAD_REQUEST)
    if key not in KEYS:
        raise CliError(f"--require {text!r}: unknown key {key!r} (keys: {', '.join(KEYS)})",
                       EXIT_USAGE, reason=Reason.BAD_REQUEST)
    return key, value.strip()


def apply_requirements(description: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """A copy of ``description`` with the ``KEY=VALUE`` requirements applied."""
    result = copy.deepcopy(description)
    for text in pairs:
        key, value = parse_pair(text)
        if key == "app":
            name, _, version = value.partition(":")
            result["ApplicationName"] = name
            if version:
                result["ApplicationVersion"] = version
            else:
                result.pop("ApplicationVersion", None)
            continue
        resources = result.get("Resources")
        if resources is None:
            resources = result["Resources"] = {}
        if not isinstance(resources, dict):
            raise CliError("the job's Resources is not an object", EXIT_USAGE,
                           reason=Reason.BAD_REQUEST)
        name = RESOURCE_KEYS[key]
        for alias in ALIASES.get(name, ()):
            resources.pop(alias, None)
        resources[name] = _number(value) if key == "cpus" else value
    return result


def _number(value: str) -> int | str:
    return int(value) if value.isdigit() else value
