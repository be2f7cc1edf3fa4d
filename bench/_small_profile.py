"""
bench/small_files.py --profile DIR: where a small file's time goes in the
gateway.  Each direction of each protocol runs once against a fresh gateway
whose reactor runs under twistd's cProfile; the report gives, per file, the
gateway's CPU (all its threads), the reactor's busy time (the profile's
time less its waits in epoll), the trips to the thread pool (each store
request, each read of a streamed body), the socket writes, the timers set,
and the functions that cost the reactor most.  cProfile slows the reactor
about twofold: the rates it prints are not the benchmark's.
"""

from __future__ import annotations

import pstats
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._gateway import SFTPBatch, free_port, start_gateway, stop

if TYPE_CHECKING:
    from bench.small_files import Bench

#: (file, function) of the calls counted per file.
COUNTED = {
    "thread-pool trips": ("threads.py", "deferToThreadPool"),
    "socket writes": ("tcp.py", "writeSomeData"),
    "timers set": ("base.py", "callLater"),
    "Deferreds fired": ("defer.py", "_runCallbacks"),
}
_IDLE = "<method 'poll' of 'select.epoll' objects>"


def _calls(stats: pstats.Stats, where: str, name: str) -> int:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # pstats keeps its table untyped
    return sum(v[1] for k, v in raw.items() if k[0].endswith(where) and k[2] == name)


def report(path: Path, label: str, files: int, seconds: float, cpu: float) -> None:
    """Print the per-file figures and the top functions of one profile."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # as above
    idle = sum(v[2] for k, v in raw.items() if k[2] == _IDLE)
    busy = stats.total_tt - idle  # type: ignore[attr-defined]  # set by pstats
    per = [
        f"{name} {_calls(stats, *where) / files:.1f}" for name, where in COUNTED.items()
    ]
    print(
        f"\n== {label}: {files / seconds:.1f} files/s under cProfile; per file: "
        f"gateway CPU {cpu * 1000 / files:.2f} ms, reactor busy "
        f"{busy * 1000 / files:.2f} ms (profiled); " + ", ".join(per)
    )
    top = sorted(((v[2], k) for k, v in raw.items() if k[2] != _IDLE), reverse=True)[
        :12
    ]
    for own, (file, line, name) in top:
        where = "/".join(Path(file).parts[-2:])
        print(f"   {own * 1e6 / files:7.1f} us/file  {name}  ({where}:{line})")


def run_profiles(bench: Bench, sftp: SFTPBatch, public_key: str, args: Any) -> None:
    """
    Profile the gateway's FTP and SFTP contenders, up then down, each pass
    against a fresh gateway (a download's files are put by the SDK first,
    so its profile holds the downloads alone), into C{args.profile}.
    """
    out: Path = args.profile
    out.mkdir(parents=True, exist_ok=True)
    count = len(bench.files.names)
    for protocol in ("ftp", "sftp"):
        for direction in ("up", "down"):
            directory = f"prof-{protocol}-{direction}"
            if direction == "down":
                bench.sdk().up(directory)
            path = out / f"{protocol}-{direction}.prof"
            port = free_port()
            sftp.port = free_port()
            gateway = start_gateway(
                bench.workdir,
                bench.server,
                bench.bucket,
                port,
                sftp.port,
                public_key,
                profile=path,
                tree=args.tree,
            )
            try:
                if protocol == "ftp":
                    contender = bench.ftp("cosgw FTP", port, gateway.pid, True)
                else:
                    contender = bench.sftp("cosgw SFTP", sftp, gateway.pid, True)
                run = getattr(contender, direction)(directory)
            finally:
                stop(gateway)
            label = f"cosgw {protocol.upper()} {direction}"
            report(path, label, count, run.seconds, run.cpu or 0.0)
            bench.delete_round(directory)
