"""Jobs, the UNICORE way, run through the TSI inside a target system.

READY → STAGINGIN (the job directory in the guest, inline imports, uploaded inputs) → QUEUED
(TSI SUBMIT) → RUNNING (status listing polled; ``Runtime`` enforced) → STAGINGOUT (exit code,
stdout, stderr and every file of the job directory copied to site storage, so they outlive
the VM) → SUCCESSFUL, or FAILED with a reason: ``NONZERO_EXIT``, ``RUNTIME_EXCEEDED``,
``JOB_ABORTED``, ``STAGING_FAILED``, ``TSI_LOST``, ``GUEST_CRASHED`` …
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import posixpath
import shlex
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads
from twisted.python import failure

from base.reasons import Reason
from image_repo.matching import find_application
from image_repo.schema import ImageMetadata
from target_system.containers import (
    FAILURE_FILE,
    SETUP_FAILED,
    StagedContainer,
    guest_paths,
    launcher_argv,
    runtime_executable,
    stage_container,
)
from target_system.instance import InstanceFailed, TargetSystem
from target_system.jobdesc import JobDescription, JobDescriptionError
from target_system.lifecycle import JobState, Lifecycle, Transition, job_lifecycle
from target_system.nodes import CLUSTER_DIR
from target_system.stageout import StageOutResult, stage_out
from target_system.transfers import (
    TransferFailed,
    TransferPolicy,
    transfer_failed,
    upload_file,
)
from tsi_bridge import protocol
from tsi_bridge.errors import TSICommandFailed, TSIConnectionLost, TSIError, TSIUnreachable

log = logging.getLogger(__name__)

J = JobState
EXIT_CODE_FILE = "UNICORE_SCRIPT_EXIT_CODE"
#: Seconds the job may run past its Runtime before gridvm aborts it (the agent's own limit
#: fires first; this is the backstop).
RUNTIME_GRACE = 30.0
#: Seconds before the first status poll of a running job; the pause doubles up to the
#: runner's ``poll_interval``, so short jobs are seen finished soon and long ones cost little.
FIRST_POLL = 0.05
#: Notes about single files a stage-out could not keep that go into the job's log.
MAX_NOTES = 50
#: An instance whose job directories have less space free is retired after a job.
MIN_FREE_SPACE = 16 * 1024 * 1024


@dataclass
class Job:
    """One job: its description, state machine, and what it produced."""

    owner: str
    description: JobDescription
    reactor: Any
    storage: Path  #: site storage for the job's files (outlives the VM)
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    submitted: float = field(default_factory=time.time)
    lifecycle: Lifecycle = None  # type: ignore[assignment]
    instance_id: str | None = None
    image: str | None = None
    bssid: str | None = None
    workdir: str | None = None  #: the job directory in the guest
    exit_code: int | None = None
    ended_by: str | None = None  #: the agent's reason when it ended the job itself
    exit_problem: str | None = None  #: why there is no exit code, when that is known
    kept: bool = False  #: its files are in site storage and gone from the guest
    log: list[str] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)  #: why-not per image (no match)
    site_id: str | None = None  #: the UNICORE site (``/sites/{id}``) it was submitted to
    termination: float | None = None  #: epoch seconds after which the site destroys it
    finished: defer.Deferred = field(default_factory=defer.Deferred)

    def __post_init__(self) -> None:
        if self.lifecycle is None:
            deadlines = {J.STAGINGIN: 600.0, J.STAGINGOUT: 600.0, J.QUEUED: 120.0}
            if self.description.runtime:
                deadlines[J.RUNNING] = self.description.runtime + RUNTIME_GRACE
            self.lifecycle = job_lifecycle(self.reactor, deadlines)
        self.lifecycle.listeners.append(self._on_transition)

    @property
    def state(self) -> JobState:
        return self.lifecycle.state

    @property
    def inputs_dir(self) -> Path:
        """Files uploaded before the start: in site storage (``<root>/inputs/<id>`` beside
        ``<root>/jobs/<id>``), so a server restart keeps them; staged at STAGINGIN and kept
        for a restart of the job."""
        return self.storage.parent.parent / "inputs" / self.job_id

    def input_files(self) -> tuple[list[str], list[tuple[str, Path]]]:
        """The uploaded inputs: directories and (relative POSIX name, local path) of
        files, parents first; symbolic links and half-written ``.part`` files left out."""
        directories: list[str] = []
        files: list[tuple[str, Path]] = []
        if not self.inputs_dir.is_dir():
            return directories, files
        for parent, dirs, names in os.walk(self.inputs_dir):
            dirs.sort()
            here = Path(parent)
            rel = here.relative_to(self.inputs_dir).as_posix()
            if rel != ".":
                directories.append(rel)
            for name in sorted(names):
                path = here / name
                if path.is_symlink() or not path.is_file() or name.endswith(".part"):
                    continue
                files.append((name if rel == "." else f"{rel}/{name}", path))
        return directories, files

    @property
    def status_message(self) -> str:
        if self.lifecycle.reason:
            return f"{self.lifecycle.reason}: {self.lifecycle.message}"
        return self.lifecycle.message

    def note(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self.log.append(f"{stamp} {message}")

    def fail(self, reason: str, message: str) -> None:
        self.lifecycle.fail(reason, message)

    def _on_transition(self, transition: Transition) -> None:
        self.note(f"{transition.state.name}" + (
            f" ({transition.reason}: {transition.message})" if transition.reason
            else f": {transition.message}" if transition.message else ""))

    @classmethod
    def restore(cls, row: Mapping[str, Any], reactor) -> Job:
        """A job as saved by ``target_system.store`` (after a server restart)."""
        from target_system.jobdesc import parse_job

        job = cls(owner=row["owner"], description=parse_job(row["description"]),
                  reactor=reactor, storage=Path(row["storage"]), job_id=row["id"],
                  submitted=row["submitted"], instance_id=row["instance_id"],
                  image=row["image"], bssid=row["bssid"], workdir=row["workdir"],
                  exit_code=row["exit_code"], ended_by=row["ended_by"], log=list(row["log"]),
                  rejections=list(row["rejections"]), site_id=row.get("site_id"),
                  termination=row.get("termination"))
        job.lifecycle.restore(J[row["state"]], row["history"], row["reason"], row["message"])
        return job

    def settle(self) -> None:
        """Fire :attr:`finished`: the job is terminal and nothing works on it any more
        (its files are in site storage, its target system released)."""
        if self.state.terminal and not self.finished.called:
            self.finished.callback(self)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.job_id, "owner": self.owner, "status": self.state.name,
            "statusMessage": self.status_message, "reason": self.lifecycle.reason,
            "exitCode": None if self.exit_code is None else str(self.exit_code),
            "instance": self.instance_id, "image": self.image, "bssid": self.bssid,
            "name": self.description.name, "tags": list(self.description.tags),
            "submitted": self.submitted, "termination": self.termination,
            "log": list(self.log),
            "phases": {k: round(v, 3) for k, v in self.lifecycle.phase_seconds().items()},
        }


def resolve_application(job: JobDescription, metadata: ImageMetadata | None
                        ) -> tuple[str, list[str], dict[str, str]]:
    """The command line and environment of a job, its application looked up in the image's
    IDB by :func:`~image_repo.matching.find_application`, the lookup matching used (an
    image that lists no applications runs the application by its name, as it matched)."""
    if job.application == "CONTAINER":
        command = job.parameters.get("COMMAND") or job.executable
        if not command:
            raise JobDescriptionError("Parameters.COMMAND", "a CONTAINER job needs a COMMAND")
        return command, list(job.arguments), {}
    wanted = job.wanted_application
    if wanted is not None:
        if metadata is not None and not metadata.idb.applications:
            return job.executable or wanted.name, list(job.arguments), {}
        app = find_application(metadata, wanted.name, wanted.constraint) if metadata else None
        if app is None:
            version = f" {wanted.version}" if wanted.version else ""
            raise JobDescriptionError("ApplicationName",
                                      f"{wanted.name}{version} is not in the image's IDB")
        executable = job.executable or app.executable or app.name
        return executable, [*app.arguments, *job.arguments], dict(app.environment)
    assert job.executable
    return job.executable, list(job.arguments), {}


def shell_word(value: str) -> str:
    """``value`` as one bash word on one line: a value with line breaks in ANSI-C quotes
    (``$'...'``), so no line of the script comes from it (a line ``#TSI_PING`` in an
    argument must stay an argument, also for the official TSI, which reads the whole
    message for its command)."""
    if "\n" not in value and "\r" not in value:
        return shlex.quote(value)
    escaped = "".join(
        {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r"}.get(char, char)
        for char in value)
    return f"$'{escaped}'"


def container_command(job: JobDescription, workdir: str, staged: StagedContainer,
                      site_environment: dict[str, str] | None = None) -> list[str]:
    """A CONTAINER job's command in its container: COMMAND by the container's shell, the
    job's Arguments as its positional parameters.  On a cluster node (a ``site_environment``)
    the container also gets the node variables, the peer files and /etc/hosts."""
    assert job.container is not None
    command, arguments, _env = resolve_application(job, None)
    names = sorted({"UC_WORKING_DIRECTORY", "UC_OUTPUT_DIRECTORY", *job.parameters,
                    *job.environment, *(site_environment or {})})
    binds = (CLUSTER_DIR, "/etc/hosts") if site_environment else ()
    return launcher_argv(staged, job.container, workdir=workdir,
                         command=["/bin/sh", "-c", f'{command} "$@"', "sh", *arguments],
                         env_names=names, cpus=job.cpus,
                         memory_mib=job.memory and -(-job.memory // (1 << 20)), binds=binds)


def job_script(job: JobDescription, workdir: str, metadata: ImageMetadata | None,
               staged: StagedContainer | None = None,
               site_environment: dict[str, str] | None = None) -> str:
    """The user script UNICORE/X would send: environment, cd, the command, exit code (a
    registered container's command through the launcher, ``staged``; ``site_environment``:
    what the site sets, e.g. a cluster's node list — the job's own variables win)."""
    if staged is not None:
        executable, *arguments = container_command(job, workdir, staged, site_environment)
        app_env: dict[str, str] = {}
    else:
        executable, arguments, app_env = resolve_application(job, metadata)
    q = shell_word
    lines = [
        f"UC_WORKING_DIRECTORY={q(workdir)}; export UC_WORKING_DIRECTORY",
        f"UC_OUTPUT_DIRECTORY={q(workdir)}; export UC_OUTPUT_DIRECTORY",
        "cd \"$UC_WORKING_DIRECTORY\" || exit 1",
        # an earlier exit code removed; the test (a shell builtin) spares a fresh job
        # directory the exec of rm, which costs ~50 ms in an emulated guest
        f"if [ -e \"$UC_OUTPUT_DIRECTORY/{EXIT_CODE_FILE}\" ] || "
        f"[ -L \"$UC_OUTPUT_DIRECTORY/{EXIT_CODE_FILE}\" ]; then "
        f"rm -f \"$UC_OUTPUT_DIRECTORY/{EXIT_CODE_FILE}\"; fi",
    ]
    for name, value in {**(site_environment or {}), **app_env, **job.parameters,
                        **job.environment}.items():
        lines.append(f"{name}={q(value)}; export {name}")
    if job.precommand:
        lines.append(job.precommand)
    command = " ".join([q(executable) if staged else executable, *(q(a) for a in arguments)])
    if job.stdin:
        command += f" < {q(job.stdin)}"
    lines.append(command)
    lines.append(f"echo $? > \"$UC_OUTPUT_DIRECTORY/{EXIT_CODE_FILE}\"")
    if job.postcommand:
        lines.append(job.postcommand)
    return "\n".join(lines) + "\n"


#: TSI failures that may pass (the agent restarting): idempotent calls are retried while the
#: instance stays usable; its health check decides when the instance is lost.
TRANSIENT = (TSIConnectionLost, TSIUnreachable)


def kept_exit_code(storage: Path) -> int | None:
    """Blocking: the exit code in the site-storage copy of the job directory; None when
    the copy has no such regular file or it holds no number (then the guest's is read)."""
    path = storage / EXIT_CODE_FILE
    try:
        if path.is_symlink() or not path.is_file():
            return None
        with path.open("rb") as handle:
            return int(handle.read(64).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


class JobRunner:
    """Runs jobs on target systems and keeps their outputs in site storage."""

    def __init__(self, reactor, poll_interval: float = 1.0, exit_code_grace: float = 30.0,
                 transient_limit: float = 120.0):
        self.reactor = reactor
        self.poll_interval = poll_interval
        self._listing_waiters: dict[str, list[defer.Deferred]] = {}
        #: orders the start of each job's monitoring and the sending of each listing request
        self._sequence = itertools.count()
        self.exit_code_grace = exit_code_grace
        self.transient_limit = transient_limit
        self.transfers = TransferPolicy()  #: where Exports may go (the factory sets it)
        self.min_free_space = MIN_FREE_SPACE  #: bytes an instance keeps free to be reused

    async def _retrying(self, job: Job, target: TargetSystem, what: str, call):
        """``await call()``, retried on transient TSI failures (for idempotent calls)."""
        started = self.reactor.seconds()
        noted = False
        while True:
            try:
                return await call()
            except TRANSIENT as err:
                if (not target.usable or target.detached
                        or self.reactor.seconds() - started >= self.transient_limit):
                    raise
                if not noted:
                    job.note(f"{what}: the TSI is not answering ({err}); retrying")
                    noted = True
                await task.deferLater(self.reactor, 1.0, lambda: None)

    def run(self, job: Job, target: TargetSystem) -> defer.Deferred:
        """Fires with the job once it is SUCCESSFUL or FAILED (never errbacks)."""
        return defer.Deferred.fromCoroutine(self._run(job, target))

    async def _run(self, job: Job, target: TargetSystem) -> Job:
        job.instance_id, job.image = target.instance_id, target.image.name

        def instance_changed(_target: TargetSystem, transition: Transition) -> None:
            if transition.state.name == "FAILED":
                job.fail(transition.reason or Reason.TSI_LOST,
                         f"the target system failed: {transition.message}")

        target.listeners.append(instance_changed)
        try:
            target.claim(job.job_id)
            # Each step starts from wherever the job is: a job resumed after a restart
            # picks up where it was.
            if job.state in (J.READY, J.STAGINGIN) and not await self._submit_at_once(
                    job, target):
                await self._stage_in(job, target)
            if job.state in (J.STAGINGIN, J.QUEUED) and not job.bssid:
                await self._submit(job, target)
            if job.state in (J.QUEUED, J.RUNNING) and job.bssid:
                await self._monitor(job, target)
        except Exception as err:
            if target.detached:  # the server is stopping: the job goes on in the VM
                return job
            if isinstance(err, InstanceFailed):
                job.fail(err.reason, str(err))
            elif isinstance(err, TSIConnectionLost):
                job.fail(Reason.TSI_LOST, str(err))
            elif isinstance(err, TSIError):
                job.fail(err.reason or Reason.TSI_ERROR, str(err))
            elif isinstance(err, JobDescriptionError):
                job.fail(Reason.BAD_REQUEST, str(err))
            else:  # never leave a job in a live state
                log.exception("job %s", job.job_id)
                job.fail(Reason.TSI_ERROR, f"{type(err).__name__}: {err}")
        finally:
            if not target.detached:
                await self._wind_up(job, target, instance_changed)
        return job

    async def _wind_up(self, job: Job, target: TargetSystem, listener) -> None:
        """Keep the job's files, free its slot, settle its final state."""
        space = None  # the guest's free space once the stage-out removed the directory
        if target.usable and job.workdir and job.state in (J.STAGINGOUT, J.FAILED):
            space = await self._stage_out(job, target)
        if target.usable and job.workdir:  # housekeeping before the instance is reused
            if space is None and job.kept:
                space = await self._remove_workdir(job, target)
            await self._check_room(job, target, space)
        target.listeners.remove(listener)
        target.release(job.job_id)
        if job.state is J.STAGINGOUT:  # SUCCESSFUL only once its slot is free: a client's
            self._finish(job)  # next job then reuses the instance instead of booting one
        job.settle()

    async def _check_room(self, job: Job, target: TargetSystem,
                          space: dict[str, int] | None) -> None:
        """Before the instance can take another job: enough free space, else retired
        (``space``: the DF figures the removal of the job directory answered, if any)."""
        try:
            if not await target.has_room(self.min_free_space, space):
                job.note(f"instance {target.instance_id} retired: {target.retiring}")
        except TSIError as err:
            log.info("free space of %s: %s", target.instance_id, err)

    async def _submit_at_once(self, job: Job, target: TargetSystem) -> bool:
        """A job whose inputs are at most a few small inline imports: its directory made,
        the imports written and the job submitted in one exchange (our agent's
        GRIDVM_SUBMIT); False when the job or the TSI needs the way step by step."""
        tsi = target.tsi
        desc = job.description
        assert tsi is not None
        inline = [item for item in desc.imports if item.data is not None]
        if ("GRIDVM_SUBMIT" in tsi.unsupported or desc.container is not None
                or len(inline) != len(desc.imports)
                or len(inline) > protocol.MAX_INLINE_FILES
                or sum(len(item.data) for item in inline) > protocol.MAX_INLINE_BYTES
                or await threads.deferToThread(job.inputs_dir.exists)):
            return False
        if job.state is J.READY:
            job.lifecycle.advance(J.STAGINGIN)
        job.workdir = posixpath.join(target.settings.workdir_root, job.job_id)
        script = job_script(desc, job.workdir, target.image.metadata, None,
                            target.job_environment)
        files = [(item.to, item.data, item.mode or 0o644) for item in inline]
        try:
            job.bssid = await tsi.submit_with_files(script, files, **self._submit_params(job))
        except ValueError as err:  # refused by the framing (e.g. a line a TSI would misread)
            raise JobDescriptionError("", f"the job script cannot be sent: {err}") from None
        except TSICommandFailed as err:
            if not err.message.startswith("staging in:"):
                raise
            job.fail(Reason.STAGING_FAILED, err.message)
            return True
        if job.bssid is None:  # not our agent: step by step from now on
            return False
        job.note(f"staged {len(files)} file(s) into {job.workdir} and submitted as "
                 f"{job.bssid}")
        if job.state.terminal:  # aborted while submitting
            await self._abort_in_guest(job, target)
        else:
            job.lifecycle.advance(J.QUEUED)
        return True

    @staticmethod
    def _submit_params(job: Job) -> dict[str, Any]:
        """The SUBMIT parameters of ``job`` besides its script."""
        desc = job.description
        return {"uspace_dir": job.workdir, "stdout": desc.stdout, "stderr": desc.stderr,
                "job_name": desc.name if desc.name != "N/A" else "UNICORE_Job",
                "runtime": desc.runtime,
                "memory_mb": desc.memory // (1 << 20) if desc.memory else None,
                "total_processors": desc.cpus}

    async def _stage_in(self, job: Job, target: TargetSystem) -> None:
        tsi = target.tsi
        assert tsi is not None
        if job.state is J.READY:
            job.lifecycle.advance(J.STAGINGIN)
        job.workdir = posixpath.join(target.settings.workdir_root, job.job_id)
        workdir = job.workdir
        directories, files = await threads.deferToThread(job.input_files)

        if not (directories or files or job.description.imports
                or job.description.container) and tsi.submit_makes_directory:
            job.note(f"nothing to stage: {workdir} is made at submit")
            return

        async def stage() -> None:
            await tsi.make_directories(
                [workdir, *(posixpath.join(workdir, name) for name in directories)])
            for item in job.description.imports:
                if item.data is not None:
                    await tsi.write_file(posixpath.join(workdir, item.to), item.data,
                                         mode=item.mode or 0o644)
            for name, path in files:
                await tsi.upload(str(path), posixpath.join(workdir, name))
            modes = [(item.mode, shlex.quote(posixpath.join(workdir, item.to)))
                     for item in job.description.imports
                     if item.url is not None and item.mode is not None]
            if modes:  # fetched imports came with the inputs; their Permissions now
                await tsi.execute_script("; ".join(
                    f"if [ -f {name} ]; then chmod {mode:o} {name}; fi" for mode, name in modes))

        try:
            await self._retrying(job, target, "staging in", stage)
            if job.description.container is not None:
                await self._stage_container(job, target)
        except TSIError as err:
            if isinstance(err, TSIConnectionLost):
                raise
            job.fail(Reason.STAGING_FAILED, f"staging in: {err}")
            return
        staged = sum(item.data is not None for item in job.description.imports) + len(files)
        job.note(f"staged {staged} file(s) into {job.workdir}")

    @staticmethod
    def _staged_container(job: Job, target: TargetSystem) -> StagedContainer | None:
        """Where a registered container's archive and launcher are in ``target``."""
        container = job.description.container
        if container is None:
            return None
        runtime = runtime_executable(target.image.metadata)
        if runtime is None:
            raise InstanceFailed(Reason.CONTAINER_FAILED, f"image {target.image.name} offers "
                                 f"no container runtime for {container.ref}")
        return guest_paths(container, target.settings.workdir_root, runtime)

    async def _stage_container(self, job: Job, target: TargetSystem) -> None:
        container = job.description.container
        staged = self._staged_container(job, target)
        assert container is not None and staged is not None and target.tsi is not None
        tsi = target.tsi
        sent = await self._retrying(job, target, "staging the container",
                                    lambda: stage_container(tsi, staged, container))
        job.note(f"container {container.ref} ({container.size} bytes) "
                 + ("staged into the instance" if sent else "already in the instance"))

    async def _submit(self, job: Job, target: TargetSystem) -> None:
        tsi = target.tsi
        assert tsi is not None and job.workdir
        desc = job.description
        script = job_script(desc, job.workdir, target.image.metadata,
                            self._staged_container(job, target), target.job_environment)
        if job.state is J.STAGINGIN:
            job.lifecycle.advance(J.QUEUED)
        try:
            job.bssid = await tsi.submit(script, **self._submit_params(job))
        except ValueError as err:  # refused by the framing (e.g. a line a TSI would misread)
            raise JobDescriptionError("", f"the job script cannot be sent: {err}") from None
        job.note(f"submitted as {job.bssid}")
        if job.state.terminal:  # aborted while submitting
            await self._abort_in_guest(job, target)

    async def _monitor(self, job: Job, target: TargetSystem) -> None:
        tsi = target.tsi
        assert tsi is not None and job.bssid
        tsi.track(job.bssid)
        if job.state is J.QUEUED:
            job.lifecycle.advance(J.RUNNING)
        delay = FIRST_POLL
        # A listing tells that the job ended only if it was asked for after the job was
        # submitted: one shared request sent earlier may be answered before the submit
        # reached the TSI (another connection) and lacks the job while it still runs.
        since = next(self._sequence)
        while not job.state.terminal and not target.detached:
            listing, pushed, asked = await self._retrying(
                job, target, "status", lambda: self._status_listing(target))
            if job.bssid not in listing and asked > since:
                break
            if not pushed:  # polled: pause before the next listing
                await task.deferLater(self.reactor, delay, lambda: None)
                delay = min(delay * 2, self.poll_interval)
        if target.detached:
            return
        if job.state.terminal:  # runtime exceeded, aborted, or the instance failed
            await self._abort_in_guest(job, target)
            return
        job.lifecycle.advance(J.STAGINGOUT)

    def _status_listing(self, target: TargetSystem) -> defer.Deferred:
        """(the target's status listing, whether it was pushed, the ``_sequence`` number of
        the moment it was asked for).  gridvm's agent answers
        once one of its jobs has ended (or after a poll interval, so that an abort or the
        Runtime limit is acted on); a TSI that only answers GETSTATUSLISTING is polled.
        Jobs that ask while a request is on its way share its answer instead of sending
        their own: one request per target, however many jobs run there."""
        waiter: defer.Deferred = defer.Deferred()
        waiters = self._listing_waiters.setdefault(target.instance_id, [])
        waiters.append(waiter)
        if len(waiters) == 1:
            def fan_out(result) -> None:
                for each in self._listing_waiters.pop(target.instance_id, []):
                    if isinstance(result, failure.Failure):
                        each.errback(result)
                    else:
                        each.callback(result)

            tsi = target.tsi
            assert tsi is not None
            asked = next(self._sequence)

            def pushed_or_polled(listing):
                if listing is not None:
                    return listing, True, asked
                polled = next(self._sequence)
                return tsi.get_status_listing().addCallback(
                    lambda result: (result, False, polled))

            tsi.wait_status(self.poll_interval).addCallback(pushed_or_polled).addBoth(fan_out)
        return waiter

    async def _abort_in_guest(self, job: Job, target: TargetSystem) -> None:
        if target.tsi is None or not job.bssid or not target.usable:
            return
        try:
            await target.tsi.abort_job(job.bssid)
        except TSIError as err:
            log.info("abort of %s: %s", job.bssid, err)  # finished meanwhile: fine

    async def _stage_out(self, job: Job, target: TargetSystem) -> dict[str, int] | None:
        """The job directory into site storage (``stageout``), the exit code, Exports;
        ``job.kept`` once its files are there.  Our agent removes the directory from the
        guest in the stage-out's exchange (then the guest's free space is returned);
        otherwise the wind-up removes it once it is kept."""
        assert job.workdir
        workdir = job.workdir

        async def copy_back() -> StageOutResult:
            tsi = target.tsi
            assert tsi is not None
            if job.state is J.STAGINGOUT:  # not an earlier run's (a restarted job)
                await threads.deferToThread(_unlink, job.storage / EXIT_CODE_FILE)
            result = await stage_out(tsi, workdir, job.storage, then_remove=True)
            if job.state is J.STAGINGOUT:
                await self._read_exit_code(job, tsi, workdir, result.removed)
            return result

        try:
            result = await self._retrying(job, target, "staging out", copy_back)
        except TSIError as err:
            if job.state is J.STAGINGOUT:
                job.fail(Reason.STAGING_FAILED, f"staging out: {err}")
            else:
                job.note(f"could not keep the job's files: {err}")
            return None
        job.note(f"copied {result.files} file(s) ({result.bytes} bytes) to site storage"
                 + (f"; {len(result.notes)} not copied" if result.notes else ""))
        for line in result.notes[:MAX_NOTES]:
            job.note(line)
        if len(result.notes) > MAX_NOTES:
            job.note(f"... and {len(result.notes) - MAX_NOTES} more not copied")
        if job.state is J.STAGINGOUT:
            await self._export(job)
        job.kept = True  # from now on its files are served from site storage
        return result.removed

    async def _read_exit_code(self, job: Job, tsi, workdir: str,
                              removed: dict[str, int] | None = None) -> None:
        """The exit code from its file — the copy just kept in site storage, else the
        guest's (waiting ``exit_code_grace`` for it to appear, unless the stage-out removed
        the directory: ``removed``, the guest's free space then); our agent's record says
        when the file could not be written (the disk full), a DF when the file never came."""
        kept = await threads.deferToThread(kept_exit_code, job.storage)
        if kept == 0:  # nothing more to learn: one exchange and a file read saved
            job.exit_code = 0
            return
        details = await self._details(tsi, job.bssid) if job.bssid else None
        if details and details.get("exit_code_error"):
            job.exit_code = None
            job.exit_problem = (f"the job could not write its exit code: "
                                f"{details['exit_code_error']} (its script ended with "
                                f"status {details.get('exit_code')})")
            return
        if kept is not None or removed is not None:
            job.exit_code = kept
        else:
            job.exit_code = await tsi.exit_code(workdir, grace=self.exit_code_grace)
        if job.exit_code and details:
            job.ended_by = details.get("reason")
        if job.exit_code is None:
            with contextlib.suppress(TSIError):
                space = removed or await tsi.df(workdir)
                if space["TOTAL"] > 0 and space["FREE"] < self.min_free_space:
                    job.exit_problem = (f"the job left no exit code: the disk of its "
                                        f"instance is full ({space['FREE']} bytes free)")

    async def _remove_workdir(self, job: Job, target: TargetSystem) -> dict[str, int] | None:
        """The job's files are in site storage: free the guest's disk for the next job;
        the free space of the job directories then, when the TSI answered it."""
        if target.tsi is None or not target.usable or not job.workdir:
            return None
        try:
            return await target.tsi.remove_tree(job.workdir)
        except TSIError as err:
            job.note(f"could not remove the job directory from the instance: {err}")
            return None

    async def _export(self, job: Job) -> None:
        """Upload the job's ``Exports`` from its site-storage copy (``STAGING_FAILED`` when
        one fails, unless its ``FailOnError`` is false)."""
        root = job.storage.resolve()
        for item in job.description.exports:
            source = (root / item.source).resolve()
            try:
                if not source.is_relative_to(root):
                    raise TransferFailed(f"{item.source} leads outside the job directory")
                size = await threads.deferToThread(
                    upload_file, source, item.url, self.transfers,
                    item.credentials.authorization() if item.credentials else None)
            except TransferFailed as err:
                if transfer_failed(job, f"export of {item.source} to {item.url}",
                                   item.fail_on_error, err):
                    return
                continue
            job.note(f"exported {item.source} to {item.url} ({size} bytes)")

    @staticmethod
    async def _details(tsi, bssid: str) -> dict | None:
        """Our agent's record of the job (GETJOBDETAILS as JSON: its exit code, the reason
        when the agent ended the job, why the exit code file is missing)."""
        try:
            details = json.loads(await tsi.job_details(bssid))
        except (TSIError, ValueError):
            return None  # e.g. the official TSI: "No info available"
        return details if isinstance(details, dict) else None

    def _finish(self, job: Job) -> None:
        failure = job.storage / FAILURE_FILE
        if (job.description.container is not None and job.exit_code == SETUP_FAILED
                and failure.is_file()):
            job.fail(Reason.CONTAINER_FAILED, failure.read_text(errors="replace")[:500].strip())
        elif job.ended_by == Reason.RUNTIME_EXCEEDED:
            job.fail(Reason.RUNTIME_EXCEEDED, f"the job ran longer than its Runtime of "
                                         f"{job.description.runtime} s and was stopped")
        elif job.exit_code is None:
            job.fail(Reason.NONZERO_EXIT, job.exit_problem
                     or "the job left no exit code (killed, or out of memory?)")
        elif job.exit_code != 0 and not job.description.ignore_nonzero_exit:
            job.fail(Reason.NONZERO_EXIT, f"User application exited with non-zero exit code: "
                                     f"<{job.exit_code}>.")
        else:
            job.lifecycle.advance(J.SUCCESSFUL)

    def abort(self, job: Job) -> None:
        """Abort a job: it ends FAILED with JOB_ABORTED (its files are still kept)."""
        if not job.state.terminal:
            job.fail(Reason.JOB_ABORTED, "Job aborted.")
