"""
Many small files in one session: what cameras, scanners and partner batch
jobs feel.

In one run, against one fake COS server (moto behind the COS-dialect
adapter, tests/cosserver.py), each contender uploads --files files of
--size-kib KiB into a new directory, then downloads them all again, one
after the other in one session:

  - SDK: the COS SDK's own per-object rate, put_object and get_object in
    one thread (the baseline every ratio is taken against);
  - cosgw FTP: ftplib, one logged-in session, PASV + STOR (RETR) per file;
  - cosgw SFTP: OpenSSH's ``sftp`` in batch mode, one ``put`` (``get``)
    per file, timed from its echo of the first to the end of the last;
  - rclone serve ftp and rclone serve sftp over the same bucket, when this
    rclone has them (otherwise a row says why): the gateway a user would
    pick today.

It prints files/s, the ratio to the SDK, the store requests per file of
each operation (the fake server counts them by COS operation; rclone's
SigV4 requests count as ``_bypass``), the gateway's CPU per file, a
per-file time budget (the CPU of every party, taken in the same run: the
client, this process for ftplib and the SDK or the reaped sftp; the
server, its reactor thread apart; the store's process; and the rest of the
wall time, which is waiting) with the ratio a sequential model predicts
beside the measured one (bench/_small_budget.py), and the issue's targets
next to the figures.  --store-latency MS makes the fake COS server hold
every COS request MS milliseconds (real COS in the region: about 5-30 ms),
for the SDK and the gateway alike, to read the ratios at a realistic round
trip.  The FTP session logs in, makes and
enters its directory before the count starts, so an upload counts what a
STOR of a new file in a known directory costs.  OpenSSH's batch cannot be
split that way: its count is that of the batch minus that of the same
batch without the transfers (login and ``cd``), measured just before.
Every download is checked against the SHA-256 of what was uploaded.
Each round uses new directories and deletes them afterwards, so every
round sees a bucket of the same size (moto scans all of it per LIST);
contenders take turns in a rotating order; figures are medians of --rounds.

    python bench/small_files.py [--files 500] [--size-kib 16] [--rounds 2]
        [--tree PATH] [--no-rclone] [--store-latency MS] [--profile DIR]

With --profile DIR it measures instead where a file's time goes in the
gateway (bench/_small_profile.py): CPU, reactor time, trips to the thread
pool and socket writes per file, and the costliest functions, for FTP and
SFTP each way, under cProfile.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._gateway import (  # noqa: E402
    SFTPBatch,
    Unavailable,
    client_key,
    free_port,
    ftp_session,
    start_gateway,
    start_rclone,
    stop,
)
from bench._measure import (  # noqa: E402
    StoreRequests,
    Target,
    add_tree_argument,
    load_line,
    median,
    per_item,
    print_header,
    print_targets,
    ratio,
)
from bench._parties import CpuMeter, PartyCpu  # noqa: E402
from bench._small_budget import print_budget  # noqa: E402
from bench._small_profile import run_profiles  # noqa: E402
from tests.cosserver import CosTestServer  # noqa: E402


@dataclass
class Files:
    """The files every contender moves: names, bodies, digests, local copies."""

    names: list[str]
    bodies: list[bytes]
    digests: list[str]
    local: Path

    @classmethod
    def make(cls, count: int, size: int, workdir: Path) -> Files:
        local = workdir / "source"
        local.mkdir()
        names = [f"f{i:05d}.bin" for i in range(count)]
        bodies = [os.urandom(size) for _ in names]
        for name, body in zip(names, bodies):
            (local / name).write_bytes(body)
        digests = [hashlib.sha256(b).hexdigest() for b in bodies]
        return cls(names, bodies, digests, local)

    def check(self, contender: str, got: list[bytes]) -> None:
        """Raise unless C{got} holds exactly the bodies, in order."""
        bad = [
            name
            for name, digest, body in zip(self.names, self.digests, got)
            if hashlib.sha256(body).hexdigest() != digest
        ]
        if bad or len(got) != len(self.names):
            raise SystemExit(
                f"{contender}: {len(bad)} of {len(got)} downloads differ from "
                f"the upload (first: {bad[:3]})"
            )


@dataclass
class Run:
    """One direction of one contender in one round."""

    seconds: float
    requests: Counter[str]
    parties: PartyCpu

    @property
    def cpu(self) -> Optional[float]:
        """The server's CPU seconds (None for the SDK, which has no server)."""
        return self.parties.server


@dataclass
class Contender:
    """
    One way of moving the files: L{up} and L{down} take the round's
    directory name and return a L{Run}.  C{pid} is the server process whose
    CPU is counted (None for the SDK, which has none).  C{client}: what the
    client is, for the per-file budget.
    """

    label: str
    up: Callable[[str], Run]
    down: Callable[[str], Run]
    pid: Optional[int] = None
    is_gateway: bool = False
    client: str = "ftplib"
    runs: dict[str, list[Run]] = field(default_factory=lambda: {"up": [], "down": []})
    skipped: Optional[str] = None


class Bench:
    """The store, the files and the ways of timing a contender's pass."""

    def __init__(
        self, server: CosTestServer, bucket: str, files: Files, workdir: Path
    ) -> None:
        self.server = server
        self.bucket = bucket
        self.client = server.cos_client()
        self.files = files
        self.workdir = workdir
        self.requests = StoreRequests(server)

    def meter(
        self, pid: Optional[int], gateway: bool = False, child: bool = False
    ) -> CpuMeter:
        """
        Every party's CPU: the store's, server C{pid}'s (its reactor thread
        apart when it is the C{gateway}), and the client's, this process or
        (C{child}) the sftp it reaps.
        """
        assert self.server.pid is not None
        return CpuMeter(self.server.pid, pid, gateway, child)

    def timed(self, meter: CpuMeter, work: Callable[[], float | None]) -> Run:
        """
        Count store requests and every party's CPU around C{work}, which
        returns its own seconds (SFTP times its commands itself) or None to
        be timed here.
        """
        self.requests.reset()
        meter.start()
        start = time.perf_counter()
        seconds = work()
        wall = time.perf_counter() - start
        parties = meter.stop()
        return Run(wall if seconds is None else seconds, self.requests.take(), parties)

    def sdk(self) -> Contender:
        client, bucket, files = self.client, self.bucket, self.files

        def up(directory: str) -> Run:
            def work() -> None:
                for name, body in zip(files.names, files.bodies):
                    client.put_object(
                        Bucket=bucket, Key=f"{directory}/{name}", Body=body
                    )

            return self.timed(self.meter(None), work)

        def down(directory: str) -> Run:
            got: list[bytes] = []

            def work() -> None:
                for name in files.names:
                    reply = client.get_object(Bucket=bucket, Key=f"{directory}/{name}")
                    got.append(reply["Body"].get_raw_stream().read())

            run = self.timed(self.meter(None), work)
            files.check("SDK", got)
            return run

        return Contender("SDK put/get_object", up, down, client="the SDK")

    def ftp(self, label: str, port: int, pid: int, gateway: bool) -> Contender:
        files = self.files

        def up(directory: str) -> Run:
            ftp = ftp_session(port)
            ftp.mkd(directory)
            ftp.cwd(directory)

            def work() -> None:
                for name, body in zip(files.names, files.bodies):
                    ftp.storbinary(f"STOR {name}", io.BytesIO(body))

            run = self.timed(self.meter(pid, gateway), work)
            ftp.quit()
            return run

        def down(directory: str) -> Run:
            ftp = ftp_session(port)
            ftp.cwd(directory)
            got: list[bytes] = []

            def work() -> None:
                for name in files.names:
                    chunks: list[bytes] = []
                    ftp.retrbinary(f"RETR {name}", chunks.append)
                    got.append(b"".join(chunks))

            run = self.timed(self.meter(pid, gateway), work)
            ftp.quit()
            files.check(label, got)
            return run

        return Contender(label, up, down, pid, gateway)

    def sftp(self, label: str, batch: SFTPBatch, pid: int, gateway: bool) -> Contender:
        files = self.files
        limit = 300 + 2 * len(files.names)

        def session(directory: str, commands: list[str]) -> Run:
            """
            Time C{commands} in C{directory}, less the session's own
            requests and CPU (login, ``cd``), measured by an empty batch.
            """
            enter = [f"cd /{directory}"]

            def transfers(commands: list[str]) -> float:
                """The seconds of the batch's commands after its ``cd``."""
                return sum(batch.run(enter + commands, timeout=limit)[0][1:])

            meter = self.meter(pid, gateway, child=True)
            overhead = self.timed(meter, lambda: transfers([]))
            run = self.timed(meter, lambda: transfers(commands))
            run.requests.subtract(overhead.requests)
            run.requests = +run.requests
            run.parties = run.parties.minus(overhead.parties)
            return run

        def up(directory: str) -> Run:
            batch.run([f"mkdir /{directory}"], timeout=limit)
            return session(
                directory, [f"put {files.local / name} {name}" for name in files.names]
            )

        def down(directory: str) -> Run:
            landing = self.workdir / f"down-{directory}"
            landing.mkdir()
            try:
                run = session(
                    directory, [f"get {name} {landing / name}" for name in files.names]
                )
                files.check(label, [(landing / n).read_bytes() for n in files.names])
            finally:
                shutil.rmtree(landing)
            return run

        return Contender(label, up, down, pid, gateway, "OpenSSH sftp")

    def delete_round(self, prefix: str) -> None:
        """Delete every key under C{prefix} (up to 1,000 per request)."""
        keys = self.server.keys(self.bucket, prefix)
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={
                    "Object": [{"Key": k} for k in keys[i : i + 1000]],
                    "Quiet": "true",
                },
            )


def run_rounds(bench: Bench, contenders: list[Contender], rounds: int) -> None:
    """
    Each round: every contender uploads into its own new directory, then
    every contender downloads its own files; then the round's keys go.  The
    order rotates from round to round.  An rclone contender that fails is
    left out with the reason; a failing gateway stops the benchmark.
    """
    for r in range(rounds):
        shift = r % len(contenders)
        order = contenders[shift:] + contenders[:shift]
        for direction in ("up", "down"):
            for contender in order:
                if contender.skipped:
                    continue
                directory = f"r{r}-c{contenders.index(contender)}"
                try:
                    run = getattr(contender, direction)(directory)
                except Exception as exc:
                    if contender.is_gateway:
                        raise
                    contender.skipped = f"failed: {str(exc).strip()[:160]}"
                    continue
                contender.runs[direction].append(run)
        bench.delete_round(f"r{r}-")


def rate(contender: Contender, direction: str, files: int) -> Optional[float]:
    return median([files / run.seconds for run in contender.runs[direction]])


def typical_requests(runs: list[Run]) -> Counter[str]:
    """The requests of the round with the median total."""
    ordered = sorted(runs, key=lambda run: sum(run.requests.values()))
    return ordered[(len(ordered) - 1) // 2].requests if ordered else Counter()


def report(args: argparse.Namespace, contenders: list[Contender]) -> None:
    n = args.files
    sdk = contenders[0]
    base = {d: rate(sdk, d, n) for d in ("up", "down")}
    print(
        f"{n} files of {args.size_kib} KiB, one session each way; median of "
        f"{args.rounds} rounds (files/s, x the SDK)"
    )
    print(f"{'contender':<20} {'up f/s':>8} {'x SDK':>6} {'down f/s':>9} {'x SDK':>6}")
    for c in contenders:
        if c.skipped and not c.runs["up"]:
            print(f"{c.label:<20} skipped: {c.skipped}")
            continue
        up, down = rate(c, "up", n), rate(c, "down", n)
        cells = [f"{x:8.1f}" if x is not None else f"{'-':>8}" for x in (up, down)]
        ratios = [ratio(up, base["up"]), ratio(down, base["down"])]
        shown = [f"{x:6.2f}" if x is not None else f"{'-':>6}" for x in ratios]
        print(f"{c.label:<20} {cells[0]} {shown[0]} {cells[1]:>9} {shown[1]}")
    print("store requests per file (median round; COS operation names):")
    for c in contenders:
        for direction in ("up", "down"):
            if c.runs[direction]:
                counted = per_item(typical_requests(c.runs[direction]), n)
                print(f"  {c.label:<20} {direction:<4} {counted}")
    cpu = []
    for c in contenders:
        if c.pid and c.runs["up"]:
            ms = [
                f"{d} {statistics.median(r.cpu or 0 for r in c.runs[d]) * 1000 / n:.1f}"
                for d in ("up", "down")
                if c.runs[d]
            ]
            cpu.append(f"{c.label} " + " ".join(ms))
    print("server CPU ms per file: " + " | ".join(cpu))
    for c in contenders:
        if c.skipped and c.runs["up"]:
            print(f"{c.label}: later rounds skipped: {c.skipped}")
    print_budget(contenders, n, args.store_latency)
    print_targets(targets(contenders, base, n))
    print(load_line("at the end"))


def targets(
    contenders: list[Contender], base: dict[str, Optional[float]], n: int
) -> list[Target]:
    """Issue 11: >= 0.8x the SDK both ways; <= 2 requests per STOR, 1 per RETR."""
    found: list[Target] = []
    for c in (c for c in contenders if c.is_gateway):
        for direction in ("up", "down"):
            found.append(
                Target(
                    f"{c.label} {direction} x SDK per-object rate",
                    ratio(rate(c, direction, n), base[direction]),
                    0.8,
                    unit="x",
                )
            )
        for direction, limit, what in (
            ("up", 2, "new-file upload"),
            ("down", 1, "download"),
        ):
            runs = c.runs[direction]
            value = sum(typical_requests(runs).values()) / n if runs else None
            found.append(
                Target(
                    f"{c.label} store requests per {what}", value, limit, at_least=False
                )
            )
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--size-kib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--no-rclone", action="store_true", help="leave rclone serve out"
    )
    parser.add_argument(
        "--store-latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="the fake COS server holds every COS request MS milliseconds "
        "before answering (real COS in the same region: about 5-30 ms); the "
        "SDK baseline and the gateway see the same; default 0",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile the gateway per file instead (cProfile files into DIR)",
    )
    add_tree_argument(parser)
    args = parser.parse_args()
    if args.files < 1 or args.rounds < 1 or args.size_kib < 0:
        parser.error("--files and --rounds must be at least 1")
    if args.store_latency < 0:
        parser.error("--store-latency must not be negative")
    return args


def main() -> None:
    args = parse_args()
    print_header("small files: cosgw against the COS SDK and rclone serve", args.tree)
    workdir = Path(tempfile.mkdtemp(prefix="cosgw-bench-small-"))
    server = CosTestServer()
    processes = []
    try:
        files = Files.make(args.files, args.size_kib * 1024, workdir)
        key, public_key = client_key(workdir)
        server.start()
        bucket = server.create_bucket("bench")
        hold_requests(server, args)
        bench = Bench(server, bucket, files, workdir)
        if args.profile is not None:
            sftp = SFTPBatch(0, key, workdir)
            run_profiles(bench, sftp, public_key, args)
            return
        port, sftp_port = free_port(), free_port()
        gateway = start_gateway(
            workdir, server, bucket, port, sftp_port, public_key, tree=args.tree
        )
        processes.append(gateway)
        contenders = [
            bench.sdk(),
            bench.ftp("cosgw FTP", port, gateway.pid, True),
            bench.sftp(
                "cosgw SFTP", SFTPBatch(sftp_port, key, workdir), gateway.pid, True
            ),
        ]
        if not args.no_rclone:
            contenders += rclone_contenders(bench, workdir, key, processes)
        run_rounds(bench, contenders, args.rounds)
        report(args, contenders)
    finally:
        for proc in processes:
            stop(proc)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def hold_requests(server: CosTestServer, args: argparse.Namespace) -> None:
    """
    Make the fake COS server hold every COS request --store-latency ms
    (its ``delay`` fault, armed for every operation without end), and say
    which latency the figures were taken at.
    """
    if not args.store_latency:
        print("store latency: none added (the fake COS server answers at once)")
        return
    server.inject("delay", op="*", count=-1, seconds=args.store_latency / 1000)
    bypass = "" if args.no_rclone else "; rclone's SigV4 requests bypass it"
    print(
        f"store latency: every COS request held {args.store_latency:g} ms by the "
        f"fake COS server (SDK baseline and gateway alike{bypass})"
    )


def rclone_contenders(
    bench: Bench, workdir: Path, key: Path, processes: list
) -> list[Contender]:
    """rclone serve ftp and sftp over the bucket, or rows saying why not."""
    found = []
    for protocol in ("ftp", "sftp"):
        label = f"rclone serve {protocol}"
        try:
            proc, port = start_rclone(
                protocol,
                workdir,
                bench.server,
                bench.bucket,
                Path(f"{key}.pub") if protocol == "sftp" else None,
            )
        except Unavailable as exc:
            skipped = Contender(label, _unused, _unused)
            skipped.skipped = str(exc)
            found.append(skipped)
            continue
        processes.append(proc)
        if protocol == "ftp":
            found.append(bench.ftp(label, port, proc.pid, False))
        else:
            found.append(
                bench.sftp(label, SFTPBatch(port, key, workdir), proc.pid, False)
            )
    return found


def _unused(directory: str) -> Run:
    raise AssertionError("a skipped contender does not run")


if __name__ == "__main__":
    main()
