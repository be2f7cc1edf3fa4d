"""
Digests of stored files, so a client can check a transfer without reading
the file back: HASH and RANG (draft-bryan-ftpext-hash), and the older
XCRC, XMD5, XSHA1 and XSHA256.
"""

from __future__ import annotations

from collections.abc import Awaitable

from cosgw.frontends.ftp.context import CommandContext
from cosgw.frontends.ftp.replies import Reply


class HashCommands(CommandContext):
    """File digests, whole or of a byte range."""

    def ftp_RANG(self, argument: str) -> Reply:
        """RANG start end: the byte range of the next HASH (draft-bryan)."""
        words = argument.split()
        if len(words) != 2 or not all(w.isdigit() for w in words):
            return Reply(501, "RANG <start> <end>")
        start, end = int(words[0]), int(words[1])
        if (start, end) == (1, 0):
            self.session.hash_range = None
            return Reply(350, "Range reset")
        if end < start:
            return Reply(501, "RANG end before start")
        self.session.hash_range = (start, end)
        return Reply(350, f"Restarting at {start}. Ending byte {end}.")

    async def ftp_HASH(self, path: str) -> Reply:
        session = self.session
        start, end = session.hash_range or (0, None)
        session.hash_range = None
        algorithm = session.hash_algorithm
        segments = self.resolve(path)
        digest, first, last = await self.fs.digest(segments, algorithm, start, end)
        return Reply(213, f"{algorithm} {first}-{last} {digest} {path}")

    async def _x_digest(self, algorithm: str, argument: str) -> Reply:
        """XCRC/XMD5/XSHA*: 'path [start end]', 250 and the bare digest."""
        words = argument.rsplit(" ", 2)
        start, end = 0, None
        if len(words) == 3 and words[1].isdigit() and words[2].isdigit():
            path, start, end = words[0], int(words[1]), int(words[2]) - 1
        else:
            path = argument
        path = path.strip('"')
        digest, _, _ = await self.fs.digest(self.resolve(path), algorithm, start, end)
        return Reply(250, digest.upper() if algorithm == "CRC32" else digest)

    def ftp_XCRC(self, argument: str) -> Awaitable[Reply]:
        return self._x_digest("CRC32", argument)

    def ftp_XMD5(self, argument: str) -> Awaitable[Reply]:
        return self._x_digest("MD5", argument)

    def ftp_XSHA1(self, argument: str) -> Awaitable[Reply]:
        return self._x_digest("SHA-1", argument)

    def ftp_XSHA256(self, argument: str) -> Awaitable[Reply]:
        return self._x_digest("SHA-256", argument)
