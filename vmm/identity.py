"""The site identity: which gridvm site a domain belongs to.

Generated once (a random UUID) and kept in the VM manager's state directory; every domain
records it in its gridvm metadata, and a site adopts and destroys only the domains that
carry its own identity — not those of another site on the same hypervisor, whatever
their names.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from vmm.errors import VMMError

IDENTITY_FILE = "site-id"


def load_or_create_site_id(state_dir: Path) -> str:
    """The identity kept in ``state_dir``, created (atomically) on first use."""
    path = Path(state_dir) / IDENTITY_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(f".{IDENTITY_FILE}.{uuid.uuid4().hex}")
    fresh.write_text(uuid.uuid4().hex + "\n")
    try:
        os.link(fresh, path)  # never replaces an identity another process just wrote
    except FileExistsError:
        pass
    finally:
        fresh.unlink()
    return _read(path)


def _read(path: Path) -> str:
    value = path.read_text().strip()
    try:
        return uuid.UUID(hex=value).hex
    except ValueError:
        raise VMMError(f"{path} holds no site identity ({value[:40]!r}); restore it from a "
                       "backup, or remove it only if no domain of this site runs") from None
