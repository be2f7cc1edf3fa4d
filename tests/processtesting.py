"""
The gateway as an operator runs it: C{twistd cosftp} in a child process,
with its output in a file, waited for by polling with a deadline and
stopped by its PID.  Shared by the privilege, systemd and embedded-default
tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def scratch(testcase: Any, prefix: str = "cosgw-test-") -> Path:
    """A new directory under the system's temporary one, removed after the test."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    testcase.addCleanup(shutil.rmtree, directory, True)
    return directory


def poll(predicate: Callable[[], Any], bound: float, what: str) -> Any:
    """C{predicate()}'s first true value within C{bound} seconds."""
    deadline = time.monotonic() + bound
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound} s: {what}")
        time.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def accepts(host: str, port: int) -> bool:
    """Whether a TCP connection to C{host:port} is accepted right now."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


class Child:
    """
    One child process (C{twistd ...} or a wrapper of it) whose standard
    output and error go to C{directory/name.log}; stopped (SIGTERM, then
    SIGKILL after 15 s) by the test's cleanup.
    """

    def __init__(
        self,
        testcase: Any,
        argv: Sequence[str],
        directory: Path,
        env: Optional[dict[str, str]] = None,
        name: str = "twistd",
    ) -> None:
        self.log = directory / f"{name}.log"
        out = open(self.log, "wb")  # noqa: SIM115
        testcase.addCleanup(out.close)
        self.proc = subprocess.Popen(
            list(argv),
            cwd=directory,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        testcase.addCleanup(self.stop)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        """True while the child runs; fails the test with its log if it ended."""
        if self.proc.poll() is not None:
            raise AssertionError(f"exited {self.proc.returncode}:\n{self.text()}")
        return True

    def wait_for_port(self, port: int, host: str = "127.0.0.1") -> None:
        poll(lambda: self.running() and accepts(host, port), 30, f"{host}:{port}")

    def wait(self, bound: float = 15) -> int:
        return self.proc.wait(timeout=bound)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
