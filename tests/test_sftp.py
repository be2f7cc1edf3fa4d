"""
SFTP end to end with paramiko against a real gateway (local store and the
COS-dialect server over moto): transfers, random access, listings,
renames, attributes, the extensions, and what a dropped session leaves.
Real clients other than paramiko are in test_sftp_clients.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.harness import (
    PASSWORD,
    READER_PASSWORD,
    MiB,
    in_thread,
    random_bytes,
    start_gateway,
)

KiB = 1024


def connect(port: int, user: str = "alice", password: str = PASSWORD) -> Any:
    transport = paramiko.Transport(("127.0.0.1", port))
    transport.connect(username=user, password=password)
    return paramiko.SFTPClient.from_transport(transport)


def close_and_wait(sftp: Any, gateway: Any) -> None:
    """Close a client's connection and wait until the gateway saw it go."""
    before = gateway.service.limits.total
    sftp.get_channel().get_transport().close()
    assert poll(lambda: gateway.service.limits.total < before), "still connected"


def poll(check: Callable[[], bool], seconds: float = 20.0) -> bool:
    """Poll C{check} until it holds or the deadline passes (in a thread)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


class SFTPTestsMixin:
    kind = "local"
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gateway = yield start_gateway(self, self.kind)
        self.sftp = yield in_thread(connect, self.gateway.sftp_port)
        self.addCleanup(self._close)

    def _close(self) -> Any:
        return in_thread(close_and_wait, self.sftp, self.gateway)

    def run_client(self, f: Callable[..., Any], *args: Any) -> Any:
        return in_thread(f, *args)

    @property
    def store(self) -> Any:
        return self.gateway.inspector

    # -- transfers ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_put_get_stat(self) -> Any:
        data = random_bytes(5 * MiB + 17)

        def client() -> Any:
            with self.sftp.open("/big.bin", "wb") as f:
                f.set_pipelined(True)
                f.write(data)
            with self.sftp.open("/big.bin", "rb") as f:
                f.prefetch()
                got = f.read()
            return got, self.sftp.stat("/big.bin")

        got, attrs = yield self.run_client(client)
        self.assertEqual(got, data)
        self.assertEqual(self.store.read("big.bin"), data)
        self.assertEqual(attrs.st_size, len(data))
        self.assertTrue(stat.S_ISREG(attrs.st_mode))
        self.assertEqual(stat.S_IMODE(attrs.st_mode), 0o644)
        self.assertLess(abs(attrs.st_mtime - time.time()), 120)

    @defer.inlineCallbacks
    def test_random_offset_reads(self) -> Any:
        data = random_bytes(6 * MiB)
        yield self.run_client(self.sftp.putfo, _Reader(data), "/r.bin")
        rng = random.Random(11)
        offsets = [rng.randrange(0, len(data)) for _ in range(25)] + [0, len(data) - 5]

        def client() -> list[bytes]:
            got = []
            with self.sftp.open("/r.bin", "rb") as f:
                for at in offsets:
                    f.seek(at)
                    got.append(f.read(40 * KiB))
            return got

        got = yield self.run_client(client)
        self.assertEqual(got, [data[at : at + 40 * KiB] for at in offsets])

    @defer.inlineCallbacks
    def test_out_of_order_writes(self) -> Any:
        """Writes at shuffled offsets, some far ahead: the right bytes."""
        data = random_bytes(3 * MiB + 100)
        chunks = list(range(0, len(data), 32 * KiB))
        rng = random.Random(5)
        order = chunks[:]
        for i in range(0, len(order), 16):
            group = order[i : i + 16]
            rng.shuffle(group)
            order[i : i + 16] = group
        # The last chunk first: far beyond any reorder window of this size.
        order.remove(chunks[-1])
        order.insert(0, chunks[-1])

        def client() -> None:
            with self.sftp.open("/ooo.bin", "wb") as f:
                for at in order:
                    f.seek(at)
                    f.write(data[at : at + 32 * KiB])

        yield self.run_client(client)
        self.assertEqual(self.store.read("ooo.bin"), data)

    @defer.inlineCallbacks
    def test_rewrite_of_uploaded_bytes_refused(self) -> Any:
        """A write behind the upload fails the file: never a wrong object."""
        data = random_bytes(3 * MiB)

        def client() -> Any:
            f = self.sftp.open("/rw.bin", "wb")
            f.write(data)
            f.seek(10)
            try:
                f.write(b"changed")
                f.close()
            except OSError as e:
                return e
            return None

        error = yield self.run_client(client)
        self.assertIsInstance(error, OSError)
        self.assertIn("front to back", str(error))
        self.assertNotIn("rw.bin", self.store.keys())
        yield self.run_client(lambda: poll(lambda: not self.store.pending_uploads()))
        self.assertEqual(self.store.pending_uploads(), [])

    @defer.inlineCallbacks
    def test_append(self) -> Any:
        first, second = random_bytes(2 * MiB + 3), random_bytes(MiB + 5)
        yield self.run_client(self.sftp.putfo, _Reader(first), "/ap.bin")

        def client() -> None:
            with self.sftp.open("/ap.bin", "a") as f:
                f.write(second)

        yield self.run_client(client)
        self.assertEqual(self.store.read("ap.bin"), first + second)

    @defer.inlineCallbacks
    def test_resume_at_end_without_trunc(self) -> Any:
        """reput's way: open without TRUNC, write from the current size."""
        first, second = random_bytes(MiB + 1), random_bytes(700 * KiB)
        yield self.run_client(self.sftp.putfo, _Reader(first), "/re.bin")

        def client() -> None:
            with self.sftp.open("/re.bin", "r+") as f:
                f.seek(len(first))
                f.write(second)

        yield self.run_client(client)
        self.assertEqual(self.store.read("re.bin"), first + second)

    @defer.inlineCallbacks
    def test_read_then_append_on_one_handle(self) -> Any:
        """A READ|WRITE open: reads of the old file, then a write at its end."""
        first, second = random_bytes(MiB + 9), random_bytes(300 * KiB)
        yield self.run_client(self.sftp.putfo, _Reader(first), "/rw2.bin")

        def client() -> list[bytes]:
            with self.sftp.open("/rw2.bin", "r+") as f:
                got = [f.read(4000)]
                f.seek(MiB)
                got.append(f.read(9))
                f.seek(len(first))
                f.write(second)
            return got

        got = yield self.run_client(client)
        self.assertEqual(got, [first[:4000], first[MiB:]])
        self.assertEqual(self.store.read("rw2.bin"), first + second)

    @defer.inlineCallbacks
    def test_modify_in_place(self) -> Any:
        """An editor's write in the middle: the file is changed, not cut."""
        data = random_bytes(300 * KiB)
        yield self.run_client(self.sftp.putfo, _Reader(data), "/ed.txt")

        def client() -> bytes:
            with self.sftp.open("/ed.txt", "r+") as f:
                f.seek(1000)
                f.write(b"EDITED")
                f.seek(0)
                return f.read(10)

        head = yield self.run_client(client)
        self.assertEqual(head, data[:10])
        self.assertEqual(
            self.store.read("ed.txt"), data[:1000] + b"EDITED" + data[1006:]
        )

    @defer.inlineCallbacks
    def test_open_flags(self) -> Any:
        yield self.run_client(self.sftp.putfo, _Reader(b"old"), "/x.txt")

        def client() -> list[Any]:
            outcomes = []
            for path, mode in (
                ("/x.txt", "x"),
                ("/nodir/y.txt", "w"),
                ("/no.txt", "r"),
            ):
                try:
                    self.sftp.open(path, mode).close()
                    outcomes.append(None)
                except OSError as e:
                    outcomes.append(type(e).__name__)
            return outcomes

        outcomes = yield self.run_client(client)
        self.assertEqual(
            outcomes, ["OSError", "FileNotFoundError", "FileNotFoundError"]
        )
        self.assertEqual(self.store.read("x.txt"), b"old")

    @defer.inlineCallbacks
    def test_truncate_existing_with_w(self) -> Any:
        yield self.run_client(self.sftp.putfo, _Reader(b"a long old text"), "/t.txt")

        def client() -> None:
            with self.sftp.open("/t.txt", "w") as f:
                f.write(b"new")

        yield self.run_client(client)
        self.assertEqual(self.store.read("t.txt"), b"new")

    @defer.inlineCallbacks
    def test_empty_file(self) -> Any:
        yield self.run_client(lambda: self.sftp.open("/empty", "w").close())
        self.assertEqual(self.store.read("empty"), b"")

    # -- directories and names ------------------------------------------------

    @defer.inlineCallbacks
    def test_listdir_2500(self) -> Any:
        names = {f"f{i:05d}.dat" for i in range(2500)}
        yield self._populate("big", names)

        def client() -> Any:
            return self.sftp.listdir_attr("/big")

        entries = yield self.run_client(client)
        self.assertEqual({e.filename for e in entries}, names)
        self.assertEqual(
            {e.filename: e.st_size for e in entries},
            {n: int(n[1:6]) % 7 for n in names},
        )

    def _populate(self, directory: str, names: set[str]) -> Any:
        """Files put straight into the store (not what is under test)."""
        if self.kind == "local":
            root = self.store.root / directory
            root.mkdir()
            for n in names:
                (root / n).write_bytes(b"x" * (int(n[1:6]) % 7))
            return defer.succeed(None)
        return defer.gatherResults(
            [
                self.gateway.store.put(f"{directory}/{n}", b"x" * (int(n[1:6]) % 7))
                for n in sorted(names)
            ]
        )

    @defer.inlineCallbacks
    def test_directories(self) -> Any:
        def client() -> list[Any]:
            out = []
            self.sftp.mkdir("/d")
            self.sftp.mkdir("/d/e")
            self.sftp.putfo(_Reader(b"1"), "/d/e/f.txt")
            try:
                self.sftp.rmdir("/d/e")
                out.append("removed")
            except OSError as e:
                out.append(type(e).__name__)
            try:
                self.sftp.mkdir("/d")
                out.append("made")
            except OSError as e:
                out.append(type(e).__name__)
            self.sftp.remove("/d/e/f.txt")
            out.append(self.sftp.listdir("/d"))
            self.sftp.rmdir("/d/e")
            out.append(self.sftp.listdir("/d"))
            out.append(stat.S_ISDIR(self.sftp.stat("/d").st_mode))
            try:
                self.sftp.remove("/d")
                out.append("removed")
            except OSError as e:
                out.append(type(e).__name__)
            return out

        out = yield self.run_client(client)
        self.assertEqual(out, ["OSError", "OSError", ["e"], [], True, "OSError"])

    @defer.inlineCallbacks
    def test_rename(self) -> Any:
        def client() -> list[Any]:
            out = []
            self.sftp.putfo(_Reader(b"one"), "/a.txt")
            self.sftp.putfo(_Reader(b"two"), "/b.txt")
            try:
                self.sftp.rename("/a.txt", "/b.txt")  # SFTP v3: target exists
                out.append("renamed")
            except OSError as e:
                out.append(type(e).__name__)
            self.sftp.posix_rename("/a.txt", "/b.txt")  # overwrites
            self.sftp.mkdir("/tree")
            for i in range(5):
                self.sftp.putfo(_Reader(b"%d" % i), f"/tree/{i}.txt")
            self.sftp.rename("/tree", "/moved")
            out.append(sorted(self.sftp.listdir("/moved")))
            return out

        out = yield self.run_client(client)
        self.assertEqual(out, ["OSError", [f"{i}.txt" for i in range(5)]])
        self.assertEqual(self.store.read("b.txt"), b"one")
        self.assertNotIn("a.txt", self.store.keys())
        self.assertEqual(self.store.read("moved/3.txt"), b"3")
        self.assertEqual(self.store.keys("tree"), [])

    @defer.inlineCallbacks
    def test_home_confinement_and_realpath(self) -> Any:
        def client() -> list[str]:
            return [
                self.sftp.normalize("."),
                self.sftp.normalize("/../../.."),
                self.sftp.normalize("a/../b"),
            ]

        out = yield self.run_client(client)
        self.assertEqual(out, ["/", "/", "/b"])

    @defer.inlineCallbacks
    def test_setstat(self) -> Any:
        yield self.run_client(self.sftp.putfo, _Reader(b"0123456789"), "/s.txt")

        def client() -> list[Any]:
            out = []
            self.sftp.utime("/s.txt", (1_000_000_000, 1_000_000_000))
            out.append(self.sftp.stat("/s.txt").st_mtime)
            self.sftp.chmod("/s.txt", 0o600)  # accepted, ignored
            try:
                self.sftp.truncate("/s.txt", 5)
                out.append("cut")
            except OSError as e:
                out.append(type(e).__name__)
            self.sftp.truncate("/s.txt", 0)
            out.append(self.sftp.stat("/s.txt").st_size)
            return out

        out = yield self.run_client(client)
        self.assertEqual(out, [1_000_000_000, "OSError", 0])
        self.assertEqual(self.store.read("s.txt"), b"")

    @defer.inlineCallbacks
    def test_statvfs(self) -> Any:
        def client() -> Any:
            return self.sftp._request(
                paramiko.sftp.CMD_EXTENDED, "statvfs@openssh.com", "/"
            )

        kind, msg = yield self.run_client(client)
        self.assertEqual(kind, paramiko.sftp.CMD_EXTENDED_REPLY)
        values = [msg.get_int64() for _ in range(11)]
        self.assertEqual(values[0], 4096)
        self.assertGreater(values[3], 0)
        self.assertEqual(values[10], 255)

    @defer.inlineCallbacks
    def test_symlinks_unsupported(self) -> Any:
        def client() -> str:
            try:
                self.sftp.symlink("/a", "/b")
            except OSError as e:
                return str(e)
            return "made"

        out = yield self.run_client(client)
        self.assertIn("symbolic links", out)

    # -- permissions and sessions -------------------------------------------

    @defer.inlineCallbacks
    def test_reader_cannot_write(self) -> Any:
        yield self.run_client(self.sftp.putfo, _Reader(b"keep"), "/k.txt")
        reader = yield in_thread(
            connect, self.gateway.sftp_port, "reader", READER_PASSWORD
        )
        self.addCleanup(in_thread, close_and_wait, reader, self.gateway)

        def client() -> list[Any]:
            out = []
            for action in (
                lambda: reader.open("/k.txt", "w").close(),
                lambda: reader.remove("/k.txt"),
                lambda: reader.mkdir("/nope"),
                lambda: reader.rename("/k.txt", "/l.txt"),
            ):
                try:
                    action()
                    out.append("done")
                except PermissionError as e:
                    out.append(e.errno)
            out.append(reader.open("/k.txt").read())
            return out

        out = yield self.run_client(client)
        self.assertEqual(out, [errno.EACCES] * 4 + [b"keep"])
        self.assertEqual(self.store.read("k.txt"), b"keep")
        self.assertEqual(sorted(self.store.keys()), ["k.txt"])

    @defer.inlineCallbacks
    def test_dropped_session_leaves_nothing(self) -> Any:
        """A session lost mid-upload: no object, no multipart upload."""
        data = random_bytes(6 * MiB)
        sock = socket.create_connection(("127.0.0.1", self.gateway.sftp_port))

        def client() -> None:
            transport = paramiko.Transport(sock)
            transport.connect(username="alice", password=PASSWORD)
            sftp = paramiko.SFTPClient.from_transport(transport)
            f = sftp.open("/dropped.bin", "wb")
            f.write(data)  # acknowledged: at least a part is stored
            # Gone without CLOSE: an RST, as a killed client's kernel sends.
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            sock.close()

        yield self.run_client(client)
        clean = yield self.run_client(
            poll, lambda: not self.store.pending_uploads() and not self.store.keys()
        )
        self.assertTrue(clean, (self.store.keys(), self.store.pending_uploads()))
        self.assertEqual(self.store.keys(), [])


class _Reader:
    """A file-like object over bytes for paramiko's putfo."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self.data) - self.at
        chunk = self.data[self.at : self.at + n]
        self.at += len(chunk)
        return chunk


class LocalSFTPTests(SFTPTestsMixin, TestCase):
    kind = "local"


class CosSFTPTests(SFTPTestsMixin, TestCase):
    kind = "cos"


del os
