"""
The changes a user makes to names (mkdir, rmdir, delete, a file's time
and size),
over prefixes and marker objects.  Each is one audit event, emitted by
L{ObjectFileSystem} once the store answered; renames are in
L{cosgw.vfs.renames}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from twisted.logger import Logger

from cosgw.interfaces import Entry, NoSuchKey
from cosgw.vfs import mtimes
from cosgw.vfs.errors import (
    AlreadyExists,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotSupported,
    PermissionDenied,
)
from cosgw.vfs.names import MTIME_INDEX, display

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem

log = Logger()


async def set_mtime(fs: ObjectFileSystem, segments: Sequence[str], when: float) -> None:
    """
    Keep C{when} as the file's time: its HEAD (which fails if there is no
    file) and the LIST of its markers at once, the new marker's PUT, then
    the old markers' DELETEs (see L{mtimes}).
    """
    if not segments:
        raise IsADirectory("/")
    key = fs.key(segments)
    check_time_fits(fs, segments)
    try:
        info, old = await mtimes.head_and_markers(fs, key)
    except NoSuchKey:
        if await fs._has_contents(key + "/"):
            raise IsADirectory(display(segments)) from None
        raise
    await fs.times.set(key, when, info, old)
    entry = Entry(segments[-1], False, info.size, when, info.crc64)
    fs.known.changed(key, entry, True)


def check_time_fits(fs: ObjectFileSystem, segments: Sequence[str]) -> None:
    """
    @raise NotSupported: the file's path is so long that the marker of its
        time would pass COS's 850 bytes; the file keeps the store's time.
    """
    if not fs.times.fits(fs.key(segments)):
        log.warn(
            "{user}: the time of {path} cannot be kept: its path is too long",
            user=fs.user,
            path=display(segments),
        )
        raise NotSupported(
            display(segments),
            "cannot keep a time for a path this long (COS keys are at most 850 bytes)",
        )


async def mkdir(fs: ObjectFileSystem, segments: Sequence[str]) -> None:
    """A directory's marker object, where nothing is yet."""
    if not segments:
        raise AlreadyExists("/")
    key = fs.key(segments)
    if await fs._before_write(segments) is not None:
        raise AlreadyExists(display(segments))
    await fs.store.put(key + "/", b"")
    fs.directories.saw(segments)


async def keep_directory(fs: ObjectFileSystem, segments: Sequence[str]) -> None:
    """
    Write the marker of the directory at C{segments} if nothing else keeps
    it in existence any more.
    """
    if not segments:
        return
    prefix = fs.dir_prefix(segments)
    if not await fs._has_contents(prefix):
        await fs.store.put(prefix, b"")


async def rmdir(fs: ObjectFileSystem, segments: Sequence[str]) -> None:
    """Remove an empty directory (its marker and its index of times)."""
    if not segments:
        raise PermissionDenied("/", "cannot remove the home directory")
    prefix = fs.dir_prefix(segments)
    # The marker and the mtime index are not contents.
    page = await fs.store.list(prefix, delimiter="/", max_keys=3)
    hidden = (prefix, prefix + MTIME_INDEX)
    others = [o for o in page.objects if o.key not in hidden] + list(page.prefixes)
    if others:
        raise NotEmpty(display(segments))
    if not page.objects:
        # Nothing below the prefix: a file, or nothing (no second LIST).
        await fs._head_entry(segments, with_time=False)  # NoSuchKey: not found
        raise NotADirectory(display(segments))
    if any(o.key == prefix + MTIME_INDEX for o in page.objects):
        # An earlier version's index of times, of files long gone.
        await fs.store.delete(prefix + MTIME_INDEX)
    await fs.store.delete(prefix)
    fs.directories.forget(segments)
    await keep_directory(fs, segments[:-1])


async def remove(fs: ObjectFileSystem, segments: Sequence[str]) -> None:
    """Remove a file; the quota follows."""
    if not segments:
        raise IsADirectory("/")
    key = fs.key(segments)
    try:
        # Its size (the quota) and its markers (the time a client set), as
        # the store has them: the last chance to remove them.
        info, markers = await mtimes.head_and_markers(fs, key, fresh=True)
    except NoSuchKey:
        # No file: a directory, or nothing (the HEAD said so already).
        if await fs._has_contents(key + "/"):
            raise IsADirectory(display(segments)) from None
        raise
    await fs.store.delete(key)
    await fs.times.remove(key, markers, gone=True)
    if fs.usage is not None:
        fs.usage.removed(info.size, key)
    await keep_directory(fs, segments[:-1])


async def set_attributes(
    fs: ObjectFileSystem,
    segments: Sequence[str],
    size: Optional[int],
    mtime: Optional[float],
) -> None:
    """
    SETSTAT by path: a size is honoured only when it is the current size or
    0 (an empty upload); a time is kept as MFMT keeps it, when it differs.
    """
    entry = await fs._stat(segments)
    if size is not None and size != entry.size:
        if entry.is_dir or size != 0:
            raise NotSupported(
                display(segments),
                "a stored file's size can only be changed to 0 "
                "(upload it again instead)",
            )
        upload = await fs.open_upload(segments)
        await upload.commit()
    if mtime is not None and not entry.is_dir:
        fs.require("overwrite", segments)
        if int(mtime) != int(entry.mtime):
            await set_mtime(fs, segments, float(mtime))
