"""Helpers shared by the tests."""

from __future__ import annotations

import hashlib
import os


def tree_digest(path: str) -> str:
    """Hash of every file under a folder (names and contents): proves nothing was modified."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()
