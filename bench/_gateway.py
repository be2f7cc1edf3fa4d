"""
Starting and measuring a real gateway process for the benchmarks: a
``twistd -n cosftp`` child serving one bucket of the fake COS server, stopped
by its PID.  It serves FTP and, when asked, SFTP; L{SFTPBatch} drives the
OpenSSH ``sftp`` client against it in batch mode with a generated key.
"""

from __future__ import annotations

import ftplib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from tests.cosserver import CosTestServer

USER, PASSWORD = "bench", "bench-password"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_key(workdir: Path) -> tuple[Path, str]:
    """
    An Ed25519 key for the benchmark's SSH client, generated once in
    C{workdir}: its private key file and its public key line.
    """
    private = workdir / "client_ed25519"
    if not private.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench"]
            + ["-f", str(private)],
            check=True,
        )
    return private, Path(f"{private}.pub").read_text().strip()


def start_gateway(
    workdir: Path,
    server: CosTestServer,
    bucket: str,
    port: int,
    sftp_port: Optional[int] = None,
    authorized_key: Optional[str] = None,
    profile: Optional[Path] = None,
):
    """
    Start the gateway with FTP on C{port} and, given C{sftp_port}, SFTP on
    that port; C{authorized_key} (a public key line) lets the user log in
    with that key as well as the password.  Host keys are generated in the
    state directory at first start.  With C{profile}, the gateway's reactor
    runs under cProfile, which writes its statistics there when it stops.
    """
    config = workdir / "cosgw.ini"
    sftp = f"sftp_listen = tcp:{sftp_port}:interface=127.0.0.1\n" if sftp_port else ""
    keys = f"authorized_keys = {authorized_key}\n" if authorized_key else ""
    config.write_text(
        f"""[server]
state_dir = {workdir / "state"}
ftp_listen = tcp:{port}:interface=127.0.0.1
{sftp}
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
{keys}"""
    )
    log = open(workdir / "gateway.log", "ab")  # noqa: SIM115
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    command = [twistd, "-n", "--pidfile="]
    if profile is not None:
        # twistd's own profiler wraps reactor.run and saves before twistd
        # re-raises SIGTERM (under ``python -m cProfile`` nothing is saved).
        command += ["--profiler=cprofile", "--savestats", f"--profile={profile}"]
    command += ["cosftp", "--config", str(config)]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ftp = ftplib.FTP()
            ftp.connect("127.0.0.1", port, timeout=5)
            ftp.quit()
            if sftp_port:
                with socket.create_connection(("127.0.0.1", sftp_port), 5) as s:
                    if not s.recv(64).startswith(b"SSH-2.0-"):
                        raise OSError("no SSH banner")
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


def reset_peak_rss(pid: int) -> bool:
    """
    Start C{pid}'s VmHWM again from its current RSS (Linux's clear_refs
    "5"), so the next reading is the peak of what follows; False when the
    kernel does not allow it.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of C{pid} so far, all its threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces: the fields start after its ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class SFTPBatch:
    """
    OpenSSH's ``sftp`` in batch mode, logging in as L{USER} with a key.

    L{run} times each command from the moment ``sftp`` echoes it (it has
    connected and logged in by then, and echoes a batch line just before
    running it) to the echo of the next one, so the SSH handshake is not
    counted, as FTP's login is not.
    """

    def __init__(self, port: int, key: Path, workdir: Path) -> None:
        self.port = port
        self.key = key
        self.workdir = workdir
        #: The "kex: ..." lines of the last verbose run.
        self.kex: list[str] = []

    def run(
        self, commands: list[str], verbose: bool = False
    ) -> tuple[list[float], float]:
        """
        Run C{commands}: the seconds each took, and the CPU seconds the
        ``sftp`` client (and its ``ssh``) used.  Raises when one fails (a
        batch stops at the first failing command).
        """
        batch = self.workdir / "sftp.batch"
        batch.write_text("".join(f"{c}\n" for c in commands) + "pwd\n")
        command = ["sftp", "-b", str(batch), "-P", str(self.port), "-i", str(self.key)]
        for option in (
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "LogLevel=" + ("DEBUG1" if verbose else "ERROR"),
        ):
            command += ["-o", option]
        command.append(f"{USER}@127.0.0.1")
        echoes: list[float] = []
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(b"sftp> "):
                    echoes.append(time.perf_counter())
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        if proc.returncode != 0 or len(echoes) != len(commands) + 1:
            raise RuntimeError(
                f"sftp {commands} failed (exit {proc.returncode}):\n{stderr}"
            )
        if verbose:
            self.kex = re.findall(r"^debug1: (kex: .*?)\r?$", stderr, re.M)
        times = [b - a for a, b in zip(echoes, echoes[1:])]
        return times, usage.ru_utime + usage.ru_stime
