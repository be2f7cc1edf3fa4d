"""
Unit tests of L{cosgw.transfer.upload} continuing an interrupted upload,
starting from a copied prefix, and keeping what is stored when the client
goes away; and of L{cosgw.transfer.parts}' copy ranges.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from cosgw import transfer
from cosgw.interfaces import (
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    PartInfo,
    StoreUnavailable,
)
from cosgw.transfer import (
    TransferSettings,
    TransferStopped,
    UploadWriter,
)
from tests.transfertesting import (
    KEY,
    FakeProducer,
    FakeStore,
    MiB,
)


class ResumeAndAppendTests(SynchronousTestCase):
    """
    The writer continuing an interrupted upload, starting from a copied
    prefix, and keeping what is stored when the client goes away.
    """

    def setUp(self) -> None:
        self.store = FakeStore(
            {
                "create_multipart",
                "upload_part",
                "upload_part_copy",
                "complete_multipart",
            }
        )
        self.settings = TransferSettings(part_size=MiB, parts_in_flight=2)

    def writer(self, **kwargs: Any) -> UploadWriter:
        writer = UploadWriter(self.store, KEY, self.settings, **kwargs)
        writer.registerProducer(FakeProducer(), True)
        return writer

    def test_resume_continues_the_same_upload(self) -> None:
        kept = [PartInfo(1, "e1", MiB), PartInfo(2, "e2", MiB)]
        registry = transfer.UploadRegistry()
        writer = self.writer(resume=("old-upload", kept), registry=registry)
        self.assertIn("old-upload", registry)
        writer.write(b"z" * (MiB + 5))
        info = self.successResultOf(writer.finish())
        self.assertNotIn("create_multipart", self.store.names())
        numbers = [c.args[2] for c in self.store.calls_to("upload_part")]
        self.assertEqual(numbers, [3, 4])
        [complete] = self.store.calls_to("complete_multipart")
        self.assertEqual(complete.args[1], "old-upload")
        self.assertEqual([p.number for p in complete.args[2]], [1, 2, 3, 4])
        self.assertEqual(info.size, 3 * MiB + 5)
        self.assertEqual(writer.size, 3 * MiB + 5)
        self.assertNotIn("old-upload", registry)

    def test_copy_prefix_then_new_bytes(self) -> None:
        writer = self.writer(copy_prefix=("old/object", 3 * MiB + 1))
        writer.write(b"n" * 10)
        self.successResultOf(writer.finish())
        [copy] = self.store.calls_to("upload_part_copy")
        self.assertEqual(copy.args[2:], (1, "old/object", 0, 3 * MiB))
        [part] = self.store.calls_to("upload_part")
        self.assertEqual((part.args[2], part.args[3]), (2, b"n" * 10))
        [complete] = self.store.calls_to("complete_multipart")
        self.assertEqual([p.number for p in complete.args[2]], [1, 2])
        self.assertEqual(writer.size, 3 * MiB + 11)

    def test_copy_ranges_respect_part_limits(self) -> None:
        self.assertEqual(transfer.copy_ranges(MiB), [(0, MiB - 1)])
        ranges = transfer.copy_ranges(MAX_PART_SIZE + 100)
        self.assertEqual(ranges[-1][1], MAX_PART_SIZE + 99)
        sizes = [last - first + 1 for first, last in ranges]
        self.assertTrue(all(MIN_PART_SIZE <= s <= MAX_PART_SIZE for s in sizes), sizes)
        self.assertEqual(sum(sizes), MAX_PART_SIZE + 100)
        for (_, last), (first, _) in zip(ranges, ranges[1:]):
            self.assertEqual(first, last + 1)

    def test_initial_bytes_and_small_file_single_put(self) -> None:
        self.store.auto.add("put")
        writer = self.writer(initial=b"head-")
        writer.write(b"tail")
        info = self.successResultOf(writer.finish())
        [put] = self.store.calls_to("put")
        self.assertEqual(put.args[1], b"head-tail")
        self.assertEqual(info.size, 9)

    def test_suspend_keeps_contiguous_parts(self) -> None:
        self.store.auto.discard("upload_part")
        writer = self.writer()
        writer.write(b"a" * (2 * MiB + 7))
        first, second = self.store.unsettled("upload_part")
        kept = writer.suspend()
        self.assertNoResult(kept)
        self.store.answer(first)
        self.store.answer(second)
        self.assertEqual(self.successResultOf(kept), 2 * MiB)
        self.assertNotIn("abort_multipart", self.store.names())
        self.assertNotIn("complete_multipart", self.store.names())
        self.failureResultOf(writer.finish(), TransferStopped)

    def test_suspend_with_a_gap_keeps_only_the_prefix(self) -> None:
        self.store.auto.discard("upload_part")
        writer = self.writer()
        writer.write(b"a" * (2 * MiB + 7))
        first, second = self.store.unsettled("upload_part")
        kept = writer.suspend()
        self.store.fail(first, StoreUnavailable("lost"))
        self.store.answer(second)
        # Part 2 is stored but part 1 is not: nothing can be resumed, so the
        # upload is aborted before suspend() reports.
        [abort] = self.store.calls_to("abort_multipart")
        self.assertEqual(abort.args, (KEY, "upload1"))
        self.assertNoResult(kept)
        self.store.answer(abort)
        self.assertEqual(self.successResultOf(kept), 0)

    def test_suspend_before_any_part_leaves_nothing(self) -> None:
        writer = self.writer()
        writer.write(b"small")
        self.assertEqual(self.successResultOf(writer.suspend()), 0)
        self.assertEqual(self.store.calls, [])
