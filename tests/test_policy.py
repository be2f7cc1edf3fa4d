"""
Users and policy, the same on every protocol.

Each rule is driven end to end through a real gateway, once over FTP
(Python's ftplib) and once over SFTP (paramiko), asserting the exact replies
and errors a client sees, and the store is then read directly (bypassing the
gateway) to check what a refused operation left behind: nothing.

  - isolation: users on different buckets, or in different homes of one
    bucket, never see or reach each other's files;
  - permissions: a user lacking one permission is refused exactly that
    operation (FTP 550, SFTP PERMISSION_DENIED), a user with it succeeds;
  - quotas (bytes and files) and the per-user largest file: FTP 552, SFTP
    failure, no object and no multipart upload left, usage right after
    deletes;
  - connection limits (total, per address), sessions per user, allowed and
    denied networks (server and user);
  - login and idle timeouts;
  - bandwidth limits per user and direction;
  - the login defender: growing delays, then a ban of the address on every
    protocol, while other addresses are not slowed.

Client sockets bind their source address (127.0.0.2, 127.0.0.3) to play
other hosts: all of 127.0.0.0/8 is the loopback on Linux.
"""

from __future__ import annotations

import dataclasses
import errno
import ftplib
import io
import logging
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import paramiko
from paramiko.file import BufferedFile
from paramiko.sftp import CMD_CLOSE
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from cosgw.config import ALL_PERMISSIONS, UserConfig
from tests.harness import (
    PASSWORD,
    CosInspector,
    MiB,
    cos_server,
    in_thread,
    random_bytes,
    sha256,
    start_gateway,
)

#: Seconds any single client operation may take before the test fails.
TIMEOUT = 20
HERE = "127.0.0.1"
#: Another host, as far as the gateway can tell.
OTHER = "127.0.0.2"
THIRD = "127.0.0.3"

#: SSH_MSG_DISCONNECT reason codes (RFC 4253 section 11.1).
DISCONNECT_BY_APPLICATION = 11
DISCONNECT_TOO_MANY_CONNECTIONS = 12
DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE = 14


def user(
    name: str,
    home: str = "",
    storage: str = "store",
    permissions: frozenset[str] = ALL_PERMISSIONS,
    **rules: Any,
) -> UserConfig:
    """A user with the test password (plain: no scrypt cost per login)."""
    return UserConfig(
        name=name,
        password=PASSWORD,
        password_is_hashed=False,
        storage=storage,
        home=home,
        permissions=frozenset(permissions),
        **rules,
    )


def wait_until(predicate: Callable[[], bool], bound: float = 10) -> defer.Deferred:
    """
    Poll C{predicate} on the reactor thread every 20 ms; fire with True as
    soon as it holds, with False when C{bound} seconds have passed.
    """

    async def poll() -> bool:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if predicate():
                return True
            await deferLater(reactor, 0.02, lambda: None)
        return bool(predicate())

    return defer.Deferred.fromCoroutine(poll())


@defer.inlineCallbacks
def start(testcase: Any, kind: str, **kwargs: Any) -> Any:
    """
    L{start_gateway}, and at cleanup, before it stops, wait (bounded) until
    the gateway has seen every client connection end, so that no server-side
    connection or timer outlives the test.
    """
    gw = yield start_gateway(testcase, kind, **kwargs)
    testcase.addCleanup(wait_until, lambda: gw.service.limits.total == 0)
    return gw


# --------------------------------------------------------------------------
# FTP (blocking; run in threads)
# --------------------------------------------------------------------------


def ftp_connect(gw: Any, source: str = HERE) -> ftplib.FTP:
    """Connected from C{source}; raises ftplib.Error if the welcome is not 2xx."""
    ftp = ftplib.FTP(encoding="utf-8", source_address=(source, 0))
    try:
        ftp.connect(gw.host, gw.port, timeout=TIMEOUT)
    except BaseException:
        ftp.close()
        raise
    return ftp


def ftp_login(gw: Any, name: str, source: str = HERE) -> ftplib.FTP:
    ftp = ftp_connect(gw, source)
    try:
        ftp.login(name, PASSWORD)
        ftp.voidcmd("TYPE I")
    except BaseException:
        ftp.close()
        raise
    return ftp


def reply(f: Callable[..., Any], *args: Any) -> str:
    """The final reply of an ftplib call, error or not."""
    try:
        return str(f(*args))
    except ftplib.Error as e:
        return str(e)


def connect_reply(gw: Any, source: str = HERE) -> tuple[str, Optional[ftplib.FTP]]:
    """The welcome line, and the connection when it was accepted."""
    try:
        ftp = ftp_connect(gw, source)
    except ftplib.Error as e:
        return str(e), None
    return ftp.getwelcome(), ftp


def login_reply(
    gw: Any, name: str, source: str = HERE, password: str = PASSWORD
) -> tuple[str, Optional[ftplib.FTP]]:
    """The reply to PASS (or the refusing welcome), and the logged-in FTP."""
    try:
        ftp = ftp_connect(gw, source)
    except ftplib.Error as e:
        return str(e), None
    try:
        return ftp.login(name, password), ftp
    except ftplib.Error as e:
        ftp.close()
        return str(e), None


def ftp_store(ftp: ftplib.FTP, name: str, data: bytes) -> str:
    """
    STOR C{data}, tolerating a server that stops the data connection
    midway (quota, size limit): the final reply on the control connection.
    """
    try:
        conn = ftp.transfercmd(f"STOR {name}")
    except ftplib.Error as e:
        return str(e)
    try:
        conn.sendall(data)
    except OSError:
        pass  # the gateway hung up the data connection; the reply says why
    finally:
        conn.close()
    return reply(ftp.voidresp)


def ftp_retrieve(ftp: ftplib.FTP, name: str) -> bytes:
    out = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", out.write)
    return out.getvalue()


def ftp_nlst(ftp: ftplib.FTP, path: str = "") -> list[str]:
    return sorted(ftp.nlst(*([path] if path else [])))


# --------------------------------------------------------------------------
# SFTP (blocking; run in threads)
# --------------------------------------------------------------------------

_channels = iter(range(1_000_000))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class SSHClient:
    """
    A paramiko transport from C{source}, with the server's DISCONNECT
    reason captured from paramiko's log (paramiko keeps it nowhere else).
    """

    def __init__(self, gw: Any, source: str = HERE) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.bind((source, 0))
        self.sock.connect((gw.host, gw.sftp_port))
        self.transport = paramiko.Transport(self.sock)
        channel = f"cosgw.test_policy.{next(_channels)}"
        self.transport.set_log_channel(channel)
        self.log = _Collect()
        self._logger = logging.getLogger(channel)
        self._logger.addHandler(self.log)
        self._logger.setLevel(logging.DEBUG)
        self._logger.propagate = False
        t = self.transport
        t.banner_timeout = t.handshake_timeout = t.auth_timeout = TIMEOUT
        self.sftp: Optional[paramiko.SFTPClient] = None

    def start(self) -> SSHClient:
        self.transport.start_client(timeout=TIMEOUT)
        return self

    def login(self, name: str, password: str = PASSWORD) -> paramiko.SFTPClient:
        self.transport.auth_password(name, password, fallback=False)
        sftp = paramiko.SFTPClient.from_transport(self.transport)
        assert sftp is not None
        sftp.get_channel().settimeout(TIMEOUT)
        self.sftp = sftp
        return sftp

    def disconnect_reason(self) -> Optional[tuple[int, str]]:
        """The server's DISCONNECT (code, description), if one came."""
        for message in self.log.messages:
            if message.startswith("Disconnect (code "):
                code, _, desc = message[len("Disconnect (code ") :].partition("): ")
                return int(code), desc
        return None

    def wait_closed(self, bound: float) -> bool:
        """Wait up to C{bound} seconds for the server to end the transport."""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline and self.transport.is_active():
            time.sleep(0.02)
        return not self.transport.is_active()

    def close(self) -> None:
        if self.sftp is not None:
            self.sftp.close()
        self.transport.close()
        self.sock.close()
        self._logger.removeHandler(self.log)


@contextmanager
def sftp_session(gw: Any, name: str, source: str = HERE) -> Iterator[Any]:
    client = SSHClient(gw, source)
    try:
        yield client.start().login(name)
    finally:
        client.close()


def ssh_attempt(
    gw: Any, name: str, source: str = HERE, password: str = PASSWORD
) -> dict[str, Any]:
    """
    Connect from C{source} and log in: what happened.  C{ok} says whether
    an SFTP session worked (its root listed); otherwise C{error} is the
    exception's type name and C{disconnect} the server's reason.
    """
    result: dict[str, Any] = {"ok": False, "error": None, "disconnect": None}
    client = SSHClient(gw, source)
    try:
        client.start()
        sftp = client.login(name, password)
        sftp.listdir(".")
        result["ok"] = True
    except (paramiko.SSHException, OSError, EOFError) as e:
        result["error"] = type(e).__name__
        if not isinstance(e, paramiko.AuthenticationException):
            # A refusal by disconnect: let paramiko read it to the end.
            client.wait_closed(2)
    finally:
        result["active"] = client.transport.is_active()
        result["disconnect"] = client.disconnect_reason()
        client.close()
    return result


def sftp_error(f: Callable[..., Any], *args: Any) -> Optional[BaseException]:
    """The exception C{f} raised, or None."""
    try:
        f(*args)
    except (OSError, paramiko.SSHException) as e:
        return e
    return None


def sftp_put(sftp: paramiko.SFTPClient, path: str, data: bytes) -> None:
    """
    Upload C{data} as paramiko's putfo does (pipelined writes), but raise
    the server's answer to CLOSE too: paramiko's own close() (and so
    putfo) swallows a failed CLOSE, which is where SFTP reports an upload
    the store refused.  Raises the first error the server gave.
    """
    f = sftp.open(path, "wb")
    f.set_pipelined(True)
    error: Optional[OSError] = None
    try:
        f.write(data)
        BufferedFile.close(f)  # flushes; does not send CLOSE
        sftp._finish_responses(f)  # every write's status
    except OSError as e:
        error = e
    f._closed = True  # paramiko must not close it again
    try:
        sftp._request(CMD_CLOSE, f.handle)
    except OSError as e:
        error = error or e
    if error is not None:
        raise error


def sftp_get(sftp: paramiko.SFTPClient, path: str) -> bytes:
    out = io.BytesIO()
    sftp.getfo(path, out)
    return out.getvalue()


# --------------------------------------------------------------------------
# 1. Isolation
# --------------------------------------------------------------------------


class IsolationTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_users_on_two_buckets(self) -> Any:
        """
        alice (bucket "store") and bob (bucket "other") each see only their
        own files, over FTP and SFTP; each bucket holds its user's only.
        """
        server = cos_server()
        other = CosInspector(server, server.create_bucket("t" + uuid.uuid4().hex[:12]))
        gw = yield start(
            self,
            "cos",
            users={"alice": user("alice"), "bob": user("bob", storage="other")},
            storages={"other": dataclasses.replace(other.storage(), name="other")},
        )

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            for name in ("alice", "bob"):
                ftp = ftp_login(gw, name)
                r[f"{name}-stor"] = ftp_store(ftp, f"{name[0]}.txt", name.encode())
                ftp.quit()
                with sftp_session(gw, name) as sftp:
                    sftp_put(sftp, f"{name[0]}-sftp.txt", name.encode() * 2)
            for name, theirs in (("alice", "b"), ("bob", "a")):
                ftp = ftp_login(gw, name)
                r[f"{name}-nlst"] = ftp_nlst(ftp)
                r[f"{name}-retr"] = reply(ftp_retrieve, ftp, f"{theirs}.txt")
                r[f"{name}-dele"] = reply(ftp.delete, f"/{theirs}.txt")
                ftp.quit()
                with sftp_session(gw, name) as sftp:
                    r[f"{name}-listdir"] = sorted(sftp.listdir("/"))
                    r[f"{name}-stat"] = sftp_error(sftp.stat, f"/{theirs}-sftp.txt")
                    r[f"{name}-open"] = sftp_error(sftp.open, f"{theirs}.txt")
            return r

        r = yield in_thread(run)
        self.assertEqual(r["alice-stor"], "226 Transfer complete")
        self.assertEqual(r["bob-stor"], "226 Transfer complete")
        self.assertEqual(r["alice-nlst"], ["a-sftp.txt", "a.txt"])
        self.assertEqual(r["bob-nlst"], ["b-sftp.txt", "b.txt"])
        self.assertEqual(r["alice-listdir"], ["a-sftp.txt", "a.txt"])
        self.assertEqual(r["bob-listdir"], ["b-sftp.txt", "b.txt"])
        for name in ("alice", "bob"):
            self.assertTrue(r[f"{name}-retr"].startswith("550 "), r[f"{name}-retr"])
            self.assertTrue(r[f"{name}-dele"].startswith("550 "), r[f"{name}-dele"])
            for key in ("stat", "open"):
                e = r[f"{name}-{key}"]
                self.assertIsInstance(e, FileNotFoundError)
                self.assertEqual(e.errno, errno.ENOENT)
        self.assertEqual(gw.inspector.keys(), ["a-sftp.txt", "a.txt"])
        self.assertEqual(other.keys(), ["b-sftp.txt", "b.txt"])
        self.assertEqual(gw.inspector.read("a.txt"), b"alice")
        self.assertEqual(gw.inspector.read("a-sftp.txt"), b"alicealice")
        self.assertEqual(other.read("b.txt"), b"bob")
        self.assertEqual(other.read("b-sftp.txt"), b"bobbob")

    @defer.inlineCallbacks
    def test_homes_in_one_bucket(self) -> Any:
        """
        alice (home homes/alice) and bob (home homes/bob) share a bucket:
        no ../ path of bob's reaches alice's file, over FTP or SFTP; what
        bob writes upwards lands in his own home.
        """
        gw = yield start(
            self,
            "cos",
            users={
                "alice": user("alice", home="homes/alice"),
                "bob": user("bob", home="homes/bob"),
            },
        )
        tries = [
            "../alice/secret.txt",
            "../../homes/alice/secret.txt",
            "/../alice/secret.txt",
            "/../../../homes/alice/secret.txt",
        ]

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            ftp = ftp_login(gw, "alice")
            r["alice-stor"] = ftp_store(ftp, "secret.txt", b"alice's secret")
            ftp.quit()
            ftp = ftp_login(gw, "bob")
            r["ftp"] = [reply(ftp_retrieve, ftp, p) for p in tries]
            r["ftp-size"] = [reply(ftp.sendcmd, f"SIZE {p}") for p in tries]
            r["ftp-dele"] = [reply(ftp.delete, p) for p in tries]
            r["ftp-cwd"] = reply(ftp.cwd, "../alice")
            r["ftp-up"] = ftp_store(ftp, "../../up-ftp.txt", b"bob ftp")
            r["ftp-nlst"] = ftp_nlst(ftp, "..")
            ftp.quit()
            with sftp_session(gw, "bob") as sftp:
                r["sftp-open"] = [sftp_error(sftp.open, p) for p in tries]
                r["sftp-remove"] = [sftp_error(sftp.remove, p) for p in tries]
                r["sftp-rename"] = [
                    sftp_error(sftp.rename, p, "mine.txt") for p in tries
                ]
                r["sftp-root"] = sftp.normalize("../..")
                sftp_put(sftp, "../../up-sftp.txt", b"bob sftp")
                r["sftp-listdir"] = sorted(sftp.listdir(".."))
            return r

        r = yield in_thread(run)
        self.assertEqual(r["alice-stor"], "226 Transfer complete")
        for line in r["ftp"] + r["ftp-size"] + r["ftp-dele"] + [r["ftp-cwd"]]:
            self.assertTrue(line.startswith("550 "), line)
        self.assertEqual(r["ftp-up"], "226 Transfer complete")
        self.assertEqual(r["ftp-nlst"], ["up-ftp.txt"])
        for e in r["sftp-open"] + r["sftp-remove"] + r["sftp-rename"]:
            self.assertIsInstance(e, FileNotFoundError)
            self.assertEqual(e.errno, errno.ENOENT)
        self.assertEqual(r["sftp-root"], "/")
        self.assertEqual(r["sftp-listdir"], ["up-ftp.txt", "up-sftp.txt"])
        self.assertEqual(
            gw.inspector.keys(),
            ["homes/alice/secret.txt", "homes/bob/up-ftp.txt", "homes/bob/up-sftp.txt"],
        )
        self.assertEqual(gw.inspector.read("homes/alice/secret.txt"), b"alice's secret")


# --------------------------------------------------------------------------
# 2. Permissions
# --------------------------------------------------------------------------

PERMISSIONS = sorted(ALL_PERMISSIONS)


def _ftp_op(ftp: ftplib.FTP, permission: str, d: str) -> str:
    """Do the one thing C{permission} allows, in C{d}; the final reply."""
    if permission == "upload":
        return ftp_store(ftp, f"{d}/new.txt", b"new")
    if permission == "overwrite":
        return ftp_store(ftp, f"{d}/existing.txt", b"replaced")
    if permission == "delete":
        return reply(ftp.delete, f"{d}/existing.txt")
    if permission == "rename":
        return reply(ftp.rename, f"{d}/existing.txt", f"{d}/renamed.txt")
    if permission == "mkdir":
        return reply(ftp.sendcmd, f"MKD {d}/newdir")
    if permission == "rmdir":
        return reply(ftp.sendcmd, f"RMD {d}/emptydir")
    if permission == "download":
        try:
            data = ftp_retrieve(ftp, f"{d}/existing.txt")
        except ftplib.Error as e:
            return str(e)
        return f"226 {data!r}"
    assert permission == "list"
    try:
        names = ftp.nlst(d)
    except ftplib.Error as e:
        return str(e)
    return f"226 {sorted(n.rsplit('/', 1)[-1] for n in names)!r}"


def _sftp_op(sftp: paramiko.SFTPClient, permission: str, d: str) -> Any:
    """Do the one thing C{permission} allows, in C{d}; the error or result."""
    try:
        if permission == "upload":
            sftp_put(sftp, f"{d}/new.txt", b"new")
        elif permission == "overwrite":
            sftp_put(sftp, f"{d}/existing.txt", b"replaced")
        elif permission == "delete":
            sftp.remove(f"{d}/existing.txt")
        elif permission == "rename":
            sftp.rename(f"{d}/existing.txt", f"{d}/renamed.txt")
        elif permission == "mkdir":
            sftp.mkdir(f"{d}/newdir")
        elif permission == "rmdir":
            sftp.rmdir(f"{d}/emptydir")
        elif permission == "download":
            return sftp_get(sftp, f"{d}/existing.txt")
        else:
            return sorted(sftp.listdir(d))
    except OSError as e:
        return e
    return None


#: What each permission's operation leaves in a directory that held
#: existing.txt (b"old") and emptydir/, as (file name, content) pairs and
#: directory names.
_AFTER = {
    "upload": ({"existing.txt": b"old", "new.txt": b"new"}, {"emptydir"}),
    "overwrite": ({"existing.txt": b"replaced"}, {"emptydir"}),
    "delete": ({}, {"emptydir"}),
    "rename": ({"renamed.txt": b"old"}, {"emptydir"}),
    "mkdir": ({"existing.txt": b"old"}, {"emptydir", "newdir"}),
    "rmdir": ({"existing.txt": b"old"}, set()),
    "download": ({"existing.txt": b"old"}, {"emptydir"}),
    "list": ({"existing.txt": b"old"}, {"emptydir"}),
}
_BEFORE = ({"existing.txt": b"old"}, {"emptydir"})


class PermissionTests(unittest.TestCase):
    """
    For every permission, the user "no-<permission>" (every permission but
    that one, home perm/<permission>) is refused that operation over FTP
    (550) and SFTP (PERMISSION_DENIED) and the store does not change; then
    alice (every permission, home "") does the same and succeeds.
    """

    kind = "local"

    @defer.inlineCallbacks
    def test_each_permission(self) -> Any:
        users = {"alice": user("alice")}
        for p in PERMISSIONS:
            users[f"no-{p}"] = user(
                f"no-{p}", home=f"perm/{p}", permissions=ALL_PERMISSIONS - {p}
            )
        gw = yield start(self, self.kind, users=users)

        def contents(d: str) -> tuple[dict[str, bytes], set[str]]:
            """What the store holds in C{d}: files and directories."""
            files, dirs = {}, set()
            for key in gw.inspector.keys(d + "/"):
                rest = key[len(d) + 1 :]
                if not rest:
                    continue
                if rest.endswith("/"):
                    dirs.add(rest.rstrip("/"))
                else:
                    files[rest] = gw.inspector.read(key)
            return files, dirs

        def seed() -> list[str]:
            replies = []
            ftp = ftp_login(gw, "alice")
            try:
                replies.append(reply(ftp.sendcmd, "MKD perm"))
                for p in PERMISSIONS:
                    replies.append(reply(ftp.sendcmd, f"MKD perm/{p}"))
                    for proto in ("ftp", "sftp"):
                        d = f"perm/{p}/{proto}"
                        replies.append(reply(ftp.sendcmd, f"MKD {d}"))
                        replies.append(reply(ftp.sendcmd, f"MKD {d}/emptydir"))
                        replies.append(ftp_store(ftp, f"{d}/existing.txt", b"old"))
            finally:
                ftp.quit()
            return replies

        replies = yield in_thread(seed)
        self.assertEqual(
            [line[:3] for line in replies],
            ["257"]
            + ["257", "257", "257", "226", "257", "257", "226"] * len(PERMISSIONS),
            replies,
        )
        for p in PERMISSIONS:
            for proto in ("ftp", "sftp"):
                self.assertEqual(contents(f"perm/{p}/{proto}"), _BEFORE)

        def refused(p: str) -> tuple[str, Any]:
            ftp = ftp_login(gw, f"no-{p}")
            try:
                ftp_reply = _ftp_op(ftp, p, "ftp")
            finally:
                ftp.quit()
            with sftp_session(gw, f"no-{p}") as sftp:
                sftp_result = _sftp_op(sftp, p, "sftp")
            return ftp_reply, sftp_result

        def allowed(p: str) -> tuple[str, Any]:
            ftp = ftp_login(gw, "alice")
            try:
                ftp_reply = _ftp_op(ftp, p, f"perm/{p}/ftp")
            finally:
                ftp.quit()
            with sftp_session(gw, "alice") as sftp:
                sftp_result = _sftp_op(sftp, p, f"perm/{p}/sftp")
            return ftp_reply, sftp_result

        for p in PERMISSIONS:
            ftp_reply, sftp_result = yield in_thread(refused, p)
            self.assertTrue(ftp_reply.startswith("550 "), (p, ftp_reply))
            self.assertTrue(ftp_reply.endswith(f": {p} not permitted"), (p, ftp_reply))
            self.assertIsInstance(sftp_result, PermissionError, p)
            self.assertEqual(sftp_result.errno, errno.EACCES, p)
            self.assertTrue(
                str(sftp_result.strerror).endswith(f": {p} not permitted"),
                (p, sftp_result),
            )
            for proto in ("ftp", "sftp"):
                self.assertEqual(contents(f"perm/{p}/{proto}"), _BEFORE, (p, proto))

            ftp_reply, sftp_result = yield in_thread(allowed, p)
            self.assertTrue(ftp_reply[:3] in ("226", "250", "257"), (p, ftp_reply))
            if p == "download":
                self.assertEqual(ftp_reply, "226 b'old'")
                self.assertEqual(sftp_result, b"old")
            elif p == "list":
                self.assertEqual(ftp_reply, "226 ['emptydir', 'existing.txt']")
                self.assertEqual(sftp_result, ["emptydir", "existing.txt"])
            else:
                self.assertIsNone(sftp_result, p)
            for proto in ("ftp", "sftp"):
                self.assertEqual(contents(f"perm/{p}/{proto}"), _AFTER[p], (p, proto))
        self.assertEqual(gw.inspector.pending_uploads(), [])


class CosPermissionTests(PermissionTests):
    kind = "cos"


# --------------------------------------------------------------------------
# 3, 4. Quotas and the largest file
# --------------------------------------------------------------------------


class QuotaTests(unittest.TestCase):
    """
    Users "bytes-ftp"/"bytes-sftp" (3 MiB each), "files-ftp"/"files-sftp"
    (2 files each) and "size-ftp"/"size-sftp" (largest file 1.5 MiB), each
    in its own home of one bucket.
    """

    MAX_SIZE = MiB + MiB // 2

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        users = {}
        for proto in ("ftp", "sftp"):
            for name, rules in (
                ("bytes", {"quota_bytes": 3 * MiB}),
                ("files", {"quota_files": 2}),
                ("size", {"max_file_size": self.MAX_SIZE}),
            ):
                users[f"{name}-{proto}"] = user(
                    f"{name}-{proto}", home=f"{name}-{proto}", **rules
                )
        self.gw = yield start(self, "cos", part_size=MiB, users=users)

    def keys(self, prefix: str) -> list[str]:
        return [k[len(prefix) + 1 :] for k in self.gw.inspector.keys(prefix + "/")]

    @defer.inlineCallbacks
    def assertNoPendingUploads(self) -> Any:
        # An abort is asynchronous to the reply: allow it a moment.
        done = yield in_thread(
            lambda: _poll(lambda: not self.gw.inspector.pending_uploads(), 10)
        )
        self.assertTrue(done, self.gw.inspector.pending_uploads())
        self.assertEqual(self.gw.inspector.stored_parts(), 0)

    @defer.inlineCallbacks
    def test_bytes_ftp(self) -> Any:
        one, two = random_bytes(2 * MiB), random_bytes(2 * MiB)
        big, fill = random_bytes(2 * MiB + MiB // 2), random_bytes(MiB // 2)

        def run() -> list[str]:
            ftp = ftp_login(self.gw, "bytes-ftp")
            r = [
                ftp_store(ftp, "one.bin", one),
                ftp_store(ftp, "two.bin", two),
            ]
            r.append(str(ftp_nlst(ftp)))
            r.append(reply(ftp.delete, "one.bin"))
            r.append(ftp_store(ftp, "big.bin", big))
            # Exactly up to the quota, then one byte over.
            r.append(ftp_store(ftp, "fill.bin", fill))
            r.append(ftp_store(ftp, "over.bin", b"x"))
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(
            r,
            [
                "226 Transfer complete",
                "552 /two.bin: quota exceeded",
                "['one.bin']",
                "250 File removed",
                "226 Transfer complete",
                "226 Transfer complete",
                f"552 /over.bin: disk quota reached ({3 * MiB} bytes)",
            ],
        )
        self.assertEqual(self.keys("bytes-ftp"), ["big.bin", "fill.bin"])
        self.assertEqual(
            sha256(self.gw.inspector.read("bytes-ftp/big.bin")), sha256(big)
        )
        yield self.assertNoPendingUploads()

    @defer.inlineCallbacks
    def test_bytes_sftp(self) -> Any:
        one, two = random_bytes(2 * MiB), random_bytes(2 * MiB)
        big, fill = random_bytes(2 * MiB + MiB // 2), random_bytes(MiB // 2)

        def run() -> list[Any]:
            with sftp_session(self.gw, "bytes-sftp") as sftp:
                return [
                    sftp_error(sftp_put, sftp, "one.bin", one),
                    sftp_error(sftp_put, sftp, "two.bin", two),
                    sorted(sftp.listdir(".")),
                    sftp_error(sftp.remove, "one.bin"),
                    sftp_error(sftp_put, sftp, "big.bin", big),
                    sftp_error(sftp_put, sftp, "fill.bin", fill),
                    sftp_error(sftp_put, sftp, "over.bin", b"x"),
                    sorted(sftp.listdir(".")),
                ]

        r = yield in_thread(run)
        self.assertIsNone(r[0])
        self.assertEqual(type(r[1]), OSError)
        self.assertEqual(r[1].args, ("/two.bin: quota exceeded",))
        self.assertEqual(r[2], ["one.bin"])
        self.assertEqual(r[3:6], [None, None, None])
        self.assertEqual(type(r[6]), OSError)
        self.assertEqual(
            r[6].args, (f"/over.bin: disk quota reached ({3 * MiB} bytes)",)
        )
        self.assertEqual(r[7], ["big.bin", "fill.bin"])
        self.assertEqual(self.keys("bytes-sftp"), ["big.bin", "fill.bin"])
        self.assertEqual(
            sha256(self.gw.inspector.read("bytes-sftp/big.bin")), sha256(big)
        )
        yield self.assertNoPendingUploads()

    @defer.inlineCallbacks
    def test_files_ftp(self) -> Any:
        def run() -> list[str]:
            ftp = ftp_login(self.gw, "files-ftp")
            r = [
                ftp_store(ftp, "a.txt", b"a"),
                ftp_store(ftp, "b.txt", b"b"),
                ftp_store(ftp, "c.txt", b"c"),
                # Replacing a file adds none.
                ftp_store(ftp, "a.txt", b"A"),
                reply(ftp.delete, "b.txt"),
                ftp_store(ftp, "c.txt", b"c"),
            ]
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(
            r,
            [
                "226 Transfer complete",
                "226 Transfer complete",
                "552 /c.txt: file quota reached (2 files)",
                "226 Transfer complete",
                "250 File removed",
                "226 Transfer complete",
            ],
        )
        self.assertEqual(self.keys("files-ftp"), ["a.txt", "c.txt"])
        self.assertEqual(self.gw.inspector.read("files-ftp/a.txt"), b"A")
        yield self.assertNoPendingUploads()

    @defer.inlineCallbacks
    def test_files_sftp(self) -> Any:
        def run() -> list[Any]:
            with sftp_session(self.gw, "files-sftp") as sftp:
                return [
                    sftp_error(sftp_put, sftp, "a.txt", b"a"),
                    sftp_error(sftp_put, sftp, "b.txt", b"b"),
                    sftp_error(sftp_put, sftp, "c.txt", b"c"),
                    sftp_error(sftp_put, sftp, "a.txt", b"A"),
                    sftp_error(sftp.remove, "b.txt"),
                    sftp_error(sftp_put, sftp, "c.txt", b"c"),
                ]

        r = yield in_thread(run)
        self.assertEqual(r[:2], [None, None])
        self.assertEqual(type(r[2]), OSError)
        self.assertEqual(r[2].args, ("/c.txt: file quota reached (2 files)",))
        self.assertEqual(r[3:], [None, None, None])
        self.assertEqual(self.keys("files-sftp"), ["a.txt", "c.txt"])
        self.assertEqual(self.gw.inspector.read("files-sftp/a.txt"), b"A")
        yield self.assertNoPendingUploads()

    @defer.inlineCallbacks
    def test_max_file_size_ftp(self) -> Any:
        exact = random_bytes(self.MAX_SIZE)

        def run() -> list[str]:
            ftp = ftp_login(self.gw, "size-ftp")
            r = [
                ftp_store(ftp, "over.bin", exact + b"!"),
                ftp_store(ftp, "exact.bin", exact),
            ]
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(r, ["552 /over.bin: file too large", "226 Transfer complete"])
        self.assertEqual(self.keys("size-ftp"), ["exact.bin"])
        self.assertEqual(
            sha256(self.gw.inspector.read("size-ftp/exact.bin")), sha256(exact)
        )
        yield self.assertNoPendingUploads()

    @defer.inlineCallbacks
    def test_max_file_size_sftp(self) -> Any:
        exact = random_bytes(self.MAX_SIZE)

        def run() -> list[Any]:
            with sftp_session(self.gw, "size-sftp") as sftp:
                return [
                    sftp_error(sftp_put, sftp, "over.bin", exact + b"!"),
                    sftp_error(sftp_put, sftp, "exact.bin", exact),
                    sorted(sftp.listdir(".")),
                ]

        r = yield in_thread(run)
        self.assertEqual(type(r[0]), OSError)
        self.assertEqual(r[0].args, ("/over.bin: file too large",))
        self.assertEqual(r[1:], [None, ["exact.bin"]])
        self.assertEqual(self.keys("size-sftp"), ["exact.bin"])
        self.assertEqual(
            sha256(self.gw.inspector.read("size-sftp/exact.bin")), sha256(exact)
        )
        yield self.assertNoPendingUploads()


def _poll(predicate: Callable[[], bool], bound: float) -> bool:
    """Blocking poll (for threads): whether C{predicate} held in time."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --------------------------------------------------------------------------
# 5. Connection limits, sessions, networks
# --------------------------------------------------------------------------


class ConnectionLimitTests(unittest.TestCase):
    def wait_idle(self, gw: Any) -> defer.Deferred:
        """Until the gateway counts no connection and no session."""
        return wait_until(
            lambda: (
                gw.service.limits.total == 0
                and not gw.service.accounts.sessions._sessions
            )
        )

    @defer.inlineCallbacks
    def test_max_connections(self) -> Any:
        """
        max_connections=2, FTP and SFTP together: the third connection gets
        421 (FTP) or is disconnected (SSH); a closed one frees its place.
        """
        gw = yield start(
            self, "local", users={"alice": user("alice")}, max_connections=2
        )

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            first = ftp_login(gw, "alice")
            with sftp_session(gw, "alice") as sftp:
                r["third-ftp"], _ = connect_reply(gw)
                r["third-ssh"] = ssh_attempt(gw, "alice")
                r["sftp-works"] = sftp.listdir(".")
            first.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(
            r["third-ftp"], "421 Too many connections (2), try again later"
        )
        self.assertFalse(r["third-ssh"]["ok"])
        self.assertEqual(
            r["third-ssh"]["disconnect"],
            (
                DISCONNECT_TOO_MANY_CONNECTIONS,
                "too many connections (2), try again later",
            ),
        )
        self.assertEqual(r["sftp-works"], [])
        yield self.wait_idle(gw)

        def again() -> tuple[str, dict[str, Any]]:
            one, ftp = login_reply(gw, "alice")
            other = ssh_attempt(gw, "alice")
            assert ftp is not None
            ftp.quit()
            return one, other

        ftp_again, ssh_again = yield in_thread(again)
        self.assertEqual(ftp_again, "230 Login successful")
        self.assertTrue(ssh_again["ok"], ssh_again)

    @defer.inlineCallbacks
    def test_max_connections_per_ip(self) -> Any:
        """
        max_connections_per_ip=1: a second connection from 127.0.0.1 (FTP
        or SSH) is refused while 127.0.0.2 still gets in, once.
        """
        gw = yield start(
            self, "local", users={"alice": user("alice")}, max_connections_per_ip=1
        )

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            here = ftp_login(gw, "alice", HERE)
            r["ftp-here"], _ = connect_reply(gw, HERE)
            r["ssh-here"] = ssh_attempt(gw, "alice", HERE)
            with sftp_session(gw, "alice", OTHER) as sftp:
                r["sftp-other"] = sftp.listdir(".")
                r["ftp-other"], _ = connect_reply(gw, OTHER)
                r["ssh-other"] = ssh_attempt(gw, "alice", OTHER)
            here.quit()
            return r

        r = yield in_thread(run)
        refusal = "too many connections from your address (1)"
        self.assertEqual(r["ftp-here"], "421 T" + refusal[1:])
        self.assertEqual(r["ftp-other"], "421 T" + refusal[1:])
        for key in ("ssh-here", "ssh-other"):
            self.assertFalse(r[key]["ok"], key)
            self.assertEqual(
                r[key]["disconnect"], (DISCONNECT_TOO_MANY_CONNECTIONS, refusal), key
            )
        self.assertEqual(r["sftp-other"], [])
        yield self.wait_idle(gw)

        def again() -> tuple[str, dict[str, Any]]:
            line, ftp = login_reply(gw, "alice", HERE)
            other = ssh_attempt(gw, "alice", HERE)
            if ftp is not None:
                ftp.quit()
            return line, other

        ftp_again, ssh_again = yield in_thread(again)
        self.assertEqual(ftp_again, "230 Login successful")
        self.assertEqual(
            ssh_again["disconnect"], (DISCONNECT_TOO_MANY_CONNECTIONS, refusal)
        )

    @defer.inlineCallbacks
    def test_max_sessions(self) -> Any:
        """
        alice may hold one session, FTP and SFTP together: a second login
        is refused (FTP 421; SSH auth fails) until the first logs out.
        """
        gw = yield start(self, "local", users={"alice": user("alice", max_sessions=1)})

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            first = ftp_login(gw, "alice")
            r["ftp-second"], _ = login_reply(gw, "alice")
            r["ssh-second"] = ssh_attempt(gw, "alice")
            first.quit()
            return r

        r = yield in_thread(run)
        refusal = "too many sessions for alice (1); try again later"
        self.assertEqual(r["ftp-second"], f"421 {refusal}")
        self.assertFalse(r["ssh-second"]["ok"])
        self.assertEqual(r["ssh-second"]["error"], "AuthenticationException")
        yield self.wait_idle(gw)

        def sftp_first() -> dict[str, Any]:
            r: dict[str, Any] = {}
            with sftp_session(gw, "alice") as sftp:
                r["ftp-second"], _ = login_reply(gw, "alice")
                r["ssh-second"] = ssh_attempt(gw, "alice")
                r["listdir"] = sftp.listdir(".")
            return r

        r = yield in_thread(sftp_first)
        self.assertEqual(r["ftp-second"], f"421 {refusal}")
        self.assertEqual(r["ssh-second"]["error"], "AuthenticationException")
        self.assertEqual(r["listdir"], [])
        yield self.wait_idle(gw)

        def after() -> tuple[str, dict[str, Any]]:
            one, ftp = login_reply(gw, "alice")
            assert ftp is not None
            ftp.quit()
            _poll(lambda: not gw.service.accounts.sessions._sessions, 10)
            return one, ssh_attempt(gw, "alice")

        ftp_after, ssh_after = yield in_thread(after)
        self.assertEqual(ftp_after, "230 Login successful")
        self.assertTrue(ssh_after["ok"], ssh_after)

    @defer.inlineCallbacks
    def test_user_denied_network(self) -> Any:
        """
        alice may not log in from 127.0.0.2 (FTP 421 at PASS; SSH auth
        fails) but may from 127.0.0.1; bob, with no rule, from both.
        """
        gw = yield start(
            self,
            "local",
            users={
                "alice": user("alice", denied_networks=(f"{OTHER}/32",)),
                "bob": user("bob"),
            },
        )

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            for name in ("alice", "bob"):
                for source in (HERE, OTHER):
                    line, ftp = login_reply(gw, name, source)
                    if ftp is not None:
                        ftp.quit()
                    r[f"ftp-{name}-{source}"] = line
                    r[f"ssh-{name}-{source}"] = ssh_attempt(gw, name, source)
            return r

        r = yield in_thread(run)
        self.assertEqual(
            r[f"ftp-alice-{OTHER}"],
            "421 user alice may not log in from this address",
        )
        self.assertFalse(r[f"ssh-alice-{OTHER}"]["ok"], r[f"ssh-alice-{OTHER}"])
        self.assertEqual(r[f"ssh-alice-{OTHER}"]["error"], "AuthenticationException")
        for key in (f"alice-{HERE}", f"bob-{HERE}", f"bob-{OTHER}"):
            self.assertEqual(r[f"ftp-{key}"], "230 Login successful", key)
            self.assertTrue(r[f"ssh-{key}"]["ok"], (key, r[f"ssh-{key}"]))

    @defer.inlineCallbacks
    def test_server_allowed_networks(self) -> Any:
        """
        Server allowed_networks=127.0.0.1/32: a connection from 127.0.0.2
        gets 421 at once (FTP) or is disconnected (SSH) before any login.
        """
        gw = yield start(
            self,
            "local",
            users={"alice": user("alice")},
            allowed_networks=(f"{HERE}/32",),
        )

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            start = time.monotonic()
            r["ftp-other"], _ = connect_reply(gw, OTHER)
            r["ftp-seconds"] = time.monotonic() - start
            r["ssh-other"] = ssh_attempt(gw, "alice", OTHER)
            line, ftp = login_reply(gw, "alice", HERE)
            assert ftp is not None
            ftp.quit()
            r["ftp-here"] = line
            r["ssh-here"] = ssh_attempt(gw, "alice", HERE)
            return r

        r = yield in_thread(run)
        self.assertEqual(r["ftp-other"], "421 Your address is not allowed")
        self.assertLess(r["ftp-seconds"], 2)
        self.assertFalse(r["ssh-other"]["ok"])
        self.assertEqual(
            r["ssh-other"]["disconnect"],
            (DISCONNECT_TOO_MANY_CONNECTIONS, "your address is not allowed"),
        )
        self.assertEqual(r["ftp-here"], "230 Login successful")
        self.assertTrue(r["ssh-here"]["ok"], r["ssh-here"])


# --------------------------------------------------------------------------
# 6. Timeouts
# --------------------------------------------------------------------------


def _read_line_until_closed(sock: socket.socket, bound: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed."""
    start = time.monotonic()
    sock.settimeout(bound)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data, time.monotonic() - start


#: The FTP login and idle timeouts of TimeoutTests' FTP tests, in seconds:
#: short, since the deadlines themselves are timed on a clock in
#: tests/test_ftp_protocol.py (TimeoutTests); these prove them end to end.
FTP_TIMEOUT = 0.6


class TimeoutTests(unittest.TestCase):
    """
    login_timeout=2 and idle_timeout=2 on both protocols (FTP_TIMEOUT on
    FTP's factory for the FTP tests).
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start(
            self,
            "local",
            users={"alice": user("alice")},
            login_timeout=2,
            idle_timeout=2,
        )

    def short_ftp_timeouts(self) -> None:
        for listener in self.gw.service.ftp.listeners:
            listener.factory.login_timeout = FTP_TIMEOUT
            listener.factory.timeOut = FTP_TIMEOUT

    @defer.inlineCallbacks
    def test_ftp_idle(self) -> Any:
        self.short_ftp_timeouts()

        def run() -> tuple[bytes, float]:
            ftp = ftp_login(self.gw, "alice")
            ftp.voidcmd("NOOP")
            try:
                return _read_line_until_closed(ftp.sock, 8)
            finally:
                ftp.close()

        data, seconds = yield in_thread(run)
        self.assertEqual(data, b"421 Idle timeout: closing the connection\r\n")
        self.assertTrue(FTP_TIMEOUT - 0.5 <= seconds <= FTP_TIMEOUT + 2, seconds)

    @defer.inlineCallbacks
    def test_ftp_login(self) -> Any:
        self.short_ftp_timeouts()

        def run() -> tuple[str, bytes, float]:
            ftp = ftp_connect(self.gw)
            try:
                return (ftp.getwelcome(), *_read_line_until_closed(ftp.sock, 8))
            finally:
                ftp.close()

        welcome, data, seconds = yield in_thread(run)
        self.assertTrue(welcome.startswith("220"), welcome)
        self.assertEqual(data, b"421 Login timeout: closing the connection\r\n")
        self.assertTrue(FTP_TIMEOUT - 0.5 <= seconds <= FTP_TIMEOUT + 2, seconds)

    @defer.inlineCallbacks
    def test_ssh_login(self) -> Any:
        def run() -> tuple[bool, float, Any]:
            client = SSHClient(self.gw).start()
            start = time.monotonic()
            try:
                closed = client.wait_closed(8)
                return closed, time.monotonic() - start, client.disconnect_reason()
            finally:
                client.close()

        closed, seconds, reason = yield in_thread(run)
        self.assertTrue(closed)
        self.assertTrue(seconds <= 4, seconds)
        self.assertEqual(reason, (DISCONNECT_BY_APPLICATION, "login timeout"))

    @defer.inlineCallbacks
    def test_sftp_idle(self) -> Any:
        def run() -> tuple[list[str], bool, float, Any]:
            client = SSHClient(self.gw).start()
            try:
                listing = client.login("alice").listdir(".")
                start = time.monotonic()
                closed = client.wait_closed(8)
                return (
                    listing,
                    closed,
                    time.monotonic() - start,
                    client.disconnect_reason(),
                )
            finally:
                client.close()

        listing, closed, seconds, reason = yield in_thread(run)
        self.assertEqual(listing, [])
        self.assertTrue(closed)
        self.assertTrue(1.5 <= seconds <= 4, seconds)
        self.assertEqual(reason, (DISCONNECT_BY_APPLICATION, "idle timeout"))


# --------------------------------------------------------------------------
# 7. Bandwidth
# --------------------------------------------------------------------------

RATE = MiB
SIZE = 5 * MiB // 2  # 2.5 s at RATE


class BandwidthTests(unittest.TestCase):
    """
    "slow" uploads and downloads at RATE bytes/s (within 20%), over FTP and
    SFTP; "fast", unlimited, in the same gateway is much faster.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start(
            self,
            "local",
            users={
                "slow": user("slow", upload_rate=RATE, download_rate=RATE),
                "fast": user("fast"),
            },
        )
        self.data = random_bytes(SIZE)

    def assertRates(self, slow: dict[str, float], fast: dict[str, float]) -> None:
        """
        Every "slow" transfer within 20% of RATE, every "fast" one at least
        three times quicker; all measurements in the message.
        """
        rates = {what: round(SIZE / seconds) for what, seconds in slow.items()}
        fast_rates = {what: round(SIZE / seconds) for what, seconds in fast.items()}
        message = f"rate {RATE} B/s; slow {rates}; fast {fast_rates}"
        self.assertEqual(
            [w for w, r in rates.items() if not 0.8 * RATE <= r <= 1.2 * RATE],
            [],
            message,
        )
        self.assertEqual(
            [w for w, r in fast_rates.items() if r < 3 * rates[w]], [], message
        )

    @defer.inlineCallbacks
    def test_ftp(self) -> Any:
        def run(name: str) -> tuple[dict[str, float], str, bytes]:
            ftp = ftp_login(self.gw, name)
            start = time.monotonic()
            stored = ftp_store(ftp, f"{name}.bin", self.data)
            up = time.monotonic() - start
            start = time.monotonic()
            back = ftp_retrieve(ftp, f"{name}.bin")
            down = time.monotonic() - start
            ftp.quit()
            return {"upload": up, "download": down}, stored, back

        slow, stored, back = yield in_thread(run, "slow")
        self.assertEqual(stored, "226 Transfer complete")
        self.assertEqual(sha256(back), sha256(self.data))
        self.assertEqual(sha256(self.gw.inspector.read("slow.bin")), sha256(self.data))
        fast, stored, back = yield in_thread(run, "fast")
        self.assertEqual(stored, "226 Transfer complete")
        self.assertEqual(sha256(back), sha256(self.data))
        self.assertRates(slow, fast)

    @defer.inlineCallbacks
    def test_sftp(self) -> Any:
        def run(name: str) -> tuple[dict[str, float], bytes]:
            with sftp_session(self.gw, name) as sftp:
                start = time.monotonic()
                sftp_put(sftp, f"{name}.bin", self.data)
                up = time.monotonic() - start
                start = time.monotonic()
                back = sftp_get(sftp, f"{name}.bin")
                down = time.monotonic() - start
            return {"upload": up, "download": down}, back

        slow, back = yield in_thread(run, "slow")
        self.assertEqual(sha256(back), sha256(self.data))
        self.assertEqual(sha256(self.gw.inspector.read("slow.bin")), sha256(self.data))
        fast, back = yield in_thread(run, "fast")
        self.assertEqual(sha256(back), sha256(self.data))
        self.assertRates(slow, fast)


# --------------------------------------------------------------------------
# 8. The login defender
# --------------------------------------------------------------------------

DELAY = 0.2
MAX_FAILURES = 4
#: The delays of the failures before the ban: 0.2, 0.4, 0.8, 1.6 s.
DELAYS = [DELAY * 2**n for n in range(MAX_FAILURES)]


class DefenderTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start(
            self,
            "local",
            users={"alice": user("alice")},
            login_failure_delay=DELAY,
            login_max_failures=MAX_FAILURES,
            login_ban_time=60,
            login_failure_window=60,
        )

    def assertGrowing(self, seconds: list[float]) -> None:
        for took, delay in zip(seconds, DELAYS, strict=True):
            self.assertTrue(delay * 0.9 <= took <= delay + 0.5, (seconds, DELAYS))
        self.assertEqual(seconds, sorted(seconds))

    def good_logins(self, source: str) -> dict[str, Any]:
        """A right login over FTP and SFTP from C{source}, timed."""
        r: dict[str, Any] = {}
        start = time.monotonic()
        r["ftp"], ftp = login_reply(self.gw, "alice", source)
        r["ftp-seconds"] = time.monotonic() - start
        if ftp is not None:
            ftp.quit()
        r["ssh"] = ssh_attempt(self.gw, "alice", source)
        client = SSHClient(self.gw, source).start()
        try:
            start = time.monotonic()
            client.transport.auth_password("alice", PASSWORD, fallback=False)
            r["ssh-seconds"] = time.monotonic() - start
        except paramiko.SSHException as e:
            r["ssh-seconds"] = type(e).__name__
        finally:
            client.close()
        return r

    def assertOpen(self, r: dict[str, Any]) -> None:
        self.assertEqual(r["ftp"], "230 Login successful")
        self.assertLess(r["ftp-seconds"], 0.5)
        self.assertTrue(r["ssh"]["ok"], r["ssh"])
        self.assertLess(r["ssh-seconds"], 0.5)

    def assertBanReply(self, line: str) -> None:
        """421 saying how long the 60 s ban has left."""
        match = re.fullmatch(
            r"421 Too many failed logins from this address; "
            r"try again in (\d+) seconds",
            line,
        )
        self.assertIsNotNone(match, line)
        assert match is not None
        self.assertTrue(50 <= int(match.group(1)) <= 60, line)

    def assertBanned(self, r: dict[str, Any]) -> None:
        """Both protocols say the same: the defender's own words."""
        self.assertBanReply(r["ftp"])
        self.assertFalse(r["ssh"]["ok"])
        code, text = r["ssh"]["disconnect"]
        self.assertEqual(code, DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE)
        self.assertBanReply(f"421 {text}")

    @defer.inlineCallbacks
    def test_ftp_failures_ban_everywhere(self) -> Any:
        """
        Wrong passwords over FTP from 127.0.0.2: 530 after 0.2, 0.4, 0.8,
        1.6 s, then the address is banned on FTP and SFTP alike, even with
        the right password; 127.0.0.1 logs in at once meanwhile.
        """

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {"replies": [], "seconds": []}
            ftp = ftp_connect(self.gw, OTHER)
            for _ in range(MAX_FAILURES):
                start = time.monotonic()
                r["replies"].append(reply(ftp.login, "alice", "wrong"))
                r["seconds"].append(time.monotonic() - start)
            # Same connection, right password: banned.
            r["same"] = reply(ftp.login, "alice", PASSWORD)
            ftp.close()
            r["other"] = self.good_logins(OTHER)
            r["here"] = self.good_logins(HERE)
            return r

        r = yield in_thread(run)
        self.assertEqual(r["replies"], ["530 Login incorrect"] * MAX_FAILURES)
        self.assertGrowing(r["seconds"])
        self.assertBanReply(r["same"])
        self.assertBanned(r["other"])
        self.assertOpen(r["here"])

    @defer.inlineCallbacks
    def test_sftp_failures_ban_everywhere(self) -> Any:
        """
        Wrong passwords over SSH from 127.0.0.3: growing delays, then the
        address is banned on SFTP and FTP alike; 127.0.0.1 is not slowed.
        """

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {"errors": [], "seconds": []}
            client = SSHClient(self.gw, THIRD).start()
            try:
                for _ in range(MAX_FAILURES):
                    start = time.monotonic()
                    try:
                        client.transport.auth_password("alice", "wrong", fallback=False)
                        r["errors"].append(None)
                    except paramiko.SSHException as e:
                        r["errors"].append(type(e).__name__)
                    r["seconds"].append(time.monotonic() - start)
            finally:
                client.close()
            r["other"] = self.good_logins(THIRD)
            r["here"] = self.good_logins(HERE)
            return r

        r = yield in_thread(run)
        self.assertEqual(r["errors"], ["AuthenticationException"] * MAX_FAILURES)
        self.assertGrowing(r["seconds"])
        self.assertBanned(r["other"])
        self.assertOpen(r["here"])
