"""Cloud images in the target system: boot mode, contextualization medium, deadlines."""

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from base.errors import GridvmError
from base.reasons import Reason
from image_repo.schema import validate
from target_system.contextualization import image_deadlines, medium_files
from target_system.images import boot_spec
from target_system.instance import Deadlines
from target_system.lifecycle import InstanceState, instance_lifecycle
from tests.image_repo.examples import builder_document, sha512, variant

KERNEL_DOC = builder_document()
CLOUD_DOC = variant(KERNEL_DOC, **{
    "origin.content_type": "qcow2",
    "origin.content": [{"role": "disk", "file": "disk.qcow2", "sha512": sha512(b"disk"),
                        "size": 4}],
    "origin.boot": {"mode": "bootloader"},
    "tsi.contextualization": "cloud-init", "tsi.boot_timeout_s": 300})
CLOUD_DOC["semantic"]["software"].append({"name": "cloud-init", "version": "22.4.2"})
KERNEL, CLOUD = validate(KERNEL_DOC), validate(CLOUD_DOC)
AGENT_FILES = {"tsi/agent.conf": b"{}", "tsi/agent.key": b"KEY"}


def test_a_bootloader_image_boots_its_disk_without_a_kernel():
    spec = boot_spec(CLOUD, {"disk.qcow2": Path("/s/disk.qcow2")})
    assert spec.kernel is None and spec.initrd is None
    assert spec.disk.path == Path("/s/disk.qcow2") and spec.disk_format == "qcow2"


def test_a_kernel_image_keeps_direct_kernel_boot():
    spec = boot_spec(KERNEL, {"vmlinuz": Path("/s/k"), "initrd.img": Path("/s/i")})
    assert spec.kernel.path == Path("/s/k") and spec.cmdline.startswith("console=ttyS0")


@pytest.mark.parametrize(("metadata", "paths", "needed"), [
    (KERNEL, {"initrd.img": Path("/s/i")}, "'kernel'"),
    (CLOUD, {}, "'disk'"),
])
def test_a_missing_boot_file_is_a_clear_error_not_a_key_error(metadata, paths, needed):
    with pytest.raises(GridvmError) as err:
        boot_spec(metadata, paths)
    assert err.value.reason == Reason.IMAGE_UNAVAILABLE
    assert needed in str(err.value)


def test_a_cloud_init_image_gets_a_nocloud_medium_around_the_agent_files():
    files = medium_files(CLOUD, "abc", AGENT_FILES, job_user="gridvm", job_group=None,
                         workdir_root="/home/gridvm/jobs")
    assert {"meta-data", "user-data", "network-config"} <= set(files)
    assert files["tsi/agent.key"] == b"KEY"
    assert b'"instance-id": "abc"' in files["meta-data"]
    assert medium_files(KERNEL, "abc", AGENT_FILES, job_user="gridvm", job_group=None,
                        workdir_root="/w") == AGENT_FILES


def test_the_image_can_stretch_the_boot_deadline_but_not_shorten_it():
    site = Deadlines(booting=120)
    assert image_deadlines(site, CLOUD).booting == 300
    assert image_deadlines(Deadlines(booting=600), CLOUD).booting == 600
    assert image_deadlines(site, KERNEL) is site


def test_a_passed_deadline_says_what_the_console_showed():
    clock = Clock()
    life = instance_lifecycle(clock, {InstanceState.BOOTING: 10})
    life.timeout_detail = lambda state: f"console: {state.name} stuck at 'Booting from ROM'"
    life.advance(InstanceState.STAGING)
    life.advance(InstanceState.BOOTING)
    clock.advance(10)
    assert life.state is InstanceState.FAILED
    assert life.reason == Reason.BOOT_TIMEOUT
    assert life.message == ("booting took longer than 10 s; console: BOOTING stuck at "
                            "'Booting from ROM'")


# -- an image with its own TSI (tsi.flavour unicore) ------------------------------------------

OWN_TSI = {"tsi.flavour": "unicore",
           "tsi.start_command": ["/opt/unicore/tsi/bin/tsi", "--foreground"],
           "tsi.property_keys": {"my_port": "tsi.listen_port"}}


def credentials():
    from tsi_bridge.ca import CertificateAuthority

    ca = CertificateAuthority.create()
    return ca, ca.issue_server(), ca.issue_instance("abc")


def test_an_image_with_its_own_tsi_gets_properties_and_a_start_script_not_agent_conf():
    from target_system.contextualization import tsi_files

    ca, server, issued = credentials()
    own = validate(variant(KERNEL_DOC, **OWN_TSI))
    files = tsi_files(own, ca, server, issued, callback_port=40001, listen_port=4433,
                      job_user="gridvm", job_group=None, workdir_root="/w")
    assert "tsi/agent.conf" not in files
    assert files["tsi/tsi.key"] == issued.key_pem  # .key: root-only on the medium
    props = files["tsi/tsi.properties"].decode().splitlines()
    assert "tsi.listen_port=4433" in props and "tsi.unicorex_port=40001" in props
    assert files["tsi/start"].decode().splitlines()[-1] == (
        "exec /opt/unicore/tsi/bin/tsi --foreground /run/gridvm/ctx/tsi/tsi.properties")
    gridvm = tsi_files(KERNEL, ca, server, issued, callback_port=40001, listen_port=4433,
                       job_user="gridvm", job_group=None, workdir_root="/w")
    assert "tsi/agent.conf" in gridvm and "tsi/start" not in gridvm


def test_a_cloud_init_image_with_its_own_tsi_runs_the_start_script_from_its_unit():
    doc = variant(CLOUD_DOC, **OWN_TSI)
    files = medium_files(validate(doc), "abc", AGENT_FILES, job_user="gridvm",
                         job_group=None, workdir_root="/w")
    user_data = files["user-data"].decode()
    assert "/bin/sh /run/gridvm/ctx/tsi/start" in user_data
    assert "tsi_bridge.agent" not in user_data


@pytest.mark.parametrize(("changes", "where", "message"), [
    ({"tsi.flavour": "unicore"}, "tsi.start_command", "needs the command"),
    ({"tsi.start_command": ["/bin/tsi"]}, "tsi.start_command", "only for flavour 'unicore'"),
    ({**OWN_TSI, "tsi.start_command": ["tsi"]}, "tsi.start_command", "absolute path"),
    ({**OWN_TSI, "tsi.start_command": ["/bin/x"] * 33}, "tsi.start_command", "1 to 32"),
    ({**OWN_TSI, "tsi.property_keys": {"port": "tsi.my_port"}}, "tsi.property_keys",
     "unknown setting 'port'"),
    ({**OWN_TSI, "tsi.property_keys": {"my_port": "a=b"}}, "tsi.property_keys",
     "not a property key"),
    ({**OWN_TSI, "tsi.tls_required": False}, "tsi.tls_required", "mutual TLS"),
    ({**OWN_TSI, "tsi.properties_file": "etc/tsi.properties"}, "tsi.properties_file",
     "absolute path"),
])
def test_own_tsi_metadata_is_checked_naming_the_key(changes, where, message):
    from image_repo.errors import BadRequest

    with pytest.raises(BadRequest) as err:
        validate(variant(KERNEL_DOC, **changes))
    assert err.value.path == where and message in str(err.value)
