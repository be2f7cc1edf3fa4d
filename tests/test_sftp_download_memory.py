"""
What an SFTP download holds in the gateway, through real sockets: paramiko
clients that send a READ for every block of the file at once (prefetch)
and read their socket slowly, one with paramiko's 2 MiB window and one
with a window of 1 GiB (its replies then wait for the TCP buffers, not for
the window).  Every session's bytes are sampled in the reactor while the
files flow: the reply bytes promised and not sent, the encrypted bytes in
the TCP transport's buffer, and the reader's buffered chunks; each stays
under what the session gate, the TCP limit and the reader's chunks allow,
whatever the client asks for, and the files arrive whole.
"""

from __future__ import annotations

import hashlib
import socket
import time
from typing import Any, Optional

import paramiko
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from cosgw.frontends.sftp.flow import OUTPUT_LIMIT, RequestGate
from tests.harness import PASSWORD, MiB, in_thread, random_bytes, start_gateway

KiB = 1024
TIMEOUT = 60.0
#: The reader's chunk in this test: small, so chunks are seen in the bound.
CHUNK = 256 * KiB
#: What paramiko's prefetch asks per READ, and what each reply adds.
READ = 32 * KiB
DATA_OVERHEAD = 13
#: An SSH packet around 32 KiB of channel data: header, padding, tag.
PACKET = 32 * KiB + 128


class SlowSocket:
    """A client socket read at most 8 KiB at a time, a millisecond apart."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, n: int) -> bytes:
        time.sleep(0.001)  # the client's pace, not a synchronisation
        return self._sock.recv(min(n, 8 * KiB))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def slow_get(port: int, name: str, window: Optional[int]) -> str:
    """paramiko's getfo (every READ sent at once): the SHA-256 it got."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * KiB)
    raw.settimeout(TIMEOUT)
    raw.connect(("127.0.0.1", port))
    transport = paramiko.Transport(SlowSocket(raw))
    try:
        transport.connect(username="alice", password=PASSWORD)
        kwargs = {} if window is None else {"window_size": window}
        client = paramiko.SFTPClient.from_transport(transport, **kwargs)
        assert client is not None
        client.get_channel().settimeout(TIMEOUT)
        digest = hashlib.sha256()

        class Sink:
            def write(self, data: bytes) -> int:
                digest.update(data)
                return len(data)

        client.getfo(name, Sink())
        return digest.hexdigest()
    finally:
        transport.close()


class Held:
    """The most each session held, by where, sampled in the reactor."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.reply = 0
        self.tcp = 0
        self.reader = 0
        self.tcp_full = False

    def sample(self) -> None:
        for ssh in self.gw.service.sftp.factory.connections:
            tcp = ssh.transport
            # Twisted's write buffer (abstract.FileDescriptor): no public count.
            self.tcp = max(
                self.tcp, len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
            )
            self.tcp_full = self.tcp_full or ssh.output_full
            for channel in getattr(ssh.service, "channels", {}).values():
                if channel.client is None:
                    continue
                sftp = channel.client.transport.proto
                unsent = sftp.gate.promised + channel.output_waiting
                self.reply = max(self.reply, unsent)
                for handle in sftp.client.handles:
                    reader = getattr(handle.file._reader, "_ranged", None)
                    if reader is not None:
                        self.reader = max(self.reader, reader.buffered)


class DownloadMemoryTests(TestCase):
    timeout = TIMEOUT + 30

    @defer.inlineCallbacks
    def test_bytes_held_per_session_are_bounded(self) -> Any:
        gw = yield start_gateway(
            self,
            "local",
            transfer_overrides={"read_chunk": CHUNK},
        )
        data = random_bytes(6 * MiB)
        root = gw.inspector.root
        root.mkdir(parents=True, exist_ok=True)
        (root / "big.bin").write_bytes(data)
        held = Held(gw)
        sampler = task.LoopingCall(held.sample)
        sampler.clock = reactor
        sampler.start(0.005)
        try:
            got = yield defer.gatherResults(
                [
                    in_thread(slow_get, gw.sftp_port, "big.bin", None),
                    in_thread(slow_get, gw.sftp_port, "big.bin", 1 << 30),
                ]
            )
        finally:
            sampler.stop()
        self.assertEqual(got, [hashlib.sha256(data).hexdigest()] * 2)
        gate = RequestGate()
        # Promised and unsent replies: the gate's high water, passed by at
        # most the one request that crossed it.
        self.assertLessEqual(held.reply, gate.high_water + READ + DATA_OVERHEAD)
        # Encrypted bytes: the TCP limit, passed by at most the packets of
        # one reply written before the transport said it was full.
        self.assertTrue(held.tcp_full, "the TCP buffer never filled: not tested")
        self.assertLessEqual(held.tcp, OUTPUT_LIMIT + 2 * PACKET)
        # The reader: the chunks the promised reads span, the chunk before
        # them (the last read's bytes), and two chunks read ahead.
        span = gate.high_water + READ
        self.assertLessEqual(held.reader, span + 4 * CHUNK)
