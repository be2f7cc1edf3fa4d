"""
The drain through real processes and real clients: C{twistd cosftp} over a
local storage, stopped by its PID (SIGTERM) or by C{cosgw stop}, while
ftplib uploads and paramiko downloads at a rate the user is limited to.

What the operator is promised (L{cosgw.lifecycle.drain}): transfers in
progress finish with the right bytes and the process exits 0; a new FTP
connection gets 421 and a new SSH connection a disconnect with the reason;
an idle session gets 421 at once; C{/readyz} answers 503; a transfer that
outlasts drain_timeout is interrupted (the FTP upload kept, and resumed
with REST on the next gateway; the SFTP upload aborted, nothing of it
visible); a second SIGTERM ends at once.
"""

from __future__ import annotations

import base64
import ftplib
import hashlib
import io
import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import paramiko
from twisted.trial import unittest

from tests.clitesting import cosgw
from tests.processtesting import TWISTD, Child, free_port, poll, scratch

PASSWORD = "drain-Passw0rd"
KiB = 1024
MiB = 1024 * KiB
#: Seconds any one client step may take on a loaded machine.
TIMEOUT = 30
TAC = Path(__file__).resolve().parent.parent / "etc" / "cosgw.tac"


class Gateway:
    """A C{twistd cosftp} with FTP, SFTP and admin listeners on loopback."""

    def __init__(
        self,
        case: unittest.SynchronousTestCase,
        directory: Path,
        drain_timeout: int,
        rate: str,
        name: str = "twistd",
        pidfile: str = "",
        server: str = "",
        tac: bool = False,
    ) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.ftp, self.sftp, self.admin = free_port(), free_port(), free_port()
        config = directory / "cosgw.ini"
        config.write_text(
            f"[server]\nstate_dir = {directory}/state\n"
            f"ftp_listen = tcp:{self.ftp}:interface=127.0.0.1\n"
            f"sftp_listen = tcp:{self.sftp}:interface=127.0.0.1\n"
            f"admin_listen = tcp:{self.admin}:interface=127.0.0.1\n"
            "passive_ports = 62000-62999\nlog_format = json\n"
            f"drain_timeout = {drain_timeout}\n{server}"
            "[transfer]\npart_size = 1M\n"
            f"[storage:s]\ntype = local\npath = {self.data}\n"
            f"[user:bob]\npassword = {PASSWORD}\nstorage = s\npermissions = all\n"
            f"upload_rate = {rate}\ndownload_rate = {rate}\n"
        )
        self.config = config
        argv = [TWISTD, "-n", f"--pidfile={pidfile}", "--logfile=-"]
        if tac:
            argv += ["--python", str(TAC)]
        else:
            argv += ["cosftp", "--config", str(config)]
        self.child = Child(
            case, argv, directory, env={"COSGW_CONFIG": str(config)}, name=name
        )
        for port in (self.ftp, self.sftp, self.admin):
            self.child.wait_for_port(port)

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines of its log."""
        return [
            json.loads(line)
            for line in self.child.text().splitlines()
            if line.startswith("{")
        ]

    def drain_lines(self) -> list[str]:
        return [
            e["message"] for e in self.events() if e["namespace"] == "cosgw.lifecycle"
        ]

    def audit(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def transfers(self) -> list[dict[str, Any]]:
        """The transfers in progress, from the admin API."""
        url = f"http://127.0.0.1:{self.admin}/api/transfers"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            return list(json.load(answer)["transfers"])

    def moving(self, count: int) -> None:
        """Wait until C{count} transfers have moved bytes."""
        poll(
            lambda: len([t for t in self.transfers() if t["bytes"] > 0]) >= count,
            TIMEOUT,
            f"{count} transfers moving",
        )

    def readyz(self) -> tuple[int, str]:
        try:
            url = f"http://127.0.0.1:{self.admin}/readyz"
            with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def ftp_login(self) -> ftplib.FTP:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", self.ftp, timeout=TIMEOUT)
        ftp.login("bob", PASSWORD)
        return ftp

    def sftp_login(self) -> paramiko.SFTPClient:
        transport = paramiko.Transport(("127.0.0.1", self.sftp))
        transport.banner_timeout = transport.auth_timeout = TIMEOUT
        transport.connect(username="bob", password=PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        sftp.get_channel().settimeout(TIMEOUT)
        return sftp


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def ssh_refusal(port: int) -> str:
    """What a new SSH connection is told: the DISCONNECT in paramiko's log."""
    transport = paramiko.Transport(("127.0.0.1", port))
    channel = f"cosgw.test_drain.{port}.{time.monotonic_ns()}"
    transport.set_log_channel(channel)
    collect = _Collect()
    logger = logging.getLogger(channel)
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        transport.start_client(timeout=TIMEOUT)
    except paramiko.SSHException:
        pass
    finally:
        transport.close()
    return next((m for m in collect.messages if m.startswith("Disconnect")), "")


def ftp_refusal(port: int) -> str:
    """What a new FTP connection is told."""
    try:
        ftplib.FTP().connect("127.0.0.1", port, timeout=TIMEOUT)
    except ftplib.error_temp as e:
        return str(e)
    return "welcome"


def unsolicited(ftp: ftplib.FTP) -> str:
    """The reply the gateway sends a session on its own (421)."""
    try:
        return ftp.getresp()
    except ftplib.error_temp as e:
        return str(e)


def interrupted_stor(ftp: ftplib.FTP, name: str, content: bytes) -> str:
    """
    STOR that the gateway interrupts: its replies (426, then 421), whether
    ftplib saw the 426 or the data connection's reset first.
    """
    try:
        return ftp.storbinary(f"STOR {name}", io.BytesIO(content))
    except ftplib.error_temp as e:
        return f"{e} / {unsolicited(ftp)}"
    except OSError:
        return f"{unsolicited(ftp)} / {unsolicited(ftp)}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Background:
    """A blocking client step in a thread; its result or its error."""

    def __init__(self, step: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.ended_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(step,), daemon=True)
        self._thread.start()

    def _run(self, step: Callable[[], Any]) -> None:
        try:
            self.result = step()
        except BaseException as e:  # reported by join
            self.error = e
        self.ended_at = time.monotonic()

    def join(self) -> Any:
        self._thread.join(TIMEOUT * 2)
        assert not self._thread.is_alive(), "the client step did not end"
        if self.error is not None:
            raise self.error
        return self.result


class DrainProcessTests(unittest.SynchronousTestCase):
    def test_sigterm_lets_transfers_finish_and_exits_0(self) -> None:
        """
        SIGTERM during a rate-limited ftplib upload, paramiko download and
        paramiko upload (the user's sessions share one rate each way): all
        complete with the right bytes, refusals and 421s meanwhile, exit 0.
        The test's timeline is printed (README's Drain paragraph).
        """
        gw = Gateway(self, scratch(self), drain_timeout=30, rate="256K")
        upload = os.urandom(384 * KiB)
        sftp_upload = os.urandom(384 * KiB)
        download = os.urandom(768 * KiB)
        gw.data.joinpath("down.bin").write_bytes(download)
        idle = gw.ftp_login()
        uploading = gw.ftp_login()
        sftp = gw.sftp_login()
        sftp_uploading = gw.sftp_login()

        def store() -> tuple[str, str]:
            done = uploading.storbinary("STOR up.bin", io.BytesIO(upload))
            return done, unsolicited(uploading)

        def fetch() -> bytes:
            out = io.BytesIO()
            sftp.getfo("down.bin", out)
            return out.getvalue()

        def put() -> int:
            return int(sftp_uploading.putfo(io.BytesIO(sftp_upload), "put.bin").st_size)

        ftp_step, sftp_step = Background(store), Background(fetch)
        put_step = Background(put)
        gw.moving(3)
        start = time.monotonic()
        os.kill(gw.child.pid, signal.SIGTERM)
        timeline = {"idle 421": (unsolicited(idle), time.monotonic())}
        timeline["new FTP"] = (ftp_refusal(gw.ftp), time.monotonic())
        timeline["new SSH"] = (ssh_refusal(gw.sftp), time.monotonic())
        timeline["/readyz"] = (gw.readyz(), time.monotonic())
        stored, after = ftp_step.join()
        fetched = sftp_step.join()
        self.assertEqual(put_step.join(), len(sftp_upload))
        self.assertEqual(gw.child.wait(TIMEOUT), 0)
        exited = time.monotonic()

        self.assertEqual(timeline["idle 421"][0], "421 Shutting down")
        self.assertEqual(timeline["new FTP"][0], "421 Shutting down")
        self.assertEqual(timeline["new SSH"][0], "Disconnect (code 11): shutting down")
        self.assertEqual(
            timeline["/readyz"][0], (503, "draining: shutting down (SIGTERM)\n")
        )
        self.assertEqual(
            (stored, after), ("226 Transfer complete", "421 Shutting down")
        )
        self.assertEqual(sha(gw.data.joinpath("up.bin").read_bytes()), sha(upload))
        self.assertEqual(sha(fetched), sha(download))
        self.assertEqual(
            sha(gw.data.joinpath("put.bin").read_bytes()), sha(sftp_upload)
        )
        # The refusals came while the transfers still ran.
        for what in ("idle 421", "new FTP", "new SSH", "/readyz"):
            self.assertLess(timeline[what][1], ftp_step.ended_at, what)

        closes = gw.audit("session-close")
        drained = [c["reason"] for c in closes if c["user"] == "bob"]
        self.assertEqual(drained, ["shutting down"] * 4)
        begin, end = gw.drain_lines()
        self.assertEqual(
            begin,
            "drain (SIGTERM): 4 sessions, 3 transfers in progress; new connections"
            " refused, transfers have 30 s to finish",
        )
        self.assertIn("3 transfers ended", end)
        self.assertIn("no session interrupted", end)
        self.assertIn("2 new connections refused", end)
        print(
            "drain timeline: SIGTERM at 0 s, "
            + ", ".join(f"{k} +{t - start:.3f} s" for k, (_, t) in timeline.items())
            + f", FTP 226 +{ftp_step.ended_at - start:.3f} s,"
            f" SFTP download +{sftp_step.ended_at - start:.3f} s,"
            f" SFTP upload +{put_step.ended_at - start:.3f} s,"
            f" exit 0 +{exited - start:.3f} s; gateway: {end}"
        )

    def test_timeout_keeps_ftp_for_resume_and_aborts_sftp(self) -> None:
        """
        Transfers that outlast drain_timeout (2 s): the FTP upload's whole
        parts are kept and REST resumes it on the next gateway; the SFTP
        upload is aborted; nothing partial is visible; exit 0.
        """
        directory = scratch(self)
        # The two uploads share the user's 4 MiB/s: each has stored whole
        # 1 MiB parts by the timeout, and needs 8 s to finish.
        gw = Gateway(self, directory, drain_timeout=2, rate="4M")
        ftp_content = os.urandom(16 * MiB)
        sftp_content = os.urandom(16 * MiB)
        uploading = gw.ftp_login()
        sftp = gw.sftp_login()

        def store() -> str:
            return interrupted_stor(uploading, "big.bin", ftp_content)

        def put() -> str:
            try:
                sftp.putfo(io.BytesIO(sftp_content), "sftp.bin", confirm=False)
            except (OSError, EOFError, paramiko.SSHException) as e:
                return type(e).__name__
            return "stored"

        ftp_step, sftp_step = Background(store), Background(put)
        gw.moving(2)
        start = time.monotonic()
        os.kill(gw.child.pid, signal.SIGTERM)
        told = ftp_step.join()
        self.assertNotEqual(sftp_step.join(), "stored")
        self.assertEqual(gw.child.wait(TIMEOUT), 0)
        self.assertLess(time.monotonic() - start, 2 + 10)
        self.assertRegex(
            told,
            r"^426 Connection closed; transfer aborted; (\d+) bytes kept: resume"
            r" with REST \1 / 421 Shutting down$",
        )
        kept = int(told.split("REST ")[1].split(" ")[0])
        self.assertEqual(kept % MiB, 0)
        self.assertGreater(kept, 0)
        self.assertEqual(sorted(p.name for p in gw.data.iterdir() if p.is_file()), [])
        pending = json.loads(
            cosgw("uploads", "list", "--config", str(gw.config), "--json").stdout
        )
        self.assertEqual([u["key"] for u in pending["uploads"]], ["big.bin"])
        lines = gw.drain_lines()
        self.assertEqual(len([x for x in lines if "interrupting" in x]), 2)
        self.assertIn("2 sessions interrupted at +2.", lines[-1])
        aborts = gw.audit("abort")
        self.assertEqual(
            sorted((a["protocol"], a.get("kept", False)) for a in aborts),
            [("ftp", True), ("sftp", False)],
        )

        again = Gateway(self, directory, drain_timeout=2, rate="0", name="again")
        ftp = again.ftp_login()
        self.assertEqual(ftp.size("big.bin"), kept)
        done = ftp.storbinary("STOR big.bin", io.BytesIO(ftp_content[kept:]), rest=kept)
        self.assertEqual(done, "226 Transfer complete")
        ftp.quit()
        self.assertEqual(
            sha(again.data.joinpath("big.bin").read_bytes()), sha(ftp_content)
        )

    def test_second_sigterm_ends_at_once(self) -> None:
        gw = Gateway(self, scratch(self), drain_timeout=60, rate="256K")
        uploading = gw.ftp_login()

        def store() -> str:
            return interrupted_stor(uploading, "slow.bin", os.urandom(4 * MiB))

        step = Background(store)
        gw.moving(1)
        os.kill(gw.child.pid, signal.SIGTERM)
        poll(lambda: len(gw.drain_lines()) >= 1, TIMEOUT, "the drain's first line")
        second = time.monotonic()
        os.kill(gw.child.pid, signal.SIGTERM)
        self.assertEqual(gw.child.wait(TIMEOUT), 0)
        self.assertLess(time.monotonic() - second, 5)
        self.assertRegex(step.join(), r"^426 .* / 421 Shutting down$")
        self.assertFalse(gw.data.joinpath("slow.bin").exists())
        self.assertIn(
            "drain: SIGTERM during the drain: interrupting now", gw.drain_lines()
        )

    def test_cosgw_stop_through_the_admin_api(self) -> None:
        gw = Gateway(self, scratch(self), drain_timeout=30, rate="256K")
        content = os.urandom(512 * KiB)
        uploading = gw.ftp_login()
        step = Background(
            lambda: uploading.storbinary("STOR api.bin", io.BytesIO(content))
        )
        gw.moving(1)
        stop = cosgw("stop", "--admin", f"http://127.0.0.1:{gw.admin}", "--wait", "30")
        self.assertEqual(stop.returncode, 0, stop.stderr)
        first, last = stop.stdout.splitlines()
        self.assertEqual(
            first,
            "draining: 1 sessions, 1 transfers in progress; transfers have 30 s to finish",
        )
        self.assertRegex(last, r"^stopped after \d+\.\d s$")
        self.assertEqual(step.join(), "226 Transfer complete")
        self.assertEqual(gw.child.wait(TIMEOUT), 0)
        self.assertEqual(sha(gw.data.joinpath("api.bin").read_bytes()), sha(content))
        self.assertTrue(
            gw.drain_lines()[0].startswith(
                "drain (cosgw stop by admin - from 127.0.0.1)"
            )
        )

    def test_cosgw_stop_by_pid_file(self) -> None:
        directory = scratch(self)
        pidfile = directory / "twistd.pid"
        gw = Gateway(self, directory, drain_timeout=30, rate="1M", pidfile=str(pidfile))
        stop = cosgw("stop", "--pidfile", str(pidfile), "--wait", "30")
        self.assertEqual(stop.returncode, 0, stop.stderr)
        self.assertEqual(
            stop.stdout.splitlines()[0], f"sent SIGTERM to process {gw.child.pid}"
        )
        self.assertEqual(gw.child.wait(TIMEOUT), 0)
        gone = cosgw("stop", "--pid", str(gw.child.pid))
        self.assertEqual(
            (gone.returncode, gone.stderr),
            (5, f"cosgw stop: no process {gw.child.pid}\n"),
        )
        missing = cosgw("stop", "--pidfile", str(directory / "nope.pid"))
        self.assertEqual(missing.returncode, 5)

    def test_the_tac_drains_too(self) -> None:
        """twistd -ny etc/cosgw.tac: the same drain, exit 0, a second signal."""
        gw = Gateway(self, scratch(self), drain_timeout=60, rate="256K", tac=True)
        uploading = gw.ftp_login()
        step = Background(
            lambda: interrupted_stor(uploading, "tac.bin", os.urandom(2 * MiB))
        )
        gw.moving(1)
        os.kill(gw.child.pid, signal.SIGTERM)
        poll(lambda: gw.drain_lines(), TIMEOUT, "the drain's first line")
        self.assertEqual(ftp_refusal(gw.ftp), "421 Shutting down")
        os.kill(gw.child.pid, signal.SIGINT)
        self.assertEqual(gw.child.wait(TIMEOUT), 0)
        self.assertRegex(step.join(), r"^426 .* / 421 Shutting down$")
        self.assertIn(
            "drain: SIGINT during the drain: interrupting now", gw.drain_lines()
        )

    def test_cosgw_stop_is_for_admins(self) -> None:
        """POST /api/drain is guarded as the other admin endpoints are."""
        gw = Gateway(
            self,
            scratch(self),
            drain_timeout=30,
            rate="1M",
            server="admin_users = bob\n",
        )
        url = f"http://127.0.0.1:{gw.admin}"
        denied = cosgw("stop", "--admin", url)
        self.assertEqual(denied.returncode, 4)
        self.assertIn("asks for a user (401)", denied.stderr)
        wrong = cosgw("stop", "--admin", url, "--user", "bob", env=_password("nope"))
        self.assertEqual(wrong.returncode, 4)
        self.assertTrue(gw.child.running())
        self.assertEqual(gw.readyz()[0], 200)

        def post(method: str, **headers: str) -> int:
            request = urllib.request.Request(
                f"{url}/api/drain", method=method, data=b"", headers=headers
            )
            request.add_unredirected_header("Authorization", _basic("bob", PASSWORD))
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                    return int(answer.status)
            except urllib.error.HTTPError as e:
                return e.code

        self.assertEqual(post("GET"), 405)
        self.assertEqual(post("POST", Origin="http://evil.example"), 403)
        self.assertEqual(gw.readyz()[0], 200)
        stop = cosgw("stop", "--admin", url, "--user", "bob", env=_password(PASSWORD))
        self.assertEqual(stop.returncode, 0, stop.stderr)
        self.assertEqual(gw.child.wait(TIMEOUT), 0)
        self.assertTrue(
            gw.drain_lines()[0].startswith(
                "drain (cosgw stop by admin bob from 127.0.0.1)"
            )
        )


def _password(password: str) -> dict[str, str]:
    return {"COSGW_ADMIN_PASSWORD": password}


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
