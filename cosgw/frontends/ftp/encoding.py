"""
The encoding of one FTP session's names: UTF-8 (RFC 2640) by default, or
the code page of an older client (GBK, Big5, ...) that a listener, the
server or the user's account configures (C{ftp_encoding}).

Names are stored in COS as UTF-8 whatever a session speaks: the session's
encoding is only how its command lines are decoded (L{SessionEncoding.decode})
and how its replies and listings are written (L{SessionEncoding.encode}),
so a GBK client and a UTF-8 client see the same files under the same
names.  Names are neither normalised nor rewritten on the way: what a
legacy client sends is decoded once, and the same bytes come back to it.

Which encoding a session speaks (L{SessionEncoding.codec}), from the
configured one and what the client said::

    configured   OPTS UTF8 never sent          OPTS UTF8 ON   OPTS UTF8 OFF
    utf-8        UTF-8                          UTF-8          UTF-8 (504)
    gbk, ...     that encoding                  UTF-8          that encoding
    auto         UTF-8; GB18030 once a line     UTF-8          GB18030
                 is not UTF-8 but is GB18030

A client that sends C{OPTS UTF8 ON} (FileZilla, Windows Explorer, lftp)
says it speaks UTF-8, so it gets UTF-8 whatever is configured.  C{OFF}
under C{utf-8} is refused (504): there is no other encoding to go to, and
a client told 200 would send its code page's bytes and meet 501s.  The
account's encoding applies from C{USER} on (so C{PASS} is read in it),
the listener's (else the server's) before.

A name the session's encoding cannot write (an emoji, or Korean in a GBK
session) is shown with L{REPLACEMENT} for each such character, never
dropped, and the session logs once that it happened.  The session
remembers the names it showed so (up to L{MAX_REPLACED_NAMES}): a path
that names one of them back is answered 550 (L{SessionEncoding.replaced_in}),
since it may stand for several names and could otherwise reach a file
that happens to be named with a real C{?}.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Optional

from twisted.logger import Logger

from cosgw.interfaces import Entry

__all__ = [
    "AUTO",
    "AUTO_LEGACY",
    "MAX_REPLACED_NAMES",
    "REPLACEMENT",
    "UTF8",
    "NotDecodable",
    "SessionEncoding",
    "label",
]

# One namespace for the whole frontend, as when it was one module.
log = Logger(namespace="cosgw.frontends.ftp")

UTF8 = "utf-8"
#: The configured value that detects GB18030 (L{SessionEncoding.decode}).
AUTO = "auto"
#: What C{auto} switches to: GB18030 reads every GBK (and GB2312) name,
#: and writes every Unicode character, so nothing is ever replaced.
AUTO_LEGACY = "gb18030"
#: Shown for each character the session's encoding cannot write: every
#: ASCII-compatible codec writes it, and clients show it as "unknown".
REPLACEMENT = "?"
#: Names shown with a replacement that a session remembers, the oldest
#: forgotten first.
MAX_REPLACED_NAMES = 4096


def label(codec: str) -> str:
    """A codec as people write it in replies and logs: C{GBK}, C{UTF-8}."""
    return codecs.lookup(codec).name.upper()


class NotDecodable(Exception):
    """A command line is not valid in the encoding(s) the session reads."""

    def __init__(self, expected: str) -> None:
        super().__init__(f"Command is not valid {expected}")
        self.expected = expected


class SessionEncoding:
    """
    One control connection's name encoding (see the module docstring for
    the table).  The protocol decodes every line and encodes every reply
    through it; listings encode their lines through it and show their names
    through L{shown}.
    """

    def __init__(
        self,
        configured: str = UTF8,
        log_fields: Callable[[], Mapping[str, Any]] = dict,
    ) -> None:
        """
        @param configured: C{utf-8}, C{auto} or a codec's canonical name
            (as L{cosgw.config.parse_encoding} returns it).
        @param log_fields: the session's fields (C{session}, C{peer}) for
            the lines logged once per session.
        """
        self.configured = configured
        #: What the client said with OPTS UTF8: None (nothing), ON or OFF.
        self.utf8_option: Optional[bool] = None
        #: C{auto} has seen a GB18030 line.
        self.detected = False
        self._log_fields = log_fields
        self._replaced: dict[str, None] = {}
        self._told_replaced = False
        self._told_undecodable = False

    # -- which encoding ---------------------------------------------------------

    @property
    def legacy(self) -> Optional[str]:
        """The non-UTF-8 encoding OPTS UTF8 OFF selects, if any."""
        if self.configured == AUTO:
            return AUTO_LEGACY
        return None if self.configured == UTF8 else self.configured

    @property
    def codec(self) -> str:
        """The encoding the session speaks now."""
        if self.utf8_option is not None:
            return UTF8 if self.utf8_option else (self.legacy or UTF8)
        if self.configured == AUTO:
            return AUTO_LEGACY if self.detected else UTF8
        return self.configured

    @property
    def detecting(self) -> bool:
        """Whether a line that is not UTF-8 may still switch to GB18030."""
        return (
            self.configured == AUTO and self.utf8_option is None and not self.detected
        )

    def configure(self, configured: str) -> None:
        """The account (or, after REIN, the listener) says how names are encoded."""
        self._changing(lambda: setattr(self, "configured", configured))

    def set_utf8(self, on: bool) -> bool:
        """
        OPTS UTF8 ON or OFF.

        @return: whether the session now speaks what the client asked for
            (OFF with no legacy encoding configured: False, and nothing
            changes).
        """
        if not on and self.legacy is None:
            return False
        self._changing(lambda: setattr(self, "utf8_option", on))
        return True

    def _changing(self, change: Callable[[], None]) -> None:
        before = self.codec
        change()
        if self.codec != before:
            # What was replaced in one encoding means nothing in another.
            self._replaced.clear()

    # -- lines in ---------------------------------------------------------------

    def decode(self, line: bytes) -> str:
        """
        A command line as text.  Under C{auto}, the first line that is not
        UTF-8 but is GB18030 switches the session to GB18030 (logged once).

        @raise NotDecodable: the line is valid in none of them (logged once
            per session; the protocol replies 501).
        """
        codec = self.codec
        try:
            return line.decode(codec)
        except UnicodeDecodeError:
            if not self.detecting:
                self._undecodable(label(codec))
        try:
            text = line.decode(AUTO_LEGACY)
        except UnicodeDecodeError:
            self._undecodable(f"{label(UTF8)} or {label(AUTO_LEGACY)}")
        self._changing(lambda: setattr(self, "detected", True))
        log.info(
            "FTP session {session} from {peer} sent a line that is not UTF-8"
            " but is GB18030: its names are GB18030 from now on",
            **self._log_fields(),
        )
        return text

    def _undecodable(self, expected: str) -> NoReturn:
        if not self._told_undecodable:
            self._told_undecodable = True
            log.info(
                "FTP session {session} from {peer} sent a line that is not valid"
                " {expected}: answered 501 (logged once per session)",
                expected=expected,
                **self._log_fields(),
            )
        raise NotDecodable(expected)

    # -- text out ---------------------------------------------------------------

    def encode(self, text: str) -> bytes:
        """C{text} (a reply, a listing) in the session's encoding, replaced where it cannot."""
        codec = self.codec
        try:
            return text.encode(codec)
        except UnicodeEncodeError:
            self._tell_replaced()
            return text.encode(codec, "replace")

    def shown(self, name: str) -> str:
        """
        C{name} as a listing shows it: itself, or with L{REPLACEMENT} for
        each character the session cannot write, remembered so that
        L{replaced_in} refuses it when the client sends it back.
        """
        codec = self.codec
        try:
            name.encode(codec)
            return name
        except UnicodeEncodeError:
            pass
        shown = "".join(c if _writable(c, codec) else REPLACEMENT for c in name)
        replaced = self._replaced
        replaced.pop(shown, None)
        replaced[shown] = None
        if len(replaced) > MAX_REPLACED_NAMES:
            del replaced[next(iter(replaced))]
        self._tell_replaced()
        return shown

    def shown_entry(self, entry: Entry) -> Entry:
        """C{entry} under its L{shown} name."""
        name = self.shown(entry.name)
        return entry if name == entry.name else dataclasses.replace(entry, name=name)

    def replaced_in(self, path: str) -> Optional[str]:
        """The segment of C{path} that is a name L{shown} with replacements, if any."""
        if not self._replaced:
            return None
        for segment in path.split("/"):
            if segment in self._replaced:
                return segment
        return None

    def _tell_replaced(self) -> None:
        if not self._told_replaced:
            self._told_replaced = True
            log.info(
                "FTP session {session} from {peer} speaks {encoding}: names it"
                " cannot write are shown with '?' for each such character"
                " (logged once per session)",
                encoding=label(self.codec),
                **self._log_fields(),
            )


def _writable(char: str, codec: str) -> bool:
    try:
        char.encode(codec)
    except UnicodeEncodeError:
        return False
    return True
