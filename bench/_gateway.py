"""
Starting and measuring a real gateway process for the benchmarks: a
``twistd -n cosftp`` child serving one bucket of the fake COS server, stopped
by its PID.
"""

from __future__ import annotations

import ftplib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cosserver import CosTestServer

USER, PASSWORD = "bench", "bench-password"


def start_gateway(workdir: Path, server: CosTestServer, bucket: str, port: int):
    config = workdir / "cosgw.ini"
    config.write_text(
        f"""[server]
state_dir = {workdir / "state"}
ftp_listen = tcp:{port}:interface=127.0.0.1

[storage:cos]
type = cos
bucket = {bucket}
region = {server.region}
secret_id = {server.secret_id}
secret_key = {server.secret_key}
endpoint = http://127.0.0.1:{server.port}

[user:{USER}]
password = {PASSWORD}
storage = cos
"""
    )
    log = open(workdir / "gateway.log", "wb")  # noqa: SIM115
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "cosftp", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ftp = ftplib.FTP()
            ftp.connect("127.0.0.1", port, timeout=5)
            ftp.quit()
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    stop(proc)
    raise SystemExit("gateway did not start:\n" + (workdir / "gateway.log").read_text())


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of C{pid}, in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found
