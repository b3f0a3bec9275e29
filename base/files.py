"""Small file helpers every layer may use."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha512_file(path: str | Path, block: int = 4 << 20) -> str:
    """The sha512 of a file's bytes, read ``block`` bytes at a time."""
    digest = hashlib.sha512()
    with open(path, "rb") as reader:
        for chunk in iter(lambda: reader.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()
