"""
A gateway with a WebDAV listener for a test, and the clients that talk to
it: http.client (in a thread), curl, rclone and litmus (subprocesses).
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import subprocess
from pathlib import Path
from typing import Any, Optional

from twisted.internet import defer
from twisted.trial import unittest

from tests.harness import PASSWORD, Gateway, in_thread, start_gateway
from tests.logevents import LogEvents
from tests.processtesting import scratch
from tests.test_audit_protocols import until

#: Seconds any one client call may take.
BOUND = 60.0


class Reply:
    """One HTTP response, read whole."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class DAVClient:
    """Requests on one keep-alive connection, each run in a thread."""

    def __init__(self, port: int, user: str = "alice", password: str = PASSWORD):
        self.port = port
        self.auth: Optional[str] = basic(user, password) if user else None
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)

    def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> Reply:
        sent = dict(headers)
        if self.auth is not None:
            sent.setdefault("Authorization", self.auth)
        self.connection.request(method, path, body=body or None, headers=sent)
        response = self.connection.getresponse()
        data = response.read()
        if response.will_close:
            self.connection.close()
        # Its headers as a message: names compared without case.
        return Reply(response.status, response.msg, data)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Optional[dict[str, str]] = None,
    ) -> defer.Deferred[Reply]:
        return in_thread(self._request, method, path, body, headers or {})

    def close(self) -> None:
        self.connection.close()

    @property
    def local_port(self) -> int:
        sock = self.connection.sock
        return int(sock.getsockname()[1]) if sock is not None else 0


class Raw:
    """
    One socket speaking HTTP by hand, for what http.client cannot send or
    wait for (Expect: 100-continue, bodies cut short, broken headers);
    every call blocks: run it with C{in_thread}.
    """

    def __init__(self, port: int, sock: Optional[socket.socket] = None) -> None:
        self.sock = sock or socket.create_connection(("127.0.0.1", port), BOUND)
        self.sock.settimeout(BOUND)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_head(self) -> bytes:
        """The next response's status line and headers (up to the blank line)."""
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed after {self.buffer!r}")
            self.buffer += data
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return head

    def read_to_close(self) -> bytes:
        """Everything until the gateway closes the connection."""
        while True:
            data = self.sock.recv(65536)
            if not data:
                out, self.buffer = self.buffer, b""
                return out
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


def head_request(
    method: str, path: str, headers: Optional[dict[str, str]] = None
) -> bytes:
    """A request's line and headers, as bytes (the body is sent apart)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def header_of(head: bytes, name: str) -> Optional[str]:
    """One header of a response head, or None."""
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


class DAVCase(unittest.TestCase):
    """A test with a gateway whose WebDAV listens on 127.0.0.1."""

    timeout = 180

    @defer.inlineCallbacks
    def start(self, kind: str = "local", **overrides: Any) -> Any:
        overrides.setdefault("webdav_listen", ("tcp:0:interface=127.0.0.1",))
        overrides.setdefault("sftp_listen", ())
        self.gw: Gateway = yield start_gateway(self, kind, **overrides)
        webdav = self.gw.service.webdav
        assert webdav is not None
        ports = []
        for listener in webdav.listeners:
            port = yield listener.listening
            ports.append(port.getHost().port)
        self.ports = ports
        self.port = ports[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.work = scratch(self, "cosgw-dav-")
        self.audit = LogEvents(self, "cosgw.audit")
        self.addCleanup(
            until, lambda: self.gw.service.limits.total == 0, "connections closed"
        )
        return self.gw

    def client(self, user: str = "alice", password: str = PASSWORD) -> DAVClient:
        c = DAVClient(self.port, user, password)
        self.addCleanup(c.close)
        return c

    def raw(self) -> Raw:
        connection = Raw(self.port)
        self.addCleanup(connection.close)
        return connection

    def events(self, *names: str) -> list[dict[str, Any]]:
        found = [e["audit"] for e in self.audit.events if "audit" in e]
        return [e for e in found if not names or e["event"] in names]

    def run_tool(
        self, args: list[str], timeout: float = BOUND, env: Optional[dict] = None
    ) -> defer.Deferred[subprocess.CompletedProcess[str]]:
        """A client program, run to its end in a thread."""

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=str(self.work),
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
            )

        return in_thread(run)

    def rclone_config(self, user: str = "alice", password: str = PASSWORD) -> Path:
        """An rclone config naming this gateway as the remote C{dav}."""
        obscured = subprocess.run(
            ["rclone", "obscure", password], capture_output=True, text=True, check=True
        ).stdout.strip()
        path = self.work / "rclone.conf"
        path.write_text(
            "[dav]\ntype = webdav\n"
            f"url = {self.url}/\nvendor = other\n"
            f"user = {user}\npass = {obscured}\n"
        )
        return path
