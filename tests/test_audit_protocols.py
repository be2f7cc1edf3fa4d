"""
The audit events of each protocol, caused by real clients over real sockets
on 127.0.0.1: ftplib (plain, explicit FTP_TLS, implicit FTPS), lftp over
FTPS, paramiko and OpenSSH's sftp.  Each event must carry the session of
the connection's C{session-open}, the client's address and port as the
client sees its own socket, the user, the path, the bytes, the outcome and
the status its client was told (an FTP reply code, an SFTP status name).

Logins: one C{login} or C{login-failed} per attempt, with why; an SSH
C{none} probe and a public-key query are no attempt.  Kicks through the
session table end the session as the protocol ends one (FTP 421, SSH
DISCONNECT), and an upload in progress leaves no object and no multipart
upload.
"""

from __future__ import annotations

import ftplib
import io
import logging
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import paramiko
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from cosgw.audit import AUDIT_NAMESPACE, audit_fields
from cosgw.frontends.ftp.tls import generate_self_signed
from tests.harness import (
    PASSWORD,
    MiB,
    in_thread,
    plain_user,
    random_bytes,
    start_gateway,
)
from tests.logevents import LogEvents
from tests.sshtesting import password_env
from tests.test_ftp_resume import interrupted_stor

#: Bound on any one wait or client run.
BOUND = 30.0


class AuditLog:
    """The audit events of the test, as an operator's observer sees them."""

    def __init__(self, case: unittest.TestCase) -> None:
        self._log = LogEvents(case, AUDIT_NAMESPACE)

    def events(self, *names: str, session: Optional[str] = None) -> list[dict]:
        found = [dict(audit_fields(e) or {}) for e in self._log.events]
        return [
            e
            for e in found
            if (not names or e["event"] in names)
            and (session is None or e["session"] == session)
        ]

    def session_at(self, port: int) -> str:
        """The id of the session that the client at C{port} opened."""
        [opened] = [e for e in self.events("session-open") if e["client_port"] == port]
        return str(opened["session"])


def until(predicate: Callable[[], Any], what: str, bound: float = BOUND) -> Any:
    """Fire once C{predicate()} holds, polled on the reactor; fail at the bound."""

    @defer.inlineCallbacks
    def poll() -> Any:
        deadline = reactor.seconds() + bound
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            yield deferLater(reactor, 0.02, lambda: None)

    return poll()


def reply(f: Callable[..., Any], *args: Any) -> str:
    """The final reply of an ftplib call, error or not."""
    try:
        return str(f(*args))
    except ftplib.Error as e:
        return str(e)


class ImplicitFTPS(ftplib.FTP_TLS):
    """FTP_TLS over implicit FTPS: TLS from the first byte."""

    def connect(self, host: str = "", port: int = 0, *args: Any, **kw: Any) -> str:
        self.host, self.port = host, port
        plain = socket.create_connection((host, port), BOUND)
        self.sock = self.context.wrap_socket(plain, server_hostname=host)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


class GatewayCase(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def start(self, **overrides: Any) -> Any:
        self.gw = yield start_gateway(self, "local", **overrides)
        self.audit = AuditLog(self)
        self.addCleanup(
            until, lambda: self.gw.service.limits.total == 0, "connections closed"
        )
        self.work = Path(tempfile.mkdtemp(prefix="cosgw-audit-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        return self.gw

    def check(self, events: list[dict], keys: str, expected: list[tuple]) -> None:
        """C{events}' fields C{keys} (names, space-separated), in order."""
        names = keys.split()
        got = [tuple(e.get(k) for k in names) for e in events]
        self.assertEqual(got, expected, events)

    @defer.inlineCallbacks
    def closed_session(self, port: int) -> Any:
        """
        Once a session has closed: the events of the client at C{port},
        checked by L{common}.
        """
        yield until(lambda: self.audit.events("session-close"), "session-close")
        session = self.audit.session_at(port)
        self.common(session, port)
        return self.audit.events(session=session)

    def common(self, session: str, port: int, user: str = "alice") -> None:
        """Every event of C{session}: its id, the client's address, the user."""
        events = self.audit.events(session=session)
        self.assertTrue(events)
        for e in events:
            where = (e["client_ip"], e["client_port"])
            self.assertEqual(where, ("127.0.0.1", port), e)
            if e["event"] not in ("session-open",):
                self.assertEqual(e["user"], user, e)


class FTPActionTests(GatewayCase):
    def test_every_ftp_action(self) -> Any:
        return self.every_action(tls=False)

    def test_every_ftps_action(self) -> Any:
        """The same over FTP_TLS with private data connections."""
        return self.every_action(tls=True)

    @defer.inlineCallbacks
    def every_action(self, tls: bool) -> Any:
        cert, key = generate_self_signed(self.mktemp_dir())
        gw = yield self.start(part_size=MiB, tls_certificate=cert, tls_key=key)
        small, big = random_bytes(5000), random_bytes(3 * MiB + 777)

        def run() -> tuple[int, int]:
            context = ssl.create_default_context(cafile=str(cert))
            ftp = ftplib.FTP_TLS(context=context) if tls else ftplib.FTP()
            ftp.connect(gw.host, gw.port, timeout=BOUND)
            port = ftp.sock.getsockname()[1]
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.auth()
                ftp.login("alice", PASSWORD)
                ftp.prot_p()
            else:
                ftp.login("alice", PASSWORD)
            ftp.voidcmd("TYPE I")
            ftp.storbinary("STOR a.bin", io.BytesIO(small))
            ftp.retrbinary("RETR a.bin", io.BytesIO().write)
            ftp.mkd("d")
            ftp.rename("a.bin", "d/b.bin")
            ftp.sendcmd("MFMT 20200102030405 d/b.bin")
            ftp.nlst("d")
            assert reply(ftp.delete, "missing.bin").startswith("550")
            ftp.delete("d/b.bin")
            ftp.rmd("d")
            interrupted_stor(gw, ftp, "big.bin", big)
            kept = ftp.size("big.bin")
            assert kept is not None
            ftp.storbinary("STOR big.bin", io.BytesIO(big[kept:]), rest=kept)
            ftp.quit()
            return port, kept

        port, kept = yield in_thread(run)
        events = yield self.closed_session(port)
        self.check(
            events,
            "event path status outcome",
            [
                ("session-open", None, "220", "ok"),
                ("login", None, "230", "ok"),
                ("upload", "/a.bin", "226", "ok"),
                ("download", "/a.bin", "226", "ok"),
                ("mkdir", "/d", "257", "ok"),
                ("rename", "/a.bin", "250", "ok"),
                ("mtime", "/d/b.bin", "213", "ok"),
                ("list", "/d", "226", "ok"),
                ("delete", "/missing.bin", "550", "error"),
                ("delete", "/d/b.bin", "250", "ok"),
                ("rmdir", "/d", "250", "ok"),
                ("abort", "/big.bin", "426", "error"),
                ("resume", "/big.bin", "226", "ok"),
                ("upload", "/big.bin", "226", "ok"),
                ("session-close", None, "221", "ok"),
            ],
        )
        moved = [(e["event"], e["bytes"], e["offset"]) for e in events if "bytes" in e]
        self.assertEqual(moved[:2], [("upload", 5000, 0), ("download", 5000, 0)])
        self.assertEqual(moved[3], ("upload", len(big) - kept, kept))
        self.assertEqual([e.get("path_to") for e in events][5], "/d/b.bin")
        self.assertEqual([e.get("offset") for e in events][12], kept)
        self.assertEqual(events[-1]["reason"], "client quit")
        protocols = [e["protocol"] for e in events]
        self.assertEqual(protocols[0], "ftp")
        self.assertEqual(set(protocols[1:]), {"ftps" if tls else "ftp"})
        self.assertEqual(gw.inspector.read("big.bin"), big)

    @defer.inlineCallbacks
    def test_ftps_explicit_and_implicit(self) -> Any:
        """
        FTP_TLS: the session is C{ftp} until AUTH TLS, C{ftps} after;
        implicit FTPS is C{ftps} from its first event.
        """
        cert, key = generate_self_signed(self.mktemp_dir())
        gw = yield self.start(
            tls_certificate=cert,
            tls_key=key,
            ftps_listen=("tcp:0:interface=127.0.0.1",),
        )
        listener = gw.service.ftp.implicit_listeners[0]
        implicit_port = (yield listener.listening).getHost().port
        context = ssl.create_default_context(cafile=str(cert))

        def run(cls: type[ftplib.FTP_TLS], port: int) -> int:
            ftp = cls(context=context, timeout=BOUND)
            ftp.connect(gw.host, port)
            client_port = int(ftp.sock.getsockname()[1])
            if cls is ftplib.FTP_TLS:
                ftp.auth()
            ftp.login("alice", PASSWORD)
            ftp.prot_p()
            ftp.storbinary("STOR s.bin", io.BytesIO(b"secret" * 100))
            ftp.nlst()
            ftp.quit()
            return client_port

        for cls, port in ((ftplib.FTP_TLS, gw.port), (ImplicitFTPS, implicit_port)):
            client_port = yield in_thread(run, cls, port)
            session = self.audit.session_at(client_port)
            yield until(
                lambda s=session: self.audit.events("session-close", session=s),
                "session-close",
            )
            self.common(session, client_port)
            opened = "ftp" if cls is ftplib.FTP_TLS else "ftps"
            self.check(
                self.audit.events(session=session),
                "event protocol path status",
                [
                    ("session-open", opened, None, "220"),
                    ("login", "ftps", None, "230"),
                    ("upload", "ftps", "/s.bin", "226"),
                    ("list", "ftps", "/", "226"),
                    ("session-close", "ftps", None, "221"),
                ],
            )

    @defer.inlineCallbacks
    def test_lftp_over_ftps(self) -> Any:
        cert, key = generate_self_signed(self.mktemp_dir())
        gw = yield self.start(tls_certificate=cert, tls_key=key)
        (self.work / "up.bin").write_bytes(b"lftp" * 1000)
        script = "; ".join(
            [
                "set cmd:fail-exit yes",
                "set net:max-retries 1",
                "set ftp:ssl-force yes",
                "set ftp:ssl-protect-data yes",
                f'set ssl:ca-file "{cert}"',
                f"open -u alice,{PASSWORD} ftp://127.0.0.1:{gw.port}",
                "put up.bin -o a.bin",
                "get a.bin -o back.bin",
                "cls",
                "bye",
            ]
        )
        done = yield in_thread(
            subprocess.run,
            ["lftp", "-c", script],
            cwd=self.work,
            capture_output=True,
            timeout=BOUND,
            env={**os.environ, "HOME": str(self.work)},
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual((self.work / "back.bin").read_bytes(), b"lftp" * 1000)
        yield until(lambda: self.audit.events("session-close"), "session-close")
        [opened] = self.audit.events("session-open")
        session = opened["session"]
        self.common(session, opened["client_port"])
        got = [
            (e["event"], e["protocol"], e.get("path"), e.get("bytes"), e["status"])
            for e in self.audit.events("login", "upload", "download", session=session)
        ]
        self.assertEqual(
            got,
            [
                ("login", "ftps", None, None, "230"),
                ("upload", "ftps", "/a.bin", 4000, "226"),
                ("download", "ftps", "/a.bin", 4000, "226"),
            ],
        )
        self.assertEqual(
            [e["outcome"] for e in self.audit.events("list", session=session)], ["ok"]
        )

    def mktemp_dir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="cosgw-ca-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path


def sftp_client(port: int, user: str = "alice") -> paramiko.Transport:
    """A paramiko transport logged in as C{user} with the test password."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
    t = paramiko.Transport(sock)
    t.banner_timeout = t.auth_timeout = BOUND
    t.connect(username=user, password=PASSWORD)
    return t


class SFTPActionTests(GatewayCase):
    @defer.inlineCallbacks
    def test_every_paramiko_action(self) -> Any:
        gw = yield self.start()
        small = random_bytes(7000)

        def run() -> int:
            t = sftp_client(gw.sftp_port)
            port = t.sock.getsockname()[1]
            s = paramiko.SFTPClient.from_transport(t)
            assert s is not None
            s.putfo(io.BytesIO(small), "a.bin")
            s.getfo("a.bin", io.BytesIO())
            s.mkdir("d")
            s.rename("a.bin", "d/b.bin")
            s.utime("d/b.bin", (1577934245, 1577934245))
            s.listdir("d")
            try:
                s.remove("missing.bin")
            except OSError:
                pass
            s.remove("d/b.bin")
            s.rmdir("d")
            cut = s.open("c.bin", "wb")
            cut.write(b"c" * 70000)
            cut.flush()
            t.close()  # without closing c.bin: the session is lost under it
            return port

        port = yield in_thread(run)
        events = yield self.closed_session(port)
        self.check(
            events,
            "event path status outcome",
            [
                ("session-open", None, "FX_OK", "ok"),
                ("login", None, "FX_OK", "ok"),
                ("upload", "/a.bin", "FX_OK", "ok"),
                ("download", "/a.bin", "FX_OK", "ok"),
                ("mkdir", "/d", "FX_OK", "ok"),
                ("rename", "/a.bin", "FX_OK", "ok"),
                ("mtime", "/d/b.bin", "FX_OK", "ok"),
                ("list", "/d", "FX_OK", "ok"),
                ("delete", "/missing.bin", "FX_NO_SUCH_FILE", "error"),
                ("delete", "/d/b.bin", "FX_OK", "ok"),
                ("rmdir", "/d", "FX_OK", "ok"),
                ("abort", "/c.bin", "FX_FAILURE", "error"),
                ("session-close", None, "FX_OK", "ok"),
            ],
        )
        moved = [(e["event"], e["bytes"]) for e in events if "bytes" in e]
        self.assertEqual(
            moved, [("upload", 7000), ("download", 7000), ("abort", 70000)]
        )
        self.assertEqual(events[5]["path_to"], "/d/b.bin")
        self.assertEqual(events[-2]["error"], "the SFTP session was lost")
        self.assertNotIn("c.bin", gw.inspector.keys())

    @defer.inlineCallbacks
    def test_openssh_sftp(self) -> Any:
        """
        OpenSSH's sftp: its public-key query for a key the user does not
        have is no login attempt; its password login is one; its logout is
        the session's end, 'client quit', not an error.
        """
        gw = yield self.start()
        key = self.work / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
        )
        (self.work / "up.bin").write_bytes(b"openssh" * 1000)
        batch = self.work / "batch"
        batch.write_text(
            "put up.bin a.bin\nget a.bin back.bin\nls\nmkdir d\n"
            "rename a.bin d/b.bin\nrm d/b.bin\nrmdir d\n"
        )
        options = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no"]
        options += ["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=no"]
        options += ["-o", "IdentitiesOnly=yes", "-i", str(key)]
        options += ["-o", "PreferredAuthentications=publickey,password"]
        done = yield in_thread(
            subprocess.run,
            ["sftp", *options, "-P", str(gw.sftp_port), "-b", str(batch)]
            + ["alice@127.0.0.1"],
            cwd=self.work,
            capture_output=True,
            timeout=BOUND,
            env=password_env(self.work, PASSWORD),
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        yield until(lambda: self.audit.events("session-close"), "session-close")
        [opened] = self.audit.events("session-open")
        session = opened["session"]
        self.common(session, opened["client_port"])
        got = [
            (e["event"], e.get("path"), e.get("bytes"), e["outcome"])
            for e in self.audit.events(session=session)
            if e["event"] not in ("session-open", "list")
        ]
        self.assertEqual(
            got,
            [
                ("login", None, None, "ok"),
                ("upload", "/a.bin", 7000, "ok"),
                ("download", "/a.bin", 7000, "ok"),
                ("mkdir", "/d", None, "ok"),
                ("rename", "/a.bin", None, "ok"),
                ("delete", "/d/b.bin", None, "ok"),
                ("rmdir", "/d", None, "ok"),
                ("session-close", None, None, "ok"),
            ],
        )
        [closed] = self.audit.events("session-close")
        self.assertEqual(closed["reason"], "client quit (disconnected by user)")
        self.assertEqual(self.audit.events("login-failed"), [])


class LoginTests(GatewayCase):
    """One event per login attempt, with why; probes and queries are none."""

    users = {
        "alice": plain_user("alice"),
        "walled": plain_user("walled", denied_networks=("127.0.0.0/8",)),
    }

    def logins(self, port: int) -> list[tuple[str, str, str, str]]:
        session = self.audit.session_at(port)
        return [
            (e["event"], e["user"], e.get("error", ""), e["status"])
            for e in self.audit.events("login", "login-failed", session=session)
        ]

    @defer.inlineCallbacks
    def test_ftp(self) -> Any:
        gw = yield self.start(users=self.users)

        def run() -> tuple[int, int, list[str]]:
            replies = []
            ftp = ftplib.FTP(timeout=BOUND)
            ftp.connect(gw.host, gw.port)
            first = ftp.sock.getsockname()[1]
            replies.append(reply(ftp.login, "alice", "not-the-password"))
            replies.append(reply(ftp.login, "mallory", PASSWORD))
            replies.append(reply(ftp.login, "alice", PASSWORD))
            ftp.quit()
            walled = ftplib.FTP(timeout=BOUND)
            walled.connect(gw.host, gw.port)
            second = walled.sock.getsockname()[1]
            replies.append(reply(walled.login, "walled", PASSWORD))
            walled.close()
            return first, second, replies

        first, second, replies = yield in_thread(run)
        self.assertEqual(
            [r[:3] for r in replies], ["530", "530", "230", "421"], replies
        )
        refusal = "user walled may not log in from this address"
        self.assertEqual(
            self.logins(first),
            [
                ("login-failed", "alice", "wrong password", "530"),
                ("login-failed", "mallory", "unknown user", "530"),
                ("login", "alice", "", "230"),
            ],
        )
        self.assertEqual(
            self.logins(second), [("login-failed", "walled", refusal, "421")]
        )
        yield until(lambda: len(self.audit.events("session-close")) == 2, "closes")
        [closed] = self.audit.events(
            "session-close", session=self.audit.session_at(second)
        )
        self.assertEqual(closed["reason"], f"login refused: {refusal}")

    @defer.inlineCallbacks
    def test_ftp_ban(self) -> Any:
        """
        The failure that bans, and the attempt refused by the ban, are one
        event each; a connection refused at connect is no session.
        """
        gw = yield self.start(login_max_failures=2)

        def run() -> tuple[int, list[str]]:
            ftp = ftplib.FTP(timeout=BOUND)
            ftp.connect(gw.host, gw.port)
            port = ftp.sock.getsockname()[1]
            replies = [reply(ftp.login, "alice", "wrong") for _ in range(3)]
            ftp.close()
            try:
                ftplib.FTP(timeout=BOUND).connect(gw.host, gw.port)
            except ftplib.Error as e:
                replies.append(str(e))
            return port, replies

        port, replies = yield in_thread(run)
        self.assertEqual([r[:3] for r in replies], ["530", "530", "421", "421"])
        got = self.logins(port)
        self.assertEqual([g[0] for g in got], ["login-failed"] * 3)
        self.assertEqual([g[3] for g in got], ["530", "530", "421"])
        self.assertTrue(got[2][2].startswith("Too many failed logins"), got)
        self.assertEqual(len(self.audit.events("session-open")), 1)

    @defer.inlineCallbacks
    def test_sftp(self) -> Any:
        gw = yield self.start(users=self.users)

        def run() -> tuple[int, int, list[str]]:
            outcomes = []
            sock = socket.create_connection(("127.0.0.1", gw.sftp_port), BOUND)
            t = paramiko.Transport(sock)
            t.start_client(timeout=BOUND)
            first = sock.getsockname()[1]
            for user, password in [("alice", None), ("alice", "wrong")]:
                try:
                    if password is None:
                        t.auth_none(user)
                    else:
                        t.auth_password(user, password, fallback=False)
                except paramiko.SSHException as e:
                    outcomes.append(type(e).__name__)
            t.auth_password("alice", PASSWORD, fallback=False)
            outcomes.append("ok")
            t.close()
            sock = socket.create_connection(("127.0.0.1", gw.sftp_port), BOUND)
            second = sock.getsockname()[1]
            walled = paramiko.Transport(sock)
            try:
                walled.connect(username="walled", password=PASSWORD)
            except paramiko.SSHException as e:
                outcomes.append(type(e).__name__)
            walled.close()
            return first, second, outcomes

        first, second, outcomes = yield in_thread(run)
        self.assertEqual(
            outcomes[:3], ["BadAuthenticationType", "AuthenticationException", "ok"]
        )
        self.assertEqual(
            self.logins(first),
            [
                ("login-failed", "alice", "wrong password", "USERAUTH_FAILURE"),
                ("login", "alice", "", "FX_OK"),
            ],
        )
        self.assertEqual(
            self.logins(second),
            [
                (
                    "login-failed",
                    "walled",
                    "user walled may not log in from this address",
                    "DISCONNECT_TOO_MANY_CONNECTIONS",
                )
            ],
        )


class KickTests(GatewayCase):
    """
    A kick through the session table ends a session in the middle of a
    rate-limited upload: the client is told (FTP 421, SSH DISCONNECT), and
    the store keeps no object and no multipart upload.
    """

    reason = "kicked by the operator"

    @defer.inlineCallbacks
    def kick_during_upload(self, client: Callable[[Any], str]) -> Any:
        gw = yield self.start(
            part_size=MiB, users={"slow": plain_user("slow", upload_rate=2 * MiB)}
        )
        told = in_thread(client, gw)
        yield until(lambda: gw.inspector.stored_parts() >= 1, "a stored part")
        [session] = [s for s in gw.service.sessions.sessions.values()]
        self.assertEqual((session.user, len(session.transfers)), ("slow", 1))
        gw.service.sessions.get(session.id).kick(self.reason)
        message = yield told
        yield until(
            lambda: not gw.inspector.pending_uploads() and not gw.inspector.keys(),
            "no object and no multipart upload",
        )
        yield until(lambda: self.audit.events("session-close"), "session-close")
        [abort] = self.audit.events("abort", session=session.id)
        self.assertEqual(abort["path"], "/big.bin")
        self.assertGreaterEqual(abort["bytes"], MiB)
        [closed] = self.audit.events("session-close", session=session.id)
        self.assertEqual(closed["reason"], f"kicked: {self.reason}")
        return message, abort

    @defer.inlineCallbacks
    def test_ftp(self) -> Any:
        def client(gw: Any) -> str:
            ftp = ftplib.FTP(timeout=BOUND)
            ftp.connect(gw.host, gw.port)
            ftp.login("slow", PASSWORD)
            ftp.voidcmd("TYPE I")
            conn = ftp.transfercmd("STOR big.bin")
            deadline = time.monotonic() + BOUND
            try:
                while time.monotonic() < deadline:
                    conn.sendall(b"k" * 65536)
            except OSError:
                pass  # the gateway cut the data connection
            finally:
                conn.close()
            return reply(ftp.voidresp)

        told, abort = yield self.kick_during_upload(client)
        self.assertEqual(told, f"421 {self.reason}")
        self.assertEqual(abort["status"], "421")

    @defer.inlineCallbacks
    def test_sftp(self) -> Any:
        disconnects: list[str] = []

        class Recording(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                disconnects.append(record.getMessage())

        handler = Recording(logging.INFO)
        paramiko_log = logging.getLogger("paramiko.transport")
        paramiko_log.addHandler(handler)
        self.addCleanup(paramiko_log.removeHandler, handler)
        self.addCleanup(paramiko_log.setLevel, paramiko_log.level)
        paramiko_log.setLevel(logging.INFO)

        def client(gw: Any) -> str:
            t = sftp_client(gw.sftp_port, "slow")
            s = paramiko.SFTPClient.from_transport(t)
            assert s is not None
            f = s.open("big.bin", "wb")
            deadline = time.monotonic() + BOUND
            try:
                while time.monotonic() < deadline:
                    f.write(b"k" * 32768)
                    f.flush()
            except (OSError, EOFError, paramiko.SSHException) as e:
                return type(e).__name__
            finally:
                t.close()
            return "not disconnected"

        told, abort = yield self.kick_during_upload(client)
        self.assertNotEqual(told, "not disconnected")
        self.assertIn(f"Disconnect (code 11): {self.reason}", disconnects)
        self.assertEqual(abort["status"], "DISCONNECT_BY_APPLICATION")
