"""
The cost of watching the gateway (issue 13: logging and metrics under 3%
of its CPU), for ``bench/throughput.py --observability``.

The same transfers run against the same store through two configurations
of one gateway, restarted between them and alternated round by round (the
order flips each round, as these machines are noisy):

  - off: ``log_level = warn`` and no admin listener: no audit line is
    written and nothing counts them;
  - on: what an operator who watches everything runs: ``log_format =
    json`` into ``log_dir``, an ``xferlog``, standard output at info, and
    the admin listener with ``/metrics`` scraped every --scrape-interval
    seconds (default 15, Prometheus's own default; a scrape costs a few
    milliseconds of the gateway's CPU, so 1 s shows the worst case).

It prints the gateway's CPU seconds per GB for each protocol and direction
in both, and on's cost over off in percent.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from bench._gateway import free_port, stop
from bench._measure import median

#: What "off" adds to [server].
OFF = "log_level = warn\n"


def on_lines(workdir: Path, admin_port: int) -> str:
    """What "on" adds to [server]."""
    return (
        "log_level = info\n"
        "log_format = json\n"
        f"log_dir = {workdir / 'logs'}\n"
        f"xferlog = {workdir / 'xferlog'}\n"
        f"admin_listen = tcp:{admin_port}:interface=127.0.0.1\n"
    )


class Scraper:
    """Fetches /metrics every C{interval} seconds until stopped."""

    def __init__(self, port: int, interval: float) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._scrape()
            if self._stop.wait(self.interval):
                return

    def _scrape(self) -> None:
        """One scrape, as Prometheus makes it (the first at once)."""
        try:
            with urllib.request.urlopen(self.url, timeout=5) as reply:
                reply.read()
            self.scrapes += 1
        except OSError:
            self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def measure(
    bench: Any,
    rounds: int,
    make_variants: Callable[[], list[Any]],
    scrape_interval: float = 15.0,
) -> dict[str, list[Any]]:
    """
    Run C{rounds} rounds of C{bench.round} in each mode, alternating, and
    return each mode's variants with their figures.
    """
    admin_port = free_port()
    modes = {"off": make_variants(), "on": make_variants()}
    scrapes = [0, 0]
    checked: set[str] = set()
    for number in range(rounds):
        order = ("off", "on") if number % 2 == 0 else ("on", "off")
        for mode in order:
            stop(bench.gateway)
            bench.server_lines = (
                OFF if mode == "off" else on_lines(bench.workdir, admin_port)
            )
            bench.gateway = bench.start()
            scraper: Optional[Scraper] = None
            if mode == "on":
                scraper = Scraper(admin_port, scrape_interval)
            try:
                if mode not in checked:
                    checked.add(mode)
                    for variant in modes[mode]:
                        if variant.protocol == "sftp":
                            bench.sftp_check(variant)
                bench.round(modes[mode])
            finally:
                if scraper is not None:
                    scraper.stop()
                    scrapes[0] += scraper.scrapes
                    scrapes[1] += scraper.failures
    xferlog = bench.workdir / "xferlog"
    lines = len(xferlog.read_text().splitlines()) if xferlog.exists() else 0
    print(
        f"observability on: {scrapes[0]} /metrics scrapes ({scrapes[1]} failed), "
        f"{lines} xferlog lines"
    )
    return modes


def report(modes: dict[str, list[Any]], size: int, verbose: bool = False) -> None:
    """CPU s/GB off and on per variant and direction, and the cost in %."""
    print(
        f"{'gateway CPU s/GB':<44} {'off':>6} {'on':>6} {'cost':>7}   "
        f"(median of rounds; MB/s off/on)"
    )
    worst = 0.0
    totals = [0.0, 0.0]
    for off, on in zip(modes["off"], modes["on"]):
        if off.unavailable or on.unavailable:
            continue
        for direction in ("up", "down"):
            a, b = off.cpu_per_gb(direction, size), on.cpu_per_gb(direction, size)
            if a is None or b is None:
                continue
            cost = (b / a - 1) * 100
            totals[0] += sum(off.cpu[direction])
            totals[1] += sum(on.cpu[direction])
            if verbose:
                print(f"  raw CPU s off {off.cpu[direction]} on {on.cpu[direction]}")
            worst = max(worst, cost)
            print(
                f"{off.label + ' ' + direction:<44} {a:6.2f} {b:6.2f} "
                f"{cost:+6.1f}%   ({median(off.mbs[direction]) or 0:.0f}/"
                f"{median(on.mbs[direction]) or 0:.0f})"
            )
    overall = (totals[1] / totals[0] - 1) * 100 if totals[0] else 0.0
    print(
        f"all transfers together: {totals[0]:.2f} s off, {totals[1]:.2f} s on: "
        f"{overall:+.1f}% (each row's median moves by one 10 ms clock tick "
        "per transfer; the sum is the steadier figure)"
    )
    verdict = "met" if worst < 3 else "NOT met"
    print(
        f"target: logging and metrics cost < 3% of gateway CPU: worst {worst:+.1f}% ({verdict})"
    )
