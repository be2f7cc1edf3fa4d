"""
Starting and measuring the servers the benchmarks compare: a ``twistd -n
cosftp`` child serving one bucket of the fake COS server (from this
checkout or, with C{tree}, from another one such as a ``git worktree`` of
an older commit), and ``rclone serve`` over the same bucket; all stopped by
their PID.  L{SFTPBatch} drives the OpenSSH ``sftp`` client against either
in batch mode with a generated key.

The benchmarks write one configuration that every cosgw since the
restructure understands (listeners, one COS storage, one user with a
plain-text password and a key), so a before/after comparison runs both
versions with their own defaults.  The fake COS server always comes from
this checkout: both versions talk to the same store.
"""

from __future__ import annotations

import ftplib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from tests.cosserver import CosTestServer

USER, PASSWORD = "bench", "bench-password"
#: This checkout: what runs when no --tree is given.
HERE_TREE = Path(__file__).resolve().parent.parent


class Unavailable(Exception):
    """A contender that cannot run here; its message says why, for the table."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def tree_environment(tree: Path) -> dict[str, str]:
    """
    An environment in which ``twistd`` imports C{tree}'s cosgw and finds its
    twisted/plugins: PYTHONPATH comes before the editable install's path
    entry, and twistd collects plugins from every C{twisted/plugins} along
    sys.path, the tree's first.
    """
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *paths])
    return env


def describe_tree(tree: Path) -> str:
    """
    Which code a benchmark ran, for its header: the commit of C{tree}, its
    local changes, and the cosgw package Python really imports there (a
    wrong PYTHONPATH would otherwise measure this checkout twice).
    """
    imported = subprocess.run(
        [sys.executable, "-c", "import cosgw; print(cosgw.__file__)"],
        env=tree_environment(tree),
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    if not Path(imported).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: Python imports cosgw from {imported} instead")
    git = ["git", "-C", str(tree)]
    head = subprocess.run(
        [*git, "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    head = head if len(head) <= 70 else head[:67] + "..."
    return f"{tree} at {head or '(not git)'}" + (" + local changes" if dirty else "")


def start_gateway(
    workdir: Path,
    server: CosTestServer,
    bucket: str,
    port: int,
    sftp_port: Optional[int] = None,
    authorized_key: Optional[str] = None,
    profile: Optional[Path] = None,
    tree: Path = HERE_TREE,
    transfer: str = "",
    server_lines: str = "",
) -> subprocess.Popen[bytes]:
    """
    Start C{tree}'s gateway with FTP on C{port} and, given C{sftp_port},
    SFTP on that port; C{authorized_key} (a public key line) lets the user
    log in with that key as well as the password.  Host keys and the TLS
    certificate are generated in the state directory at first start.  With
    C{profile}, the gateway's reactor runs under cProfile, which writes its
    statistics there when it stops.  C{transfer}: lines of the
    config's [transfer] section (``key = value``); C{server_lines} likewise
    for [server] (no admin listener unless it names one).
    """
    config = workdir / "cosgw.ini"
    sftp = f"sftp_listen = tcp:{sftp_port}:interface=127.0.0.1\n" if sftp_port else ""
    keys = f"authorized_keys = {authorized_key}\n" if authorized_key else ""
    config.write_text(
        f"""[server]
state_dir = {workdir / "state"}
ftp_listen = tcp:{port}:interface=127.0.0.1
{"" if "admin_listen" in server_lines else "admin_listen ="}
{server_lines}
{sftp}
[transfer]
{transfer}

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
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    command = [twistd, "-n", "--pidfile="]
    if profile is not None:
        # twistd's own profiler wraps reactor.run and saves before twistd
        # re-raises SIGTERM (under ``python -m cProfile`` nothing is saved).
        command += ["--profiler=cprofile", "--savestats", f"--profile={profile}"]
    command += ["cosftp", "--config", str(config)]
    log = workdir / "gateway.log"
    banners = [(port, b"220")] + ([(sftp_port, b"SSH-2.0-")] if sftp_port else [])
    proc = serve(command, log, banners, tree_environment(tree), workdir)
    if proc is None:
        raise SystemExit("gateway did not start:\n" + log.read_text()[-4000:])
    return proc


def serve(
    command: list[str],
    log: Path,
    banners: list[tuple[int, bytes]],
    env: dict[str, str],
    cwd: Optional[Path] = None,
) -> Optional[subprocess.Popen[bytes]]:
    """
    Start the server C{command} with its output in C{log}: the process once
    every (port, first bytes) of C{banners} answered, or None when it did
    not within 30 seconds (it is stopped then).
    """
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
        )
    if wait_for_banners(proc, banners, 30):
        return proc
    stop(proc)
    return None


def wait_for_banners(
    proc: subprocess.Popen[bytes], banners: list[tuple[int, bytes]], seconds: float
) -> bool:
    """
    Whether every (port, first bytes) of C{banners} answered on 127.0.0.1
    within C{seconds} while C{proc} kept running.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for port, banner in banners:
                with socket.create_connection(("127.0.0.1", port), 5) as s:
                    if not s.recv(64).startswith(banner):
                        raise OSError(f"no {banner!r} banner on {port}")
            return True
        except OSError:
            time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to C{proc}'s PID, SIGKILL if it is still there after 30 s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start_rclone(
    protocol: str,
    workdir: Path,
    server: CosTestServer,
    bucket: str,
    authorized_keys: Optional[Path] = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """
    ``rclone serve PROTOCOL`` over C{bucket} (rclone's S3 backend, talking
    SigV4 straight to moto behind the COS adapter, which counts those
    requests as C{_bypass}), logging in L{USER} with L{PASSWORD} or, for
    SFTP, a key of C{authorized_keys}: the gateway a user would pick today.
    Returns the process and its port; L{Unavailable} when this rclone
    cannot serve C{protocol} or does not start.
    """
    if shutil.which("rclone") is None:
        raise Unavailable("rclone is not installed")
    probe = subprocess.run(
        ["rclone", "serve", protocol, "--help"], capture_output=True, timeout=60
    )
    # Without the subcommand, "serve PROTOCOL --help" is serve's own help.
    if (
        probe.returncode != 0
        or f"rclone serve {protocol} ".encode() not in probe.stdout
    ):
        version = subprocess.run(
            ["rclone", "version"], capture_output=True, text=True, timeout=60
        ).stdout.split("\n", 1)[0]
        raise Unavailable(f"{version or 'rclone'} has no 'serve {protocol}'")
    port = free_port()
    # rclone's S3 client refuses the sandbox's CA bundle variable outright.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(
        RCLONE_CONFIG=str(workdir / "rclone.conf"),
        RCLONE_CONFIG_STORE_TYPE="s3",
        RCLONE_CONFIG_STORE_PROVIDER="Other",
        RCLONE_CONFIG_STORE_ACCESS_KEY_ID="testing",
        RCLONE_CONFIG_STORE_SECRET_ACCESS_KEY="testing",
        RCLONE_CONFIG_STORE_ENDPOINT=server.endpoint_url,
        RCLONE_CONFIG_STORE_FORCE_PATH_STYLE="true",
    )
    command = ["rclone", "serve", protocol, f"store:{bucket}"]
    command += ["--addr", f"127.0.0.1:{port}", "--user", USER, "--pass", PASSWORD]
    command += ["--cache-dir", str(workdir / f"rclone-{protocol}-cache")]
    if authorized_keys is not None:
        command += ["--authorized-keys", str(authorized_keys)]
    log = workdir / f"rclone-{protocol}.log"
    banner = b"SSH-2.0-" if protocol == "sftp" else b"220"
    proc = serve(command, log, [(port, banner)], env)
    if proc is None:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        raise Unavailable(f"rclone serve {protocol} did not start: {tail}")
    return proc, port


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


#: What OpenSSH says when it and the server have no cipher in common, or
#: when it does not know the cipher it was asked for.
_NOT_OFFERED = re.compile(r"no matching cipher found\. Their offer: (\S*)")
_UNKNOWN = re.compile(r"Unknown cipher type '[^']*'")


class SFTPBatch:
    """
    OpenSSH's ``sftp`` in batch mode, logging in as L{USER} with a key and,
    given C{cipher}, offering only that cipher (``-c``).

    L{run} times each command from the moment ``sftp`` echoes it (it has
    connected and logged in by then, and echoes a batch line just before
    running it) to the echo of the next one, so the SSH handshake is not
    counted, as FTP's login is not.  Batches of several instances may run
    at once: each run has its own batch file.
    """

    def __init__(
        self, port: int, key: Path, workdir: Path, cipher: Optional[str] = None
    ) -> None:
        self.port = port
        self.key = key
        self.workdir = workdir
        self.cipher = cipher
        #: The "kex: ..." lines of the last verbose run.
        self.kex: list[str] = []

    def run(
        self, commands: list[str], verbose: bool = False, timeout: float = 900
    ) -> tuple[list[float], float]:
        """
        Run C{commands}: the seconds each took, and the CPU seconds the
        ``sftp`` client (and its ``ssh``) used.  Raises L{Unavailable} when
        the server does not offer the cipher (or the client does not know
        it), L{RuntimeError} when a command fails (a batch stops at the
        first failing command) or the batch takes over C{timeout} seconds
        (the client is then killed by its PID).
        """
        with tempfile.NamedTemporaryFile(
            "w", dir=self.workdir, prefix="sftp-", suffix=".batch"
        ) as batch:
            batch.write("".join(f"{c}\n" for c in commands) + "pwd\n")
            batch.flush()
            proc, echoes, usage, stderr = self._sftp(batch.name, verbose, timeout)
        if proc.returncode != 0 or len(echoes) != len(commands) + 1:
            refused = _NOT_OFFERED.search(stderr)
            if refused:
                raise Unavailable(f"not offered by the server ({refused.group(1)})")
            if _UNKNOWN.search(stderr):
                raise Unavailable("not known to this OpenSSH client")
            raise RuntimeError(
                f"sftp {commands[:3]} failed (exit {proc.returncode}):\n{stderr}"
            )
        if verbose:
            self.kex = re.findall(r"^debug1: (kex: .*?)\r?$", stderr, re.M)
        times = [b - a for a, b in zip(echoes, echoes[1:])]
        return times, usage.ru_utime + usage.ru_stime

    def _sftp(
        self, batch: str, verbose: bool, timeout: float
    ) -> tuple[subprocess.Popen[bytes], list[float], Any, str]:
        """Run ``sftp -b C{batch}``: (process, echo times, rusage, stderr)."""
        command = ["sftp", "-b", batch, "-P", str(self.port), "-i", str(self.key)]
        if self.cipher:
            command += ["-c", self.cipher]
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
            # Its output ends when it exits; the timer makes sure it does.
            killer = threading.Timer(timeout, os.kill, (proc.pid, signal.SIGKILL))
            killer.start()
            try:
                for line in proc.stdout:
                    if line.startswith(b"sftp> "):
                        echoes.append(time.perf_counter())
            finally:
                # Before reaping it: its PID cannot have been reused yet.
                killer.cancel()
            proc.stdout.close()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        return proc, echoes, usage, stderr


def ftp_session(
    port: int, timeout: float = 120, tls: Optional[ssl.SSLContext] = None
) -> ftplib.FTP:
    """
    A logged-in ftplib session in binary mode (ftplib leaves servers in
    ASCII); with a C{tls} context, explicit FTPS with PROT P.
    """
    ftp = ftplib.FTP() if tls is None else ftplib.FTP_TLS(context=tls)
    ftp.connect("127.0.0.1", port, timeout=timeout)
    ftp.login(USER, PASSWORD)
    if isinstance(ftp, ftplib.FTP_TLS):
        ftp.prot_p()
    ftp.voidcmd("TYPE I")
    return ftp
