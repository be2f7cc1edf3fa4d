"""
Many large transfers at once: aggregate speed, the gateway's memory, and
whether another user's control connection stays responsive meanwhile.

In one run, against one fake COS server (moto behind the COS-dialect
adapter, tests/cosserver.py), --count clients each upload a --size-mib MiB
file at the same time, then each downloads one back:

  - SDK: the COS SDK's concurrent multipart rate, --count threads each
    running the SDK's own upload_file (8 MiB parts, --sdk-threads part
    threads each) and a streamed get_object: what the store takes at that
    concurrency, the baseline of the ratios;
  - cosgw FTP: --count ftplib sessions in threads, STOR and RETR;
  - cosgw SFTP: --count OpenSSH ``sftp`` processes in batch mode, ``put``
    and ``get`` (--cipher picks the cipher; default OpenSSH's choice).

Clients log in first and start together: FTP sessions at a barrier, sftp
batches at a local command (``!``) that waits for a file the benchmark
creates once every batch has reached it, so SSH handshakes are not timed.
Each gateway load runs on a gateway process of its own (--same-gateway:
one for all), so its peak RSS is not the heap an earlier load left behind.
During each gateway load a probe session of another user sends NOOP every
--probe-interval seconds (p50/p99/max), a thread samples the gateway's
VmRSS, and the kernel's VmHWM (reset before the load) gives its peak; the
gateway's CPU seconds (all threads, from /proc) are reported per GB moved,
the store requests per file as the fake server counts them.  Every
download is checked against the SHA-256 of the source (FTP and SDK while
they read, SFTP after the load).  Each round deletes what it uploaded.

    python bench/concurrency.py [--count 32] [--size-mib 32] [--rounds 1]
        [--protocols ftp,sftp] [--cipher NAME] [--tree PATH]
        [--transfer KEY=VALUE ...] [--same-gateway]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._gateway import (  # noqa: E402
    SFTPBatch,
    client_key,
    cpu_seconds,
    free_port,
    ftp_session,
    memory_mib,
    reset_peak_rss,
    start_gateway,
    stop,
)
from bench._measure import (  # noqa: E402
    MiB,
    NoopProbe,
    RssSampler,
    StoreRequests,
    Target,
    add_tree_argument,
    file_sha256,
    median,
    per_item,
    print_header,
    print_targets,
    protocols_argument,
    random_file,
    ratio,
    stream_sha256,
)
from tests.cosserver import CosTestServer  # noqa: E402

PROTOCOLS = ("ftp", "sftp")
#: How long the clients of one load may take, at most, before it fails.
LOAD_TIMEOUT = 1800.0


@dataclass
class Load:
    """What one load of --count transfers measured."""

    seconds: float
    requests: str = ""
    cpu: Optional[float] = None
    hwm: Optional[float] = None
    sampled: Optional[float] = None
    probe: Optional[NoopProbe] = None
    #: The gateway's RSS with the probe session alone, before the load.
    idle: Optional[float] = None


@dataclass
class Results:
    """Every load of every round, by (contender, direction)."""

    loads: dict[tuple[str, str], list[Load]] = field(default_factory=dict)

    def add(self, who: str, direction: str, load: Load) -> None:
        self.loads.setdefault((who, direction), []).append(load)

    def rate(self, who: str, direction: str, moved: int) -> Optional[float]:
        return median(
            [moved / x.seconds / 1e6 for x in self.loads.get((who, direction), [])]
        )


def in_threads(
    count: int, work: Callable[[int], float], on_error: Callable[[], None]
) -> list[float]:
    """
    Run C{work(i)} in C{count} threads (for at most L{LOAD_TIMEOUT}
    seconds): the times each returned.  The first error is raised, after
    C{on_error} lets the other threads go.
    """
    ends: list[float] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            ends.append(work(i))
        except BaseException as exc:
            errors.append(exc)
            on_error()

    threads = [
        threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + LOAD_TIMEOUT
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    if len(ends) != count:
        raise SystemExit(f"{count - len(ends)} transfers did not finish in time")
    return ends


def together(
    count: int,
    work: Callable[[int, threading.Barrier], float],
    on_release: Callable[[], None] = lambda: None,
) -> float:
    """
    C{work(i, barrier)} in C{count} threads, each waiting at the barrier
    once ready (logged in): seconds from its release (when C{on_release}
    runs) to the last finish.
    """
    released: list[float] = []

    def release() -> None:
        on_release()
        released.append(time.perf_counter())

    barrier = threading.Barrier(count, action=release, timeout=300)
    ends = in_threads(count, lambda i: work(i, barrier), barrier.abort)
    return max(ends) - released[0]


class Bench:
    """The store, the gateway, the source file and the loads to time."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.size = args.size_mib * MiB
        shm = Path("/dev/shm")
        # Downloads land in memory where there is a tmpfs, as FTP's do.
        self.landing = Path(
            tempfile.mkdtemp(
                prefix="cosgw-bench-",
                dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else workdir,
            )
        )
        self.source = self.landing / "source.bin"
        self.digest = random_file(self.source, args.size_mib)
        self.key, public_key = client_key(workdir)
        self.server = CosTestServer()
        try:
            self.server.start()
            self.bucket = self.server.create_bucket("bench")
            self.client = self.server.cos_client()
            self.requests = StoreRequests(self.server)
            self.port, self.sftp_port = free_port(), free_port()
            self.public_key = public_key
            self.gateway = self.start()
        except BaseException:
            self.server.stop()
            shutil.rmtree(self.landing, ignore_errors=True)
            raise

    def start(self) -> subprocess.Popen[bytes]:
        return start_gateway(
            self.workdir,
            self.server,
            self.bucket,
            self.port,
            self.sftp_port,
            self.public_key,
            tree=self.args.tree,
            transfer="\n".join(self.args.transfer),
        )

    def restart(self) -> None:
        """
        A new gateway process: each load's peak RSS is then its own, not
        the heap an earlier load left (freed memory inside the heap stays
        part of the process).
        """
        stop(self.gateway)
        self.gateway = self.start()

    def close(self) -> None:
        stop(self.gateway)
        self.server.stop()
        shutil.rmtree(self.landing, ignore_errors=True)

    def check(self, who: str, got: tuple[int, str]) -> None:
        """Raise unless C{got} (size, SHA-256) is the source's."""
        if got != (self.size, self.digest):
            raise SystemExit(f"{who}: got {got[0]} bytes, not the source")

    # -- the baseline --------------------------------------------------------

    def sdk_up(self) -> Load:
        def work(i: int, barrier: threading.Barrier) -> float:
            barrier.wait()
            self.client.upload_file(
                Bucket=self.bucket,
                Key=f"sdk-{i}.bin",
                LocalFilePath=str(self.source),
                PartSize=8,
                MAXThread=self.args.sdk_threads,
            )
            return time.perf_counter()

        return Load(together(self.args.count, work))

    def sdk_down(self) -> Load:
        def work(i: int, barrier: threading.Barrier) -> float:
            barrier.wait()
            body = self.client.get_object(Bucket=self.bucket, Key=f"sdk-{i}.bin")[
                "Body"
            ]
            got = stream_sha256(body.get_raw_stream())
            end = time.perf_counter()
            self.check("SDK", got)
            return end

        return Load(together(self.args.count, work))

    # -- the gateway ---------------------------------------------------------

    def loaded(self, run: Callable[[Callable[[], None]], float]) -> Load:
        """
        Run C{run(start)} as a gateway load, which returns its seconds and
        calls C{start} when its clients, logged in, are let go: store
        requests and CPU are counted from there (logins and SSH handshakes
        are not the load), memory and the probe session watch it all.
        """
        if not self.args.same_gateway:
            self.restart()
        pid = self.gateway.pid
        can_reset = reset_peak_rss(pid)
        sampler = RssSampler(pid)
        probe = NoopProbe(self.port, self.args.probe_interval)
        probe.start()
        idle = memory_mib(pid)["VmRSS"]
        sampler.start()
        cpu: list[float] = []

        def start() -> None:
            self.requests.reset()
            cpu.append(cpu_seconds(pid))

        try:
            seconds = run(start)
        finally:
            probe.stop()
            sampled = sampler.stop()
        used = cpu_seconds(pid) - cpu[0]
        requests = per_item(self.requests.take(), self.args.count)
        hwm = memory_mib(pid)["VmHWM"] if can_reset else None
        return Load(seconds, requests, used, hwm, sampled, probe, idle)

    def ftp_up(self) -> Load:
        def work(i: int, barrier: threading.Barrier) -> float:
            ftp = ftp_session(self.port, 300)
            with open(self.source, "rb") as f:
                barrier.wait()
                ftp.storbinary(f"STOR ftp-{i}.bin", f, blocksize=MiB)
            end = time.perf_counter()
            ftp.quit()
            return end

        return self.loaded(lambda start: together(self.args.count, work, start))

    def ftp_down(self) -> Load:
        def work(i: int, barrier: threading.Barrier) -> float:
            ftp = ftp_session(self.port, 300)
            digest, size = hashlib.sha256(), [0]

            def sink(data: bytes) -> None:
                digest.update(data)
                size[0] += len(data)

            barrier.wait()
            ftp.retrbinary(f"RETR ftp-{i}.bin", sink, blocksize=MiB)
            end = time.perf_counter()
            ftp.quit()
            self.check("FTP", (size[0], digest.hexdigest()))
            return end

        return self.loaded(lambda start: together(self.args.count, work, start))

    def sftp_load(self, transfer: Callable[[int], str]) -> Load:
        """
        --count ``sftp`` batches of C{transfer(i)} each, released together
        once all have logged in (see the module docstring): seconds from
        the release to the last batch's end.
        """
        count = self.args.count
        gate = Path(tempfile.mkdtemp(prefix="gate-", dir=self.workdir))
        go = gate / "go"
        # At most 10 minutes of 10 ms naps, then the batch goes on anyway.
        wait = f"!for n in $(seq 60000); do [ -e {go} ] && break; sleep 0.01; done"
        released: list[float] = []

        def work(i: int) -> float:
            batch = SFTPBatch(self.sftp_port, self.key, self.workdir, self.args.cipher)
            commands = [f"!touch {gate / f'ready-{i}'}", wait, transfer(i)]
            batch.run(commands, timeout=LOAD_TIMEOUT)
            return time.perf_counter()

        def release(start: Callable[[], None]) -> None:
            deadline = time.monotonic() + 300
            while len(list(gate.glob("ready-*"))) < count:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            start()
            released.append(time.perf_counter())
            go.touch()

        def run(start: Callable[[], None]) -> float:
            opener = threading.Thread(target=release, args=(start,), daemon=True)
            opener.start()
            ends = in_threads(count, work, go.touch)
            opener.join(timeout=10)
            return max(ends) - released[0]

        try:
            return self.loaded(run)
        finally:
            shutil.rmtree(gate, ignore_errors=True)

    def sftp_up(self) -> Load:
        return self.sftp_load(lambda i: f"put {self.source} /sftp-{i}.bin")

    def sftp_down(self) -> Load:
        load = self.sftp_load(lambda i: f"get /sftp-{i}.bin {self.landing}/{i}.bin")
        for i in range(self.args.count):
            got = self.landing / f"{i}.bin"
            self.check("SFTP", file_sha256(got))
            got.unlink()
        return load

    def delete_all(self) -> None:
        """Delete what the round uploaded (1,000 keys per request at most)."""
        keys = self.server.keys(self.bucket)
        for i in range(0, len(keys), 1000):
            objects = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Object": objects, "Quiet": "true"}
            )


def run_rounds(bench: Bench, protocols: tuple[str, ...], rounds: int) -> Results:
    """Uploads of every contender, then downloads, then clean-up; per round."""
    results = Results()
    for _ in range(rounds):
        for direction in ("up", "down"):
            for who in ("sdk", *protocols):
                load = getattr(bench, f"{who}_{direction}")()
                results.add(who, direction, load)
        bench.delete_all()
    return results


LABELS = {"sdk": "SDK", "ftp": "cosgw FTP", "sftp": "cosgw SFTP"}


def typical(loads: list[Load]) -> Load:
    """The load of the median speed (its memory and probe go with it)."""
    return sorted(loads, key=lambda x: x.seconds)[(len(loads) - 1) // 2]


def report(
    args: argparse.Namespace, protocols: tuple[str, ...], results: Results
) -> None:
    moved = args.count * args.size_mib * MiB
    gb = moved / 1e9
    print(
        f"{args.count} concurrent transfers of {args.size_mib} MiB each way; "
        f"median of {args.rounds} rounds; SDK upload_file with "
        f"{args.sdk_threads} part thread(s) each"
    )
    print(
        f"{'contender':<11} {'dir':<4} {'MB/s':>7} {'x SDK':>6} {'CPU s/GB':>8} "
        f"{'VmHWM':>6} {'RSS':>6} {'idle':>5}  NOOP on a probe session"
    )
    for who in ("sdk", *protocols):
        for direction in ("up", "down"):
            loads = results.loads[(who, direction)]
            mbs = results.rate(who, direction, moved)
            base = results.rate("sdk", direction, moved)
            load = typical(loads)
            cpu = f"{load.cpu / gb:8.2f}" if load.cpu is not None else f"{'-':>8}"
            hwm = f"{load.hwm:6.0f}" if load.hwm is not None else f"{'-':>6}"
            rss = f"{load.sampled:6.0f}" if load.sampled is not None else f"{'-':>6}"
            idle = f"{load.idle:5.0f}" if load.idle is not None else f"{'-':>5}"
            probe = load.probe.summary() if load.probe else ""
            print(
                f"{LABELS[who]:<11} {direction:<4} {mbs:7.1f} "
                f"{ratio(mbs, base) or 0:6.2f} {cpu} {hwm} {rss} {idle}  {probe}"
            )
    print(
        "(VmHWM: the kernel's peak RSS during the load, MiB; RSS: sampled peak;"
        " idle: RSS with the probe session alone, before the load)"
    )
    print("store requests per file:")
    for who in protocols:
        for direction in ("up", "down"):
            load = typical(results.loads[(who, direction)])
            print(f"  {LABELS[who]:<11} {direction:<4} {load.requests}")
    print_targets(targets(protocols, results, moved))


def targets(protocols: tuple[str, ...], results: Results, moved: int) -> list[Target]:
    """
    Issue 11: uploads >= 0.8x the SDK's concurrent multipart rate, peak RSS
    <= 150 MiB and NOOP p99 <= 50 ms during them; CPU <= 2 s/GB for FTP and
    4 s/GB for SFTP.
    """
    found = []
    for who in protocols:
        label = LABELS[who]
        up = typical(results.loads[(who, "up")])
        peak = max(x for x in (up.hwm, up.sampled) if x is not None)
        found += [
            Target(
                f"{label} uploads x SDK multipart",
                ratio(results.rate(who, "up", moved), results.rate("sdk", "up", moved)),
                0.8,
                unit="x",
            ),
            Target(f"{label} uploads: peak RSS (MiB)", peak, 150, at_least=False),
            Target(
                f"{label} uploads: probe NOOP p99 (ms)",
                up.probe.p99_ms() if up.probe else None,
                50,
                at_least=False,
            ),
        ]
        limit = 2 if who == "ftp" else 4
        for direction in ("up", "down"):
            load = typical(results.loads[(who, direction)])
            found.append(
                Target(
                    f"{label} {direction}: gateway CPU s per GB",
                    load.cpu / (moved / 1e9) if load.cpu is not None else None,
                    limit,
                    at_least=False,
                )
            )
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--protocols", type=protocols_argument(PROTOCOLS), default=PROTOCOLS
    )
    parser.add_argument("--cipher", help="the SFTP cipher (OpenSSH's sftp -c)")
    parser.add_argument(
        "--same-gateway",
        action="store_true",
        help="one gateway process for every load (by default each load gets "
        "a new one, so its peak RSS is its own)",
    )
    parser.add_argument(
        "--transfer",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [transfer] setting of the gateway (repeat for more), e.g. "
        "upload_buffer_budget=32M",
    )
    parser.add_argument(
        "--sdk-threads", type=int, default=1, help="part threads per SDK upload_file"
    )
    parser.add_argument("--probe-interval", type=float, default=0.02, metavar="SECONDS")
    add_tree_argument(parser)
    args = parser.parse_args()
    if min(args.count, args.size_mib, args.rounds, args.sdk_threads) < 1:
        parser.error("--count, --size-mib, --rounds and --sdk-threads must be >= 1")
    return args


def main() -> None:
    args = parse_args()
    print_header("concurrent transfers: cosgw against the COS SDK", args.tree)
    if args.transfer:
        print(f"gateway [transfer]: {', '.join(args.transfer)}")
    workdir = Path(tempfile.mkdtemp(prefix="cosgw-bench-concurrent-"))
    bench = None
    try:
        bench = Bench(args, workdir)
        results = run_rounds(bench, args.protocols, args.rounds)
        report(args, args.protocols, results)
    finally:
        if bench is not None:
            bench.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
