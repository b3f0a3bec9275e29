"""Which contextualization an image takes, and the medium and deadlines that follow.

``gridvm`` images start gridvm's agent from their own files and read its configuration from
the medium; ``cloud-init`` images (any standard cloud image with cloud-init and python3) get
a NoCloud medium that creates the job user and starts the agent the medium carries.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from image_repo.schema import ImageMetadata
from tsi_bridge.nocloud import nocloud_files

if TYPE_CHECKING:
    from target_system.instance import Deadlines

GRIDVM = "gridvm"
CLOUD_INIT = "cloud-init"


def contextualization(metadata: ImageMetadata | None) -> str:
    """``gridvm`` (the default) or ``cloud-init``, from the metadata's ``tsi`` group."""
    tsi = metadata.tsi if metadata is not None else None
    return (tsi.contextualization if tsi is not None else None) or GRIDVM


def medium_files(metadata: ImageMetadata | None, instance_id: str,
                 agent_files: dict[str, bytes], *, job_user: str, job_group: str | None,
                 workdir_root: str) -> dict[str, bytes]:
    """The files of the instance's medium: the agent's configuration as it is for gridvm's
    own images, wrapped in NoCloud's meta-data/user-data/network-config for cloud-init."""
    if contextualization(metadata) != CLOUD_INIT:
        return agent_files
    return nocloud_files(instance_id, agent_files, job_user=job_user, job_group=job_group,
                         workdir_root=workdir_root)


def image_deadlines(deadlines: Deadlines, metadata: ImageMetadata | None) -> Deadlines:
    """The site's deadlines, with BOOTING stretched to the image's ``tsi.boot_timeout_s``
    when that is longer (cloud-init under software emulation boots slower)."""
    tsi = metadata.tsi if metadata is not None else None
    stated = tsi.boot_timeout_s if tsi is not None else None
    if stated and stated > deadlines.booting:
        return replace(deadlines, booting=float(stated))
    return deadlines
