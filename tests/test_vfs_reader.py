"""
Unit tests of L{cosgw.vfs.reader}: files opened for reading as the file
system hands them to a frontend, streamed into a consumer (FTP's RETR) or
read at offsets (SFTP's READ), at the user's download rate.
"""

from __future__ import annotations

from hashlib import sha256

from twisted.logger import LogLevel
from zope.interface.verify import verifyObject

from cosgw import vfs
from cosgw.config import ALL_PERMISSIONS
from cosgw.interfaces import IListing, IReader, ObjectInfo, StoreUnavailable
from tests.doortesting import DoorTestCase, H, KiB, MiB, pattern
from tests.logevents import LogEvents
from tests.transfertesting import FakeConsumer, FakeSource


class SendTests(DoorTestCase):
    def test_interfaces(self) -> None:
        self.put("f", b"abc")
        self.assertTrue(verifyObject(IReader, self.ok(self.fs.open_reader(["f"]))))
        self.assertTrue(verifyObject(IListing, self.fs.listing([])))

    def test_send_is_one_get(self) -> None:
        """
        RETR: the GET that opened the file, with no range, is all: its
        reply gives the size, CRC-64 and time a HEAD would have.
        """
        data = pattern(MiB + 3)
        self.put("f", data)
        self.successResultOf(self.store.copy(H + "f", H + "f", {"mtime": "1234"}))
        self.store.reset_requests()
        reader = self.ok(self.fs.open_reader(["f"]))
        consumer = FakeConsumer()
        self.assertEqual(self.ok(reader.send(consumer)), len(data))
        self.assertEqual(consumer.received, data)
        reader.close()
        self.assertEqual(self.store.opened, [(H + "f", 0, None)])
        self.assertRequests(open=1)
        info = self.successResultOf(self.store.head(H + "f"))
        self.assertEqual(
            (reader.entry.size, reader.entry.crc64, reader.entry.mtime),
            (len(data), info.crc64, 1234.0),
        )

    def test_send_from_an_offset(self) -> None:
        """RETR after REST: one GET from the offset, to the end."""
        data = pattern(3 * MiB + 5)
        self.put("f", data)
        reader = self.ok(self.fs.open_reader(["f"], 100))
        self.assertEqual(self.store.opened, [(H + "f", 100, None)])
        self.assertRequests(open=1)
        self.assertEqual(
            (reader.entry.size, reader.length), (len(data), len(data) - 100)
        )
        consumer = FakeConsumer()
        self.assertEqual(self.ok(reader.send(consumer)), len(data) - 100)
        self.assertEqual(consumer.received, data[100:])
        self.assertTrue(consumer.unregistered)
        self.assertEqual(reader.sent, len(data) - 100)
        reader.close()
        self.assertRequests()
        self.assertNothingLeft()

    def test_send_at_the_download_rate(self) -> None:
        """
        The bytes reach the consumer at the user's rate, after a burst; the
        consumer is unregistered only once the last of them went out.
        """
        self.fs = self.make_fs(download_rate=256 * KiB, burst=64 * KiB)
        data = pattern(512 * KiB)
        self.put("f", data)
        reader = self.ok(self.fs.open_reader(["f"]))
        consumer = FakeConsumer()
        self.assertEqual(self.ok(reader.send(consumer)), len(data))
        self.assertEqual(len(consumer.received), 80 * KiB)
        self.clock.pump([0.01] * 160)
        self.assertFalse(consumer.unregistered)
        self.assertLess(len(consumer.received), len(data))
        self.clock.pump([0.01] * 20)
        self.assertTrue(consumer.unregistered)
        self.assertEqual(consumer.received, data)
        reader.close()

    def test_close_stops_a_rate_limited_send(self) -> None:
        """Closing drops what the rate still holds back: nothing is left."""
        self.fs = self.make_fs(download_rate=256 * KiB, burst=64 * KiB)
        self.put("f", pattern(512 * KiB))
        reader = self.ok(self.fs.open_reader(["f"]))
        reader.send(FakeConsumer())
        reader.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNothingLeft()

    def test_errors(self) -> None:
        self.put("d/")
        self.put("f", b"0123")
        self.fails(self.fs.open_reader(["missing"]), vfs.NotFound)
        self.fails(self.fs.open_reader(["d"]), vfs.IsADirectory)
        self.fails(self.fs.open_reader([]), vfs.IsADirectory)
        self.fails(self.fs.open_reader(["f"], 5), vfs.InvalidOffset)
        reader = self.make_fs(ALL_PERMISSIONS - {"download"})
        self.fails(reader.open_reader(["f"]), vfs.PermissionDenied)
        self.assertNothingLeft()


class ReadTests(DoorTestCase):
    def test_reads_at_offsets_share_one_stream(self) -> None:
        data = pattern(3 * MiB)
        self.put("f", data)
        reader = self.ok(self.fs.open_reader(["f"]))
        for at in (0, 40 * KiB, 2 * MiB, 10):
            self.assertEqual(self.ok(reader.read(at, 1000)), data[at : at + 1000])
        self.assertEqual(self.ok(reader.read(len(data) - 3, 10)), data[-3:])
        self.assertEqual(self.ok(reader.read(len(data), 10)), b"")
        self.assertEqual(self.store.opened, [(H + "f", 0, None)])
        self.assertRequests(open=1)
        reader.close()
        self.fails(reader.read(0, 1), vfs.TransferStopped)
        self.assertNothingLeft()

    def test_reply_waits_for_the_download_rate(self) -> None:
        self.fs = self.make_fs(download_rate=100 * KiB, burst=64 * KiB)
        data = pattern(200 * KiB)
        self.put("f", data)
        reader = self.ok(self.fs.open_reader(["f"]))
        self.assertEqual(self.ok(reader.read(0, 64 * KiB)), data[: 64 * KiB])
        d = reader.read(64 * KiB, 32 * KiB)
        self.assertNoResult(d)
        self.clock.advance(0.33)
        self.assertEqual(self.ok(d), data[64 * KiB : 96 * KiB])
        reader.close()

    def test_a_moved_stream_reopens_through_the_file_system(self) -> None:
        """
        A read behind the stream is a new GET of a bounded range (a window
        from there); its failure is translated.
        """
        data = pattern(12 * MiB)
        self.put("f", data)
        reader = self.ok(self.fs.open_reader(["f"], 11 * MiB))
        self.assertEqual(
            self.ok(reader.read(11 * MiB, 10)), data[11 * MiB : 11 * MiB + 10]
        )
        self.assertEqual(self.ok(reader.read(100, 10)), data[100:110])
        self.assertEqual(
            self.store.opened,
            [(H + "f", 11 * MiB, None), (H + "f", 100, 100 + 8 * MiB)],
        )
        self.assertRequests(open=2)
        self.store.fail_next("open")
        self.fails(reader.read(0, 10), vfs.StoreFailure)
        # A store that is down is a warning line, not a traceback.
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])
        reader.close()

    def test_a_digest_of_a_range_is_a_get_of_that_range(self) -> None:
        data = pattern(MiB)
        self.put("f", data)
        digest, first, last = self.ok(self.fs.digest(["f"], "SHA-256", 10, 99))
        self.assertEqual(
            (digest, first, last), (sha256(data[10:100]).hexdigest(), 10, 99)
        )
        self.assertEqual(self.store.opened, [(H + "f", 10, 100)])
        self.assertRequests(open=1)

    def test_reads_waiting_on_one_file_are_capped(self) -> None:
        """
        Past 1024 reads waiting for the stream (a store slow to answer), a
        read is refused with a message and a log line; the others are
        answered.
        """
        data = pattern(2 * MiB)
        source = FakeSource(data, auto=False)
        source.info = ObjectInfo(key=H + "f", size=len(data), mtime=1.0, etag="e")
        reader = vfs.Reader(self.fs, ["f"], source, 8 * MiB)
        events = LogEvents(self, "cosgw.vfs.reader")
        reads = [reader.read(at, 1024) for at in range(0, 1024 * 1024, 1024)]
        error = self.fails(reader.read(len(data) - 10, 10), vfs.NotSupported)
        self.assertEqual(str(error), "/f: more than 1024 reads waiting on one file")
        self.assertEqual(len(events.at(LogLevel.warn)), 1)
        while source.waiting is not None:
            source.answer()
        self.assertEqual(b"".join(self.ok(d) for d in reads), data[:MiB])
        reader.close()

    def test_a_changed_file_fails_the_reads(self) -> None:
        """A reopened stream of another version is an integrity failure."""
        self.put("f", pattern(3 * MiB))
        reader = self.ok(self.fs.open_reader(["f"], 2 * MiB))
        self.put("f", pattern(3 * MiB, seed=2))
        self.fails(reader.read(0, 10), vfs.IntegrityFailure)
        reader.close()
        self.assertNothingLeft()
