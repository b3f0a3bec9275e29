"""Debian packages for guest images: resolve candidate versions, download, extract.

Everything goes through the ordinary apt tools of the build host, so the guest is made of
the same signed packages the host trusts.  Downloads are cached by file name (which holds
the version), so a rebuild with unchanged versions fetches nothing.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from image_builder.errors import BuildError

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as err:
        raise BuildError(f"{cmd[0]} not found: the build host needs apt (Debian)") from err
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BuildError(f"{' '.join(cmd[:3])} failed: {detail[-1] if detail else 'no output'}")
    return result.stdout


def kernel_package_name() -> str:
    """The versioned kernel package the cloud kernel meta package currently depends on."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+-cloud-amd64)\s*$", line)
        if match:
            return match.group(1)
    raise BuildError(f"cannot find the kernel behind {KERNEL_META_PACKAGE} (run apt-get update)")


def resolve(names: list[str]) -> list[Package]:
    """Candidate versions of ``names`` as apt would install them now."""
    out = _run(["apt-cache", "policy", *names])
    versions: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1].split(":")[0]
        elif current and line.strip().startswith("Candidate:"):
            candidate = line.split(":", 1)[1].strip()
            if candidate != "(none)":
                versions[current] = candidate
    missing = [n for n in names if n not in versions]
    if missing:
        raise BuildError(f"no installable version of {', '.join(missing)} (run apt-get update)")
    return [Package(n, versions[n]) for n in names]


def deb_file_name(package: Package) -> str:
    version = package.version.replace(":", "%3a")
    return f"{package.name}_{version}_amd64.deb"


def download(packages: list[Package], cache: Path) -> list[Path]:
    """Download the packages' .deb files into ``cache`` unless already there."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / deb_file_name(p) for p in packages]
    wanted = [p.spec for p, path in zip(packages, paths, strict=True) if not path.exists()]
    if wanted:
        # _apt cannot write into root-only directories: download as the caller.
        _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *wanted], cwd=cache)
    for path in paths:
        if not path.exists():
            # Some packages are "all" rather than "amd64".
            alt = path.with_name(path.name.replace("_amd64.deb", "_all.deb"))
            if alt.exists():
                paths[paths.index(path)] = alt
            else:
                raise BuildError(f"download of {path.name} did not produce the file")
    return paths


def extract(deb: Path, root: Path) -> None:
    _run(["dpkg-deb", "-x", str(deb), str(root)])
