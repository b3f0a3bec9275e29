"""LS, DF and GET_USER_INFO payloads, and GRIDVM_MKDIR/GRIDVM_REMOVE, done with the request
user's permissions."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import stat

from tsi_bridge import protocol
from tsi_bridge.agent.identity import RunAs, call_as


def _name(lookup, number: int) -> str:
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def file_info(path: str) -> protocol.FileInfo:
    status = os.stat(path)
    return protocol.FileInfo(
        path, stat.S_ISDIR(status.st_mode), os.access(path, os.R_OK),
        os.access(path, os.W_OK), os.access(path, os.X_OK), status.st_uid == os.geteuid(),
        status.st_size, int(status.st_mtime), stat.filemode(status.st_mode),
        _name(pwd.getpwuid, status.st_uid), _name(grp.getgrgid, status.st_gid))


def _list_directory(path: str, recursive: bool, out: list[str]) -> None:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return
    for name in names:
        full = os.path.join(path, name)
        if recursive and os.path.isdir(full) and not os.path.islink(full):
            _list_directory(full, recursive, out)
            out.append("<")
        try:
            out.append(protocol.format_ls_entry(file_info(full)))
        except OSError:
            continue


def _ls_payload(path: str, mode: str) -> str:
    lines = ["START_LISTING"]
    if os.path.exists(path):
        try:
            if os.path.isdir(path) and mode != "A":
                _list_directory(path, mode == "R", lines)
            else:
                lines.append(protocol.format_ls_entry(file_info(path)))
        except OSError:
            pass
    lines.append("END_LISTING")
    return "\n".join(lines)


def ls_payload(runas: RunAs, path: str, mode: str) -> str:
    """The LS payload: A = the path itself, N = a directory's entries, R = recursive
    (children, then ``<``, then the directory's own entry).  A missing path lists nothing."""
    return call_as(runas, _ls_payload, path, mode)


def _df_numbers(path: str) -> list[int]:
    usage = os.statvfs(path)
    return [usage.f_blocks * usage.f_frsize, usage.f_bavail * usage.f_frsize]


def df_payload(runas: RunAs, path: str) -> str:
    total, free = call_as(runas, _df_numbers, path)
    return protocol.format_df(total, free)


def _read_keys(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith("#")]


def user_info_payload(runas: RunAs) -> str:
    keyfile = os.path.join(runas.home, ".ssh", "authorized_keys")
    lines = [f"home: {runas.home}"]
    try:
        keys = call_as(runas, _read_keys, keyfile)
        lines += [f"Accepted key {n}: {key}" for n, key in enumerate(keys, 1)]
        status = "OK"
    except OSError as err:
        status = f"keyfile '{keyfile}': {err}"
    lines.append(f"status: {status}")
    return "\n".join(lines) + "\n"


def _make_directory(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def make_directory(runas: RunAs, path: str) -> None:
    """``mkdir -p path`` as the user."""
    call_as(runas, _make_directory, path)


def _remove_tree(path: str) -> list[int]:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)  # never follows a link out of the tree
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return _df_numbers(os.path.dirname(path.rstrip("/")) or "/")


def remove_tree(runas: RunAs, path: str) -> tuple[int, int]:
    """``rm -rf path`` as the user (a missing path is fine); then the total and free bytes
    of the file system of its parent directory (in the same call)."""
    total, free = call_as(runas, _remove_tree, path)
    return total, free
