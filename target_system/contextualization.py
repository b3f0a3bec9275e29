"""Which contextualization and TSI an image takes, and the medium and deadlines that follow.

``gridvm`` images start gridvm's agent from their own files and read its configuration from
the medium; ``cloud-init`` images (any standard cloud image with cloud-init and python3) get
a NoCloud medium that creates the job user and starts the agent the medium carries.  An image
with a TSI of its own (``tsi.flavour`` ``unicore``) gets an official-style ``tsi.properties``
and a start script that runs its ``tsi.start_command`` instead of gridvm's agent.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from image_repo.schema import ImageMetadata
from tsi_bridge.ca import CertificateAuthority, IssuedCertificate
from tsi_bridge.context import agent_context_files, unicore_tsi_files
from tsi_bridge.nocloud import nocloud_files

if TYPE_CHECKING:
    from target_system.instance import Deadlines

GRIDVM = "gridvm"
CLOUD_INIT = "cloud-init"
UNICORE = "unicore"  #: tsi.flavour of an image that brings its own TSI
START_SCRIPT = "tsi/start"


def contextualization(metadata: ImageMetadata | None) -> str:
    """``gridvm`` (the default) or ``cloud-init``, from the metadata's ``tsi`` group."""
    tsi = metadata.tsi if metadata is not None else None
    return (tsi.contextualization if tsi is not None else None) or GRIDVM


def tsi_flavour(metadata: ImageMetadata | None) -> str:
    """``gridvm`` (gridvm's agent, the default) or ``unicore`` (the image's own TSI)."""
    tsi = metadata.tsi if metadata is not None else None
    return (tsi.flavour if tsi is not None else None) or GRIDVM


def tsi_files(metadata: ImageMetadata | None, ca: CertificateAuthority,
              server: IssuedCertificate, issued: IssuedCertificate, *, callback_port: int,
              listen_port: int, job_user: str, job_group: str | None,
              workdir_root: str) -> dict[str, bytes]:
    """The TSI's files for the medium, with the instance's certificate ``issued``:
    gridvm's agent.conf, or for an image's own TSI its tsi.properties and start script."""
    if tsi_flavour(metadata) == UNICORE:
        assert metadata is not None and metadata.tsi is not None
        tsi = metadata.tsi
        return unicore_tsi_files(
            agent_cert_pem=issued.cert_pem, agent_key_pem=issued.key_pem, ca_pem=ca.cert_pem,
            server_cert_pem=server.cert_pem, callback_port=callback_port,
            listen_port=listen_port, start_command=list(tsi.start_command),
            properties_file=tsi.properties_file, property_keys=dict(tsi.property_keys))
    return agent_context_files(agent_cert_pem=issued.cert_pem, agent_key_pem=issued.key_pem,
                               ca_pem=ca.cert_pem, server_cert_pem=server.cert_pem,
                               job_user=job_user, job_group=job_group,
                               workdir_root=workdir_root, listen_port=listen_port)


def medium_files(metadata: ImageMetadata | None, instance_id: str,
                 agent_files: dict[str, bytes], *, job_user: str, job_group: str | None,
                 workdir_root: str) -> dict[str, bytes]:
    """The files of the instance's medium: the TSI's files as they are for gridvm's own
    images, wrapped in NoCloud's meta-data/user-data/network-config for cloud-init."""
    if contextualization(metadata) != CLOUD_INIT:
        return agent_files
    start = START_SCRIPT if tsi_flavour(metadata) == UNICORE else None
    return nocloud_files(instance_id, agent_files, job_user=job_user, job_group=job_group,
                         workdir_root=workdir_root, start_script=start)


def restorable(metadata: ImageMetadata | None) -> bool:
    """Whether an instance of the image may be restored from a memory snapshot: gridvm's
    agent from the image's own files takes its identity after the restore (a cloud-init
    image or an image's own TSI reads its medium at boot)."""
    return contextualization(metadata) == GRIDVM and tsi_flavour(metadata) == GRIDVM


def image_deadlines(deadlines: Deadlines, metadata: ImageMetadata | None) -> Deadlines:
    """The site's deadlines, with BOOTING stretched to the image's ``tsi.boot_timeout_s``
    when that is longer (cloud-init under software emulation boots slower)."""
    tsi = metadata.tsi if metadata is not None else None
    stated = tsi.boot_timeout_s if tsi is not None else None
    if stated and stated > deadlines.booting:
        return replace(deadlines, booting=float(stated))
    return deadlines
