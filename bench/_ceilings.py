"""
Ceilings that bench/throughput.py reads the gateway's figures against: what
any relay achieves on this machine (curl from the store, straight and
through socat), what Conch's SSH packet layer alone achieves with a given
cipher and MAC, both without the gateway in the way, and the bounds the
CPU of every party implies (L{CpuRow}).  A gateway near a ceiling cannot
gain much more by its own work; one far below it can.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Optional

from bench._gateway import free_port
from bench._parties import PartyCpu, median_parties, scaled
from tests.cosserver import CosTestServer

if TYPE_CHECKING:
    from bench.throughput import Bench, Variant

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


#: Cores of this machine that every party shares.
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class CpuRow:
    """
    One direction of one contender: every party's CPU seconds per GB
    (C{per_gb}) and the MB/s it measured.  The parties share the machine's
    cores, so no rate beats CORES / (their total s per GB); the gateway's
    reactor is one thread, so none beats 1 / (its s per GB) either.
    """

    label: str
    direction: str
    per_gb: PartyCpu
    mbs: Optional[float]

    def cores_bound(self) -> float:
        """MB/s the parties' total CPU per GB allows on all the cores."""
        return CORES * 1000 / self.per_gb.total()

    def reactor_bound(self) -> Optional[float]:
        """MB/s one reactor thread allows at its measured CPU per GB."""
        reactor = self.per_gb.reactor
        return 1000 / reactor if reactor else None

    def bound(self) -> float:
        return min(b for b in (self.cores_bound(), self.reactor_bound()) if b)


def sha256_seconds_per_gb() -> float:
    """CPU seconds per GB of hashlib's SHA-256 here (the bench hashes downloads)."""
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    start = time.process_time()
    for _ in range(64):
        digest.update(block)
    return (time.process_time() - start) / (64 * MiB / 1e9)


def _cell(value: Optional[float], width: int, digits: int = 2) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def print_cpu_ceilings(rows: list[CpuRow], pairs: list[tuple[CpuRow, CpuRow]]) -> None:
    """
    The "ceilings" table, then for each (SFTP row, FTP row) of C{pairs}
    whether this machine's cores allow SFTP at 0.8x FTP (L{print_reach}).
    """
    print(
        f"ceilings (CPU s per GB of every party, medians of rounds; the parties "
        f"share {CORES} cores, so {CORES} / total bounds the rate whatever the "
        "gateway does; the reactor is one thread, so 1 / its s per GB bounds "
        "the gateway; reactor busy = its CPU s per wall s):"
    )
    print(
        f"  {'contender':<34} {'dir':<4} {'client':>6} {'gateway':>7} "
        f"{'reactor':>7} {'store':>6} {'total':>6} {f'{CORES}-core':>7} "
        f"{'reactor':>7} {'measured':>8} {'x bound':>7} {'reactor':>7}"
    )
    print(
        f"  {'':<34} {'':<4} {'s/GB':>6} {'':>7} {'':>7} {'':>6} {'':>6} "
        f"{'MB/s':>7} {'MB/s':>7} {'MB/s':>8} {'':>7} {'busy':>7}"
    )
    for row in rows:
        p = row.per_gb
        x = row.mbs / row.bound() if row.mbs else None
        reactor = row.reactor_bound()
        busy = 100 * row.mbs / reactor if row.mbs and reactor else None
        print(
            f"  {row.label:<34} {row.direction:<4} {p.client:6.2f} "
            f"{_cell(p.server, 7)} {_cell(p.reactor, 7)} {p.store:6.2f} "
            f"{p.total():6.2f} {row.cores_bound():7.0f} "
            f"{_cell(row.reactor_bound(), 7, 0)} {_cell(row.mbs, 8, 1)} "
            f"{_cell(x, 7)} {_cell(busy, 6, 0)}{'%' if busy else ''}"
        )
    for row, ftp in pairs:
        print_reach(row, ftp)


def print_reach(row: CpuRow, ftp: CpuRow) -> None:
    """
    Whether C{row} (SFTP) can run at 0.8x C{ftp}'s measured rate on this
    machine: its bound against FTP's (the ratio the CPU per GB predicts
    when both reach the same share of their bounds), and the CPU per GB
    the parties and the gateway may spend for it, within the bound and at
    FTP's share of its bound.
    """
    if not (row.mbs and ftp.mbs):
        return
    p, wanted = row.per_gb, 0.8 * ftp.mbs
    within = CORES * 1000 / wanted
    share = ftp.per_gb.total() / 0.8
    others = p.client + p.store
    verdict = "within" if row.bound() >= wanted else "BEYOND"
    print(
        f"  {row.label} {row.direction}: bound {row.bound():.0f} MB/s, FTP's "
        f"{ftp.bound():.0f}: {row.bound() / ftp.bound():.2f}x predicted, "
        f"{row.mbs / ftp.mbs:.2f}x measured; 0.8x FTP ({wanted:.0f} MB/s) is "
        f"{verdict} its bound"
    )
    print(
        f"    0.8x FTP needs every party <= {within:.2f} s/GB in total, or "
        f"<= {share:.2f} at FTP's share of its bound (now {p.total():.2f}); "
        f"with this client and store the gateway <= {within - others:.2f} or "
        f"{share - others:.2f} (now {_cell(p.server, 0)}), its reactor <= "
        f"{1000 / wanted:.2f} (now {_cell(p.reactor, 0)})"
    )


def print_ceilings(
    bench: Bench, variants: list[Variant], sdk: dict[str, Optional[float]]
) -> None:
    """
    Every contender's CPU per GB by party, the bounds they imply beside
    the measured MB/s, and whether SFTP at 0.8x FTP fits within its own.
    """
    per_gb = 1e9 / bench.size
    rows: list[CpuRow] = []
    for what, direction, label in (
        ("put", "up", "SDK put_object"),
        ("mp", "up", "SDK upload_file (4 threads)"),
        ("down", "down", "SDK get_object"),
    ):
        parties = median_parties(bench.sdk_cpu[what])
        if parties is not None:
            rows.append(CpuRow(label, direction, scaled(parties, per_gb), sdk[what]))
    by_variant: dict[str, dict[str, CpuRow]] = {}
    for v in (v for v in variants if not v.unavailable):
        for direction in ("up", "down"):
            parties = median_parties(v.parties[direction])
            if parties is not None:
                row = CpuRow(
                    v.label, direction, scaled(parties, per_gb), v.rate(direction)
                )
                rows.append(row)
                by_variant.setdefault(v.label, {})[direction] = row
    ftp = by_variant.get("FTP", {})
    pairs = [
        (row, ftp[direction])
        for v in variants
        if v.protocol == "sftp" and v.label in by_variant
        for direction, row in by_variant[v.label].items()
        if direction in ftp
    ]
    print_cpu_ceilings(rows, pairs)
    print(
        "  (client: the SDK and ftplib run in this process, and their download "
        "figures include the bench's SHA-256 of the data, "
        f"{sha256_seconds_per_gb():.2f} s/GB here; OpenSSH's sftp with its ssh, "
        "and curl, are reaped children; SFTP and WebDAV downloads land in "
        "/dev/shm unhashed; store: the fake COS server's process)"
    )
