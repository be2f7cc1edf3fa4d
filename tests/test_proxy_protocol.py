"""
PROXY protocol listeners end to end: real clients (ftplib plain, AUTH TLS
and implicit FTPS, paramiko) over loopback sockets that write their own v1
or v2 header first, as HAProxy would, to an in-process gateway.

The client address in the header is the one the network rules, the
per-address limit, the user's network rule, the audit events, the xferlog
line and the PORT check see; data connections may come from the balancer
(here the test itself, at 127.0.0.1); a peer outside
C{proxy_trusted_networks}, a missing header and a client speaking its own
protocol at once are refused and logged with the real peer.
"""

from __future__ import annotations

import base64
import ftplib
import http.client
import io
import socket
import ssl
from collections.abc import Callable
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from cosgw.audit.events import audit_fields
from cosgw.frontends.ftp.tls import generate_self_signed
from cosgw.logs import xferlog_line
from tests.harness import PASSWORD, in_thread
from tests.logevents import LogEvents
from tests.processtesting import scratch
from tests.proxytesting import (
    ProxiedFTP,
    ProxiedFTPTLS,
    ProxiedImplicitFTPS,
    proxied,
    proxied_socket,
    v1_header,
    v2_header,
)
from tests.test_audit_protocols import BOUND, GatewayCase, plain_user, reply, until

DENIED = "203.0.113.5"
CLIENT = "198.51.100.7"


def sftp_put(port: int, header: bytes, data: bytes, user: str = "alice") -> bytes:
    """Log in over SFTP after C{header}, upload C{data}, read it back."""
    sock = proxied_socket(port, header)
    t = paramiko.Transport(sock)
    try:
        t.start_client(timeout=BOUND)
        t.auth_password(user, PASSWORD, fallback=False)
        sftp = paramiko.SFTPClient.from_transport(t)
        assert sftp is not None
        sftp.putfo(io.BytesIO(data), "s.bin")
        return sftp.open("s.bin").read()
    finally:
        t.close()
        sock.close()


def closed_by_server(sock: socket.socket) -> bytes:
    """What the server sent before it closed the connection (reset or not)."""
    sock.settimeout(BOUND)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received


class Transfers:
    """The xferlog lines of the test's transfers, as the file would get them."""

    def __init__(self, case: Any) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        case.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        fields = audit_fields(event)
        line = fields and xferlog_line(fields, event["log_time"])
        if line:
            self.lines.append(line)


class ProxyCase(GatewayCase):
    @defer.inlineCallbacks
    def start_proxied(self, **overrides: Any) -> Any:
        """
        FTP with C{proxy_protocol=yes}, SFTP with C{haproxy:}, implicit FTPS
        by the server key; 203.0.113.0/24 denied, two connections per
        address; walled may not log in from 192.0.2.0/24.
        """
        self.cert, key = generate_self_signed(scratch(self))
        settings: dict[str, Any] = {
            "users": {
                "alice": plain_user("alice"),
                "walled": plain_user("walled", denied_networks=("192.0.2.0/24",)),
            },
            "ftp_listen": ("tcp:0:interface=127.0.0.1:proxy_protocol=yes",),
            "sftp_listen": ("haproxy:tcp:0:interface=127.0.0.1",),
            "ftps_listen": ("tcp:0:interface=127.0.0.1",),
            "proxy_protocol": True,
            "denied_networks": ("203.0.113.0/24",),
            "max_connections_per_ip": 2,
            "login_timeout": 2,
            "tls_certificate": self.cert,
            "tls_key": key,
            **overrides,
        }
        gw = yield self.start(**settings)
        listener = gw.service.ftp.implicit_listeners[0]
        self.implicit_port = (yield listener.listening).getHost().port
        self.context = ssl.create_default_context(cafile=str(self.cert))
        self.limits_log = LogEvents(self, "cosgw.policy.limits")
        self.proxy_log = LogEvents(self, "cosgw.frontends.proxy")
        return gw

    def refused_ips(self) -> list[str]:
        return [
            e["ip"]
            for e in self.limits_log.events
            if e["log_format"].startswith("Connection from")
        ]

    def proxy_warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.proxy_log.at(LogLevel.warn)]

    def session_of(self, ip: str) -> list[dict]:
        [opened] = [
            e for e in self.audit.events("session-open") if e["client_ip"] == ip
        ]
        return self.audit.events(session=opened["session"])


class FTPTests(ProxyCase):
    @defer.inlineCallbacks
    def test_denied_address_from_header(self) -> Any:
        """
        PROXY TCP4 203.0.113.5 from 127.0.0.1: the denied network refuses it
        (421), and the refusal names 203.0.113.5; the same client without
        a header is no client at all.
        """
        gw = yield self.start_proxied()
        header = v1_header((DENIED, 40001), ("127.0.0.1", gw.port))

        def run() -> str:
            ftp = proxied(ProxiedFTP, header, timeout=BOUND)
            try:
                return reply(ftp.connect, gw.host, gw.port)
            finally:
                ftp.close()

        said = yield in_thread(run)
        self.assertTrue(said.startswith("421"), said)
        self.assertEqual(self.refused_ips(), [DENIED])
        self.assertEqual(self.audit.events("session-open"), [])

    @defer.inlineCallbacks
    def test_user_network_rule_sees_header(self) -> Any:
        """walled may not log in from 192.0.2.0/24: refused as 192.0.2.9."""
        gw = yield self.start_proxied()
        header = v2_header(("192.0.2.9", 5555), ("127.0.0.1", gw.port))

        def run() -> str:
            ftp = proxied(ProxiedFTP, header, timeout=BOUND)
            ftp.connect(gw.host, gw.port)
            try:
                return reply(ftp.login, "walled", PASSWORD)
            finally:
                ftp.close()

        said = yield in_thread(run)
        self.assertEqual(said, "421 user walled may not log in from this address")
        yield until(lambda: self.audit.events("session-close"), "session-close")
        events = self.session_of("192.0.2.9")
        self.check(
            events,
            "event client_ip client_port",
            [
                ("session-open", "192.0.2.9", 5555),
                ("login-failed", "192.0.2.9", 5555),
                ("session-close", "192.0.2.9", 5555),
            ],
        )

    @defer.inlineCallbacks
    def test_transfers_audited_as_header_client(self) -> Any:
        """
        A v2 client at 198.51.100.7: its session, login, passive transfers
        (the data connection from the balancer's 127.0.0.1) and xferlog
        line carry 198.51.100.7; a PORT to 127.0.0.1, not the client's
        address, is refused.
        """
        gw = yield self.start_proxied()
        transfers = Transfers(self)
        header = v2_header((CLIENT, 40002), ("127.0.0.1", gw.port))
        data = b"through the balancer\n" * 500

        def run() -> tuple[bytes, str]:
            ftp = proxied(ProxiedFTP, header, timeout=BOUND)
            ftp.connect(gw.host, gw.port)
            ftp.login("alice", PASSWORD)
            ftp.voidcmd("TYPE I")
            ftp.storbinary("STOR p.bin", io.BytesIO(data))
            got = io.BytesIO()
            ftp.retrbinary("RETR p.bin", got.write)
            port = reply(ftp.sendcmd, "PORT 127,0,0,1,200,10")
            ftp.quit()
            return got.getvalue(), port

        got, port = yield in_thread(run)
        self.assertEqual(got, data)
        self.assertTrue(port.startswith("504"), port)
        self.assertEqual(gw.inspector.read("p.bin"), data)
        yield until(lambda: self.audit.events("session-close"), "session-close")
        events = self.session_of(CLIENT)
        self.assertEqual(
            [e["event"] for e in events],
            ["session-open", "login", "upload", "download", "session-close"],
        )
        self.assertEqual(
            {(e["client_ip"], e["client_port"]) for e in events}, {(CLIENT, 40002)}
        )
        hosts = [line.split()[6] for line in transfers.lines]
        self.assertEqual(hosts, [CLIENT, CLIENT])

    @defer.inlineCallbacks
    def test_active_mode_goes_to_header_client(self) -> Any:
        """PORT to the header's client (127.0.0.2): the gateway connects there."""
        gw = yield self.start_proxied()
        header = v1_header(("127.0.0.2", 40003), ("127.0.0.1", gw.port))

        def run() -> bytes:
            ftp = proxied(ProxiedFTP, header, timeout=BOUND)
            ftp.connect(gw.host, gw.port)
            ftp.login("alice", PASSWORD)
            ftp.voidcmd("TYPE I")
            ftp.storbinary("STOR a.bin", io.BytesIO(b"active" * 100))
            with socket.create_server(("127.0.0.2", 0)) as server:
                server.settimeout(BOUND)
                p = server.getsockname()[1]
                ftp.voidcmd(f"PORT 127,0,0,2,{p >> 8},{p & 0xFF}")
                ftp.sendcmd("RETR a.bin")
                conn, _ = server.accept()
                got = closed_by_server(conn)
            ftp.voidresp()
            ftp.quit()
            return got

        got = yield in_thread(run)
        self.assertEqual(got, b"active" * 100)

    @defer.inlineCallbacks
    def test_per_address_limit_counts_header_address(self) -> Any:
        """
        Two connections per address: a third from 198.51.100.9 is refused,
        one from 198.51.100.10 is not, all from 127.0.0.1.
        """
        gw = yield self.start_proxied()

        def greet(host: str) -> tuple[str, Any]:
            ftp = proxied(ProxiedFTP, v1_header((host, 1000), ("127.0.0.1", 21)))
            ftp.timeout = BOUND
            return reply(ftp.connect, gw.host, gw.port), ftp

        def run() -> list[str]:
            clients = [greet(h) for h in ["198.51.100.9"] * 3 + ["198.51.100.10"]]
            for _, ftp in clients:
                ftp.close()
            return [said[:3] for said, _ in clients]

        codes = yield in_thread(run)
        self.assertEqual(codes, ["220", "220", "421", "220"])
        self.assertEqual(self.refused_ips(), ["198.51.100.9"])

    @defer.inlineCallbacks
    def test_local_health_check_is_the_balancer(self) -> Any:
        """v2 LOCAL (HAProxy's check): served as 127.0.0.1, the real peer."""
        gw = yield self.start_proxied()

        def run() -> tuple[str, int]:
            ftp = proxied(ProxiedFTP, v2_header(None), timeout=BOUND)
            said = ftp.connect(gw.host, gw.port)
            port = ftp.sock.getsockname()[1]
            ftp.quit()
            return said, port

        said, port = yield in_thread(run)
        self.assertTrue(said.startswith("220"), said)
        yield until(lambda: self.audit.events("session-close"), "session-close")
        [opened] = self.audit.events("session-open")
        self.assertEqual(
            (opened["client_ip"], opened["client_port"]), ("127.0.0.1", port)
        )

    @defer.inlineCallbacks
    def test_explicit_and_implicit_ftps(self) -> Any:
        """
        AUTH TLS after the header, and implicit FTPS with the header in
        clear before the ClientHello: both log in as the header's client.
        """
        gw = yield self.start_proxied()

        def run(cls: type, port: int, host: str) -> bytes:
            header = v1_header((host, 41000), ("127.0.0.1", port))
            ftp = proxied(cls, header, context=self.context, timeout=BOUND)
            ftp.connect(gw.host, port)
            if cls is ProxiedFTPTLS:
                ftp.auth()
            ftp.login("alice", PASSWORD)
            ftp.prot_p()
            ftp.storbinary("STOR s.bin", io.BytesIO(b"secret" * 100))
            got = io.BytesIO()
            ftp.retrbinary("RETR s.bin", got.write)
            ftp.quit()
            return got.getvalue()

        got = yield in_thread(run, ProxiedFTPTLS, gw.port, "198.51.100.21")
        self.assertEqual(got, b"secret" * 100)
        got = yield in_thread(
            run, ProxiedImplicitFTPS, self.implicit_port, "198.51.100.22"
        )
        self.assertEqual(got, b"secret" * 100)
        yield until(lambda: len(self.audit.events("session-close")) == 2, "closes")
        for host, protocols in (
            ("198.51.100.21", {"ftp", "ftps"}),
            ("198.51.100.22", {"ftps"}),
        ):
            events = self.session_of(host)
            self.assertEqual({e["protocol"] for e in events}, protocols)
            self.assertIn("upload", [e["event"] for e in events])


class SFTPTests(ProxyCase):
    @defer.inlineCallbacks
    def test_sftp_as_header_client(self) -> Any:
        """An IPv6 client in a v2 header: its session, login and upload."""
        gw = yield self.start_proxied()
        header = v2_header(("2001:db8::5", 41001), ("::1", 22))
        got = yield in_thread(sftp_put, gw.sftp_port, header, b"sftp bytes" * 99)
        self.assertEqual(got, b"sftp bytes" * 99)
        yield until(lambda: self.audit.events("session-close"), "session-close")
        events = self.session_of("2001:db8::5")
        self.assertIn("upload", [e["event"] for e in events])
        self.assertEqual({e["client_port"] for e in events}, {41001})

    @defer.inlineCallbacks
    def test_sftp_denied_address_from_header(self) -> Any:
        gw = yield self.start_proxied()
        header = v1_header((DENIED, 40001), ("127.0.0.1", 22))
        failed = yield in_thread(self.fails, sftp_put, gw.sftp_port, header, b"x")
        self.assertIsInstance(failed, paramiko.SSHException)
        self.assertEqual(self.refused_ips(), [DENIED])

    @staticmethod
    def fails(f: Callable[..., Any], *args: Any) -> BaseException:
        try:
            f(*args)
        except Exception as e:
            return e
        raise AssertionError(f"{f.__name__} succeeded")


class RefusedTests(ProxyCase):
    @defer.inlineCallbacks
    def test_no_header(self) -> Any:
        """
        Straight to the listeners: an SSH client (its version line) and a
        TLS client (its ClientHello) are refused at once, an FTP client
        waiting for a greeting after the header deadline; nothing written,
        one log line each with the real peer.
        """
        gw = yield self.start_proxied()

        def run() -> list[Any]:
            ftp = socket.create_connection((gw.host, gw.port), BOUND)
            ssh = socket.create_connection((gw.host, gw.sftp_port), BOUND)
            ssh.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            tls = self.context.wrap_socket(
                socket.create_connection((gw.host, self.implicit_port), BOUND),
                server_hostname="localhost",
                do_handshake_on_connect=False,
            )
            try:
                tls.do_handshake()
                handshake = "done"
            except (ssl.SSLError, OSError) as e:
                handshake = type(e).__name__
            return [closed_by_server(ssh), handshake, closed_by_server(ftp)]

        ssh, handshake, ftp = yield in_thread(run)
        self.assertEqual((ssh, ftp), (b"", b""))
        self.assertNotEqual(handshake, "done")
        lines = self.proxy_warnings()
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(all("from 127.0.0.1: " in line for line in lines), lines)
        self.assertEqual(
            sum("no PROXY header within 2.0 s" in line for line in lines), 1
        )
        self.assertEqual(sum("starts b'SSH-2.0" in line for line in lines), 1)
        self.assertEqual(sum("starts b'\\x16\\x03" in line for line in lines), 1)
        self.assertEqual(self.audit.events("session-open"), [])
        self.assertEqual(gw.service.limits.total, 0)

    @defer.inlineCallbacks
    def test_untrusted_peer(self) -> Any:
        """Only 192.0.2.0/24 is trusted: a good header from 127.0.0.1 is not."""
        gw = yield self.start_proxied(proxy_trusted_networks=("192.0.2.0/24",))

        def run() -> bytes:
            sock = proxied_socket(gw.port, v1_header((CLIENT, 1), ("127.0.0.1", 21)))
            return closed_by_server(sock)

        said = yield in_thread(run)
        self.assertEqual(said, b"")
        [line] = self.proxy_warnings()
        self.assertIn("127.0.0.1: not in proxy_trusted_networks", line)
        self.assertEqual(self.audit.events("session-open"), [])

    @defer.inlineCallbacks
    def test_garbage_header(self) -> Any:
        gw = yield self.start_proxied()

        def run() -> bytes:
            sock = proxied_socket(gw.port, b"PROXY TCP4 198.51.100.300 1.2.3.4 1 2\r\n")
            return closed_by_server(sock)

        said = yield in_thread(run)
        self.assertEqual(said, b"")
        [line] = self.proxy_warnings()
        self.assertIn("is not an IPv4 address", line)

    @defer.inlineCallbacks
    def test_direct_listener_unchanged(self) -> Any:
        """proxy_protocol=no wins over the server key: no header expected."""
        gw = yield self.start_proxied(
            ftp_listen=("tcp:0:interface=127.0.0.1:proxy_protocol=no",)
        )

        def run() -> str:
            ftp = ftplib.FTP(timeout=BOUND)
            said = ftp.connect(gw.host, gw.port)
            ftp.login("alice", PASSWORD)
            ftp.quit()
            return said

        said = yield in_thread(run)
        self.assertTrue(said.startswith("220"), said)
        self.assertFalse(gw.service.ftp.listeners[0].proxied)
        self.assertTrue(gw.service.ftp.implicit_listeners[0].proxied)


class WebDAVTests(ProxyCase):
    @defer.inlineCallbacks
    def test_webdav_plain_and_tls_as_header_client(self) -> Any:
        """
        WebDAV behind the balancer: a plain listener and an C{ssl:} one with
        its own key, both C{proxy_protocol=yes}.  The header comes first, in
        clear, before the TLS handshake (as HAProxy sends it); the PUT is
        stored and the session audited as the header's client.
        """
        cert, key = generate_self_signed(scratch(self))
        gw = yield self.start_proxied(
            webdav_listen=(
                "tcp:0:interface=127.0.0.1:proxy_protocol=yes",
                f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
                ":proxy_protocol=yes",
            ),
            webdav_allow_plain_auth=True,
        )
        ports = []
        for listener in gw.service.webdav.listeners:
            ports.append((yield listener.listening).getHost().port)
        auth = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()

        def put(port: int, client_port: int, tls: bool) -> int:
            header = v2_header((CLIENT, client_port), ("127.0.0.1", port))
            sock = proxied_socket(port, header)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
            if tls:
                context = ssl.create_default_context(cafile=str(cert))
                sock = context.wrap_socket(sock, server_hostname="localhost")
            connection.sock = sock
            body = f"dav {client_port}".encode()
            connection.request(
                "PUT", f"/d{client_port}.txt", body, {"Authorization": auth}
            )
            status = connection.getresponse().status
            connection.close()
            return status

        plain = yield in_thread(put, ports[0], 40011, False)
        secure = yield in_thread(put, ports[1], 40012, True)
        self.assertEqual((plain, secure), (201, 201))
        self.assertEqual(gw.inspector.read("d40011.txt"), b"dav 40011")
        self.assertEqual(gw.inspector.read("d40012.txt"), b"dav 40012")
        uploads = self.audit.events("upload")
        self.assertEqual(
            sorted((e["client_ip"], e["client_port"]) for e in uploads),
            [(CLIENT, 40011), (CLIENT, 40012)],
        )
