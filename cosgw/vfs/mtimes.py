"""
Modification times clients set (FTP's MFMT, SFTP's setstat).

A time is kept twice: as the object's metadata, which a stat (HEAD) shows,
and in a per-directory index, L{MTIME_INDEX}, because COS's listings carry
no user metadata.  An index entry applies only while the object still has
the size and store time it had right after the time was set, so a later
upload makes it stale by itself.
"""

from __future__ import annotations

import json

from twisted.logger import Logger

from cosgw.interfaces import IObjectStore, NoSuchKey, ObjectInfo
from cosgw.vfs.names import MTIME_INDEX

log = Logger()

#: Entries an index keeps; past it, the oldest tenth goes.
_MTIME_INDEX_LIMIT = 10_000

#: An index: name -> [client time, object size, store time].
Index = dict[str, list[float]]


def client_mtime(info: ObjectInfo) -> float:
    """The time a client set (object metadata) if any, else the store's."""
    value = info.metadata.get("mtime")
    if value is not None:
        try:
            return float(value)
        except ValueError:
            pass
    return info.mtime


def listed_mtime(index: Index, name: str, info: ObjectInfo) -> float:
    """The time a listing shows for C{info}: the index's while it applies."""
    known = index.get(name)
    if known and known[1] == info.size and abs(known[2] - info.mtime) < 1:
        return known[0]
    return client_mtime(info)


async def read_index(store: IObjectStore, prefix: str) -> Index:
    """The directory's index of client-set times; {} when it has none."""
    try:
        source = await store.open(prefix + MTIME_INDEX)
    except NoSuchKey:
        return {}
    chunks = []
    try:
        while chunk := await source.read(1 << 20):
            chunks.append(chunk)
    finally:
        source.close()
    try:
        index = json.loads(b"".join(chunks))
    except ValueError:
        log.warn(
            "ignoring an unreadable {name} in {prefix}",
            name=MTIME_INDEX,
            prefix=prefix,
        )
        return {}
    return index if isinstance(index, dict) else {}


async def set_mtime(store: IObjectStore, key: str, prefix: str, when: float) -> None:
    """
    Keep C{when} as the time of the file C{key} in the directory C{prefix}:
    in its metadata (an object's metadata can only change by copying it
    onto itself), then in the directory's index.
    """
    info = await store.copy(key, key, {"mtime": f"{when:.0f}"})
    index = await read_index(store, prefix)
    index[key[len(prefix) :]] = [when, info.size, info.mtime]
    if len(index) > _MTIME_INDEX_LIMIT:
        for name in sorted(index, key=lambda n: index[n][2])[: len(index) // 10]:
            del index[name]
    data = json.dumps(index, ensure_ascii=False, sort_keys=True).encode("utf-8")
    await store.put(prefix + MTIME_INDEX, data)
