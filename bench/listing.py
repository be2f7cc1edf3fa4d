"""
Listing a large directory: the gateway against the store's own paging.

A directory listing through cosgw is a chain of the same ``GET Bucket``
pages any COS client would fetch (1,000 keys each, ``Delimiter='/'``,
``EncodingType=url``), turned into FTP lines and streamed down the data
connection page by page.  What the gateway adds on top of the store is the
price of that streaming: formatting, the event loop, the thread-pool hop
per page and the data connection.  This benchmark measures it in one run,
against one fake COS server process (moto behind the COS-dialect adapter,
tests/cosserver.py) and one gateway process (``twistd -n cosftp``):

  - store: the COS SDK paging ``dir/`` itself (``list_objects`` with
    ``Prefix='dir/'``, ``Delimiter='/'``, ``MaxKeys=1000``,
    ``EncodingType='url'``, following ``NextMarker`` until the answer is not
    truncated): total time, time to the first page, and the entry count;
  - gateway LIST and NLST of ``dir`` with ftplib's raw data socket: the
    clock starts when the command is sent (PASV and the data connection are
    made before) and stops at the end of the data; also the time to the
    first byte of the listing; the number of lines must equal --entries;

and prints the medians of --rounds (interleaved, because these machines are
noisy), the gateway/store ratios (the target is at most 1.25x for LIST), the
store requests of each listing as the fake COS server counts them (from
the command on: a LIST should fetch the same pages the SDK does, and
nothing else), and
the gateway's memory: its RSS before the first listing, after a warm-up
listing and after each round, and its peak RSS (VmHWM) after all of them,
which would show a listing that is collected in memory instead of streamed
(compare runs with different --entries: the whole LIST output of 10,000
entries is under 1 MB).  Pages are parsed in different pool threads, so
glibc's per-thread malloc arenas make RSS climb for the first rounds and
then stay flat; MALLOC_ARENA_MAX=1 in the environment shows the working set
alone.  moto
itself sorts the whole bucket for every page it serves, so absolute times
say little; the ratio is what to read.

The directory holds --entries entries: 10 subdirectories (each with one file
in it) and files with a mix of plain names and names with spaces, 中文 and
'#', plus the ``dir/`` marker object a MKD would have written.  Writing them
over HTTP would take longer than everything measured here (moto's server
handles ~150 boto3 PUTs a second on these machines, ~60 s for 10,000 keys),
so the fake COS server's process is started by this script: it puts the keys
straight into moto's in-memory S3 backend (well under a second), then runs
``tests/cosserver.py``'s ``main()`` unchanged.  Nothing goes through the
gateway; how long it took is printed.

--tree runs the gateway of another checkout (e.g. a ``git worktree`` of an
older commit) against the same store, for before/after tables.

    python bench/listing.py [--entries 10000] [--rounds 3] [--tree PATH]
"""

from __future__ import annotations

import argparse
import ftplib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._gateway import (  # noqa: E402
    PASSWORD,
    USER,
    free_port,
    memory_mib,
    start_gateway,
    stop,
)
from bench._measure import (  # noqa: E402
    StoreRequests,
    Target,
    add_tree_argument,
    per_item,
    print_header,
    print_targets,
)
from tests.cosserver import CosTestServer  # noqa: E402

DIRECTORY = "dir"
SUBDIRS = 10
#: The store process mode of this script (see serve_store).
SERVE_STORE = "serve-store"
POPULATED = "POPULATED"


def entry_names(count: int) -> tuple[list[str], list[str]]:
    """(file names, subdirectory names) of a directory of C{count} entries."""
    subdirs = [f"sub {i:02d} 目录 #{i}" for i in range(min(SUBDIRS, count))]
    files = []
    for i in range(count - len(subdirs)):
        if i % 4 == 0:
            files.append(f"报告 {i:06d} #draft.csv")
        else:
            files.append(f"file-{i:06d}.dat")
    return files, subdirs


def directory_keys(count: int) -> list[tuple[str, bytes]]:
    """The keys (and bodies) of the directory, its marker object included."""
    files, subdirs = entry_names(count)
    keys = [(f"{DIRECTORY}/", b"")]
    keys += [(f"{DIRECTORY}/{name}", b"x" * (i % 512)) for i, name in enumerate(files)]
    keys += [(f"{DIRECTORY}/{name}/inner.txt", b"inner") for name in subdirs]
    return keys


def serve_store(argv: list[str]) -> None:
    """
    The store process: moto's S3 backend filled in-process (no HTTP), then
    exactly what ``python tests/cosserver.py`` runs.  Prints
    ``POPULATED <seconds>`` before cosserver's own ``COSSERVER-PORT <n>``.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--bucket-region", required=True)
    args, rest = parser.parse_known_args(argv)
    # What tests/cosserver.py's main() sets before moto is imported.
    os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", "1048576")
    os.environ.pop("S3_IGNORE_SUBDOMAIN_BUCKETNAME", None)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "testing")
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from tests import cosserver

    start = time.perf_counter()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]  # the adapter's backend
    backend.create_bucket(args.bucket, args.bucket_region)
    for key, body in directory_keys(args.entries):
        backend.put_object(args.bucket, key, body)
    print(f"{POPULATED} {time.perf_counter() - start:.3f}", flush=True)
    cosserver.main(rest)


def start_store(
    entries: int, workdir: Path
) -> tuple[CosTestServer, subprocess.Popen[bytes], str, float, float]:
    """
    Start the fake COS server with the directory already in it.  Returns
    (server, process, bucket, seconds spent writing the keys, seconds until
    the server answered).
    """
    server = CosTestServer()
    bucket = f"listing-{server.appid}"
    env = dict(os.environ)
    env["S3_UPLOAD_PART_MIN_SIZE"] = "1048576"
    env.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(16 << 20))
    env["PYTHONUNBUFFERED"] = "1"
    log = open(workdir / "cosserver.log", "wb")  # noqa: SIM115
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            SERVE_STORE,
            "--entries",
            str(entries),
            "--bucket",
            bucket,
            "--bucket-region",
            server.region,
            "--host",
            server.host,
            "--port",
            "0",
            "--secret-id",
            server.secret_id,
            "--secret-key",
            server.secret_key,
            "--appid",
            server.appid,
            "--region",
            server.region,
            "--exit-on-stdin-eof",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
    )
    populated = None
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            word, _, value = raw.decode().strip().partition(" ")
            if word == POPULATED:
                populated = float(value)
            elif word == "COSSERVER-PORT":
                server.port = int(value)
                break
        if not server.port or populated is None:
            raise RuntimeError("no port")
    except BaseException:
        stop_store(proc)
        raise SystemExit(
            "fake COS server did not start:\n" + (workdir / "cosserver.log").read_text()
        ) from None
    server.endpoint_url = f"http://{server.host}:{server.port}"
    server.pid = proc.pid
    # The first answer, so the time includes the start of the HTTP side.
    server.cos_client().head_bucket(Bucket=bucket)
    return server, proc, bucket, populated, time.perf_counter() - start


def stop_store(proc: subprocess.Popen[bytes]) -> None:
    """The server exits when its stdin closes; by PID if it does not."""
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    proc.stdout.close()


def store_listing(client: Any, bucket: str) -> tuple[float, float, int]:
    """(total seconds, seconds to the first page, entries) paging with the SDK."""
    prefix = f"{DIRECTORY}/"
    marker = ""
    count = 0
    first = None
    start = time.perf_counter()
    while True:
        page = client.list_objects(
            Bucket=bucket,
            Prefix=prefix,
            Delimiter="/",
            Marker=marker,
            MaxKeys=1000,
            EncodingType="url",
        )
        if first is None:
            first = time.perf_counter() - start
        contents = page.get("Contents", []) or []
        prefixes = page.get("CommonPrefixes", []) or []
        # The marker object dir/ is the directory itself, not an entry.
        count += sum(1 for c in contents if c["Key"] != prefix) + len(prefixes)
        if str(page.get("IsTruncated", "false")).lower() != "true":
            break
        marker = page.get("NextMarker") or max(
            [c["Key"] for c in contents] + [p["Prefix"] for p in prefixes]
        )
        # EncodingType=url encodes NextMarker too; send it back decoded.
        marker = unquote(marker)
    return time.perf_counter() - start, first or 0.0, count


def gateway_listing(
    port: int, command: str, ready: Callable[[], object] = lambda: None
) -> tuple[float, float, int]:
    """
    (total seconds, seconds to the first byte, lines) of one LIST/NLST;
    C{ready} runs once the session is logged in and its data connection
    made, just before the command.
    """
    ftp = ftplib.FTP(encoding="utf-8")
    ftp.connect("127.0.0.1", port, timeout=120)
    ftp.login(USER, PASSWORD)
    try:
        host, data_port = ftp.makepasv()
        data = socket.create_connection((host, data_port), timeout=120)
        try:
            ready()
            start = time.perf_counter()
            reply = ftp.sendcmd(f"{command} {DIRECTORY}")
            if not reply.startswith("1"):
                raise ftplib.error_reply(reply)
            chunks = []
            first = None
            while True:
                chunk = data.recv(1 << 16)
                if not chunk:
                    break
                if first is None:
                    first = time.perf_counter() - start
                chunks.append(chunk)
            total = time.perf_counter() - start
        finally:
            data.close()
        done = ftp.voidresp()
        if not done.startswith("226"):
            raise ftplib.error_reply(done)
    finally:
        ftp.quit()
    lines = b"".join(chunks).decode("utf-8").split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    return total, first or 0.0, len(lines)


@dataclass
class Measured:
    """Times (seconds), store requests and the gateway's memory, per listing."""

    figures: dict[str, list[float]] = field(default_factory=dict)
    #: Store requests of the last listing of each kind ("store", "list", "nlst").
    requests: dict[str, Counter[str]] = field(default_factory=dict)
    rss_rounds: list[float] = field(default_factory=list)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)


def measure(
    args: argparse.Namespace,
    server: CosTestServer,
    bucket: str,
    gateway: subprocess.Popen[bytes],
) -> Measured:
    """
    One warm-up listing each, then --rounds of: the SDK's paging, LIST and
    NLST through the gateway, each with its store requests counted.
    """
    client = server.cos_client()
    requests = StoreRequests(server)
    found = Measured()
    for kind in ("store", "list", "nlst"):
        found.figures[kind], found.figures[f"{kind}_first"] = [], []
    # One warm-up each (connection pools, imports), not counted.
    store_listing(client, bucket)
    found.memory["before"] = memory_mib(gateway.pid)
    gateway_listing(args.port, "NLST")
    found.memory["warm"] = memory_mib(gateway.pid)
    for _ in range(args.rounds):
        for kind in ("store", "list", "nlst"):
            if kind == "store":
                requests.reset()
                total, first, count = store_listing(client, bucket)
            else:
                command = kind.upper()
                total, first, count = gateway_listing(
                    args.port, command, requests.reset
                )
            found.requests[kind] = requests.take()
            if count != args.entries:
                raise SystemExit(f"{kind}: {count} entries, not {args.entries}")
            found.figures[kind].append(total)
            found.figures[f"{kind}_first"].append(first)
        found.rss_rounds.append(memory_mib(gateway.pid)["VmRSS"])
    found.memory["after"] = memory_mib(gateway.pid)
    return found


def report(args: argparse.Namespace, m: Measured, populated: float, up: float) -> None:
    med = {k: statistics.median(v) for k, v in m.figures.items()}
    ms = 1000.0
    print(
        f"directory: {args.entries} entries ({SUBDIRS} subdirectories); "
        f"rounds: {args.rounds} (medians)"
    )
    print(
        f"populating: {populated:.2f} s writing {args.entries + 1} keys into "
        f"moto in the store process; store up and answering after {up:.2f} s"
    )
    print(
        f"store   SDK list_objects paging  {med['store'] * ms:8.1f} ms   "
        f"first page {med['store_first'] * ms:7.1f} ms"
    )
    for command in ("list", "nlst"):
        print(
            f"gateway {command.upper()} dir                 "
            f"{med[command] * ms:8.1f} ms   first byte "
            f"{med[command + '_first'] * ms:7.1f} ms   "
            f"ratio to store {med[command] / med['store']:.2f}x"
        )
    print("store requests per listing (COS operation names):")
    for kind, label in (("store", "SDK paging"), ("list", "LIST"), ("nlst", "NLST")):
        print(f"  {label:<10} {per_item(m.requests[kind], 1)}")
    before, warm, after = (m.memory[k] for k in ("before", "warm", "after"))
    print(
        f"gateway RSS before listing {before['VmRSS']:.1f} MiB (peak so far "
        f"{before['VmHWM']:.1f} MiB); after the warm-up listing "
        f"{warm['VmRSS']:.1f} MiB; after each round "
        + ", ".join(f"{x:.1f}" for x in m.rss_rounds)
        + f" MiB; peak (VmHWM) after all {1 + 2 * args.rounds} listings "
        f"{after['VmHWM']:.1f} MiB"
    )
    for k, v in m.figures.items():
        print(f"  {k}: " + ", ".join(f"{x * ms:.1f}" for x in v))
    pages = sum(m.requests["store"].values())
    print_targets(
        [
            Target(
                "LIST x the SDK's paging (earlier issue)",
                med["list"] / med["store"],
                1.25,
                False,
                "x",
            ),
            # LIST shows times, so it also lists the directory's markers of
            # client-set times once (cosgw.vfs.mtimes); NLST shows none.
            Target(
                f"LIST store requests (the SDK's {pages} pages + 1 of markers)",
                sum(m.requests["list"].values()),
                pages + 1,
                at_least=False,
            ),
            Target(
                f"NLST store requests (the SDK's pages: {pages})",
                sum(m.requests["nlst"].values()),
                pages,
                at_least=False,
            ),
        ]
    )


def main() -> None:
    if sys.argv[1:2] == [SERVE_STORE]:
        serve_store(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    add_tree_argument(parser)
    args = parser.parse_args()
    if args.entries < 1 or args.rounds < 1:
        parser.error("--entries and --rounds must be at least 1")
    args.port = args.port or free_port()
    print_header(f"listing {args.entries} entries: cosgw against the SDK", args.tree)

    workdir = Path(tempfile.mkdtemp(prefix="cosgw-bench-listing-"))
    try:
        server, store, bucket, populated, store_up = start_store(args.entries, workdir)
        gateway = None
        try:
            gateway = start_gateway(workdir, server, bucket, args.port, tree=args.tree)
            report(args, measure(args, server, bucket, gateway), populated, store_up)
        finally:
            if gateway is not None:
                stop(gateway)
            stop_store(store)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
