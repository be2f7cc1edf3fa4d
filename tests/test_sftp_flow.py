"""
Tests for L{cosgw.frontends.sftp.flow} and the flow control built on it:
the chunk queue, the request gate's marks, the session channel's window
and output queue, and an SFTP session that stops taking requests (and
reading its connection) at its caps.  Real protocol objects over an SSH
transport that records what it is asked to send; the sockets are in
test_sftp_abuse.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any, Optional

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.connection import (
    MSG_CHANNEL_CLOSE,
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_WINDOW_ADJUST,
)
from twisted.conch.ssh.filetransfer import FX_BAD_MESSAGE, FXP_DATA, FXP_STATUS
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cosgw.frontends.sftp.flow import (
    OUTPUT_FLOOR,
    OUTPUT_LIMIT,
    OUTPUT_TOTAL,
    ChunkQueue,
    OutputWatch,
    RequestGate,
)
from cosgw.frontends.sftp.protocol import MAX_SFTP_PACKET, FileTransfer
from cosgw.frontends.sftp.session import (
    SESSION_WINDOW,
    GatewayConnection,
    SFTPSession,
    SFTPUser,
)
from tests.sshtesting import RootOnlySFTP

KiB = 1024
MiB = 1024 * KiB


class ChunkQueueTests(SynchronousTestCase):
    def test_take_and_peek_across_chunks(self) -> None:
        q = ChunkQueue()
        for piece in (b"abc", b"", b"defg", b"h"):
            q.append(piece)
        self.assertEqual(len(q), 8)
        self.assertEqual(q.peek(5), b"abcde")
        self.assertEqual(q.take(2), b"ab")
        self.assertEqual(q.peek(100), b"cdefgh")
        self.assertEqual(q.take(3), b"cde")
        self.assertEqual(q.take(100), b"fgh")
        self.assertFalse(q)
        self.assertEqual(q.take(1), b"")

    def test_whole_chunks_are_not_copied(self) -> None:
        """Taking a chunk whole hands back the very object appended."""
        big = bytes(1 * MiB)
        q = ChunkQueue()
        q.append(big)
        q.append(b"tail")
        self.assertIs(q.take(len(big)), big)
        self.assertEqual(q.take(4), b"tail")

    def test_take_views_copies_nothing(self) -> None:
        queue = ChunkQueue()
        first, second = b"abcdef", b"ghij"
        queue.append(first)
        queue.append(memoryview(second))
        queue.take(1)
        views = queue.take_views(7)
        self.assertEqual([bytes(v) for v in views], [b"bcdef", b"gh"])
        self.assertIs(views[0].obj, first)
        self.assertIs(views[1].obj, second)
        self.assertEqual((len(queue), queue.take(10)), (2, b"ij"))

    def test_many_small_takes_of_one_chunk(self) -> None:
        data = bytes(range(256)) * 64
        q = ChunkQueue()
        q.append(data)
        got = [q.take(45) for _ in range(len(data) // 45 + 1)]
        self.assertEqual(b"".join(got), data)
        self.assertEqual(len(q), 0)


class RequestGateTests(SynchronousTestCase):
    def test_request_count(self) -> None:
        gate = RequestGate(max_requests=8, high_water=MiB, low_water=MiB // 2)
        for i in range(8):
            self.assertTrue(gate.accepting(0))
            gate.dispatched(struct.pack("!L", i))
        self.assertFalse(gate.accepting(0))
        gate.answered(struct.pack("!L", 0))
        self.assertFalse(gate.accepting(0))  # 7 > 3/4 of 8
        gate.answered(struct.pack("!L", 1))
        self.assertTrue(gate.accepting(0))  # 6: taken again
        self.assertEqual(gate.in_flight, 6)

    def test_reply_bytes(self) -> None:
        gate = RequestGate(max_requests=100, high_water=100, low_water=40)
        gate.dispatched(b"r1", 60)
        self.assertTrue(gate.accepting(waiting=39))
        self.assertFalse(gate.accepting(waiting=40))  # 60 promised + 40 waiting
        self.assertFalse(gate.accepting(waiting=1))  # 61 > low water
        gate.answered(b"r1")
        self.assertFalse(gate.accepting(waiting=41))
        self.assertTrue(gate.accepting(waiting=40))
        self.assertFalse(gate.accepting(waiting=0, output_full=True))
        self.assertTrue(gate.accepting(waiting=0))

    def test_ids(self) -> None:
        """A reused id settles its oldest request; unknown ids settle none."""
        gate = RequestGate()
        gate.dispatched(b"same", 10)
        gate.dispatched(b"same", 20)
        self.assertFalse(gate.answered(b"other"))
        self.assertTrue(gate.answered(b"same"))
        self.assertEqual((gate.in_flight, gate.promised), (1, 20))
        self.assertTrue(gate.answered(b"same"))
        self.assertFalse(gate.answered(b"same"))
        self.assertEqual((gate.in_flight, gate.promised), (0, 0))

    def test_bad_marks(self) -> None:
        self.assertRaises(ValueError, RequestGate, 8, 10, 20)
        self.assertRaises(ValueError, RequestGate, 0, 10, 5)


# --------------------------------------------------------------------------
# A session channel and an SFTP session over a recording SSH transport
# --------------------------------------------------------------------------


class WatchedSSH:
    """An SSH transport as L{OutputWatch} sees it: what it was told."""

    def __init__(self) -> None:
        self.transport = SimpleNamespace(SEND_LIMIT=128 * KiB, bufferSize=64 * KiB)
        self.factory: Any = None
        self.changes: list[bool] = []
        self.released = False

    def output_changed(self, full: bool) -> None:
        self.changes.append(full)

    def release_write_side(self) -> None:
        self.released = True


class OutputWatchTests(SynchronousTestCase):
    """
    Full once Twisted paused the producer (its buffer passed its own 64 KiB)
    and more than the limit was written since the buffer was last empty.
    """

    def test_full_past_limit_while_paused(self) -> None:
        ssh = WatchedSSH()
        watch = OutputWatch(ssh)
        self.assertEqual(watch.limit, OUTPUT_LIMIT)
        # Reads stay Twisted's size; a full buffer goes in one send.
        self.assertEqual(ssh.transport.bufferSize, 64 * KiB)
        self.assertEqual(ssh.transport.SEND_LIMIT, 2 * OUTPUT_LIMIT)
        watch.wrote(96 * KiB)
        watch.pauseProducing()  # Twisted: over its 64 KiB
        self.assertEqual(ssh.changes, [])
        watch.wrote(OUTPUT_LIMIT - 96 * KiB)
        self.assertEqual(ssh.changes, [])
        watch.wrote(32 * KiB)
        self.assertEqual(ssh.changes, [True])
        watch.resumeProducing()  # the buffer is empty
        self.assertEqual(ssh.changes, [True, False])
        # Counted again from the empty buffer.
        watch.wrote(OUTPUT_LIMIT)
        watch.pauseProducing()
        self.assertEqual(ssh.changes, [True, False])
        watch.wrote(1)
        self.assertEqual(ssh.changes, [True, False, True])

    def test_written_without_pause_is_not_full(self) -> None:
        ssh = WatchedSSH()
        watch = OutputWatch(ssh, limit=128 * KiB)
        watch.wrote(1 * MiB)
        self.assertEqual(ssh.changes, [])
        # A pause after that many bytes (never empty meanwhile): full at once.
        watch.pauseProducing()
        self.assertEqual(ssh.changes, [True])

    def test_connections_share_a_total(self) -> None:
        """
        Many connections get less each (one reactor turn encrypts a buffer
        for each), down to Twisted's 64 KiB; the share is taken again each
        time the buffer empties.
        """
        ssh = WatchedSSH()
        ssh.factory = SimpleNamespace(connections={object() for _ in range(16)})
        watch = OutputWatch(ssh)
        self.assertEqual(watch.share(), OUTPUT_TOTAL // 16)
        ssh.factory.connections = {object() for _ in range(100)}
        self.assertEqual(watch.share(), OUTPUT_FLOOR)
        watch.pauseProducing()
        watch.wrote(OUTPUT_TOTAL // 16)
        self.assertEqual(ssh.changes, [])  # the share it had
        watch.resumeProducing()
        watch.wrote(OUTPUT_FLOOR + 1)
        watch.pauseProducing()
        self.assertEqual(ssh.changes, [False, True])

    def test_resume_while_closing_releases(self) -> None:
        ssh = WatchedSSH()
        ssh.transport.disconnecting = True
        watch = OutputWatch(ssh)
        watch.pauseProducing()
        watch.resumeProducing()
        self.assertTrue(ssh.released)
        self.assertEqual(ssh.changes, [])


class RecordingSSH:
    """What the connection and the SFTP session use of the SSH transport."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []
        self.holders: set[object] = set()
        self.output_full = False
        self.watchers: list[Any] = []
        self.disconnects: list[tuple[int, Any]] = []
        self.peer = "192.0.2.7"
        #: The reactor of the channel's timers: the end of a turn, when a
        #: DATA reply's last packet held back (to fill it) is sent.
        self.clock = Clock()
        self.factory = SimpleNamespace(reactor=self.clock)

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))

    def hold_input(self, holder: object, on: bool) -> None:
        if on:
            self.holders.add(holder)
        else:
            self.holders.discard(holder)

    def watch_output(self, watcher: Any) -> None:
        self.watchers.append(watcher)

    def unwatch_output(self, watcher: Any) -> None:
        self.watchers.remove(watcher)

    def sendDisconnect(self, reason: int, description: Any) -> None:
        self.disconnects.append((reason, description))

    def set_output_full(self, full: bool) -> None:
        self.output_full = full
        for watcher in list(self.watchers):
            watcher()

    def take(self, kind: int) -> list[bytes]:
        """
        The payloads of the packets of C{kind} sent since the last take, at
        the end of this reactor turn.
        """
        self.clock.advance(0)
        found = [p for k, p in self.packets if k == kind]
        self.packets = [(k, p) for k, p in self.packets if k != kind]
        return found


@implementer(ISFTPFile)
class HeldFile:
    def __init__(self, reads: list[tuple[Deferred[bytes], int]]) -> None:
        self.reads = reads

    def readChunk(self, offset: int, length: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.reads.append((d, length))
        return d

    def writeChunk(self, offset: int, data: bytes) -> None:
        pass

    def getAttrs(self) -> dict:
        return {}

    def setAttrs(self, attrs: dict) -> None:
        pass

    def close(self) -> None:
        pass


@implementer(ISFTPServer)
class HeldReads(RootOnlySFTP):
    """One file, whose reads wait until the test answers them."""

    def __init__(self) -> None:
        self.reads: list[tuple[Deferred[bytes], int]] = []

    def openFile(self, filename: bytes, flags: int, attrs: dict) -> HeldFile:
        return HeldFile(self.reads)


def sftp(kind: int, body: bytes) -> bytes:
    return struct.pack("!LB", len(body) + 1, kind) + body


def read_request(request_id: int, handle: bytes, length: int = 32 * KiB) -> bytes:
    return sftp(
        5, struct.pack("!L", request_id) + NS(handle) + struct.pack("!QL", 0, length)
    )


class SessionTestsMixin:
    def build(
        self, remote_window: int = 64 * MiB, server: Optional[Any] = None
    ) -> tuple[RecordingSSH, GatewayConnection, SFTPSession]:
        ssh = RecordingSSH()
        conn = GatewayConnection()
        conn.transport = ssh  # type: ignore[assignment]  # the recording stand-in
        avatar = SFTPUser("alice", server or HeldReads(), FileTransfer)
        channel = SFTPSession(
            remoteWindow=remote_window,
            remoteMaxPacket=32 * KiB,
            conn=conn,
            avatar=avatar,
        )
        channel.id = 0
        conn.channels[0] = channel
        conn.channelsToRemoteChannel[channel] = 9
        return ssh, conn, channel

    def client_sends(self, conn: GatewayConnection, data: bytes) -> None:
        """Channel data from the client, in 32 KiB packets."""
        for i in range(0, len(data), 32 * KiB):
            conn.ssh_CHANNEL_DATA(struct.pack(">L", 0) + NS(data[i : i + 32 * KiB]))

    def start_sftp(self, ssh: RecordingSSH, conn: GatewayConnection) -> bytes:
        """Start the subsystem, INIT, OPEN; return the handle."""
        channel = conn.channels[0]
        channel.request_subsystem(NS(b"sftp"))
        self.client_sends(conn, sftp(1, struct.pack("!L", 3)))
        self.client_sends(conn, sftp(3, struct.pack("!L", 1) + NS(b"f") + bytes(8)))
        replies = replies_in(ssh)
        assert [r[0] for r in replies] == [2, 102], replies
        return getNS(replies[1][1][4:])[0]


def replies_in(ssh: RecordingSSH) -> list[tuple[int, bytes]]:
    """The SFTP packets in the channel data sent since the last call."""
    stream = b"".join(getNS(p[4:])[0] for p in ssh.take(MSG_CHANNEL_DATA))
    out = []
    while stream:
        (length,) = struct.unpack("!L", stream[:4])
        out.append((stream[4], stream[5 : 4 + length]))
        stream = stream[4 + length :]
    return out


class ChannelTests(SessionTestsMixin, SynchronousTestCase):
    def test_output_waits_for_window(self) -> None:
        ssh, conn, channel = self.build(remote_window=10)
        sent: list[int] = []
        channel.on_output_sent = lambda: sent.append(channel.output_waiting)
        channel.write(b"x" * 100)
        self.assertEqual(
            [len(getNS(p[4:])[0]) for p in ssh.take(MSG_CHANNEL_DATA)], [10]
        )
        self.assertEqual(channel.output_waiting, 90)
        channel.loseConnection()
        self.assertEqual(ssh.take(MSG_CHANNEL_CLOSE), [])  # not before its output
        channel.addWindowBytes(50)
        self.assertEqual(channel.output_waiting, 40)
        self.assertEqual(sent, [40])
        channel.addWindowBytes(40 * KiB)
        data = [len(getNS(p[4:])[0]) for p in ssh.take(MSG_CHANNEL_DATA)]
        self.assertEqual(data, [50, 40])
        self.assertEqual(len(ssh.take(MSG_CHANNEL_CLOSE)), 1)

    def test_output_waits_for_the_tcp_buffer(self) -> None:
        """
        While the TCP transport's buffer is over its limit, a reply waits
        in the channel, not encrypted (nothing is sent, it counts as
        waiting for the gate, and no request is taken); once the buffer
        empties it goes, and requests are taken again.
        """
        server = HeldReads()
        ssh, conn, channel = self.build(server=server)
        handle = self.start_sftp(ssh, conn)
        self.client_sends(conn, read_request(10, handle))
        ssh.set_output_full(True)
        server.reads[0][0].callback(b"d" * (32 * KiB))
        self.assertEqual(ssh.take(MSG_CHANNEL_DATA), [])
        self.assertEqual(channel.output_waiting, 32 * KiB + 13)
        self.client_sends(conn, read_request(11, handle))
        self.assertEqual(len(server.reads), 1)
        ssh.set_output_full(False)
        self.assertEqual(channel.output_waiting, 0)
        self.assertEqual(len(server.reads), 2)
        [(kind, body)] = replies_in(ssh)
        self.assertEqual((kind, body[:4]), (FXP_DATA, struct.pack("!L", 10)))
        self.assertEqual(getNS(body[4:])[0], b"d" * (32 * KiB))

    def test_read_replies_fill_packets(self) -> None:
        """
        Four 32 KiB READs answered in one turn: their replies (13 bytes
        over 32 KiB each) go out in four full packets of the client's
        maximum size and, at the end of the turn, one of 52 bytes; not in
        eight.  A reply alone still goes out whole by the end of its turn.
        """
        server = HeldReads()
        ssh, conn, channel = self.build(server=server)
        handle = self.start_sftp(ssh, conn)
        self.client_sends(conn, b"".join(read_request(i, handle) for i in range(4)))
        for n, (d, length) in enumerate(server.reads):
            d.callback(bytes([n]) * length)

        def sizes() -> list[int]:
            return [
                len(getNS(p[4:])[0]) for k, p in ssh.packets if k == MSG_CHANNEL_DATA
            ]

        self.assertEqual(sizes(), [32 * KiB] * 4)
        ssh.clock.advance(0)
        self.assertEqual(sizes(), [32 * KiB] * 4 + [52])
        replies = replies_in(ssh)
        self.assertEqual(
            [(k, body[:4], body[8:]) for k, body in replies],
            [(FXP_DATA, struct.pack("!L", n), bytes([n]) * 32 * KiB) for n in range(4)],
        )
        self.client_sends(conn, read_request(9, handle))
        server.reads[-1][0].callback(b"z" * 32 * KiB)
        self.assertEqual(sizes(), [32 * KiB])
        ssh.clock.advance(0)
        self.assertEqual(sizes(), [32 * KiB, 13])

    def test_held_packet_sent_before_close_on_eof(self) -> None:
        """The client's EOF closes the channel after a held packet, not over it."""
        server = HeldReads()
        ssh, conn, channel = self.build(server=server)
        handle = self.start_sftp(ssh, conn)
        self.client_sends(conn, read_request(1, handle))
        server.reads[0][0].callback(b"e" * 32 * KiB)
        conn.ssh_CHANNEL_EOF(struct.pack(">L", 0))
        kinds = [
            k for k, _ in ssh.packets if k in (MSG_CHANNEL_DATA, MSG_CHANNEL_CLOSE)
        ]
        self.assertEqual(kinds, [MSG_CHANNEL_DATA, MSG_CHANNEL_DATA, MSG_CHANNEL_CLOSE])
        [(kind, body)] = replies_in(ssh)
        self.assertEqual((kind, body[8:]), (FXP_DATA, b"e" * 32 * KiB))

    def test_window_refilled_for_bytes_taken(self) -> None:
        """Without a reader, received bytes hold the window; taken, they refill it."""
        ssh, conn, channel = self.build()
        self.client_sends(conn, bytes(SESSION_WINDOW // 2 + 64 * KiB))
        self.assertEqual(ssh.take(MSG_CHANNEL_WINDOW_ADJUST), [])
        self.assertEqual(channel.window_credit(), 0)


class GateTests(SessionTestsMixin, SynchronousTestCase):
    def test_request_cap_holds_input(self) -> None:
        """
        200 READs arrive at once: 128 are taken, the connection's input is
        held; once the store answered 32, the session takes more and lets
        the connection be read again until it is full once more.
        """
        server = HeldReads()
        ssh, conn, channel = self.build(server=server)
        handle = self.start_sftp(ssh, conn)
        transfer = channel.client.transport.proto  # type: ignore[union-attr]
        self.client_sends(
            conn, b"".join(read_request(i, handle, 1) for i in range(10, 210))
        )
        self.assertEqual(len(server.reads), 128)
        self.assertEqual(ssh.holders, {transfer})
        for d, length in server.reads[:31]:
            d.callback(b"r" * length)
        self.assertEqual(len(server.reads), 128)  # 97 in flight: still stopped
        server.reads[31][0].callback(b"r")
        self.assertEqual(len(server.reads), 160)
        self.assertEqual(ssh.holders, {transfer})
        for d, length in server.reads[32:160]:
            d.callback(b"r" * length)
        self.assertEqual(len(server.reads), 200)
        for d, length in server.reads[160:]:
            d.callback(b"r" * length)
        self.assertEqual(ssh.holders, set())
        replies = replies_in(ssh)
        self.assertEqual([k for k, _ in replies], [FXP_DATA] * 200)
        ids = sorted(struct.unpack("!L", body[:4])[0] for _, body in replies)
        self.assertEqual(ids, list(range(10, 210)))

    def test_full_output_holds_input(self) -> None:
        server = HeldReads()
        ssh, conn, channel = self.build(server=server)
        handle = self.start_sftp(ssh, conn)
        ssh.set_output_full(True)
        self.client_sends(conn, read_request(10, handle))
        self.assertEqual(server.reads, [])
        self.assertEqual(len(ssh.holders), 1)
        ssh.set_output_full(False)
        self.assertEqual(len(server.reads), 1)
        self.assertEqual(ssh.holders, set())

    def test_replies_waiting_for_window(self) -> None:
        """
        A client that does not read its replies: once the gate's high water
        (512 KiB) waits for its window, no request is taken and its window
        is not refilled (what it sends meanwhile waits unparsed), but the
        connection goes on being read, for its WINDOW_ADJUST; once it reads,
        everything flows again.
        """
        server = HeldReads()
        ssh, conn, channel = self.build(remote_window=MiB, server=server)
        handle = self.start_sftp(ssh, conn)

        def answer_all() -> None:
            for d, length in server.reads:
                if not d.called:
                    d.callback(b"r" * length)

        self.client_sends(conn, b"".join(read_request(i, handle) for i in range(200)))
        answer_all()
        taken = len(server.reads)
        # The replies of 32 KiB went out as far as the 1 MiB window allowed;
        # the session stopped at the high water and waits for the low one.
        waiting = taken * (32 * KiB + 13) - MiB
        self.assertTrue(waiting <= channel.output_waiting <= waiting + 64)
        gate = channel.client.transport.proto.gate  # type: ignore[union-attr]
        self.assertLess(gate.low_water, channel.output_waiting)
        self.assertLess(channel.output_waiting, gate.high_water + 32 * KiB + 13)
        small = b"".join(read_request(i, handle, 1) for i in range(1000, 41000))
        self.client_sends(conn, small)
        self.assertEqual(len(server.reads), taken)
        self.assertEqual(ssh.holders, set())
        self.assertEqual(ssh.take(MSG_CHANNEL_WINDOW_ADJUST), [])
        self.assertLess(channel.localWindowLeft, SESSION_WINDOW // 2)
        # The client reads its replies.
        for _ in range(1000):
            if len(server.reads) == 40200 and not channel.output_waiting:
                break
            channel.addWindowBytes(8 * MiB)
            answer_all()
        self.assertEqual(len(server.reads), 40200)
        replies = replies_in(ssh)
        self.assertEqual(len(replies), 40200)
        self.assertEqual(
            sorted(struct.unpack("!L", body[:4])[0] for _, body in replies),
            [*range(200), *range(1000, 41000)],
        )
        self.assertNotEqual(ssh.take(MSG_CHANNEL_WINDOW_ADJUST), [])
        self.assertGreater(channel.localWindowLeft, SESSION_WINDOW // 2)

    def test_packet_too_long(self) -> None:
        """
        A packet declaring more than 256 KiB: BAD_MESSAGE for its id and a
        disconnect, as soon as its header is in; nothing of it is kept.
        """
        ssh, conn, channel = self.build()
        self.start_sftp(ssh, conn)
        header = struct.pack("!LBL", 100 * MiB, 6, 77)
        self.client_sends(conn, header + bytes(20 * KiB))
        [(kind, body)] = replies_in(ssh)
        self.assertEqual(kind, FXP_STATUS)
        self.assertEqual(struct.unpack("!LL", body[:8]), (77, FX_BAD_MESSAGE))
        self.assertEqual(len(ssh.disconnects), 1)
        self.assertIn(str(MAX_SFTP_PACKET), ssh.disconnects[0][1])
        self.assertEqual(
            channel.window_credit() + channel.localWindowLeft, SESSION_WINDOW
        )

    def test_largest_packet_accepted(self) -> None:
        ssh, conn, channel = self.build()
        handle = self.start_sftp(ssh, conn)
        body = struct.pack("!L", 5) + NS(handle) + struct.pack("!Q", 0)
        data = bytes(MAX_SFTP_PACKET - 1 - len(body) - 4)
        self.client_sends(conn, sftp(6, body + NS(data)))
        self.assertEqual(ssh.disconnects, [])
        [(kind, _)] = replies_in(ssh)  # OP_UNSUPPORTED: HeldFile cannot write
        self.assertEqual(kind, FXP_STATUS)
