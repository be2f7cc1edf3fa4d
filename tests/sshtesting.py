"""
What the SSH and SFTP frontend tests share: user and host keys made once per
test run, the SFTP double an avatar serves (L{RootOnlySFTP} answers
REALPATH, enough for a client to start an SFTP session), blocking clients
(paramiko, raw sockets, OpenSSH's clients as subprocesses) to run in
threads so the reactor keeps serving while they block, and
L{SSHServerMixin}, which starts the gateway's SSH server on a real loopback
socket for one test.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import paramiko
from twisted.conch.interfaces import (
    IConchUser,
    ISFTPServer,
)
from twisted.conch.ssh import keys
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from cosgw.auth.keys import KeyChecker
from cosgw.auth.passwords import PasswordChecker
from cosgw.auth.realm import Realm
from cosgw.frontends.sftp.factory import GatewaySSHFactory
from cosgw.frontends.sftp.hostkeys import load_host_keys
from cosgw.frontends.sftp.session import SFTPUser

USER = "alice"
PASSWORD = "wonderland-Passw0rd"
MESSAGE = "This service offers SFTP only."

SSH_KEYGEN = shutil.which("ssh-keygen")
SSH = shutil.which("ssh")
SCP = shutil.which("scp")
SFTP = shutil.which("sftp")
NO_OPENSSH = None if SSH and SSH_KEYGEN and SFTP and SCP else "OpenSSH clients missing"

#: Bound on every blocking client call and every wait in these tests.
CLIENT_TIMEOUT = 15.0


# --------------------------------------------------------------------------
# Keys, made once per test run
# --------------------------------------------------------------------------

_KEY_DIR = tempfile.TemporaryDirectory(prefix="cosgw-test-ssh-")


def temporary_directory(testcase: Any) -> Path:
    """
    A fresh directory removed after the test.  Not C{mktemp}: under pytest
    that writes into the working directory, the source tree.
    """
    path = Path(tempfile.mkdtemp(prefix="cosgw-test-ssh-"))
    testcase.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def keygen(directory: Path, name: str, *args: str) -> Path:
    """Make a key pair with ssh-keygen; return the private key's path."""
    path = directory / name
    subprocess.run(
        [
            SSH_KEYGEN or "ssh-keygen",
            "-q",
            "-N",
            "",
            "-C",
            name,
            "-f",
            str(path),
            *args,
        ],
        check=True,
        timeout=60,
    )
    return path


@functools.cache
def user_key(kind: str) -> Path:
    """A user key pair: "ed25519", "rsa" (3072) or "other" (ed25519, not listed)."""
    directory = Path(_KEY_DIR.name)
    if kind == "rsa":
        return keygen(directory, "user_rsa", "-t", "rsa", "-b", "3072")
    return keygen(directory, f"user_{kind}", "-t", "ed25519")


def public_line(private: Path) -> str:
    return Path(str(private) + ".pub").read_text().strip()


@functools.cache
def host_keys() -> dict[bytes, keys.Key]:
    """The generated pair (Ed25519 + RSA 3072), shared by the server tests."""
    return load_host_keys([], Path(_KEY_DIR.name) / "state")


def host_key_files() -> tuple[Path, ...]:
    """The files of L{host_keys}, for a config's C{ssh_host_keys}."""
    host_keys()
    return tuple(sorted((Path(_KEY_DIR.name) / "state").glob("ssh_host_*_key")))


def ed25519_host_keys() -> dict[bytes, keys.Key]:
    return {b"ssh-ed25519": host_keys()[b"ssh-ed25519"]}


# --------------------------------------------------------------------------
# Test doubles at the edges
# --------------------------------------------------------------------------


@implementer(ISFTPServer)
class RootOnlySFTP:
    """An SFTP file system of one empty root: enough to start a session."""

    def gotVersion(self, otherVersion: int, extData: dict) -> dict:
        return {}

    def realPath(self, path: bytes) -> bytes:
        return b"/"

    def _unsupported(self, *args: Any) -> Any:
        raise NotImplementedError()

    openFile = removeFile = renameFile = makeDirectory = _unsupported
    removeDirectory = openDirectory = getAttrs = setAttrs = _unsupported
    readLink = makeLink = extendedRequest = _unsupported


# --------------------------------------------------------------------------
# Blocking clients (run in threads)
# --------------------------------------------------------------------------


@contextlib.contextmanager
def paramiko_transport(
    port: int, *, kex: Optional[list[str]] = None
) -> Iterator[paramiko.Transport]:
    """A started client transport to the gateway, closed on exit."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    t = paramiko.Transport(sock)
    t.banner_timeout = CLIENT_TIMEOUT
    t.handshake_timeout = CLIENT_TIMEOUT
    t.auth_timeout = CLIENT_TIMEOUT
    if kex is not None:
        t.get_security_options().kex = kex
    try:
        t.start_client(timeout=CLIENT_TIMEOUT)
        yield t
    finally:
        t.close()
        sock.close()


def load_paramiko_key(path: Path) -> paramiko.PKey:
    return paramiko.PKey.from_path(path)


def sftp_realpath(t: paramiko.Transport) -> str:
    sftp = paramiko.SFTPClient.from_transport(t)
    assert sftp is not None
    sftp.get_channel().settimeout(CLIENT_TIMEOUT)
    try:
        return sftp.normalize(".")
    finally:
        sftp.close()


def password_login(port: int, user: str, password: str) -> str:
    """Log in with a password and return the SFTP root, or raise."""
    with paramiko_transport(port) as t:
        t.auth_password(user, password, fallback=False)
        return sftp_realpath(t)


def key_login(port: int, user: str, key_path: Path) -> dict[str, Any]:
    """Log in with a key; return the SFTP root and what the server said."""
    with paramiko_transport(port) as t:
        t.auth_publickey(user, load_paramiko_key(key_path))
        return {
            "root": sftp_realpath(t),
            "host_key": t.get_remote_server_key(),
            "extensions": dict(t.server_extensions),
        }


def wait_inactive(t: paramiko.Transport, bound: float) -> bool:
    """Wait up to C{bound} seconds for the server to end the transport."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if not t.is_active():
            return True
        time.sleep(0.05)
    return not t.is_active()


def _split_packets(data: bytes) -> tuple[bytes, list[bytes]]:
    """The version line and the whole clear-text packets that follow it."""
    version, _, rest = data.partition(b"\r\n")
    packets = []
    while len(rest) >= 5:
        length, padding = struct.unpack(">IB", rest[:5])
        if len(rest) < 4 + length:
            break  # the rest of this packet has not arrived yet
        packets.append(rest[5 : 4 + length - padding])
        rest = rest[4 + length :]
    return version, packets


def raw_server_packets(
    port: int,
    *,
    send_version: bool = True,
    packets: Optional[int] = None,
    after_kexinit: bytes = b"",
) -> dict[str, Any]:
    """
    Speak just enough SSH to read the server's clear-text packets (version
    line, KEXINIT, maybe DISCONNECT) until it closes or stays silent, or,
    with C{packets}, until that many whole packets have arrived.  With
    C{after_kexinit}, send those bytes once the server's KEXINIT is in.
    """
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as s:
        if send_version:
            s.sendall(b"SSH-2.0-cosgwtest\r\n")
        data = b""
        closed = False
        pending = after_kexinit
        while True:
            if pending and _split_packets(data)[1]:
                s.sendall(pending)
                pending = b""
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            data += chunk
            if packets is not None and len(_split_packets(data)[1]) >= packets:
                break
            if time.monotonic() - started > CLIENT_TIMEOUT:
                break
    elapsed = time.monotonic() - started
    version, seen = _split_packets(data)
    return {
        "version": version,
        "packets": seen,
        "closed": closed,
        "elapsed": elapsed,
    }


def parse_disconnect(payload: bytes) -> tuple[int, str]:
    assert payload[0] == 1, payload[0]
    code, length = struct.unpack(">II", payload[1:9])
    return code, payload[9 : 9 + length].decode("utf-8")


def openssh_options(port: int, log_level: str = "ERROR") -> list[str]:
    """
    Options for OpenSSH clients: no config, agent or known_hosts; keys only.
    A disconnect's reason is printed at log level INFO.
    """
    return [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        f"LogLevel={log_level}",
        "-o",
        f"ConnectTimeout={int(CLIENT_TIMEOUT)}",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "KbdInteractiveAuthentication=no",
    ]


def run_client(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run an OpenSSH client, bounded in time, without the user's config."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=CLIENT_TIMEOUT,
    )


# --------------------------------------------------------------------------
# The server over real sockets
# --------------------------------------------------------------------------


class TrackingFactory(GatewaySSHFactory):
    """Remembers its transports, so a test can wait until all are closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transports: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        t = super().buildProtocol(addr)
        self.transports.append(t)
        return t


class SSHServerMixin:
    """Starts a gateway SSH server on 127.0.0.1 for one test."""

    timeout = 120

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        # Registered before the server's cleanups, so it runs after them.
        self.addCleanup(self.assertCleanLog)
        self.avatars: list[SFTPUser] = []
        self.logouts: list[str] = []
        self.workdir = temporary_directory(self)

    def assertCleanLog(self) -> None:
        """No traceback and no adaptation error was logged."""
        self.assertEqual(self.flushLoggedErrors(), [])
        for event in self.events:
            self.assertNotIn("log_failure", event, formatEvent(event))
            text = formatEvent(event)
            self.assertNotIn("Could not adapt", text)
            self.assertNotIn("Traceback", text)

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    def start_server(
        self,
        keys_by_type: Optional[dict[bytes, keys.Key]] = None,
        factory_class: type = TrackingFactory,
        **kwargs: Any,
    ) -> int:
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test-ssh-auth")
        pool.start()
        self.addCleanup(pool.stop)
        passwords = PasswordChecker(
            {USER: (PASSWORD, False)}, reactor, pool, failure_delay=0
        )
        key_checker = KeyChecker(
            {USER: [public_line(user_key("ed25519")), public_line(user_key("rsa"))]}
        )
        realm = Realm()

        def make_avatar(user: str, mind: Any) -> tuple[SFTPUser, Callable[[], None]]:
            avatar = SFTPUser(
                user, RootOnlySFTP(), on_logout=lambda: self.logouts.append(user)
            )
            self.avatars.append(avatar)
            return avatar, avatar.logout

        realm.register(IConchUser, make_avatar)
        portal = Portal(realm, [passwords, key_checker])
        self.factory = factory_class(
            portal, keys_by_type or host_keys(), reactor, **kwargs
        )
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.close_all)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def close_all(self) -> Any:
        """Abort what is still open and wait until the server saw it end."""
        for t in self.factory.transports:
            if not t.connection_lost and t.transport is not None:
                t.transport.abortConnection()
        yield self.wait_until(
            lambda: all(t.connection_lost for t in self.factory.transports)
        )

    @defer.inlineCallbacks
    def wait_until(
        self, predicate: Callable[[], bool], bound: float = CLIENT_TIMEOUT
    ) -> Any:
        deadline = reactor.seconds() + bound
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError("condition not reached in time")
            yield deferLater(reactor, 0.02, lambda: None)

    def in_thread(
        self, f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> defer.Deferred:
        return deferToThread(f, *args, **kwargs)

    def openssh(
        self, port: int, key: Path, *extra: str, log_level: str = "ERROR"
    ) -> defer.Deferred:
        args = [
            SSH or "ssh",
            *openssh_options(port, log_level),
            "-i",
            str(key),
            "-p",
            str(port),
            *extra,
        ]
        return self.in_thread(run_client, args, self.workdir)


def password_env(
    work: Path, password: str, home: Optional[Path] = None
) -> dict[str, str]:
    """
    The environment of an OpenSSH client that types C{password} itself: an
    askpass script in C{work} that SSH must use (no terminal), and a home
    of its own (C{home}, else C{work}) with no keys or known_hosts.
    """
    askpass = work / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
    askpass.chmod(0o700)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home or work),
        "DISPLAY": ":0",
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
    }
