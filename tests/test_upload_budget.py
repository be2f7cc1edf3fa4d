"""
Unit tests of L{cosgw.transfer.buffers}: the budget all uploads share for
their part buffers (turns, lanes, charges), and upload writers sharing one
over a L{MemoryStore} whose parts take time on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import mmap
import platform
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cosgw.interfaces import PartInfo
from cosgw.testing import MemoryStore
from cosgw.transfer import (
    TransferSettings,
    TransferStopped,
    UploadBuffers,
    UploadState,
    UploadWriter,
)
from cosgw.transfer.buffers import (
    INLINE_JOIN,
    UNCLAIMED,
    BufferClaim,
)
from tests.transfertesting import KEY, FakeStore, MiB, random_bytes

#: Run by test_malloc_settings: tune malloc, then how many bytes glibc
#: mapped on their own (mallinfo2's hblkhd) for each of two 8 MiB parts,
#: the first freed before the second is made.
_MAPPED_PARTS = """
import ctypes
from cosgw.transfer.buffers import tune_malloc
took = tune_malloc()
print(took)
if took:
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
            "fordblks keepcost".split()]
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = Info
    before = mallinfo2().hblkhd
    for _ in range(2):
        part = bytes(8 * 1024 * 1024)
        print(mallinfo2().hblkhd - before)
        del part
"""


class Grants:
    """Records the order in which claims are granted."""

    def __init__(self, buffers: UploadBuffers) -> None:
        self.buffers = buffers
        self.order: list[str] = []
        self.claims: dict[str, BufferClaim] = {}

    def claim(self, name: str, size: int) -> BufferClaim:
        claim = self.buffers.claim(size, lambda c: self.order.append(name))
        if claim.granted:
            self.order.append(name)
        self.claims[name] = claim
        return claim


class UploadBuffersTests(SynchronousTestCase):
    def test_first_come_first_served(self) -> None:
        """
        Claims are granted at once while they fit, then in the order they
        were made as bytes are given back; a larger claim at the head is
        not overtaken by a smaller one behind it that would fit.
        """
        grants = Grants(UploadBuffers(4 * MiB))
        for name in "abcd":
            self.assertTrue(grants.claim(name, MiB).granted)
        grants.claim("big", 2 * MiB)
        grants.claim("e", MiB)
        grants.claim("f", MiB)
        self.assertEqual(grants.buffers.waiting, 3)
        grants.claims["a"].release()
        self.assertEqual(grants.order, list("abcd"))  # big needs 2 MiB
        grants.claims["b"].release()
        grants.claims["c"].release()
        self.assertEqual(grants.order, list("abcd") + ["big", "e"])
        grants.claims["d"].release()
        self.assertEqual(grants.order, list("abcd") + ["big", "e", "f"])
        self.assertEqual(grants.buffers.used, 4 * MiB)
        self.assertEqual(grants.buffers.peak, 4 * MiB)
        self.assertEqual(grants.buffers.waited, 3)

    def test_release_while_waiting(self) -> None:
        """A waiting claim released leaves the queue; it is never granted."""
        grants = Grants(UploadBuffers(MiB))
        grants.claim("a", MiB)
        grants.claim("b", MiB)
        grants.claim("c", MiB)
        grants.claims["b"].release()
        grants.claims["b"].release()  # idempotent
        grants.claims["a"].release()
        self.assertEqual(grants.order, ["a", "c"])
        self.assertEqual(grants.buffers.used, MiB)

    def test_shrink(self) -> None:
        """A granted claim shrunk gives its surplus to the next in line."""
        grants = Grants(UploadBuffers(2 * MiB))
        grants.claim("a", 2 * MiB // 2 + MiB // 2)
        grants.claim("b", MiB)
        grants.claims["a"].shrink(MiB // 2)
        self.assertEqual(grants.order, ["a", "b"])
        self.assertEqual(grants.buffers.used, MiB + MiB // 2)

    def test_big_parts_lane(self) -> None:
        """
        Claims over half the budget (even over all of it) take turns one
        at a time outside it: they never wait for the ordinary claims, nor
        hold them back; memory is the budget plus one such part.
        """
        grants = Grants(UploadBuffers(4 * MiB))
        grants.claim("a", 3 * MiB)
        grants.claim("b", 10 * MiB)
        grants.claim("c", 4 * MiB)
        for name in ("d", "e", "f", "g"):
            grants.claim(name, MiB)
        self.assertEqual(grants.order, ["a", "d", "e", "f", "g"])
        self.assertEqual(grants.buffers.used, 7 * MiB)
        grants.claims["a"].release()
        self.assertEqual(grants.order[-1], "b")
        self.assertEqual(grants.buffers.peak, 14 * MiB)
        grants.claims["b"].release()
        self.assertEqual(grants.order[-1], "c")

    def test_charges_never_block_progress(self) -> None:
        """
        Bytes held without a claim (arrived anyway) count against the
        budget, but never stop the claim at the head from being granted
        once no ordinary claim is held: some upload can always go on.
        """
        buffers = UploadBuffers(2 * MiB)
        grants = Grants(buffers)
        buffers.charge(3 * MiB)
        self.assertEqual(buffers.peak, 3 * MiB)
        grants.claim("a", MiB)  # nothing else held: granted
        grants.claim("b", MiB)  # would not fit: waits
        self.assertEqual(grants.order, ["a"])
        grants.claims["a"].release()
        self.assertEqual(grants.order, ["a", "b"])
        buffers.discharge(3 * MiB)
        self.assertEqual(buffers.used, MiB)

    def test_callbacks_may_claim_and_release(self) -> None:
        """
        A writer told of its grant may release or claim at once (a part
        stored at once); the budget stays consistent and grants in order.
        """
        buffers = UploadBuffers(MiB)
        order: list[str] = []
        first = buffers.claim(MiB, lambda c: None)

        def second_granted(claim: BufferClaim) -> None:
            order.append("b")
            claim.release()
            buffers.claim(MiB, lambda c: order.append("d"))

        buffers.claim(MiB, second_granted)
        buffers.claim(MiB, lambda c: order.append("c"))
        first.release()
        self.assertEqual(order, ["b", "c"])
        self.assertEqual((buffers.used, buffers.waiting), (MiB, 1))

    def test_failing_callback_logged(self) -> None:
        """A writer that fails on its grant is logged; the others go on."""
        buffers = UploadBuffers(MiB)
        first = buffers.claim(MiB, lambda c: None)

        def broken(claim: BufferClaim) -> None:
            claim.release()
            raise ZeroDivisionError()

        buffers.claim(MiB, broken)
        later = buffers.claim(MiB, lambda c: None)
        first.release()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(later.granted)

    def test_assemble(self) -> None:
        """
        One read is a part as it is (no copy); small parts are joined at
        once; larger ones in the runner (the thread pool), never inline.
        """
        ran: list[Any] = []

        class Runner:
            def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
                ran.append(f)
                return succeed(f(*args))

        buffers = UploadBuffers(4 * MiB, Runner())
        one = random_bytes(2 * MiB)
        self.assertIs(self.successResultOf(buffers.assemble([one])), one)
        small = [b"a" * 1000, memoryview(b"b" * 1000)]
        self.assertEqual(self.successResultOf(buffers.assemble(small)), b"".join(small))
        self.assertEqual(ran, [])
        view = memoryview(one)
        self.assertEqual(self.successResultOf(buffers.assemble([view[:10]])), one[:10])
        large = [one[: INLINE_JOIN // 2], view[INLINE_JOIN // 2 :]]
        self.assertEqual(self.successResultOf(buffers.assemble(large)), one)
        self.assertEqual(len(ran), 1)

    def test_blocks_kept_within_budget(self) -> None:
        """
        A free block is kept for the next part of its size only while the
        bytes held and the blocks kept fit in the budget, and only when no
        view of it is left; a part of another size gets a block of its own.
        """
        buffers = UploadBuffers(4 * MiB)
        held = buffers.claim(2 * MiB, lambda c: None)
        mine = buffers.claim(2 * MiB, lambda c: None)
        one, two, seen = (buffers.block(2 * MiB) for _ in range(3))
        assert one is not None and two is not None and seen is not None
        view = memoryview(seen)[:10]
        buffers.keep(seen, 2 * MiB)  # a view of it is still out there
        buffers.keep(one, 2 * MiB)  # 2 MiB held + 2 MiB kept: within
        mine.release()
        buffers.keep(two, 0)  # 2 MiB held + 4 MiB kept: over
        self.assertIs(buffers.block(2 * MiB), one)
        buffers.keep(one, 0)
        # A part of another size: a block of its own; the spare 2 MiB no
        # longer fits beside the 4 MiB now held, and goes.
        bigger = buffers.claim(2 * MiB, lambda c: None)
        other = buffers.block(3 * MiB)
        self.assertIsInstance(other, mmap.mmap)
        self.assertEqual(len(other), 3 * MiB)
        self.assertNotIn(buffers.block(2 * MiB), (one, two, seen))
        view.release()
        held.release()
        bigger.release()

    def test_malloc_settings(self) -> None:
        """
        glibc takes the settings (one heap, big blocks mapped on their own,
        the top of the heap kept); other C libraries are left alone.  In a
        process of its own (no other thread allocating meanwhile): a part
        freed leaves no 8 MiB in the heap for the next one, each is mapped
        on its own, where glibc's own rule would put the second in the heap
        (its threshold raised by the first).
        """
        glibc = platform.libc_ver()[0] == "glibc"
        out = subprocess.run(
            [sys.executable, "-c", _MAPPED_PARTS],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        self.assertEqual(out[0], str(glibc))
        if glibc:
            first, second = (int(x) for x in out[1:])
            self.assertGreaterEqual(first, 8 * MiB)
            self.assertGreaterEqual(second, 8 * MiB)


class SlowParts(MemoryStore):
    """
    A memory store whose parts take C{delay} seconds on C{clock}, as a
    store across a network does (everything else answers at once).
    """

    def __init__(self, clock: MemoryReactorClock, delay: float) -> None:
        super().__init__(clock, min_part_size=MiB)
        self.clock = clock
        self.delay = delay
        self.in_flight = 0

    def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes
    ) -> Deferred[PartInfo]:
        self.in_flight += 1
        d: Deferred[PartInfo] = Deferred()

        def answer() -> None:
            self.in_flight -= 1
            super(SlowParts, self).upload_part(
                key, upload_id, number, data
            ).chainDeferred(d)

        self.clock.callLater(self.delay, answer)
        return d


@implementer(IPushProducer)
class Client:
    """
    A data connection: sends C{data} in C{chunk}s, one per tick, only while
    not paused (a producer that honours a pause at once).
    """

    def __init__(self, writer: UploadWriter, data: bytes, chunk: int) -> None:
        self.writer = writer
        self.data = data
        self.chunk = chunk
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.result: Optional[Deferred[Any]] = None
        writer.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        raise AssertionError("no upload may fail for lack of budget")

    def tick(self) -> None:
        if self.paused or self.result is not None:
            return
        if self.sent < len(self.data):
            self.writer.write(self.data[self.sent : self.sent + self.chunk])
            self.sent = min(len(self.data), self.sent + self.chunk)
        else:
            self.result = self.writer.finish()


class SharedBudgetTests(SynchronousTestCase):
    CHUNK = 256 * 1024

    def uploads(
        self,
        count: int,
        size: int,
        limit: int,
        part_size: int = MiB,
        size_hints: tuple[Optional[int], ...] = (),
    ) -> tuple[UploadBuffers, SlowParts, list[Client]]:
        self.clock = MemoryReactorClock()
        buffers = UploadBuffers(limit)
        store = SlowParts(self.clock, 0.1)
        settings = TransferSettings(
            part_size=part_size, parts_in_flight=4, buffers=buffers
        )
        clients = []
        for i in range(count):
            hint = size_hints[i] if i < len(size_hints) else None
            writer = UploadWriter(store, f"file{i}", settings, size_hint=hint)
            clients.append(Client(writer, random_bytes(size), self.CHUNK))
        return buffers, store, clients

    def run_all(
        self,
        buffers: UploadBuffers,
        clients: list[Client],
        check: Callable[[], None] = lambda: None,
        settled: bool = True,
    ) -> None:
        """
        Tick until every upload is stored (bounded), checking each tick;
        then, if C{settled}, the budget is empty.
        """
        for _ in range(100_000):
            for client in clients:
                client.tick()
            check()
            # Every waiting claim is a writer whose client is paused.
            self.assertLessEqual(buffers.waiting, sum(c.paused for c in clients))
            if all(c.result is not None and c.result.called for c in clients):
                break
            self.clock.advance(0.01)
        for client in clients:
            info = self.successResultOf(client.result)
            self.assertEqual(info.size, len(client.data))
        if settled:
            self.assertEqual((buffers.used, buffers.waiting), (0, 0))

    def test_fair_turns_within_budget(self) -> None:
        """
        Eight uploads share a budget of three parts (fewer than one part
        each): all are stored whole, none fails; memory never exceeds the
        budget plus what each writer holds before its first claim (its
        first L{UNCLAIMED} bytes and the read that passes them); the
        writers take turns, so none gets more than two parts ahead of
        another while all are sending.
        """
        buffers, store, clients = self.uploads(8, 6 * MiB + 123, 3 * MiB)
        bound = 3 * MiB + 8 * (UNCLAIMED + self.CHUNK)
        spread = []

        def check() -> None:
            self.assertLessEqual(buffers.used, bound)
            if all(c.sent < len(c.data) for c in clients):
                sent = [c.sent for c in clients]
                spread.append(max(sent) - min(sent))

        self.run_all(buffers, clients, check)
        for i, client in enumerate(clients):
            self.assertEqual(store.stored_bytes(f"file{i}"), client.data)
            self.assertGreater(client.pauses, 0)
        self.assertGreater(buffers.waited, 8)
        self.assertLessEqual(max(spread), 2 * MiB + self.CHUNK)
        self.assertGreater(buffers.peak, 3 * MiB)
        self.assertLessEqual(buffers.peak, bound)

    def test_uploads_starting_together(self) -> None:
        """
        32 uploads start at once, each with a first read of 200,000 bytes
        (what a client sent before the gateway read its connection), then
        reads of 1 MiB (an FTP data connection's): each claims after its
        first read, so together they hold no more than the budget and one
        first read each.  (Holding their first 256 KiB without a claim, each
        took a 1 MiB read too, and they held 59 MiB.)
        """
        self.clock = MemoryReactorClock()
        buffers = UploadBuffers(32 * MiB)
        store = SlowParts(self.clock, 0.1)
        settings = TransferSettings(part_size=8 * MiB, buffers=buffers)
        clients = []
        for i in range(32):
            writer = UploadWriter(store, f"file{i}", settings)
            clients.append(Client(writer, random_bytes(3 * MiB), MiB))
        for client in clients:
            client.writer.write(client.data[:200_000])
            client.sent = 200_000
        self.run_all(buffers, clients)
        self.assertLessEqual(buffers.peak, 32 * MiB + 32 * 200_000)

    def test_parts_larger_than_the_budget(self) -> None:
        """
        Parts of 3 MiB with a 2 MiB budget: each upload in its turn gets a
        whole part (outside the budget, one at a time) and all complete;
        memory stays within the budget plus one part.
        """
        buffers, store, clients = self.uploads(3, 7 * MiB, 2 * MiB, part_size=3 * MiB)

        def check() -> None:
            # The budget, one part outside it, and what two others hold
            # before their first claim.
            self.assertLessEqual(
                buffers.used, 2 * MiB + 3 * MiB + 2 * (UNCLAIMED + self.CHUNK)
            )
            self.assertLessEqual(store.in_flight, 1)

        self.run_all(buffers, clients, check)
        for i, client in enumerate(clients):
            self.assertEqual(store.stored_bytes(f"file{i}"), client.data)

    def test_big_parts_hold_nobody_back(self) -> None:
        """
        One upload whose parts are over half the budget (a large size
        hint) stalls while filling its part: the ordinary uploads beside it
        go on and finish.
        """
        hint = 10_000 * 3 * MiB  # parts of 3 MiB
        buffers, store, clients = self.uploads(3, 4 * MiB, 4 * MiB, size_hints=(hint,))
        big, others = clients[0], clients[1:]
        big.tick()  # its first read; its big claim is granted
        self.assertFalse(big.paused)
        big.paused = True  # its client stops sending, part unfinished
        self.run_all(buffers, others, settled=False)
        for i in (1, 2):
            self.assertEqual(store.stored_bytes(f"file{i}"), clients[i].data)
        big.paused = False
        self.run_all(buffers, [big])
        self.assertEqual(store.stored_bytes("file0"), big.data)

    def test_small_file_never_waits(self) -> None:
        """
        With the budget spent by others, a file that comes in one read and
        ends is stored at once: its writer never claims a turn.
        """
        buffers, store, clients = self.uploads(2, 4 * MiB, 2 * MiB)
        for client in clients:
            client.tick()
        self.assertEqual(buffers.waiting, 0)
        for _ in range(8):
            clients[0].tick()
        self.assertTrue(clients[0].paused)
        self.assertEqual(buffers.waiting, 1)
        small = UploadWriter(store, "small", clients[0].writer.settings)
        producer = Client(small, b"x" * 1000, self.CHUNK)
        producer.tick()
        info = self.successResultOf(small.finish())
        self.assertEqual((info.size, producer.pauses), (1000, 0))
        self.assertEqual(store.stored_bytes("small"), b"x" * 1000)

    def test_abort_and_finish_while_waiting(self) -> None:
        """
        A writer aborted while its claim waits gives its turn to the next;
        one that finishes while waiting stores what it holds at once; the
        budget ends empty.
        """
        buffers, store, clients = self.uploads(3, 3 * MiB, MiB)
        for client in clients * 2:
            client.tick()
        first, second, third = clients
        self.assertEqual(buffers.waiting, 2)
        self.assertEqual([c.paused for c in clients], [False, True, True])
        self.successResultOf(second.writer.abort())
        self.assertIs(second.writer.state, UploadState.ABORTED)
        self.failureResultOf(second.writer.finish(), TransferStopped)
        third.data = third.data[: third.sent]  # the client ends the stream
        third.paused = False
        second.result = succeed(None)
        self.run_all(buffers, [first, third])
        self.assertEqual(store.stored_bytes("file2"), third.data)
        self.assertEqual(store.stored_bytes("file0"), first.data)
        self.assertNotIn("file1", store.stored_keys())
        self.assertEqual(store.stored_uploads(), [])

    def store_parts(
        self, store: FakeStore, keep: tuple[int, ...] = ()
    ) -> list[memoryview]:
        """
        Answer every part the store was sent, forgetting it (as a store
        does once a part is stored) unless its number is in C{keep}.

        @return: The parts kept.
        """
        kept = []
        for call in store.unsettled("upload_part"):
            number, size = call.args[2], len(call.args[3])
            if number in keep:
                kept.append(call.args[3])
            call.args = ()
            call.deferred.callback(PartInfo(number, f"e{number}", size))
        return kept

    def write(self, buffers: UploadBuffers, data: bytes) -> tuple[FakeStore, Any]:
        """An upload of C{data} in 2 MiB parts, sent in reads of 100,000 bytes."""
        store = FakeStore({"create_multipart", "complete_multipart"})
        writer = UploadWriter(
            store, KEY, TransferSettings(part_size=2 * MiB, buffers=buffers)
        )
        for i in range(0, len(data), 100_000):
            writer.write(data[i : i + 100_000])
        return store, writer.finish()

    def test_parts_in_blocks(self) -> None:
        """
        Each part is one block of its own, mapped when its claim is granted,
        that its reads are copied into: the store gets a view of the block
        (nothing is joined), the short last part a view of its bytes only.
        """
        joined: list[int] = []

        class Runner:
            def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
                joined.append(len(args[0]))
                return succeed(f(*args))

        buffers = UploadBuffers(8 * MiB, Runner())
        data = random_bytes(5 * MiB)
        store, done = self.write(buffers, data)
        parts = [c.args[3] for c in store.calls_to("upload_part")]
        self.assertEqual(joined, [])
        self.assertEqual([type(p.obj) for p in parts], [mmap.mmap] * 3)
        self.assertEqual([len(p) for p in parts], [2 * MiB, 2 * MiB, MiB])
        self.assertEqual([len(p.obj) for p in parts], [2 * MiB] * 3)
        self.assertEqual(b"".join(parts), data)
        del parts
        self.store_parts(store)
        self.successResultOf(done)
        self.assertEqual(buffers.used, 0)

    def test_blocks_reused(self) -> None:
        """
        A part's block, once the part is stored, serves a later part
        (written afresh, it faults no page in); a block that someone still
        sees (here a part the store kept) is never reused.
        """
        buffers = UploadBuffers(6 * MiB)
        first, second = random_bytes(6 * MiB), random_bytes(6 * MiB)
        store, done = self.write(buffers, first)
        blocks = [c.args[3].obj for c in store.calls_to("upload_part")]
        self.assertEqual([type(b) for b in blocks], [mmap.mmap] * 3)
        (seen,) = self.store_parts(store, keep=(1,))
        self.successResultOf(done)
        self.assertEqual(buffers.used, 0)
        store, done = self.write(buffers, second)
        again = [c.args[3].obj for c in store.calls_to("upload_part")]
        reused = [any(a is b for a in again) for b in blocks]
        self.assertEqual(reused, [False, True, True])
        parts = [c.args[3] for c in store.calls_to("upload_part")]
        self.assertEqual(b"".join(parts), second)
        self.assertEqual(bytes(seen), first[: 2 * MiB])
        del parts
        self.store_parts(store)
        self.successResultOf(done)
