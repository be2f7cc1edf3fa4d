"""
Ceilings that bench/throughput.py reads the gateway's figures against: what
any relay achieves on this machine (curl from the store, straight and
through socat), and what Conch's SSH packet layer alone achieves with a
given cipher and MAC, both without the gateway in the way.  A gateway near
a ceiling cannot gain much more by its own work; one far below it can.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Optional

from bench._gateway import free_port
from tests.cosserver import CosTestServer

MiB = 1024 * 1024


def timed(f: Callable[[], Any]) -> float:
    """Seconds C{f()} took."""
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def relay_ceiling(
    server: CosTestServer, bucket: str, size: int, rounds: int, key: str
) -> Optional[tuple[float, float]]:
    """
    (curl straight from the store, curl through socat) in MB/s, medians of
    C{rounds} downloads of C{key}; None without socat or curl.  socat is a
    copy loop in C with 1 MiB buffers and no logic: what relaying alone
    costs here.
    """
    if shutil.which("socat") is None or shutil.which("curl") is None:
        return None
    client = server.cos_client(SignHost=False)
    url = client.get_presigned_url(Bucket=bucket, Key=key, Method="GET")
    path = url.split("://", 1)[1].split("/", 1)[1]
    host = f"{bucket}.cos.{server.region}.myqcloud.com"
    port = free_port()
    relay = subprocess.Popen(
        [
            "socat",
            "-b",
            str(MiB),
            f"TCP-LISTEN:{port},reuseaddr,fork,bind=127.0.0.1",
            f"TCP:127.0.0.1:{server.port}",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        figures: dict[str, list[float]] = {"direct": [], "relay": []}
        for _ in range(rounds):
            for label, p in (("direct", server.port), ("relay", port)):
                command = ["curl", "-s", "-o", "/dev/null", "-H", f"Host: {host}"]
                command.append(f"http://127.0.0.1:{p}/{path}")
                t = timed(partial(subprocess.run, command, check=True, timeout=600))
                figures[label].append(size / t / 1e6)
        return statistics.median(figures["direct"]), statistics.median(figures["relay"])
    finally:
        os.kill(relay.pid, signal.SIGTERM)
        relay.wait(timeout=10)


def conch_packet_ceiling(
    cipher: bytes, mac: bytes, size: int, payload: int = 32768 + 13
) -> tuple[float, float]:
    """
    MB/s of Conch's own SSH packet layer with C{cipher} and C{mac}, in this
    process: L{SSHTransportBase.sendPacket} (framing, padding, encryption,
    MAC) and L{SSHTransportBase.getPacket} (decryption, MAC check, buffer
    slicing, fed 64 KiB reads as Twisted does) over C{size} bytes of
    channel data in packets of C{payload} bytes, OpenSSH's 32 KiB SFTP
    READ/WRITE plus its headers.  No network, no channel, no SFTP: what
    the gateway's one reactor thread cannot beat over SSH.  KeyError for a
    cipher or MAC this Conch does not implement (the AEAD ciphers live in
    the gateway's transport subclass, not in Conch).
    """
    from twisted.conch.ssh import transport

    def endpoint() -> transport.SSHTransportBase:
        t = transport.SSHTransportBase()
        ciphers = transport.SSHCiphers(cipher, cipher, mac, mac)
        secret = bytes(range(64))
        ciphers.setKeys(secret, secret, secret, secret, secret, secret)
        t.currentEncryptions = ciphers
        t.outgoingPacketSequence = t.incomingPacketSequence = 0
        return t

    class Sink:
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.chunks.append(data)

    packets = max(1, size // payload)
    body = os.urandom(payload - 9)
    sender = endpoint()
    sink = Sink()
    sender.transport = sink  # type: ignore[assignment]  # only write() is used
    start = time.perf_counter()
    for _ in range(packets):
        # CHANNEL_DATA (94): channel id, then the data as a string.
        sender.sendPacket(94, b"\0\0\0\0" + len(body).to_bytes(4, "big") + body)
    sent = time.perf_counter() - start
    stream = b"".join(sink.chunks)
    del sender, sink
    receiver = endpoint()
    got = 0
    start = time.perf_counter()
    for i in range(0, len(stream), 65536):
        receiver.buf = receiver.buf + stream[i : i + 65536]
        while receiver.getPacket() is not None:
            got += 1
    received = time.perf_counter() - start
    assert got == packets, (got, packets)
    moved = packets * payload
    return moved / sent / 1e6, moved / received / 1e6


def conch_ceiling_for(
    kex: list[str], size: int
) -> Optional[tuple[str, str, tuple[float, float]]]:
    """
    Conch's packet ceiling for the server->client cipher and MAC named in
    OpenSSH's C{kex} debug lines: (cipher, MAC, (send, receive) MB/s), or
    None when Conch itself does not implement them.
    """
    for line in kex:
        if line.startswith("kex: server->client cipher: "):
            words = line.split()
            cipher, mac = words[3], words[5]
            try:
                ceiling = conch_packet_ceiling(
                    cipher.encode(), mac.encode(), min(size, 64 * MiB)
                )
            except KeyError:
                return None
            return cipher, mac, ceiling
    return None
