"""
The records of the downloads (FTP's RETR, SFTP reads) and of the files
SFTP opens (L{RandomAccessFile}): live in the session table with the bytes
as they move, then exactly one event per direction used: complete,
failed, or interrupted (the client gone, a lost session).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred

from cosgw import vfs
from cosgw.config import ALL_PERMISSIONS
from cosgw.interfaces import StoreUnavailable
from cosgw.transfer import TransferSettings
from tests.audittesting import AuditTestCase, H, KiB, MiB
from tests.transfertesting import FakeConsumer

DATA = bytes(range(256)) * (16 * KiB)  # 4 MiB


class DownloadTestCase(AuditTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.put("d/f", DATA)
        self.fs = self.login(
            settings=TransferSettings(
                part_size=MiB, parts_in_flight=2, read_chunk=MiB, read_ahead=2
            )
        )

    def open(self, offset: int = 0) -> Any:
        return self.ok(self.fs.open_reader(["d", "f"], offset))

    def settle(self, d: Deferred[Any], step: float = 0.25) -> None:
        for _ in range(10_000):
            if d.called:
                return
            self.clock.advance(step)
        self.fail("never settled")


class StreamTests(DownloadTestCase):
    def test_progress_then_one_event(self) -> None:
        """
        A RETR: live with the file's size from its open, its bytes rising
        chunk by chunk; one C{download} event when the frontend closes it.
        """
        reader = self.open()
        [live] = self.table.transfers()
        self.assertEqual(
            (live.direction, live.path, live.size, live.bytes),
            ("download", "/d/f", 4 * MiB, 0),
        )
        consumer = FakeConsumer(pause_on_write=True)
        sent = reader.send(consumer)
        self.assertEqual(live.bytes, MiB)  # paused after its first chunk
        for _ in range(10):
            if sent.called:
                break
            assert consumer.producer is not None
            consumer.producer.resumeProducing()
        self.assertEqual(self.ok(sent), 4 * MiB)
        self.assertEqual(consumer.received, DATA)
        self.assertEqual(self.events(), [])  # the frontend may still see it fail
        reader.close()
        reader.close()
        event = self.one(
            "download",
            path="/d/f",
            outcome="ok",
            bytes=4 * MiB,
            size=4 * MiB,
            offset=0,
            parts=0,
        )
        self.assertEqual(len(event["request_ids"]), 1)
        self.assertEqual(list(self.table.transfers()), [])
        self.assertEqual(self.table.finished[0]["direction"], "download")

    def test_restart_offset(self) -> None:
        reader = self.open(offset=100)
        self.ok(reader.send(FakeConsumer()))
        reader.close()
        self.one("download", offset=100, bytes=4 * MiB - 100, size=4 * MiB)

    def test_store_wait(self) -> None:
        """
        The GET and the reads the client waited for are store wait; reads
        ahead while the client held the download back are not.
        """
        self.store.delays = {"open": 1.0}
        self.store.read_delay = 0.5
        d = self.fs.open_reader(["d", "f"])
        self.settle(d)
        reader = self.ok(d)
        consumer = FakeConsumer(pause_on_write=True)
        sent = reader.send(consumer)
        for _ in range(10):  # the first chunk, then the client holds it
            if consumer.chunks:
                break
            self.clock.advance(0.5)
        held_from = self.clock.seconds()
        self.clock.advance(30)  # read-ahead meanwhile: not a wait
        [live] = self.table.transfers()
        waited = live.store_wait
        self.assertAlmostEqual(waited, 1.0 + 0.5, places=2)
        for _ in range(100):
            if sent.called:
                break
            assert consumer.producer is not None
            consumer.producer.resumeProducing()
            self.clock.advance(0.5)
        self.ok(sent)
        reader.close()
        event = self.one("download", bytes=4 * MiB)
        self.assertLess(event["store_wait"], event["duration"] - 29)
        self.assertGreater(self.clock.seconds() - held_from, 30)

    def test_closed_with_error(self) -> None:
        """The frontend saw the data connection fail after the last byte."""
        reader = self.open()
        self.ok(reader.send(FakeConsumer()))
        reader.close(ConnectionError("data connection reset"))
        self.one(
            "abort",
            direction="download",
            bytes=4 * MiB,
            status="ConnectionError",
            outcome="error",
        )

    def test_closed_before_the_end(self) -> None:
        """Opened and closed without sending (no data connection came)."""
        reader = self.open()
        reader.close()
        self.one("abort", direction="download", bytes=0, status="TransferStopped")

    def test_client_gone(self) -> None:
        """The consumer stopped the download: its end, at once."""
        reader = self.open()
        consumer = FakeConsumer(pause_on_write=True)
        sent = reader.send(consumer)
        assert consumer.producer is not None
        consumer.producer.stopProducing()
        self.fails(sent, vfs.TransferStopped)
        self.one("abort", direction="download", bytes=MiB)
        reader.close()
        self.assertEqual(len(self.events()), 1)

    def test_store_failure(self) -> None:
        """A stream that broke: a failed C{download}, at once."""
        reader = self.open()
        consumer = FakeConsumer(pause_on_write=True)
        sent = reader.send(consumer)
        self.store.read_failure = StoreUnavailable("connection reset", "req-broken")
        assert consumer.producer is not None
        consumer.producer.resumeProducing()
        consumer.producer.resumeProducing()
        self.fails(sent, vfs.StoreFailure)
        reader.close()
        event = self.one("download", outcome="error", status="StoreFailure")
        self.assertIn("req-broken", event["request_ids"])

    def test_open_failures(self) -> None:
        """A RETR that fails at its open is one C{download} event."""
        self.put("d/empty/")
        self.fails(self.fs.open_reader(["none"]), vfs.NotFound)
        self.fails(self.fs.open_reader(["d", "f"], 5 * MiB), vfs.InvalidOffset)
        self.fails(self.fs.open_reader(["d"]), vfs.IsADirectory)
        fs = self.login(permissions=ALL_PERMISSIONS - {"download"})
        self.fails(fs.open_reader(["d", "f"]), vfs.PermissionDenied)
        self.assertEqual(
            [(e["event"], e["path"], e["status"]) for e in self.events()],
            [
                ("download", "/none", "NotFound"),
                ("download", "/d/f", "InvalidOffset"),
                ("download", "/d", "IsADirectory"),
                ("download", "/d/f", "PermissionDenied"),
            ],
        )
        self.assertEqual(list(self.table.transfers()), [])


class ReadTests(DownloadTestCase):
    """SFTP: a file opened for reading, read at offsets."""

    def open_file(self, path: str = "/d/f", **flags: bool) -> vfs.RandomAccessFile:
        file = self.ok(self.fs.open_file(vfs.resolve([], path), **flags))
        assert isinstance(file, vfs.RandomAccessFile)
        return file

    def test_reads(self) -> None:
        file = self.open_file(read=True)
        got = b"".join(self.ok(file.read(o, 32 * KiB)) for o in range(0, MiB, 32 * KiB))
        self.assertEqual(got, DATA[:MiB])
        [live] = self.table.transfers()
        self.assertEqual((live.bytes, live.size), (MiB, 4 * MiB))
        self.assertIsNone(self.ok(file.close()))
        self.one("download", path="/d/f", bytes=MiB, outcome="ok", size=4 * MiB)

    def test_reads_wait(self) -> None:
        """Reads waiting on the stream, many at once, count once."""
        self.store.read_delay = 2.0
        file = self.open_file(read=True)
        reads = [file.read(o, 64 * KiB) for o in range(0, 512 * KiB, 64 * KiB)]
        self.settle(reads[-1], 0.5)
        for d in reads:
            self.ok(d)
        [live] = self.table.transfers()
        self.assertAlmostEqual(live.store_wait, 2.0, places=2)

    def test_lost_session(self) -> None:
        file = self.open_file(read=True)
        self.ok(file.read(0, 100))
        file.abort("the SFTP session was lost")
        self.table.close(self.session, "lost")
        self.assertEqual(
            [(e["event"], e.get("bytes")) for e in self.events()],
            [("abort", 100), ("session-close", None)],
        )


class FileTests(DownloadTestCase):
    """SFTP: files opened for writing."""

    def open_file(self, path: str, **flags: bool) -> vfs.RandomAccessFile:
        file = self.ok(self.fs.open_file(vfs.resolve([], path), **flags))
        assert isinstance(file, vfs.RandomAccessFile)
        return file

    def write(self, file: vfs.RandomAccessFile, offset: int, data: bytes) -> None:
        ack: Optional[Deferred[None]] = file.write(offset, data)
        if ack is not None:
            self.ok(ack)

    def test_new_file(self) -> None:
        file = self.open_file("/d/new", write=True, create=True, truncate=True)
        for offset in range(0, 2 * MiB + 10, 32 * KiB):
            self.write(
                file, offset, DATA[offset : offset + 32 * KiB][: 2 * MiB + 10 - offset]
            )
        [live] = self.table.transfers()
        self.assertEqual((live.direction, live.bytes), ("upload", 2 * MiB + 10))
        self.ok(file.set_attributes(size=2 * MiB + 10))
        self.assertEqual(live.size, 2 * MiB + 10)
        self.ok(file.close())
        self.one("upload", path="/d/new", bytes=2 * MiB + 10, parts=3, outcome="ok")
        self.assertEqual(self.store.stored_bytes(H + "d/new"), DATA[: 2 * MiB + 10])

    def test_lost_mid_upload(self) -> None:
        """A lost session: one C{abort}, the session's close adds none."""
        file = self.open_file("/d/new", write=True, create=True)
        self.write(file, 0, b"a" * 1000)
        file.abort("the SFTP session was lost")
        self.table.close(self.session, "lost")
        events = self.events()
        self.assertEqual([e["event"] for e in events], ["abort", "session-close"])
        self.assertEqual((events[0]["bytes"], events[0]["kept"]), (1000, False))
        self.assertEqual(self.store.stored_keys(H + "d/new"), [])

    def test_read_then_append(self) -> None:
        """Read, then written at its end: a download and an upload."""
        file = self.open_file("/d/f", read=True, write=True)
        self.assertEqual(self.ok(file.read(0, 10)), DATA[:10])
        self.write(file, len(DATA), b"tail")
        self.ok(file.close())
        self.assertEqual(
            [(e["event"], e["bytes"], e["offset"]) for e in self.events()],
            [("download", 10, 0), ("upload", 4, len(DATA))],
        )

    def test_nothing_written(self) -> None:
        """Opened for writing, nothing written or read: nothing recorded."""
        file = self.open_file("/d/f", read=True, write=True)
        self.assertIsNone(self.ok(file.close()))
        self.assertEqual(self.events(), [])

    def test_changed_in_place(self) -> None:
        """A write in the middle: the whole file is stored at close; one event."""
        self.put("small", b"0123456789")
        file = self.open_file("/small", write=True)
        self.write(file, 2, b"ab")
        [live] = self.table.transfers()
        self.assertEqual(live.bytes, 2)
        self.ok(file.close())
        self.one("upload", path="/small", bytes=2, outcome="ok")
        self.assertEqual(self.store.stored_bytes(H + "small"), b"01ab456789")

    def test_refused_write(self) -> None:
        """A write that fails the file: one failed C{upload}, close adds none."""
        file = self.open_file("/d/new", write=True, create=True)
        ack = file.write(1 << 40, b"x")
        assert ack is not None
        self.fails(ack, vfs.WriteRefused)
        self.fails(file.close(), vfs.WriteRefused)
        self.one("upload", outcome="error", status="WriteRefused")

    def test_refused_open(self) -> None:
        self.fails(
            self.fs.open_file(["d", "f"], write=True, create=True, exclusive=True),
            vfs.AlreadyExists,
        )
        self.one("upload", path="/d/f", status="AlreadyExists")

    def test_lost_while_deciding(self) -> None:
        """The session goes while the first write's checks are in flight."""
        file = self.open_file("/d/f", write=True)
        self.store.delays = {"open": 1.0}  # the copy to change it in place
        ack = file.write(10, b"more")
        assert ack is not None
        file.abort("the SFTP session was lost")
        self.settle(ack)
        self.fails(ack, vfs.WriteRefused)  # the file is closed
        self.one("abort", direction="upload", path="/d/f")
        self.assertEqual(self.store.stored_uploads(), [])
