"""
Unit tests of L{cosgw.vfs.upload}: uploads as the file system hands them
to a frontend (FTP's STOR, APPE, REST + STOR), fed through L{IConsumer} by a
fake data connection, with the user's rate, size limit and quota inside.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer
from zope.interface.verify import verifyObject

from cosgw import vfs
from cosgw.config import ALL_PERMISSIONS
from cosgw.interfaces import IFileSystem, IUpload, StoreUnavailable
from cosgw.policy.quota import Usage
from cosgw.transfer import TransferSettings
from tests.doortesting import DoorTestCase, H, KiB, MiB, pattern
from tests.transfertesting import FakeProducer


class UploadTestCase(DoorTestCase):
    def open(self, path: str = "f.bin", **kwargs: int | bool) -> vfs.Upload:
        """Open an upload and register a fake data connection with it."""
        upload = self.ok(self.fs.open_upload(vfs.resolve([], path), **kwargs))  # type: ignore[arg-type]
        self.producer = FakeProducer()
        upload.registerProducer(self.producer, True)
        return upload

    def feed(self, upload: vfs.Upload, data: bytes, chunk: int = 64 * KiB) -> None:
        for at in range(0, len(data), chunk):
            upload.write(data[at : at + chunk])


class StreamTests(UploadTestCase):
    def test_interfaces(self) -> None:
        """The file system and its uploads provide their interfaces."""
        upload = self.open()
        self.assertTrue(verifyObject(IFileSystem, self.fs))
        self.assertTrue(verifyObject(IUpload, upload))
        self.assertTrue(verifyObject(IConsumer, upload))

    def test_new_file_in_a_directory(self) -> None:
        """
        The checks cost one LIST for the name (no file, no directory) and
        one for the directory, at the same time; no resume is looked up for
        an upload from 0; a small file is one PUT at commit.
        """
        self.put("dir/")
        upload = self.open("dir/new.bin")
        self.assertRequests(list=2)
        self.assertEqual(upload.base, 0)
        data = pattern(300 * KiB)
        self.feed(upload, data)
        self.assertEqual(upload.received, len(data))
        self.assertRequests()
        info = self.ok(upload.commit())
        self.assertRequests(put=1)
        self.assertEqual(info.size, len(data))
        self.assertEqual(self.stored("dir/new.bin"), data)
        self.assertNotIn("stop", self.producer.events)

    def test_replacing_a_file(self) -> None:
        """An existing file is found by the same LIST as a new one's."""
        self.put("dir/old.bin", b"old")
        upload = self.open("dir/old.bin")
        self.assertRequests(list=2)
        upload.write(b"new")
        self.ok(upload.commit())
        self.assertEqual(self.stored("dir/old.bin"), b"new")

    def test_multipart(self) -> None:
        """A stream of several parts is a multipart upload."""
        upload = self.open()
        self.store.reset_requests()
        data = pattern(2 * MiB + 5)
        self.feed(upload, data)
        self.ok(upload.commit())
        self.assertRequests(create_multipart=1, upload_part=3, complete_multipart=1)
        self.assertEqual(self.stored("f.bin"), data)
        self.assertNothingLeft()

    def test_checks(self) -> None:
        """What cannot be uploaded fails before anything is stored."""
        self.put("d/")
        self.put("file", b"x")
        for path, error in (
            ("d", vfs.IsADirectory),
            ("missing/f", vfs.NotFound),
            ("file/f", vfs.NotADirectory),
            ("/", vfs.IsADirectory),
        ):
            self.fails(self.fs.open_upload(vfs.resolve([], path)), error)
        no_upload = self.make_fs(ALL_PERMISSIONS - {"upload"})
        with self.assertRaises(vfs.PermissionDenied):
            no_upload.open_upload(["new"])
        no_overwrite = self.make_fs(ALL_PERMISSIONS - {"overwrite"})
        self.fails(no_overwrite.open_upload(["file"]), vfs.PermissionDenied)
        self.ok(no_overwrite.open_upload(["new"]))
        self.assertEqual(self.store.stored_keys(), [H + "d/", H + "file"])


class RateTests(UploadTestCase):
    def test_rate_pauses_the_producer(self) -> None:
        """
        Over the user's rate, the data connection is paused until the
        bucket is back to zero, then resumed; the bytes all arrive.
        """
        self.fs = self.make_fs(upload_rate=100 * KiB, burst=64 * KiB)
        upload = self.open()
        upload.write(pattern(64 * KiB))
        self.assertEqual(self.producer.events, [])
        upload.write(pattern(32 * KiB))
        self.assertEqual(self.producer.events, ["pause"])
        self.clock.advance(0.31)
        self.assertEqual(self.producer.events, ["pause"])
        self.clock.advance(0.02)
        self.assertEqual(self.producer.events, ["pause", "resume"])
        self.ok(upload.commit())
        self.assertEqual(len(self.stored("f.bin")), 96 * KiB)

    def test_unregistering_lifts_the_rate(self) -> None:
        """The end of the stream cancels a pending resume: nothing is left."""
        self.fs = self.make_fs(upload_rate=100 * KiB, burst=0)
        upload = self.open()
        upload.write(pattern(10 * KiB))
        self.assertEqual(self.producer.events, ["pause"])
        upload.unregisterProducer()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.ok(upload.commit())


class FailureTests(UploadTestCase):
    def test_store_failure_stops_the_producer(self) -> None:
        """
        A part the store refuses fails the upload: the data connection is
        stopped at once, commit reports the store's failure with its
        request id, and the multipart upload is gone.
        """
        upload = self.open()
        self.store.fail_next("upload_part")
        self.feed(upload, pattern(MiB + 10))
        self.assertEqual(self.producer.events.count("stop"), 1)
        self.assertTrue(upload.failed)
        error = self.fails(upload.commit(), vfs.StoreFailure)
        self.assertTrue(error.request_id)
        # A store that is down is a warning line, not a traceback.
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])
        self.assertEqual(self.store.stored_keys(), [])
        self.assertNothingLeft()

    def test_too_large_stops_the_producer(self) -> None:
        self.fs = self.make_fs(settings=TransferSettings(max_file_size=100))
        upload = self.open()
        upload.write(b"x" * 100)
        self.assertEqual(self.producer.events, [])
        upload.write(b"x")
        self.assertEqual(self.producer.events, ["stop"])
        self.fails(upload.commit(), vfs.FileTooLarge)
        self.assertEqual(self.store.stored_keys(), [])

    def test_quota_stops_the_producer(self) -> None:
        usage = Usage(self.store, H, 1000, None)
        self.fs = self.make_fs(usage=usage)
        upload = self.open()
        upload.write(b"x" * 1000)
        upload.write(b"x")
        self.assertEqual(self.producer.events, ["stop"])
        self.fails(upload.commit(), vfs.QuotaExceeded)
        self.assertEqual(self.store.stored_keys(), [])


class EndTests(UploadTestCase):
    def test_interrupt_keeps_whole_parts_for_a_resume(self) -> None:
        """
        A client gone mid-upload leaves no object, but its whole parts stay
        for a resume: SIZE tells them, REST + STOR continues the same
        multipart upload.
        """
        data = pattern(3 * MiB + 77)
        upload = self.open()
        self.feed(upload, data[: 2 * MiB + 10])
        self.assertEqual(self.ok(upload.interrupt()), 2 * MiB)
        self.assertEqual(self.store.stored_keys(), [])
        [pending] = self.store.stored_uploads()
        self.assertEqual(self.ok(self.fs.restart_size(["f.bin"])), 2 * MiB)
        self.store.reset_requests()
        resumed = self.open(offset=2 * MiB)
        # No LIST: SIZE's showed the name free a moment ago.
        self.assertRequests(list_multipart=1, list_parts=1)
        self.assertEqual(resumed.base, 2 * MiB)
        self.feed(resumed, data[2 * MiB :])
        self.ok(resumed.commit())
        self.assertEqual(self.stored("f.bin"), data)
        self.assertNothingLeft()

    def test_interrupt_without_resumes_discards(self) -> None:
        self.fs = self.make_fs(settings=TransferSettings(resume_uploads=False))
        upload = self.open()
        self.feed(upload, pattern(2 * MiB + 10))
        self.assertEqual(self.ok(upload.interrupt()), 0)
        self.assertEqual(self.store.stored_keys(), [])
        self.assertNothingLeft()

    def test_abort_leaves_nothing(self) -> None:
        """FTP's ABOR: nothing stored, nothing kept for a resume."""
        upload = self.open()
        self.feed(upload, pattern(2 * MiB + 10))
        self.ok(upload.abort())
        self.assertEqual(self.store.stored_keys(), [])
        self.assertNothingLeft()
        self.fails(upload.commit(), vfs.TransferStopped)

    def test_append_after_the_file(self) -> None:
        """APPE: the new bytes follow the file's, read back when small."""
        self.put("f.bin", b"0123456789")
        upload = self.open(append=True)
        self.assertRequests(list=1, open=1)
        self.assertEqual(upload.base, 10)
        upload.write(b"abc")
        self.ok(upload.commit())
        self.assertEqual(self.stored("f.bin"), b"0123456789abc")
        self.assertNothingLeft()

    def test_restart_beyond_the_file(self) -> None:
        self.put("f.bin", b"0123456789")
        self.fails(self.fs.open_upload(["f.bin"], offset=11), vfs.InvalidOffset)
        self.assertNothingLeft()
