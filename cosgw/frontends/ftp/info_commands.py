"""
What the server says about itself and the session, and the settings a
client makes: NOOP, SYST, FEAT, OPTS, HELP, CLNT, STAT, SITE, and TYPE,
STRU, MODE and ALLO.
"""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger

from cosgw import vfs
from cosgw.escaping import for_log
from cosgw.frontends.ftp.context import CommandContext
from cosgw.frontends.ftp.encoding import label
from cosgw.frontends.ftp.facts import FACTS, feat_mlst
from cosgw.frontends.ftp.replies import Reply
from cosgw.frontends.listing import format_list_line

# One namespace for the whole frontend, as when it was one module.
log = Logger(namespace="cosgw.frontends.ftp")

#: HASH algorithms in FEAT order; the default is SHA-256.
HASHES = ("SHA-256", "SHA-512", "SHA-1", "MD5", "CRC32")

SITE_HELP = {
    "CHMOD": "SITE CHMOD <mode> <path> (accepted; object storage keeps no modes)",
    "CRC64": "SITE CRC64 <path> (COS's CRC-64/ECMA of the file, without reading it)",
    "HELP": "SITE HELP",
}


class InfoCommands(CommandContext):
    """The server's features and help, the session's status and settings."""

    def ftp_NOOP(self, ignored: str) -> Reply:
        return Reply(200, "NOOP ok")

    def ftp_SYST(self) -> Reply:
        return Reply(215, "UNIX Type: L8")

    def features(self) -> list[str]:
        """FEAT's lines (RFC 2389), every extension this server offers."""
        chosen = self.session.hash_algorithm
        hashes = ";".join(h + ("*" if h == chosen else "") for h in HASHES)
        return [
            "AUTH TLS",
            "CLNT",
            "EPRT",
            "EPSV",
            f"HASH {hashes}",
            "MDTM",
            "MFMT",
            feat_mlst(self.session.facts),
            "PASV",
            "PBSZ",
            "PROT",
            "RANG STREAM",
            "REST STREAM",
            "SIZE",
            "TVFS",
            "TYPE A;I",
            "UTF8",
        ]

    def ftp_FEAT(self) -> None:
        self.sendLine("211-Features:")
        for feature in self.features():
            self.sendLine(" " + feature)
        self.sendLine("211 End")

    def ftp_OPTS(self, option: str) -> Reply:
        name, _, value = option.strip().partition(" ")
        name = name.upper()
        words = value.upper().split()
        if name in ("UTF8", "UTF-8"):
            return self._opts_utf8(words)
        if name == "MLST":
            # RFC 3659 7.9: select facts; unknown ones are ignored.
            wanted = {f.lower() for f in value.split(";") if f}
            self.session.facts = {f for f in FACTS if f.lower() in wanted}
            chosen = "".join(f + ";" for f in FACTS if f in self.session.facts)
            # RFC 3659 7.9.1: "MLST OPTS" [ SP 1*( factname ";" ) ]
            return Reply(200, f"MLST OPTS {chosen}".rstrip())
        if name == "HASH":
            if not words:
                return Reply(200, self.session.hash_algorithm)
            algorithm = value.strip().upper()
            if algorithm not in HASHES:
                return Reply(504, f"Unknown algorithm; use one of {', '.join(HASHES)}")
            self.session.hash_algorithm = algorithm
            return Reply(200, algorithm)
        return Reply(501, f"Option not understood: {option[:40]}")

    def _opts_utf8(self, words: list[str]) -> Reply:
        """
        OPTS UTF8 ON: names in UTF-8 from now on (the client says it speaks
        it); OFF: in the configured legacy encoding, refused when there is
        none (see L{cosgw.frontends.ftp.encoding}).
        """
        if words == ["OFF"]:
            if not self.names.set_utf8(False):
                return Reply(
                    504,
                    "UTF8 cannot be turned off: no other name encoding is configured",
                )
            state = "off"
        elif words in ([], ["ON"]):
            self.names.set_utf8(True)
            state = "on"
        else:
            return Reply(501, "OPTS UTF8 ON or OFF")
        return Reply(200, f"UTF8 {state}: names are {label(self.names.codec)}")

    def ftp_HELP(self, command: str) -> Reply:
        if command:
            known = self.commands.get(command.strip().upper())
            if known is None:
                return Reply(502, f"Unknown command {command.strip()[:16]}")
            return Reply(214, f"Syntax: {known.syntax}")
        self.sendLine("214-The following commands are recognized:")
        names = sorted(self.commands)
        for i in range(0, len(names), 8):
            self.sendLine(" " + " ".join(f"{n:<8}" for n in names[i : i + 8]))
        return Reply(214, "Help OK")

    def ftp_CLNT(self, name: str) -> Reply:
        log.info(
            "client {peer} says it is {name}",
            peer=self.peer.host,
            name=for_log(name[:80]),
        )
        return Reply(200, "Noted")

    def ftp_TYPE(self, kind: str) -> Reply:
        words = kind.upper().split()
        if words in (["I"], ["L", "8"]):
            self.session.binary = True
            return Reply(200, "Type set to I")
        if words in (["A"], ["A", "N"]):
            self.session.binary = False
            return Reply(200, "Type set to A (bytes are transferred unchanged)")
        return Reply(504, f"Type not supported: {kind[:20]}")

    def ftp_STRU(self, structure: str) -> Reply:
        """RFC 959 STRU: only F (file), the structure every client uses."""
        if structure.upper() == "F":
            return Reply(200, "Command OK")
        return Reply(504, f"Not implemented for parameter '{structure}'.")

    def ftp_MODE(self, mode: str) -> Reply:
        """RFC 959 MODE: only S (stream)."""
        if mode.upper() == "S":
            return Reply(200, "Command OK")
        return Reply(504, f"Not implemented for parameter '{mode}'.")

    def ftp_ALLO(self, size: str) -> Reply:
        """RFC 959 ALLO: no storage to reserve; the size sizes the parts."""
        words = size.split()
        if words and words[0].isdigit():
            self.session.allocated = int(words[0])
        return Reply(202, "No storage allocation necessary")

    async def ftp_SITE(self, command: str) -> Reply:
        sub, _, rest = command.strip().partition(" ")
        sub = sub.upper()
        if sub in ("", "HELP"):
            self.sendLine("214-SITE commands:")
            for text in SITE_HELP.values():
                self.sendLine(" " + text)
            return Reply(214, "Help OK")
        if sub == "CHMOD":
            mode, _, path = rest.strip().partition(" ")
            if not mode or not path:
                return Reply(501, "SITE CHMOD <mode> <path>")
            await self.fs.stat(self.resolve(path))
            return Reply(200, "SITE CHMOD accepted; object storage keeps no modes")
        if sub == "CRC64":
            entry = await self.fs.stat(self.resolve(rest.strip()))
            if entry.is_dir or entry.crc64 is None:
                return Reply(550, f"{rest.strip()}: no CRC-64 stored for this file")
            return Reply(213, f"{entry.crc64}")
        return Reply(502, f"SITE {sub[:16]} not implemented")

    async def ftp_STAT(self, path: str) -> Optional[Reply]:
        """
        RFC 959 STAT.  During a transfer: its progress.  Without an argument:
        the session's status.  With a path: its listing, over the control
        connection (213), streamed page by page like LIST: the next page is
        fetched once the client has read enough of this one, so a client
        that does not read holds at most the send buffer and one page.
        """
        if not path:
            for line in self._status():
                self.sendLine(line)
            return Reply(211, "End of status")
        segments = self.resolve(path)
        fs = self.fs
        listing = fs.listing(segments)
        page = await listing.next_page()
        now = self.reactor.seconds()
        self.sendLine(f"213-Status of {vfs.display(segments)}:")
        while page is not None:
            for entry in page:
                # A leading space: no line can pass for a reply code
                # (RFC 959 4.2); sendLine shows control characters as '?'.
                shown = self.names.shown_entry(entry)
                self.sendLine(
                    " " + format_list_line(shown, fs.permissions, fs.user, now)
                )
            await self.replies_flushed()
            if self.session.over:
                # The connection is closing: the listing is cut short.
                listing.close(ConnectionError("the connection closed"))
                return None
            page = await listing.next_page()
        return Reply(213, "End of status")

    def _status(self) -> list[str]:
        """STAT's lines before its 211: the session, and the transfer running."""
        session = self.session
        lines = [
            "211-cosgw FTP gateway status:",
            f" Connected from {self.peer.host}",
            f" Logged in as {session.user}",
            f" TYPE: {'BINARY' if session.binary else 'ASCII (bytes unchanged)'}",
            f" REST offset: {session.restart}",
        ]
        transfer = self.transfer
        if transfer is None:
            return lines + [" No transfer in progress"]
        unit = "entries" if transfer.command in ("LIST", "NLST", "MLSD") else "bytes"
        lines.append(
            f" Transfer in progress: {transfer.command} {transfer.argument}: "
            f"{transfer.counter()} {unit} in {transfer.elapsed():.1f}s"
        )
        return lines
