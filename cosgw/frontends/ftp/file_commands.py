"""
Moving around and changing files: PWD, CWD, CDUP, MKD, RMD, DELE, RNFR,
RNTO, SIZE, MDTM, MFMT and MLST (and the X* aliases of RFC 775).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from datetime import datetime, timezone
from typing import Optional

from cosgw import vfs
from cosgw.frontends.ftp.context import CommandContext
from cosgw.frontends.ftp.facts import format_facts
from cosgw.frontends.ftp.replies import Reply, quote_path


def parse_time(stamp: str) -> Optional[float]:
    """YYYYMMDDHHMMSS[.sss] in UTC (RFC 3659 time-val) to epoch seconds."""
    digits, _, fraction = stamp.partition(".")
    if len(digits) != 14 or not digits.isdigit():
        return None
    try:
        t = datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    extra = float("0." + fraction) if fraction.isdigit() else 0.0
    return t.timestamp() + extra


class FileCommands(CommandContext):
    """Navigation and the commands that change or describe one file."""

    def ftp_PWD(self) -> Reply:
        shown = quote_path(vfs.display(self.session.working_directory))
        return Reply(257, f"{shown} is the current directory")

    def ftp_XPWD(self) -> Reply:
        return self.ftp_PWD()

    async def ftp_CWD(self, path: str) -> Reply:
        segments = self.resolve(path)
        await self.fs.require_directory(segments)
        self.session.working_directory = segments
        return Reply(250, f"Directory changed to {vfs.display(segments)}")

    def ftp_XCWD(self, path: str) -> Awaitable[Reply]:
        return self.ftp_CWD(path)

    def ftp_CDUP(self) -> Awaitable[Reply]:
        return self.ftp_CWD("..")

    def ftp_XCUP(self) -> Awaitable[Reply]:
        return self.ftp_CDUP()

    async def ftp_MKD(self, path: str) -> Reply:
        segments = self.resolve(path)
        await self.fs.mkdir(segments)
        return Reply(257, f"{quote_path(vfs.display(segments))} created")

    def ftp_XMKD(self, path: str) -> Awaitable[Reply]:
        return self.ftp_MKD(path)

    async def ftp_RMD(self, path: str) -> Reply:
        await self.fs.rmdir(self.resolve(path))
        return Reply(250, "Directory removed")

    def ftp_XRMD(self, path: str) -> Awaitable[Reply]:
        return self.ftp_RMD(path)

    async def ftp_DELE(self, path: str) -> Reply:
        await self.fs.remove(self.resolve(path))
        return Reply(250, "File removed")

    async def ftp_RNFR(self, path: str) -> Reply:
        segments = self.resolve(path)
        self.fs.require("rename", segments)
        await self.fs.stat(segments)
        self.session.start_rename(segments)
        return Reply(350, "Ready for RNTO")

    async def ftp_RNTO(self, path: str) -> Reply:
        source = self.session.take_rename_source()
        if source is None:
            raise Reply(503, "RNFR required first")
        await self.fs.rename(source, self.resolve(path))
        return Reply(250, "Rename successful")

    async def ftp_SIZE(self, path: str) -> Reply:
        try:
            size = await self.fs.restart_size(self.resolve(path))
        except vfs.IsADirectory:
            raise Reply(550, f"{path}: not a plain file") from None
        return Reply(213, str(size))

    async def ftp_MDTM(self, path: str) -> Reply:
        entry = await self.fs.stat(self.resolve(path))
        if entry.is_dir:
            raise Reply(550, f"{path}: not a plain file")
        return Reply(213, time.strftime("%Y%m%d%H%M%S", time.gmtime(entry.mtime)))

    async def ftp_MFMT(self, argument: str) -> Reply:
        """MFMT YYYYMMDDHHMMSS path (draft-somers-ftp-mfxx): set mtime."""
        stamp, _, path = argument.partition(" ")
        when = parse_time(stamp)
        if when is None or not path:
            return Reply(501, "MFMT <YYYYMMDDHHMMSS> <path>")
        await self.fs.set_mtime(self.resolve(path), when)
        return Reply(213, f"Modify={stamp[:14]}; {path}")

    async def ftp_MLST(self, path: str) -> Reply:
        segments = self.resolve(path)
        fs = self.fs
        entry = await fs.stat(segments)
        facts = format_facts(
            entry,
            fs.dir_prefix(segments) if entry.is_dir else fs.key(segments),
            fs.permissions,
            self.session.facts,
        )
        shown = vfs.display(segments)
        self.sendLine(f"250-Listing {shown}")
        self.sendLine(f" {facts} {shown}")
        return Reply(250, "End")
