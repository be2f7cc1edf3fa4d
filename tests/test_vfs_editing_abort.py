"""
Unit tests of L{cosgw.vfs.editing} when the session goes at the worst
moment: while the first write to an existing file waits for the decision
of how the file is written (its store requests in flight), while the
in-place copy is read, while reads before the first write open the file.
The store's answers are held back and let go by the test (L{HeldStore}),
so each interleaving happens exactly, every run.  Also through the SFTP
server's own session-loss path (L{GatewaySFTPServer.connection_lost}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from cosgw import vfs
from cosgw.frontends.sftp.handles import FileHandle
from cosgw.frontends.sftp.server import GatewaySFTPServer
from cosgw.policy.quota import Usage
from cosgw.testing import MemoryStore
from tests.doortesting import DoorTestCase, H, KiB, MiB, pattern

LOST = "the SFTP session was lost"


class HeldStore(MemoryStore):
    """
    A memory store whose answers wait, while C{holding}, until the test
    lets them go (L{release_one}, L{release}): the request reached the
    store, its reply is in flight.
    """

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.holding = False
        self.held: list[tuple[str, Deferred[Any], Any]] = []

    def _request(self, method: str, body: Any, *args: Any) -> Deferred[Any]:
        d = super()._request(method, body, *args)
        if not self.holding:
            return d
        results: list[Any] = []
        d.addBoth(results.append)
        later: Deferred[Any] = Deferred()
        self.held.append((method, later, results[0]))
        return later

    def release_one(self) -> str:
        """Let the oldest held answer go; the method it answers."""
        method, later, result = self.held.pop(0)
        later.callback(result)
        return method

    def release(self) -> None:
        """Stop holding; let every held answer go, in order."""
        self.holding = False
        while self.held:
            self.release_one()


class AbortTestCase(DoorTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.data = pattern(2 * MiB + 5)
        self.fresh()

    def fresh(self) -> None:
        """A new store holding the file C{f}, a user with a quota."""
        self.store = HeldStore(self.clock)
        self.usage = Usage(self.store, H, 100 * MiB, 100)
        self.fs = self.make_fs(usage=self.usage)
        self.settings = vfs.RandomAccessSettings(max_spool_size=64 * MiB)
        self.put("f", self.data)

    def open_existing(self) -> vfs.RandomAccessFile:
        d = self.fs.open_file(["f"], settings=self.settings, read=True, write=True)
        file = self.ok(d)
        assert isinstance(file, vfs.RandomAccessFile)
        return file

    def assertNothingKept(self) -> None:
        """
        No upload, no multipart upload (the sweeper would skip one as being
        written), no quota held, no spool, no open GET; the stored file as
        it was.
        """
        self.assertEqual(self.store.stored_uploads(), [])
        self.assertEqual(self.store.open_sources, 0)
        self.assertEqual(self.usage.reserved, 0)
        budget = self.settings.spool_budget
        assert budget is not None
        self.assertEqual(budget.used, 0)
        self.assertEqual(self.stored("f"), self.data)


class DecisionTests(AbortTestCase):
    def lost_at_every_step(self, offset: int) -> list[str]:
        """
        The first write, at C{offset}, then the session lost after 0, 1,
        2, ... of the store's answers, until the write was answered before
        the loss: each time nothing may be kept, and a write not yet
        answered is refused.

        @return: the requests answered before the write was.
        """
        for steps in range(50):
            self.fresh()
            file = self.open_existing()
            self.store.holding = True
            write = file.write(offset, b"tail")
            assert write is not None
            answered = [self.store.release_one() for _ in range(steps)]
            decided = write.called
            file.abort(LOST)
            self.store.release()
            self.assertNothingKept()
            if decided:
                self.ok(write)
                return answered
            self.fails(write, vfs.WriteRefused)
            self.assertIsNone(self.ok(file.close()))
        raise AssertionError("the write was never answered")

    def test_lost_while_deciding_to_append(self) -> None:
        """
        A write at the end: an append (a server-side copy of the file into
        a multipart upload, with a quota reservation) begun after the loss
        is aborted at once and its reservation released.
        """
        answered = self.lost_at_every_step(len(self.data))
        self.assertTrue(answered)

    def test_lost_while_deciding_to_change_in_place(self) -> None:
        """
        A write in the middle: a copy of the file into the spool, made or
        being made when the session goes, is dropped with its space.
        """
        answered = self.lost_at_every_step(10)
        self.assertIn("open", answered)

    def test_reads_before_the_first_write(self) -> None:
        """
        Two reads at once before any write open the file once between
        them; a read whose GET answers after the session went leaves no
        GET open.
        """
        file = self.open_existing()
        self.store.holding = True
        first, second = file.read(0, 5), file.read(KiB, 5)
        self.store.release()
        self.assertEqual(self.ok(first), self.data[:5])
        self.assertEqual(self.ok(second), self.data[KiB : KiB + 5])
        self.assertEqual(self.store.open_sources, 1)
        self.ok(file.close())
        other = self.open_existing()
        self.store.holding = True
        late = other.read(0, 5)
        other.abort(LOST)
        self.store.release()
        self.failureResultOf(late)
        self.assertNothingKept()

    def test_undisturbed(self) -> None:
        """The same interleavings without a lost session write the file."""
        for offset in (len(self.data), 10):
            self.fresh()
            file = self.open_existing()
            self.store.holding = True
            write = file.write(offset, b"tail")
            assert write is not None
            self.store.release()
            self.ok(write)
            self.ok(file.close())
            expected = self.data[:offset] + b"tail" + self.data[offset + 4 :]
            self.assertEqual(self.stored("f"), expected)
            self.assertEqual(self.usage.reserved, 0)


class SessionLossTests(AbortTestCase):
    """The same race through the SFTP server's handles and session loss."""

    def test_connection_lost_while_deciding(self) -> None:
        server = GatewaySFTPServer(self.fs, self.settings)
        handle = self.ok(server.openFile(b"/f", 0x03, {}))  # READ|WRITE
        self.assertIsInstance(handle, FileHandle)
        self.store.holding = True
        write = handle.writeChunk(len(self.data), b"tail")
        self.assertNoResult(write)
        self.ok(server.connection_lost())
        self.store.release()
        self.failureResultOf(write)
        self.assertNothingKept()
