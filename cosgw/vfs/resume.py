"""
Interrupted uploads a client can resume (FTP's REST n + STOR, APPE, SIZE;
SFTP's write at the end of a file).  A dropped upload keeps its whole parts
invisible in the store; a later upload of the same file that starts where
they end continues that multipart upload instead of sending them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cosgw.interfaces import Entry, IObjectStore, NoSuchUpload, PartInfo, PendingUpload
from cosgw.transfer import UploadRegistry, contiguous_parts


@dataclass(frozen=True)
class Resumable:
    """An interrupted upload with whole parts 1..k stored."""

    upload: PendingUpload
    parts: list[PartInfo]
    size: int


async def find_resumable(
    store: IObjectStore,
    key: str,
    existing: Optional[Entry],
    registry: UploadRegistry,
) -> Optional[Resumable]:
    """
    The newest interrupted upload of C{key} that can be resumed: not
    being written by this gateway (C{registry}), begun after the object
    C{existing} (if any) was last written, with whole parts 1..k stored.
    """
    uploads = [
        u
        for u in await store.list_multipart(key)
        if u.key == key and u.upload_id not in registry
    ]
    if existing is not None:
        uploads = [u for u in uploads if u.initiated >= existing.mtime - 1]
    for upload in sorted(uploads, key=lambda u: u.initiated, reverse=True):
        try:
            parts = contiguous_parts(await store.list_parts(key, upload.upload_id))
        except NoSuchUpload:
            continue
        if parts:
            return Resumable(upload, parts, sum(p.size for p in parts))
    return None
