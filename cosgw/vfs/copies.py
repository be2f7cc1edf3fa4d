"""
Copies of a file within a user's file system (WebDAV's COPY): one
server-side copy in the store, never the bytes through the gateway, with
the user's permissions (download the source, upload the target, overwrite
a file there) and quota (the copy is a new file of the source's size).
A collection is copied by its frontend file by file, so that each file's
outcome can be told to the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cosgw.policy.quota import QuotaFull
from cosgw.vfs.directories import together
from cosgw.vfs.errors import AlreadyExists, InvalidName, IsADirectory, PermissionDenied
from cosgw.vfs.names import display
from cosgw.vfs.resume import supersede

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem


async def copy(
    fs: ObjectFileSystem,
    source: Sequence[str],
    target: Sequence[str],
    replace: bool = True,
) -> None:
    """
    Copy the file at C{source} to C{target}, replacing a file there unless
    C{replace} is False (then L{AlreadyExists}); never a directory
    (L{IsADirectory} for either side).
    """
    if not source or not target:
        raise PermissionDenied("/", "cannot copy the home directory")
    fs.require("upload", target)
    entry, existing = await together(fs._stat(source), fs._before_write(target))
    if entry.is_dir:
        raise IsADirectory(display(source))
    if existing is not None:
        if existing.is_dir:
            raise IsADirectory(display(target))
        if not replace:
            raise AlreadyExists(display(target))
        fs.require("overwrite", target)
    src_key, dst_key = fs.key(source), fs.key(target)
    if src_key == dst_key:
        raise InvalidName(display(target), "source and destination are the same")
    budget = None
    if fs.usage is not None:
        await fs.usage.ensure()
        budget = fs.usage.reserve(
            dst_key,
            replacing=existing.size if existing is not None else 0,
            new_file=existing is None,
        )
        if not budget.grow(entry.size):
            budget.release()
            raise QuotaFull(f"disk quota reached ({fs.usage.max_bytes} bytes)")
    try:
        await fs.store.copy(src_key, dst_key)
    except BaseException:
        if budget is not None:
            budget.release()
        raise
    if budget is not None:
        budget.commit(entry.size)
    fs.directories.saw(target[:-1])
    await supersede(fs, dst_key)
