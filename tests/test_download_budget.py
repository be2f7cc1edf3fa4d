"""
The download buffer budget (C{download_buffer_budget}) without sockets:
L{DownloadBuffers} itself, then FTP-style streams (L{Download}) and SFTP
reads at offsets (L{RangedReader}) of many files at once over sources the
test answers one read at a time, with clients that take their bytes
slowly.  Every file arrives whole; the bytes held never exceed the budget
plus what each download needs to go on (its next chunk, or the bytes its
waiting reads ask for); none waits for another to finish.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from cosgw.transfer import Download, DownloadBuffers, RangedReader
from tests.test_transfer_reader import SourceAt
from tests.transfertesting import FakeConsumer, FakeSource

KiB = 1024
MiB = 1024 * KiB


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DownloadBuffersTests(SynchronousTestCase):
    def test_room_and_turns(self) -> None:
        """
        Reading ahead takes room while there is some; then downloads wait
        and are told in the order they asked as room comes back, a later
        one not served before an earlier one.
        """
        buffers = DownloadBuffers(100)
        told: list[str] = []
        self.assertTrue(buffers.ahead(60, lambda: told.append("first")))
        self.assertFalse(buffers.ahead(60, lambda: told.append("a")))
        waiter_b = lambda: told.append("b")  # noqa: E731
        self.assertFalse(buffers.ahead(10, waiter_b))  # fits, but "a" was first
        self.assertEqual((buffers.used, buffers.waiting, buffers.refused), (60, 2, 2))
        self.assertEqual(buffers.peak, 60)
        buffers.discharge(60)
        self.assertEqual(told, ["a", "b"])  # told in order; each asks again
        buffers.forget(waiter_b)
        self.assertEqual(buffers.waiting, 0)

    def test_a_turn_is_kept_for_the_one_told(self) -> None:
        """The download told of room gets it, though others still wait."""
        buffers = DownloadBuffers(100)
        self.assertTrue(buffers.ahead(100, lambda: None))
        got: list[bool] = []

        def first() -> None:
            got.append(buffers.ahead(50, first))

        def second() -> None:
            got.append(buffers.ahead(50, second))

        buffers.ahead(50, first)
        buffers.ahead(50, second)
        buffers.discharge(50)
        self.assertEqual(got, [True])
        self.assertEqual((buffers.used, buffers.waiting), (100, 1))
        buffers.discharge(50)
        self.assertEqual(got, [True, True])


class SlowClient(FakeConsumer):
    """A data connection that pauses its download at every write."""

    def __init__(self) -> None:
        super().__init__(pause_on_write=True)

    def drain(self) -> None:
        """The socket took what was written: the download may go on."""
        if self.producer is not None:
            self.producer.resumeProducing()


class StreamTests(SynchronousTestCase):
    def run_downloads(
        self, count: int, buffers: Optional[DownloadBuffers], read_ahead: int = 4
    ) -> tuple[list[bytes], list[SlowClient], int]:
        """
        C{count} downloads of 1 MiB in chunks of 64 KiB; in turns, the
        store answers one read of each, and every third turn each client
        drains (the clients are slower than the store), until all end.
        The most bytes the downloads held at once (read from the store and
        not yet written to their clients, or being read), too.
        """
        files = [pattern(MiB + i, seed=i) for i in range(count)]
        sources = [FakeSource(data, auto=False) for data in files]
        clients = [SlowClient() for _ in files]
        done = [
            Download(s, c, 64 * KiB, read_ahead, buffers).start()
            for s, c in zip(sources, clients)
        ]
        most = 0
        for turn in range(100_000):
            if all(d.called for d in done):
                break
            for source, client in zip(sources, clients):
                if source.waiting is not None:
                    source.answer()
                if turn % 3 == 0:
                    client.drain()
            held = sum(
                s.position - len(c.received) + (s.waiting[1] if s.waiting else 0)
                for s, c in zip(sources, clients)
            )
            most = max(most, held)
        for d, data in zip(done, files):
            self.assertEqual(self.successResultOf(d), len(data))
        return files, clients, most

    def test_held_within_the_budget_and_a_chunk_each(self) -> None:
        """
        Eight downloads reading four chunks ahead each would hold 2.5 MiB;
        a budget of 128 KiB holds them to it plus the next chunk of each.
        """
        buffers = DownloadBuffers(128 * KiB)
        files, clients, most = self.run_downloads(8, buffers)
        for data, client in zip(files, clients):
            self.assertEqual(digest(client.received), digest(data))
        self.assertGreater(buffers.refused, 0)
        self.assertLessEqual(most, 128 * KiB + 8 * 64 * KiB)
        self.assertLessEqual(buffers.peak, 128 * KiB + 8 * 64 * KiB)
        self.assertEqual((buffers.used, buffers.waiting), (0, 0))

    def test_a_zero_budget_still_moves_every_download(self) -> None:
        buffers = DownloadBuffers(0)
        files, clients, most = self.run_downloads(4, buffers)
        for data, client in zip(files, clients):
            self.assertEqual(client.received, data)
        self.assertLessEqual(max(most, buffers.peak), 4 * 64 * KiB)

    def test_a_stopped_download_gives_its_bytes_back(self) -> None:
        """A client gone mid-read leaves nothing charged and nothing waiting."""
        buffers = DownloadBuffers(MiB)
        source = FakeSource(pattern(MiB, seed=1), auto=False)
        client = SlowClient()
        d = Download(source, client, 64 * KiB, 4, buffers).start()
        source.answer()  # written; the client pauses
        self.assertEqual(buffers.used, 0)  # the next chunk is not read ahead
        source.answer()  # queued: the one after is read ahead
        self.assertEqual(buffers.used, 64 * KiB)
        source.answer()
        self.assertEqual(buffers.used, 2 * 64 * KiB)
        assert client.producer is not None
        client.producer.stopProducing()
        self.failureResultOf(d)
        source.answer()  # the read in flight comes back after all
        self.assertEqual((buffers.used, buffers.waiting), (0, 0))


class OpenSSHReads:
    """
    An SFTP client downloading one file at offsets: reads of C{read} bytes
    in order, at most C{in_flight} unanswered (what the session's request
    gate lets through), each answered read replaced by the next.
    """

    def __init__(
        self, reader: RangedReader, size: int, read: int, in_flight: int
    ) -> None:
        self.reader = reader
        self.size = size
        self.read = read
        self.in_flight = in_flight
        self.next = 0
        self.answers: dict[int, bytes] = {}
        self.open: set[int] = set()

    def tick(self) -> None:
        while len(self.open) < self.in_flight and self.next < self.size:
            at = self.next
            self.next += self.read
            self.open.add(at)
            self.reader.read(at, self.read).addCallback(self.answered, at)

    def answered(self, data: bytes, at: int) -> None:
        self.open.discard(at)
        self.answers[at] = data

    @property
    def done(self) -> bool:
        return self.next >= self.size and not self.open

    @property
    def received(self) -> bytes:
        return b"".join(self.answers[at] for at in sorted(self.answers))


class RangedReadTests(SynchronousTestCase):
    def run_readers(
        self, count: int, buffers: Optional[DownloadBuffers], chunk: int = 64 * KiB
    ) -> tuple[list[bytes], list[OpenSSHReads], int]:
        """
        C{count} files of 2 MiB read at once, 8 reads of 32 KiB in flight
        each (256 KiB promised); the store answers one read of each stream
        per turn, and every sixth turn each client sends the reads that
        replace those answered (so its stream has answered them all, and
        may read ahead, before it does).  The most any one reader held at once, too.
        """
        files = [pattern(2 * MiB + i, seed=10 + i) for i in range(count)]
        streams: list[SourceAt] = []
        clients = []
        for data in files:
            first = SourceAt(data, 0, auto=False)
            streams.append(first)

            def reopen(at: int, end: int, data: bytes = data) -> Deferred[Any]:
                raise AssertionError(f"a second GET at {at}")

            reader = RangedReader(
                first, reopen, window=MiB, chunk=chunk, buffers=buffers
            )
            clients.append(OpenSSHReads(reader, len(data), 32 * KiB, in_flight=8))
        most = 0
        for turn in range(100_000):
            if all(c.done for c in clients):
                break
            for client, stream in zip(clients, streams):
                if turn % 6 == 0:
                    client.tick()
                if stream.waiting is not None:
                    stream.answer()
                most = max(most, client.reader.buffered)
        for client in clients:
            client.reader.close()
        return files, clients, most

    def test_held_within_the_budget_and_the_reads_waiting(self) -> None:
        """
        Eight files, a budget of 128 KiB: each reader holds what its reads
        wait for (256 KiB), two chunks behind and one being read; beyond
        that only what the budget lets it read ahead.
        """
        buffers = DownloadBuffers(128 * KiB)
        files, clients, most = self.run_readers(8, buffers)
        for data, client in zip(files, clients):
            self.assertEqual(digest(client.received), digest(data))
        per_reader = 256 * KiB + 3 * 64 * KiB
        self.assertLessEqual(most, per_reader + 2 * 64 * KiB)
        self.assertLessEqual(buffers.peak, 128 * KiB + 8 * per_reader)
        self.assertGreater(buffers.refused, 0)
        self.assertEqual((buffers.used, buffers.waiting), (0, 0))

    def test_read_ahead_is_two_chunks_without_a_budget(self) -> None:
        """
        Unbudgeted, a reader still reads only two chunks past the reads it
        answered, not its window (a megabyte here; 8 MiB in the gateway).
        """
        files, clients, most = self.run_readers(1, None)
        self.assertEqual(clients[0].received, files[0])
        self.assertLessEqual(most, 256 * KiB + 5 * 64 * KiB)

    def test_close_gives_everything_back(self) -> None:
        buffers = DownloadBuffers(MiB)
        data = pattern(MiB, seed=3)
        first = SourceAt(data, 0, auto=False)
        reader = RangedReader(
            first,
            lambda at, end: succeed(SourceAt(data, at, end)),
            chunk=64 * KiB,
            buffers=buffers,
        )
        reader.read(0, 100)
        first.answer()  # the read's chunk (held), then the stream reads ahead
        self.assertEqual(buffers.used, 2 * 64 * KiB)
        first.answer()
        self.assertEqual(buffers.used, 3 * 64 * KiB)
        reader.close()
        first.answer()  # the read in flight comes back after the close
        self.assertEqual((buffers.used, buffers.waiting), (0, 0))
