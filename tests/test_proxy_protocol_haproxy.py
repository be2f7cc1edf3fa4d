"""
A real HAProxy (Debian's C{haproxy}) with C{send-proxy-v2} in front of an
in-process gateway: FTP (PASV straight to the gateway, announced with
C{masquerade_address}), implicit FTPS and SFTP (paramiko and OpenSSH's
C{sftp}).

Three loopback addresses keep the parties apart: clients connect from
127.0.0.5 (denied) or 127.0.0.6, HAProxy listens on 127.0.0.2 and connects
to the gateway from 127.0.0.3 (C{source}), the only trusted network.  So a
rule, limit or audit event that saw HAProxy's address would say 127.0.0.3,
and a client at 127.0.0.5 would pass the deny rule.  HAProxy's health
checks (C{tcp-check expect}, which with C{send-proxy-v2} send a C{LOCAL}
header) must see the FTP greeting and the SSH version line for the servers
to be UP.  The headers carry TLVs too (C{proxy-v2-options}: a unique id,
the CRC-32C, the TLS facts of the client's connection), as a site that
logs HAProxy's request ids sends them.
"""

from __future__ import annotations

import ftplib
import io
import os
import socket
import ssl
import subprocess
from typing import Any

import paramiko
from twisted.internet import defer

from cosgw.frontends.ftp.tls import generate_self_signed
from tests.daemons import HAProxy
from tests.harness import PASSWORD, in_thread
from tests.logevents import LogEvents
from tests.processtesting import free_port, poll, scratch
from tests.sshtesting import password_env
from tests.test_audit_protocols import BOUND, GatewayCase, plain_user, reply, until

PUBLIC = "127.0.0.2"
HAPROXY_SOURCE = "127.0.0.3"
DENIED = "127.0.0.5"
CLIENT = "127.0.0.6"


def haproxy_config(ports: dict[str, int], servers: dict[str, int], sock: str) -> str:
    """
    HAProxy in front of one gateway: a frontend on C{PUBLIC} per service
    (C{ports}), a backend to the gateway's port (C{servers}) with the
    PROXY header v2, from C{HAPROXY_SOURCE}.
    """
    checks = {
        "ftp": ["    option tcp-check", "    tcp-check expect string 220"],
        "sftp": ["    option tcp-check", "    tcp-check expect string SSH-2.0-"],
        "ftps": [],
    }
    lines = [
        "global",
        "    maxconn 256",
        f"    stats socket {sock} mode 600 level admin",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout check 2s",
        "    unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid",
        "",
    ]
    for name, port in ports.items():
        check = " check inter 500ms rise 1" if checks[name] else ""
        lines += [
            f"frontend {name}",
            f"    bind {PUBLIC}:{port}",
            f"    default_backend {name}",
            "",
            f"backend {name}",
            *checks[name],
            f"    server gw 127.0.0.1:{servers[name]} source {HAPROXY_SOURCE}"
            f" send-proxy-v2 proxy-v2-options unique-id,crc32c,ssl,authority{check}",
            "",
        ]
    return "\n".join(lines)


def server_states(sock: str) -> dict[str, str]:
    """
    Each backend's server status (UP, DOWN, ...) from the stats socket;
    none while HAProxy has not made its socket yet.
    """
    text = b""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(BOUND)
        try:
            s.connect(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            return {}
        s.sendall(b"show stat\n")
        while chunk := s.recv(65536):
            text += chunk
    states = {}
    for line in text.decode().splitlines():
        fields = line.split(",")
        if len(fields) > 17 and fields[1] == "gw":
            states[fields[0]] = fields[17]
    return states


class HAProxyTests(GatewayCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        directory = scratch(self, "cosgw-haproxy-")
        self.cert, key = generate_self_signed(directory)
        gw = yield self.start(
            users={"alice": plain_user("alice")},
            ftp_listen=("tcp:0:interface=127.0.0.1",),
            sftp_listen=("tcp:0:interface=127.0.0.1",),
            ftps_listen=("tcp:0:interface=127.0.0.1",),
            proxy_protocol=True,
            proxy_trusted_networks=(f"{HAPROXY_SOURCE}/32",),
            denied_networks=(f"{DENIED}/32",),
            masquerade_address="127.0.0.1",
            tls_certificate=self.cert,
            tls_key=key,
        )
        implicit = yield gw.service.ftp.implicit_listeners[0].listening
        servers = {
            "ftp": gw.port,
            "sftp": gw.sftp_port,
            "ftps": implicit.getHost().port,
        }
        self.public = {name: free_port(PUBLIC) for name in servers}
        sock = str(directory / "haproxy.sock")
        config = haproxy_config(self.public, servers, sock)
        self.haproxy = HAProxy(self, directory, config, [])
        self.limits_log = LogEvents(self, "cosgw.policy.limits")
        self.proxy_log = LogEvents(self, "cosgw.frontends.proxy")
        # The checks pass only if the LOCAL headers are taken as the
        # balancer's own connections and served.
        states: dict[str, str] = {}

        def up() -> bool:
            states.update(server_states(sock))
            return states.get("ftp") == states.get("sftp") == "UP"

        try:
            yield in_thread(poll, up, 10, "HAProxy's checks of the gateway UP")
        except AssertionError:
            raise AssertionError(f"{states}\n{self.haproxy.child.text()}") from None

    def client_events(self, ip: str, *names: str) -> list[dict]:
        return [e for e in self.audit.events(*names) if e["client_ip"] == ip]

    @defer.inlineCallbacks
    def test_ftp_and_implicit_ftps(self) -> Any:
        """
        ftplib from 127.0.0.6 through HAProxy: the session, login and
        transfers are 127.0.0.6's (its own port too), PASV's data
        connection goes straight to the gateway; implicit FTPS likewise,
        HAProxy's header in clear before the ClientHello.
        """
        data = os.urandom(300_000)

        def plain() -> tuple[int, bytes]:
            ftp = ftplib.FTP(timeout=BOUND, source_address=(CLIENT, 0))
            ftp.trust_server_pasv_ipv4_address = True  # masquerade_address
            ftp.connect(PUBLIC, self.public["ftp"])
            port = ftp.sock.getsockname()[1]
            ftp.login("alice", PASSWORD)
            ftp.voidcmd("TYPE I")
            ftp.storbinary("STOR h.bin", io.BytesIO(data))
            got = io.BytesIO()
            ftp.retrbinary("RETR h.bin", got.write)
            ftp.quit()
            return port, got.getvalue()

        def implicit() -> tuple[int, bytes]:
            context = ssl.create_default_context(cafile=str(self.cert))
            raw = socket.create_connection(
                (PUBLIC, self.public["ftps"]), BOUND, (CLIENT, 0)
            )
            port = raw.getsockname()[1]
            ftp = ftplib.FTP_TLS(context=context, timeout=BOUND)
            ftp.trust_server_pasv_ipv4_address = True
            ftp.source_address = (CLIENT, 0)
            # The name the certificate has, for the data connections too.
            ftp.host, ftp.port = "localhost", self.public["ftps"]
            ftp.sock = context.wrap_socket(raw, server_hostname="localhost")
            ftp.af = ftp.sock.family
            ftp.file = ftp.sock.makefile("r", encoding=ftp.encoding)
            ftp.welcome = ftp.getresp()
            ftp.login("alice", PASSWORD)
            ftp.prot_p()
            got = io.BytesIO()
            ftp.retrbinary("RETR h.bin", got.write)
            ftp.quit()
            return port, got.getvalue()

        port, got = yield in_thread(plain)
        self.assertEqual(got, data)
        tls_port, got = yield in_thread(implicit)
        self.assertEqual(got, data)
        yield until(
            lambda: len(self.client_events(CLIENT, "session-close")) == 2, "closes"
        )
        for client_port, expected in (
            (port, ["session-open", "login", "upload", "download", "session-close"]),
            (tls_port, ["session-open", "login", "download", "session-close"]),
        ):
            [opened] = [
                e
                for e in self.client_events(CLIENT, "session-open")
                if e["client_port"] == client_port
            ]
            events = self.audit.events(session=opened["session"])
            self.assertEqual([e["event"] for e in events], expected)
            self.assertEqual({e["client_ip"] for e in events}, {CLIENT})
        self.assertEqual(self.client_events(HAPROXY_SOURCE, "login"), [])

    @defer.inlineCallbacks
    def test_denied_client(self) -> Any:
        """
        127.0.0.5 is denied: through HAProxy (at 127.0.0.3, allowed) its
        FTP connection gets 421 and its SSH connection a disconnect, and
        both refusals name 127.0.0.5.
        """

        def run() -> tuple[str, str]:
            ftp = ftplib.FTP(timeout=BOUND, source_address=(DENIED, 0))
            said = reply(ftp.connect, PUBLIC, self.public["ftp"])
            ftp.close()
            sock = socket.create_connection(
                (PUBLIC, self.public["sftp"]), BOUND, (DENIED, 0)
            )
            t = paramiko.Transport(sock)
            try:
                t.start_client(timeout=BOUND)
                t.auth_password("alice", PASSWORD)
                ssh = "logged in"
            except (paramiko.SSHException, EOFError) as e:
                ssh = type(e).__name__
            finally:
                t.close()
                sock.close()
            return said, ssh

        said, ssh = yield in_thread(run)
        self.assertTrue(said.startswith("421"), said)
        self.assertNotEqual(ssh, "logged in")
        refused = [
            e["ip"] for e in self.limits_log.events if "refused" in e["log_format"]
        ]
        self.assertEqual(refused, [DENIED, DENIED])
        self.assertEqual(self.client_events(DENIED, "session-open"), [])

    @defer.inlineCallbacks
    def test_openssh_sftp(self) -> Any:
        """OpenSSH's sftp from 127.0.0.6 through HAProxy: its own address."""
        work = scratch(self)
        (work / "up.bin").write_bytes(b"openssh via haproxy" * 1000)
        batch = work / "batch"
        batch.write_text("put up.bin o.bin\nget o.bin back.bin\n")
        options = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no"]
        options += ["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=no"]
        options += ["-o", "PreferredAuthentications=password"]
        options += ["-o", f"BindAddress={CLIENT}", "-P", str(self.public["sftp"])]
        done = yield in_thread(
            subprocess.run,
            ["sftp", *options, "-b", str(batch), f"alice@{PUBLIC}"],
            cwd=work,
            capture_output=True,
            timeout=BOUND,
            env=password_env(work, PASSWORD),
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(
            (work / "back.bin").read_bytes(), b"openssh via haproxy" * 1000
        )
        yield until(lambda: self.client_events(CLIENT, "session-close"), "close")
        [opened] = self.client_events(CLIENT, "session-open")
        events = self.audit.events(session=opened["session"])
        self.assertEqual(
            [(e["event"], e["protocol"]) for e in events],
            [
                ("session-open", "sftp"),
                ("login", "sftp"),
                ("upload", "sftp"),
                ("download", "sftp"),
                ("session-close", "sftp"),
            ],
        )
        self.assertEqual({e["client_ip"] for e in events}, {CLIENT})

    @defer.inlineCallbacks
    def test_direct_connection_untrusted(self) -> Any:
        """
        Past HAProxy, straight to the gateway from 127.0.0.1 (not trusted),
        with a header claiming anything: refused, logged with 127.0.0.1.
        """
        header = b"PROXY TCP4 127.0.0.6 127.0.0.1 1 21\r\n"

        def run() -> bytes:
            with socket.create_connection(("127.0.0.1", self.gw.port), BOUND) as s:
                s.sendall(header)
                return s.recv(100)

        said = yield in_thread(run)
        self.assertEqual(said, b"")
        [line] = [e for e in self.proxy_log.events if "trusted" in e["log_format"]]
        self.assertEqual(line["peer"], "127.0.0.1")
