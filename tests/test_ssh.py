"""
Tests for L{cosgw.frontends.ssh}: host keys, the public-key checker, the
avatar, and the SSH server over real loopback sockets with real clients
(paramiko in threads, OpenSSH's ssh, scp and sftp as subprocesses in
threads) so the reactor keeps serving while they block.

The SFTP file system is not under test here: the avatar serves a test double
that answers REALPATH, enough for a client to start an SFTP session.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message
from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import (
    IConchUser,
    ISession,
    ISessionSetEnv,
    ISFTPServer,
)
from twisted.conch.ssh import _kex, keys
from twisted.conch.ssh.filetransfer import FileTransferServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cosgw.auth.keys import KeyChecker, fingerprint
from cosgw.auth.passwords import PasswordChecker
from cosgw.auth.realm import Realm
from cosgw.frontends import ssh
from cosgw.frontends.ssh import (
    GatewaySSHFactory,
    GatewayUserAuthServer,
    SFTPUser,
    load_host_keys,
)

USER = "alice"
PASSWORD = "wonderland-Passw0rd"
MESSAGE = "This service offers SFTP only."
BANNED = "too many failed logins; try again later"

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


class RecordingAdmission:
    """Admits (or refuses with C{refusal}) and records every call."""

    def __init__(self, refusal: Optional[str] = None) -> None:
        self.refusal = refusal
        self.opened: list[str] = []
        self.closed: list[str] = []

    def open(self, ip: str) -> Optional[str]:
        self.opened.append(ip)
        return self.refusal

    def close(self, ip: str) -> None:
        self.closed.append(ip)


class RecordingGuard:
    """A login guard that records each guarded attempt and lets it run."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def guard(self, ip: str, user: str, login: Callable[[], Any]) -> Any:
        self.calls.append((ip, user))
        return login()


class BanningGuard(RecordingGuard):
    """Every guarded attempt fails at once: the address is banned."""

    def __init__(self, banned: type) -> None:
        super().__init__()
        self.banned = banned

    def guard(self, ip: str, user: str, login: Callable[[], Any]) -> Any:
        self.calls.append((ip, user))
        return defer.fail(self.banned(60))


class HoldingGuard(RecordingGuard):
    """Holds each attempt until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[Callable[[], Any], defer.Deferred]] = []
        self.cancelled: list[str] = []

    def guard(self, ip: str, user: str, login: Callable[[], Any]) -> Any:
        self.calls.append((ip, user))
        d: defer.Deferred = defer.Deferred(lambda d: self.cancelled.append(user))
        self.held.append((login, d))
        return d


def login_banned_type(testcase: TestCase) -> type:
    """
    L{cosgw.policy.defender.LoginBanned}; while the defender is not in this tree, a
    stand-in module with the same name and base class for the test's length.
    """
    try:
        from cosgw.policy.defender import LoginBanned
    except ImportError:
        module = types.ModuleType("cosgw.policy.defender")

        class LoginBanned(UnauthorizedLogin):  # type: ignore[no-redef]
            def __init__(self, remaining: float) -> None:
                super().__init__(f"banned for {remaining} s")
                self.remaining = remaining

        module.LoginBanned = LoginBanned  # type: ignore[attr-defined]
        sys.modules["cosgw.policy.defender"] = module
        testcase.addCleanup(sys.modules.pop, "cosgw.policy.defender", None)
    return LoginBanned


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


def channel_request(chan: paramiko.Channel, name: str, *strings: str) -> None:
    """
    Send a channel request with want-reply set; raise SSHException if it
    failed (paramiko closes the channel on a failed request).  paramiko's
    own env request sends want-reply false, which hides the answer.
    """
    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string(name)
    m.add_boolean(True)
    for s in strings:
        m.add_string(s)
    chan._event_pending()
    chan.transport._send_user_message(m)
    chan._wait_for_event()


def read_channel_end(chan: paramiko.Channel) -> tuple[bytes, bytes, Optional[int]]:
    """Read stdout and stderr to the channel's end, and its exit status."""
    chan.settimeout(CLIENT_TIMEOUT)
    out = b""
    err = b""
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while time.monotonic() < deadline:
        if chan.recv_stderr_ready():
            err += chan.recv_stderr(4096)
            continue
        if chan.recv_ready():
            out += chan.recv(4096)
            continue
        if chan.closed or chan.eof_received and chan.exit_status_ready():
            break
        time.sleep(0.02)
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(4096)
    status = chan.exit_status if chan.status_event.wait(CLIENT_TIMEOUT) else None
    return out, err, status


def raw_server_packets(port: int, *, send_version: bool = True) -> dict[str, Any]:
    """
    Speak just enough SSH to read the server's clear-text packets (version
    line, KEXINIT, maybe DISCONNECT) until it closes or stays silent.
    """
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as s:
        if send_version:
            s.sendall(b"SSH-2.0-cosgwtest\r\n")
        data = b""
        closed = False
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            data += chunk
            if time.monotonic() - started > CLIENT_TIMEOUT:
                break
    elapsed = time.monotonic() - started
    version, _, rest = data.partition(b"\r\n")
    packets = []
    while len(rest) >= 5:
        length, padding = struct.unpack(">IB", rest[:5])
        packets.append(rest[5 : 4 + length - padding])
        rest = rest[4 + length :]
    return {
        "version": version,
        "packets": packets,
        "closed": closed,
        "elapsed": elapsed,
    }


def parse_kexinit(payload: bytes) -> list[list[str]]:
    """The ten name-lists of a KEXINIT payload."""
    assert payload[0] == 20, payload[0]
    rest = payload[17:]
    lists = []
    for _ in range(10):
        (length,) = struct.unpack(">I", rest[:4])
        text = rest[4 : 4 + length].decode("ascii")
        lists.append(text.split(",") if text else [])
        rest = rest[4 + length :]
    return lists


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
# Host keys
# --------------------------------------------------------------------------


def openssh_fingerprint(path: Path) -> str:
    out = subprocess.run(
        [SSH_KEYGEN or "ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return out.split()[1]


class HostKeyTests(SynchronousTestCase):
    """L{load_host_keys} and L{fingerprint}."""

    skip = NO_OPENSSH

    def setUp(self) -> None:
        self.dir = temporary_directory(self)

    def test_generated_at_first_start_and_reused(self) -> None:
        """
        Without paths, an Ed25519 key and an RSA 3072 key are generated in
        the state directory (OpenSSH format, mode 0600, directory 0700) and
        the same keys come back on the next start.
        """
        state = self.dir / "state"
        first = load_host_keys([], state)
        self.assertEqual(set(first), {b"ssh-ed25519", b"ssh-rsa"})
        self.assertEqual(first[b"ssh-rsa"].size(), 3072)
        self.assertEqual(stat.S_IMODE(state.stat().st_mode), 0o700)
        for name in ("ssh_host_ed25519_key", "ssh_host_rsa_key"):
            path = state / name
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
            self.assertTrue(
                path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
            )
        self.assertEqual(
            sorted(p.name for p in state.iterdir()),
            ["ssh_host_ed25519_key", "ssh_host_rsa_key"],
        )
        mtimes = {p.name: p.stat().st_mtime_ns for p in state.iterdir()}

        second = load_host_keys([], state)
        for key_type in first:
            self.assertEqual(
                fingerprint(second[key_type]), fingerprint(first[key_type])
            )
            self.assertFalse(second[key_type].isPublic())
        self.assertEqual(
            {p.name: p.stat().st_mtime_ns for p in state.iterdir()}, mtimes
        )
        self.assertEqual(
            fingerprint(first[b"ssh-ed25519"]),
            openssh_fingerprint(state / "ssh_host_ed25519_key"),
        )

    def test_existing_generated_key_is_kept(self) -> None:
        """A key already in the state directory is used, never replaced."""
        state = self.dir / "state"
        state.mkdir()
        existing = keygen(state, "ssh_host_ed25519_key", "-t", "ed25519")
        before = existing.read_bytes()
        loaded = load_host_keys([], state)
        self.assertEqual(existing.read_bytes(), before)
        self.assertEqual(
            fingerprint(loaded[b"ssh-ed25519"]), openssh_fingerprint(existing)
        )
        self.assertIn(b"ssh-rsa", loaded)

    def test_broken_generated_key_is_an_error(self) -> None:
        state = self.dir / "state"
        state.mkdir()
        (state / "ssh_host_ed25519_key").write_text("garbage\n")
        e = self.assertRaises(ValueError, load_host_keys, [], state)
        self.assertIn(str(state / "ssh_host_ed25519_key"), str(e))
        self.assertEqual((state / "ssh_host_ed25519_key").read_text(), "garbage\n")

    def test_given_keys(self) -> None:
        """Given paths, each is loaded, keyed by its type, and nothing is generated."""
        ed = keygen(self.dir, "ed", "-t", "ed25519")
        ec = keygen(self.dir, "ec", "-t", "ecdsa", "-b", "384")
        rs = keygen(self.dir, "rs", "-t", "rsa", "-b", "2048")
        state = self.dir / "state"
        loaded = load_host_keys([ed, ec, rs], state)
        self.assertEqual(
            set(loaded), {b"ssh-ed25519", b"ecdsa-sha2-nistp384", b"ssh-rsa"}
        )
        self.assertEqual(fingerprint(loaded[b"ssh-ed25519"]), openssh_fingerprint(ed))
        self.assertEqual(
            fingerprint(loaded[b"ecdsa-sha2-nistp384"]), openssh_fingerprint(ec)
        )
        self.assertEqual(fingerprint(loaded[b"ssh-rsa"]), openssh_fingerprint(rs))
        self.assertFalse(state.exists())

    def assertRefused(self, path: Path, *words: str) -> None:
        e = self.assertRaises(ValueError, load_host_keys, [path], self.dir / "state")
        message = str(e)
        self.assertIn(str(path), message)
        self.assertNotIn("\n", message)
        for word in words:
            self.assertIn(word, message)

    def test_missing_file(self) -> None:
        self.assertRefused(self.dir / "nope", "cannot be read")

    def test_not_a_key(self) -> None:
        path = self.dir / "junk"
        path.write_text("hello\n")
        self.assertRefused(path, "not an SSH private key")

    def test_public_key(self) -> None:
        ed = keygen(self.dir, "ed", "-t", "ed25519")
        self.assertRefused(Path(str(ed) + ".pub"), "public key")

    def test_passphrase(self) -> None:
        path = self.dir / "locked"
        subprocess.run(
            [
                SSH_KEYGEN or "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "secret",
                "-f",
                str(path),
            ],
            check=True,
            timeout=60,
        )
        self.assertRefused(path, "passphrase")

    def test_dsa(self) -> None:
        path = self.dir / "dsa"
        private = dsa.generate_private_key(key_size=1024)
        path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        self.assertRefused(path, "ssh-dss")

    def test_short_rsa(self) -> None:
        path = self.dir / "rsa1024"
        private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        self.assertRefused(path, "1024 bits", "2048")

    def test_two_keys_of_one_type(self) -> None:
        a = keygen(self.dir, "a", "-t", "ed25519")
        b = keygen(self.dir, "b", "-t", "ed25519")
        e = self.assertRaises(ValueError, load_host_keys, [a, b], self.dir / "state")
        self.assertIn(str(b), str(e))
        self.assertIn("ssh-ed25519", str(e))

    def test_fingerprint_format(self) -> None:
        key = host_keys()[b"ssh-rsa"]
        text = fingerprint(key)
        self.assertTrue(text.startswith("SHA256:"))
        self.assertEqual(len(text), len("SHA256:") + 43)
        self.assertEqual(fingerprint(key.public()), text)
        path = user_key("rsa")
        expected = openssh_fingerprint(path)
        self.assertEqual(fingerprint(keys.Key.fromFile(str(path))), expected)
        self.assertEqual(load_paramiko_key(path).fingerprint, expected)


# --------------------------------------------------------------------------
# The key checker
# --------------------------------------------------------------------------


def signed_credentials(
    user: bytes, private: keys.Key, algorithm: bytes, data: bytes = b"session data"
) -> SSHPrivateKey:
    return SSHPrivateKey(
        user, algorithm, private.public().blob(), data, private.sign(data, algorithm)
    )


class KeyCheckerTests(SynchronousTestCase):
    """L{KeyChecker} on its own, with keys signed by Conch."""

    skip = NO_OPENSSH

    def setUp(self) -> None:
        self.ed = keys.Key.fromFile(str(user_key("ed25519")))
        self.rsa = keys.Key.fromFile(str(user_key("rsa")))
        self.other = keys.Key.fromFile(str(user_key("other")))
        self.checker = KeyChecker(
            {USER: [public_line(user_key("ed25519")), public_line(user_key("rsa"))]}
        )

    def test_interface(self) -> None:
        verifyObject(ICredentialsChecker, self.checker)

    def test_signed_keys(self) -> None:
        for key, algorithm in [
            (self.ed, b"ssh-ed25519"),
            (self.rsa, b"rsa-sha2-256"),
            (self.rsa, b"rsa-sha2-512"),
        ]:
            d = self.checker.requestAvatarId(
                signed_credentials(b"alice", key, algorithm)
            )
            self.assertEqual(self.successResultOf(d), USER)

    def test_query_for_listed_key(self) -> None:
        c = SSHPrivateKey(b"alice", b"ssh-ed25519", self.ed.public().blob(), None, None)
        self.failureResultOf(self.checker.requestAvatarId(c), ValidPublicKey)

    def test_query_for_unlisted_key(self) -> None:
        """Conch's own checker says any key would do; ours does not."""
        c = SSHPrivateKey(
            b"alice", b"ssh-ed25519", self.other.public().blob(), None, None
        )
        self.failureResultOf(self.checker.requestAvatarId(c), UnauthorizedLogin)

    def test_unknown_user(self) -> None:
        d = self.checker.requestAvatarId(
            signed_credentials(b"bob", self.ed, b"ssh-ed25519")
        )
        self.failureResultOf(d, UnauthorizedLogin)

    def test_unlisted_key(self) -> None:
        d = self.checker.requestAvatarId(
            signed_credentials(b"alice", self.other, b"ssh-ed25519")
        )
        self.failureResultOf(d, UnauthorizedLogin)

    def test_bad_signature(self) -> None:
        c = signed_credentials(b"alice", self.ed, b"ssh-ed25519")
        c.sigData = b"something else"
        self.failureResultOf(self.checker.requestAvatarId(c), UnauthorizedLogin)

    def test_sha1_rsa_signature(self) -> None:
        """ssh-rsa (SHA-1) signatures are refused even for a listed key."""
        d = self.checker.requestAvatarId(
            signed_credentials(b"alice", self.rsa, b"ssh-rsa")
        )
        self.failureResultOf(d, UnauthorizedLogin)

    def test_users_swappable(self) -> None:
        self.checker.users = {"bob": [public_line(user_key("other"))]}
        self.failureResultOf(
            self.checker.requestAvatarId(
                signed_credentials(b"alice", self.ed, b"ssh-ed25519")
            ),
            UnauthorizedLogin,
        )
        d = self.checker.requestAvatarId(
            signed_credentials(b"bob", self.other, b"ssh-ed25519")
        )
        self.assertEqual(self.successResultOf(d), "bob")
        self.assertEqual(set(self.checker.users), {"bob"})

    def test_bad_key_line(self) -> None:
        e = self.assertRaises(ValueError, KeyChecker, {"carol": ["ssh-ed25519 AAAA!!"]})
        self.assertIn("'carol'", str(e))
        private = dsa.generate_private_key(key_size=1024)
        line = keys.Key(private).public().toString("openssh").decode("ascii")
        e = self.assertRaises(ValueError, KeyChecker, {"dave": [line]})
        self.assertIn("ssh-dss", str(e))


# --------------------------------------------------------------------------
# The avatar
# --------------------------------------------------------------------------


class SFTPUserTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        server = RootOnlySFTP()
        avatar = SFTPUser(USER, server)
        verifyObject(IConchUser, avatar)
        self.assertIs(ISFTPServer(avatar), server)
        self.assertEqual(avatar.subsystemLookup, {b"sftp": FileTransferServer})
        self.assertEqual(list(avatar.channelLookup), [b"session"])
        session = ISession(avatar)
        verifyObject(ISession, session)
        verifyObject(ISessionSetEnv, session)
        self.assertIsNot(ISession(avatar), session)

    def test_logout_once(self) -> None:
        calls = []
        avatar = SFTPUser(USER, RootOnlySFTP(), on_logout=lambda: calls.append(1))
        avatar.logout()
        avatar.logout()
        self.assertEqual(calls, [1])
        SFTPUser(USER, RootOnlySFTP()).logout()

    def test_pipelined_second_login_is_logged_out(self) -> None:
        """
        A login completing on a connection that already has an avatar is
        logged out at once instead of replacing the first (whose logout
        Conch would then never call).
        """
        first = SFTPUser(USER, RootOnlySFTP())
        second_logouts = []
        second = SFTPUser(
            USER, RootOnlySFTP(), on_logout=lambda: second_logouts.append(1)
        )
        service = GatewayUserAuthServer()
        service.transport = types.SimpleNamespace(avatar=first, peer="192.0.2.1")
        service._cbFinishedAuth((IConchUser, second, second.logout))
        self.assertEqual(second_logouts, [1])
        self.assertIs(service.transport.avatar, first)

    def test_login_completing_after_disconnect_is_logged_out(self) -> None:
        """
        A login that completes when the connection is closing or gone (a
        realm or checker that cannot be cancelled) is logged out at once.
        """
        logouts = []
        avatar = SFTPUser(USER, RootOnlySFTP(), on_logout=lambda: logouts.append(1))
        service = GatewayUserAuthServer()
        service.transport = types.SimpleNamespace(
            peer="192.0.2.1", login_allowed=lambda: False
        )
        service._cbFinishedAuth((IConchUser, avatar, avatar.logout))
        self.assertEqual(logouts, [1])
        self.assertFalse(hasattr(service.transport, "avatar"))


class FactoryTests(SynchronousTestCase):
    def test_refusals(self) -> None:
        portal = Portal(Realm())
        self.assertRaises(ValueError, GatewaySSHFactory, portal, {}, reactor)
        self.assertRaises(
            ValueError, GatewaySSHFactory, portal, host_keys(), reactor, login_timeout=0
        )
        self.assertRaises(
            ValueError, GatewaySSHFactory, portal, host_keys(), reactor, idle_timeout=-1
        )
        public = {b"ssh-ed25519": host_keys()[b"ssh-ed25519"].public()}
        self.assertRaises(ValueError, GatewaySSHFactory, portal, public, reactor)
        dss = keys.Key(dsa.generate_private_key(key_size=1024))
        self.assertRaises(
            ValueError, GatewaySSHFactory, portal, {b"ssh-dss": dss}, reactor
        )

    def test_no_moduli_no_group_exchange(self) -> None:
        class Factory(GatewaySSHFactory):
            moduli_path = temporary_directory(self) / "moduli"

        self.assertIsNone(Factory(Portal(Realm()), host_keys(), reactor).primes)

    def test_small_moduli_dropped(self) -> None:
        path = temporary_directory(self) / "moduli"
        path.write_text("20240101000000 2 6 100 1023 2 " + "F" * 256 + "\n")

        class Factory(GatewaySSHFactory):
            moduli_path = path

        self.assertIsNone(Factory(Portal(Realm()), host_keys(), reactor).primes)


class TransportClockTests(SynchronousTestCase):
    """
    The transport's deadlines, on a L{Clock} given as the reactor: nothing is
    scheduled on the global reactor (Conch's userauth would).
    """

    PEER = IPv4Address("TCP", "192.0.2.7", 50000)

    def build(self, **kwargs: Any) -> tuple[Clock, Any, StringTransport]:
        clock = Clock()
        factory = GatewaySSHFactory(
            Portal(Realm(), [KeyChecker({})]), ed25519_host_keys(), clock, **kwargs
        )
        proto = factory.buildProtocol(self.PEER)
        transport = StringTransport(peerAddress=self.PEER)
        global_calls = set(reactor.getDelayedCalls())
        proto.makeConnection(transport)
        self.assertEqual(set(reactor.getDelayedCalls()), global_calls)
        return clock, proto, transport

    def last_packet(self, transport: StringTransport) -> bytes:
        version, _, rest = transport.value().partition(b"\r\n")
        self.assertEqual(version, b"SSH-2.0-cosgw")
        payload = b""
        while len(rest) >= 5:
            length, padding = struct.unpack(">IB", rest[:5])
            payload = rest[5 : 4 + length - padding]
            rest = rest[4 + length :]
        return payload

    def test_login_deadline_then_abort(self) -> None:
        clock, proto, transport = self.build(login_timeout=30)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(29.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            parse_disconnect(self.last_packet(transport)), (11, "login timeout")
        )
        # Input after DISCONNECT is discarded; a peer that never closes is
        # aborted after the grace period.
        proto.dataReceived(b"SSH-2.0-late\r\n")
        self.assertFalse(transport.disconnected)
        clock.advance(10)
        self.assertTrue(transport.disconnected)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_userauth_uses_injected_clock(self) -> None:
        clock, proto, transport = self.build(login_timeout=30)
        proto.isEncrypted = lambda direction="out": True
        global_calls = set(reactor.getDelayedCalls())
        service = GatewayUserAuthServer()
        service.transport = proto
        service.serviceStarted()
        self.assertIs(service.clock, clock)
        self.assertEqual(service.supportedAuthentications, [b"publickey"])
        self.assertEqual(set(reactor.getDelayedCalls()), global_calls)
        # Conch's own deadline is cancelled: the transport's is the one.
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        service.serviceStopped()
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idle_deadline(self) -> None:
        clock, proto, transport = self.build(login_timeout=30, idle_timeout=100)
        proto.avatar = SFTPUser(USER, RootOnlySFTP())
        proto.logoutFunction = proto.avatar.logout
        proto.setService(ssh.GatewayConnection())
        clock.advance(60)
        proto.dataReceived(b"")  # activity: the deadline moves
        clock.advance(99)
        self.assertFalse(transport.disconnecting)
        clock.advance(1.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            parse_disconnect(self.last_packet(transport)), (11, "idle timeout")
        )
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_idle_deadline(self) -> None:
        clock, proto, transport = self.build(idle_timeout=None)
        proto.avatar = SFTPUser(USER, RootOnlySFTP())
        proto.logoutFunction = proto.avatar.logout
        proto.setService(ssh.GatewayConnection())
        self.assertEqual(clock.getDelayedCalls(), [])
        proto.connectionLost(Failure(ConnectionDone()))


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


def group14_moduli(path: Path) -> Path:
    """A moduli file holding RFC 3526's 2048-bit group."""
    g, p = _kex.getDHGeneratorAndPrime(b"diffie-hellman-group14-sha1")
    path.write_text(f"20240101000000 2 6 100 2047 {g} {p:X}\n")
    return path


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


class AlgorithmTests(SSHServerMixin, TestCase):
    """What the server offers, read from its clear-text KEXINIT."""

    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_offered_algorithms(self) -> Any:
        port = self.start_server()
        seen = yield self.in_thread(raw_server_packets, port)
        self.assertEqual(seen["version"], b"SSH-2.0-cosgw")
        (
            kex,
            hostkeys,
            c2s,
            s2c,
            mac_c2s,
            mac_s2c,
            comp_c2s,
            comp_s2c,
            lang_c2s,
            lang_s2c,
        ) = parse_kexinit(seen["packets"][0])
        self.assertEqual(
            kex,
            [
                "mlkem768x25519-sha256",
                "curve25519-sha256",
                "curve25519-sha256@libssh.org",
                "ecdh-sha2-nistp256",
                "ecdh-sha2-nistp384",
                "ecdh-sha2-nistp521",
                "ext-info-s",
            ],
        )
        self.assertEqual(hostkeys, ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"])
        self.assertEqual(c2s, ["aes256-ctr", "aes192-ctr", "aes128-ctr"])
        self.assertEqual(s2c, c2s)
        self.assertEqual(mac_c2s, ["hmac-sha2-512", "hmac-sha2-256"])
        self.assertEqual(mac_s2c, mac_c2s)
        self.assertEqual((comp_c2s, comp_s2c), (["none"], ["none"]))
        self.assertEqual((lang_c2s, lang_s2c), ([], []))
        offered = kex + hostkeys + c2s + mac_c2s + comp_c2s
        for name in offered:
            for weak in ("ssh-dss", "3des", "cbc", "sha1", "md5", "group1-", "zlib"):
                self.assertNotIn(weak, name)
        self.assertNotIn("ssh-rsa", offered)
        self.assertNotIn("diffie-hellman-group14-sha1", offered)
        self.assertNotIn("diffie-hellman-group-exchange-sha1", offered)

    @defer.inlineCallbacks
    def test_host_key_algorithms_follow_keys(self) -> Any:
        """
        An Ed25519-only server offers only ssh-ed25519 as host key, yet
        server-sig-algs still lists the RSA SHA-2 signatures, so an RSA user
        key works (Conch would advertise its host key algorithms there).
        """
        port = self.start_server(ed25519_host_keys())
        seen = yield self.in_thread(raw_server_packets, port)
        self.assertEqual(parse_kexinit(seen["packets"][0])[1], ["ssh-ed25519"])
        result = yield self.in_thread(key_login, port, USER, user_key("rsa"))
        self.assertEqual(result["root"], "/")
        self.assertEqual(result["host_key"].get_name(), "ssh-ed25519")
        self.assertEqual(
            result["host_key"].fingerprint, fingerprint(host_keys()[b"ssh-ed25519"])
        )
        sig_algs = result["extensions"]["server-sig-algs"]
        if isinstance(sig_algs, bytes):
            sig_algs = sig_algs.decode("ascii")
        self.assertEqual(
            sig_algs.split(","),
            [
                "ssh-ed25519",
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
                "rsa-sha2-512",
                "rsa-sha2-256",
            ],
        )

    @defer.inlineCallbacks
    def test_group_exchange_with_moduli(self) -> Any:
        """With a moduli file, diffie-hellman-group-exchange-sha256 is offered and works."""
        moduli = group14_moduli(self.workdir / "moduli")

        class Factory(TrackingFactory):
            moduli_path = moduli

        port = self.start_server(factory_class=Factory)
        seen = yield self.in_thread(raw_server_packets, port)
        kex = parse_kexinit(seen["packets"][0])[0]
        self.assertIn("diffie-hellman-group-exchange-sha256", kex)
        self.assertNotIn("diffie-hellman-group-exchange-sha1", kex)

        def gex_login() -> str:
            with paramiko_transport(
                port, kex=["diffie-hellman-group-exchange-sha256"]
            ) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                return sftp_realpath(t)

        self.assertEqual((yield self.in_thread(gex_login)), "/")


class LoginTests(SSHServerMixin, TestCase):
    """Password and public-key logins with paramiko and OpenSSH."""

    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_password(self) -> Any:
        port = self.start_server()
        root = yield self.in_thread(password_login, port, USER, PASSWORD)
        self.assertEqual(root, "/")
        self.assertEqual([a.username for a in self.avatars], [USER])
        yield self.wait_until(lambda: self.logouts == [USER])
        self.assertIn("SSH user alice logged in from 127.0.0.1", self.log_text())

    @defer.inlineCallbacks
    def test_bad_password(self) -> Any:
        port = self.start_server()
        for user, password in [(USER, "wrong"), ("nobody", PASSWORD)]:
            f = yield self.assertFailure(
                self.in_thread(password_login, port, user, password),
                paramiko.AuthenticationException,
            )
            self.assertNotIsInstance(f, paramiko.BadAuthenticationType)
        self.assertEqual(self.avatars, [])

    @defer.inlineCallbacks
    def test_password_never_logged(self) -> Any:
        port = self.start_server()
        yield self.in_thread(password_login, port, USER, PASSWORD)
        yield self.assertFailure(
            self.in_thread(password_login, port, USER, "Wr0ng-secret-guess"),
            paramiko.AuthenticationException,
        )
        yield self.close_all()
        for event in self.events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn("Wr0ng-secret-guess", text)

    @defer.inlineCallbacks
    def test_keys(self) -> Any:
        port = self.start_server()
        for kind in ("ed25519", "rsa"):
            result = yield self.in_thread(key_login, port, USER, user_key(kind))
            self.assertEqual(result["root"], "/")
        self.assertEqual(len(self.avatars), 2)

    @defer.inlineCallbacks
    def test_wrong_key(self) -> Any:
        port = self.start_server()
        yield self.assertFailure(
            self.in_thread(key_login, port, USER, user_key("other")),
            paramiko.AuthenticationException,
        )
        yield self.assertFailure(
            self.in_thread(key_login, port, "nobody", user_key("ed25519")),
            paramiko.AuthenticationException,
        )
        self.assertEqual(self.avatars, [])

    @defer.inlineCallbacks
    def test_password_offered_only_after_encryption(self) -> Any:
        """The methods offered are exactly publickey and password."""
        port = self.start_server()

        def methods() -> list[str]:
            with paramiko_transport(port) as t:
                try:
                    t.auth_none(USER)
                except paramiko.BadAuthenticationType as e:
                    return sorted(e.allowed_types)
                return []

        self.assertEqual((yield self.in_thread(methods)), ["password", "publickey"])

    @defer.inlineCallbacks
    def test_openssh_sftp(self) -> Any:
        """
        OpenSSH's sftp with an env request (SetEnv) works and exits at once:
        SSHSession would hand the EOF to the session object and never close
        the channel, so sftp would hang at exit.
        """
        port = self.start_server()
        batch = self.workdir / "batch"
        batch.write_text("pwd\n")
        started = time.monotonic()
        result = yield self.in_thread(
            run_client,
            [
                SFTP or "sftp",
                *openssh_options(port),
                "-o",
                "SetEnv=FOO=bar",
                "-i",
                str(user_key("ed25519")),
                "-P",
                str(port),
                "-b",
                str(batch),
                f"{USER}@127.0.0.1",
            ],
            self.workdir,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"Remote working directory: /", result.stdout)
        self.assertLess(time.monotonic() - started, 5)


class SessionTests(SSHServerMixin, TestCase):
    """Everything but SFTP is refused politely; env and pty are accepted."""

    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_exec_refused(self) -> Any:
        port = self.start_server()
        result = yield self.openssh(
            port, user_key("ed25519"), f"{USER}@127.0.0.1", "true"
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(result.stderr.decode().strip(), MESSAGE)
        self.assertEqual(result.stdout, b"")
        yield self.wait_until(lambda: self.logouts == [USER])
        self.assertIn("asked for command 'true'; refused", self.log_text())

    @defer.inlineCallbacks
    def test_legacy_scp_refused(self) -> Any:
        port = self.start_server()
        source = self.workdir / "file.txt"
        source.write_text("hello\n")
        args = [
            SCP or "scp",
            *openssh_options(port),
            "-O",
            "-i",
            str(user_key("ed25519")),
            "-P",
            str(port),
            str(source),
            f"{USER}@127.0.0.1:/file.txt",
        ]
        result = yield self.in_thread(run_client, args, self.workdir)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(MESSAGE.encode(), result.stderr)

    @defer.inlineCallbacks
    def test_shell_refused(self) -> Any:
        port = self.start_server()

        def shell() -> tuple[bytes, bytes, Optional[int]]:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                chan = t.open_session(timeout=CLIENT_TIMEOUT)
                chan.get_pty()
                chan.invoke_shell()
                return read_channel_end(chan)

        out, err, status = yield self.in_thread(shell)
        self.assertEqual(out, b"")
        self.assertEqual(err, (MESSAGE + "\r\n").encode())
        self.assertEqual(status, 1)
        self.assertIn("asked for a shell; refused", self.log_text())

    @defer.inlineCallbacks
    def test_env_and_pty_accepted(self) -> Any:
        """
        env (with want-reply, so the answer is visible) and pty-req succeed
        without a logged error, and SFTP then starts on the same channel.
        """
        port = self.start_server()

        def env_then_sftp() -> str:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                chan = t.open_session(timeout=CLIENT_TIMEOUT)
                chan.settimeout(CLIENT_TIMEOUT)
                channel_request(chan, "env", "LANG", "C.UTF-8")
                chan.set_environment_variable("LC_ALL", "C")
                chan.get_pty()
                chan.invoke_subsystem("sftp")
                sftp = paramiko.SFTPClient(chan)
                try:
                    return sftp.normalize(".")
                finally:
                    sftp.close()

        self.assertEqual((yield self.in_thread(env_then_sftp)), "/")

    @defer.inlineCallbacks
    def test_openssh_setenv_exec(self) -> Any:
        port = self.start_server()
        result = yield self.openssh(
            port,
            user_key("ed25519"),
            "-o",
            "SetEnv=FOO=bar",
            f"{USER}@127.0.0.1",
            "true",
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(MESSAGE.encode(), result.stderr)

    @defer.inlineCallbacks
    def test_other_channels_and_subsystems_refused(self) -> Any:
        port = self.start_server()

        def attempts() -> list[str]:
            refused = []
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                try:
                    t.open_channel(
                        "direct-tcpip",
                        ("127.0.0.1", 22),
                        ("127.0.0.1", 1),
                        timeout=CLIENT_TIMEOUT,
                    )
                except paramiko.ChannelException:
                    refused.append("direct-tcpip")
                try:
                    t.request_port_forward("127.0.0.1", 0)
                except paramiko.SSHException:
                    refused.append("tcpip-forward")
                chan = t.open_session(timeout=CLIENT_TIMEOUT)
                chan.settimeout(CLIENT_TIMEOUT)
                try:
                    chan.invoke_subsystem("netconf")
                except paramiko.SSHException:
                    refused.append("netconf")
            return refused

        self.assertEqual(
            (yield self.in_thread(attempts)),
            ["direct-tcpip", "tcpip-forward", "netconf"],
        )
        self.assertIn("asked for a direct-tcpip channel; refused", self.log_text())


class TimeoutTests(SSHServerMixin, TestCase):
    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_login_timeout_silent_client(self) -> Any:
        """A client that sends nothing at all is disconnected after login_timeout."""
        port = self.start_server(login_timeout=0.5)
        seen = yield self.in_thread(raw_server_packets, port, send_version=False)
        self.assertTrue(seen["closed"])
        self.assertGreater(seen["elapsed"], 0.4)
        self.assertLess(seen["elapsed"], 5)
        self.assertEqual(seen["version"], b"SSH-2.0-cosgw")
        self.assertEqual(parse_disconnect(seen["packets"][-1]), (11, "login timeout"))
        self.assertIn("did not log in within 0.5 s", self.log_text())

    @defer.inlineCallbacks
    def test_login_timeout_after_key_exchange(self) -> Any:
        """A client that exchanged keys but never authenticates is cut too."""
        port = self.start_server(login_timeout=0.5)

        def stall() -> bool:
            with paramiko_transport(port) as t:
                return wait_inactive(t, 5)

        self.assertTrue((yield self.in_thread(stall)))

    @defer.inlineCallbacks
    def test_login_timeout_spares_logged_in(self) -> Any:
        port = self.start_server(login_timeout=0.5, idle_timeout=None)

        def slow() -> str:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                time.sleep(1.0)
                return sftp_realpath(t)

        self.assertEqual((yield self.in_thread(slow)), "/")

    @defer.inlineCallbacks
    def test_idle_timeout(self) -> Any:
        port = self.start_server(idle_timeout=0.5)

        def idle() -> tuple[str, bool]:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                root = sftp_realpath(t)
                return root, wait_inactive(t, 5)

        root, ended = yield self.in_thread(idle)
        self.assertEqual(root, "/")
        self.assertTrue(ended)
        self.assertIn("(user alice) idle for", self.log_text())
        yield self.wait_until(lambda: self.logouts == [USER])

    @defer.inlineCallbacks
    def test_activity_keeps_connection(self) -> Any:
        port = self.start_server(idle_timeout=0.8)

        def busy() -> bool:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                sftp = paramiko.SFTPClient.from_transport(t)
                assert sftp is not None
                for _ in range(8):
                    sftp.normalize(".")
                    time.sleep(0.25)
                return t.is_active()

        self.assertTrue((yield self.in_thread(busy)))
        self.assertNotIn("idle for", self.log_text())


class DisconnectAllTests(SSHServerMixin, TestCase):
    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_disconnect_all(self) -> Any:
        """
        Every open connection, logged in or not, gets a DISCONNECT; the
        Deferred fires once all are gone.
        """
        port = self.start_server(login_timeout=30)
        ready = threading.Event()
        release = threading.Event()

        def session() -> bool:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                ready.set()
                release.wait(CLIENT_TIMEOUT)
                return wait_inactive(t, CLIENT_TIMEOUT)

        logged_in = self.in_thread(session)
        unauthenticated = self.in_thread(raw_server_packets, port)
        yield self.in_thread(ready.wait, CLIENT_TIMEOUT)
        yield self.wait_until(lambda: len(self.factory.connections) == 2)
        yield self.factory.disconnect_all("maintenance")
        release.set()
        self.assertEqual(self.factory.connections, set())
        self.assertTrue((yield logged_in))
        seen = yield unauthenticated
        self.assertEqual(parse_disconnect(seen["packets"][-1]), (11, "maintenance"))
        self.assertEqual(self.logouts, [USER])


class AdmissionTests(SSHServerMixin, TestCase):
    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_admitted_then_closed_once(self) -> Any:
        admission = RecordingAdmission()
        port = self.start_server(admission=admission)
        yield self.in_thread(password_login, port, USER, PASSWORD)
        yield self.wait_until(lambda: admission.closed)
        yield self.close_all()
        self.assertEqual(admission.opened, ["127.0.0.1"])
        self.assertEqual(admission.closed, ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_refused_with_reason(self) -> Any:
        reason = "too many connections from your address (1)"
        admission = RecordingAdmission(reason)
        port = self.start_server(admission=admission)
        seen = yield self.in_thread(raw_server_packets, port)
        self.assertTrue(seen["closed"])
        self.assertEqual(seen["version"], b"SSH-2.0-cosgw")
        # SSH_DISCONNECT_TOO_MANY_CONNECTIONS, RFC 4253 section 11.1.
        self.assertEqual(parse_disconnect(seen["packets"][-1]), (12, reason))
        yield self.close_all()
        self.assertEqual(admission.opened, ["127.0.0.1"])
        self.assertEqual(admission.closed, [])

    @defer.inlineCallbacks
    def test_refused_openssh_sees_reason(self) -> Any:
        reason = "your address is not allowed"
        port = self.start_server(admission=RecordingAdmission(reason))
        result = yield self.openssh(
            port, user_key("ed25519"), f"{USER}@127.0.0.1", "true", log_level="INFO"
        )
        self.assertEqual(result.returncode, 255)
        self.assertIn(b":12: " + reason.encode(), result.stderr)


class LoginGuardTests(SSHServerMixin, TestCase):
    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_passwords_guarded(self) -> Any:
        guard = RecordingGuard()
        port = self.start_server(login_guard=guard)
        yield self.in_thread(password_login, port, USER, PASSWORD)
        yield self.assertFailure(
            self.in_thread(password_login, port, "bob", "nope"),
            paramiko.AuthenticationException,
        )
        self.assertEqual(guard.calls, [("127.0.0.1", USER), ("127.0.0.1", "bob")])

    @defer.inlineCallbacks
    def test_signed_keys_guarded(self) -> Any:
        """paramiko signs at once: one guarded attempt."""
        guard = RecordingGuard()
        port = self.start_server(login_guard=guard)
        yield self.in_thread(key_login, port, USER, user_key("ed25519"))
        self.assertEqual(guard.calls, [("127.0.0.1", USER)])

    @defer.inlineCallbacks
    def test_key_queries_not_guarded(self) -> Any:
        """
        OpenSSH asks first (no signature), then signs: only the signed
        attempt is guarded; a key the server does not know is only asked
        about, so it is never guarded.
        """
        guard = RecordingGuard()
        port = self.start_server(login_guard=guard)
        result = yield self.openssh(
            port, user_key("ed25519"), f"{USER}@127.0.0.1", "true"
        )
        self.assertIn(MESSAGE.encode(), result.stderr)
        self.assertEqual(guard.calls, [("127.0.0.1", USER)])
        result = yield self.openssh(
            port, user_key("other"), f"{USER}@127.0.0.1", "true"
        )
        self.assertEqual(result.returncode, 255)
        self.assertIn(b"Permission denied", result.stderr)
        self.assertEqual(guard.calls, [("127.0.0.1", USER)])

    @defer.inlineCallbacks
    def test_banned_disconnected(self) -> Any:
        guard = BanningGuard(login_banned_type(self))
        port = self.start_server(login_guard=guard)
        result = yield self.openssh(
            port, user_key("ed25519"), f"{USER}@127.0.0.1", "true", log_level="INFO"
        )
        self.assertEqual(result.returncode, 255)
        # SSH_DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
        self.assertIn(b":14: " + BANNED.encode(), result.stderr)
        self.assertEqual(guard.calls, [("127.0.0.1", USER)])

        def password_attempts() -> tuple[bool, bool]:
            with paramiko_transport(port) as t:
                try:
                    t.auth_password(USER, PASSWORD, fallback=False)
                except paramiko.SSHException:
                    refused = True
                else:
                    refused = False
                return refused, wait_inactive(t, 5)

        self.assertEqual((yield self.in_thread(password_attempts)), (True, True))
        self.assertEqual(self.avatars, [])

    @defer.inlineCallbacks
    def test_attempt_cancelled_on_disconnect(self) -> Any:
        """
        An attempt still under way when the client hangs up is cancelled (the
        defender's failure delay ends with it), quietly, and no avatar is
        made.
        """
        guard = HoldingGuard()
        port = self.start_server(login_guard=guard)

        def give_up() -> None:
            with paramiko_transport(port) as t:
                t.auth_timeout = 0.5
                try:
                    t.auth_password(USER, PASSWORD, fallback=False)
                except paramiko.AuthenticationException:
                    return
                raise AssertionError("login should have been held")

        yield self.in_thread(give_up)
        yield self.wait_until(
            lambda: all(t.connection_lost for t in self.factory.transports)
        )
        self.assertEqual(guard.cancelled, [USER])
        self.assertEqual(self.avatars, [])
