"""
The TLS layer of PROT P data connections (L{cosgw.frontends.ftp.tls}) in
memory: the gateway's side over a FakeTCP transport, a pyOpenSSL client
with memory BIOs on the other end, both with the gateway's real context.

Twisted's TLS layer moves each 16 KiB record on its own; these tests pin
that the data connection's layer moves whole slices (one OpenSSL call and
one socket write per L{WRITE_SLICE} going out, one delivery per read from
the socket coming in) and that it still ends, fails, waits for the
handshake, holds its TLS 1.3 tickets and passes backpressure on as
Twisted's does.  They also pin the private pieces it relies on
(pyOpenSSL's partial-write mode, Twisted's C{_write}, C{_flushSendBIO} and
C{_flushReceiveBIO}): if either library changes them, a count here breaks.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet import defer, error, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from cosgw.config.model import TransferConfig
from cosgw.frontends.ftp.data import DATA_BUFFER_SIZE
from cosgw.frontends.ftp.tls import (
    RECORD_SIZE,
    WRITE_SLICE,
    generate_self_signed,
    load_server_tls,
)
from tests.ftp_unit import CLIENT_HOST, SERVER_HOST, FakeTCP
from tests.harness import MiB, in_thread, random_bytes, sha256
from tests.test_ftps import (
    CLIENT_TIMEOUT,
    FTPSGatewayMixin,
    ftps,
    secure_login,
    wait_until,
)

#: What TLS adds to a record at most (header, nonce, tag, content type).
RECORD_OVERHEAD = 64


class Recorder(protocol.Protocol):
    """The data connection's protocol: keeps each delivery and the end."""

    def __init__(self) -> None:
        self.deliveries: list[bytes] = []
        self.lost: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.deliveries.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = reason


class CountingTCP(FakeTCP):
    """Counts the writes that reach the socket, and their sizes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        super().write(data)


@implementer(IPushProducer)
class Producer:
    """Records pauses and resumes, as the download does."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class Pair:
    """The gateway's data-connection TLS and a client, joined in memory."""

    def __init__(
        self,
        directory: Path,
        maximum: Optional[int] = None,
        send_buffer: Optional[int] = None,
    ) -> None:
        cert, key = generate_self_signed(directory)
        self.clock = Clock()
        factory = protocol.Factory.forProtocol(Recorder)
        wrapped = load_server_tls(cert, key).wrap_data(factory, self.clock)
        address = IPv4Address("TCP", CLIENT_HOST, 40000)
        self.server = wrapped.buildProtocol(address)
        self.app: Recorder = self.server.wrappedProtocol
        self.tcp = CountingTCP(
            self.clock,
            IPv4Address("TCP", SERVER_HOST, 20),
            address,
            send_buffer=send_buffer,
        )
        self.tcp.connect(self.server)
        context = SSL.Context(SSL.TLS_METHOD)
        if maximum is not None:
            context.set_max_proto_version(maximum)
        self.client = SSL.Connection(context, None)
        self.client.set_connect_state()

    def client_output(self) -> bytes:
        """What the client's TLS has written, not yet sent."""
        out = []
        while True:
            try:
                out.append(self.client.bio_read(2**20))
            except SSL.WantReadError:
                return b"".join(out)

    def sizes(self) -> list[int]:
        """The size of each delivery to the protocol."""
        return [len(d) for d in self.app.deliveries]

    def to_client(self) -> None:
        """The client's socket takes what the gateway wrote."""
        wire = self.tcp.read()
        if wire:
            self.client.bio_write(wire)

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.client.do_handshake()
                done = True
            except SSL.WantReadError:
                done = False
            sent = self.client_output()
            if sent:
                self.tcp.receive(sent)
            self.to_client()
            if done and self.server._handshakeDone:  # noqa: SLF001
                return
        raise AssertionError("no handshake")

    def encrypt(self, data: bytes) -> bytes:
        """C{data} as the client's TLS records."""
        view = memoryview(data)
        while view:
            view = view[self.client.send(view[:RECORD_SIZE]) :]
        return self.client_output()

    def decrypt(self) -> bytes:
        """Everything the gateway wrote so far, as the client reads it."""
        self.to_client()
        out = []
        while True:
            try:
                out.append(self.client.recv(2**16))
            except SSL.WantReadError:
                return b"".join(out)


VERSIONS = ((SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_3_VERSION, "TLSv1.3"))


class DataTLSTests(unittest.TestCase):
    def pair(self, **kwargs: Any) -> Pair:
        directory = Path(tempfile.mkdtemp(prefix="cosgw-records-"))
        self.addCleanup(shutil.rmtree, directory, True)
        return Pair(directory, **kwargs)

    def test_write_goes_out_in_slices(self) -> None:
        """
        A 4 MiB write leaves in 256 KiB slices, one socket write each
        (Twisted's layer: one per 16 KiB record, 257 here); the client reads
        it back whole under TLS 1.2 and 1.3.  After the handshake, before
        the write, a TLS 1.3 connection has sent nothing: its ticket waits
        and goes out with the first slice.
        """
        data = random_bytes(4 * MiB + 7)
        for maximum, version in VERSIONS:
            pair = self.pair(maximum=maximum)
            pair.handshake()
            self.assertEqual(
                pair.server.getHandle().get_protocol_version_name(), version
            )
            pair.tcp.writes.clear()
            pair.server.write(data)
            slices = math.ceil(len(data) / WRITE_SLICE)
            self.assertEqual(len(pair.tcp.writes), slices, version)
            largest = WRITE_SLICE + (WRITE_SLICE // RECORD_SIZE + 1) * RECORD_OVERHEAD
            self.assertLessEqual(max(pair.tcp.writes[1:]), largest, version)
            self.assertEqual(sha256(pair.decrypt()), sha256(data), version)

    def test_one_openssl_write_takes_a_whole_slice(self) -> None:
        """
        pyOpenSSL turns partial writes on (one record per SSL_write); the
        data connection turns them off, so one call encrypts a slice.
        """
        pair = self.pair()
        pair.handshake()
        handle = pair.server.getHandle()
        self.assertEqual(handle.send(b"\0" * WRITE_SLICE), WRITE_SLICE)

    def test_arrivals_delivered_per_read(self) -> None:
        """
        What one read from the socket brings (here 1 MiB + 3 in 65 records,
        then 3 MiB) reaches the protocol as one piece (Twisted's layer: one
        per record); records cut across reads are delivered once complete,
        in order.
        """
        for maximum, version in VERSIONS:
            pair = self.pair(maximum=maximum)
            pair.handshake()
            data = random_bytes(MiB + 3)
            pair.tcp.receive(pair.encrypt(data))
            self.assertEqual(pair.sizes(), [len(data)], version)
            self.assertEqual(sha256(b"".join(pair.app.deliveries)), sha256(data))
            pair.app.deliveries.clear()
            # More than the buffer records are decrypted into: still one.
            large = random_bytes(3 * MiB)
            pair.tcp.receive(pair.encrypt(large))
            self.assertEqual(pair.sizes(), [len(large)], version)
            self.assertEqual(sha256(pair.app.deliveries[0]), sha256(large))
            pair.app.deliveries.clear()
            wire = pair.encrypt(data)
            cuts = [0, 5, 100_000, len(wire) - 1, len(wire)]
            for start, end in zip(cuts, cuts[1:]):
                pair.tcp.receive(wire[start:end])
            self.assertEqual(sha256(b"".join(pair.app.deliveries)), sha256(data))
            self.assertLessEqual(len(pair.app.deliveries), 3, version)

    def test_close_notify_after_data(self) -> None:
        """
        Data and the client's close_notify in one read: the data is
        delivered, then the gateway answers close_notify and closes; the
        protocol then sees a clean end.
        """
        pair = self.pair()
        pair.handshake()
        data = random_bytes(100_000)
        wire = pair.encrypt(data)
        pair.client.shutdown()
        pair.tcp.receive(wire + pair.client_output())
        self.assertEqual(pair.sizes(), [len(data)])
        self.assertEqual(sha256(pair.app.deliveries[0]), sha256(data))
        handle = pair.server.getHandle()
        self.assertTrue(handle.get_shutdown() & SSL.RECEIVED_SHUTDOWN)
        self.assertTrue(pair.tcp.disconnecting)
        pair.to_client()
        self.assertRaises(SSL.ZeroReturnError, pair.client.recv, 1024)
        pair.clock.advance(0)
        assert pair.app.lost is not None
        self.assertTrue(pair.app.lost.check(error.ConnectionDone))

    def test_corrupt_record_after_data(self) -> None:
        """
        A record that fails its check after good ones: the good data is
        delivered, then the connection ends with the TLS error (the
        protocol never sees a clean end of a damaged stream).
        """
        pair = self.pair()
        pair.handshake()
        good = random_bytes(50_000)
        wire = pair.encrypt(good)
        bad = bytearray(pair.encrypt(random_bytes(1000)))
        bad[-3] ^= 0xFF
        pair.tcp.receive(wire + bytes(bad))
        self.assertEqual(pair.sizes(), [len(good)])
        self.assertEqual(sha256(pair.app.deliveries[0]), sha256(good))
        pair.clock.advance(0)
        assert pair.app.lost is not None
        self.assertTrue(pair.app.lost.check(SSL.Error), pair.app.lost)

    def test_write_before_the_handshake_waits(self) -> None:
        """
        Written before the handshake is done: nothing leaves in clear; it
        goes out, whole and in order, once the handshake is done.
        """
        pair = self.pair()
        first, second = random_bytes(300_000), random_bytes(70_000)
        pair.server.write(first)
        pair.server.write(second)
        pair.handshake()
        self.assertEqual(sha256(pair.decrypt()), sha256(first + second))

    def test_backpressure(self) -> None:
        """
        A producer writing 4 MiB chunks into a socket whose buffer is full
        past 1 MiB is paused after its chunk (nothing held back in the TLS
        layer: all of it is in the socket's buffer, encrypted), and resumed
        when the client reads.
        """
        pair = self.pair(send_buffer=MiB)
        pair.handshake()
        producer = Producer()
        pair.server.registerProducer(producer, True)
        chunk = random_bytes(4 * MiB)
        pair.server.write(chunk)
        self.assertTrue(producer.paused)
        self.assertEqual(producer.pauses, 1)
        self.assertGreaterEqual(len(pair.tcp.value()), len(chunk))
        self.assertEqual(sha256(pair.decrypt()), sha256(chunk))
        self.assertFalse(producer.paused)


class SlowClientTests(FTPSGatewayMixin, unittest.TestCase):
    """Through real sockets: a client that does not read its download."""

    def setUp(self) -> Any:
        return self.start("local")

    def data_channel(self) -> Any:
        for control in self.open_controls():
            transfer = getattr(control, "transfer", None)
            if transfer is not None and transfer.channel is not None:
                return transfer
        return None

    @defer.inlineCallbacks
    def test_download_to_a_client_not_reading(self) -> Any:
        """
        While the client reads nothing of a 40 MiB PROT P download, the
        gateway stops reading the file, and what it holds for the socket
        (in TLS and TCP) stays under the socket buffer's limit plus one
        encrypted chunk of the file; when the client reads, the file
        arrives whole.
        """
        data = random_bytes(40 * MiB)
        self.gw.inspector.root.mkdir(parents=True, exist_ok=True)
        (self.gw.inspector.root / "big.bin").write_bytes(data)
        connected, go = threading.Event(), threading.Event()

        def client() -> dict[str, Any]:
            ftp = ftps(self.gw, self.cert)
            secure_login(ftp)
            conn, _ = ftp.ntransfercmd("RETR big.bin")
            connected.set()
            go.wait(CLIENT_TIMEOUT)
            back = bytearray()
            while chunk := conn.recv(MiB):
                back += chunk
            conn.unwrap()
            conn.close()
            r = {"back": bytes(back), "retr": ftp.voidresp()}
            ftp.quit()
            return r

        done = in_thread(client)
        chunk = TransferConfig().read_chunk
        limit = DATA_BUFFER_SIZE + chunk + (chunk // RECORD_SIZE + 1) * RECORD_OVERHEAD
        seen: list[tuple[int, int, bool]] = []

        def stalled() -> bool:
            transfer = self.data_channel()
            if not connected.is_set() or transfer is None:
                return False
            tls = transfer.channel.transport
            tcp = tls.transport
            held = len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen  # noqa: SLF001
            held += sum(map(len, tls._appSendBuffer))  # noqa: SLF001
            seen.append((transfer.counter(), held, tcp.producerPaused))
            # Paused, and nothing more taken from the file for 25 polls.
            recent = seen[-25:]
            return len(recent) == 25 and all(s == recent[-1] for s in recent)

        try:
            self.assertTrue((yield wait_until(stalled, 20)), seen[-3:])
        finally:
            go.set()
        r = yield done
        sent, _, paused = seen[-1]
        self.assertTrue(paused)
        self.assertLess(sent, len(data) - 8 * MiB)
        self.assertLessEqual(max(held for _, held, _ in seen), limit)
        self.assertTrue(r["retr"].startswith("226"), r["retr"])
        self.assertEqual(sha256(r["back"]), sha256(data))
