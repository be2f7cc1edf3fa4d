"""
Names and confinement.  Paths are lists of segments below the user's home;
L{resolve} turns a client's path (absolute or relative, with C{.} and
C{..}) into segments and clamps C{..} at the home, like a chroot.  A segment
may not be empty, C{.}, C{..}, contain C{/}, NUL or another control
character.  Nothing a client sends (percent escapes included: they are
literal characters here) can name a key outside C{home/}.
"""

from __future__ import annotations

from collections.abc import Sequence

from cosgw.vfs.errors import InvalidName

#: Per directory, the modification times clients set (see L{cosgw.vfs.mtimes});
#: a name the gateway keeps for itself.
MTIME_INDEX = ".cosgw-mtimes.json"


def home_prefix(home: str) -> str:
    """The key prefix of a home ("a/b" -> "a/b/"; the bucket root -> "")."""
    home = home.strip("/")
    return home + "/" if home else ""


def is_hidden_key(key: str) -> bool:
    """Keys the gateway keeps for itself: never listed, never counted."""
    return key.rsplit("/", 1)[-1] == MTIME_INDEX


def check_name(name: str, path: str) -> None:
    """@raise InvalidName: C{name} cannot be a path segment."""
    if name in ("", ".", "..", MTIME_INDEX) or "/" in name:
        raise InvalidName(path)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidName(path, "control characters are not allowed in names")
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
