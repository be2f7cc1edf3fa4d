"""
Text that came from a client or from another writer of the bucket, made
safe for the two places it is echoed: FTP replies and listings, and log
lines.

Both are line protocols.  A name holding CR or LF, written into the bucket
by another COS client (the gateway itself refuses such names), would end
an FTP reply line early and let the rest of the name pose as a reply of
its own (C{226 Transfer complete}) in a client's listing or C{STAT}; a
user name holding a newline would forge a log line for fail2ban to act
on.  SFTP carries names as length-prefixed data and needs neither.
"""

from __future__ import annotations

import re

#: C0 controls and DEL: what can end, fold or colour a line.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def for_reply(text: str) -> str:
    """
    C{text} with every control character replaced by C{?}, as vsftpd shows
    unprintable names: the client sees that a character is there, and no
    line of the reply can be split or forged.
    """
    return _CONTROL.sub("?", text)


def for_log(text: str) -> str:
    r"""
    C{text} with backslashes and control characters written as escapes
    (C{\\}, C{\n}, C{\r}, C{\x00} ...), so that one log line is always one
    event and the original text can still be read back from it.
    """
    if not _CONTROL.search(text) and "\\" not in text:
        return text
    return _CONTROL.sub(_escape, text.replace("\\", "\\\\"))


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")
