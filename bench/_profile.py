"""
bench/throughput.py --profile: one upload and one download per protocol,
each against a fresh gateway whose reactor runs under twistd's cProfile,
and the top functions of that thread.  The store's threads are not seen:
this shows what the reactor spends its time on, which is what caps a
single transfer and delays every other client.
"""

from __future__ import annotations

import pstats
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench._ceilings import timed
from bench._gateway import SFTPBatch, ftp_session, stop
from bench._measure import MiB

if TYPE_CHECKING:
    from bench.throughput import Bench

LABELS = {"ftp": "FTP", "ftps": "FTPS", "sftp": "SFTP"}


def profile(bench: Bench, protocols: tuple[str, ...], out: Path) -> None:
    """Profile each protocol both ways into C{out}; print the top 15 twice."""
    out.mkdir(parents=True, exist_ok=True)
    target = bench.workdir / "profile-down.bin"

    def ftp_transfer(tls: bool, up: bool) -> float:
        ftp = ftp_session(bench.port, 300, bench.tls if tls else None)
        if up:
            with open(bench.source, "rb") as f:
                t = timed(lambda: ftp.storbinary("STOR prof.bin", f, blocksize=MiB))
        else:
            t = timed(
                lambda: ftp.retrbinary("RETR prof.bin", lambda _: None, blocksize=MiB)
            )
        ftp.quit()
        return t

    def sftp_transfer(up: bool) -> float:
        assert bench.sftp_port is not None
        batch = SFTPBatch(bench.sftp_port, bench.key, bench.workdir)
        command = f"put {bench.source} /prof.bin" if up else f"get /prof.bin {target}"
        (t,), _ = batch.run([command])
        target.unlink(missing_ok=True)
        return t

    for protocol in protocols:
        for direction in ("up", "down"):
            stats_file = out / f"{protocol}-{direction}.prof"
            gateway = bench.start(stats_file)
            try:
                if protocol == "sftp":
                    t = sftp_transfer(direction == "up")
                else:
                    t = ftp_transfer(protocol == "ftps", direction == "up")
            finally:
                stop(gateway)
            print(
                f"\n== profile: {LABELS[protocol]} {direction}load under cProfile "
                f"{bench.size / t / 1e6:.1f} MB/s ({stats_file})"
            )
            for order in ("cumulative", "tottime"):
                stats = pstats.Stats(str(stats_file), stream=sys.stdout)
                stats.strip_dirs().sort_stats(order).print_stats(15)
