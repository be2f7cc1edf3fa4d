"""
Two files uploaded at once over one SSH connection, whose upload buffer
budget holds one part at a time: the file waiting for the budget must not
stop the connection's input, which the other, holding the budget's turn,
needs to fill its part (each would wait for the other for ever).  Through a
real gateway with paramiko: two SFTP channels (C{putfo} in two threads, and
one thread writing both with many writes in flight), and two files of one
SFTP session written in turns.  Then the pieces, without sockets: an upload
writer says when it holds its turn (L{UploadWriter.hungry}), the SFTP
server turns that into the connection's input, and a positional writer
acknowledges writes in their order even when a reply it releases makes the
protocol take the next write at once (paramiko's pipelined writes wait for
the replies in order, and hung when one overtook another).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

import paramiko
from paramiko.sftp import CMD_WRITE, int64
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from cosgw.frontends.sftp.server import GatewaySFTPServer
from cosgw.transfer import (
    PositionalWriter,
    TransferSettings,
    UploadBuffers,
    UploadWriter,
)
from cosgw.transfer.buffers import UNCLAIMED
from tests.harness import PASSWORD, MiB, in_thread, random_bytes, sha256, start_gateway
from tests.transfertesting import FakeStore

KiB = 1024
#: Far less than a part, so only one part is held at a time (the budget's
#: lane for parts over half of it).
BUDGET = 512 * KiB
#: Parts larger than the 2 MiB of acknowledgements a waiting file holds
#: before it stops the connection's input.
PART = 4 * MiB
DEADLINE = 20.0


def pipelined(
    client: paramiko.SFTPClient, name: str, data: bytes, write: int, window: int
) -> None:
    """
    Upload C{data} as C{name} in WRITEs of C{write} bytes, up to C{window}
    of them unacknowledged (C{putfo} keeps about 100), then close it.
    """
    handle = client.open(name, "wb")
    unanswered = 0
    for at in range(0, len(data), write):
        while unanswered >= window:
            client._read_response()  # one reply
            unanswered -= 1
        client._async_request(
            type(None), CMD_WRITE, handle.handle, int64(at), data[at : at + write]
        )
        unanswered += 1
    while unanswered:
        client._read_response()
        unanswered -= 1
    handle.close()


def put_all(
    clients: list[paramiko.SFTPClient],
    files: dict[str, bytes],
    put: Callable[[paramiko.SFTPClient, str, bytes], None],
) -> dict[str, str]:
    """
    C{put(client i, name, data)} for file i of C{files}, each in a thread
    of its own, all at once: what each ended with ("ok" or its error), and
    the threads still running at the deadline.
    """
    results: dict[str, str] = {}
    start = threading.Barrier(len(files))

    def run(client: paramiko.SFTPClient, name: str, data: bytes) -> None:
        try:
            start.wait(DEADLINE)
            put(client, name, data)
            results[name] = "ok"
        except (OSError, paramiko.SSHException, threading.BrokenBarrierError) as e:
            results[name] = repr(e)

    threads = [
        threading.Thread(target=run, args=(c, n, d), daemon=True)
        for c, (n, d) in zip(clients, files.items())
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEADLINE
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stalled = [t.name for t in threads if t.is_alive()]
    if stalled:
        results["stalled"] = " ".join(stalled)
    return results


def interleave(
    client: paramiko.SFTPClient, files: dict[str, bytes], write: int, window: int
) -> None:
    """
    Write C{files} in turns through one SFTP session, a WRITE of C{write}
    bytes to each in turn, up to C{window} writes unacknowledged over all
    files (as sshfs keeps many in flight); close each file once all its
    writes are acknowledged.
    """
    opened = {name: client.open(name, "wb") for name in files}
    offsets = dict.fromkeys(files, 0)
    sent: dict[str, list[int]] = {name: [] for name in files}

    def unanswered(name: str) -> int:
        return sum(n in client._expecting for n in sent[name])

    def answer_one() -> None:
        client._read_response()  # one reply, any file's
        for name in list(opened):
            if offsets[name] >= len(files[name]) and not unanswered(name):
                opened.pop(name).close()

    while any(offsets[n] < len(data) for n, data in files.items()):
        for name, data in files.items():
            at = offsets[name]
            if at >= len(data):
                continue
            while sum(unanswered(n) for n in files) >= window:
                answer_one()
            sent[name].append(
                client._async_request(
                    type(None),
                    CMD_WRITE,
                    opened[name].handle,
                    int64(at),
                    data[at : at + write],
                )
            )
            offsets[name] = min(len(data), at + write)
    while opened:
        answer_one()


def putfo(client: paramiko.SFTPClient, name: str, data: bytes) -> None:
    client.putfo(io.BytesIO(data), name, confirm=False)


class TwoFilesOneConnectionTests(unittest.TestCase):
    timeout = DEADLINE + 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(
            self,
            "local",
            part_size=PART,
            parts_in_flight=2,
            transfer_overrides={"upload_buffer_budget": BUDGET},
        )
        buffers = self.gw.service.accounts.settings.buffers
        assert isinstance(buffers, UploadBuffers)
        self.buffers = buffers
        self.files = {f"f{i}.bin": random_bytes(3 * PART) for i in range(2)}

    def connect(self) -> paramiko.Transport:
        transport = paramiko.Transport((self.gw.host, self.gw.sftp_port))
        self.addCleanup(transport.close)
        transport.connect(username="alice", password=PASSWORD)
        return transport

    def sftp(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        client.get_channel().settimeout(DEADLINE)
        return client

    def check_stored(self, results: dict[str, str]) -> None:
        self.assertEqual(results, {name: "ok" for name in self.files})
        for name, data in self.files.items():
            self.assertEqual(sha256(self.gw.inspector.read(name)), sha256(data))
        self.assertGreater(self.buffers.waited, 0)
        self.assertEqual((self.buffers.used, self.buffers.waiting), (0, 0))

    @defer.inlineCallbacks
    def test_two_channels(self) -> Any:
        """Two SFTP channels on one connection, C{putfo} in two threads."""

        def run() -> dict[str, str]:
            transport = self.connect()
            clients = [self.sftp(transport), self.sftp(transport)]
            return put_all(clients, self.files, putfo)

        results = yield in_thread(run)
        self.check_stored(results)

    @defer.inlineCallbacks
    def test_two_channels_many_writes(self) -> Any:
        """
        Two channels, each with 256 writes of 8 KiB in flight: the waiting
        file's channel has more requests in flight than its session takes
        (128) before its acknowledgements reach 2 MiB, so that session
        holds the connection's input for its own reasons.
        """

        def put(client: paramiko.SFTPClient, name: str, data: bytes) -> None:
            pipelined(client, name, data, 8 * KiB, window=256)

        def run() -> dict[str, str]:
            transport = self.connect()
            clients = [self.sftp(transport), self.sftp(transport)]
            return put_all(clients, self.files, put)

        results = yield in_thread(run)
        self.check_stored(results)

    @defer.inlineCallbacks
    def test_two_files_of_one_session(self) -> Any:
        """
        One SFTP session, two files written in turns: the waiting file holds
        more than 2 MiB of unacknowledged writes before the other has filled
        its part, and the session must go on reading for that one.
        """

        def run() -> dict[str, str]:
            client = self.sftp(self.connect())
            interleave(client, self.files, 128 * KiB, window=64)
            return {name: "ok" for name in self.files}

        results = yield in_thread(run)
        self.check_stored(results)


class HungerTests(unittest.SynchronousTestCase):
    def test_writer_tells_when_it_holds_its_turn(self) -> None:
        """
        An upload writer is hungry while its granted claim waits for the
        part's bytes: not before it claims, not while its claim waits, not
        once the part is cut or the stream ends.
        """
        store = FakeStore(auto=["create_multipart", "complete_multipart"])
        buffers = UploadBuffers(3 * MiB // 2)
        writer = UploadWriter(
            store, "k", TransferSettings(part_size=MiB, buffers=buffers)
        )
        told: list[bool] = []
        writer.watch_hunger(told.append)
        writer.write(b"x" * UNCLAIMED)
        self.assertEqual(told, [])  # a small file claims nothing
        writer.write(b"x")
        self.assertEqual(told, [True])  # granted at once
        writer.write(b"x" * (MiB - UNCLAIMED - 1))
        # The part is cut; the next claim waits for it to be stored.
        self.assertEqual((told, buffers.waiting), ([True, False], 1))
        store.answer(store.unsettled("upload_part")[0])
        self.assertEqual(told, [True, False, True])
        d = writer.finish()
        self.assertEqual(told, [True, False, True, False])
        self.successResultOf(d)

    def test_server_keeps_the_connection_read_for_a_hungry_upload(self) -> None:
        """
        A handle's pressure holds the connection's input unless another
        handle's upload holds its turn; that one feeds the connection.
        """
        server = GatewaySFTPServer(fs=None)  # type: ignore[arg-type]  # unused
        told: list[tuple[str, bool]] = []
        server.pause_input = lambda on: told.append(("pause", on))
        server.feed_input = lambda on: told.append(("feed", on))
        waiting, filling = object(), object()
        server.pressure(waiting, True)
        self.assertEqual(told, [("pause", True)])
        server.hunger(filling, True)
        self.assertEqual(told[1:], [("feed", True), ("pause", False)])
        server.hunger(filling, False)
        self.assertEqual(told[3:], [("feed", False), ("pause", True)])
        server.pressure(waiting, False)
        self.assertEqual(told[5:], [("pause", False)])


class OrderedAcknowledgementTests(unittest.SynchronousTestCase):
    def test_release_keeps_the_order(self) -> None:
        """
        Writes held while the parts in flight are full are acknowledged in
        order once they go; a write that comes while they are being
        released (the protocol takes the next request as soon as a reply
        is sent) is acknowledged after them, not before.
        """
        store = FakeStore(auto=["create_multipart", "complete_multipart", "put"])
        writer = UploadWriter(
            store, "k", TransferSettings(part_size=MiB, parts_in_flight=1)
        )
        positional = PositionalWriter(writer, window=0)
        order: list[int] = []
        data = b"y" * (32 * KiB)
        written = [0]

        def write() -> None:
            index = written[0]
            written[0] += 1
            ack: Optional[Deferred[None]] = positional.write(index * len(data), data)
            if ack is None:
                order.append(index)
            else:
                ack.addCallback(lambda _: order.append(index))

        for _ in range(96):  # three parts' worth: one in flight, one waiting
            write()
        self.assertLess(len(order), 96)
        # The first reply released brings the next write in, once.
        first_held = len(order)
        positional._held[0][1].addCallback(lambda _: write())
        while store.unsettled("upload_part"):
            store.answer(store.unsettled("upload_part")[0])
        self.assertGreater(len(order), first_held + 1)
        self.assertEqual(order, sorted(order))
