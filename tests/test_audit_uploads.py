"""
The records of the uploads the file system hands out (FTP's STOR, APPE,
REST + STOR): live in the session table while they run, with the client's
bytes as they move, then exactly one event: C{upload} once the store
confirmed it or failed it, C{abort} when it was cut short (ABOR, the
client gone, the session closed), whatever else follows.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from cosgw import vfs
from cosgw.config import ALL_PERMISSIONS
from cosgw.transfer import TransferSettings
from tests.audittesting import AuditTestCase, H, KiB, MiB
from tests.transfertesting import FakeProducer

CHUNK = 64 * KiB


class UploadTestCase(AuditTestCase):
    def start(self, path: str = "/f", **kwargs: Any) -> tuple[Any, FakeProducer]:
        upload = self.ok(self.fs.open_upload(vfs.resolve([], path), **kwargs))
        producer = FakeProducer()
        upload.registerProducer(producer, True)
        return upload, producer

    def feed(
        self, upload: Any, producer: FakeProducer, data: bytes, step: float = 0.25
    ) -> None:
        """
        Send C{data} as a client would: in chunks while not paused; while
        paused the store works (the clock moves), and nothing else takes
        time.
        """
        sent = 0
        for _ in range(100_000):
            if sent == len(data):
                return
            if producer.paused:
                self.clock.advance(step)
            else:
                upload.write(data[sent : sent + CHUNK])
                sent += min(CHUNK, len(data) - sent)
        self.fail("the upload never took all the data")

    def settle(self, d: Deferred[Any], step: float = 0.25) -> None:
        for _ in range(10_000):
            if d.called:
                return
            self.clock.advance(step)
        self.fail("never settled")


class CommittedTests(UploadTestCase):
    def test_progress_then_one_event(self) -> None:
        """
        The upload is in the live table from its open, its bytes rising as
        the client's arrive; committed, it leaves the table for the
        finished ring, with one C{upload} event.
        """
        data = bytes(range(256)) * (12 * KiB)  # 3 MiB
        upload, producer = self.start(size_hint=len(data))
        [live] = self.table.transfers()
        self.assertEqual(
            (live.direction, live.path, live.size, live.bytes),
            ("upload", "/f", 3 * MiB, 0),
        )
        self.feed(upload, producer, data[: MiB + 5])
        self.assertEqual(live.bytes, MiB + 5)
        self.assertEqual(live.describe()["bytes"], MiB + 5)
        self.feed(upload, producer, data[MiB + 5 :])
        self.assertEqual(self.events(), [])
        info = self.ok(upload.commit())
        self.assertEqual(self.store.stored_bytes(H + "f"), data)
        event = self.one(
            "upload",
            path="/f",
            outcome="ok",
            status="ok",
            bytes=3 * MiB,
            size=3 * MiB,
            offset=0,
            direction="upload",
            parts=3,
            retries=0,
        )
        self.assertEqual(event["request_ids"], [info.request_id])
        self.assertEqual(list(self.table.transfers()), [])
        finished = self.table.finished[0]
        self.assertEqual((finished["path"], finished["outcome"]), ("/f", "ok"))
        self.assertEqual(self.session.transfers, {})

    def test_single_put(self) -> None:
        upload, producer = self.start()
        upload.write(b"hello")
        info = self.ok(upload.commit())
        event = self.one("upload", bytes=5, parts=0, size=None)
        self.assertEqual(event["request_ids"], [info.request_id])

    def test_append_offset(self) -> None:
        """APPE: the record's offset is where the client's bytes start."""
        self.put("f", b"12345")
        upload, producer = self.start(append=True)
        upload.write(b"678")
        self.ok(upload.commit())
        self.one("upload", offset=5, bytes=3)
        self.assertEqual(self.store.stored_bytes(H + "f"), b"12345678")

    def test_store_wait(self) -> None:
        """
        Time the client was held while the store took parts, and the
        commit's, is store wait: here all the time there was.
        """
        self.fs = self.login(
            settings=TransferSettings(part_size=MiB, parts_in_flight=1)
        )
        self.store.delays = {"upload_part": 2.0, "complete_multipart": 1.0}
        upload, producer = self.start()
        begun = self.clock.seconds()
        self.feed(upload, producer, b"x" * (3 * MiB))
        d = upload.commit()
        self.settle(d)
        self.ok(d)
        event = self.one("upload", parts=3, bytes=3 * MiB)
        took = self.clock.seconds() - begun
        self.assertGreaterEqual(took, 7.0)  # three parts and the completion
        self.assertAlmostEqual(event["store_wait"], took, places=2)
        self.assertAlmostEqual(event["duration"], took, places=2)

    def test_retries(self) -> None:
        """The store's retries of the parts and of the completion add up."""
        self.store.retried = {"upload_part": 2, "complete_multipart": 1}
        upload, producer = self.start()
        self.feed(upload, producer, b"y" * (2 * MiB + 1))
        self.ok(upload.commit())
        self.one("upload", parts=3, retries=3 * 2 + 1)

    def test_without_session(self) -> None:
        """A file system without a session records nothing, and works."""
        fs = self.accounts.filesystem("alice")
        upload = self.ok(fs.open_upload(["g"]))
        upload.registerProducer(FakeProducer(), True)
        upload.write(b"data")
        self.ok(upload.commit())
        self.assertEqual(self.store.stored_bytes(H + "g"), b"data")
        self.assertEqual(self.events(), [])
        self.assertEqual(list(self.table.transfers()), [])


class FailedTests(UploadTestCase):
    def test_store_failure(self) -> None:
        """A failed commit: one C{upload} event with the error and its request id."""
        upload, producer = self.start()
        upload.write(b"abc")
        self.store.fail_next("put")
        self.fails(upload.commit(), vfs.StoreFailure)
        event = self.one("upload", outcome="error", status="StoreFailure", bytes=3)
        self.assertEqual(len(event["request_ids"]), 1)
        self.assertTrue(event["request_ids"][0].startswith("memory-"))
        self.assertEqual(list(self.table.transfers()), [])

    def test_refused_open(self) -> None:
        """A STOR refused at its open is one C{upload} event too."""
        fs = self.login(permissions=ALL_PERMISSIONS - {"upload"})
        self.assertRaises(vfs.PermissionDenied, fs.open_upload, ["f"])
        self.fails(self.fs.open_upload(["no", "f"]), vfs.NotFound)
        self.assertEqual(
            [(e["event"], e["path"], e["status"], e["bytes"]) for e in self.events()],
            [
                ("upload", "/f", "PermissionDenied", 0),
                ("upload", "/no/f", "NotFound", 0),
            ],
        )
        self.assertEqual(list(self.table.transfers()), [])

    def test_open_wait(self) -> None:
        """A failed open's record spans its store requests."""
        self.store.delays = {"list": 1.5}
        d = self.fs.open_upload(["no", "f"])
        self.settle(d)
        self.fails(d, vfs.NotFound)
        event = self.one("upload", status="NotFound")
        self.assertAlmostEqual(event["store_wait"], 1.5, places=2)
        self.assertAlmostEqual(event["duration"], 1.5, places=2)


class InterruptedTests(UploadTestCase):
    def test_abort_once(self) -> None:
        """ABOR: one C{abort} event, nothing kept, whatever follows."""
        upload, producer = self.start()
        self.feed(upload, producer, b"z" * (MiB + 10))
        self.ok(upload.abort())
        self.ok(upload.abort("again"))
        self.ok(upload.interrupt())
        self.fails(upload.commit(), vfs.TransferStopped)
        self.one(
            "abort",
            direction="upload",
            path="/f",
            bytes=MiB + 10,
            kept=False,
            outcome="error",
            status="TransferStopped",
        )
        self.assertEqual(list(self.table.transfers()), [])
        self.assertEqual(self.store.stored_keys(H), [])

    def test_interrupted_and_kept(self) -> None:
        """The client went: C{abort}, and whether its parts were kept."""
        upload, producer = self.start("/new")
        self.feed(upload, producer, b"k" * (MiB + 10))
        self.assertEqual(self.ok(upload.interrupt()), MiB)
        self.one("abort", path="/new", kept=True, bytes=MiB + 10, parts=1)

    def test_interrupted_overwrite(self) -> None:
        """An interrupted overwrite keeps nothing."""
        self.put("old", b"o")
        upload, producer = self.start("/old")
        self.feed(upload, producer, b"k" * (MiB + 10))
        self.assertEqual(self.ok(upload.interrupt()), 0)
        self.one("abort", path="/old", kept=False)

    def test_session_closed_first(self) -> None:
        """
        The session closed before the upload settled: the table ends the
        record, and the upload's own end adds nothing.
        """
        upload, producer = self.start()
        upload.write(b"q" * 100)
        self.table.close(self.session, "kicked")
        self.ok(upload.interrupt())
        self.assertEqual(
            [(e["event"], e.get("path")) for e in self.events()],
            [("abort", "/f"), ("session-close", None)],
        )

    def test_abort_while_committing(self) -> None:
        """
        An abort during the final call: the object is whole and stays, and
        the record says so (one C{upload} event, no C{abort}).
        """
        self.store.delays = {"put": 1.0}
        upload, producer = self.start()
        upload.write(b"w" * 10)
        d = upload.commit()
        aborted = upload.abort("the client went")
        self.settle(d)
        self.ok(d)
        self.ok(aborted)
        self.one("upload", outcome="ok", bytes=10)
        self.assertEqual(self.store.stored_bytes(H + "f"), b"w" * 10)
