"""
log_format and log_level reach twistd's own output: the observer the
plugin builds from twistd's options, the Application component the service
sets, and real ``twistd cosftp`` runs (child processes on a free port of
127.0.0.1, stopped by PID) whose standard output and --logfile are read.
"""

from __future__ import annotations

import ftplib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.application.service import Application, MultiService
from twisted.logger import ILogObserver, LogLevel
from twisted.python import log as legacy
from twisted.trial.unittest import SynchronousTestCase

from cosgw.config import ServerConfig
from cosgw.logs import AtLevel, LineObserver
from cosgw.logs.twistd import offer_log_observer, twistd_observer

PASSWORD = "plain-text-on-purpose"
TAC = Path(__file__).resolve().parent.parent / "etc" / "cosgw.tac"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def server(log_format: str = "json", log_level: str = "warn") -> ServerConfig:
    return ServerConfig(
        state_dir=Path("/nonexistent"), log_format=log_format, log_level=log_level
    )


class TwistdObserverTests(SynchronousTestCase):
    def keep_sigusr1(self) -> None:
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def test_standard_output(self) -> None:
        for options in (
            {"nodaemon": 1, "logfile": None},
            {"nodaemon": 1, "logfile": "-"},
        ):
            observer = twistd_observer(options, server())
            assert isinstance(observer, LineObserver)
            self.assertIs(observer.out, sys.stdout)
            self.assertEqual(observer.level, LogLevel.warn)

    def test_log_file_rotated_on_sigusr1(self) -> None:
        self.keep_sigusr1()
        directory = Path(tempfile.mkdtemp(prefix="cosgw-twistd-"))
        path = directory / "twistd.log"
        observer = twistd_observer({"nodaemon": 0, "logfile": str(path)}, server())
        assert isinstance(observer, LineObserver)
        self.addCleanup(observer.out.close)
        observer({"log_format": "kept", "log_level": LogLevel.error, "log_time": 0.0})
        observer({"log_format": "dropped", "log_level": LogLevel.info, "log_time": 0.0})
        self.assertEqual(
            [json.loads(line)["message"] for line in path.read_text().splitlines()],
            ["kept"],
        )
        self.assertNotIn(signal.getsignal(signal.SIGUSR1), (signal.SIG_DFL, None))

    def test_twistd_keeps_what_it_must(self) -> None:
        """--logger is the operator's; a daemon on stdout twistd refuses."""
        self.assertIsNone(twistd_observer({"logger": "my.observer"}, server()))
        self.assertIsNone(twistd_observer({"nodaemon": 0, "logfile": "-"}, server()))

    def test_syslog_at_the_level(self) -> None:
        observer = twistd_observer({"syslog": 1, "prefix": "cosgw"}, server())
        assert isinstance(observer, AtLevel)
        self.assertEqual(observer.level, LogLevel.warn)


class ApplicationComponentTests(SynchronousTestCase):
    def test_set_on_an_application(self) -> None:
        application = Application("cosgw")
        observer = LineObserver(sys.stdout, "json", LogLevel.info)
        offer_log_observer(application, observer)
        self.assertIs(application.getComponent(ILogObserver), observer)

    def test_a_tac_observer_is_kept(self) -> None:
        own = LineObserver(sys.stdout, "text", LogLevel.debug)
        ours = LineObserver(sys.stdout, "json", LogLevel.info)
        application = Application("cosgw")
        application.setComponent(ILogObserver, own)
        offer_log_observer(application, ours)
        self.assertIs(application.getComponent(ILogObserver), own)
        application = Application("cosgw")
        application.setComponent(legacy.ILogObserver, print)
        offer_log_observer(application, ours)
        self.assertIsNone(application.getComponent(ILogObserver))

    def test_not_an_application(self) -> None:
        parent = MultiService()
        offer_log_observer(parent, LineObserver(sys.stdout, "json", LogLevel.info))
        self.assertIsNone(ILogObserver(parent, None))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RealTwistdTests(SynchronousTestCase):
    """
    The config's plain-text password is a warning at start (a config
    notice); the storage line and twistd's own "starting up" are info; a
    password login's "Login succeeded" is debug.
    """

    def tempdir(self) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="cosgw-twistd-"))
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    def start(
        self, directory: Path, *args: str, tac: bool = False, **keys: str
    ) -> subprocess.Popen:
        """
        twistd -n cosftp (or, with C{tac}, etc/cosgw.tac) on a free port,
        once it listens.
        """
        self.port = free_port()
        (directory / "data").mkdir(exist_ok=True)
        settings = {
            "state_dir": str(directory / "state"),
            "ftp_listen": f"tcp:{self.port}:interface=127.0.0.1",
            "admin_listen": "",
            **keys,
        }
        config = directory / "cosgw.ini"
        config.write_text(
            "[server]\n"
            + "".join(f"{k} = {v}\n" for k, v in settings.items())
            + f"[storage:files]\ntype = local\npath = {directory / 'data'}\n"
            + f"[user:alice]\npassword = {PASSWORD}\n"
        )
        out = open(directory / "stdout", "wb")  # noqa: SIM115
        self.addCleanup(out.close)
        command = [TWISTD, "--nodaemon", "--pidfile=", *args]
        if tac:
            command += ["--python", str(TAC)]
        else:
            command += ["cosftp", "--config", str(config)]
        proc = subprocess.Popen(
            command,
            env={**os.environ, "COSGW_CONFIG": str(config)},
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(self.stop, proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.fail(f"twistd exited {proc.returncode}: {self.output(directory)}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return proc
            except OSError:
                time.sleep(0.05)
        self.fail(f"twistd did not listen within 30 s: {self.output(directory)}")

    def login(self) -> None:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", self.port, timeout=20)
        ftp.login("alice", PASSWORD)
        ftp.quit()

    def output(self, directory: Path) -> str:
        return (directory / "stdout").read_text(errors="replace")

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)

    def test_standard_output_json_from_warn(self) -> None:
        directory = self.tempdir()
        proc = self.start(directory, log_format="json", log_level="warn")
        self.login()
        self.stop(proc)
        lines = self.output(directory).splitlines()
        records = [json.loads(line) for line in lines]
        self.assertEqual(
            {r["level"] for r in records} - {"warn", "error", "critical"}, set()
        )
        self.assertIn("plain-text password", " ".join(r["message"] for r in records))
        for record in records:
            self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT[\d:]{8}\.\d{3}Z$")
        self.assertNotIn(PASSWORD, "\n".join(lines))

    def test_standard_output_debug_when_asked(self) -> None:
        directory = self.tempdir()
        proc = self.start(directory, log_format="text", log_level="debug")
        self.login()
        self.stop(proc)
        text = self.output(directory)
        self.assertRegex(text, r"#debug\] Login succeeded for user alice\n")
        self.assertIn("starting up.", text)

    def test_log_file_text_from_info(self) -> None:
        directory = self.tempdir()
        logfile = directory / "twistd.log"
        proc = self.start(
            directory, f"--logfile={logfile}", log_format="text", log_level="info"
        )
        self.login()
        self.stop(proc)
        text = logfile.read_text()
        self.assertIn("[cosgw.service#warn] config: ", text)
        self.assertIn("[cosgw.service#info] storage files: local directory", text)
        self.assertIn("starting up.", text)
        self.assertNotIn("#debug]", text)
        self.assertNotIn("Login succeeded", text)
        # Nothing went to standard output: twistd logged to its file.
        self.assertEqual(self.output(directory), "")

    def test_tac_standard_output(self) -> None:
        """etc/cosgw.tac: the service gives the Application its observer."""
        directory = self.tempdir()
        proc = self.start(directory, tac=True, log_format="json", log_level="warn")
        self.login()
        self.stop(proc)
        records = [json.loads(line) for line in self.output(directory).splitlines()]
        self.assertEqual(
            {r["level"] for r in records} - {"warn", "error", "critical"}, set()
        )
        self.assertIn("plain-text password", " ".join(r["message"] for r in records))
