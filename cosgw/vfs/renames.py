"""
Renames over an object store, which has none: a file is copied server-side
then deleted; a directory is every key below its prefix copied, then every
source deleted, so that a rename that fails half-way leaves every source in
place (see L{rename_tree}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from twisted.logger import Logger

from cosgw.interfaces import ObjectInfo
from cosgw.vfs import changes, mtimes
from cosgw.vfs.directories import together
from cosgw.vfs.errors import AlreadyExists, InvalidName, IsADirectory, PermissionDenied
from cosgw.vfs.names import MTIME_INDEX, display
from cosgw.vfs.resume import supersede

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem

log = Logger()


async def rename(
    fs: ObjectFileSystem,
    source: Sequence[str],
    target: Sequence[str],
    replace: bool = True,
) -> None:
    """
    Rename the file or directory at C{source} to C{target}; a file replaces
    a file there (with the C{overwrite} permission, and unless C{replace}
    is False), never a directory.
    The quota follows, and an upload kept for a resume of the target's
    name is discarded: the name now has a visible object.
    """
    if not source or not target:
        raise PermissionDenied("/", "cannot rename the home directory")
    # The source's stat and the target's checks at once.
    entry, existing = await together(
        fs._stat(source, with_time=False), fs._before_write(target)
    )
    if list(target[: len(source)]) == list(source) and entry.is_dir:
        raise InvalidName(display(target), "cannot move a directory into itself")
    if existing is not None and not replace and list(target) != list(source):
        raise AlreadyExists(display(target))
    if entry.is_dir:
        if existing is not None:
            raise AlreadyExists(display(target))
        await rename_tree(fs, source, target)
        fs.directories.forget(source)
        fs.directories.saw(target)
    else:
        if existing is not None:
            if existing.is_dir:
                raise IsADirectory(display(target))
            fs.require("overwrite", target)
        src_key, dst_key = fs.key(source), fs.key(target)
        if src_key == dst_key:
            return
        # The copy, and at once the LIST of the source's markers, as the
        # store has them (the time the file shows must go with it).
        copy, markers = await mtimes.both(
            fs.store.copy(src_key, dst_key), fs.times.fresh(src_key)
        )
        if existing is not None:
            # The replaced file's times (known ones: any other is stale, as
            # the copy is another object, and goes with the name's delete).
            await fs.times.remove(dst_key, await fs.times.markers(dst_key))
        if markers:
            # The time a client set follows the file, if it still applies.
            info = await fs.store.head(src_key)
            await fs.times.moved(src_key, info, markers, dst_key, copy)
        await fs.store.delete(src_key)
        if fs.usage is not None:
            if existing is not None:
                fs.usage.removed(existing.size)  # the file it replaced
            fs.usage.moved(src_key, dst_key, entry.size)
        await supersede(fs, dst_key)
    await changes.keep_directory(fs, source[:-1])


async def rename_tree(
    fs: ObjectFileSystem, source: Sequence[str], target: Sequence[str]
) -> None:
    """
    Copy every key below C{source} to C{target}, then delete the sources.
    If it fails half-way, every source is still in place (deletion only
    starts after all copies succeeded) and the copies made so far stay
    under the target: retrying the rename, or removing the target, is
    safe.
    """
    src_prefix, dst_prefix = fs.dir_prefix(source), fs.dir_prefix(target)
    copied: list[str] = []
    #: Source and copy of each file, for the markers of their times.
    copies: dict[str, tuple[ObjectInfo, ObjectInfo]] = {}
    marker = ""
    while True:
        page = await fs.store.list(src_prefix, delimiter="", marker=marker)
        for info in page.objects:
            if info.key.endswith("/" + MTIME_INDEX):
                # An earlier version's index: its times become markers.
                await fs.times.migrate(fs.store, info.key[: -len(MTIME_INDEX)])
                continue
            destination = dst_prefix + info.key[len(src_prefix) :]
            copy = await _copy_object(fs, info, destination)
            if copy is not None:
                copies[info.key] = (info, copy)
            copied.append(info.key)
        if page.next_marker is None:
            break
        marker = page.next_marker
        log.info(
            "{user}: renaming {source}: {count} objects copied",
            user=fs.user,
            source=display(source),
            count=len(copied),
        )
    if src_prefix not in copied:
        await fs.store.put(dst_prefix, b"")
    markers = await fs.times.tree(src_prefix)
    for key, found in markers.items():
        if key in copies:
            info, copy = copies[key]
            await fs.times.moved(key, info, found, copy.key, copy)
        else:
            await fs.times.remove(key, found, gone=True)  # of a file gone
    # Contents before their directory markers (reverse key order puts
    # "a/b" before "a/"), so no directory outlives its files on a store
    # that keeps directories as real ones.
    for key in sorted(copied, reverse=True):
        await fs.store.delete(key)
    log.info(
        "{user}: renamed {source} to {target} ({count} objects)",
        user=fs.user,
        source=display(source),
        target=display(target),
        count=len(copied),
    )


async def _copy_object(
    fs: ObjectFileSystem, info: ObjectInfo, destination: str
) -> Optional[ObjectInfo]:
    """The copy of a file (None for a directory's marker)."""
    if info.key.endswith("/"):
        await fs.store.put(destination, b"")
        return None
    return await fs.store.copy(info.key, destination)
