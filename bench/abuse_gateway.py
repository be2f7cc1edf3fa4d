"""
The gateway under attack in bench/abuse.py: a ``twistd -n cosftp`` child
run from any source tree, the sampler that watches its memory and open
files, and the check that it still serves an ordinary user.

The gateway is started with only the configuration keys every version of
cosgw understands (listeners, one local storage, one user), so the same
benchmark measures a checkout from before the hardening and one after it
with their own default limits.  The user's password is hashed by the tree's
own L{cosgw.auth.hashes.hash_password}, as an operator's would be: password
verification then costs what it costs in production, which is what the
wrong-password attack leans on.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import paramiko

from bench._gateway import (
    free_port,
    memory_mib,
    tree_environment,
)

MiB = 1024 * 1024
USER, PASSWORD = "bench", "abuse-bench-password"
#: The file the SFTP READ attack reads, written into the storage directly.
READ_FILE = "read.bin"
READ_FILE_SIZE = 4 * MiB
#: The probe and the health check connect from here; every attack from its
#: own other loopback address, so that per-address limits and bans aimed at
#: an attacker never fall on the user the benchmark watches.
USER_ADDRESS = "127.0.0.1"

# A gateway that closes an attacker's connection makes paramiko log a
# traceback from its transport thread; the attack reports it instead.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def connect_from(source: str, port: int, timeout: float) -> socket.socket:
    """
    A TCP connection to the gateway on C{port} from loopback address
    C{source} (all of 127/8 is this host on Linux), so each client is a
    different address to the gateway.
    """
    sock = socket.socket()
    try:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Gateway:
    """A running gateway process: its PID, ports, log and storage directory."""

    proc: subprocess.Popen[bytes]
    ftp_port: int
    sftp_port: int
    workdir: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the gateway's log, to show why it failed."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM by PID; SIGKILL if it has not exited within 30 s."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def tree_module_path(tree: Path) -> str:
    """Where C{tree}'s environment imports cosgw from, to print and check."""
    out = subprocess.run(
        [sys.executable, "-c", "import cosgw; print(cosgw.__file__)"],
        env=tree_environment(tree),
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def _hash_password(tree: Path) -> str:
    """The benchmark password hashed by C{tree}'s own code."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cosgw.auth.hashes import hash_password;"
            " print(hash_password(sys.stdin.read()))",
        ],
        input=PASSWORD,
        env=tree_environment(tree),
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def write_config(workdir: Path, tree: Path, ftp_port: int, sftp_port: int) -> Path:
    """
    The gateway's configuration: FTP and SFTP on 127.0.0.1, a local storage
    in C{workdir}/data holding L{READ_FILE}, and L{USER}; nothing else, so
    every limit is the tree's default.
    """
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / READ_FILE).write_bytes(os.urandom(READ_FILE_SIZE))
    config = workdir / "cosgw.ini"
    config.write_text(
        f"""[server]
state_dir = {workdir / "state"}
ftp_listen = tcp:{ftp_port}:interface=127.0.0.1
sftp_listen = tcp:{sftp_port}:interface=127.0.0.1

[storage:files]
type = local
path = {data}

[user:{USER}]
password = {_hash_password(tree)}
storage = files
"""
    )
    return config


def start_gateway(tree: Path, workdir: Path, timeout: float = 60) -> Gateway:
    """
    Start ``twistd -n cosftp`` from C{tree} and wait (up to C{timeout}
    seconds) until both its FTP banner and its SSH banner arrive.
    """
    ftp_port, sftp_port = free_port(), free_port()
    config = write_config(workdir, tree, ftp_port, sftp_port)
    log = workdir / "gateway.log"
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "cosftp", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tree,
            env=tree_environment(tree),
        )
    gateway = Gateway(proc, ftp_port, sftp_port, workdir, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and gateway.alive():
        try:
            for port, banner in ((ftp_port, b"220"), (sftp_port, b"SSH-2.0-")):
                with connect_from(USER_ADDRESS, port, 5) as s:
                    if not s.recv(64).startswith(banner):
                        raise OSError(f"no {banner!r} banner on {port}")
            return gateway
        except OSError:
            time.sleep(0.2)
    gateway.stop()
    raise SystemExit("gateway did not start:\n" + gateway.log_tail())


@dataclass
class Reading:
    """One sample of the gateway's memory (MiB) and open files."""

    at: float
    rss: float
    fds: int


@dataclass
class Monitor:
    """
    Samples the gateway's VmRSS and /proc/PID/fd count every C{interval}
    seconds in a thread, so that a peak between two table rows is seen even
    when it is gone by the time the row is printed.
    """

    pid: int
    interval: float = 0.1
    readings: list[Reading] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rss = memory_mib(self.pid)["VmRSS"]
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            except (OSError, KeyError):
                return
            self.readings.append(Reading(time.monotonic(), rss, fds))

    def peaks(self, start: float, end: float) -> tuple[float, int]:
        """The largest RSS (MiB) and open-file count sampled in [start, end]."""
        inside = [r for r in list(self.readings) if start <= r.at <= end]
        if not inside:
            return float("nan"), -1
        return max(r.rss for r in inside), max(r.fds for r in inside)


def open_files(pid: int) -> int:
    """How many descriptors C{pid} holds now (-1 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def login_seconds(gateway: Gateway, timeout: float) -> float:
    """
    Seconds an ordinary FTP login (banner, USER, PASS) from the user's
    address takes; raises when it fails or takes over C{timeout}.
    """
    start = time.monotonic()
    ftp = ftplib.FTP(timeout=timeout, source_address=(USER_ADDRESS, 0))
    try:
        ftp.connect("127.0.0.1", gateway.ftp_port)
        ftp.login(USER, PASSWORD)
        took = time.monotonic() - start
        ftp.quit()
    finally:
        ftp.close()
    return took


def _ftp_round_trip(gateway: Gateway, payload: bytes, timeout: float) -> None:
    """Log in, STOR C{payload}, RETR it, compare, DELE; raises on any failure."""
    ftp = ftplib.FTP(timeout=timeout, source_address=(USER_ADDRESS, 0))
    try:
        ftp.connect("127.0.0.1", gateway.ftp_port)
        ftp.login(USER, PASSWORD)
        ftp.storbinary("STOR health-ftp.bin", io.BytesIO(payload))
        got = io.BytesIO()
        ftp.retrbinary("RETR health-ftp.bin", got.write)
        if hashlib.sha256(got.getvalue()).digest() != hashlib.sha256(payload).digest():
            raise RuntimeError(f"FTP download differs ({len(got.getvalue())} bytes)")
        ftp.delete("health-ftp.bin")
        ftp.quit()
    finally:
        ftp.close()


def _sftp_round_trip(gateway: Gateway, payload: bytes, timeout: float) -> None:
    """The same over SFTP with paramiko and the password."""
    sock = connect_from(USER_ADDRESS, gateway.sftp_port, timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = transport.auth_timeout = timeout
        transport.connect(username=USER, password=PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        channel = sftp.get_channel()
        assert channel is not None
        channel.settimeout(timeout)
        sftp.putfo(io.BytesIO(payload), "/health-sftp.bin")
        got = io.BytesIO()
        sftp.getfo("/health-sftp.bin", got)
        if hashlib.sha256(got.getvalue()).digest() != hashlib.sha256(payload).digest():
            raise RuntimeError(f"SFTP download differs ({len(got.getvalue())} bytes)")
        sftp.remove("/health-sftp.bin")
        sftp.close()
    finally:
        transport.close()
        sock.close()


def health_check(gateway: Gateway, timeout: float = 30) -> str:
    """
    Whether an ordinary user is served normally: a fresh FTP login with a
    256 KiB upload and download (SHA-256 compared), then the same over
    SFTP.  "ok (N s)" or "FAIL <protocol>: <why>".
    """
    if not gateway.alive():
        return f"FAIL: gateway exited ({gateway.proc.returncode})"
    payload = os.urandom(256 * 1024)
    start = time.monotonic()
    for name, check in (("ftp", _ftp_round_trip), ("sftp", _sftp_round_trip)):
        try:
            check(gateway, payload, timeout)
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            return f"FAIL {name}: {type(e).__name__}: {e}"[:120]
    return f"ok ({time.monotonic() - start:.1f} s)"
