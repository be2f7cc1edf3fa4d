"""
bench/small_files.py's per-file time budget: where a small file's
milliseconds go, party by party, and what a sequential model predicts.

One session moves one file at a time, so a file's time is the sum of the
client's work, the server's (the gateway's protocol work plus the SDK
request it makes in its pool), the store's work per request, and whatever
is left: waiting (the store's round trip, loopback, wake-ups).  The SDK
baseline has only its own SDK call and the store.  With each party's CPU
measured in the same run, the model's ratio (the baseline's milliseconds
per file over the contender's) says whether the gap is the parties' work
or something else: when the predicted and measured ratios agree, the
contender's rate is what its parties' CPU allows on this machine, and the
last column says how far the server's CPU per file would have to fall for
0.8x the SDK.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from bench._parties import median_parties, scaled

if TYPE_CHECKING:
    from bench.small_files import Contender, Run

#: Issue 11's target: this fraction of the SDK's per-object rate.
TARGET = 0.8


@dataclass(frozen=True)
class Budget:
    """Milliseconds per file of one direction of one contender (medians of rounds)."""

    label: str
    direction: str
    client: float
    server: Optional[float]
    reactor: Optional[float]
    store: float
    wall: float
    requests: float
    rate: float

    @property
    def cpu(self) -> float:
        return self.client + (self.server or 0.0) + self.store

    def model(self, latency_ms: float) -> float:
        """Sequential model: every party's CPU plus a round trip per request."""
        return self.cpu + self.requests * latency_ms


def _typical(runs: list[Run]) -> Counter[str]:
    """The requests of the round with the median total (as the main table)."""
    ordered = sorted(runs, key=lambda run: sum(run.requests.values()))
    return ordered[(len(ordered) - 1) // 2].requests


def budget_of(contender: Contender, direction: str, files: int) -> Optional[Budget]:
    """The budget of C{contender}'s C{direction}, None when it never ran."""
    runs = contender.runs[direction]
    parties = median_parties([run.parties for run in runs])
    if parties is None:
        return None
    ms = scaled(parties, 1000 / files)
    return Budget(
        contender.label,
        direction,
        ms.client,
        ms.server,
        ms.reactor,
        ms.store,
        statistics.median(run.seconds for run in runs) * 1000 / files,
        sum(_typical(runs).values()) / files,
        statistics.median(files / run.seconds for run in runs),
    )


def _cell(value: Optional[float], width: int) -> str:
    return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}}"


def print_budget(contenders: list[Contender], files: int, latency_ms: float) -> None:
    """The per-file budget table, then the model's ratios beside the measured."""
    budgets = [
        b
        for c in contenders
        for d in ("up", "down")
        if (b := budget_of(c, d, files)) is not None
    ]
    if not budgets:
        return
    print(
        "per-file time budget (ms per file, median of rounds; CPU of each party "
        "in the same run; remainder = wall - CPU sum: waiting, store latency, "
        "wake-ups; negative when parties overlap on the two cores):"
    )
    print(
        f"  {'contender':<20} {'dir':<4} {'client':>6} {'server':>6} "
        f"{'(reactor)':>9} {'store':>6} {'CPU sum':>7} {'wall':>6} "
        f"{'remainder':>9} {'req/file':>8}"
    )
    for b in budgets:
        print(
            f"  {b.label:<20} {b.direction:<4} {b.client:6.2f} "
            f"{_cell(b.server, 6)} {_cell(b.reactor, 9)} {b.store:6.2f} "
            f"{b.cpu:7.2f} {b.wall:6.2f} {b.wall - b.cpu:9.2f} {b.requests:8.2f}"
        )
    clients = ", ".join(
        sorted({f"{c.label}: {c.client}" for c in contenders if c.runs["up"]})
    )
    print(f"  (client = {clients}; server includes the reactor)")
    print_model(budgets, contenders[0].label, latency_ms)


def print_model(budgets: list[Budget], baseline: str, latency_ms: float) -> None:
    """
    Predicted against measured ratio to the SDK (the contender labelled
    C{baseline}), and what 0.8x would leave the server.
    """
    base = {b.direction: b for b in budgets if b.label == baseline}
    print(
        "sequential model: ms per file = client + server + store CPU + store "
        f"requests x {latency_ms:g} ms store latency; predicted x SDK = the "
        "SDK's model ms / the contender's:"
    )
    print(
        f"  {'contender':<20} {'dir':<4} {'model ms':>8} {'wall ms':>7} "
        f"{'predicted':>9} {'measured':>8}   for {TARGET:g}x the SDK the server "
        "may use"
    )
    for b in (b for b in budgets if b.label != baseline):
        sdk = base.get(b.direction)
        if sdk is None:
            continue
        model = b.model(latency_ms)
        allowed = sdk.model(latency_ms) / TARGET - (
            b.client + b.store + b.requests * latency_ms
        )
        need = (
            f"<= {allowed:.2f} ms/file (uses {b.server:.2f})"
            if allowed > 0 and b.server is not None
            else f"nothing: client + store + latency alone exceed "
            f"{sdk.model(latency_ms) / TARGET:.2f} ms"
        )
        print(
            f"  {b.label:<20} {b.direction:<4} {model:8.2f} {b.wall:7.2f} "
            f"{sdk.model(latency_ms) / model:8.2f}x {b.rate / sdk.rate:7.2f}x   {need}"
        )
    for direction, sdk in base.items():
        if sdk.requests:
            print(
                f"  SDK {direction}: {sdk.client / sdk.requests:.2f} ms of client "
                "CPU per request, about what each store request costs the "
                "gateway's pool inside its server CPU"
            )
