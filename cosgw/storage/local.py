"""
A local directory behind the object-store interface: the embedded default.

It gives a directory the semantics cosgw relies on from COS, so the layers
above cannot tell the difference:

  - An object becomes visible only when complete: every write goes to a
    hidden temporary file under C{.cosgw-tmp/} in the same file system and
    is moved into place with an atomic rename.  Multipart uploads keep their
    parts there until completion or abort.
  - A key ending in C{/} is a directory marker; here it is a real directory.
  - Listings are sorted by code point (the same order as COS's UTF-8 byte
    order) and paged with a marker.

A directory cannot hold a file and a subdirectory of the same name, as a
bucket can; writing such a key fails with L{KeyConflict}.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from cosgw.interfaces import (
    IByteSource,
    IObjectStore,
    KeyConflict,
    KeyRefused,
    ListPage,
    NoSuchKey,
    NoSuchUpload,
    ObjectInfo,
    PartInfo,
    PendingUpload,
    StoreError,
)
from cosgw.privileges import as_gateway_user
from cosgw.storage._runner import (
    BlockingRunner,
    ThreadedStore,
    check_copy_range,
    check_read_range,
)
from cosgw.storage.checksum import StreamCheck, crc64

#: The hidden directory for temporary files and multipart parts; it is never
#: listed and no key may name it.
TMP_DIR = ".cosgw-tmp"
#: The longest name most file systems take, in bytes (Linux's NAME_MAX);
#: L{LocalStore.prepare} asks the directory's own.
_NAME_MAX = 255
_COPY_CHUNK = 1024 * 1024
#: The name of a stored part in an upload's directory.
_PART_NAME = re.compile(r"([0-9]+)\.part")


def _mtime_from(metadata: Optional[Mapping[str, str]]) -> Optional[float]:
    if metadata and "mtime" in metadata:
        try:
            return float(metadata["mtime"])
        except ValueError:
            return None
    return None


@implementer(IByteSource)
class _FileSource:
    """Reads an open file in the pool; the open descriptor is a snapshot."""

    def __init__(
        self,
        runner: BlockingRunner,
        fobj: BinaryIO,
        info: ObjectInfo,
        offset: int,
        end: Optional[int],
    ) -> None:
        self._runner = runner
        self._file: Optional[BinaryIO] = fobj
        self.info = info
        self.offset = offset
        stop = info.size if end is None else min(end, info.size)
        self.length = max(0, stop - offset)
        self._check = StreamCheck(info.key, self.length, None)

    def _read(self, size: int) -> bytes:
        if self._file is None:
            raise StoreError(f"{self.info.key}: read after close")
        # A bounded range stops at its end, as a ranged GET does.
        size = min(size, self.length - self._check.count)
        return self._check.feed(self._file.read(size) if size > 0 else b"")

    def read(self, size: int) -> Deferred[bytes]:
        return self._runner.run(self._read, size)

    def close(self) -> Deferred[None]:
        fobj, self._file = self._file, None
        if fobj is None:
            return succeed(None)
        return self._runner.run(fobj.close)


@implementer(IObjectStore)
class LocalStore(ThreadedStore):
    """
    Objects as files below C{root}.  Blocking file work runs in C{pool}
    (owned and started by the service), never on the reactor thread.
    """

    def __init__(
        self,
        root: Path,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        max_pending: int = 64,
    ) -> None:
        self.root = Path(root).absolute()
        #: The longest name the file system takes, in bytes.
        self.name_max = _NAME_MAX
        self.description = f"local directory {self.root}"
        self._tmp = self.root / TMP_DIR
        self._runner = BlockingRunner(reactor, pool, max_pending)

    # -- helpers (run in pool threads) -------------------------------------

    def prepare(self) -> None:
        """
        Create the root and the temporary area, and write a file there:
        blocking, for start-up.  It runs as the gateway's user (see
        L{cosgw.privileges}), so what it creates is that user's, and a root
        or C{.cosgw-tmp} that user cannot write (left by a start as root,
        owned by someone else, on a read-only file system) stops the start
        here, instead of failing every upload with 451.

        @raise OSError: naming the directory that cannot be created or
            written.
        """
        with as_gateway_user():
            self.root.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
            try:
                self.name_max = os.pathconf(self.root, "PC_NAME_MAX")
            except (OSError, ValueError):
                pass  # no such limit to ask for: keep the usual one
            for directory in (self.root, self._tmp):
                try:
                    tempfile.TemporaryFile(dir=directory).close()
                except OSError as e:
                    raise OSError(
                        e.errno,
                        f"cannot write files here: {e.strerror}",
                        str(directory),
                    ) from None

    def _path(self, key: str) -> Path:
        """
        The file for a key.  The layers above never produce unsafe keys;
        this refuses them anyway so the store cannot be walked out of.
        """
        parts = key.rstrip("/").split("/") if key.rstrip("/") else []
        for part in parts:
            if part in ("", ".", "..") or "\0" in part:
                raise StoreError(f"invalid key {key!r}")
            if len(os.fsencode(part)) > self.name_max:
                raise KeyRefused(
                    f"a name longer than {self.name_max} bytes, which this"
                    " directory cannot hold"
                )
        if parts and parts[0] == TMP_DIR:
            raise KeyConflict(f"{key!r} is reserved by the local store")
        return self.root.joinpath(*parts) if parts else self.root

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
        return ObjectInfo(key=key, size=size, mtime=st.st_mtime)

    def _head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchKey(key) from None
        if key.endswith("/") != stat.S_ISDIR(st.st_mode) or not key.rstrip("/"):
            raise NoSuchKey(key)
        return self._info(key, st)

    def _entries(self, prefix: str, recursive: bool) -> Iterator[tuple[str, bool]]:
        """
        Yield (key, is_prefix) for everything under C{prefix}, unsorted.
        Directories are yielded as markers when recursive, as prefixes when
        not.
        """
        base, _, start = prefix.rpartition("/")
        base = base + "/" if base else ""
        try:
            directory = self._path(base)
        except KeyConflict:
            return
        stack = [(directory, base)]
        while stack:
            path, keybase = stack.pop()
            try:
                it = os.scandir(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for entry in it:
                    if not keybase and entry.name == TMP_DIR:
                        continue
                    key = keybase + entry.name
                    if not key.startswith(prefix):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if recursive:
                            yield key + "/", False
                            stack.append((Path(entry.path), key + "/"))
                        else:
                            yield key + "/", True
                    else:
                        yield key, False
        if prefix.endswith("/") and directory.is_dir() and prefix == base:
            # The marker of the listed directory itself, as COS lists it.
            if base:
                yield base, False

    def _list(
        self, prefix: str, delimiter: str, marker: str, max_keys: int
    ) -> ListPage:
        if delimiter not in ("", "/"):
            raise StoreError("the local store only supports the '/' delimiter")
        entries = sorted(
            (key, is_prefix)
            for key, is_prefix in self._entries(prefix, recursive=not delimiter)
            if key > marker
        )
        page = entries[:max_keys]
        objects = []
        prefixes = []
        for key, is_prefix in page:
            if is_prefix:
                prefixes.append(key)
                continue
            try:
                st = self._path(key).stat()
            except FileNotFoundError:
                continue
            objects.append(self._info(key, st))
        more = len(entries) > max_keys
        return ListPage(
            objects=objects,
            prefixes=prefixes,
            next_marker=page[-1][0] if more and page else None,
        )

    def _open(self, key: str, offset: int, end: Optional[int]) -> _FileSource:
        check_read_range(key, offset, end)
        info = self._head(key)
        if key.endswith("/"):
            raise NoSuchKey(key)
        fobj = open(self._path(key), "rb")  # noqa: SIM115 (closed by the source)
        st = os.fstat(fobj.fileno())
        info = self._info(key, st)
        if offset:
            fobj.seek(min(offset, info.size))
        return _FileSource(self._runner, fobj, info, offset, end)

    def _temp(self) -> Path:
        return self._tmp / f"tmp-{uuid.uuid4().hex}"

    def _commit(self, temp: Path, key: str, mtime: Optional[float]) -> ObjectInfo:
        """Move a finished temporary file into place atomically."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                raise KeyConflict(f"{key!r} is a directory")
            if mtime is not None:
                os.utime(temp, (mtime, mtime))
            os.replace(temp, path)
        except (NotADirectoryError, FileExistsError) as e:
            temp.unlink(missing_ok=True)
            raise KeyConflict(f"{key!r}: a parent is a file") from e
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return self._info(key, path.stat())

    def _put(
        self, key: str, data: bytes | memoryview, metadata: Optional[Mapping[str, str]]
    ) -> ObjectInfo:
        mtime = _mtime_from(metadata)
        if key.endswith("/"):
            if data:
                raise StoreError("a directory marker holds no data")
            path = self._path(key)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as e:
                raise KeyConflict(f"{key!r}: a file of that name exists") from e
            if mtime is not None:
                os.utime(path, (mtime, mtime))
            return self._info(key, path.stat())
        temp = self._temp()
        with open(temp, "wb") as f:
            f.write(data)
        info = self._commit(temp, key, mtime)
        return ObjectInfo(
            key=key,
            size=info.size,
            mtime=info.mtime,
            etag=hashlib.md5(data).hexdigest(),
        )

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            if key.endswith("/"):
                path.rmdir()
            else:
                if path.is_dir():
                    return
                path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as e:
            # A marker of a directory that still holds objects: in COS the
            # objects would stay; here the directory has to stay too.
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise

    def _copy(
        self, source: str, destination: str, metadata: Optional[Mapping[str, str]]
    ) -> ObjectInfo:
        mtime = _mtime_from(metadata)
        src = self._path(source)
        if source.endswith("/") or not src.is_file():
            raise NoSuchKey(source)
        temp = self._temp()
        shutil.copyfile(src, temp)
        return self._commit(temp, destination, mtime if mtime else time.time())

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise NoSuchUpload(upload_id)
        return self._tmp / f"up-{upload_id}"

    def _create_multipart(self, key: str, metadata: Optional[Mapping[str, str]]) -> str:
        mtime = _mtime_from(metadata)
        self._path(key)
        upload_id = uuid.uuid4().hex
        directory = self._upload_dir(upload_id)
        directory.mkdir()
        (directory / "key").write_text(key, encoding="utf-8")
        if mtime is not None:
            (directory / "mtime").write_text(repr(mtime), encoding="ascii")
        return upload_id

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | memoryview
    ) -> PartInfo:
        directory = self._upload_dir(upload_id)
        if not directory.is_dir():
            raise NoSuchUpload(upload_id)
        temp = directory / f"{number}.tmp-{uuid.uuid4().hex}"
        with open(temp, "wb") as f:
            f.write(data)
        os.replace(temp, directory / f"{number}.part")
        return PartInfo(number=number, etag=f"{number}-{len(data)}", size=len(data))

    def _upload_of(self, key: str, upload_id: str) -> Path:
        """
        The directory of C{key}'s upload C{upload_id}.

        @raise NoSuchUpload: there is no such upload of that key.
        """
        directory = self._upload_dir(upload_id)
        try:
            stored = (directory / "key").read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchUpload(upload_id) from None
        if stored != key:
            raise NoSuchUpload(f"{upload_id} is not an upload of {key!r}")
        return directory

    def _upload_part_copy(
        self, key: str, upload_id: str, number: int, source: str, first: int, last: int
    ) -> PartInfo:
        # Open the source first: the open file is the snapshot copied, even
        # if the object is replaced meanwhile.
        src_path = self._path(source)
        if source.endswith("/"):
            raise NoSuchKey(source)
        try:
            src = open(src_path, "rb")  # noqa: SIM115 (closed below)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NoSuchKey(source) from None
        with src:
            check_copy_range(source, first, last, os.fstat(src.fileno()).st_size)
            directory = self._upload_of(key, upload_id)
            temp = directory / f"{number}.tmp-{uuid.uuid4().hex}"
            size = last - first + 1
            crc = 0
            try:
                with open(temp, "wb") as out:
                    src.seek(first)
                    remaining = size
                    while remaining:
                        chunk = src.read(min(_COPY_CHUNK, remaining))
                        if not chunk:
                            raise StoreError(f"{source!r} ended while copying")
                        crc = crc64(chunk, crc)
                        out.write(chunk)
                        remaining -= len(chunk)
                part = directory / f"{number}.part"
                os.replace(temp, part)
                mtime = part.stat().st_mtime
            except FileNotFoundError:
                # Aborted (its directory removed) while we copied.
                raise NoSuchUpload(upload_id) from None
            finally:
                temp.unlink(missing_ok=True)
        return PartInfo(
            number=number, etag=f"{number}-{size}", size=size, crc64=crc, mtime=mtime
        )

    def _list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        directory = self._upload_of(key, upload_id)
        parts = []
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    match = _PART_NAME.fullmatch(entry.name)
                    if not match:
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    number = int(match.group(1))
                    parts.append(
                        PartInfo(
                            number=number,
                            etag=f"{number}-{st.st_size}",
                            size=st.st_size,
                            mtime=st.st_mtime,
                        )
                    )
        except FileNotFoundError:
            raise NoSuchUpload(upload_id) from None
        return sorted(parts, key=lambda p: p.number)

    def _complete(
        self, key: str, upload_id: str, parts: Sequence[PartInfo]
    ) -> ObjectInfo:
        directory = self._upload_dir(upload_id)
        if not directory.is_dir():
            raise NoSuchUpload(upload_id)
        mtime_file = directory / "mtime"
        mtime = float(mtime_file.read_text()) if mtime_file.exists() else None
        temp = self._temp()
        with open(temp, "wb") as out:
            for part in sorted(parts, key=lambda p: p.number):
                part_path = directory / f"{part.number}.part"
                try:
                    size = part_path.stat().st_size
                except FileNotFoundError:
                    temp.unlink(missing_ok=True)
                    raise StoreError(
                        f"part {part.number} of {key!r} is missing"
                    ) from None
                if size != part.size:
                    temp.unlink(missing_ok=True)
                    raise StoreError(f"part {part.number} of {key!r} changed size")
                with open(part_path, "rb") as src:
                    _copy_file(src, out, size)
        info = self._commit(temp, key, mtime)
        shutil.rmtree(directory, ignore_errors=True)
        return info

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            directory = self._upload_dir(upload_id)
        except NoSuchUpload:
            return
        shutil.rmtree(directory, ignore_errors=True)

    def _list_multipart(self, prefix: str) -> list[PendingUpload]:
        found = []
        for entry in os.scandir(self._tmp):
            if not entry.name.startswith("up-"):
                continue
            try:
                key = (Path(entry.path) / "key").read_text(encoding="utf-8")
                initiated = entry.stat().st_mtime
            except OSError:
                continue
            if key.startswith(prefix):
                found.append(PendingUpload(key, entry.name[3:], initiated))
        return sorted(found, key=lambda u: (u.key, u.initiated))


def _copy_file(src: BinaryIO, out: BinaryIO, size: int) -> None:
    """Append C{size} bytes of C{src} to C{out}, in the kernel where it can."""
    offset = 0
    out.flush()
    try:
        while offset < size:
            sent = os.sendfile(out.fileno(), src.fileno(), offset, size - offset)
            if sent == 0:
                break
            offset += sent
    except OSError:
        src.seek(offset)
        shutil.copyfileobj(src, out, _COPY_CHUNK)
        return
    out.seek(0, os.SEEK_END)
