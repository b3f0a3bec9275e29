"""Put a recipe's users and files into a guest root directory.

gridvm's micro guest is packed with every file owned by root (no build needs root for
that), so the owners a recipe asks for are listed in ``/etc/gridvm/owners`` (``uid:gid mode path``
lines; the mode again because chown clears set-id bits) and set by the guest's start-up
script.  A cloud image's root is made by mmdebstrap as root: its users are
added with ``useradd`` in the root and its files get their owners at once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from image_builder.errors import BuildError
from image_builder.recipe import BASE_GROUPS, BASE_USERS, Recipe, RecipeFile
from image_builder.tools import run_tool

OWNERS_FILE = "etc/gridvm/owners"


def _place(root: Path, recipe: Recipe, item: RecipeFile) -> Path:
    target = root / item.path.lstrip("/")
    if target.is_dir() and not target.is_symlink():
        raise BuildError(f"files: {item.path} is a directory in the image", bad_input=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # a package's symlink there is replaced, not followed
    shutil.copyfile(recipe.source(item), target)
    target.chmod(item.mode)
    return target


def _ids(recipe: Recipe) -> tuple[dict[str, int], dict[str, int]]:
    users = dict(BASE_USERS) | {u.name: u.uid for u in recipe.users}
    groups = dict(BASE_GROUPS) | {u.name: u.uid for u in recipe.users}
    return users, groups


def _primary_group(user: str, uid: int) -> int:
    return {"nobody": BASE_GROUPS["nogroup"]}.get(user, uid)


def micro_guest(root: Path, recipe: Recipe) -> None:
    """Users into /etc/passwd and /etc/group, files copied, owners listed for start-up."""
    users, groups = _ids(recipe)
    members: dict[str, list[str]] = {}
    with (root / "etc/passwd").open("a") as passwd, (root / "etc/group").open("a") as group:
        for user in recipe.users:
            passwd.write(f"{user.name}:x:{user.uid}:{user.uid}::{user.home_directory}:"
                         f"{user.shell}\n")
            group.write(f"{user.name}:x:{user.uid}:\n")
            for extra in user.groups:
                members.setdefault(extra, []).append(user.name)
    _add_members(root / "etc/group", members)
    owners = []
    for user in recipe.users:
        (root / user.home_directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
        owners.append(f"{user.uid}:{user.uid} 0755 {user.home_directory}")
    for item in recipe.files:
        _place(root, recipe, item)
        uid = users[item.user]
        gid = groups[item.group] if item.group else _primary_group(item.user, uid)
        if (uid, gid) != (0, 0):
            owners.append(f"{uid}:{gid} {item.mode:04o} {item.path}")
    if owners:
        (root / OWNERS_FILE).write_text("".join(f"{line}\n" for line in owners))


def _add_members(group_file: Path, members: dict[str, list[str]]) -> None:
    lines = []
    for line in group_file.read_text().splitlines():
        name, _, _, current = line.split(":", 3)
        added = members.get(name, [])
        if added:
            line = line + ("," if current else "") + ",".join(added)
        lines.append(line)
    group_file.write_text("".join(f"{line}\n" for line in lines))


def cloud_root(root: Path, recipe: Recipe) -> None:
    """Users added with useradd inside ``root``, files copied with their owners."""
    for user in recipe.users:
        cmd = ["useradd", "--root", str(root), "--uid", str(user.uid), "--user-group",
               "--create-home", "--home-dir", user.home_directory, "--shell", user.shell]
        if user.groups:
            cmd += ["--groups", ",".join(user.groups)]
        _run([*cmd, user.name])
    for item in recipe.files:
        target = _place(root, recipe, item)
        owner = item.owner if item.group else f"{item.user}:"  # the user's own group
        _run(["chroot", str(root), "chown", "--no-dereference", owner, item.path])
        target.chmod(item.mode)  # chown clears set-id bits


def _run(cmd: list[str]) -> None:
    run_tool(cmd, timeout=120)
