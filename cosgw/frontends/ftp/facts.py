"""
How FTP describes files to machines: RFC 3659 facts for MLSD and MLST, and
their FEAT line.  (``ls -l`` lines, which SFTP shares, are in
L{cosgw.frontends.listing}.)

Permissions shown are the user's, not the object's (an object store has no
modes), as in the listing lines.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable

from cosgw import vfs
from cosgw.frontends.listing import unix_mode

#: Facts offered by MLST/MLSD (RFC 3659 section 7.5), in FEAT's order;
#: COS.crc64 is COS's own CRC-64 of a file, given by MLST (a HEAD) only,
#: since a listing page does not carry it.
FACTS = ("type", "size", "modify", "perm", "unique", "UNIX.mode", "COS.crc64")
DEFAULT_FACTS = frozenset({"type", "size", "modify", "perm", "unique"})


def _perm(entry: vfs.Entry, permissions: frozenset[str]) -> str:
    """RFC 3659 7.5.5: what this user may do with the entry."""
    p = permissions
    if entry.is_dir:
        letters = [
            ("c", "upload"),
            ("d", "rmdir"),
            ("e", "list"),
            ("f", "rename"),
            ("l", "list"),
            ("m", "mkdir"),
            ("p", "delete"),
        ]
    else:
        letters = [
            ("a", "upload"),
            ("d", "delete"),
            ("f", "rename"),
            ("r", "download"),
            ("w", "overwrite"),
        ]
    return "".join(letter for letter, need in letters if need in p)


def unique_id(key: str) -> str:
    """A stable id for an object key (RFC 3659 7.5.2)."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def format_facts(
    entry: vfs.Entry,
    key: str,
    permissions: frozenset[str],
    selected: Iterable[str],
) -> str:
    """The facts part of an MLSD/MLST line: ``type=file;size=3;...;``."""
    chosen = set(selected)
    out = []
    for fact in FACTS:
        if fact not in chosen:
            continue
        if fact == "type":
            out.append(f"type={'dir' if entry.is_dir else 'file'}")
        elif fact == "size" and not entry.is_dir:
            out.append(f"size={entry.size}")
        elif fact == "modify" and entry.mtime:
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(entry.mtime))
            out.append(f"modify={stamp}")
        elif fact == "perm":
            out.append(f"perm={_perm(entry, permissions)}")
        elif fact == "unique":
            out.append(f"unique={unique_id(key)}")
        elif fact == "UNIX.mode":
            out.append(f"UNIX.mode=0{unix_mode(entry, permissions):o}")
        elif fact == "COS.crc64" and entry.crc64 is not None:
            out.append(f"COS.crc64={entry.crc64}")
    return "".join(f + ";" for f in out)


def feat_mlst(selected: Iterable[str]) -> str:
    """FEAT's MLST line: every fact offered, the selected ones starred."""
    chosen = set(selected)
    return "MLST " + "".join(f + ("*" if f in chosen else "") + ";" for f in FACTS)
