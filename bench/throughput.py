"""
Throughput, CPU and memory of the gateway for one big file, against the
store's own speed.

In one run, against the same fake COS server (moto behind the COS-dialect
adapter, tests/cosserver.py), this measures:

  - SDK: the COS SDK uploading and downloading the file itself (the
    faster of put_object and the SDK's own multipart upload_file for the
    upload; a streamed get_object for the download);
  - FTP: ftplib uploading and downloading the same file through cosgw,
    which runs as its own ``twistd -n cosftp`` process (from this checkout
    or --tree); FTPS: the same over explicit FTPS with PROT P (TLS on the
    data connections);
  - WebDAV: curl PUT and GET over plain HTTP (bench/_webdav.py);
  - SFTP: OpenSSH's ``sftp`` client (batch mode, an Ed25519 key) doing the
    same, once per cipher of --ciphers (``sftp -c``; default: OpenSSH's own
    choice); a cipher the gateway does not offer gets a row saying so and
    what it offers instead;

checking the SHA-256 of what reached the store and of what came back each
round.  It prints MB/s, the FTP/SDK and FTPS/SFTP-to-FTP ratios, the
gateway's CPU seconds per GB (from /proc, all its threads), its peak RSS
(VmHWM) while each protocol transferred, and the issue-11 targets next to
the figures.  For SFTP it also prints the cipher and MAC OpenSSH
negotiated, the client's CPU, and, for the ciphers Conch itself implements,
the ceiling of Conch's own packet layer (see bench/_ceilings.py).  With
socat installed it also measures what a bare relay achieves on this
machine.  A "ceilings" section then gives every party's CPU per GB for
every contender (client, gateway with its reactor thread apart, store;
bench/_parties.py), their sum, the bound the two cores put on it, the
bound of the reactor's one thread, beside the measured MB/s, and whether
SFTP at 0.8x FTP fits within them (bench/_ceilings.py).  Each figure is
the median of --rounds runs, directions interleaved, because these
machines are noisy; moto itself caps the figures (testing-notes.md): the
ratios are what to read.  SFTP's CPU includes its SSH handshake (a few
ms), FTP's its login.

--protocols picks the gateway's protocols (ftp, ftps, sftp, webdav; the SDK is
always measured).  --profile DIR then runs one upload and one download per
picked protocol again, each against a fresh gateway under cProfile, and
prints the top functions of its reactor thread (bench/_profile.py).

    python bench/throughput.py [--size-mib 256] [--rounds 3]
        [--protocols ftp,ftps,sftp] [--tree PATH] [--profile DIR]
        [--ciphers aes128-ctr,aes128-gcm@openssh.com,chacha20-poly1305@openssh.com]
        [--observability]

--observability measures instead what the gateway's logs and metrics cost
(its CPU with them off and on, alternated round by round; see
bench/_observability.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import ssl
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._ceilings import (  # noqa: E402
    conch_ceiling_for,
    print_ceilings,
    relay_ceiling,
    timed,
)
from bench._gateway import (  # noqa: E402
    SFTPBatch,
    Unavailable,
    client_key,
    free_port,
    ftp_session,
    memory_mib,
    reset_peak_rss,
    start_gateway,
    stop,
)
from bench._measure import (  # noqa: E402
    MiB,
    Target,
    add_tree_argument,
    file_sha256,
    load_line,
    median,
    print_header,
    print_targets,
    protocols_argument,
    random_file,
    ratio,
    stream_sha256,
)
from bench._parties import CpuMeter, PartyCpu  # noqa: E402
from bench._webdav import webdav_server_line, webdav_transfer  # noqa: E402
from tests.cosserver import CosTestServer  # noqa: E402

PROTOCOLS = ("ftp", "ftps", "sftp", "webdav")
DIRECTIONS = ("up", "down")
#: Ciphers whose rows count for the SFTP target ("OpenSSH client, AEAD").
AEAD = ("gcm@openssh.com", "chacha20-poly1305@openssh.com")


def per_direction() -> dict[str, list[float]]:
    return {d: [] for d in DIRECTIONS}


@dataclass
class Variant:
    """
    One way through the gateway (FTP, FTPS, or SFTP with one cipher) and
    what it measured, per direction: MB/s, the gateway's, the store's and
    (SFTP) the client's CPU seconds per transfer.
    """

    protocol: str
    cipher: Optional[str] = None
    mbs: dict[str, list[float]] = field(default_factory=per_direction)
    cpu: dict[str, list[float]] = field(default_factory=per_direction)
    store_cpu: dict[str, list[float]] = field(default_factory=per_direction)
    client_cpu: dict[str, list[float]] = field(default_factory=per_direction)
    #: Every party's CPU seconds per transfer (bench/_parties.py).
    parties: dict[str, list[PartyCpu]] = field(
        default_factory=lambda: {d: [] for d in DIRECTIONS}
    )
    peak: float = 0.0
    #: OpenSSH's "kex: ..." debug lines of its first session.
    kex: list[str] = field(default_factory=list)
    unavailable: Optional[str] = None

    @property
    def label(self) -> str:
        if self.protocol != "sftp":
            labels = {"ftp": "FTP", "ftps": "FTPS PROT P", "webdav": "WebDAV (curl)"}
            return labels[self.protocol]
        return f"SFTP {self.negotiated() or self.cipher or ''}".strip()

    def negotiated(self) -> str:
        """The cipher and MAC of the server->client direction, as OpenSSH saw them."""
        for line in self.kex:
            if line.startswith("kex: server->client cipher: "):
                words = line.split()
                return f"{words[3]} {words[5]}".replace(" <implicit>", "")
        return ""

    def is_aead(self) -> bool:
        return any(name in self.negotiated() for name in AEAD)

    def rate(self, direction: str) -> Optional[float]:
        return median(self.mbs[direction])

    def cpu_per_gb(self, direction: str, size: int) -> Optional[float]:
        seconds = median(self.cpu[direction])
        return None if seconds is None else seconds / (size / 1e9)


class Bench:
    """The store, the gateway, the file and how each contender moves it."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.size = args.size_mib * MiB
        self.source = workdir / "source.bin"
        self.digest = random_file(self.source, args.size_mib)
        # SFTP downloads land in memory where there is a tmpfs, as FTP's do.
        shm = Path("/dev/shm")
        landing = shm if shm.is_dir() and os.access(shm, os.W_OK) else workdir
        self.landing = landing / f"cosgw-bench-{os.getpid()}.bin"
        self.key, self.public_key = client_key(workdir)
        self.port = free_port()
        self.sftp_port = free_port() if "sftp" in args.protocols else None
        self.dav_port = free_port() if "webdav" in args.protocols else None
        self.sdk: dict[str, list[float]] = {"put": [], "mp": [], "up": [], "down": []}
        #: Every party's CPU per SDK transfer: put, upload_file (mp), down.
        self.sdk_cpu: dict[str, list[PartyCpu]] = {"put": [], "mp": [], "down": []}
        #: Lines for the gateway's [server] section (--observability).
        self.server_lines = webdav_server_line(self.dav_port) if self.dav_port else ""
        self.server = CosTestServer()
        self.server.start()
        self.gateway: Any = None
        try:
            self.bucket = self.server.create_bucket("bench")
            self.client = self.server.cos_client()
            self.gateway = self.start()
        except BaseException:
            self.server.stop()
            raise
        self.can_reset = reset_peak_rss(self.gateway.pid)
        self.tls = ssl.create_default_context(
            cafile=str(workdir / "state" / "tls-cert.pem")
        )

    def start(self, profile: Optional[Path] = None) -> Any:
        return start_gateway(
            self.workdir,
            self.server,
            self.bucket,
            self.port,
            self.sftp_port,
            self.public_key,
            profile,
            tree=self.args.tree,
            server_lines=self.server_lines,
        )

    def close(self) -> None:
        if self.gateway is not None:
            stop(self.gateway)
        self.server.stop()
        self.landing.unlink(missing_ok=True)

    def check(self, who: str, got: tuple[int, str]) -> None:
        if got != (self.size, self.digest):
            raise SystemExit(f"{who}: {got[0]} bytes, not the source's")

    def measured(
        self, variant: Variant, direction: str, transfer: Callable[[], float]
    ) -> None:
        """
        Run C{transfer} (which returns its seconds), recording it and every
        party's CPU: the client is this process (ftplib) or the child it
        reaps (OpenSSH's sftp, curl).
        """
        pid = self.gateway.pid
        if self.can_reset:
            reset_peak_rss(pid)
        meter = self.meter(pid, child=variant.protocol in ("sftp", "webdav"))
        meter.start()
        seconds = transfer()
        used = meter.stop()
        variant.parties[direction].append(used)
        variant.cpu[direction].append(used.server or 0.0)
        variant.store_cpu[direction].append(used.store)
        variant.client_cpu[direction].append(used.client)
        variant.mbs[direction].append(self.size / seconds / 1e6)
        variant.peak = max(variant.peak, memory_mib(pid)["VmHWM"])

    def meter(self, gateway: Optional[int], child: bool = False) -> CpuMeter:
        """Every party's CPU; the gateway's reactor (twistd's main thread) apart."""
        assert self.server.pid is not None
        return CpuMeter(self.server.pid, gateway, gateway is not None, child)

    def sdk_timed(self, what: str, work: Callable[[], Any]) -> float:
        """Seconds of the SDK's C{work}, recording every party's CPU as C{what}."""
        meter = self.meter(None)
        meter.start()
        seconds = timed(work)
        self.sdk_cpu[what].append(meter.stop())
        return seconds

    def sdk_up(self) -> None:
        """The SDK's best of: one PUT, or its own threaded multipart."""
        t_put = self.sdk_timed(
            "put",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key="direct.bin", Body=self.source.read_bytes()
            ),
        )
        t_mp = self.sdk_timed(
            "mp",
            lambda: self.client.upload_file(
                Bucket=self.bucket,
                Key="direct.bin",
                LocalFilePath=str(self.source),
                PartSize=8,
                MAXThread=4,
            ),
        )
        self.sdk["put"].append(self.size / t_put / 1e6)
        self.sdk["mp"].append(self.size / t_mp / 1e6)
        self.sdk["up"].append(self.size / min(t_put, t_mp) / 1e6)

    def sdk_down(self) -> None:
        got: list[tuple[int, str]] = []

        def run() -> None:
            body = self.client.get_object(Bucket=self.bucket, Key="direct.bin")["Body"]
            got.append(stream_sha256(body.get_raw_stream()))

        self.sdk["down"].append(self.size / self.sdk_timed("down", run) / 1e6)
        self.check("SDK download", got[0])

    def ftp(self, variant: Variant, direction: str) -> None:
        tls = self.tls if variant.protocol == "ftps" else None
        name = f"{variant.protocol}.bin"

        def up() -> float:
            ftp = ftp_session(self.port, tls=tls)
            with open(self.source, "rb") as f:
                t = timed(lambda: ftp.storbinary(f"STOR {name}", f, blocksize=MiB))
            ftp.quit()
            return t

        def down() -> float:
            ftp = ftp_session(self.port, tls=tls)
            digest, size = hashlib.sha256(), [0]

            def sink(data: bytes) -> None:
                digest.update(data)
                size[0] += len(data)

            t = timed(lambda: ftp.retrbinary(f"RETR {name}", sink, blocksize=MiB))
            ftp.quit()
            self.check(f"{variant.label} download", (size[0], digest.hexdigest()))
            return t

        self.measured(variant, direction, up if direction == "up" else down)
        if direction == "up":
            self.check(f"{variant.label} upload", self.stored(name))

    def stored(self, key: str) -> tuple[int, str]:
        """Size and SHA-256 of the object C{key}, read back from the store."""
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        return stream_sha256(body.get_raw_stream())

    def sftp_batch(self, variant: Variant) -> SFTPBatch:
        assert self.sftp_port is not None
        return SFTPBatch(self.sftp_port, self.key, self.workdir, variant.cipher)

    def sftp_check(self, variant: Variant) -> None:
        """One empty session: the negotiated algorithms, or why there are none."""
        batch = self.sftp_batch(variant)
        try:
            batch.run([], verbose=True)
        except Unavailable as exc:
            variant.unavailable = str(exc)
        variant.kex = batch.kex

    def sftp(self, variant: Variant, direction: str) -> None:
        batch = self.sftp_batch(variant)
        name = f"sftp-{variant.cipher or 'default'}.bin"
        if direction == "up":
            command = f"put {self.source} /{name}"
        else:
            command = f"get /{name} {self.landing}"

        def transfer() -> float:
            (t,), _ = batch.run([command])
            return t

        try:
            self.measured(variant, direction, transfer)
            if direction == "up":
                self.check(f"{variant.label} upload", self.stored(name))
            else:
                self.check(f"{variant.label} download", file_sha256(self.landing))
        finally:
            self.landing.unlink(missing_ok=True)

    def webdav(self, variant: Variant, direction: str) -> None:
        port = self.dav_port
        assert port is not None
        up = direction == "up"

        def transfer() -> float:
            return webdav_transfer(port, "webdav.bin", self.source, self.landing, up)

        try:
            self.measured(variant, direction, transfer)
            if up:
                self.check(f"{variant.label} upload", self.stored("webdav.bin"))
            else:
                self.check(f"{variant.label} download", file_sha256(self.landing))
        finally:
            self.landing.unlink(missing_ok=True)

    def round(self, variants: list[Variant]) -> None:
        """SDK, FTP and SFTP uploads, then their downloads, then FTPS both ways."""
        plain = [v for v in variants if v.protocol != "ftps" and not v.unavailable]
        for direction in DIRECTIONS:
            getattr(self, f"sdk_{direction}")()
            for variant in plain:
                move = {"ftp": self.ftp, "webdav": self.webdav}.get(
                    variant.protocol, self.sftp
                )
                move(variant, direction)
        for variant in variants:
            if variant.protocol == "ftps":
                self.ftp(variant, "up")
                self.ftp(variant, "down")


def variants_of(args: argparse.Namespace) -> list[Variant]:
    found = []
    for protocol in args.protocols:
        if protocol != "sftp":
            found.append(Variant(protocol))
            continue
        found += [Variant("sftp", cipher) for cipher in args.ciphers or [None]]
    return found


def report(args: argparse.Namespace, bench: Bench, variants: list[Variant]) -> None:
    size = bench.size
    sdk = {k: median(v) for k, v in bench.sdk.items()}
    ftp = next((v for v in variants if v.protocol == "ftp"), None)
    print(
        f"file: {args.size_mib} MiB, rounds: {args.rounds} (median MB/s; FTP "
        "x the SDK, FTPS and SFTP x FTP)"
    )
    print(
        f"{'contender':<36} {'up':>7} {'x':>5} {'down':>7} {'x':>5} "
        f"{'CPU s/GB up':>11} {'down':>5} {'VmHWM':>6}"
    )
    print(
        f"{'SDK (best up: put / upload_file)':<36} {sdk['up']:7.1f} {'':>5} "
        f"{sdk['down']:7.1f}   (put {sdk['put']:.1f}, upload_file {sdk['mp']:.1f})"
    )
    for variant in variants:
        if variant.unavailable:
            print(f"{variant.label:<36} {variant.unavailable}")
            continue
        cells = []
        for direction in DIRECTIONS:
            if variant.protocol == "ftp":
                base = sdk["mp"] if direction == "up" else sdk["down"]
            else:
                base = ftp.rate(direction) if ftp else None
            mbs, x = variant.rate(direction), ratio(variant.rate(direction), base)
            cells.append(
                f"{mbs or 0:7.1f} " + (f"{x:5.2f}" if x is not None else "    -")
            )
        cpu = [variant.cpu_per_gb(d, size) or 0 for d in DIRECTIONS]
        print(
            f"{variant.label:<36} {cells[0]} {cells[1]} {cpu[0]:11.2f} "
            f"{cpu[1]:5.2f} {variant.peak:6.0f}"
        )
    print("(FTP x: of SDK upload_file and get_object; VmHWM: peak RSS, MiB)")
    details(args, bench, variants)
    print_ceilings(bench, variants, sdk)
    print_targets(targets(variants, size))
    print(load_line("at the end"))


def details(args: argparse.Namespace, bench: Bench, variants: list[Variant]) -> None:
    """Store and client CPU, the relay ceiling and Conch's packet ceiling."""
    measured = [v for v in variants if not v.unavailable]
    store = " | ".join(
        f"{v.label} "
        + " ".join(f"{d} {median(v.store_cpu[d]) or 0:.2f}" for d in DIRECTIONS)
        for v in measured
    )
    print(f"store (moto) CPU s per transfer: {store}")
    for v in measured:
        if v.protocol == "sftp":
            client = " ".join(
                f"{d} {median(v.client_cpu[d]) or 0:.2f}" for d in DIRECTIONS
            )
            print(f"{v.label}: sftp client CPU s per transfer {client}")
            conch = conch_ceiling_for(v.kex, bench.size)
            if conch is not None:
                cipher, mac, (send, receive) = conch
                print(
                    f"  Conch's packet layer alone ({cipher} {mac}, one core): send "
                    f"{send:.1f} MB/s (download x{(v.rate('down') or 0) / send:.2f} of "
                    f"it), receive {receive:.1f} (upload x"
                    f"{(v.rate('up') or 0) / receive:.2f} of it)"
                )
    key = next(
        (f"{v.protocol}.bin" for v in measured if v.protocol == "ftp"), "direct.bin"
    )
    relay = relay_ceiling(bench.server, bench.bucket, bench.size, args.rounds, key)
    if relay is not None:
        straight, relayed = relay
        print(
            f"relay ceiling: curl from the store {straight:.1f} MB/s, through socat "
            f"{relayed:.1f} (x{relayed / straight:.2f})"
        )


def targets(variants: list[Variant], size: int) -> list[Target]:
    """
    Issue 11: SFTP >= 0.8x FTP both ways (OpenSSH, AEAD cipher); FTPS >=
    0.8x FTP up and 0.6x down; gateway CPU <= 2 s/GB for FTP, 4 for SFTP.
    """
    ftp = next((v for v in variants if v.protocol == "ftp"), None)
    found = []

    def vs_ftp(variant: Variant, direction: str) -> Optional[float]:
        return ratio(variant.rate(direction), ftp.rate(direction) if ftp else None)

    aead = [v for v in variants if v.protocol == "sftp" and v.is_aead()]
    for variant in aead or [Variant("sftp", "(AEAD cipher)")]:
        for direction in DIRECTIONS:
            found.append(
                Target(
                    f"{variant.label} {direction} x FTP",
                    vs_ftp(variant, direction),
                    0.8,
                    unit="x",
                )
            )
    for variant in (v for v in variants if v.protocol == "ftps"):
        for direction, limit in (("up", 0.8), ("down", 0.6)):
            found.append(
                Target(
                    f"FTPS {direction} x FTP",
                    vs_ftp(variant, direction),
                    limit,
                    unit="x",
                )
            )
    for variant in variants:
        if variant.protocol == "ftps" or variant.unavailable:
            continue
        limit = 2 if variant.protocol == "ftp" else 4
        for direction in DIRECTIONS:
            found.append(
                Target(
                    f"{variant.label} {direction}: CPU s per GB",
                    variant.cpu_per_gb(direction, size),
                    limit,
                    at_least=False,
                )
            )
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--protocols",
        type=protocols_argument(PROTOCOLS),
        default=PROTOCOLS,
        help="comma-separated: ftp, ftps, sftp, webdav (default: all)",
    )
    parser.add_argument(
        "--ciphers",
        type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
        help="SFTP once per cipher (OpenSSH sftp -c), e.g. aes128-ctr,"
        "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also profile one upload and one download per protocol (cProfile)",
    )
    parser.add_argument(
        "--observability",
        action="store_true",
        help="instead: the gateway's CPU with its logs and metrics off and on "
        "(bench/_observability.py)",
    )
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=15.0,
        help="with --observability: seconds between /metrics scrapes (15)",
    )
    add_tree_argument(parser)
    args = parser.parse_args()
    if args.size_mib < 1 or args.rounds < 0:
        parser.error("--size-mib must be at least 1 and --rounds at least 0")
    return args


def main() -> None:
    args = parse_args()
    print_header("throughput of one big file: cosgw against the COS SDK", args.tree)
    workdir = Path(tempfile.mkdtemp(prefix="cosgw-bench-throughput-"))
    bench = None
    try:
        bench = Bench(args, workdir)
        if args.observability:
            from bench import _observability

            modes = _observability.measure(
                bench, args.rounds, lambda: variants_of(args), args.scrape_interval
            )
            _observability.report(modes, bench.size)
            return
        variants = variants_of(args)
        for variant in variants:
            if variant.protocol == "sftp":
                bench.sftp_check(variant)
        for _ in range(args.rounds):
            bench.round(variants)
        if args.rounds:
            report(args, bench, variants)
        if args.profile is not None:
            from bench._profile import profile

            stop(bench.gateway)
            bench.gateway = None
            profile(
                bench, tuple(p for p in args.protocols if p != "webdav"), args.profile
            )
    finally:
        if bench is not None:
            bench.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
