"""Layer recipes: a ``qcow2`` recipe with ``base = "NAME:VERSION"`` built on that registered
image's disk, as a qcow2 layer holding only what the recipe changes.

The base's disk comes from the creator (``--base-disk``, a copy of its build directory:
``metadata.json`` beside it, ``build.json`` too when gridvm built it).  The recipe's packages
(their closure against the base's packages), users, files and home directories go into a raw
copy of the base's ext4 in one ``debugfs -w -f`` run — no mounting, owners and modes set in
the inodes — the file system is checked with ``e2fsck -n``, and
:func:`image_repo.layers.make_layer` keeps only the clusters that differ from the base.  The
layer's metadata keeps the base's kernel and loader initrd (same files, same sha512) and
names the base in ``origin.backing_image``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import posixpath
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from image_builder import debian, metadata, rootfs
from image_builder.customize import _ids, _primary_group
from image_builder.errors import BuildError
from image_builder.progress import Progress, Step, silent
from image_builder.recipe import Recipe
from image_builder.tools import run_tool
from image_repo.errors import BadRequest
from image_repo.layers import inspect_disk, make_layer, names_other_files

LAYER_VERSION = "1"
LAYER_FILE = "layer.qcow2"
_EXT4_MAGIC_OFFSET = 1080
_EXT4_MAGIC = b"\x53\xef"


@dataclass(frozen=True)
class BaseDisk:
    """A base image's disk as the creator has it: the file, its sha512, its build's
    metadata and the Debian packages it holds."""

    disk: Path
    sha512: str
    metadata: dict[str, Any]
    packages: list[debian.Package]


@dataclass(frozen=True)
class Entry:
    """One inode the layer writes: a directory, a file (from ``source``) or a symlink."""

    path: str
    kind: Literal["dir", "file", "symlink"]
    mode: int  # permission bits
    uid: int = 0
    gid: int = 0
    source: Path | None = None
    target: str | None = None


def _bad(message: str) -> BuildError:
    return BuildError(message, bad_input=True)


def open_base(recipe: Recipe, disk: Path | None) -> BaseDisk:
    """The base disk ``recipe`` builds on, checked: a qcow2 file naming no other file,
    holding ext4, described by the ``metadata.json`` beside it as the recipe's base."""
    if disk is None:
        raise _bad(f"base: {recipe.name} is a layer on {recipe.base}: give a copy of that "
                   "image's disk with --base-disk PATH")
    disk = Path(disk)
    if not disk.is_file():
        raise _bad(f"--base-disk: {disk}: no such file")
    try:
        inspect_disk(disk)
    except BadRequest:
        raise _bad(f"--base-disk: {disk} is not a qcow2 file") from None
    if names_other_files(disk):
        raise _bad(f"--base-disk: {disk} names a backing or data file; give a base that "
                   "holds its whole file system")
    if _superblock(disk)[_EXT4_MAGIC_OFFSET:_EXT4_MAGIC_OFFSET + 2] != _EXT4_MAGIC:
        raise _bad(f"--base-disk: {disk} holds no ext4 file system")
    doc = _read_json(disk.parent / "metadata.json")
    if doc is None:
        raise _bad(f"--base-disk: no metadata.json beside {disk} (the base's build directory "
                   "has one)")
    sha512 = metadata.sha512_file(disk)
    origin = doc.get("origin") or {}
    refs = {ref.get("role"): ref for ref in origin.get("content") or []}
    if (refs.get("disk") or {}).get("sha512") != sha512 or origin.get("backing_image"):
        raise _bad(f"--base-disk: {disk} is not the disk its metadata.json describes")
    name = (doc.get("general") or {}).get("name")
    wanted = (recipe.base or "").rpartition(":")[0]
    if name != wanted:
        raise _bad(f"base: the base disk is of image {name!r}, not {wanted!r}")
    info = _read_json(disk.parent / "build.json")
    if info is not None:
        packages = [debian.Package(n, v) for n, v in info["packages"]]
    else:
        from image_builder import GUEST_PACKAGES

        packages = debian.resolve([debian.kernel_package_name(), *GUEST_PACKAGES])
    return BaseDisk(disk.resolve(), sha512, doc, packages)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise _bad(f"--base-disk: cannot read {path}: {err}") from None


def _superblock(disk: Path) -> bytes:
    """The first 2 KiB of the disk's content (where ext4 keeps its magic number)."""
    with tempfile.TemporaryDirectory(prefix="gridvm-superblock-") as tmp:
        out = Path(tmp) / "head"
        try:
            run_tool(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=2048", "count=1",
                      f"if={disk}", f"of={out}"], timeout=60)
        except BuildError:
            return b""
        return out.read_bytes()


def build_layer(recipe: Recipe, base_disk: Path | None, *, output_root: Path,
                force: bool = False, progress: Progress = silent):
    """Build ``recipe`` (which has a ``base``) as a layer on ``base_disk`` below
    ``output_root`` unless a layer of the same inputs is there already."""
    from image_builder import BuiltImage

    progress(Step("resolving", what="packages"))
    base = open_base(recipe, base_disk)
    packages = debian.closure(recipe.packages, base.packages)
    key = hashlib.sha256(json.dumps({
        "layer": LAYER_VERSION, "base": base.sha512, "packages": [p.spec for p in packages],
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "recipe": recipe.content_inputs(),
    }, sort_keys=True).encode()).hexdigest()
    directory = output_root / f"{recipe.name}-{key[:12]}"
    layer = directory / LAYER_FILE
    if layer.exists() and not force:
        _write_metadata(directory, base, recipe, packages)
        return BuiltImage("qcow2", key, directory, cached=True, files=[layer])

    started = time.monotonic()
    debs = debian.download(packages, output_root / "debs", progress)  # makes output_root
    work = Path(tempfile.mkdtemp(prefix=f".layer-{key[:12]}-", dir=output_root))
    try:
        out = work / "out"
        out.mkdir()
        _assemble(recipe, base, debs, work, progress)
        progress(Step("metadata", what="(sha512, sizes)"))
        _write_metadata(out, base, recipe, packages)
        if force and directory.exists():
            shutil.rmtree(directory)
        try:
            out.rename(directory)  # atomic: a half-built layer never has this name
        except OSError:
            if not layer.exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuiltImage("qcow2", key, directory, cached=False,
                      seconds=time.monotonic() - started, files=[layer])


def _assemble(recipe: Recipe, base: BaseDisk, debs: list[Path], work: Path,
              progress: Progress) -> None:
    staging, raw = work / "root", work / "base.raw"
    staging.mkdir()
    for done, deb in enumerate(debs, 1):
        progress(Step("unpacking", done, len(debs), "packages"))
        debian.extract(deb, staging)
    rootfs.prune(staging, keep_charsets=True)
    progress(Step("assembling", what="the layer's files"))
    run_tool(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(base.disk),
              str(raw)])
    entries = [*_tree_entries(staging), *_recipe_entries(recipe)]
    entries += _account_entries(recipe, raw, work)
    _debugfs(raw, _script(entries, _existing(raw, entries, work)), work / "write.debugfs")
    run_tool(["e2fsck", "-f", "-n", str(raw)], timeout=300)
    progress(Step("packing", what="the layer"))
    flat = work / "flat.qcow2"
    run_tool(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(flat)])
    raw.unlink()
    try:
        make_layer(flat, base.disk, work / "out" / LAYER_FILE)
    except BadRequest as err:
        raise BuildError(f"making the layer failed: {err.message}") from None


def _tree_entries(root: Path) -> list[Entry]:
    """Everything the unpacked packages hold, with the owners and modes dpkg-deb gave it."""
    entries = []
    for here, dirs, files in os.walk(root):
        for name in sorted(dirs) + sorted(files):
            path = Path(here) / name
            info = path.lstat()
            guest = "/" + str(path.relative_to(root))
            mode, ids = stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid)
            if stat.S_ISLNK(info.st_mode):
                entries.append(Entry(guest, "symlink", 0o777, *ids, target=os.readlink(path)))
            elif stat.S_ISDIR(info.st_mode):
                entries.append(Entry(guest, "dir", mode, *ids))
            elif stat.S_ISREG(info.st_mode):
                entries.append(Entry(guest, "file", mode, *ids, source=path))
            else:
                raise BuildError(f"packages: {guest} is neither file, directory nor symlink")
    return entries


def _recipe_entries(recipe: Recipe) -> list[Entry]:
    users, groups = _ids(recipe)
    entries = [Entry(u.home_directory, "dir", 0o755, u.uid, u.uid) for u in recipe.users]
    for item in recipe.files:
        uid = users[item.user]
        gid = groups[item.group] if item.group else _primary_group(item.user, uid)
        entries.append(Entry(item.path, "file", item.mode, uid, gid,
                             source=recipe.source(item)))
    return entries


def _account_entries(recipe: Recipe, raw: Path, work: Path) -> list[Entry]:
    """The base's /etc/passwd and /etc/group with the recipe's users (none: unchanged)."""
    if not recipe.users:
        return []
    passwd, group = _cat(raw, "/etc/passwd"), _cat(raw, "/etc/group")
    taken = {line.split(":")[0] for line in passwd + group if line}
    ids = {line.split(":")[2] for line in passwd + group if line.count(":") >= 3}
    members: dict[str, list[str]] = {}
    for i, user in enumerate(recipe.users):
        if user.name in taken or str(user.uid) in ids:
            raise _bad(f"users[{i}]: {user.name} or uid {user.uid} exists in the base already")
        passwd.append(f"{user.name}:x:{user.uid}:{user.uid}::{user.home_directory}:"
                      f"{user.shell}")
        group.append(f"{user.name}:x:{user.uid}:")
        for extra in user.groups:
            members.setdefault(extra, []).append(user.name)
    for n, line in enumerate(group):
        name = line.partition(":")[0]
        if members.get(name):
            group[n] = line + ("," if not line.endswith(":") else "") + ",".join(members[name])
    entries = []
    for name, lines in (("passwd", passwd), ("group", group)):
        local = work / name
        local.write_text("".join(f"{line}\n" for line in lines if line))
        entries.append(Entry(f"/etc/{name}", "file", 0o644, source=local))
    return entries


def _cat(raw: Path, path: str) -> list[str]:
    return run_tool(["debugfs", "-R", f"cat {path}", str(raw)]).splitlines()


def _quoted(text: str) -> str:
    if any(c in text for c in '"\n\\'):
        raise BuildError(f"{text!r}: a path debugfs cannot be given")
    return f'"{text}"'


def _existing(raw: Path, entries: list[Entry], work: Path) -> dict[str, int]:
    """The st_mode of what the base holds at each entry's path (absent: not there)."""
    parents = sorted({a for e in entries for a in _ancestors(e.path)})
    script = work / "list.debugfs"
    script.write_text("".join(f"ls -p {_quoted(d)}\n" for d in parents))
    out = run_tool(["debugfs", "-f", str(script), str(raw)], timeout=300)
    found: dict[str, int] = {}
    directory = None
    for line in out.splitlines():
        if line.startswith("debugfs: ls -p "):
            directory = line[len("debugfs: ls -p "):].strip('"')
        elif directory is not None and line.startswith("/"):
            fields = line.split("/")
            if len(fields) >= 7 and fields[5] not in (".", ".."):
                found[posixpath.join(directory, fields[5])] = int(fields[2], 8)
    return found


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` → ``["/", "/a", "/a/b"]``."""
    parts = path.strip("/").split("/")[:-1]
    return ["/"] + ["/" + "/".join(parts[:n]) for n in range(1, len(parts) + 1)]


def _script(entries: list[Entry], existing: dict[str, int]) -> str:
    """debugfs commands writing ``entries``, in order, over what the base holds
    (``existing``); a later entry at the same path replaces an earlier one."""
    lines: list[str] = []
    types = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK}
    present = dict(existing)
    for entry in entries:
        for parent in _ancestors(entry.path)[1:]:
            there = present.get(parent)
            if there is None:
                lines += [f"mkdir {_quoted(parent)}",
                          f"set_inode_field {_quoted(parent)} mode 040755"]
                present[parent] = stat.S_IFDIR | 0o755
            elif not stat.S_ISDIR(there):
                raise BuildError(f"{parent} is not a directory in the base")
        path, there = _quoted(entry.path), present.get(entry.path)
        if there is not None and stat.S_ISDIR(there):
            if entry.kind != "dir":
                raise _bad(f"files: {entry.path} is a directory in the base")
            if (entry.uid, entry.gid) == (0, 0):
                continue  # a directory there already stays as it is
        elif there is not None:
            if entry.kind == "dir":
                raise BuildError(f"{entry.path} is not a directory in the base")
            lines.append(f"rm {path}")
        if entry.kind == "dir" and there is None:
            lines.append(f"mkdir {path}")
        elif entry.kind == "file":
            lines.append(f"write {_quoted(str(entry.source))} {path}")
        elif entry.kind == "symlink":
            lines.append(f"symlink {path} {_quoted(entry.target or '')}")
        present[entry.path] = types[entry.kind] | entry.mode
        lines += [f"set_inode_field {path} mode 0{types[entry.kind] | entry.mode:o}",
                  f"set_inode_field {path} uid {entry.uid}",
                  f"set_inode_field {path} gid {entry.gid}"]
    return "".join(f"{line}\n" for line in lines)


def _debugfs(raw: Path, script: str, path: Path) -> None:
    """Run ``script`` in one ``debugfs -w``; any error it reports (on stderr, with exit
    status 0) fails the build."""
    path.write_text(script)
    try:
        result = subprocess.run(["debugfs", "-w", "-f", str(path), str(raw)],
                                capture_output=True, text=True, timeout=600)
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        raise BuildError(f"debugfs failed: {err}") from None
    errors = [line for line in result.stderr.splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if result.returncode or errors:
        raise BuildError(f"debugfs failed: {errors[0] if errors else result.returncode}")


def _write_metadata(directory: Path, base: BaseDisk, recipe: Recipe,
                    packages: list[debian.Package]) -> None:
    """``metadata.json``: the base's with its kernel and initrd refs, the layer disk,
    ``origin.backing_image`` and the recipe's additions (replaced only when it changes)."""
    doc = copy.deepcopy(base.metadata)
    origin = doc["origin"]
    origin["content"] = [ref for ref in origin["content"] if ref["role"] != "disk"]
    origin["content"] += metadata.content_refs({"disk": directory / LAYER_FILE})
    origin["backing_image"] = recipe.base
    for key in ("os_hash_value", "size"):
        origin.pop(key, None)
    try:
        doc = metadata.apply_recipe(doc, recipe, [*base.packages, *packages])
    except BadRequest as err:
        raise _bad(str(err)) from None
    metadata.write(directory, doc)
