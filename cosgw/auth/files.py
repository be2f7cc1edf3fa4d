"""
Writing the gateway's own secrets to its state directory: the generated
account's passwd file and the generated SSH host keys.

Both are written once, at the first start, and must never be half-written
nor overwritten: a crash would otherwise leave an unusable file, and two
first starts at once would each announce a secret only one of them stored.

Everything here blocks: call it at start-up, before the reactor runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["create_exclusively"]


def create_exclusively(path: Path, content: str) -> bool:
    """
    Write C{content} to a new file C{path} (mode 0600) atomically.

    @return: C{False} if C{path} appeared meanwhile (another process got
        there first), leaving it untouched.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        try:
            # link() fails if the target exists, unlike rename(): two first
            # starts at once cannot each print a password only one of them
            # stored.
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # A file system without hard links: fall back to an atomic
            # rename, with a small window against a concurrent start.
            if path.exists():
                return False
            os.replace(tmp, path)
        _fsync_directory(path.parent)
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _fsync_directory(directory: Path) -> None:
    """Make a new directory entry durable; best effort where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
