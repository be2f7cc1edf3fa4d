"""
The probe of bench/abuse.py: an ordinary logged-in FTP user sending NOOP
every 100 ms and timing each reply, in a thread of its own.

NOOP is the cheapest command the gateway answers, so its latency is the
time the reactor takes to get round to a client: any work the gateway does
for one client on the reactor thread shows up here as another client's
delay.  A reply that does not come within the probe's timeout is counted
and the probe logs in again on a new connection (the old one's replies are
out of step by then), as it does when the gateway closes its connection.
Samples are kept by the time their NOOP was sent, so that bench/abuse.py can
cut them into one window per attack.
"""

from __future__ import annotations

import math
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from bench.abuse_gateway import PASSWORD, USER, USER_ADDRESS, connect_from

_FINAL_LINE = re.compile(rb"^(\d{3}) ")


class ReplyTimeout(Exception):
    """No complete reply before the deadline."""


class FTPControl:
    """
    A bare FTP control connection that reads replies against a deadline:
    ftplib's one timeout per socket call cannot say "this reply took 7 s",
    and a timed-out ftplib connection is no longer usable.
    """

    def __init__(self, source: str, port: int, timeout: float) -> None:
        self.sock = connect_from(source, port, timeout)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def start_tls(self, deadline: float) -> None:
        """AUTH TLS and the handshake (the gateway's certificate is its own)."""
        self.expect("AUTH TLS", 234, deadline)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock.settimeout(max(0.1, deadline - time.monotonic()))
        self.sock = context.wrap_socket(self.sock)

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("ascii") + b"\r\n")

    def reply(self, deadline: float) -> tuple[int, str]:
        """
        The next complete reply (code, its last line), multi-line replies
        included; L{ReplyTimeout} at C{deadline}, L{ConnectionError} when
        the gateway closes the connection.
        """
        while True:
            while b"\r\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                final = _FINAL_LINE.match(line)
                if final:
                    return int(final.group(1)), line.decode("utf-8", "replace")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplyTimeout()
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise ReplyTimeout() from None
            if not data:
                raise ConnectionError("closed by the gateway")
            self.buffer += data

    def expect(self, line: Optional[str], code: int, deadline: float) -> str:
        """Send C{line} (None: just read, e.g. the banner), demand C{code}."""
        if line is not None:
            self.send(line)
        got, text = self.reply(deadline)
        if got != code:
            raise ConnectionError(f"expected {code}, got {text!r}")
        return text


def log_in(source: str, port: int, timeout: float, tls: bool = False) -> FTPControl:
    """
    An L{FTPControl} logged in as the benchmark's user within C{timeout}
    seconds, with explicit FTPS (AUTH TLS first) when C{tls}.
    """
    deadline = time.monotonic() + timeout
    control = FTPControl(source, port, timeout)
    try:
        control.expect(None, 220, deadline)
        if tls:
            control.start_tls(deadline)
        control.expect(f"USER {USER}", 331, deadline)
        control.expect(f"PASS {PASSWORD}", 230, deadline)
    except BaseException:
        control.close()
        raise
    return control


@dataclass
class Sample:
    """One NOOP: when it was sent, how long it waited, whether 200 came."""

    sent: float
    latency: float
    answered: bool


@dataclass
class WindowStats:
    """The probe's view of one stretch of time."""

    p50: float
    p99: float
    worst: float
    #: The longest stretch of the window with no NOOP answered, seconds:
    #: the real length of a stall that outlasts the probe's timeout.
    gap: float
    answered: int
    missed: int
    timeouts: int
    reconnects: int


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (the value C{fraction} of samples reach)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class Probe:
    """
    The NOOP prober.  C{interval} between NOOPs (no catching up after a
    slow reply: the next one goes at once); a reply later than C{timeout}
    counts as a timeout and ends the connection.
    """

    port: int
    interval: float = 0.1
    timeout: float = 5.0
    samples: list[Sample] = field(default_factory=list)
    #: Times the probe had to log in again (connection closed or timed out).
    reconnects: list[float] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    #: Why the last login or NOOP failed, for the report.
    last_error: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Log in (raising if that fails) and start sending NOOPs."""
        control = log_in(USER_ADDRESS, self.port, self.timeout)
        self._thread = threading.Thread(
            target=self._run, args=(control,), name="probe", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 10)

    def _run(self, control: Optional[FTPControl]) -> None:
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                if control is None:
                    control = self._log_in_again()
                    if control is None:
                        continue
                self._stop.wait(max(0.0, due - time.monotonic()))
                if self._stop.is_set():
                    break
                if not self._noop(control):
                    control.close()
                    control = None
                due = max(due + self.interval, time.monotonic())
        finally:
            if control is not None:
                control.close()

    def _log_in_again(self) -> Optional[FTPControl]:
        self.reconnects.append(time.monotonic())
        try:
            return log_in(USER_ADDRESS, self.port, self.timeout)
        except (OSError, ReplyTimeout) as e:
            self.last_error = f"login: {type(e).__name__}: {e}"
            self._stop.wait(0.5)
            return None

    def _noop(self, control: FTPControl) -> bool:
        """One NOOP; False when the connection is no longer usable."""
        sent = time.monotonic()
        try:
            control.send("NOOP")
            code, text = control.reply(sent + self.timeout)
        except ReplyTimeout:
            self.timeouts.append(sent)
            self.samples.append(Sample(sent, time.monotonic() - sent, False))
            self.last_error = "NOOP timed out"
            return False
        except OSError as e:
            self.samples.append(Sample(sent, time.monotonic() - sent, False))
            self.last_error = f"NOOP: {type(e).__name__}: {e}"
            return False
        self.samples.append(Sample(sent, time.monotonic() - sent, code == 200))
        if code != 200:
            self.last_error = f"NOOP answered {text!r}"
            return False
        return True

    def stats(self, start: float, end: float) -> WindowStats:
        """
        The NOOPs sent in [start, end): latency percentiles in seconds (a
        timed-out NOOP counts with the time it waited, a lower bound), the
        longest time without an answer, how many were answered, how many of
        the window's 100 ms slots got no answer, and the timeouts and new
        logins in it.
        """
        inside = [s for s in list(self.samples) if start <= s.sent < end]
        latencies = [s.latency for s in inside]
        answered = sum(1 for s in inside if s.answered)
        marks = [start]
        marks += sorted(s.sent + s.latency for s in inside if s.answered)
        marks.append(end)
        slots = int((end - start) / self.interval)
        return WindowStats(
            p50=percentile(latencies, 0.50),
            p99=percentile(latencies, 0.99),
            worst=max(latencies, default=float("nan")),
            gap=max(b - a for a, b in zip(marks, marks[1:])),
            answered=answered,
            missed=max(0, slots - answered),
            timeouts=sum(1 for t in list(self.timeouts) if start <= t < end),
            reconnects=sum(1 for t in list(self.reconnects) if start <= t < end),
        )

    def quiet(self, since: float, count: int = 5, limit: float = 0.25) -> bool:
        """Whether the last C{count} NOOPs since C{since} came within C{limit}."""
        recent = [s for s in list(self.samples) if s.sent >= since][-count:]
        return len(recent) == count and all(
            s.answered and s.latency < limit for s in recent
        )
