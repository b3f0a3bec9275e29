"""Which contextualization an image takes, and the medium and deadlines that follow.

``gridvm`` images start gridvm's agent from their own files and read its configuration from
the medium; ``cloud-init`` images (any standard cloud image with cloud-init and python3) get
a NoCloud medium that creates the job user and starts the agent the medium carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tsi_bridge.nocloud import nocloud_files

GRIDVM = "gridvm"
CLOUD_INIT = "cloud-init"


def contextualization(metadata: Mapping[str, Any]) -> str:
    """``gridvm`` (the default) or ``cloud-init``, from the metadata's ``tsi`` group."""
    return (metadata.get("tsi") or {}).get("contextualization") or GRIDVM


def medium_files(metadata: Mapping[str, Any], instance_id: str, agent_files: dict[str, bytes],
                 *, job_user: str, job_group: str | None, workdir_root: str
                 ) -> dict[str, bytes]:
    """The files of the instance's medium: the agent's configuration as it is for gridvm's
    own images, wrapped in NoCloud's meta-data/user-data/network-config for cloud-init."""
    if contextualization(metadata) != CLOUD_INIT:
        return agent_files
    return nocloud_files(instance_id, agent_files, job_user=job_user, job_group=job_group,
                         workdir_root=workdir_root)


def image_deadlines(deadlines, metadata: Mapping[str, Any]):
    """The site's deadlines, with BOOTING stretched to the image's ``tsi.boot_timeout_s``
    when that is longer (cloud-init under software emulation boots slower)."""
    stated = (metadata.get("tsi") or {}).get("boot_timeout_s")
    if stated and stated > deadlines.booting:
        return replace(deadlines, booting=float(stated))
    return deadlines
