"""
How both frontends describe a file in ``ls -l`` form: FTP's LIST lines and
SFTP's long names, and the Unix mode shown for it.

Permissions shown are the user's, not the object's (an object store has no
modes): a file is writable in the listing when the user may upload, and so
on, so clients that grey out actions guess right.
"""

from __future__ import annotations

import time

from cosgw import vfs

_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def unix_mode(entry: vfs.Entry, permissions: frozenset[str]) -> int:
    """The permission bits shown for C{entry} to a user holding C{permissions}."""
    write = 0o200 if "upload" in permissions else 0
    if entry.is_dir:
        return 0o555 | write
    return 0o444 | write


def format_list_line(
    entry: vfs.Entry, permissions: frozenset[str], owner: str, now: float
) -> str:
    """One line of LIST output, as ``ls -l`` writes it (what clients parse)."""
    mode = unix_mode(entry, permissions)
    bits = "".join(
        c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx")
    )
    kind = "d" if entry.is_dir else "-"
    mtime = entry.mtime or now  # a common prefix has no date of its own
    t = time.gmtime(mtime)
    if abs(now - mtime) < 180 * 86400:
        when = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}"
    else:
        when = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d}  {t.tm_year}"
    owner = owner[:8] or "cosgw"
    return f"{kind}{bits} 1 {owner:<8} {owner:<8} {entry.size:>12} {when} {entry.name}"
