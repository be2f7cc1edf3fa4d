"""
What makes an SFTP download cheap for the reactor, without sockets:

  - the packets of a turn reach the TCP transport in one write
    (L{PacketLayer.send_packets}), decrypted whole and in order by a
    client, and wait for a key exchange as Conch's own packets do;
  - a channel sends what waits in batches, each as far as the client's
    window and the TCP transport's room allow (L{OutputWatch.room}), one
    connection's room being 1 MiB;
  - reads of the store are two chunks while the download buffer budget
    has room to spare, one chunk (what a read needs) once a quarter of the
    budget is in use (L{DownloadBuffers.spare});
  - chacha20-poly1305 reuses its ChaCha20 contexts from packet to packet,
    each packet as from fresh ones.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Optional

from twisted.conch.ssh.common import NS
from twisted.conch.ssh.connection import MSG_CHANNEL_DATA
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from cosgw.frontends.sftp.aead import ChaChaPolyPacket
from cosgw.frontends.sftp.flow import OUTPUT_LIMIT, OUTPUT_TOTAL, OutputWatch
from cosgw.testing import MemoryStore
from cosgw.transfer import DownloadBuffers, RangedReader, TransferSettings
from tests.doortesting import DoorTestCase, pattern
from tests.test_sftp_aead import AEAD, AEADClient, make_pair
from tests.test_sftp_flow import (
    HeldReads,
    RecordingSSH,
    SessionTestsMixin,
    WatchedSSH,
    read_request,
    replies_in,
)
from tests.test_transfer_reader import SourceAt

KiB = 1024
MiB = 1024 * KiB
#: OpenSSH's reads with limits@openssh.com: 255 KiB.
READ = 255 * KiB


class KeptClient(AEADClient):
    """The AEAD client, keeping the CHANNEL_DATA payloads it receives."""

    def connectionMade(self) -> None:
        self.data: list[bytes] = []
        super().connectionMade()

    def dispatchMessage(self, messageNum: int, payload: Any) -> None:
        if messageNum == MSG_CHANNEL_DATA:
            self.data.append(bytes(payload))
            return
        super().dispatchMessage(messageNum, payload)


class SendPacketsTests(SynchronousTestCase):
    def pair(self, cipher: bytes) -> tuple[KeptClient, Any, Any, list[int]]:
        """A connected pair; the sizes of the server's writes are recorded."""
        client = KeptClient()
        server, pump = make_pair(client, [cipher])
        writes: list[int] = []
        write_sequence = server.transport.writeSequence

        def recorded(pieces: list[bytes]) -> None:
            writes.append(sum(len(p) for p in pieces))
            write_sequence(pieces)

        server.transport.writeSequence = recorded
        return client, server, pump, writes

    def test_packets_of_a_turn_are_one_write(self) -> None:
        """
        Five packets (payloads in parts, views among them) go to the TCP
        transport in one write, and the client opens each, in order.
        """
        for cipher in AEAD:
            client, server, pump, writes = self.pair(cipher)
            sequence = server.outgoingPacketSequence
            payloads = [
                [NS(b"%d" % i), memoryview(os.urandom(size))[1:], b"tail"]
                for i, size in enumerate((1, 17, 32 * KiB, 100, 32 * KiB + 9))
            ]
            server.send_packets(MSG_CHANNEL_DATA, payloads)
            self.assertEqual(len(writes), 1, cipher)
            self.assertEqual(server.outgoingPacketSequence, sequence + 5)
            pump.flush()
            self.assertEqual(
                client.data, [b"".join(bytes(p) for p in parts) for parts in payloads]
            )
            self.assertEqual(client.errors, [])

    def test_packets_wait_for_a_key_exchange(self) -> None:
        """
        During a key exchange the batch waits, in order, as Conch holds its
        own packets, and goes with the new keys.
        """
        client, server, pump, writes = self.pair(b"aes128-gcm@openssh.com")
        server.sendKexInit()
        before = len(writes)
        payloads = [[NS(b"a")], [NS(b"b"), b"c"]]
        server.send_packets(MSG_CHANNEL_DATA, payloads)
        self.assertEqual(len(writes), before)
        self.assertEqual(
            server._blockedByKeyExchange[-2:],
            [(MSG_CHANNEL_DATA, NS(b"a")), (MSG_CHANNEL_DATA, NS(b"b") + b"c")],
        )
        pump.flush()
        self.assertEqual(client.data, [NS(b"a"), NS(b"b") + b"c"])
        self.assertEqual(client.errors, [])


class RoomTests(SynchronousTestCase):
    def test_one_connection_may_buffer_a_mebibyte(self) -> None:
        """
        Alone, a connection counts as full past 1 MiB (four times fewer
        reactor rounds per GB than at 256 KiB), and the room left is what
        it may still write; many share OUTPUT_TOTAL as before.
        """
        ssh = WatchedSSH()
        watch = OutputWatch(ssh)
        self.assertEqual(OUTPUT_LIMIT, MiB)
        self.assertEqual(watch.room(), MiB)
        watch.wrote(MiB - 10)
        self.assertEqual(watch.room(), 10)
        watch.pauseProducing()
        watch.wrote(20)
        self.assertEqual((watch.room(), ssh.changes), (-10, [True]))
        watch.resumeProducing()
        self.assertEqual(watch.room(), MiB)
        ssh.factory = type("F", (), {"connections": set(range(8))})()
        watch.resumeProducing()
        self.assertEqual(watch.room(), OUTPUT_TOTAL // 8)


class RoomSSH(RecordingSSH):
    """
    The recording transport with room: batches are recorded, and the
    transport counts as full once more than the room was written.
    """

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.batches: list[list[int]] = []

    def output_room(self) -> Optional[int]:
        return self.room

    def send_packets(self, kind: int, payloads: list[list[Any]]) -> None:
        sizes = []
        for parts in payloads:
            payload = b"".join(bytes(p) for p in parts)
            self.packets.append((kind, payload))
            sizes.append(len(payload) - 8)
        self.batches.append(sizes)
        self.room -= sum(sizes)
        if self.room < 0:
            self.set_output_full(True)


class BatchTests(SessionTestsMixin, SynchronousTestCase):
    def build_with_room(self, room: int) -> tuple[RoomSSH, Any, Any, HeldReads]:
        server = HeldReads()
        ssh, conn, channel = self.build(server=server)
        room_ssh = RoomSSH(room)
        conn.transport = room_ssh  # type: ignore[assignment]
        return room_ssh, conn, channel, server

    def test_replies_go_in_batches_as_far_as_the_room(self) -> None:
        """
        Two 255 KiB replies: the first one's full packets go in one batch
        (its short last packet waits for the turn's end), the second's as
        far as the room allows, the packet that fills it included; the rest
        waits unencrypted until the buffer empties, then goes in one batch,
        the last short packet too (a send of what waits holds nothing).
        """
        ssh, conn, channel, server = self.build_with_room(10 * MiB)
        handle = self.start_sftp(ssh, conn)  # type: ignore[arg-type]
        ssh.batches.clear()
        ssh.room = 250 * KiB
        self.client_sends(
            conn, b"".join(read_request(i, handle, READ) for i in range(2))
        )
        for n, (d, length) in enumerate(server.reads):
            d.callback(bytes([n]) * length)
        self.assertEqual(ssh.batches, [[32 * KiB] * 7, [32 * KiB]])
        self.assertTrue(ssh.output_full)
        total = 2 * (READ + 13)
        self.assertEqual(channel.output_waiting, total - 8 * 32 * KiB)
        ssh.room = 10 * MiB
        ssh.set_output_full(False)
        self.assertEqual(ssh.batches[2:], [[32 * KiB] * 7 + [total - 15 * 32 * KiB]])
        self.assertEqual(channel.output_waiting, 0)
        replies = replies_in(ssh)
        self.assertEqual(
            [(k, body[:4], body[8:]) for k, body in replies],
            [(103, struct.pack("!L", n), bytes([n]) * READ) for n in range(2)],
        )

    def test_last_short_packet_waits_for_the_end_of_the_turn(self) -> None:
        """With room, a reply's full packets go at once, its tail at the turn's end."""
        ssh, conn, channel, server = self.build_with_room(10 * MiB)
        handle = self.start_sftp(ssh, conn)  # type: ignore[arg-type]
        ssh.batches.clear()
        self.client_sends(conn, read_request(1, handle, READ))
        server.reads[0][0].callback(b"r" * READ)
        self.assertEqual(ssh.batches, [[32 * KiB] * 7])
        ssh.clock.advance(0)
        self.assertEqual(ssh.batches[1:], [[READ + 13 - 7 * 32 * KiB]])

    def test_a_packet_goes_even_with_no_room_left(self) -> None:
        """Room already used up (not yet seen as full): one packet at a time."""
        ssh, conn, channel, server = self.build_with_room(10 * MiB)
        handle = self.start_sftp(ssh, conn)  # type: ignore[arg-type]
        ssh.batches.clear()
        ssh.room = 0
        ssh.output_full = False
        self.client_sends(conn, read_request(1, handle, 64 * KiB))
        # room 0: a batch of one packet, which makes it full.
        server.reads[0][0].callback(b"s" * 64 * KiB)
        self.assertEqual(ssh.batches, [[32 * KiB]])
        self.assertTrue(ssh.output_full)


class SpareTests(SynchronousTestCase):
    def test_spare_within_a_quarter_and_no_waiter(self) -> None:
        buffers = DownloadBuffers(400)
        self.assertTrue(buffers.spare(60))
        self.assertTrue(buffers.spare(40))
        self.assertFalse(buffers.spare(1))  # over a quarter
        self.assertEqual((buffers.used, buffers.waiting), (100, 0))
        buffers.discharge(100)
        self.assertFalse(buffers.ahead(500, lambda: None))  # waits for room
        self.assertEqual((buffers.used, buffers.waiting), (0, 1))
        self.assertFalse(buffers.spare(1))  # not before a download waiting
        self.assertEqual((buffers.used, buffers.waiting), (0, 1))

    def reads_of(self, buffers: Optional[DownloadBuffers], used: int = 0) -> list[int]:
        """The sizes a reader asks of its stream, reading 256 KiB in order."""
        data = pattern(MiB + 5)
        source = SourceAt(data, 0)
        asked: list[int] = []
        read = source.read

        def recorded(size: int) -> Deferred[bytes]:
            asked.append(size)
            return read(size)

        source.read = recorded  # type: ignore[method-assign]
        reader = RangedReader(
            source,
            lambda at, end: Deferred(),
            chunk=64 * KiB,
            max_chunk=128 * KiB,
            buffers=buffers,
        )
        got = b"".join(
            self.successResultOf(reader.read(at, 256 * KiB))
            for at in range(0, len(data), 256 * KiB)
        )
        self.assertEqual(got, data)
        reader.close()
        if buffers is not None:
            self.assertEqual(buffers.used, used)  # all given back
        return asked

    def test_two_chunks_while_the_budget_has_room(self) -> None:
        asked = self.reads_of(DownloadBuffers(4 * MiB))
        self.assertEqual(asked[:8], [128 * KiB] * 8)

    def test_one_chunk_once_a_quarter_is_used(self) -> None:
        buffers = DownloadBuffers(4 * MiB)
        buffers.needed(MiB)  # other downloads' chunks
        asked = self.reads_of(buffers, used=MiB)
        self.assertEqual(asked[:16], [64 * KiB] * 16)

    def test_one_chunk_without_a_budget(self) -> None:
        self.assertEqual(self.reads_of(None)[:16], [64 * KiB] * 16)


class ReadSizes(MemoryStore):
    """The memory store, recording the size of every read of its streams."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reads: list[int] = []

    def _open(self, key: str, offset: int, end: Optional[int]) -> Any:
        source = super()._open(key, offset, end)
        read = source.read

        def recorded(size: int) -> Deferred[bytes]:
            self.reads.append(size)
            return read(size)

        source.read = recorded
        return source


class ReaderSpareTests(DoorTestCase):
    def test_reads_at_offsets_take_two_chunks_per_store_read(self) -> None:
        """
        Through the file system: reads at offsets read 2 MiB of the stream
        at a time while the budget has room (one hand-off to a thread per
        2 MiB), 1 MiB (the chunk) once it has not; the read-ahead is the
        same 2 MiB past the reads either way.
        """
        self.store = ReadSizes(self.clock)
        data = pattern(5 * MiB)
        self.put("f", data)
        for used, expected in ((0, [2 * MiB, MiB]), (8 * MiB, [MiB] * 3)):
            self.store.reads.clear()
            buffers = DownloadBuffers(32 * MiB)
            buffers.needed(used)
            settings = TransferSettings(
                part_size=MiB, parts_in_flight=2, download_buffers=buffers
            )
            reader = self.ok(self.make_fs(settings=settings).open_reader(["f"]))
            self.assertEqual(self.ok(reader.read(10, 1000)), data[10:1010])
            self.assertEqual(self.store.reads, expected)
            self.assertEqual(buffers.used - used, 3 * MiB)
            reader.close()
            self.assertEqual(buffers.used, used)


class ChaChaContextTests(SynchronousTestCase):
    """
    chacha20-poly1305 moves two long-lived ChaCha20 contexts to each
    packet's nonce instead of making new ones: a packet must come out as
    from fresh contexts whatever came before it (another packet, a length,
    a forged packet that failed half-way).
    """

    KEY = bytes(range(64))

    def test_each_packet_as_from_fresh_contexts(self) -> None:
        sealer = ChaChaPolyPacket(self.KEY)
        opener = ChaChaPolyPacket(self.KEY)
        for sequence, size in (
            (0, 8),
            (1, 32 * KiB + 8),
            (7, 16),
            (7, 16),
            (2**32 + 3, 24),
        ):
            body = pattern(size, seed=sequence % 97)
            packet = sealer.seal(sequence, body)
            self.assertEqual(packet, ChaChaPolyPacket(self.KEY).seal(sequence, body))
            wire = b"".join(packet)
            self.assertEqual(opener.length(sequence, wire[:4]), size)
            forged = bytearray(wire)
            forged[5] ^= 1
            self.assertIsNone(opener.open(sequence, bytes(forged)))
            self.assertEqual(opener.open(sequence, wire), body)
