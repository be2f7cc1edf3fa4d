"""
SFTP's OPEN over an object store: POSIX open's flags decide what an open
file is (see L{cosgw.vfs.editing}): a reader, an upload begun at once, or a
file whose first write decides.  The checks (the parent directory, the
permissions, what is there) are made here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from twisted.internet.interfaces import IPushProducer

from cosgw.transfer import RandomAccessSettings
from cosgw.vfs.editing import OpenFlags, RandomAccessFile
from cosgw.vfs.errors import AlreadyExists, IsADirectory, NotFound
from cosgw.vfs.names import display

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem


async def open_file(
    fs: ObjectFileSystem,
    segments: Sequence[str],
    flags: OpenFlags,
    settings: RandomAccessSettings,
    producer: Optional[IPushProducer],
    since: float = 0.0,
) -> RandomAccessFile:
    """
    Open C{segments} as L{ObjectFileSystem.open_file} describes; what it
    hands out is recorded from C{since}, when the open began.
    """
    path = display(segments)
    if not flags.writes and not flags.create:
        reader = await fs._reader(segments, 0, settings, since)
        return RandomAccessFile(fs, segments, flags, settings, producer, reader=reader)
    # What is there (one LIST) and, for a write, its directory at once.
    existing = await (fs._before_write if flags.writes else fs._probe)(segments)
    if not flags.writes and existing is not None and not flags.exclusive:
        # O_CREAT alone on an existing file opens it, as POSIX does.
        reader = await fs._reader(segments, 0, settings, since)
        return RandomAccessFile(fs, segments, flags, settings, producer, reader=reader)
    fs.require("upload", segments)
    if existing is not None:
        if existing.is_dir:
            raise IsADirectory(path)
        if flags.create and flags.exclusive:
            raise AlreadyExists(path)
        fs.require("overwrite", segments)
    elif not flags.create:
        raise NotFound(path)
    file = RandomAccessFile(fs, segments, flags, settings, producer, existing=existing)
    if existing is None and not flags.truncate:
        # A name whose interrupted upload was kept (here or on another
        # gateway): APPEND resumes it (reput's way); else the first write
        # decides, as for a file (resume at its end, else begin anew).
        if flags.append:
            await file.start_stream(append=True, checked=flags.writes, since=since)
            return file
        file.kept = await fs._resumable(fs.key(segments), None)
        if file.kept is not None:
            return file
    if existing is None or flags.truncate:
        await file.start_stream(append=False, checked=flags.writes, since=since)
    elif flags.append:
        await file.start_stream(append=True, checked=True, since=since)
    return file
