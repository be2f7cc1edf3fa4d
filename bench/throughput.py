"""
Throughput and memory of the gateway against the store's own speed.

In one run, against the same fake COS server (moto behind the COS-dialect
adapter, tests/cosserver.py), this measures:

  - direct: the COS SDK uploading and downloading the file itself (the
    faster of put_object and the SDK's own multipart upload_file for the
    upload; a streamed get_object for the download);
  - gateway: ftplib uploading and downloading the same file through cosgw,
    which runs as its own ``twistd -n cosftp`` process, over plain FTP and
    over explicit FTPS with PROT P (TLS on the data connections);

and prints MB/s for each, the gateway/direct ratios and the gateway's peak
RSS (VmHWM).  When socat is installed it also measures the ceiling of any
relay on this machine: curl downloading the object straight from the store
and through socat (a copy loop in C with 1 MiB buffers, no logic at all), so
the gateway's download can be read against what relaying alone costs.  Each figure is the median of --rounds runs, directions
interleaved, because these machines are noisy.  moto itself caps the
figures (testing-notes.md): the ratio is what to read.

    python bench/throughput.py [--size-mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ftplib
import os
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
from bench._gateway import PASSWORD, USER, start_gateway, stop  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def relay_ceiling(server: CosTestServer, bucket: str, size: int, rounds: int):
    """(curl straight from the store, curl through socat) in MB/s, medians."""
    if shutil.which("socat") is None or shutil.which("curl") is None:
        return None
    client = server.cos_client(SignHost=False)
    url = client.get_presigned_url(Bucket=bucket, Key="gw.bin", Method="GET")
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


def timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=21321)
    args = parser.parse_args()
    size = args.size_mib * MiB

    workdir = Path(tempfile.mkdtemp(prefix="cosgw-bench-"))
    source = workdir / "source.bin"
    with open(source, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(MiB))

    server = CosTestServer()
    server.start()
    gateway = None
    try:
        bucket = server.create_bucket("bench")
        client = server.cos_client()
        gateway = start_gateway(workdir, server, bucket, args.port)
        results: dict[str, list[float]] = {
            k: []
            for k in (
                "direct_put",
                "direct_mp",
                "direct_up",
                "direct_down",
                "gw_up",
                "gw_down",
                "ftps_up",
                "ftps_down",
            )
        }

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
            ftp = ftp_session(tls)
            with open(source, "rb") as f:
                t = timed(lambda: ftp.storbinary("STOR gw.bin", f, blocksize=MiB))
            ftp.quit()
            results["ftps_up" if tls else "gw_up"].append(size / t / 1e6)

        def gw_down(tls: bool = False) -> None:
            ftp = ftp_session(tls)
            got = [0]

            def sink(data: bytes) -> None:
                got[0] += len(data)

            t = timed(lambda: ftp.retrbinary("RETR gw.bin", sink, blocksize=MiB))
            ftp.quit()
            assert got[0] == size, got[0]
            results["ftps_down" if tls else "gw_down"].append(size / t / 1e6)

        for _ in range(args.rounds):
            direct_up()
            gw_up()
            direct_down()
            gw_down()
            gw_up(tls=True)
            gw_down(tls=True)
        rss = peak_rss_mib(gateway.pid)
        ceiling = relay_ceiling(server, bucket, size, args.rounds)

        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"file: {args.size_mib} MiB, rounds: {args.rounds} (median MB/s)")
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
        if ceiling is not None:
            straight, relayed = ceiling
            print(
                f"relay ceiling: curl from the store {straight:.1f}, through socat "
                f"{relayed:.1f} (ratio {relayed / straight:.2f}); gateway FTP / socat "
                f"{down / relayed:.2f}"
            )
        print(
            f"FTPS PROT P: upload {med['ftps_up']:7.1f} (x{med['ftps_up'] / up:.2f} of"
            f" FTP)  download {med['ftps_down']:7.1f} (x{med['ftps_down'] / down:.2f}"
            " of FTP)"
        )
        print(f"gateway peak RSS: {rss:.0f} MiB")
        for k, v in results.items():
            print(f"  {k}: " + ", ".join(f"{x:.1f}" for x in v))
    finally:
        if gateway is not None:
            stop(gateway)
        server.stop()
        source.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
