"""
Throughput and memory of the gateway against the store's own speed.

In one run, against the same fake COS server (moto behind the COS-dialect
adapter, tests/cosserver.py), this measures:

  - direct: the COS SDK uploading and downloading the file itself (the
    faster of put_object and the SDK's own multipart upload_file for the
    upload; a streamed get_object for the download);
  - gateway: ftplib uploading and downloading the same file through cosgw,
    which runs as its own ``twistd -n cosftp`` process, over plain FTP and
    over explicit FTPS with PROT P (TLS on the data connections), and
    OpenSSH's ``sftp`` client (batch mode, an Ed25519 key) doing the same
    over SFTP, checking the SHA-256 of what reached the store and of what
    came back each round;

and prints MB/s for each, the gateway/direct and SFTP/FTP ratios, the
gateway's CPU seconds per transfer (from /proc, all its threads) and its
peak RSS (VmHWM) while each protocol transferred.  For SFTP it also prints
the cipher and MAC OpenSSH negotiated with Conch and the ceiling of Conch's
own packet layer for them on this machine (framing, encryption and MAC of
the same bytes in this process, no network, no SFTP).  When socat is
installed it also measures the ceiling of any relay on this machine: curl
downloading the object straight from the store and through socat (a copy
loop in C with 1 MiB buffers, no logic at all), so the gateway's download
can be read against what relaying alone costs.  Each figure is the median
of --rounds runs, directions interleaved, because these machines are noisy.
moto itself caps the figures (testing-notes.md): the ratio is what to read.

--protocols picks the gateway's protocols (ftp, ftps, sftp; the direct SDK
figures are always measured).  --profile DIR then runs one upload and one
download per picked protocol again, each against a fresh gateway under
cProfile, and prints the top functions of its reactor thread.

    python bench/throughput.py [--size-mib 256] [--rounds 3]
        [--protocols ftp,ftps,sftp] [--profile DIR]
"""

from __future__ import annotations

import argparse
import ftplib
import hashlib
import os
import pstats
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.cosserver import CosTestServer  # noqa: E402

MiB = 1024 * 1024
from bench._gateway import (  # noqa: E402
    PASSWORD,
    USER,
    SFTPBatch,
    client_key,
    cpu_seconds,
    free_port,
    reset_peak_rss,
    start_gateway,
    stop,
)

PROTOCOLS = ("ftp", "ftps", "sftp")
#: Result keys of each protocol's transfers, and how the output names it.
KEYS = {
    "ftp": ("gw_up", "gw_down"),
    "ftps": ("ftps_up", "ftps_down"),
    "sftp": ("sftp_up", "sftp_down"),
}
LABELS = {"ftp": "FTP", "ftps": "FTPS", "sftp": "SFTP"}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def relay_ceiling(
    server: CosTestServer, bucket: str, size: int, rounds: int, key: str = "gw.bin"
):
    """(curl straight from the store, curl through socat) in MB/s, medians."""
    if shutil.which("socat") is None or shutil.which("curl") is None:
        return None
    client = server.cos_client(SignHost=False)
    url = client.get_presigned_url(Bucket=bucket, Key=key, Method="GET")
    path = url.split("://", 1)[1].split("/", 1)[1]
    host = f"{bucket}.cos.{server.region}.myqcloud.com"
    port = 21555
    relay = subprocess.Popen(
        [
            "socat",
            "-b",
            str(MiB),
            f"TCP-LISTEN:{port},reuseaddr,fork,bind=127.0.0.1",
            f"TCP:127.0.0.1:{server.port}",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        figures: dict[str, list[float]] = {"direct": [], "relay": []}
        for _ in range(rounds):
            for label, p in (("direct", server.port), ("relay", port)):
                t = timed(
                    lambda p=p: subprocess.run(
                        [
                            "curl",
                            "-s",
                            "-o",
                            "/dev/null",
                            "-H",
                            f"Host: {host}",
                            f"http://127.0.0.1:{p}/{path}",
                        ],
                        check=True,
                    )
                )
                figures[label].append(size / t / 1e6)
        return statistics.median(figures["direct"]), statistics.median(figures["relay"])
    finally:
        os.kill(relay.pid, signal.SIGTERM)
        relay.wait(timeout=10)


def conch_packet_ceiling(
    cipher: bytes, mac: bytes, size: int, payload: int = 32768 + 13
) -> tuple[float, float]:
    """
    MB/s of Conch's own SSH packet layer with C{cipher} and C{mac}, in this
    process: L{SSHTransportBase.sendPacket} (framing, padding, encryption,
    MAC) and L{SSHTransportBase.getPacket} (decryption, MAC check, buffer
    slicing, fed 64 KiB reads as Twisted does) over C{size} bytes of
    channel data in packets of C{payload} bytes, OpenSSH's 32 KiB SFTP
    READ/WRITE plus its headers.  No network, no channel, no SFTP: what
    the gateway's one reactor thread cannot beat over SSH.
    """
    from twisted.conch.ssh import transport

    def endpoint() -> transport.SSHTransportBase:
        t = transport.SSHTransportBase()
        ciphers = transport.SSHCiphers(cipher, cipher, mac, mac)
        secret = bytes(range(64))
        ciphers.setKeys(secret, secret, secret, secret, secret, secret)
        t.currentEncryptions = ciphers
        t.outgoingPacketSequence = t.incomingPacketSequence = 0
        return t

    class Sink:
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.chunks.append(data)

    packets = max(1, size // payload)
    body = os.urandom(payload - 9)
    sender = endpoint()
    sender.transport = Sink()
    start = time.perf_counter()
    for _ in range(packets):
        # CHANNEL_DATA (94): channel id, then the data as a string.
        sender.sendPacket(94, b"\0\0\0\0" + len(body).to_bytes(4, "big") + body)
    sent = time.perf_counter() - start
    stream = b"".join(sender.transport.chunks)
    del sender
    receiver = endpoint()
    got = 0
    start = time.perf_counter()
    for i in range(0, len(stream), 65536):
        receiver.buf = receiver.buf + stream[i : i + 65536]
        while receiver.getPacket() is not None:
            got += 1
    received = time.perf_counter() - start
    assert got == packets, (got, packets)
    moved = packets * payload
    return moved / sent / 1e6, moved / received / 1e6


def timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stored_sha256(client, bucket: str, key: str) -> tuple[int, str]:
    """Size and SHA-256 of the object C{key}, read back from the store."""
    raw = client.get_object(Bucket=bucket, Key=key)["Body"].get_raw_stream()
    digest, size = hashlib.sha256(), 0
    while chunk := raw.read(MiB, decode_content=False):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def parse_protocols(text: str) -> tuple[str, ...]:
    picked = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    unknown = [p for p in picked if p not in PROTOCOLS]
    if unknown or not picked:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(PROTOCOLS)}"
        )
    return tuple(p for p in PROTOCOLS if p in picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=21321)
    parser.add_argument("--sftp-port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--protocols",
        type=parse_protocols,
        default=PROTOCOLS,
        help="comma-separated: ftp, ftps, sftp (default: all)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also profile one upload and one download per protocol (cProfile)",
    )
    args = parser.parse_args()
    size = args.size_mib * MiB
    protocols: tuple[str, ...] = args.protocols
    sftp_port = (args.sftp_port or free_port()) if "sftp" in protocols else None

    workdir = Path(tempfile.mkdtemp(prefix="cosgw-bench-"))
    source = workdir / "source.bin"
    with open(source, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(MiB))
    source_sha256 = file_sha256(source)
    # SFTP downloads land in memory where there is a tmpfs, as FTP's do.
    shm = Path("/dev/shm")
    landing = shm if shm.is_dir() and os.access(shm, os.W_OK) else workdir
    sftp_target = landing / f"cosgw-bench-{os.getpid()}.bin"
    key, public_key = client_key(workdir) if sftp_port else (None, None)

    server = CosTestServer()
    server.start()
    gateway = None
    try:
        bucket = server.create_bucket("bench")
        client = server.cos_client()
        gateway = start_gateway(
            workdir, server, bucket, args.port, sftp_port, public_key
        )
        results: dict[str, list[float]] = {
            k: []
            for k in ("direct_put", "direct_mp", "direct_up", "direct_down")
            + sum((KEYS[p] for p in protocols), ())
        }
        #: Gateway and store CPU seconds per transfer; sftp client CPU.
        cpu: dict[str, list[float]] = {k: [] for p in protocols for k in KEYS[p]}
        store_cpu: dict[str, list[float]] = {k: [] for k in cpu}
        client_cpu: dict[str, list[float]] = {k: [] for k in KEYS["sftp"]}
        #: Peak RSS of the gateway while each protocol transferred.
        peaks: dict[str, float] = {}
        can_reset = reset_peak_rss(gateway.pid)
        sftp = SFTPBatch(sftp_port, key, workdir) if sftp_port else None

        def measured(result: str, protocol: str, transfer) -> None:
            """Run C{transfer} (which returns its seconds), recording it."""
            assert gateway is not None
            if can_reset:
                reset_peak_rss(gateway.pid)
            cpu0, store0 = cpu_seconds(gateway.pid), cpu_seconds(server.pid)
            seconds = transfer()
            cpu[result].append(cpu_seconds(gateway.pid) - cpu0)
            store_cpu[result].append(cpu_seconds(server.pid) - store0)
            results[result].append(size / seconds / 1e6)
            if can_reset:
                peaks[protocol] = max(
                    peaks.get(protocol, 0.0), peak_rss_mib(gateway.pid)
                )

        def direct_up() -> None:
            # The SDK's best of: one PUT, or its own threaded multipart.
            t_put = timed(
                lambda: client.put_object(
                    Bucket=bucket, Key="direct.bin", Body=source.read_bytes()
                )
            )
            t_mp = timed(
                lambda: client.upload_file(
                    Bucket=bucket,
                    Key="direct.bin",
                    LocalFilePath=str(source),
                    PartSize=8,
                    MAXThread=4,
                )
            )
            results["direct_put"].append(size / t_put / 1e6)
            results["direct_mp"].append(size / t_mp / 1e6)
            results["direct_up"].append(size / min(t_put, t_mp) / 1e6)

        def direct_down() -> None:
            def run() -> None:
                body = client.get_object(Bucket=bucket, Key="direct.bin")["Body"]
                raw = body.get_raw_stream()
                got = 0
                while True:
                    chunk = raw.read(MiB, decode_content=False)
                    if not chunk:
                        break
                    got += len(chunk)
                assert got == size, got

            results["direct_down"].append(size / timed(run) / 1e6)

        tls_context = ssl.create_default_context(
            cafile=str(workdir / "state" / "tls-cert.pem")
        )

        def ftp_session(tls: bool) -> ftplib.FTP:
            if tls:
                ftp: ftplib.FTP = ftplib.FTP_TLS(context=tls_context)
            else:
                ftp = ftplib.FTP()
            ftp.connect("127.0.0.1", args.port, timeout=120)
            ftp.login(USER, PASSWORD)
            if tls:
                ftp.prot_p()  # type: ignore[attr-defined]
            ftp.voidcmd("TYPE I")
            return ftp

        def gw_up(tls: bool = False) -> None:
            def transfer() -> float:
                ftp = ftp_session(tls)
                with open(source, "rb") as f:
                    t = timed(lambda: ftp.storbinary("STOR gw.bin", f, blocksize=MiB))
                ftp.quit()
                return t

            protocol = "ftps" if tls else "ftp"
            measured(KEYS[protocol][0], protocol, transfer)

        def gw_down(tls: bool = False) -> None:
            def transfer() -> float:
                ftp = ftp_session(tls)
                got = [0]

                def sink(data: bytes) -> None:
                    got[0] += len(data)

                t = timed(lambda: ftp.retrbinary("RETR gw.bin", sink, blocksize=MiB))
                ftp.quit()
                assert got[0] == size, got[0]
                return t

            protocol = "ftps" if tls else "ftp"
            measured(KEYS[protocol][1], protocol, transfer)

        def sftp_up() -> None:
            assert sftp is not None

            def transfer() -> float:
                # The first session also records the negotiated algorithms.
                (t,), used = sftp.run([f"put {source} /sftp.bin"], not sftp.kex)
                client_cpu["sftp_up"].append(used)
                return t

            measured("sftp_up", "sftp", transfer)
            stored = stored_sha256(client, bucket, "sftp.bin")
            if stored != (size, source_sha256):
                raise SystemExit(f"SFTP upload stored {stored}, not the source")

        def sftp_down() -> None:
            assert sftp is not None

            def transfer() -> float:
                (t,), used = sftp.run([f"get /sftp.bin {sftp_target}"])
                client_cpu["sftp_down"].append(used)
                return t

            try:
                measured("sftp_down", "sftp", transfer)
                got = sftp_target.stat().st_size, file_sha256(sftp_target)
            finally:
                sftp_target.unlink(missing_ok=True)
            if got != (size, source_sha256):
                raise SystemExit(f"SFTP download got {got}, not the source")

        for _ in range(args.rounds):
            direct_up()
            if "ftp" in protocols:
                gw_up()
            if "sftp" in protocols:
                sftp_up()
            direct_down()
            if "ftp" in protocols:
                gw_down()
            if "sftp" in protocols:
                sftp_down()
            if "ftps" in protocols:
                gw_up(tls=True)
                gw_down(tls=True)
        rss = max([peak_rss_mib(gateway.pid), *peaks.values()])
        relay_key = "sftp.bin" if protocols == ("sftp",) else "gw.bin"
        ceiling = (
            relay_ceiling(server, bucket, size, args.rounds, relay_key)
            if args.rounds
            else None
        )
        crypto = None
        if sftp is not None and sftp.kex:
            crypto = conch_ceiling_for(sftp.kex, size)

        if args.rounds:
            report(args, results, cpu, store_cpu, client_cpu, peaks, rss, ceiling)
            if sftp is not None:
                report_sftp(sftp.kex, crypto, results, client_cpu)
            for k, v in results.items():
                print(f"  {k}: " + ", ".join(f"{x:.1f}" for x in v))

        if args.profile is not None:
            stop(gateway)
            gateway = None
            profile(args, workdir, server, bucket, protocols, sftp_port, public_key)
    finally:
        if gateway is not None:
            stop(gateway)
        server.stop()
        source.unlink(missing_ok=True)
        sftp_target.unlink(missing_ok=True)


def conch_ceiling_for(kex: list[str], size: int):
    """Conch's packet ceiling for the server->client cipher and MAC."""
    for line in kex:
        if line.startswith("kex: server->client cipher: "):
            words = line.split()
            cipher, mac = words[3], words[5]
            try:
                return (
                    cipher,
                    mac,
                    conch_packet_ceiling(
                        cipher.encode(), mac.encode(), min(size, 64 * MiB)
                    ),
                )
            except KeyError:
                return None
    return None


def report(args, results, cpu, store_cpu, client_cpu, peaks, rss, ceiling) -> None:
    med = {k: statistics.median(v) for k, v in results.items() if v}
    print(f"file: {args.size_mib} MiB, rounds: {args.rounds} (median MB/s)")
    if "gw_up" in med:
        up, down = med["gw_up"], med["gw_down"]
        print(
            f"upload   gateway FTP {up:7.1f} | SDK multipart upload_file "
            f"{med['direct_mp']:7.1f} ratio {up / med['direct_mp']:.2f} | SDK single "
            f"PUT {med['direct_put']:7.1f} ratio {up / med['direct_put']:.2f}"
        )
        print(
            f"download gateway FTP {down:7.1f} | SDK streamed get_object "
            f"{med['direct_down']:7.1f} ratio {down / med['direct_down']:.2f}"
        )
    else:
        print(
            f"upload   SDK multipart upload_file {med['direct_mp']:7.1f} | SDK single"
            f" PUT {med['direct_put']:7.1f}"
        )
        print(f"download SDK streamed get_object {med['direct_down']:7.1f}")
    if ceiling is not None:
        straight, relayed = ceiling
        line = (
            f"relay ceiling: curl from the store {straight:.1f}, through socat "
            f"{relayed:.1f} (ratio {relayed / straight:.2f})"
        )
        if "gw_down" in med:
            line += f"; gateway FTP / socat {med['gw_down'] / relayed:.2f}"
        print(line)
    if "ftps_up" in med:
        if "gw_up" in med:
            up, down = med["gw_up"], med["gw_down"]
            print(
                f"FTPS PROT P: upload {med['ftps_up']:7.1f} (x{med['ftps_up'] / up:.2f}"
                f" of FTP)  download {med['ftps_down']:7.1f} (x"
                f"{med['ftps_down'] / down:.2f} of FTP)"
            )
        else:
            print(
                f"FTPS PROT P: upload {med['ftps_up']:7.1f}  download "
                f"{med['ftps_down']:7.1f}"
            )
    if "sftp_up" in med:
        up, down = med["sftp_up"], med["sftp_down"]
        if "gw_up" in med:
            print(
                f"SFTP: upload {up:7.1f} (x{up / med['gw_up']:.2f} of FTP)  download"
                f" {down:7.1f} (x{down / med['gw_down']:.2f} of FTP)"
            )
        else:
            print(
                f"SFTP: upload {up:7.1f} (x{up / med['direct_mp']:.2f} of SDK"
                f" multipart)  download {down:7.1f} (x{down / med['direct_down']:.2f}"
                " of SDK get_object)"
            )
    parts = []
    for protocol, (up_key, down_key) in KEYS.items():
        if up_key not in cpu:
            continue
        figures = []
        for direction, k in (("up", up_key), ("down", down_key)):
            seconds = statistics.median(cpu[k])
            wall = args.size_mib * MiB / 1e6 / med[k]
            figures.append(f"{direction} {seconds:.2f} ({seconds / wall:.0%})")
        parts.append(f"{LABELS[protocol]} " + " ".join(figures))
    print("gateway CPU s per transfer (share of wall time): " + " | ".join(parts))
    store = " | ".join(
        f"{LABELS[p]} up {statistics.median(store_cpu[u]):.2f} down "
        f"{statistics.median(store_cpu[d]):.2f}"
        for p, (u, d) in KEYS.items()
        if u in store_cpu
    )
    print(f"store (moto) CPU s per transfer: {store}")
    if peaks:
        during = ", ".join(f"{LABELS[p]} {peaks[p]:.0f}" for p in KEYS if p in peaks)
        print(f"gateway peak RSS: {rss:.0f} MiB (during transfers: {during} MiB)")
    else:
        print(f"gateway peak RSS: {rss:.0f} MiB")


def report_sftp(kex, crypto, results, client_cpu) -> None:
    for line in kex:
        if "cipher:" in line:
            print(f"SFTP {line}")
    if client_cpu["sftp_up"]:
        print(
            "sftp client CPU s per transfer: up "
            f"{statistics.median(client_cpu['sftp_up']):.2f} down "
            f"{statistics.median(client_cpu['sftp_down']):.2f}"
        )
    if crypto is not None:
        cipher, mac, (send, receive) = crypto
        up, down = (statistics.median(results[k]) for k in KEYS["sftp"])
        print(
            f"SSH ceiling, Conch's packet layer alone ({cipher} {mac}, one core):"
            f" send {send:.1f} (SFTP download x{down / send:.2f} of it)  receive"
            f" {receive:.1f} (SFTP upload x{up / receive:.2f} of it)"
        )


def profile(args, workdir, server, bucket, protocols, sftp_port, public_key) -> None:
    """
    One upload and one download per protocol, each against a fresh gateway
    under cProfile (its reactor thread; the store's threads are not seen);
    prints the top 15 functions by cumulative and by own time.
    """
    args.profile.mkdir(parents=True, exist_ok=True)
    source = workdir / "source.bin"
    size = source.stat().st_size
    key = client_key(workdir)[0] if sftp_port else None
    target = workdir / "profile-down.bin"
    tls_context = ssl.create_default_context(
        cafile=str(workdir / "state" / "tls-cert.pem")
    )

    def ftp_transfer(tls: bool, up: bool) -> float:
        ftp = ftplib.FTP_TLS(context=tls_context) if tls else ftplib.FTP()
        ftp.connect("127.0.0.1", args.port, timeout=300)
        ftp.login(USER, PASSWORD)
        if tls:
            ftp.prot_p()  # type: ignore[attr-defined]
        ftp.voidcmd("TYPE I")
        if up:
            with open(source, "rb") as f:
                t = timed(lambda: ftp.storbinary("STOR prof.bin", f, blocksize=MiB))
        else:
            t = timed(
                lambda: ftp.retrbinary("RETR prof.bin", lambda _: None, blocksize=MiB)
            )
        ftp.quit()
        return t

    def sftp_transfer(up: bool) -> float:
        batch = SFTPBatch(sftp_port, key, workdir)
        command = f"put {source} /prof.bin" if up else f"get /prof.bin {target}"
        (t,), _ = batch.run([command])
        target.unlink(missing_ok=True)
        return t

    for protocol in protocols:
        for direction in ("up", "down"):
            out = args.profile / f"{protocol}-{direction}.prof"
            gateway = start_gateway(
                workdir, server, bucket, args.port, sftp_port, public_key, out
            )
            try:
                if protocol == "sftp":
                    t = sftp_transfer(direction == "up")
                else:
                    t = ftp_transfer(protocol == "ftps", direction == "up")
            finally:
                stop(gateway)
            print(
                f"\n== profile: {LABELS[protocol]} {direction}load under cProfile "
                f"{size / t / 1e6:.1f} MB/s ({out})"
            )
            for order in ("cumulative", "tottime"):
                stats = pstats.Stats(str(out), stream=sys.stdout)
                stats.strip_dirs().sort_stats(order).print_stats(15)


if __name__ == "__main__":
    main()
