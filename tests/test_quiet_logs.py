"""
Quiet by default: normal sessions (FTP with several transfers, passive and
active, clear and TLS; SFTP with paramiko and with OpenSSH's sftp) leave at
info level nothing but their audit events: no line per data connection or
passive port, no factory start or stop, none of Conch's chatter, no error
for a client's normal logout, one line per failed login.  With log_level = debug, Conch's chatter is
there, at debug.
"""

from __future__ import annotations

import ftplib
import io
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from cosgw.audit import AUDIT_NAMESPACE, audit_fields
from cosgw.frontends.ftp.tls import generate_self_signed
from cosgw.frontends.sftp.conchlog import set_conch_verbose
from tests.harness import PASSWORD, in_thread, random_bytes, start_gateway
from tests.sshtesting import password_env
from tests.test_audit_protocols import BOUND, sftp_client, until

#: The audit events the sessions below cause, and nothing else at info.
EXPECTED = {
    "session-open",
    "login",
    "login-failed",
    "upload",
    "download",
    "list",
    "mkdir",
    "rename",
    "delete",
    "rmdir",
    "session-close",
}


def ftp_session(gw: Any, cert: Path) -> None:
    """FTP in clear (passive and active), then FTPS with private data."""
    data = random_bytes(200_000)
    ftp = ftplib.FTP(timeout=BOUND)
    ftp.connect(gw.host, gw.port)
    try:
        ftp.login("alice", "not-the-password")
    except ftplib.error_perm:
        pass  # its one line is the login-failed event
    ftp.login("alice", PASSWORD)
    ftp.voidcmd("TYPE I")
    for n in range(3):
        ftp.storbinary(f"STOR f{n}.bin", io.BytesIO(data))
    ftp.set_pasv(False)
    ftp.retrbinary("RETR f0.bin", io.BytesIO().write)
    ftp.nlst()
    ftp.set_pasv(True)
    ftp.retrbinary("RETR f1.bin", io.BytesIO().write)
    ftp.retrlines("LIST")
    ftp.mkd("d")
    ftp.rename("f2.bin", "d/f2.bin")
    ftp.delete("d/f2.bin")
    ftp.rmd("d")
    ftp.quit()
    tls = ftplib.FTP_TLS(
        context=ssl.create_default_context(cafile=str(cert)), timeout=BOUND
    )
    tls.connect(gw.host, gw.port)
    tls.auth()
    tls.login("alice", PASSWORD)
    tls.prot_p()
    tls.storbinary("STOR t.bin", io.BytesIO(data))
    tls.retrbinary("RETR t.bin", io.BytesIO().write)
    tls.nlst()
    tls.quit()


def paramiko_session(gw: Any) -> None:
    wrong = paramiko.Transport(("127.0.0.1", gw.sftp_port))
    try:
        wrong.connect(username="alice", password="not-the-password")
    except paramiko.AuthenticationException:
        pass  # its one line is the login-failed event
    finally:
        wrong.close()
    t = sftp_client(gw.sftp_port)
    s = paramiko.SFTPClient.from_transport(t)
    assert s is not None
    s.putfo(io.BytesIO(random_bytes(100_000)), "p.bin")
    s.getfo("p.bin", io.BytesIO())
    s.listdir(".")
    s.mkdir("pd")
    s.rename("p.bin", "pd/p.bin")
    s.remove("pd/p.bin")
    s.rmdir("pd")
    s.close()
    t.close()


def openssh_session(gw: Any, work: Path) -> subprocess.CompletedProcess:
    (work / "o.bin").write_bytes(random_bytes(50_000))
    batch = work / "batch"
    batch.write_text("put o.bin\nget o.bin back.bin\nls\nrm o.bin\n")
    return subprocess.run(
        ["sftp", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no"]
        + ["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=no"]
        + ["-o", "PubkeyAuthentication=no", "-P", str(gw.sftp_port)]
        + ["-b", str(batch), "alice@127.0.0.1"],
        cwd=work,
        capture_output=True,
        timeout=BOUND,
        env=password_env(work, PASSWORD),
    )


def kind(event: dict[str, Any]) -> str:
    """What kind of line an event is: its audit event, or its format."""
    fields = audit_fields(event)
    if fields is not None:
        return str(fields["event"])
    return f"{event.get('log_namespace')}: {event.get('log_format')}"


class QuietLogTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def sessions(self, **overrides: Any) -> Any:
        """Run every session; the log events from the first connection on."""
        work = Path(tempfile.mkdtemp(prefix="cosgw-quiet-"))
        self.addCleanup(shutil.rmtree, work, True)
        cert, key = generate_self_signed(work / "tls")
        gw = yield start_gateway(
            self, "local", tls_certificate=cert, tls_key=key, **overrides
        )
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield in_thread(ftp_session, gw, cert)
        yield in_thread(paramiko_session, gw)
        done = yield in_thread(openssh_session, gw, work)
        self.assertEqual(done.returncode, 0, done.stderr)

        def closed() -> int:
            return sum(
                1
                for e in events
                if e.get("log_namespace") == AUDIT_NAMESPACE
                and kind(e) == "session-close"
            )

        yield until(lambda: closed() == 5, "five sessions closed")
        yield until(lambda: gw.service.limits.total == 0, "connections closed")
        return events

    @defer.inlineCallbacks
    def test_only_audit_lines_at_info(self) -> Any:
        events = yield self.sessions()
        loud = [e for e in events if e["log_level"] >= LogLevel.info]
        self.assertEqual({kind(e) for e in loud}, EXPECTED)
        self.assertEqual(
            [kind(e) for e in events if e["log_level"] >= LogLevel.warn], []
        )
        reasons = {
            fields["reason"]
            for fields in map(audit_fields, loud)
            if fields is not None and fields["event"] == "session-close"
        }
        self.assertIn("client quit (disconnected by user)", reasons)
        self.assertIn("client quit", reasons)
        failed = [e for e in loud if kind(e) == "login-failed"]
        self.assertEqual(len(failed), 2)

    @defer.inlineCallbacks
    def test_conch_chatter_at_debug_only_when_asked(self) -> Any:
        self.addCleanup(set_conch_verbose, False)
        events = yield self.sessions(log_level="debug")
        loud = [e for e in events if e["log_level"] >= LogLevel.info]
        self.assertEqual({kind(e) for e in loud}, EXPECTED)
        conch = [
            e
            for e in events
            if "Asking for subsystem" in str(e.get("log_format"))
            or "trying auth" in str(e.get("log_format"))
        ]
        self.assertTrue(conch)
        self.assertEqual({e["log_level"] for e in conch}, {LogLevel.debug})
