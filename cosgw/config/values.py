"""
Reading single values from their text: sizes, booleans, permissions, homes,
host names and addresses.

These know nothing of files or sections and raise C{ValueError}, so other
code (the command-line tools, the tests) can use them on any text; the
loaders turn a C{ValueError} into a L{ConfigError} naming the file, section
and key.
"""

from __future__ import annotations

import ipaddress
import re

from cosgw.config.model import (
    ALL_PERMISSIONS,
    DELETE_PERMISSIONS,
    GIB,
    KIB,
    MIB,
    READ_PERMISSIONS,
    TIB,
    WRITE_PERMISSIONS,
)

_SIZE_RE = re.compile(r"^(\d+)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": TIB}


def parse_size(text: str) -> int:
    """
    Read a size: plain bytes (C{"8388608"}) or a number with a binary suffix
    (C{"8M"}, C{"8 MiB"}, C{"8mb"}; K, M, G and T are powers of 1024).

    Binary units because COS's limits (1 MB to 5 GB parts) are binary.

    @raise ValueError: if C{text} is not such a size.
    """
    match = _SIZE_RE.match(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


_BOOLEANS = {
    "1": True,
    "yes": True,
    "true": True,
    "on": True,
    "0": False,
    "no": False,
    "false": False,
    "off": False,
}


def parse_bool(text: str) -> bool:
    """
    Read yes/no, true/false, on/off or 1/0 in any case, as V5's
    C{getboolean} did.

    @raise ValueError: for anything else.
    """
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"not a boolean: {text!r}") from None


def authority_permissions(authority: str, delete_enable: bool = True) -> frozenset[str]:
    """
    Map V5's C{authority} (C{R}, C{W} or C{RW}, any order and case) and
    C{delete_enable} onto cosgw's permissions.

    V5 gave pyftpdlib's read permissions C{elr} for C{R} and its write
    permissions C{adfmw} for C{W}; C{delete_enable = false} takes away C{d}
    (deleting files and directories).  C{delete_enable} also applies to
    permissions given as words, so it means the same wherever it appears.

    @raise ValueError: if C{authority} holds anything but R and W.
    """
    letters = authority.strip().upper()
    if not letters or set(letters) - {"R", "W"}:
        raise ValueError(f"not an authority: {authority!r}")
    permissions: frozenset[str] = frozenset()
    if "R" in letters:
        permissions |= READ_PERMISSIONS
    if "W" in letters:
        permissions |= WRITE_PERMISSIONS
    if not delete_enable:
        permissions -= DELETE_PERMISSIONS
    return permissions


_AUTHORITY_RE = re.compile(r"^[rw]+$", re.IGNORECASE)


def parse_permissions(text: str, delete_enable: bool = True) -> frozenset[str]:
    """
    Read C{all}, a comma- or space-separated list of L{ALL_PERMISSIONS}
    words, or a V5 authority (C{R}, C{W}, C{RW}); C{delete_enable = False}
    then takes away C{delete} and C{rmdir}.

    @raise ValueError: naming the first word that is not a permission.
    """
    words = [word for word in re.split(r"[\s,]+", text.strip()) if word]
    if not words:
        raise ValueError("no permissions")
    if len(words) == 1 and _AUTHORITY_RE.match(words[0]):
        return authority_permissions(words[0], delete_enable)
    permissions: set[str] = set()
    for word in words:
        lowered = word.lower()
        if lowered == "all":
            permissions |= ALL_PERMISSIONS
        elif lowered in ALL_PERMISSIONS:
            permissions.add(lowered)
        else:
            raise ValueError(f"not a permission: {word!r}")
    if not delete_enable:
        permissions -= DELETE_PERMISSIONS
    return frozenset(permissions)


#: Refused in homes, paths and user names: they would be ambiguous in logs,
#: listings and replies.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def normalize_home(text: str) -> str:
    """
    Turn a home given as C{"/a/b/"}, C{"a/b"} or C{"/"} into the key prefix
    form C{"a/b"} (C{""} for the storage's root).

    One leading and one trailing slash are dropped; anything that could make
    the home ambiguous or escape it is refused rather than repaired: empty
    segments (C{a//b}), C{.} and C{..}, and control characters.

    @raise ValueError: on such a home.
    """
    home = text.strip()
    if CONTROL_RE.search(home):
        raise ValueError("control character in home")
    if home.startswith("/"):
        home = home[1:]
    if home.endswith("/"):
        home = home[:-1]
    if not home:
        return ""
    for segment in home.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"bad segment {segment!r} in home")
    return home


def format_size(size: int) -> str:
    """A size as an operator would write it (C{"5G"}, not C{"5368709120"}),
    for the bounds an error message states."""
    for unit, factor in (("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def is_hostname(text: str) -> bool:
    """A DNS name (underscores allowed, as private zones use them).  A name
    whose last label is all digits is a mistyped IP address, not a name."""
    if not text or len(text) > 253:
        return False
    labels = text.split(".")
    if labels[-1].isdigit():
        return False
    return all(_HOST_LABEL_RE.match(label) for label in labels)


def is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address in any form C{ipaddress} accepts."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


#: An FTP line every encoding a session may use must write as ASCII does:
#: commands, replies and CRLF stay readable whatever the names are in.
_ASCII_PROBE = "LIST 200 ok\r\n"


def parse_encoding(text: str, auto: bool = True) -> str:
    """
    Read a name encoding: a Python codec that writes ASCII as ASCII
    (C{utf-8}, C{gbk}, C{gb18030}, C{big5}, C{shift_jis}, ...; not
    C{utf-16}, whose commands no client could read), or C{auto} when
    C{auto} is allowed.

    @return: the codec's canonical name (C{"gbk"}, C{"utf-8"}) or C{"auto"}.
    @raise ValueError: if C{text} is no such encoding.
    """
    import codecs

    word = text.strip().lower()
    if auto and word == "auto":
        return "auto"
    try:
        name = codecs.lookup(word).name
    except LookupError:
        raise ValueError(f"not an encoding: {text!r}") from None
    try:
        ascii_compatible = _ASCII_PROBE.encode(name) == _ASCII_PROBE.encode("ascii")
    except (UnicodeError, LookupError, TypeError):
        ascii_compatible = False
    if not ascii_compatible:
        raise ValueError(f"not an ASCII-compatible encoding: {text!r}")
    return name
