"""
bench/throughput.py's WebDAV contender: curl PUT and GET of the file
through the gateway's WebDAV listener (plain HTTP on loopback, where basic
auth is accepted), one connection per transfer as a mounted drive's
copy does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench._ceilings import timed
from bench._gateway import PASSWORD, USER

__all__ = ["webdav_server_line", "webdav_transfer"]


def webdav_server_line(port: int) -> str:
    """The [server] line that makes the gateway listen for WebDAV on C{port}."""
    return f"webdav_listen = tcp:{port}:interface=127.0.0.1\n"


def webdav_transfer(
    port: int, name: str, source: Path, landing: Path, up: bool
) -> float:
    """Seconds one curl PUT of C{source} (C{up}) or GET into C{landing} took."""
    url = f"http://127.0.0.1:{port}/{name}"
    command = ["curl", "-sS", "-f", "-u", f"{USER}:{PASSWORD}", url]
    if up:
        command += ["-T", str(source), "-o", "/dev/null"]
    else:
        command += ["-o", str(landing)]
    return timed(lambda: subprocess.run(command, check=True))
