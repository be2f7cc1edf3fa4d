"""
End-to-end FTPS tests (RFC 4217): a real gateway on 127.0.0.1 with a
certificate made for the test, real clients (Python's ftplib, curl over
OpenSSL; lftp over GnuTLS is in tests/test_ftps_lftp.py) verifying that
certificate, and the store read directly to check what was really stored.

The gateway's TLS context is shared by the control and data connections; an
info callback on it records every handshake the gateway completes (protocol
version, resumed or not), so the tests can tell which TLS version a client
really used and whether a data connection resumed a session, as the server
saw it.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from cosgw.frontends.ftp.tls import generate_self_signed, session_reused
from tests.harness import (
    PASSWORD,
    READER_PASSWORD,
    MiB,
    in_thread,
    random_bytes,
    sha256,
    start_gateway,
)

#: Seconds a blocking client waits on a socket.
CLIENT_TIMEOUT = 30


# -- the gateway's side -------------------------------------------------------


class Handshakes:
    """
    The TLS handshakes the gateway completed, as the server saw them: an
    info callback on the one OpenSSL context that the control and data
    connections (explicit and implicit) share.
    """

    def __init__(self, gw: Any) -> None:
        self._seen: dict[int, tuple[str, bool]] = {}
        self._alive: list[SSL.Connection] = []  # keeps the ids unique
        self.context = gw.service.ftp.listeners[0].factory.tls.options.getContext()
        self.context.set_info_callback(self._info)

    def _info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            self._alive.append(connection)
            handle = SimpleNamespace(getHandle=lambda: connection)
            self._seen[id(connection)] = (
                connection.get_protocol_version_name(),
                session_reused(handle),
            )

    def count(self) -> int:
        return len(self._seen)

    def versions(self) -> set[str]:
        return {version for version, _ in self._seen.values()}

    def resumed(self) -> int:
        return sum(1 for _, reused in self._seen.values() if reused)

    def clear(self) -> None:
        self._seen.clear()


def wait_until(condition: Any, seconds: float = 5.0) -> defer.Deferred[bool]:
    """Poll C{condition} on the reactor, bounded; fires with its last value."""

    @defer.inlineCallbacks
    def poll() -> Generator[Any, Any, bool]:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            yield deferLater(reactor, 0.02, lambda: None)
        return bool(condition())

    return poll()


class FTPSGatewayMixin:
    """
    Starts a gateway with FTPS (explicit and implicit) and a known CA, and
    keeps the control connections it accepts (see L{_close_lingering}).
    """

    def make_certificate(self) -> tuple[Path, Path]:
        directory = Path(tempfile.mkdtemp(prefix="cosgw-ftps-cert-"))
        self.addCleanup(shutil.rmtree, directory, True)  # type: ignore[attr-defined]
        return generate_self_signed(directory)

    @defer.inlineCallbacks
    def start(self, kind: str, **overrides: Any) -> Generator[Any, Any, Any]:
        self.cert, key = self.make_certificate()
        self.gw = yield start_gateway(
            self,
            kind,
            tls_certificate=self.cert,
            tls_key=key,
            ftps_listen=("tcp:0:interface=127.0.0.1",),
            **overrides,
        )
        listener = self.gw.service.ftp.implicit_listeners[0]
        if listener.port is None:
            yield listener.listening
        self.implicit_port = listener.port.getHost().port
        self.handshakes = Handshakes(self.gw)
        self.explicit_factory = self.gw.service.ftp.listeners[0].factory
        self.implicit_factory = listener.factory.wrappedFactory
        self.controls: list[Any] = []
        for factory in (self.explicit_factory, self.implicit_factory):
            factory.buildProtocol = self._tracking(factory.buildProtocol)
        self.addCleanup(self._close_lingering)  # type: ignore[attr-defined]
        self.scratch = Path(tempfile.mkdtemp(prefix="cosgw-ftps-client-"))
        self.addCleanup(shutil.rmtree, self.scratch, True)  # type: ignore[attr-defined]
        return self.gw

    def _tracking(self, build: Any) -> Any:
        def buildProtocol(addr: Any) -> Any:
            protocol = build(addr)
            self.controls.append(protocol)
            return protocol

        return buildProtocol

    def open_controls(self) -> list[Any]:
        return [
            p
            for p in self.controls
            if p.transport is not None and getattr(p.transport, "connected", False)
        ]

    def _close_lingering(self) -> defer.Deferred[bool]:
        """
        Drop the control connections still open once the test's clients
        are gone.  After QUIT over TLS the gateway leaves the connection
        open (test_quit_closes_tls_control_connection says why); without
        this, every test whose client sends QUIT would also fail with an
        unclean reactor (their idle timers), for that one bug.
        """
        for protocol in self.open_controls():
            protocol.transport.abortConnection()
        return wait_until(lambda: not self.open_controls())

    def keys(self, prefix: str = "") -> list[str]:
        return self.gw.inspector.keys(prefix)

    def stored_sha(self, key: str) -> str:
        return sha256(self.gw.inspector.read(key))


# -- clients ------------------------------------------------------------------


def client_context(
    cafile: Path, maximum: Optional[ssl.TLSVersion] = None
) -> ssl.SSLContext:
    """Verifies the peer against C{cafile} only, host name included."""
    context = ssl.create_default_context(cafile=str(cafile))
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    if maximum is not None:
        context.maximum_version = maximum
    return context


class RecordingFTPS(ftplib.FTP_TLS):
    """
    FTP_TLS that records, for each protected data connection, the TLS
    version and whether it resumed a session; with C{reuse_session} it
    offers the control connection's session on every data connection, as
    clients of servers that require reuse must (plain FTP_TLS never does).
    """

    reuse_session = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_tls: list[tuple[str, bool]] = []

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, Any]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            session = self.sock.session if self.reuse_session else None
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=session
            )
            self.data_tls.append((conn.version(), conn.session_reused))
        return conn, size


class ReusingFTPS(RecordingFTPS):
    reuse_session = True


def ftps(
    gw: Any,
    cafile: Path,
    cls: type[ftplib.FTP_TLS] = RecordingFTPS,
    maximum: Optional[ssl.TLSVersion] = None,
) -> Any:
    """An FTP_TLS connected to C{gw}, not yet secured nor logged in."""
    ftp = cls(context=client_context(cafile, maximum), timeout=CLIENT_TIMEOUT)
    ftp.connect(gw.host, gw.port)
    return ftp


def secure_login(
    ftp: ftplib.FTP_TLS, user: str = "alice", password: str = PASSWORD
) -> None:
    """AUTH TLS, login, PBSZ 0 + PROT P, TYPE I."""
    ftp.auth()
    ftp.login(user, password)
    ftp.prot_p()
    ftp.voidcmd("TYPE I")


def reply(ftp: ftplib.FTP, line: str) -> str:
    """The reply to C{line}, whatever its code."""
    try:
        return ftp.sendcmd(line)
    except ftplib.Error as e:
        return str(e)


def retr(ftp: ftplib.FTP, name: str) -> tuple[str, bytes]:
    out = io.BytesIO()
    done = ftp.retrbinary(f"RETR {name}", out.write)
    return done, out.getvalue()


def listing(ftp: ftplib.FTP, command: str = "LIST") -> tuple[str, list[str]]:
    lines: list[str] = []
    done = ftp.retrlines(command, lines.append)
    return done, lines


def refused_transfer(ftp: ftplib.FTP, command: str) -> str:
    """
    The final reply to a transfer whose data connection the server drops
    (a policy refusal after the 150): the handshake or the first read may
    fail on the client's side, then the control connection says why.
    """
    try:
        conn = ftp.transfercmd(command)
    except ftplib.Error as e:
        return str(e)
    except OSError:
        pass  # after the 150: the handshake was cut
    else:
        try:
            conn.recv(1)
        except OSError:
            pass
        conn.close()
    try:
        return ftp.voidresp()
    except ftplib.Error as e:
        return str(e)


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "60", *args],
        capture_output=True,
        timeout=90,
    )


def read_tree(root: Path) -> tuple[set[str], dict[str, str]]:
    """(directories, {file: sha256}) under C{root}, relative, '/'-separated."""
    directories: set[str] = set()
    files: dict[str, str] = {}
    for directory, dirs, names in os.walk(root):
        rel = Path(directory).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        directories.update(prefix + d for d in dirs)
        for name in names:
            files[prefix + name] = sha256((Path(directory) / name).read_bytes())
    return directories, files


def fingerprint(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


# -- transfers, on every store ------------------------------------------------


class FTPSTransferTestsMixin(FTPSGatewayMixin):
    kind = "local"

    def setUp(self) -> Any:
        return self.start(self.kind)

    @defer.inlineCallbacks
    def test_ftplib_explicit_round_trip(self) -> Any:
        """
        AUTH TLS (234), certificate verified against the test's CA with the
        host name checked, PBSZ/PROT P, 3 MiB + 5 up and down (hashed both
        ways), LIST; every data connection is encrypted.
        """
        data = random_bytes(3 * MiB + 5)

        def run() -> dict[str, Any]:
            ftp = ftps(self.gw, self.cert)
            r: dict[str, Any] = {"auth": ftp.auth()}
            r["peer"] = ftp.sock.getpeercert()
            r["der"] = ftp.sock.getpeercert(binary_form=True)
            r["login"] = ftp.login("alice", PASSWORD)
            r["prot"] = ftp.prot_p()
            ftp.voidcmd("TYPE I")
            r["stor"] = ftp.storbinary("STOR tls up.bin", io.BytesIO(data))
            r["retr"], r["back"] = retr(ftp, "tls up.bin")
            r["list"], r["lines"] = listing(ftp)
            r["data_tls"] = ftp.data_tls
            r["quit"] = ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertTrue(r["auth"].startswith("234"), r["auth"])
        self.assertIn(("IP Address", "127.0.0.1"), r["peer"]["subjectAltName"])
        factory = self.gw.service.ftp.listeners[0].factory
        self.assertEqual(fingerprint(r["der"]), factory.tls.fingerprint)
        self.assertTrue(r["login"].startswith("230"), r["login"])
        self.assertTrue(r["prot"].startswith("200"), r["prot"])
        self.assertTrue(r["stor"].startswith("226"), r["stor"])
        self.assertEqual(len(self.gw.inspector.read("tls up.bin")), len(data))
        self.assertEqual(self.stored_sha("tls up.bin"), sha256(data))
        self.assertTrue(r["retr"].startswith("226"), r["retr"])
        self.assertEqual(len(r["back"]), len(data))
        self.assertEqual(sha256(r["back"]), sha256(data))
        self.assertTrue(r["list"].startswith("226"), r["list"])
        self.assertEqual(len(r["lines"]), 1, r["lines"])
        self.assertTrue(r["lines"][0].endswith(" tls up.bin"), r["lines"])
        self.assertIn(f" {len(data)} ", r["lines"][0])
        # Three data connections, all TLS; control + data seen by the server.
        self.assertEqual(len(r["data_tls"]), 3, r["data_tls"])
        self.assertEqual(self.handshakes.count(), 4)
        self.assertTrue(r["quit"].startswith("221"), r["quit"])

    @defer.inlineCallbacks
    def test_curl_explicit_tls12_and_tls13(self) -> Any:
        """
        curl --ssl-reqd, upload (-T) then download, once capped at TLS 1.2
        and once at TLS 1.3 only: byte counts (curl's and the store's) and
        hashes equal.  5 MiB + 123 bytes: six parts of 1 MiB.
        """
        data = random_bytes(5 * MiB + 123)
        source = self.scratch / "source.bin"
        source.write_bytes(data)
        auth = f"alice:{PASSWORD}"
        base = f"ftp://127.0.0.1:{self.gw.port}"
        common = ("--ssl-reqd", "--cacert", str(self.cert), "-u", auth)
        for label, version, expected in (
            ("tls12", ("--tls-max", "1.2"), "TLSv1.2"),
            ("tls13", ("--tlsv1.3",), "TLSv1.3"),
        ):
            self.handshakes.clear()
            name = f"curl-{label}.bin"
            put = yield in_thread(
                curl,
                *common,
                *version,
                "-T",
                str(source),
                "-w",
                "%{size_upload} %{response_code}",
                f"{base}/{name}",
            )
            self.assertEqual(put.returncode, 0, (label, put.stderr))
            self.assertEqual(put.stdout.decode(), f"{len(data)} 226", label)
            stored = self.gw.inspector.read(name)
            self.assertEqual(len(stored), len(data), label)
            self.assertEqual(sha256(stored), sha256(data), label)
            target = self.scratch / f"{label}.out"
            got = yield in_thread(
                curl,
                *common,
                *version,
                "-o",
                str(target),
                "-w",
                "%{size_download} %{response_code}",
                f"{base}/{name}",
            )
            self.assertEqual(got.returncode, 0, (label, got.stderr))
            self.assertEqual(got.stdout.decode(), f"{len(data)} 226", label)
            back = target.read_bytes()
            self.assertEqual(len(back), len(data), label)
            self.assertEqual(sha256(back), sha256(data), label)
            # Control and data connections of both runs, all at that version.
            self.assertEqual(self.handshakes.versions(), {expected}, label)
            self.assertGreaterEqual(self.handshakes.count(), 4, label)
        self.assertEqual(self.gw.inspector.pending_uploads(), [])

    @defer.inlineCallbacks
    def test_curl_implicit(self) -> Any:
        """Implicit FTPS (ftps://, TLS from the first byte): up and down."""
        data = random_bytes(3 * MiB + 77)
        source = self.scratch / "implicit.bin"
        source.write_bytes(data)
        url = f"ftps://127.0.0.1:{self.implicit_port}/implicit.bin"
        common = ("--cacert", str(self.cert), "-u", f"alice:{PASSWORD}")
        put = yield in_thread(
            curl,
            *common,
            "-T",
            str(source),
            "-w",
            "%{size_upload} %{response_code}",
            url,
        )
        self.assertEqual(put.returncode, 0, put.stderr)
        self.assertEqual(put.stdout.decode(), f"{len(data)} 226")
        self.assertEqual(len(self.gw.inspector.read("implicit.bin")), len(data))
        self.assertEqual(self.stored_sha("implicit.bin"), sha256(data))
        target = self.scratch / "implicit.out"
        got = yield in_thread(
            curl,
            *common,
            "-o",
            str(target),
            "-w",
            "%{size_download} %{response_code}",
            url,
        )
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertEqual(got.stdout.decode(), f"{len(data)} 226")
        self.assertEqual(sha256(target.read_bytes()), sha256(data))
        listed = yield in_thread(
            curl, *common, "--list-only", f"ftps://127.0.0.1:{self.implicit_port}/"
        )
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertEqual(listed.stdout.decode().splitlines(), ["implicit.bin"])

    @defer.inlineCallbacks
    def test_tls_upload_cut_short_leaves_no_object(self) -> Any:
        """
        PROT P upload; once parts are stored, the client drops the TCP
        connection under TLS abortively (RST, no close_notify): 426, and no
        object under the name (parts may be kept for a resume).
        """
        data = random_bytes(3 * MiB)

        def run() -> tuple[int, str, str]:
            ftp = ftps(self.gw, self.cert)
            secure_login(ftp)
            conn = ftp.transfercmd("STOR cut.bin")
            assert isinstance(conn, ssl.SSLSocket)
            conn.sendall(data)
            deadline = time.monotonic() + 20
            parts = self.gw.inspector.stored_parts()
            while parts == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
                parts = self.gw.inspector.stored_parts()
            raw = socket.socket(fileno=conn.detach())  # no TLS shutdown
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()  # RST
            try:
                final = ftp.voidresp()
            except ftplib.Error as e:
                final = str(e)
            noop = reply(ftp, "NOOP")
            ftp.close()
            return parts, final, noop

        parts, final, noop = yield in_thread(run)
        self.assertGreater(parts, 0)
        self.assertTrue(final.startswith("426"), final)
        self.assertNotIn("cut.bin", self.keys())
        self.assertTrue(noop.startswith("200"), noop)


class LocalFTPSTransferTests(FTPSTransferTestsMixin, unittest.TestCase):
    kind = "local"


class CosFTPSTransferTests(FTPSTransferTestsMixin, unittest.TestCase):
    kind = "cos"


# -- policies -----------------------------------------------------------------


class FTPSPolicyTests(FTPSGatewayMixin, unittest.TestCase):
    """tls_required, tls_data_required, and a per-user override."""

    @defer.inlineCallbacks
    def test_tls_required_refuses_clear_login(self) -> Any:
        gw = yield self.start("local", tls_required=True)

        def run() -> dict[str, str]:
            ftp = ftps(gw, self.cert)
            r = {"user": reply(ftp, "USER alice")}
            r["pass"] = reply(ftp, "PASS " + PASSWORD)  # no USER accepted
            r["auth"] = ftp.auth()
            r["login"] = ftp.login("alice", PASSWORD)
            r["pwd"] = reply(ftp, "PWD")
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertTrue(r["user"].startswith("534"), r["user"])
        self.assertTrue(r["pass"].startswith("503"), r["pass"])
        self.assertTrue(r["auth"].startswith("234"), r["auth"])
        self.assertTrue(r["login"].startswith("230"), r["login"])
        self.assertTrue(r["pwd"].startswith("257"), r["pwd"])

    @defer.inlineCallbacks
    def test_tls_data_required(self) -> Any:
        gw = yield self.start("local", tls_data_required=True)
        data = random_bytes(100_000)

        def run() -> dict[str, Any]:
            first = ftps(gw, self.cert)
            secure_login(first)
            r: dict[str, Any] = {
                "stor": first.storbinary("STOR p.bin", io.BytesIO(data))
            }
            first.quit()
            ftp = ftps(gw, self.cert)
            ftp.auth()
            ftp.login("alice", PASSWORD)
            ftp.voidcmd("TYPE I")
            r["pbsz"] = reply(ftp, "PBSZ 0")
            r["prot_c"] = reply(ftp, "PROT C")
            # The client's data connections are still clear (no PROT P).
            r["list_clear"] = refused_transfer(ftp, "LIST")
            r["retr_clear"] = refused_transfer(ftp, "RETR p.bin")
            r["stor_clear"] = refused_transfer(ftp, "STOR q.bin")
            r["prot_p"] = ftp.prot_p()
            r["list"], r["lines"] = listing(ftp, "NLST")
            r["retr"], r["back"] = retr(ftp, "p.bin")
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertTrue(r["stor"].startswith("226"), r["stor"])
        self.assertTrue(r["pbsz"].startswith("200"), r["pbsz"])
        self.assertTrue(r["prot_c"].startswith("534"), r["prot_c"])
        self.assertTrue(r["list_clear"].startswith("521"), r["list_clear"])
        self.assertTrue(r["retr_clear"].startswith("521"), r["retr_clear"])
        self.assertTrue(r["stor_clear"].startswith("521"), r["stor_clear"])
        self.assertTrue(r["prot_p"].startswith("200"), r["prot_p"])
        self.assertTrue(r["list"].startswith("226"), r["list"])
        self.assertEqual(r["lines"], ["p.bin"])
        self.assertTrue(r["retr"].startswith("226"), r["retr"])
        self.assertEqual(sha256(r["back"]), sha256(data))
        self.assertEqual(self.keys(), ["p.bin"])

    @defer.inlineCallbacks
    def test_per_user_policy(self) -> Any:
        """
        Per-user policies (UserConfig.tls_required / tls_data_required reach
        the factory as user_tls; the harness has no per-user settings, so
        the running factory's table is set here): alice must use TLS and
        PROT P, reader may log in in clear.
        """
        gw = yield self.start("local")
        factory = gw.service.ftp.listeners[0].factory
        factory.user_tls = {"alice": (True, True)}

        def run() -> dict[str, str]:
            clear = ftplib.FTP(timeout=CLIENT_TIMEOUT)
            clear.connect(gw.host, gw.port)
            r = {"alice_clear": reply(clear, "USER alice")}
            r["reader_clear"] = clear.login("reader", READER_PASSWORD)
            clear.quit()
            ftp = ftps(gw, self.cert)
            ftp.auth()
            r["alice_tls"] = ftp.login("alice", PASSWORD)
            r["pbsz"] = reply(ftp, "PBSZ 0")
            r["prot_c"] = reply(ftp, "PROT C")
            r["list_clear"] = refused_transfer(ftp, "LIST")
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertTrue(r["alice_clear"].startswith("534"), r["alice_clear"])
        self.assertTrue(r["reader_clear"].startswith("230"), r["reader_clear"])
        self.assertTrue(r["alice_tls"].startswith("230"), r["alice_tls"])
        self.assertTrue(r["pbsz"].startswith("200"), r["pbsz"])
        self.assertTrue(r["prot_c"].startswith("534"), r["prot_c"])
        self.assertTrue(r["list_clear"].startswith("521"), r["list_clear"])


# -- protocol replies ---------------------------------------------------------


class FTPSProtocolTests(FTPSGatewayMixin, unittest.TestCase):
    """RFC 4217 commands and their replies."""

    def setUp(self) -> Any:
        return self.start("local")

    @defer.inlineCallbacks
    def test_ftplib_refuses_another_certificate(self) -> Any:
        """The verification above is real: another CA does not pass."""
        other, _ = self.make_certificate()

        def run() -> str:
            ftp = ftps(self.gw, other)
            try:
                with self.assertRaises(ssl.SSLCertVerificationError) as caught:
                    ftp.auth()
            finally:
                ftp.close()
            return str(caught.exception)

        error = yield in_thread(run)
        self.assertIn("certificate verify failed", error)

    @defer.inlineCallbacks
    def test_control_connections_send_at_once(self) -> Any:
        """
        TCP_NODELAY on control connections (clear, explicit and implicit
        FTPS): with Nagle a transfer's 226 waited for the client's delayed
        ACK of its 150, 40 ms per file.
        """

        def connect() -> list[Any]:
            plain = ftplib.FTP(timeout=CLIENT_TIMEOUT)
            plain.connect(self.gw.host, self.gw.port)
            explicit = ftps(self.gw, self.cert)
            secure_login(explicit)
            raw = socket.create_connection(
                (self.gw.host, self.implicit_port), CLIENT_TIMEOUT
            )
            implicit = client_context(self.cert).wrap_socket(
                raw, server_hostname=self.gw.host
            )
            implicit.recv(100)  # the greeting
            return [plain, explicit, implicit]

        clients = yield in_thread(connect)
        delays = []
        for protocol in self.open_controls():
            tcp = protocol.transport
            if not hasattr(tcp, "socket"):  # implicit: TLS above TCP
                tcp = tcp.transport
            delays.append(tcp.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        for client in clients:
            client.close()
        self.assertEqual(len(delays), 3)
        self.assertNotIn(0, delays)

    @defer.inlineCallbacks
    def test_command_replies(self) -> Any:
        def run() -> dict[str, str]:
            ftp = ftps(self.gw, self.cert)
            r = {"feat_clear": reply(ftp, "FEAT")}
            r["pbsz_before_auth"] = reply(ftp, "PBSZ 0")
            r["prot_before_auth"] = reply(ftp, "PROT P")
            r["auth_unknown"] = reply(ftp, "AUTH KERBEROS_V4")
            r["auth"] = ftp.auth()
            r["prot_before_pbsz"] = reply(ftp, "PROT P")
            r["auth_again"] = reply(ftp, "AUTH TLS")
            r["login"] = ftp.login("alice", PASSWORD)
            r["pbsz_bad"] = reply(ftp, "PBSZ x")
            r["pbsz"] = reply(ftp, "PBSZ 0")
            r["prot_s"] = reply(ftp, "PROT S")
            r["prot_e"] = reply(ftp, "PROT E")
            r["prot_x"] = reply(ftp, "PROT X")
            r["ccc"] = reply(ftp, "CCC")
            r["feat"] = reply(ftp, "FEAT")
            r["noop"] = reply(ftp, "NOOP")
            ftp.quit()
            return r

        r = yield in_thread(run)
        codes = {k: v[:3] for k, v in r.items()}
        self.assertEqual(
            codes,
            {
                "feat_clear": "211",
                "pbsz_before_auth": "503",
                "prot_before_auth": "503",
                "auth_unknown": "504",
                "auth": "234",
                "prot_before_pbsz": "503",
                "auth_again": "503",
                "login": "230",
                "pbsz_bad": "501",
                "pbsz": "200",
                "prot_s": "536",
                "prot_e": "536",
                "prot_x": "504",
                "ccc": "534",
                "feat": "211",
                "noop": "200",
            },
            r,
        )
        for feat in (r["feat_clear"], r["feat"]):
            features = {line.strip() for line in feat.splitlines()[1:-1]}
            self.assertTrue({"AUTH TLS", "PBSZ", "PROT"} <= features, feat)

    @defer.inlineCallbacks
    def test_rein_keeps_tls_and_resets_protection(self) -> Any:
        """
        REIN: 220; the control connection stays encrypted, USER/PASS work
        again, and protection is back to C: a clear LIST works (no
        handshake on its data connection), PROT P needs PBSZ again, and
        then LIST is encrypted again.
        """

        def run() -> dict[str, Any]:
            ftp = ftps(self.gw, self.cert)
            secure_login(ftp)
            r: dict[str, Any] = {"before": listing(ftp, "NLST")[0]}
            r["rein"] = reply(ftp, "REIN")
            r["pwd_out"] = reply(ftp, "PWD")
            r["still_tls"] = ftp.sock.version()
            r["login"] = ftp.login("alice", PASSWORD)  # no second AUTH
            handshakes = self.handshakes.count()
            ftp._prot_p = False  # what prot_c() leaves, without its PROT C
            r["clear_list"] = listing(ftp, "NLST")[0]
            r["clear_handshakes"] = self.handshakes.count() - handshakes
            r["prot_no_pbsz"] = reply(ftp, "PROT P")
            r["prot_p"] = ftp.prot_p()
            r["tls_list"] = listing(ftp, "NLST")[0]
            r["tls_handshakes"] = self.handshakes.count() - handshakes
            r["data_tls"] = ftp.data_tls
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertTrue(r["before"].startswith("226"), r["before"])
        self.assertTrue(r["rein"].startswith("220"), r["rein"])
        self.assertTrue(r["pwd_out"].startswith("530"), r["pwd_out"])
        self.assertIn(r["still_tls"], ("TLSv1.2", "TLSv1.3"))
        self.assertTrue(r["login"].startswith("230"), r["login"])
        self.assertTrue(r["clear_list"].startswith("226"), r["clear_list"])
        self.assertEqual(r["clear_handshakes"], 0)
        self.assertTrue(r["prot_no_pbsz"].startswith("503"), r["prot_no_pbsz"])
        self.assertTrue(r["prot_p"].startswith("200"), r["prot_p"])
        self.assertTrue(r["tls_list"].startswith("226"), r["tls_list"])
        self.assertEqual(r["tls_handshakes"], 1)
        self.assertEqual(len(r["data_tls"]), 2, r["data_tls"])


# -- TLS session reuse --------------------------------------------------------


class FTPSSessionReuseTests(FTPSGatewayMixin, unittest.TestCase):
    """
    A data connection resuming the control connection's TLS session, and
    tls_session_reuse, which refuses (522) a data connection that did not.
    """

    def round_trip(self, cls: type[RecordingFTPS], maximum: Any, name: str) -> Any:
        data = random_bytes(200_000)

        def run() -> dict[str, Any]:
            ftp = ftps(self.gw, self.cert, cls, maximum)
            secure_login(ftp)
            r: dict[str, Any] = {
                "version": ftp.sock.version(),
                "stor": ftp.storbinary(f"STOR {name}", io.BytesIO(data)),
            }
            r["retr"], r["back"] = retr(ftp, name)
            r["list"], r["lines"] = listing(ftp, "NLST")
            r["data_tls"] = ftp.data_tls
            ftp.quit()
            return r

        def check(r: dict[str, Any]) -> dict[str, Any]:
            label = (cls.__name__, r["version"])
            for step in ("stor", "retr", "list"):
                self.assertTrue(r[step].startswith("226"), (label, step, r[step]))
            self.assertEqual(sha256(r["back"]), sha256(data), label)
            self.assertEqual(self.stored_sha(name), sha256(data), label)
            self.assertIn(name, r["lines"], label)
            return r

        return in_thread(run).addCallback(check)

    @defer.inlineCallbacks
    def test_reuse_optional(self) -> Any:
        """
        tls_session_reuse off: plain FTP_TLS works without resuming; a
        client that offers the control session resumes it on every data
        connection (client and server agree), under TLS 1.2 and 1.3.
        """
        yield self.start("local", tls_session_reuse=False)
        for maximum, version in (
            (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
            (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
        ):
            self.handshakes.clear()
            plain = yield self.round_trip(RecordingFTPS, maximum, f"plain{version}")
            self.assertEqual(plain["version"], version)
            self.assertEqual(plain["data_tls"], [(version, False)] * 3)
            self.assertEqual(self.handshakes.resumed(), 0)
            self.handshakes.clear()
            reusing = yield self.round_trip(ReusingFTPS, maximum, f"reuse{version}")
            self.assertEqual(reusing["version"], version)
            self.assertEqual(reusing["data_tls"], [(version, True)] * 3)
            self.assertEqual(self.handshakes.resumed(), 3)
            self.assertEqual(self.handshakes.count(), 4)

    @defer.inlineCallbacks
    def test_reuse_required(self) -> Any:
        """
        tls_session_reuse on: plain FTP_TLS's transfers get 522 (the data
        connection is dropped, nothing is stored, the session goes on); the
        reusing client works under TLS 1.2 and 1.3.
        """
        yield self.start("local", tls_session_reuse=True)

        def refused() -> dict[str, str]:
            ftp = ftps(self.gw, self.cert)
            secure_login(ftp)
            r = {
                "stor": refused_transfer(ftp, "STOR refused.bin"),
                "list": refused_transfer(ftp, "LIST"),
                "noop": reply(ftp, "NOOP"),
            }
            ftp.quit()
            return r

        r = yield in_thread(refused)
        self.assertTrue(r["stor"].startswith("522"), r["stor"])
        self.assertTrue(r["list"].startswith("522"), r["list"])
        self.assertTrue(r["noop"].startswith("200"), r["noop"])
        self.assertNotIn("refused.bin", self.keys())
        self.assertEqual(self.gw.inspector.pending_uploads(), [])
        for maximum, version in (
            (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
            (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
        ):
            reusing = yield self.round_trip(ReusingFTPS, maximum, f"reuse{version}")
            self.assertEqual(reusing["data_tls"], [(version, True)] * 3)


# -- how connections end ------------------------------------------------------


def gnutls_style_upload(
    gw: Any, cafile: Path, name: str, data: bytes, version: int
) -> str:
    """
    STOR C{data} over a PROT P data connection ended as lftp (GnuTLS) ends
    it: close_notify sent (one-way shutdown), then the socket closed at
    once without reading what the server sent (under TLS 1.3, its session
    tickets).  The final reply.
    """
    ftp = ftps(gw, cafile)
    secure_login(ftp)
    try:
        raw, _ = ftplib.FTP.ntransfercmd(ftp, f"STOR {name}")
        raw.settimeout(None)  # pyOpenSSL wants a blocking socket; bounded:
        limit = struct.pack("ll", CLIENT_TIMEOUT, 0)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(version)
        context.set_max_proto_version(version)
        context.load_verify_locations(str(cafile))
        context.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: ok)
        conn = SSL.Connection(context, raw)
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(data)
        conn.shutdown()  # close_notify, without waiting for the server's
        raw.close()
        try:
            return ftp.voidresp()
        except ftplib.Error as e:
            return str(e)
    finally:
        ftp.close()


class FTPSConnectionEndTests(FTPSGatewayMixin, unittest.TestCase):
    """How control and data connections over TLS end."""

    def setUp(self) -> Any:
        return self.start("local")

    @defer.inlineCallbacks
    def test_quit_closes_tls_control_connection(self) -> Any:
        """
        After QUIT (221) over an encrypted control connection the gateway
        closes it, as it does in clear: explicit (ftplib) and implicit
        (curl).  Otherwise each FTPS client that says goodbye keeps a
        connection, a max_connections slot and its session until the idle
        timeout.
        """

        def explicit() -> str:
            ftp = ftps(self.gw, self.cert)
            secure_login(ftp)
            return ftp.quit()

        bye = yield in_thread(explicit)
        self.assertTrue(bye.startswith("221"), bye)
        explicit_closed = yield wait_until(
            lambda: self.explicit_factory.connections == 0, 3
        )
        listed = yield in_thread(
            curl,
            "--cacert",
            str(self.cert),
            "-u",
            f"alice:{PASSWORD}",
            "--list-only",
            f"ftps://127.0.0.1:{self.implicit_port}/",
        )
        self.assertEqual(listed.returncode, 0, listed.stderr)
        implicit_closed = yield wait_until(
            lambda: self.implicit_factory.connections == 0, 3
        )
        self.assertEqual(
            {"explicit": explicit_closed, "implicit": implicit_closed},
            {"explicit": True, "implicit": True},
            "control connections still open after QUIT",
        )

    @defer.inlineCallbacks
    def upload_ended_like_gnutls(self, version: int) -> Any:
        """
        Eight uploads ended as GnuTLS ends them, all stored whole (each a
        fresh TLS session: the client here resumes nothing).
        """
        for i in range(8):
            data = random_bytes(300_000)
            name = f"gnutls-{version:x}-{i}.bin"
            final = yield in_thread(
                gnutls_style_upload, self.gw, self.cert, name, data, version
            )
            self.assertTrue(final.startswith("226"), (i, final))
            self.assertEqual(self.stored_sha(name), sha256(data))

    def test_upload_ended_like_gnutls_tls12(self) -> Any:
        return self.upload_ended_like_gnutls(SSL.TLS1_2_VERSION)

    def test_upload_ended_like_gnutls_tls13(self) -> Any:
        """
        Under TLS 1.3 the server's session tickets, sent after the
        handshake, used to wait unread on the data connection of a client
        that never reads it (lftp); its close was then a reset, which could
        destroy the upload's last bytes before the gateway read them (426,
        about one upload in three).  The gateway now holds a data
        connection's tickets until it sends something else there.
        """
        return self.upload_ended_like_gnutls(SSL.TLS1_3_VERSION)
