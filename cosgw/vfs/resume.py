"""
Interrupted uploads a client can resume (FTP's REST n + STOR, APPE, SIZE;
SFTP's append to a new file).  A dropped upload of a new file keeps its
whole parts invisible in the store; a later upload of the same file that
starts where they end continues that multipart upload instead of sending
them again.

The rule that keeps this from ever replacing good data: an upload is kept
only for a name with no visible object.  While a file is visible, SIZE,
APPE and REST n + STOR see the file and nothing else; an interrupted
overwrite is discarded and the old file stays whole (L{cosgw.vfs.upload}).
A kept upload is discarded (L{supersede}) as soon as it can no longer be
resumed: when an upload of its name starts from byte 0 (as STOR truncates a
file on disk), when another upload of the name is kept, when an object
appears under the name.  So a name has at most one kept upload, and its
parts count against the user's quota until it is resumed or discarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.interfaces import IObjectStore, NoSuchUpload, PartInfo, PendingUpload
from cosgw.transfer import UploadRegistry, contiguous_parts, log_cleanup_failure

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem

log = Logger()


@dataclass(frozen=True)
class Resumable:
    """An interrupted upload with whole parts 1..k stored."""

    upload: PendingUpload
    parts: list[PartInfo]
    size: int


async def find_resumable(
    store: IObjectStore, key: str, registry: UploadRegistry
) -> Optional[Resumable]:
    """
    The newest interrupted upload of C{key}, a name with no visible object,
    that can be resumed: not being written by this gateway (C{registry}),
    with whole parts 1..k stored.  The registry learns it as kept, so that
    a new upload of the name discards it.
    """
    uploads = [
        u
        for u in await store.list_multipart(key)
        if u.key == key and u.upload_id not in registry
    ]
    for upload in sorted(uploads, key=lambda u: u.initiated, reverse=True):
        try:
            parts = contiguous_parts(await store.list_parts(key, upload.upload_id))
        except NoSuchUpload:
            continue
        if parts:
            registry.keep(store, key, upload.upload_id)
            return Resumable(upload, parts, sum(p.size for p in parts))
    return None


async def supersede(fs: ObjectFileSystem, key: str, keep: Optional[str] = None) -> int:
    """
    Abort the kept uploads of C{key} that this gateway knows of (its
    registry, the user's quota), but C{keep}: they can no longer be resumed.
    No store request when there are none.  A failed abort is logged and
    left to the sweeper.

    @return: how many were aborted.
    """
    doomed = set(fs.registry.kept(fs.store, key))
    if fs.usage is not None:
        doomed.update(fs.usage.kept_uploads(key))
    doomed.discard(keep or "")
    aborted = 0
    for upload_id in sorted(doomed):
        try:
            await fs.store.abort_multipart(key, upload_id)
        except Exception:
            log_cleanup_failure(
                log,
                Failure(),
                "{user}: discarding the kept upload {upload_id} of {key}",
                user=fs.user,
                upload_id=upload_id,
                key=key,
            )
            continue
        fs.registry.gone(upload_id)
        aborted += 1
        log.info(
            "{user}: discarded the upload of {key} kept for a resume "
            "({upload_id}): it can no longer be resumed",
            user=fs.user,
            key=key,
            upload_id=upload_id,
        )
    return aborted
