"""Who may see and change an image: owner/group/others read-write bits, VOs, administrators.

Rules, in order:

1. An administrator may read and write every image.
2. The owner has the owner rights (VOs do not restrict the owner).
3. Anybody else must belong to one of the image's VOs when it lists any; otherwise the image
   is invisible to them.
4. A member of the image's group has the group rights, everybody else the others rights.

Writing (new version, deprecate, delete) needs both read and write rights.
"""

from __future__ import annotations

from collections.abc import Iterable

from base.identity import Caller
from image_repo.schema import Permissions

# Unix-style bits (0o644 = owner rw, group r, others r); execute bits are not used.
OWNER_READ, OWNER_WRITE = 0o400, 0o200
GROUP_READ, GROUP_WRITE = 0o040, 0o020
OTHERS_READ, OTHERS_WRITE = 0o004, 0o002
_BITS = {"owner": (OWNER_READ, OWNER_WRITE), "group": (GROUP_READ, GROUP_WRITE),
         "others": (OTHERS_READ, OTHERS_WRITE)}
DEFAULT_PERMISSIONS = Permissions(owner="rw", group="r", others="")


def mode_of(permissions: Permissions | None) -> int:
    """Permission bits of a ``general.permissions`` object (default owner rw, group r)."""
    permissions = permissions or DEFAULT_PERMISSIONS
    mode = 0
    for who, (read, write) in _BITS.items():
        rights = getattr(permissions, who)
        mode |= (read if "r" in rights else 0) | (write if "w" in rights else 0)
    return mode


def permissions_of(mode: int) -> Permissions:
    rights = {who: ("r" if mode & read else "") + ("w" if mode & write else "")
              for who, (read, write) in _BITS.items()}
    return Permissions(**rights)


def _rights(caller: Caller, owner: str, group: str | None, mode: int,
            vos: Iterable[str]) -> tuple[int, int] | None:
    """The (read, write) bits that apply to ``caller``, or None when the VOs hide the image."""
    if caller.user == owner:
        return _BITS["owner"]
    vos = frozenset(vos)
    if vos and not (vos & caller.vos):
        return None
    if group is not None and group in caller.groups:
        return _BITS["group"]
    return _BITS["others"]


def can_read(caller: Caller, owner: str, group: str | None, mode: int,
             vos: Iterable[str]) -> bool:
    if caller.admin:
        return True
    bits = _rights(caller, owner, group, mode, vos)
    return bits is not None and bool(mode & bits[0])


def can_write(caller: Caller, owner: str, group: str | None, mode: int,
              vos: Iterable[str]) -> bool:
    if caller.admin:
        return True
    bits = _rights(caller, owner, group, mode, vos)
    return bits is not None and bool(mode & bits[0]) and bool(mode & bits[1])
