"""CONTAINER jobs whose IMAGE_URL is a registered container image (an OCI archive).

The site resolves the image at submit (``tsf.registry``) into a :class:`ContainerToRun`;
the job is placed on a VM image that offers an OCI runtime (``semantic.container_runtime``).
At stage-in :func:`stage_container` puts the archive and the launcher
(``target_system.container_launcher``, which runs in the guest on the standard library
alone) into the instance's cache, ``<workdir_root>/.containers``, each once per instance:
the archive named by its sha512, the launcher by its own digest.  The job script then runs
:func:`launcher_command` instead of the command itself.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from image_repo.schema import ImageMetadata
from target_system import container_launcher

CACHE_DIR = ".containers"
#: the launcher's exit code and note when the container could not start
SETUP_FAILED = container_launcher.SETUP_FAILED
FAILURE_FILE = container_launcher.FAILURE_FILE


@dataclass(frozen=True)
class ContainerToRun:
    """A registered container image a CONTAINER job runs: its archive and where it is."""

    image_id: str
    ref: str                  #: name:version in the repository
    source_url: str | None    #: e.g. docker://debian:12
    file: str                 #: the archive's file name in the metadata
    sha512: str
    size: int
    architecture: str | None
    path: Path                #: the archive in the site's store


@dataclass(frozen=True)
class StagedContainer:
    """Where the archive and the launcher are in the guest."""

    cache: str
    archive: str
    launcher: str
    runtime: str


def launcher_source() -> bytes:
    return resources.files("target_system").joinpath("container_launcher.py").read_bytes()


def runtime_executable(metadata: ImageMetadata | None) -> str | None:
    """The OCI runtime a VM image offers, by its path; None when it offers none."""
    runtime = metadata.semantic.container_runtime if metadata is not None else None
    return runtime.executable if runtime is not None else None


def guest_paths(container: ContainerToRun, workdir_root: str, runtime: str) -> StagedContainer:
    cache = posixpath.join(workdir_root, CACHE_DIR)
    digest = hashlib.sha256(launcher_source()).hexdigest()[:16]
    return StagedContainer(cache=cache,
                           archive=posixpath.join(cache, f"{container.sha512[:64]}.oci.tar"),
                           launcher=posixpath.join(cache, f"launcher-{digest}.py"),
                           runtime=runtime)


async def stage_container(tsi, staged: StagedContainer, container: ContainerToRun) -> bool:
    """The archive and launcher into the guest unless already there; True when the archive
    had to be sent (its first job on this instance)."""
    q = shlex.quote
    present = await tsi.execute_script(
        f"mkdir -p {q(staged.cache)} && cd {q(staged.cache)} && "
        f"for f in {q(staged.archive)} {q(staged.launcher)}; do "
        f"if [ -f \"$f\" ]; then echo \"present $f\"; fi; done")
    have = {line.split(" ", 1)[1] for line in present.splitlines()
            if line.startswith("present ")}
    if staged.launcher not in have:
        await tsi.write_file(staged.launcher, launcher_source(), mode=0o644)
    if staged.archive in have:
        return False
    partial = f"{staged.archive}.part"
    await tsi.upload(str(container.path), partial)
    await tsi.execute_script(f"mv -f {q(partial)} {q(staged.archive)}")
    return True


def launcher_argv(staged: StagedContainer, container: ContainerToRun, *, workdir: str,
                  command: list[str], env_names: list[str], cpus: int | None,
                  memory_mib: int | None, binds: tuple[str, ...] = ()) -> list[str]:
    """The job script's command: the launcher running ``command`` in the container
    (``binds``: instance paths it sees read-only)."""
    argv = ["python3", staged.launcher, "--archive", staged.archive,
            "--sha512", container.sha512, "--cache", staged.cache, "--workdir", workdir,
            "--runtime", staged.runtime]
    if cpus:
        argv += ["--cpus", str(cpus)]
    if memory_mib:
        argv += ["--memory-mib", str(memory_mib)]
    for name in env_names:
        argv += ["--env", name]
    for path in binds:
        argv += ["--bind-ro", path]
    return [*argv, "--", *command]
