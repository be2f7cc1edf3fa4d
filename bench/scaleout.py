"""
Scale-out: the aggregate throughput of many concurrent FTP uploads, then
downloads, through a real HAProxy in front of 1 and then 2 gateway
replicas (tests/clustertesting.py: the configuration docs/scale-out.rst
shows), in the same run and over the same fake COS server, and the ratio;
with the gateways' CPU per GB (the sum over replicas, from /proc) and
HAProxy's.

On a 2-core machine the replicas, HAProxy, the fake COS server (moto, one
process) and the clients share the same two cores: the ratio says more
about the CPU left than about the design, which is why the CPU per GB is
printed beside it.

    python -m bench.scaleout [--clients 32] [--size 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import ftplib
import io
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._gateway import cpu_seconds
from bench._measure import median, print_header
from tests.clustertesting import PASSWORD, PUBLIC, TIMEOUT, ClassCleanups, Cluster

MiB = 1024 * 1024
#: Seconds one load may take at most.
LOAD_TIMEOUT = 900


@dataclass
class Load:
    """One timed load: seconds, bytes moved, CPU seconds of gateways and HAProxy."""

    seconds: float
    moved: int
    gateway_cpu: float
    haproxy_cpu: float

    @property
    def mb_s(self) -> float:
        return self.moved / self.seconds / 1e6

    def per_gb(self, cpu: float) -> float:
        return cpu / (self.moved / 1e9)


def session(cluster: Cluster) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(PUBLIC, cluster.public.ftp, TIMEOUT)
    ftp.login("alice", PASSWORD)
    ftp.voidcmd("TYPE I")
    return ftp


class Sink:
    """Counts the bytes of a download (and keeps none)."""

    def __init__(self) -> None:
        self.size = 0

    def __call__(self, chunk: bytes) -> None:
        self.size += len(chunk)


def run_load(cluster: Cluster, clients: int, step: Any) -> Load:
    """
    C{step(ftp, i)} in C{clients} threads, each logged in first and all
    released at once: the seconds from the release to the last end, and
    the CPU the replicas and HAProxy used meanwhile.
    """
    sessions = [session(cluster) for _ in range(clients)]
    pids = [r.pid for r in cluster.replicas]
    moved: list[int] = []
    errors: list[BaseException] = []
    marks: dict[str, Any] = {}

    def release() -> None:
        marks["cpu"] = sum(cpu_seconds(p) for p in pids)
        marks["haproxy"] = cpu_seconds(cluster.haproxy.child.pid)
        marks["start"] = time.perf_counter()

    barrier = threading.Barrier(clients, action=release, timeout=300)

    def work(i: int) -> None:
        try:
            barrier.wait()
            moved.append(step(sessions[i], i))
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [
        threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + LOAD_TIMEOUT
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic()))
    seconds = time.perf_counter() - marks["start"]
    gateway = sum(cpu_seconds(p) for p in pids) - marks["cpu"]
    haproxy = cpu_seconds(cluster.haproxy.child.pid) - marks["haproxy"]
    for ftp in sessions:
        ftp.quit()
    if errors:
        raise errors[0]
    if len(moved) != clients:
        raise SystemExit(f"{clients - len(moved)} transfers did not finish in time")
    return Load(seconds, sum(moved), gateway, haproxy)


def measure(
    replicas: int, args: argparse.Namespace, data: bytes
) -> dict[str, list[Load]]:
    """Rounds of uploads then downloads through HAProxy to C{replicas} replicas."""
    cleanups = ClassCleanups()
    loads: dict[str, list[Load]] = {"upload": [], "download": []}
    try:
        cluster = Cluster(
            cleanups,
            count=replicas,
            server_lines="log_level = warn\nmax_connections_per_ip = 0\n",
            transfer_lines="part_size = 8M\n",
            passive_span=args.clients + 8,
        )
        landed = [r.pid for r in cluster.replicas]
        print(f"  {replicas} replica(s): pids {landed}", flush=True)

        def upload(ftp: ftplib.FTP, i: int) -> int:
            ftp.storbinary(f"STOR f{i}.bin", io.BytesIO(data), blocksize=1024 * 1024)
            return len(data)

        def download(ftp: ftplib.FTP, i: int) -> int:
            sink = Sink()
            ftp.retrbinary(f"RETR f{i}.bin", sink, blocksize=1024 * 1024)
            if sink.size != len(data):
                raise SystemExit(f"f{i}.bin: {sink.size} bytes, not {len(data)}")
            return sink.size

        for _ in range(args.rounds):
            loads["upload"].append(run_load(cluster, args.clients, upload))
            loads["download"].append(run_load(cluster, args.clients, download))
        stored = cluster.store.keys(cluster.bucket)
        if len(stored) != args.clients:
            raise SystemExit(f"{len(stored)} objects stored, not {args.clients}")
    finally:
        cleanups.run()
    return loads


def typical(loads: list[Load]) -> Load:
    """The round with the median speed."""
    speeds = sorted(loads, key=lambda load: load.mb_s)
    return speeds[len(speeds) // 2]


def report(results: dict[int, dict[str, list[Load]]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.clients} concurrent FTP transfers of {args.size} MiB each through"
        f" HAProxy, median of {args.rounds} round(s)\n"
    )
    print(
        f"  {'load':<9}{'replicas':>9}{'MB/s':>9}{'ratio':>8}"
        f"{'gateway CPU s/GB':>18}{'HAProxy CPU s/GB':>18}"
    )
    for what in ("upload", "download"):
        base = median([load.mb_s for load in results[1][what]])
        for replicas in sorted(results):
            load = typical(results[replicas][what])
            speed = median([x.mb_s for x in results[replicas][what]]) or 0.0
            ratio = speed / base if base else 0.0
            print(
                f"  {what:<9}{replicas:>9}{speed:>9.1f}{ratio:>7.2f}x"
                f"{load.per_gb(load.gateway_cpu):>18.2f}"
                f"{load.per_gb(load.haproxy_cpu):>18.2f}"
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--size", type=int, default=16, help="MiB per transfer")
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print_header(
        "scale-out: 1 and 2 replicas behind HAProxy",
        Path(__file__).resolve().parent.parent,
    )
    print(f"  {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    data = os.urandom(args.size * MiB)
    results = {n: measure(n, args, data) for n in (1, 2)}
    report(results, args)


if __name__ == "__main__":
    main()
