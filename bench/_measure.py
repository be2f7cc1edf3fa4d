"""
What the issue-11 benchmarks measure besides speed, in one place: the
targets each table is judged against, store requests per operation (the
fake COS server counts them), the gateway's memory sampled during a load,
and another user's NOOP latency while the load runs.

Speed on these shared 2-core machines is noisy, so every script reports
ratios to a baseline measured in the same run; the counts of store
requests and the memory bounds are what is deterministic, and the targets
print both so a before/after pair of tables can be read side by side.
"""

from __future__ import annotations

import argparse
import ftplib
import hashlib
import io
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional

from bench._gateway import HERE_TREE, describe_tree, ftp_session, memory_mib
from tests.cosserver import CosTestServer

MiB = 1024 * 1024


@dataclass
class Target:
    """
    One line of the issue's "Targets": a figure against its limit.  A
    missing figure (the contender could not run) prints as such, neither
    met nor missed.
    """

    what: str
    value: Optional[float]
    limit: float
    at_least: bool = True
    unit: str = ""

    def line(self) -> str:
        sign = ">=" if self.at_least else "<="
        want = f"{sign} {self.limit:g}{self.unit}"
        if self.value is None:
            return f"  {self.what:<52} {want:<12} {'no figure':>10}  -"
        met = self.value >= self.limit if self.at_least else self.value <= self.limit
        verdict = "met" if met else "NOT MET"
        return f"  {self.what:<52} {want:<12} {self.value:>9.2f}{self.unit}  {verdict}"


def print_targets(targets: list[Target]) -> None:
    """The issue-11 targets a table is judged against, one verdict a line."""
    print("targets (issue 11, same run, this machine):")
    for target in targets:
        print(target.line())


def add_tree_argument(parser: argparse.ArgumentParser) -> None:
    """--tree: whose gateway to run, for before/after tables in one sitting."""
    parser.add_argument(
        "--tree",
        type=Path,
        default=HERE_TREE,
        metavar="PATH",
        help="run the gateway of this checkout (e.g. a git worktree of an "
        "older commit); default: this one",
    )


def print_header(title: str, tree: Path) -> None:
    """The first lines of every table: what was measured, and which code."""
    print(f"== {title}")
    print(f"gateway: {describe_tree(tree)}")
    print(load_line("at the start"))


def load_line(when: str) -> str:
    """
    The machine's cores and load average: other processes share the cores
    the parties' CPU figures and bounds assume are all the benchmark's.
    """
    loads = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average (1/5/15 min) {when}: {loads}"


def protocols_argument(
    choices: tuple[str, ...],
) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated subset of C{choices}, in their order."""

    def parse(text: str) -> tuple[str, ...]:
        picked = {p.strip().lower() for p in text.split(",") if p.strip()}
        if not picked or picked - set(choices):
            raise argparse.ArgumentTypeError(f"pick from {', '.join(choices)}")
        return tuple(p for p in choices if p in picked)

    return parse


def stream_sha256(raw: Any) -> tuple[int, str]:
    """
    Size and SHA-256 of what C{raw} holds, the SDK's raw stream (a urllib3
    response, read without decoding) or a file, read 1 MiB at a time so no
    object sits in memory.
    """
    digest, size = hashlib.sha256(), 0
    read = (
        raw.read
        if isinstance(raw, io.IOBase)
        else partial(raw.read, decode_content=False)
    )
    while chunk := read(MiB):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def random_file(path: Path, mib: int) -> str:
    """Write C{mib} MiB of random bytes (incompressible) to C{path}: their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mib):
            block = os.urandom(MiB)
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of the file at C{path}, read 1 MiB at a time."""
    with open(path, "rb") as f:
        return stream_sha256(f)


def median(values: list[float]) -> Optional[float]:
    """The median, or None when the contender produced no figure."""
    return statistics.median(values) if values else None


def ratio(value: Optional[float], base: Optional[float]) -> Optional[float]:
    """C{value}/C{base}, None when either is missing."""
    if value is None or not base:
        return None
    return value / base


class StoreRequests:
    """
    Store requests made between L{reset} and L{take}, as the fake COS server
    counts them (``/__test__/stats``: COS operations by name, ``_bypass``
    for SigV4 clients such as rclone).
    """

    def __init__(self, server: CosTestServer) -> None:
        self.server = server

    def reset(self) -> None:
        self.server.reset_stats()

    def take(self) -> Counter[str]:
        return Counter({k: v for k, v in self.server.stats().items() if v})


def per_item(requests: Counter[str], items: int) -> str:
    """C{requests} per item, total first: "2.00 = PutObject 1.00 + ..."."""
    if not requests or not items:
        return "0"
    parts = " + ".join(
        f"{op} {count / items:.2f}" for op, count in requests.most_common()
    )
    return f"{sum(requests.values()) / items:.2f} = {parts}"


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of C{values} (not interpolated)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class RssSampler:
    """
    The gateway's VmRSS every C{interval} seconds in a thread, between
    L{start} and L{stop}: a peak seen while it happens, beside the kernel's
    VmHWM (which a failed clear_refs would leave at the process's lifetime
    peak).
    """

    pid: int
    interval: float = 0.05
    peak: float = 0.0
    _done: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """Stop sampling; the highest VmRSS seen, in MiB."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.peak

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, memory_mib(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            self._done.wait(self.interval)


@dataclass
class NoopProbe:
    """
    Another user's FTP session sending NOOP every C{interval} seconds while
    a load runs, timing each reply: NOOP costs the gateway nothing, so its
    latency is how long the reactor takes to get round to a client.  A
    reply slower than C{timeout} ends the probe with that sample marked as
    a timeout (a timed-out ftplib connection cannot go on); so does an
    error.
    """

    port: int
    interval: float = 0.02
    timeout: float = 30.0
    #: The probe stops by itself after this long, whatever happens.
    limit: float = 3600.0
    latencies: list[float] = field(default_factory=list)
    timeouts: int = 0
    _done: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Log in first (not timed), then probe in a thread until L{stop}."""
        session = ftp_session(self.port, self.timeout)
        self._thread = threading.Thread(target=self._run, args=(session,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 10)

    def _run(self, session: ftplib.FTP) -> None:
        deadline = time.monotonic() + self.limit
        try:
            while not self._done.is_set() and time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    session.voidcmd("NOOP")
                except (OSError, ftplib.Error):
                    self.timeouts += 1
                    return
                self.latencies.append(time.perf_counter() - start)
                self._done.wait(self.interval)
        finally:
            session.close()

    def summary(self) -> str:
        """p50/p99/max in ms and how many NOOPs, for a table cell."""
        if not self.latencies:
            return "no NOOP answered"
        ms = [x * 1000 for x in self.latencies]
        text = (
            f"p50 {percentile(ms, 0.5):.1f} p99 {percentile(ms, 0.99):.1f} "
            f"max {max(ms):.1f} ms ({len(ms)} NOOPs)"
        )
        return text + (f", {self.timeouts} timed out" if self.timeouts else "")

    def p99_ms(self) -> Optional[float]:
        if self.timeouts:
            return self.timeout * 1000
        return percentile(self.latencies, 0.99) * 1000 if self.latencies else None
