"""
The SSH attacks of bench/abuse.py (issue 12, items 1, 2 and 3).

The key-exchange attack is OpenSSH's own client, asking for what it always
asks for with group exchange (up to 8192 bits).  The SFTP attacks speak raw
SFTP packets over a paramiko channel: paramiko honours the SSH window it
advertises and sends WINDOW_ADJUST only when the application reads, so a
channel that is never read makes the gateway hold every reply beyond the
window, which is the attack.  Each runs for at most C{seconds} from its own
loopback address and closes everything it opened before it returns.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import paramiko

from bench.abuse_gateway import (
    PASSWORD,
    READ_FILE,
    READ_FILE_SIZE,
    USER,
    Gateway,
    MiB,
    connect_from,
)

MODULI = Path("/etc/ssh/moduli")
# SFTP version 3 packet types (draft-ietf-secsh-filexfer-02).
FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_READ, FXP_WRITE = 1, 2, 3, 5, 6
FXP_STATUS, FXP_HANDLE = 101, 102
FXF_READ = 1


class NotRun(Exception):
    """The attack cannot run against this gateway or host; says why."""


def gex(gateway: Gateway, source: str, seconds: float) -> str:
    """
    Item 1: ``ssh -o KexAlgorithms=diffie-hellman-group-exchange-sha256``
    in a loop, one at a time, each cut off at the deadline.  It never logs
    in (no key, no password): the key exchange is the whole cost.
    """
    ssh = shutil.which("ssh")
    if ssh is None:
        raise NotRun("no OpenSSH client (ssh) on this host")
    deadline = time.monotonic() + seconds
    runs, exchanges, cut = 0, 0, False
    asked, group = "?", "none received"
    while (now := time.monotonic()) < deadline and runs < 1000:
        stderr, cut = _ssh_once(ssh, gateway, source, deadline - now)
        runs += 1
        if "no matching key exchange method" in stderr:
            where = "present" if MODULI.exists() else "missing: install openssh-server"
            raise NotRun(
                f"GEX NOT OFFERED by the gateway ({MODULI} {where}); "
                + _offered(stderr)
            )
        if found := re.search(r"GEX_REQUEST\((\d+<\d+<\d+)\)", stderr):
            asked = found.group(1)
        if found := re.search(r"bits set: \d+/(\d+)", stderr):
            group = f"{found.group(1)} bits"
        if "SSH2_MSG_KEX_DH_GEX_REPLY received" in stderr:
            exchanges += 1
    last = "; the last one cut off at the deadline" if cut else ""
    return (
        f"{runs} ssh run(s) asking ({asked}) bits, group {group}, "
        f"{exchanges} key exchange(s) completed{last}"
    )


def _ssh_once(
    ssh: str, gateway: Gateway, source: str, limit: float
) -> tuple[str, bool]:
    """One ``ssh -vv`` run of at most C{limit} seconds: (stderr, cut off)."""
    command = [
        ssh,
        "-F",
        "/dev/null",
        "-vv",
        "-b",
        source,
        "-p",
        str(gateway.sftp_port),
    ]
    for option in (
        "KexAlgorithms=diffie-hellman-group-exchange-sha256",
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "PubkeyAuthentication=no",
        "PasswordAuthentication=no",
        "KbdInteractiveAuthentication=no",
        "GSSAPIAuthentication=no",
        "ConnectTimeout=10",
    ):
        command += ["-o", option]
    command += [f"{USER}@127.0.0.1", "true"]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = proc.communicate(timeout=max(0.1, limit))
        cut = False
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        cut = True
    return err.decode("utf-8", "replace"), cut


def _offered(stderr: str) -> str:
    """The server's key exchanges from an ``ssh -vv`` log, for the report."""
    found = re.findall(r"KEX algorithms: (.*)", stderr)
    return f"it offers {found[-1]}" if len(found) > 1 else "no KEXINIT seen"


class RawSFTP:
    """
    An SFTP channel (version 3, INIT done) logged in with the password from
    C{source}, on which the caller writes raw packets.
    """

    def __init__(self, gateway: Gateway, source: str, timeout: float) -> None:
        self.sock = connect_from(source, gateway.sftp_port, timeout)
        self.transport = paramiko.Transport(self.sock)
        try:
            self.transport.banner_timeout = self.transport.auth_timeout = timeout
            self.transport.connect(username=USER, password=PASSWORD)
            self.channel = self.transport.open_session(timeout=timeout)
            self.channel.settimeout(timeout)
            self.channel.invoke_subsystem("sftp")
            self.send(FXP_INIT, struct.pack(">I", 3))
            kind, _ = self.receive()
            if kind != FXP_VERSION:
                raise RuntimeError(f"SFTP INIT answered with packet type {kind}")
        except BaseException:
            self.close()
            raise

    def send(self, kind: int, payload: bytes) -> None:
        self.channel.sendall(struct.pack(">IB", len(payload) + 1, kind) + payload)

    def receive(self) -> tuple[int, bytes]:
        """The next packet: (type, the rest)."""
        header = self._exactly(5)
        length, kind = struct.unpack(">IB", header)
        return kind, self._exactly(length - 1)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.channel.recv(n - len(data))
            if not chunk:
                raise ConnectionError("SFTP channel closed")
            data += chunk
        return data

    def open_for_reading(self, path: str) -> bytes:
        """The handle of C{path} opened for reading."""
        name = path.encode()
        self.send(
            FXP_OPEN,
            struct.pack(">II", 1, len(name)) + name + struct.pack(">II", FXF_READ, 0),
        )
        kind, body = self.receive()
        if kind != FXP_HANDLE:
            raise RuntimeError(f"OPEN {path} answered with packet type {kind}")
        (length,) = struct.unpack(">I", body[4:8])
        return body[8 : 8 + length]

    def closed_by_gateway(self) -> bool:
        return (
            self.channel.closed
            or self.channel.eof_received
            or not self.transport.is_active()
        )

    def close(self) -> None:
        """Shut the socket first: it unblocks a send paramiko is stuck in."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.transport.close()
        self.sock.close()


class Sender:
    """
    Sends chunks on a channel from a thread, as far as the SSH window and
    TCP let them through before the deadline: paramiko blocks inside a
    socket write when the gateway stops reading TCP, and the attack must
    still end on time (L{RawSFTP.close} unblocks that write).  L{sent}
    grows as it goes, so the attack can tell a gateway that stopped reading
    (nothing sent lately) from a slow one.
    """

    def __init__(
        self, channel: paramiko.Channel, chunks: Iterable[bytes], deadline: float
    ) -> None:
        self.sent = 0
        self._thread = threading.Thread(
            target=self._run, args=(channel, chunks, deadline), daemon=True
        )
        self._thread.start()

    def _run(
        self, channel: paramiko.Channel, chunks: Iterable[bytes], deadline: float
    ) -> None:
        channel.settimeout(0.5)
        for chunk in chunks:
            done = 0
            while done < len(chunk):
                if time.monotonic() >= deadline or channel.closed:
                    return
                try:
                    n = channel.send(chunk[done:])
                except TimeoutError:
                    continue
                except (OSError, EOFError):
                    return
                done += n
                self.sent += n

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=max(0.0, timeout))

    def last_second(self, deadline: float) -> int:
        """
        Wait until C{deadline} (or the end of the sending); the bytes sent
        in the last second of it.
        """
        self.join(deadline - 1 - time.monotonic())
        before = self.sent
        self.join(deadline - time.monotonic())
        return self.sent - before


def unread_reads(
    gateway: Gateway, source: str, seconds: float, count: int = 2000
) -> str:
    """
    Item 2: C{count} READs of 32 KiB of one open file (offsets cycling
    through it), sent at once, and their replies never read.
    """
    deadline = time.monotonic() + seconds
    sftp = RawSFTP(gateway, source, min(10.0, seconds))
    try:
        handle = sftp.open_for_reading(f"/{READ_FILE}")
        requests = [
            _read_request(i + 2, handle, (i * 32768) % READ_FILE_SIZE, 32768)
            for i in range(count)
        ]
        sender = Sender(sftp.channel, requests, deadline)
        sender.join(deadline - time.monotonic())
        closed = sftp.closed_by_gateway()
        threading.Event().wait(max(0.0, deadline - time.monotonic()))
    finally:
        sftp.close()
    sender.join(5)
    whole = len(requests[0])
    note = f"{sender.sent // whole}/{count} READs written, replies never read"
    if sender.sent < whole * count:
        note += " (the gateway stopped reading)"
    return note + ("; closed by the gateway" if closed else "")


def _read_request(request: int, handle: bytes, offset: int, length: int) -> bytes:
    body = struct.pack(">II", request, len(handle)) + handle
    body += struct.pack(">QI", offset, length)
    return struct.pack(">IB", len(body) + 1, FXP_READ) + body


def _declared_packet(declared: int) -> Iterator[bytes]:
    """A WRITE packet's header declaring C{declared} bytes, then zeros."""
    yield struct.pack(">IBI", declared, FXP_WRITE, 1)
    chunk = bytes(32768)
    for _ in range((declared - 5) // len(chunk)):
        yield chunk


def big_packet(
    gateway: Gateway, source: str, seconds: float, declared: int = 100 * MiB
) -> str:
    """
    Item 3: an SFTP packet header declaring C{declared} bytes (a WRITE),
    then its body as fast as the gateway takes it, never completed within
    the time.
    """
    deadline = time.monotonic() + seconds
    sftp = RawSFTP(gateway, source, min(10.0, seconds))
    try:
        sender = Sender(sftp.channel, _declared_packet(declared), deadline)
        lately = sender.last_second(deadline)
        closed = sftp.closed_by_gateway()
        threading.Event().wait(max(0.0, deadline - time.monotonic()))
    finally:
        sftp.close()
    sender.join(5)
    outcome = "closed by the gateway" if closed else "still open at the end"
    return (
        f"declared {declared // MiB} MiB, {sender.sent / MiB:.1f} MiB of it sent "
        f"({lately / 1024:.0f} KiB in the last second); {outcome}"
    )
