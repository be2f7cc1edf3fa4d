"""
Config reload of the FTPS certificate and of the log level, through real
clients: a certificate rotated in place (new files at the same paths) is
what new FTPS connections get, explicit and implicit, while an FTPS session
opened before keeps its certificate on its control and data connections
(which must resume its TLS session: tls_session_reuse); log_level debug
reaches log_dir's file and every output after the reload.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

from twisted.logger import LogLevel
from twisted.trial import unittest

from cosgw.frontends.sftp.conchlog import ConchLogger
from cosgw.logs import LineObserver
from tests.harness import in_thread
from tests.processtesting import scratch
from tests.test_reload import (
    ALICE_OLD,
    CLIENT_TIMEOUT,
    certificate,
    config_text,
    login,
    login_reply,
    start,
)


def fingerprint(der: bytes) -> str:
    """As the gateway logs and reports it: SHA-256, AB:CD:..."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def file_fingerprint(path: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return fingerprint(cert.public_bytes(Encoding.DER))


class SeenFTPS(ftplib.FTP_TLS):
    """
    FTP_TLS that offers its control connection's TLS session on every data
    connection (as clients of require_ssl_reuse servers must) and records
    each data connection's certificate.
    """

    def __init__(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        super().__init__(context=context, timeout=CLIENT_TIMEOUT)
        self.data_certificates: list[str] = []

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, Any]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        conn = self.context.wrap_socket(
            conn, server_hostname=self.host, session=self.sock.session
        )
        self.data_certificates.append(fingerprint(conn.getpeercert(True)))
        return conn, size

    @property
    def certificate(self) -> str:
        return fingerprint(self.sock.getpeercert(True))


def secure_session(port: int) -> SeenFTPS:
    ftp = SeenFTPS()
    ftp.connect("127.0.0.1", port)
    ftp.auth()
    ftp.login("alice", ALICE_OLD)
    ftp.prot_p()
    return ftp


def upload(ftp: SeenFTPS, name: str, data: bytes) -> str:
    return ftp.storbinary(f"STOR {name}", io.BytesIO(data))


def implicit_certificate(port: int) -> tuple[str, bytes]:
    """The certificate an implicit FTPS connection gets, and its greeting."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as raw:
        with context.wrap_socket(raw) as tls:
            greeting = tls.recv(1024)
            return fingerprint(tls.getpeercert(True)), greeting


class CertificateTests(unittest.TestCase):
    timeout = 120

    async def test_rotation_in_place(self) -> None:
        root = scratch(self, "cosgw-reload-")
        old = await in_thread(certificate, root / "old")
        new = await in_thread(certificate, root / "new")
        live = root / "live"
        live.mkdir()
        cert, key = live / "cert.pem", live / "key.pem"
        shutil.copy(old[0], cert)
        shutil.copy(old[1], key)
        server = {
            "tls_certificate": str(cert),
            "tls_key": str(key),
            "tls_session_reuse": "yes",
        }
        gw = await start(self, server, root=root)
        old_print, new_print = file_fingerprint(old[0]), file_fingerprint(new[0])
        before = await in_thread(secure_session, gw.ftp)
        self.addCleanup(before.close)
        self.assertEqual(before.certificate, old_print)
        # The rotation: new files where the old ones were, as certbot does.
        shutil.copy(new[0], cert)
        shutil.copy(new[1], key)

        result = await gw.reload()

        self.assertEqual(result.changes, (f"TLS certificate SHA-256 {new_print}",))
        after = await in_thread(secure_session, gw.ftp)
        self.addCleanup(after.close)
        self.assertEqual(after.certificate, new_print)
        self.assertEqual((await in_thread(implicit_certificate, gw.ftps))[0], new_print)
        # The old session goes on with its certificate: its data
        # connections resume its TLS session, which only its context has.
        data = os.urandom(200_000)
        self.assertEqual(
            await in_thread(upload, before, "old.bin", data), "226 Transfer complete"
        )
        self.assertEqual(before.data_certificates, [old_print])
        self.assertEqual((root / "data" / "old.bin").read_bytes(), data)
        self.assertEqual(
            await in_thread(upload, after, "new.bin", data), "226 Transfer complete"
        )
        self.assertEqual(after.data_certificates, [new_print])
        # Reloading the same files again changes nothing.
        again = await gw.reload()
        self.assertEqual((again.status, again.changes), ("unchanged", ()))


class LogLevelTests(unittest.TestCase):
    timeout = 120

    async def test_debug_after_reload(self) -> None:
        """
        log_level debug applies to log_dir's file, the program's output
        and Conch's chatter at once; back to info, debug lines stop.
        """
        root = scratch(self, "cosgw-reload-")
        server = {"log_dir": str(root / "logs"), "log_format": "json"}
        gw = await start(self, server, root=root)
        logfile = root / "logs" / "cosgw.log"

        def levels() -> list[str]:
            lines = logfile.read_text().splitlines()
            return [json.loads(line)["level"] for line in lines]

        (await in_thread(login, gw.ftp, "alice", ALICE_OLD)).close()
        self.assertNotIn("debug", levels())
        gw.write(config_text(root, {**server, "log_level": "debug"}))

        result = await gw.reload()

        self.assertEqual(result.changes, ("[server] log_level",))
        seen = len(levels())
        (await in_thread(login, gw.ftp, "alice", ALICE_OLD)).close()
        lines = [json.loads(line) for line in logfile.read_text().splitlines()]
        traced = [
            line["message"]
            for line in lines[seen:]
            if line["level"] == "debug" and line["message"].endswith("> USER alice")
        ]
        self.assertEqual(len(traced), 1, lines[seen:])
        output = gw.service.log_output
        assert isinstance(output, LineObserver)
        self.assertEqual(output.level, LogLevel.debug)
        self.assertTrue(ConchLogger.verbose)
        gw.write(config_text(root, server))
        await gw.reload()
        seen = len(levels())
        (await in_thread(login, gw.ftp, "alice", ALICE_OLD)).close()
        self.assertNotIn("debug", levels()[seen:])
        self.assertEqual(output.level, LogLevel.info)
        self.assertFalse(ConchLogger.verbose)


def clear_data_session(port: int) -> ftplib.FTP_TLS:
    """alice over explicit FTPS, data connections in clear (PROT C)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ftp = ftplib.FTP_TLS(context=context, timeout=CLIENT_TIMEOUT)
    ftp.connect("127.0.0.1", port)
    ftp.auth()
    ftp.login("alice", ALICE_OLD)
    return ftp


def prot_c_reply(ftp: ftplib.FTP_TLS) -> str:
    ftp.voidcmd("PBSZ 0")
    try:
        return ftp.prot_c()
    except ftplib.error_perm as e:
        return str(e)


class TlsRulesTests(unittest.TestCase):
    timeout = 120

    async def test_sessions_keep_their_login_rules(self) -> None:
        """
        tls_required and tls_data_required turned on by a reload apply to
        the logins after it: a session that logged in before still moves
        data in clear, and a clear-text session still works; new ones meet
        the rules.
        """
        gw = await start(self)
        before = await in_thread(clear_data_session, gw.ftp)
        self.addCleanup(before.close)
        plain = await in_thread(login, gw.ftp, "alice", ALICE_OLD)
        self.addCleanup(plain.close)
        rules = {"tls_required": "yes", "tls_data_required": "yes"}
        gw.write(config_text(gw.root, rules))

        result = await gw.reload()

        self.assertEqual(
            result.changes,
            ("[server] tls_data_required", "[server] tls_required"),
        )
        self.assertEqual(
            await in_thread(prot_c_reply, before), "200 Protection level set to Clear"
        )
        data = os.urandom(50_000)
        for ftp, name in ((before, "before.bin"), (plain, "plain.bin")):
            reply = await in_thread(ftp.storbinary, f"STOR {name}", io.BytesIO(data))
            self.assertEqual(reply, "226 Transfer complete")
            self.assertEqual((gw.root / "data" / name).read_bytes(), data)
        after = await in_thread(clear_data_session, gw.ftp)
        self.addCleanup(after.close)
        self.assertEqual(
            await in_thread(prot_c_reply, after), "534 Policy requires PROT P"
        )
        refused = await in_thread(login_reply, gw.ftp, "alice", ALICE_OLD)
        self.assertEqual(refused, "534 Policy requires TLS: send AUTH TLS first")
