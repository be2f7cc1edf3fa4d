"""
Names and confinement.  Paths are lists of segments below the user's home;
L{resolve} turns a client's path (absolute or relative, with C{.} and
C{..}) into segments and clamps C{..} at the home, like a chroot.  A segment
may not be empty, C{.}, C{..}, contain C{/}, NUL or another control
character.  Nothing a client sends (percent escapes included: they are
literal characters here) can name a key outside C{home/}.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cosgw.vfs.errors import InvalidName

#: Per directory, the modification times clients set, as earlier versions
#: kept them (see L{cosgw.vfs.mtimes}, which migrates them): a name the
#: gateway keeps for itself.
MTIME_INDEX = ".cosgw-mtimes.json"

#: Where the gateway keeps its own objects ([server] metadata_prefix).
METADATA_PREFIX = ".cosgw/"

#: The control characters no name may hold (C0 and DEL).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def home_prefix(home: str) -> str:
    """The key prefix of a home ("a/b" -> "a/b/"; the bucket root -> "")."""
    home = home.strip("/")
    return home + "/" if home else ""


def is_reserved(key: str, metadata_prefix: str = METADATA_PREFIX) -> bool:
    """
    Whether C{key} is the metadata prefix or below it: no user may see or
    touch it, even one whose home is the whole bucket.
    """
    return key == metadata_prefix[:-1] or key.startswith(metadata_prefix)


def is_hidden_key(key: str, metadata_prefix: str = METADATA_PREFIX) -> bool:
    """Keys the gateway keeps for itself: never listed, never counted."""
    return key.rsplit("/", 1)[-1] == MTIME_INDEX or is_reserved(key, metadata_prefix)


def check_name(name: str, path: str) -> None:
    """@raise InvalidName: C{name} cannot be a path segment."""
    if name in ("", ".", "..", MTIME_INDEX) or "/" in name:
        raise InvalidName(path)
    # One regular-expression scan, not a Python step per character: every
    # request checks every segment of its path.
    if _CONTROL.search(name) is not None:
        raise InvalidName(path, "control characters are not allowed in names")
    if name.isascii():
        return
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(path, "names must be valid UTF-8") from None


def resolve(cwd: Sequence[str], path: str) -> list[str]:
    """
    The segments of C{path} seen from C{cwd}.  C{..} at the top stays at the
    top, as in a chroot.

    @raise InvalidName: a segment is not a valid name.
    """
    segments = [] if path.startswith("/") else list(cwd)
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if segments:
                segments.pop()
            continue
        check_name(part, path)
        segments.append(part)
    return segments


def display(segments: Sequence[str]) -> str:
    """The path a user sees for C{segments}."""
    return "/" + "/".join(segments)
