"""
Digests of a stored file's bytes (FTP's HASH, XCRC, XMD5, ...), streamed
from the store and hashed in the gateway's thread pool, one chunk at a
time, so a large file costs neither memory nor reactor time.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Any, Optional

from cosgw.interfaces import IByteSource, IntegrityError


class _Crc32:
    """zlib's CRC-32 with hashlib's update/hexdigest shape."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


#: Digest algorithms by their draft-bryan-ftpext-hash names.
DIGESTS: dict[str, Callable[[], Any]] = {
    "SHA-256": hashlib.sha256,
    "SHA-512": hashlib.sha512,
    "SHA-1": hashlib.sha1,
    "MD5": hashlib.md5,
    "CRC32": _Crc32,
}


async def digest_source(
    source: IByteSource,
    algorithm: str,
    start: int,
    end: Optional[int],
    chunk: int,
    runner: Optional[Any],
    path: str,
) -> tuple[str, int, int]:
    """
    Hash bytes C{start..end} (inclusive; to the end when None) of
    C{source}, which starts at C{start}, and close it.

    @param runner: runs the hashing in the thread pool; without one (unit
        tests) it runs inline.
    @return: (hex digest, first byte, last byte).
    @raise IntegrityError: the stream ended early.
    """
    last = source.info.size - 1 if end is None else min(end, source.info.size - 1)
    remaining = max(0, last - start + 1)
    state = DIGESTS[algorithm]()
    try:
        while remaining:
            data = await source.read(min(remaining, chunk))
            if not data:
                raise IntegrityError(f"{path}: ended early")
            data = data[:remaining]
            remaining -= len(data)
            if runner is not None:
                await runner.run(state.update, data)
            else:
                state.update(data)
    finally:
        source.close()
    return state.hexdigest(), start, max(start, last)
