"""
Several gateway replicas behind a real HAProxy, as docs/scale-out.rst tells
an operator to run them: each replica a C{twistd -n cosftp} of its own over
one bucket of the COS test store, with the same users, the same SSH host
keys (SFTP clients see one host) and the same TLS certificate.

Addresses: HAProxy is the public address, L{PUBLIC} (127.0.0.10); replica
i listens on 127.0.0.(11 + i) on its own FTP, implicit FTPS, SFTP and admin
ports, and its own passive range, which it announces at the public address
(C{masquerade_address}).  HAProxy balances the FTP, FTPS and SFTP ports
round robin over the replicas that answer C{GET /readyz} on their admin
listener, and forwards each replica's passive range to that replica alone
(a frontend per range, the port kept), so that a data connection always
meets the replica that announced it.  Loopback addresses of their own keep
the passive ranges and the public ports from colliding with anything else
on 127.0.0.1.

L{haproxy_config} writes the configuration that L{Cluster} runs and that
docs/scale-out.rst shows.
"""

from __future__ import annotations

import ftplib
import json
import os
import random
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import paramiko

from tests.daemons import HAProxy
from tests.processtesting import TWISTD, Child, free_port, poll, scratch

#: The balancer's address: what clients connect to.
PUBLIC = "127.0.0.10"
#: Passive ranges are taken from here (above Linux's ephemeral ports and
#: away from the other tests' 62000-62999), PASSIVE_SPAN ports a replica
#: unless told otherwise: one port per passive transfer at once.
PASSIVE_BASE, PASSIVE_TOP, PASSIVE_SPAN = 63000, 64999, 10
#: Seconds any one client step may take on a loaded machine.
TIMEOUT = 30
PASSWORD = "cluster-Passw0rd"
USERS = ("alice", "bob")


def replica_host(index: int) -> str:
    return f"127.0.0.{11 + index}"


def free_range(hosts: Sequence[str], span: int) -> int:
    """The first port of C{span} ports free on every one of C{hosts}."""
    for _ in range(50):
        low = random.randrange(PASSIVE_BASE, PASSIVE_TOP - span, span)
        try:
            for host in hosts:
                for port in range(low, low + span):
                    with socket.socket() as s:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        s.bind((host, port))
        except OSError:
            continue
        return low
    raise AssertionError("no free passive range")


def shared_certificate(directory: Path) -> tuple[Path, Path]:
    """One TLS certificate and key for every replica."""
    from cosgw.frontends.ftp.tls import generate_self_signed

    return generate_self_signed(directory / "tls")


@dataclass
class Listeners:
    """The ports of one replica (or of the balancer)."""

    host: str
    ftp: int
    ftps: int
    sftp: int


class Replica:
    """One C{twistd cosftp} of the cluster: its ports, log and admin API."""

    def __init__(self, cluster: Cluster, index: int, passive: tuple[int, int]):
        self.cluster = cluster
        self.index = index
        self.name = "ab"[index] if index < 2 else f"r{index}"
        self.host = replica_host(index)
        self.directory = cluster.directory / f"replica-{self.name}"
        self.directory.mkdir()
        self.ports = Listeners(self.host, free_port(self.host), free_port(self.host), 0)
        self.ports.sftp = free_port(self.host)
        self.admin = free_port(self.host)
        self.passive = passive
        self.config = self.directory / "cosgw.ini"
        self.child: Optional[Child] = None

    def write_config(self) -> None:
        c = self.cluster
        proxy = ":proxy_protocol=yes" if c.proxy_protocol else ""
        keys = ", ".join(str(k) for k in c.host_keys)
        part_size = "" if "part_size" in c.transfer_lines else "part_size = 1M\n"
        users = "".join(
            f"[user:{u}]\npassword = {PASSWORD}\nstorage = cos\npermissions = all\n"
            f"{c.user_lines}\n"
            for u in USERS
        )
        self.config.write_text(
            f"[server]\nstate_dir = {self.directory}/state\n"
            f"ftp_listen = tcp:{self.ports.ftp}:interface={self.host}{proxy}\n"
            f"ftps_listen = tcp:{self.ports.ftps}:interface={self.host}{proxy}\n"
            f"sftp_listen = tcp:{self.ports.sftp}:interface={self.host}{proxy}\n"
            f"admin_listen = tcp:{self.admin}:interface={self.host}\n"
            f"passive_ports = {self.passive[0]}-{self.passive[1]}\n"
            f"masquerade_address = {PUBLIC}\n"
            f"ssh_host_keys = {keys}\n"
            f"tls_certificate = {c.certificate[0]}\ntls_key = {c.certificate[1]}\n"
            "log_format = json\nlogin_failure_delay = 0\n"
            f"{c.server_lines}\n"
            f"[transfer]\n{part_size}{c.transfer_lines}\n"
            f"[storage:cos]\ntype = cos\nbucket = {c.bucket}\n"
            f"region = {c.store.region}\nsecret_id = {c.store.secret_id}\n"
            f"secret_key = {c.store.secret_key}\n"
            f"endpoint = http://127.0.0.1:{c.store.port}\n\n{users}"
        )

    def start(self) -> None:
        self.write_config()
        argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", "cosftp"]
        argv += ["--config", str(self.config)]
        self.child = Child(
            self.cluster.case, argv, self.directory, name=f"twistd-{time.time_ns()}"
        )
        for port in (self.ports.ftp, self.ports.ftps, self.ports.sftp, self.admin):
            self.child.wait_for_port(port, self.host)
        poll(lambda: self.readyz()[0] == 200, TIMEOUT, f"replica {self.name} ready")

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def kill(self) -> None:
        """SIGKILL: the replica dies with whatever it was doing."""
        assert self.child is not None
        os.kill(self.child.pid, signal.SIGKILL)
        self.child.wait()

    def terminate(self) -> None:
        """SIGTERM: the replica drains."""
        assert self.child is not None
        os.kill(self.child.pid, signal.SIGTERM)

    # -- looking at it ---------------------------------------------------------

    def text(self) -> str:
        assert self.child is not None
        return self.child.text()

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines of its log (every start of the replica)."""
        found = []
        for log in sorted(self.directory.glob("twistd-*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    try:
                        found.append(json.loads(line))
                    except ValueError:
                        continue
        return found

    def audit(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def api(self, path: str) -> Any:
        url = f"http://{self.host}:{self.admin}/api/{path}"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            return json.load(answer)

    def sessions(self) -> list[dict[str, Any]]:
        return list(self.api("sessions")["sessions"])

    def transfers(self) -> list[dict[str, Any]]:
        return list(self.api("transfers")["transfers"])

    def readyz(self) -> tuple[int, str]:
        try:
            url = f"http://{self.host}:{self.admin}/readyz"
            with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)


def haproxy_config(
    replicas: Sequence[tuple[str, Listeners, int, tuple[int, int]]],
    public: Listeners,
    proxy_protocol: bool,
    stats_socket: Optional[Path] = None,
    check_interval: str = "500ms",
) -> str:
    """
    HAProxy's configuration for C{replicas}, each (name, its listeners, its
    admin port, its passive range); clients reach C{public}.
    """
    send_proxy = " send-proxy-v2" if proxy_protocol else ""
    stats = (
        f"    stats socket {stats_socket} mode 600 level admin\n"
        if stats_socket
        else ""
    )
    lines = [
        "global",
        "    maxconn 4096",
        stats.rstrip("\n"),
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    # An FTP control connection is quiet while its data flows.",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout check 2s",
        "    # A connection a replica refused goes to another one.",
        "    option redispatch",
        "    retries 2",
        "    # Each replica's /readyz: a draining one is taken out at once.",
        "    option httpchk GET /readyz",
        f"    default-server inter {check_interval} fall 1 rise 1",
        "",
    ]
    for service, port in (
        ("ftp", public.ftp),
        ("ftps", public.ftps),
        ("sftp", public.sftp),
    ):
        lines += [
            f"frontend {service}",
            f"    bind {public.host}:{port}",
            f"    default_backend {service}",
            "",
            f"backend {service}",
            "    balance roundrobin",
        ]
        for name, ports, admin, _passive in replicas:
            lines.append(
                f"    server {name} {ports.host}:{getattr(ports, service)}"
                f" check port {admin}{send_proxy}"
            )
        lines.append("")
    for name, ports, _admin, (low, high) in replicas:
        lines += [
            f"# Replica {name}'s passive range: to {name} alone, the port kept.",
            f"frontend passive_{name}",
            f"    bind {public.host}:{low}-{high}",
            f"    default_backend passive_{name}",
            "",
            f"backend passive_{name}",
            f"    server {name} {ports.host}",
            "",
        ]
    return "\n".join(line for line in lines if line is not None) + "\n"


class ClassCleanups:
    """
    What a test class's shared cluster needs of a test case (C{addCleanup}),
    run at C{tearDownClass}: one cluster for all the class's tests.
    """

    def __init__(self) -> None:
        self._cleanups: list[tuple[Any, tuple[Any, ...]]] = []

    def addCleanup(self, f: Any, *args: Any) -> None:  # noqa: N802 - TestCase's name
        self._cleanups.append((f, args))

    def run(self) -> None:
        while self._cleanups:
            f, args = self._cleanups.pop()
            f(*args)


class Cluster:
    """
    C{count} replicas over a new bucket of the shared COS test store,
    behind HAProxy; everything stopped by the test's (or class's) cleanup.

    @param case: has C{addCleanup} (a test, or a class's cleanup holder).
    """

    def __init__(
        self,
        case: Any,
        count: int = 2,
        proxy_protocol: bool = True,
        server_lines: str = "",
        transfer_lines: str = "",
        user_lines: str = "",
        passive_span: int = PASSIVE_SPAN,
    ) -> None:
        from tests.cosserver import shared_server
        from tests.harness import host_keys

        self.case = case
        self.directory = scratch(case, "cosgw-cluster-")
        self.store = shared_server()
        self.bucket = self.store.create_bucket("c" + uuid.uuid4().hex[:12])
        self.host_keys = host_keys()
        self.certificate = shared_certificate(self.directory)
        self.proxy_protocol = proxy_protocol
        self.server_lines = server_lines
        self.transfer_lines = transfer_lines
        self.user_lines = user_lines
        hosts = [PUBLIC] + [replica_host(i) for i in range(count)]
        span = passive_span
        low = free_range(hosts, span * count)
        self.replicas = [
            Replica(self, i, (low + i * span, low + (i + 1) * span - 1))
            for i in range(count)
        ]
        for replica in self.replicas:
            replica.start()
        self.public = Listeners(
            PUBLIC, free_port(PUBLIC), free_port(PUBLIC), free_port(PUBLIC)
        )
        self.stats_socket = self.directory / "haproxy.sock"
        self.config = haproxy_config(
            [(r.name, r.ports, r.admin, r.passive) for r in self.replicas],
            self.public,
            proxy_protocol,
            self.stats_socket,
            check_interval="200ms",
        )
        self.haproxy = HAProxy(case, self.directory, self.config, [])
        for port in (self.public.ftp, self.public.ftps, self.public.sftp):
            self.haproxy.child.wait_for_port(port, PUBLIC)
        self.wait_states({r.name: "UP" for r in self.replicas})

    @property
    def a(self) -> Replica:
        return self.replicas[0]

    @property
    def b(self) -> Replica:
        return self.replicas[1]

    # -- HAProxy's view ----------------------------------------------------------

    def haproxy_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(TIMEOUT)
            s.connect(str(self.stats_socket))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self, backend: str = "ftp") -> dict[str, str]:
        """Each replica's state in C{backend} as HAProxy sees it (UP, DOWN...)."""
        text = self.haproxy_command("show stat")
        header, *rows = [r for r in text.splitlines() if r]
        names = header.lstrip("# ").split(",")
        found = {}
        for row in rows:
            values = dict(zip(names, row.split(",")))
            if values["pxname"] == backend and values["svname"] not in (
                "FRONTEND",
                "BACKEND",
            ):
                found[values["svname"]] = values["status"].split(" ")[0]
        return found

    def wait_states(self, wanted: dict[str, str], backend: str = "ftp") -> None:
        def seen() -> bool:
            try:
                states = self.states(backend)
            except OSError:  # its stats socket is not there yet
                return self.haproxy.child.running() and False
            return all(states.get(k) == v for k, v in wanted.items())

        try:
            poll(seen, TIMEOUT, f"HAProxy sees {wanted} in {backend}")
        except AssertionError as e:
            raise AssertionError(f"{e}:\n{self.haproxy.child.text()}") from None

    # -- clients through the balancer ----------------------------------------------

    def ftp(
        self, user: str = "alice", source: Optional[str] = None, tls: bool = False
    ) -> ftplib.FTP:
        """An ftplib session through HAProxy, logged in, binary mode."""
        address = (source, 0) if source else None
        ftp: ftplib.FTP
        if tls:
            ftp = ImplicitFTPS()
            ftp.connect(PUBLIC, self.public.ftps, TIMEOUT, address)
        else:
            ftp = ftplib.FTP()
            ftp.connect(PUBLIC, self.public.ftp, TIMEOUT, address)
        ftp.login(user, PASSWORD)
        if tls:
            assert isinstance(ftp, ImplicitFTPS)
            ftp.prot_p()
        ftp.voidcmd("TYPE I")
        return ftp

    def sftp(
        self, user: str = "alice", source: Optional[str] = None
    ) -> paramiko.SFTPClient:
        """A paramiko SFTP session through HAProxy (from C{source})."""
        sock = socket.create_connection(
            (PUBLIC, self.public.sftp), TIMEOUT, (source, 0) if source else None
        )
        transport = paramiko.Transport(sock)
        transport.banner_timeout = transport.auth_timeout = TIMEOUT
        transport.connect(username=user, password=PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        sftp.get_channel().settimeout(TIMEOUT)
        return sftp

    def stored(self, key: str) -> bytes:
        return self.store.get_bytes(self.bucket, key)

    def pending(self) -> list[tuple[str, str]]:
        return self.store.pending_uploads(self.bucket)


def end_sftp(sftp: paramiko.SFTPClient) -> None:
    """Close an SFTP session and its SSH connection."""
    transport = sftp.get_channel().get_transport()
    sftp.close()
    transport.close()


class ImplicitFTPS(ftplib.FTP_TLS):
    """ftplib's FTP_TLS for implicit FTPS: TLS from the first byte."""

    def __init__(self) -> None:
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        super().__init__(context=context)

    def connect(  # type: ignore[override]
        self,
        host: str,
        port: int,
        timeout: float,
        source_address: Optional[tuple[str, int]] = None,
    ) -> str:
        self.host, self.port, self.timeout = host, port, timeout
        self.source_address = source_address
        raw = socket.create_connection((host, port), timeout, source_address)
        self.af = raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome
