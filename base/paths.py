"""Where gridvm keeps its local state."""

from __future__ import annotations

import os
from pathlib import Path


def gridvm_home() -> Path:
    """The local state directory: ``$GRIDVM_HOME``, else /var/lib/gridvm for root, else
    ``~/.local/share/gridvm``.  Image builds, the image store and the SQLite catalogue live
    below it unless configured otherwise."""
    explicit = os.environ.get("GRIDVM_HOME")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/gridvm")
    return Path.home() / ".local" / "share" / "gridvm"
