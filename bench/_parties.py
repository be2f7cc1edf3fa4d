"""
The CPU of every party to a benchmarked transfer, taken around it in the
same run: the client (this process when it is ftplib or the SDK, or the
children it reaps when it is OpenSSH's sftp or curl), the server (the
gateway or rclone, all its threads), the gateway's reactor thread alone,
and the store (the fake COS server's process, moto and the adapter).

On a 2-core machine every party competes for the same two cores, so a
figure only means something beside the others: the sum of the parties' CPU
per byte or per file bounds the rate whatever the gateway does, and the
reactor's share bounds what one Twisted thread can carry.  A client in
this process is measured with getrusage(RUSAGE_SELF) (which counts the
SDK's own threads too; nothing else runs in the benchmark while it is
timed), a child client with RUSAGE_CHILDREN, which counts it once it has
been reaped; the servers from /proc (10 ms clock ticks, so the benchmarks
read them over whole passes of hundreds of files or MiB).
"""

from __future__ import annotations

import os
import resource
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench._gateway import cpu_seconds

#: The parties in the order the tables print them.
PARTIES = ("client", "server", "reactor", "store")

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User plus system CPU seconds of thread C{tid} of process C{pid}."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _rusage_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class PartyCpu:
    """
    CPU seconds of each party over one measured stretch; C{server} and
    C{reactor} are None where there is no such party (the SDK talking to
    the store itself) or it cannot be told apart (rclone's Go runtime has
    no one reactor thread).
    """

    client: float
    server: Optional[float]
    reactor: Optional[float]
    store: float

    def total(self) -> float:
        """Every process's CPU; the reactor is part of the server already."""
        return self.client + (self.server or 0.0) + self.store

    def minus(self, other: PartyCpu) -> PartyCpu:
        """What this stretch cost beyond C{other} (a session's own overhead)."""

        def less(a: Optional[float], b: Optional[float]) -> Optional[float]:
            return None if a is None else a - (b or 0.0)

        return PartyCpu(
            self.client - other.client,
            less(self.server, other.server),
            less(self.reactor, other.reactor),
            self.store - other.store,
        )

    def get(self, party: str) -> Optional[float]:
        value: Optional[float] = getattr(self, party)
        return value


class CpuMeter:
    """
    Reads every party's CPU at L{start} and again at L{stop}.  C{child}:
    the client is a child process (reaped before L{stop}), not this one.
    C{server}: the server's PID (None for the SDK); C{reactor}: whether its
    main thread is a Twisted reactor worth showing apart (twistd runs the
    reactor in the process's main thread, whose thread id is the PID).
    """

    def __init__(
        self,
        store: int,
        server: Optional[int] = None,
        reactor: bool = False,
        child: bool = False,
    ) -> None:
        self.store = store
        self.server = server
        self.reactor = reactor and server is not None
        self.who = resource.RUSAGE_CHILDREN if child else resource.RUSAGE_SELF
        self._start: Optional[tuple[float, float, float, float]] = None

    def _read(self) -> tuple[float, float, float, float]:
        server = cpu_seconds(self.server) if self.server else 0.0
        reactor = (
            thread_cpu_seconds(self.server, self.server)
            if self.reactor and self.server
            else 0.0
        )
        return _rusage_seconds(self.who), server, reactor, cpu_seconds(self.store)

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> PartyCpu:
        assert self._start is not None, "stop() before start()"
        now = self._read()
        client, server, reactor, store = (b - a for a, b in zip(self._start, now))
        return PartyCpu(
            client,
            server if self.server else None,
            reactor if self.reactor else None,
            store,
        )


def median_parties(measured: list[PartyCpu]) -> Optional[PartyCpu]:
    """Each party's median over C{measured} (rounds), None when empty."""
    if not measured:
        return None

    def middle(party: str) -> Optional[float]:
        known = [v for p in measured if (v := p.get(party)) is not None]
        return statistics.median(known) if known else None

    return PartyCpu(
        middle("client") or 0.0,
        middle("server"),
        middle("reactor"),
        middle("store") or 0.0,
    )


def scaled(parties: PartyCpu, factor: float) -> PartyCpu:
    """C{parties} times C{factor}: per GB, per file."""

    def times(value: Optional[float]) -> Optional[float]:
        return None if value is None else value * factor

    return PartyCpu(
        parties.client * factor,
        times(parties.server),
        times(parties.reactor),
        parties.store * factor,
    )
