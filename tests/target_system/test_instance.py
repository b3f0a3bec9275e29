"""The instance state machine over the fakes, driven by a Clock: bring-up phases and their
deadlines, the health budget, idle timeout and lease, domain crashes and the reconnect
after a server restart.  No VM boots (tests/e2e boots real ones)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.python.failure import Failure

from base.reasons import Reason
from image_repo.schema import validate
from target_system.instance import (
    Deadlines,
    HealthPolicy,
    ImageToBoot,
    InstanceFailed,
    SiteCredentials,
    TargetSystem,
)
from target_system.jobdesc import parse_job
from target_system.jobs import Job, JobRunner
from target_system.lifecycle import InstanceState, JobState
from target_system.store import instance_snapshot
from tests.fakes.parts import FakeParts
from tests.image_repo.examples import builder_document, variant
from vmm.errors import GuestCrashed, HypervisorError

S = InstanceState
IMAGE = ImageToBoot("img1", "gridvm-debian12-initramfs", validate(builder_document()),
                    {"vmlinuz": Path("/nowhere/vmlinuz"), "initrd.img": Path("/nowhere/initrd")})
DEADLINES = Deadlines(staging=60, booting=30, connecting=20, draining=10)
QUIET = HealthPolicy(interval=15, missed_budget=3, ping_timeout=5, idle_timeout=None)


@pytest.fixture(scope="module")
def credentials(tmp_path_factory) -> SiteCredentials:
    return SiteCredentials.load_or_create(tmp_path_factory.mktemp("ca"))


class Site(FakeParts):
    """The fake parts, and target systems on them."""

    def __init__(self, directory: Path, credentials: SiteCredentials):
        super().__init__(directory / "vms")
        self.credentials = credentials

    def options(self, **overrides) -> dict:
        return {"vmm": self.vms, "credentials": self.credentials, "reactor": self.clock,
                "deadlines": DEADLINES, "health": QUIET, "tsi_connector": self.network,
                **overrides}

    def target(self, instance_id: str = "i1", **overrides) -> TargetSystem:
        return TargetSystem(instance_id=instance_id, owner="alice", image=IMAGE,
                            **self.options(**overrides))

    def ready(self, instance_id: str = "i1", **overrides) -> TargetSystem:
        target = self.target(instance_id, **overrides)
        target.start()
        self.wait(self.vms.boot_seconds)
        assert target.state is S.READY
        return target


@pytest.fixture
def site(tmp_path, credentials) -> Site:
    return Site(tmp_path, credentials)


def outcome(deferred):
    """What a Deferred fired with (a Failure's exception), or AssertionError if it has not."""
    seen = []
    deferred.addBoth(seen.append)
    assert seen, "the Deferred has not fired"
    return seen[0].value if isinstance(seen[0], Failure) else seen[0]


def assert_gone(site: Site, target: TargetSystem) -> None:
    """Nothing of the instance is left: no domain, no agent, the TSI link closed."""
    assert target.instance_id not in site.vms.instances
    assert target.instance_id in site.vms.destroyed
    assert target.tsi is None and all(link.closed for link in site.network.links)


# -- bring-up ----------------------------------------------------------------------------
def test_the_link_to_gridvms_agent_says_submit_makes_the_job_directory(site):
    """gridvm's agent makes USPACE_DIR at SUBMIT (a job with nothing to stage is sent no
    MKDIR first); an image's own TSI only changes into it, so its jobs still get one."""
    assert site.ready().tsi.submit_makes_directory is True
    own = validate(variant(builder_document(), **{
        "tsi.flavour": "unicore", "tsi.start_command": ["/opt/unicore/tsi/bin/tsi"]}))
    target = TargetSystem(instance_id="i2", owner="alice",
                          image=ImageToBoot("img2", "own-tsi", own, IMAGE.paths),
                          **site.options())
    started = target.start()
    assert target.tsi is not None and target.tsi.submit_makes_directory is False
    target.terminate("test over")
    site.wait(1)
    assert isinstance(outcome(started), InstanceFailed)


def test_bring_up_walks_every_phase_to_ready(site):
    site.vms.staging_seconds, site.vms.boot_seconds = 5, 10
    target = site.target()
    seen = []
    target.listeners.append(lambda _target, transition: seen.append(transition.state))
    started = target.start()
    assert target.state is S.STAGING
    site.wait(5)
    assert target.state is S.BOOTING
    site.wait(10)
    assert seen == [S.STAGING, S.BOOTING, S.CONNECTING, S.READY]
    assert outcome(started) is target
    spec, link = site.vms.specs[0], site.network.links[0]
    assert (spec.host_port, spec.callback_port) == (link.port, link.callback_port)
    assert spec.boot_timeout == DEADLINES.staging + DEADLINES.booting
    assert {"tsi/agent.conf", "tsi/agent.pem", "tsi/agent.key"} <= set(spec.context_files)
    assert spec.labels["owner"] == "alice" and target.instance_cert_pem
    assert link.user == "gridvm" and site.agent(target).requests == ["PING"]
    phases = target.lifecycle.phase_seconds()
    assert phases["STAGING"] == 5 and phases["BOOTING"] == 10
    assert target.describe()["domain"] == target.vm.domain


def test_a_boot_past_its_deadline_is_boot_timeout_and_leaves_nothing(site):
    site.vms.boot_seconds = 1000
    target = site.target()
    started = target.start()
    site.wait(DEADLINES.booting - 0.1)
    assert target.state is S.BOOTING
    site.wait(0.2)
    assert (target.state, target.lifecycle.reason) == (S.FAILED, Reason.BOOT_TIMEOUT)
    site.wait(1)
    error = outcome(started)
    assert isinstance(error, InstanceFailed) and error.reason == Reason.BOOT_TIMEOUT
    assert_gone(site, target)


def test_a_boot_timeout_says_what_the_guest_console_showed(site):
    site.vms.boot_seconds = 1000
    target = site.target()
    target.start()
    site.vms.consoles[target.instance_id] = ("[  OK  ] Reached target network.target\n\n"
                                             "         Starting cloud-init.service...\n")
    site.wait(DEADLINES.booting + 1)
    assert (target.state, target.lifecycle.reason) == (S.FAILED, Reason.BOOT_TIMEOUT)
    assert target.lifecycle.message == (
        f"booting took longer than {DEADLINES.booting:g} s; console: [  OK  ] Reached target "
        "network.target | Starting cloud-init.service...")


def test_a_failed_boot_fails_the_instance_with_the_vmms_reason(site):
    site.vms.fail_next_boot(GuestCrashed("Kernel panic - not syncing: VFS"))
    target = site.target()
    started = target.start()
    site.wait(1)
    error = outcome(started)
    assert error.reason == Reason.GUEST_CRASHED and "Kernel panic" in str(error)
    assert target.lifecycle.reason == Reason.GUEST_CRASHED
    assert_gone(site, target)


def test_the_image_refused_before_the_boot_creates_no_vm(site):
    async def refuse():
        raise InstanceFailed(Reason.IMAGE_UNTRUSTED, "no longer endorsed")

    target = site.target(admit=refuse)
    started = target.start()
    site.wait(1)
    assert outcome(started).reason == Reason.IMAGE_UNTRUSTED
    assert target.lifecycle.reason == Reason.IMAGE_UNTRUSTED
    assert site.vms.instances == {} and site.network.agents == {}


def test_an_agent_that_never_answers_is_tsi_unreachable(site):
    site.network.answering = False
    target = site.target()
    started = target.start()
    site.wait(site.vms.boot_seconds)
    assert target.state is S.CONNECTING
    site.wait(DEADLINES.connecting - 0.1)
    assert target.state is S.CONNECTING
    site.wait(0.2)
    assert (target.state, target.lifecycle.reason) == (S.FAILED, Reason.TSI_UNREACHABLE)
    site.wait(1)
    assert outcome(started).reason == Reason.TSI_UNREACHABLE
    assert_gone(site, target)


def test_an_agent_slow_to_answer_is_pinged_until_it_does(site):
    site.network.answering = False
    target = site.target()
    started = target.start()
    site.wait(site.vms.boot_seconds)
    site.wait(12)
    site.agent(target).answer_again()
    site.wait(6)  # the ping in flight times out, the next one is answered
    assert target.state is S.READY and outcome(started) is target
    assert site.agent(target).requests.count("PING") >= 3


# -- health ------------------------------------------------------------------------------
def test_pings_that_are_answered_keep_the_instance_ready(site):
    target = site.ready()
    site.wait(300)
    assert target.state is S.READY
    assert site.agent(target).requests.count("PING") == 21
    assert target.describe()["health"] == {"missedPings": 0, "budget": 3,
                                           "roundTripSeconds": 0.0}  # a fake clock


@pytest_twisted.ensureDeferred
async def test_missed_pings_beyond_the_budget_fail_the_instance_and_its_jobs(site, tmp_path):
    site.network.job_seconds = None  # jobs run until told
    target = site.ready()
    ready_at = target.lifecycle.entered["READY"]
    job = Job(owner="alice", description=parse_job({"Executable": "/bin/sleep",
                                                    "Arguments": ["600"]}),
              reactor=site.clock, storage=tmp_path / "job")
    ran = JobRunner(site.clock).run(job, target)
    await site.run_until(lambda: job.state is JobState.RUNNING, step=0.05)
    assert target.state is S.BUSY
    site.agent(target).stop_answering()
    # pings go out every 15 s from READY and time out after 5 s: the third one from now
    # is the third miss
    third = ready_at + 15 * (int((site.clock.seconds() - ready_at) // 15) + 3) + 5
    site.wait(third - 0.1 - site.clock.seconds())
    assert target.state is S.BUSY and target.describe()["health"]["missedPings"] == 2
    site.wait(0.2)
    assert (target.state, target.lifecycle.reason) == (S.FAILED, Reason.TSI_LOST)
    assert "3 pings in a row failed" in target.lifecycle.message
    await site.run_until(lambda: ran.called)
    assert (job.state, job.lifecycle.reason) == (JobState.FAILED, Reason.TSI_LOST)
    assert not target.jobs and job.finished.called
    assert_gone(site, target)


def test_one_answered_ping_resets_the_count(site):
    target = site.ready()
    agent = site.agent(target)
    agent.stop_answering()
    site.wait(35)  # two pings missed
    assert target.describe()["health"]["missedPings"] == 2
    agent.answer_again()
    site.wait(15)
    assert target.describe()["health"]["missedPings"] == 0 and target.state is S.READY


# -- idle and lease ----------------------------------------------------------------------
def test_an_idle_instance_ends_terminated_and_a_job_defers_that(site):
    target = site.ready(health=HealthPolicy(idle_timeout=600))
    site.wait(599)
    assert target.state is S.READY
    target.claim("j1")
    site.wait(1000)
    assert target.state is S.BUSY
    target.release("j1")  # idle from now
    site.wait(599)
    assert target.state is S.READY
    site.wait(1)
    assert (target.state, target.lifecycle.reason) == (S.TERMINATED, None)
    assert_gone(site, target)


def test_a_pool_instance_is_never_ended_for_being_idle(site):
    target = site.target(health=HealthPolicy(idle_timeout=600))
    target.keep_idle = True
    target.start()
    site.wait(3000)
    assert target.state is S.READY


def test_the_lease_ends_even_a_busy_instance(site):
    target = site.ready(health=HealthPolicy(idle_timeout=None, lease=3600))
    target.claim("j1")
    site.wait(3599)
    assert target.state is S.BUSY
    site.wait(1)
    assert target.state is S.TERMINATED and target.lifecycle.message == "lease expired"
    assert_gone(site, target)


def test_an_instance_whose_vm_cannot_be_destroyed_is_never_terminated(site):
    target = site.ready()
    site.vms.destroy_error = HypervisorError("not connected to qemu:///system")
    outcome(target.terminate("done"))
    assert (target.state, target.lifecycle.reason) == (S.FAILED, Reason.HYPERVISOR_ERROR)
    assert "could not be destroyed" in target.lifecycle.message
    assert target.instance_id in site.vms.instances


# -- domain events -----------------------------------------------------------------------
@pytest.mark.parametrize("phase", [S.CONNECTING, S.READY, S.BUSY])
def test_a_domain_crash_fails_the_instance_with_guest_crashed(site, phase):
    site.network.answering = phase is not S.CONNECTING
    target = site.target()
    started = target.start()
    site.wait(site.vms.boot_seconds)
    if phase is S.BUSY:
        target.claim("j1")
    assert target.state is phase
    site.vms.crash(target.instance_id)
    assert (target.state, target.lifecycle.reason) == (S.FAILED, Reason.GUEST_CRASHED)
    assert "the VM stopped" in target.lifecycle.message
    site.wait(1)
    if phase is S.CONNECTING:
        assert outcome(started).reason == Reason.GUEST_CRASHED
    assert_gone(site, target)


def test_another_instances_crash_leaves_an_instance_alone(site):
    crashed, other = site.ready("i1"), site.ready("i2")
    site.vms.crash(crashed.instance_id)
    site.wait(1)
    assert crashed.state is S.FAILED and other.state is S.READY


def test_a_destroy_we_asked_for_is_no_crash(site):
    target = site.ready()
    outcome(target.terminate("done"))
    assert (target.state, target.lifecycle.reason) == (S.TERMINATED, None)


# -- after a server restart --------------------------------------------------------------
def restored(site: Site, first: TargetSystem, **overrides) -> TargetSystem:
    """``first`` as the next server run takes it back (``first`` detached: its VM runs on)."""
    row = instance_snapshot(first)
    outcome(first.detach())
    return TargetSystem.restore(row, IMAGE, site.vms.instances.get(first.instance_id),
                                **site.options(**overrides))


def test_a_restored_instance_reconnects_on_its_ports_and_is_watched_again(site):
    first = site.ready()
    second = restored(site, first)
    assert outcome(second.reconnect()) is second and second.state is S.READY
    link = site.network.links[-1]
    assert (link.port, link.callback_port) == (first.vm.host_port, first.vm.callback_port)
    site.wait(15)
    assert site.agent(second).requests.count("PING") == 3  # bring-up, reconnect, health
    site.vms.crash(second.instance_id)
    assert second.lifecycle.reason == Reason.GUEST_CRASHED


def test_a_restored_instance_whose_agent_is_silent_is_tsi_unreachable(site):
    first = site.ready()
    site.agent(first).stop_answering()
    second = restored(site, first)
    reconnected = second.reconnect()
    site.wait(DEADLINES.connecting - 0.1)
    assert not reconnected.called and second.state is S.READY
    site.wait(10)
    assert outcome(reconnected) is second
    assert (second.state, second.lifecycle.reason) == (S.FAILED, Reason.TSI_UNREACHABLE)
    assert_gone(site, second)


def test_a_restored_instance_whose_domain_vanished_is_guest_crashed(site):
    first = site.ready()
    row = instance_snapshot(first)
    outcome(first.detach())
    site.vms.crash(first.instance_id)
    second = TargetSystem.restore(row, IMAGE, None, **site.options())
    outcome(second.reconnect())
    assert (second.state, second.lifecycle.reason) == (S.FAILED, Reason.GUEST_CRASHED)
