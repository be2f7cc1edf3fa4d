"""
The real HAProxy and Redis of the scale-out tests: each started by the test
on 127.0.0.1 with free ports, in the foreground as a L{Child}, waited for by
polling with a deadline and stopped by its PID.

Both come from Debian packages (C{haproxy}, C{redis-server}) that
C{.ci/run} installs.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

from tests.processtesting import Child, free_port, poll

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a Redis server answers PING on C{host:port} right now."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """
    A throw-away C{redis-server}: no persistence, loopback only.  It can be
    stopped and started again on the same port (C{stop}, C{start}) to test
    what the gateway does while Redis is away.
    """

    def __init__(self, testcase: Any, directory: Path) -> None:
        self.testcase = testcase
        self.directory = directory
        self.port = free_port()
        self.child: Child | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        self.child = Child(self.testcase, argv, self.directory, name="redis")
        poll(
            lambda: self.child is not None
            and self.child.running()
            and redis_ping(self.port),
            15,
            f"redis-server on {self.port}",
        )

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None


class HAProxy:
    """
    C{haproxy -db -f CONFIG} with the given configuration text; C{ports}
    are the frontends' ports to wait for.  The configuration is the test's,
    so what the test uses is what C{docs/scale-out.rst} can show.
    """

    def __init__(
        self, testcase: Any, directory: Path, config: str, ports: list[int]
    ) -> None:
        self.config_path = directory / "haproxy.cfg"
        self.config_path.write_text(config)
        self.child = Child(
            testcase,
            [HAPROXY, "-db", "-f", str(self.config_path)],
            directory,
            name="haproxy",
        )
        for port in ports:
            self.child.wait_for_port(port)

    def stop(self) -> None:
        self.child.stop()
