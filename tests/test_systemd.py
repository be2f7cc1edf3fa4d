"""
Tests for running under systemd: L{cosgw.systemd} (sd_notify READY, STOPPING
and WATCHDOG, read from datagram sockets the tests own), the units in
C{etc/systemd/} (C{systemd-analyze verify} offline, against a scratch root
holding the system's own units; C{systemd-analyze security} within 3.0),
socket activation through C{systemd-socket-activate} with the C{systemd:}
endpoints C{etc/cosgw.ini} documents, and C{$STATE_DIRECTORY} as the
default state directory.
"""

from __future__ import annotations

import ftplib
import io
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from cosgw.config import load_config
from cosgw.frontends.listener import ListenerService, ListenFailed
from cosgw.systemd import Notifier, SystemdNotifier, notify_address
from tests.configtesting import v5, v5_account
from tests.logevents import LogEvents
from tests.processtesting import ROOT, TWISTD, Child, free_port, poll, scratch

UNITS = ROOT / "etc" / "systemd"
PASSWORD = "systemd-pw"
TIMEOUT = 30


class Listening:
    """A datagram socket the test owns, where the gateway's messages land."""

    def __init__(self, testcase: unittest.SynchronousTestCase, abstract: bool) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.socket.close)
        if abstract:
            name = f"cosgw-test-{secrets.token_hex(8)}"
            self.socket.bind(b"\0" + name.encode())
            self.env = f"@{name}"
        else:
            path = scratch(testcase) / "notify"
            self.socket.bind(str(path))
            self.env = str(path)

    def message(self, bound: float = TIMEOUT) -> dict[str, str]:
        """The next message, as its KEY=value fields; fails after C{bound} s."""
        ready, _, _ = select.select([self.socket], [], [], bound)
        if not ready:
            raise AssertionError(f"no message within {bound} s")
        data = self.socket.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def until(self, key: str, bound: float = TIMEOUT) -> dict[str, str]:
        """The first message holding C{key}, skipping others (watchdog pings)."""
        deadline = time.monotonic() + bound
        while True:
            fields = self.message(max(0.0, deadline - time.monotonic()))
            if key in fields:
                return fields

    def pending(self) -> list[dict[str, str]]:
        found = []
        while select.select([self.socket], [], [], 0)[0]:
            found.append(self.message(0))
        return found


# --------------------------------------------------------------------------
# cosgw.systemd, in memory and against real sockets
# --------------------------------------------------------------------------


class NotifyAddressTests(unittest.SynchronousTestCase):
    def test_path(self) -> None:
        self.assertEqual(
            notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}),
            "/run/systemd/notify",
        )

    def test_abstract(self) -> None:
        self.assertEqual(notify_address({"NOTIFY_SOCKET": "@x/y"}), b"\0x/y")

    def test_unset_or_unknown(self) -> None:
        events = LogEvents(self, "cosgw.service")
        self.assertIsNone(notify_address({}))
        self.assertEqual(events.events, [])
        self.assertIsNone(notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}))
        (warning,) = events.at(LogLevel.warn)
        self.assertIn("vsock:2:1234 is not a unix socket", formatEvent(warning))


class NotifierTests(unittest.SynchronousTestCase):
    def test_path_and_abstract_sockets(self) -> None:
        for abstract in (False, True):
            listening = Listening(self, abstract)
            notifier = Notifier(notify_address({"NOTIFY_SOCKET": listening.env}) or "")
            self.addCleanup(notifier.close)
            self.assertTrue(notifier.send("READY=1", "STATUS=up"))
            self.assertEqual(listening.message(), {"READY": "1", "STATUS": "up"})

    def test_nobody_listening_is_one_warning(self) -> None:
        events = LogEvents(self, "cosgw.service")
        notifier = Notifier(str(scratch(self) / "nobody-listens"))
        self.addCleanup(notifier.close)
        self.assertFalse(notifier.send("READY=1"))
        self.assertFalse(notifier.send("WATCHDOG=1"))
        (warning,) = events.at(LogLevel.warn)
        self.assertIn("cannot tell systemd READY", formatEvent(warning))

    def test_watchdog_from_environment(self) -> None:
        reactor = MemoryReactorClock()
        base = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
        for extra, expected in (
            ({}, 15.0),
            ({"WATCHDOG_PID": str(os.getpid())}, 15.0),
            ({"WATCHDOG_PID": str(os.getpid() + 1)}, None),
            ({"WATCHDOG_USEC": "0"}, None),
        ):
            notifier = SystemdNotifier.from_environment(reactor, {**base, **extra})
            assert notifier is not None
            self.addCleanup(notifier.notifier.close)
            interval = notifier._interval if notifier._watchdog is not None else None
            self.assertEqual(interval, expected, extra)
        self.assertIsNone(SystemdNotifier.from_environment(reactor, {}))


class _PortTaken(MemoryReactorClock):
    def listenTCP(self, port: int, *args: object, **kwargs: object) -> Any:
        raise CannotListenError("", port, OSError("address in use"))


class SystemdNotifierTests(unittest.SynchronousTestCase):
    """The service's messages, on a memory reactor and a clock."""

    def test_ready_after_every_listener_then_watchdog_then_stopping(self) -> None:
        reactor = MemoryReactorClock()
        listening = Listening(self, abstract=False)
        root = MultiService()
        for port in (2121, 2222):
            ListenerService(
                reactor, f"tcp:{port}", Factory.forProtocol(Protocol)
            ).setServiceParent(root)
        notifier = SystemdNotifier(Notifier(listening.env), reactor, watchdog=5)
        self.addCleanup(notifier.notifier.close)
        notifier.setServiceParent(root)

        root.privilegedStartService()
        root.startService()
        # Ticking from the start; READY only once the reactor runs.
        self.assertEqual(listening.pending(), [{"WATCHDOG": "1"}])
        reactor.run()
        self.assertEqual(
            listening.pending(),
            [{"READY": "1", "STATUS": "listening on 0.0.0.0:2121, 0.0.0.0:2222"}],
        )
        reactor.advance(5)
        reactor.advance(5)
        self.assertEqual(listening.pending(), [{"WATCHDOG": "1"}] * 2)
        root.stopService()
        self.assertEqual(listening.pending(), [{"STOPPING": "1", "STATUS": "stopping"}])

    def test_no_ready_when_a_listener_fails(self) -> None:
        reactor = _PortTaken()
        listening = Listening(self, abstract=False)
        root = MultiService()
        ListenerService(
            reactor, "tcp:2121", Factory.forProtocol(Protocol)
        ).setServiceParent(root)
        SystemdNotifier(Notifier(listening.env), reactor).setServiceParent(root)
        # The start stops at the listener (twistd exits 1 there).
        error = self.assertRaises(ListenFailed, root.privilegedStartService)
        self.assertEqual(str(error), "cannot listen on tcp:2121: address in use")
        reactor.run()
        self.assertEqual(listening.pending(), [])


# --------------------------------------------------------------------------
# A real twistd, told by systemd's variables
# --------------------------------------------------------------------------


def _config(directory: Path, ftp_listen: str, **more: str) -> Path:
    config = directory / "cosgw.ini"
    extra = "".join(f"{key} = {value}\n" for key, value in more.items())
    config.write_text(
        f"[server]\nstate_dir = {directory}/state\nftp_listen = {ftp_listen}\n"
        f"passive_ports = 62000-62999\nadmin_listen =\n{extra}"
        f"[storage:s]\ntype = local\npath = {directory}/data\n"
        f"[user:bob]\npassword = {PASSWORD}\nstorage = s\npermissions = all\n"
    )
    return config


def _login_and_upload(port: int) -> None:
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=TIMEOUT)
    ftp.login("bob", PASSWORD)
    reply = ftp.storbinary("STOR up.txt", io.BytesIO(b"through systemd's socket"))
    assert reply.startswith("226"), reply
    assert ftp.nlst() == ["up.txt"]
    ftp.quit()


class NotifyProcessTests(unittest.SynchronousTestCase):
    def test_ready_watchdog_and_stopping_from_twistd(self) -> None:
        directory = scratch(self)
        listening = Listening(self, abstract=True)
        port = free_port()
        config = _config(directory, f"tcp:{port}:interface=127.0.0.1")
        child = Child(
            self,
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "--logfile=-",
                "cosftp",
                "--config",
                str(config),
            ],
            directory,
            env={"NOTIFY_SOCKET": listening.env, "WATCHDOG_USEC": "400000"},
        )
        ready = listening.until("READY")
        self.assertEqual(ready["STATUS"], f"listening on 127.0.0.1:{port}")
        # Ready means serving: the port answers at once.
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            self.assertTrue(s.recv(100).startswith(b"220 "))
        for _ in range(2):
            self.assertEqual(listening.until("WATCHDOG"), {"WATCHDOG": "1"})
        os.kill(child.pid, signal.SIGTERM)
        self.assertEqual(listening.until("STOPPING")["STOPPING"], "1")
        # SIGTERM drains (nothing to wait for here) and twistd exits 0.
        self.assertEqual(child.wait(TIMEOUT), 0)


class SocketActivationTests(unittest.SynchronousTestCase):
    """systemd-socket-activate binds, twistd adopts; ftplib logs in."""

    def activate(self, listen: str, ftp_listen: str, port: int, fdname: str) -> None:
        directory = scratch(self)
        config = _config(directory, ftp_listen)
        argv = ["systemd-socket-activate", "-l", listen, "--fdname", fdname]
        argv += ["-E", "PYTHONPATH", TWISTD, "-n", "--pidfile=", "--logfile=-"]
        child = Child(self, [*argv, "cosftp", "--config", str(config)], directory)
        poll(lambda: child.running() and "Listening on" in child.text(), 30, listen)
        # The first connection starts twistd, which serves it on the
        # socket it was handed.
        _login_and_upload(port)
        self.assertEqual(
            (directory / "data" / "up.txt").read_bytes(), b"through systemd's socket"
        )
        child.running()
        self.assertIn(f"Execing {TWISTD}", child.text())

    def test_named_dual_stack_as_the_shipped_units(self) -> None:
        """cosgw-ftp.socket's [::]:21 with BindIPv6Only=both, over IPv4."""
        port = free_port("::")
        self.activate(f"[::]:{port}", "systemd:domain=INET6:name=ftp", port, "ftp")

    def test_ipv4_by_index(self) -> None:
        port = free_port()
        self.activate(f"127.0.0.1:{port}", "systemd:domain=INET:index=0", port, "x")


# --------------------------------------------------------------------------
# The unit files
# --------------------------------------------------------------------------


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60
    )


def _unit_files() -> list[Path]:
    return sorted(UNITS.glob("cosgw*.service")) + sorted(UNITS.glob("cosgw*.socket"))


def test_units_are_the_service_and_three_sockets() -> None:
    assert [p.name for p in _unit_files()] == [
        "cosgw.service",
        "cosgw-ftp.socket",
        "cosgw-ftps.socket",
        "cosgw-sftp.socket",
    ]
    assert not (ROOT / "etc" / "cosgw.service").exists()


def test_units_verify(tmp_path: Path) -> None:
    """
    systemd-analyze verify, offline: a scratch root holds the system's own
    units (sysinit.target and the rest the checks load) and stand-ins for
    the commands the unit runs, found in systemd's search path as they
    would be on a host where cosgw is installed; our units go unchanged.
    """
    system = next(
        p
        for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
        if p.is_dir()
    )
    shutil.copytree(system, tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "usr/bin").mkdir()
    for command in ("twistd", "kill"):
        stand_in = tmp_path / "usr/bin" / command
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in _unit_files():
        shutil.copy(unit, units)
    result = _analyze(
        "verify",
        "--man=no",
        f"--root={tmp_path}",
        *(str(units / p.name) for p in _unit_files()),
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_units_verify_finds_mistakes(tmp_path: Path) -> None:
    """The same check fails a misspelt key: it is not vacuous."""
    broken = tmp_path / "cosgw.service"
    broken.write_text(
        (UNITS / "cosgw.service").read_text().replace("Type=notify", "Typo=notify")
    )
    result = _analyze("verify", "--man=no", str(broken))
    assert "Unknown key 'Typo'" in result.stderr


def test_security_exposure_at_most_3() -> None:
    result = _analyze("security", "--offline=yes", str(UNITS / "cosgw.service"))
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"Overall exposure level for cosgw.service: ([\d.]+)", result.stdout
    )
    assert match, result.stdout
    assert float(match[1]) <= 3.0, result.stdout


def test_unit_essentials() -> None:
    """What the issue asks of the unit, which verify cannot judge."""
    text = (UNITS / "cosgw.service").read_text()
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in text.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert lines["Type"] == "notify"
    assert lines["ExecStart"].startswith("twistd --nodaemon ")
    assert "--uid" not in lines["ExecStart"]
    assert lines["ExecReload"] == "kill -HUP $MAINPID"
    assert (
        lines["StateDirectory"]
        == lines["LogsDirectory"]
        == lines["RuntimeDirectory"]
        == "cosgw"
    )
    assert lines["StateDirectoryMode"] == "0700"
    for name in ("ftp", "ftps", "sftp"):
        socket_unit = (UNITS / f"cosgw-{name}.socket").read_text()
        assert f"FileDescriptorName={name}\n" in socket_unit
        assert "Service=cosgw.service\n" in socket_unit
        assert f"systemd:domain=INET6:name={name}" in socket_unit
    example = (ROOT / "etc" / "cosgw.ini").read_text()
    for name in ("ftp", "ftps", "sftp"):
        assert f"systemd:domain=INET6:name={name}" in example


# --------------------------------------------------------------------------
# $STATE_DIRECTORY
# --------------------------------------------------------------------------


NATIVE = "[storage:s]\ntype = local\npath = data\n[user:u]\npassword = p\nstorage = s\n"


@pytest.mark.parametrize(
    "text",
    [NATIVE, v5(v5_account(0))],
    ids=["native", "v5"],
)
def test_state_directory_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    path = tmp_path / "cosgw.ini"
    path.write_text(text)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert load_config(path).server.state_dir == tmp_path / "cosgw-state"
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/cosgw:/var/lib/other")
    assert load_config(path).server.state_dir == Path("/var/lib/cosgw")


def test_state_directory_given_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cosgw.ini"
    path.write_text("[server]\nstate_dir = mine\n" + NATIVE)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/cosgw")
    assert load_config(path).server.state_dir == tmp_path / "mine"
