"""
C{[server] xferlog}: the wu-ftpd/vsftpd transfer log.  Lines from real
audit transfers (L{SessionTable} on a Clock), the file's handling (mode,
append, a rotated file), and the lines a real gateway writes after ftplib
uploads and downloads a file.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from cosgw.audit import SessionTable
from cosgw.logs import XferlogFile, xferlog_line
from tests.harness import in_thread, start_gateway
from tests.test_ftp import connect

#: The fields of a line after its five-word date, by xferlog(5)'s names.
FIELDS = (
    "transfer_time",
    "remote_host",
    "byte_count",
    "filename",
    "transfer_type",
    "special_action",
    "direction",
    "access_mode",
    "username",
    "service_name",
    "authentication_method",
    "authenticated_user_id",
    "completion_status",
)


def parse(line: str) -> dict[str, Any]:
    """One xferlog line as xferstats reads it: split on white space."""
    words = line.split()
    assert len(words) == 5 + len(FIELDS), line
    record: dict[str, Any] = dict(zip(FIELDS, words[5:]))
    record["time"] = time.mktime(
        time.strptime(" ".join(words[:5]), "%a %b %d %H:%M:%S %Y")
    )
    return record


def tempdir(case: unittest.TestCase) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="cosgw-xferlog-"))
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


class LineTests(unittest.SynchronousTestCase):
    def transfers(self) -> list[dict[str, Any]]:
        """Real audit transfers: done, failed, cut short, over SFTP."""
        clock = Clock()
        clock.advance(1736172187)
        table = SessionTable(clock)
        ftp = table.open("ftp", "192.0.2.7", 50312, kick=lambda reason: None)
        ftp.user = "alice"
        up = ftp.start_transfer("upload", "/in/my report.csv")
        clock.advance(2.6)
        up.progress(1048576)
        up.finish()
        down = ftp.start_transfer("download", "/out/new\nline\x7f.bin", size=10)
        down.progress(10)
        down.finish()
        failed = ftp.start_transfer("upload", "/full.bin")
        failed.progress(7)
        failed.finish(OSError("quota"))
        cut = ftp.start_transfer("download", "/big.iso", size=100)
        cut.progress(40)
        table.close(ftp, "connection lost")
        sftp = table.open("sftp", "2001:db8::5", 41000, kick=lambda reason: None)
        sftp.user = "bob smith"
        got = sftp.start_transfer("download", "/a.txt")
        got.progress(3)
        got.finish()
        return [dict(t) for t in reversed(table.finished)]

    def lines(self) -> list[str]:
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            from cosgw.audit.events import audit_fields

            fields = audit_fields(event)
            line = fields and xferlog_line(fields, event["log_time"])
            if line:
                lines.append(line)

        globalLogPublisher.addObserver(observe)
        try:
            self.transfers()
        finally:
            globalLogPublisher.removeObserver(observe)
        return lines

    def test_fields(self) -> None:
        lines = self.lines()
        self.assertTrue(
            all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
        )
        records = [parse(line) for line in lines]
        rows = [
            (
                r["transfer_time"],
                r["remote_host"],
                r["byte_count"],
                r["filename"],
                r["direction"],
                r["username"],
                r["service_name"],
                r["completion_status"],
            )
            for r in records
        ]
        self.assertEqual(
            rows,
            [
                # 2.6 s is 3 whole seconds; vsftpd writes at least 1.
                (
                    "3",
                    "192.0.2.7",
                    "1048576",
                    "/in/my_report.csv",
                    "i",
                    "alice",
                    "ftp",
                    "c",
                ),
                (
                    "1",
                    "192.0.2.7",
                    "10",
                    "/out/new?line?.bin",
                    "o",
                    "alice",
                    "ftp",
                    "c",
                ),
                ("1", "192.0.2.7", "7", "/full.bin", "i", "alice", "ftp", "i"),
                ("1", "192.0.2.7", "40", "/big.iso", "o", "alice", "ftp", "i"),
                ("1", "2001:db8::5", "3", "/a.txt", "o", "bob_smith", "sftp", "c"),
            ],
        )
        for r in records:
            self.assertEqual(
                (
                    r["transfer_type"],
                    r["special_action"],
                    r["access_mode"],
                    r["authentication_method"],
                    r["authenticated_user_id"],
                ),
                ("b", "_", "r", "0", "*"),
            )
        # Local time, as xferlog(5) says: when the event was logged.
        self.assertLess(abs(records[0]["time"] - time.time()), 120)

    def test_other_events_have_no_line(self) -> None:
        fields = {"event": "delete", "path": "/x", "outcome": "ok"}
        self.assertIsNone(xferlog_line(fields, 0.0))


class FileTests(unittest.SynchronousTestCase):
    def event(self, path: str) -> dict[str, Any]:
        return {
            "log_namespace": "cosgw.audit",
            "log_time": time.time(),
            "audit": {
                "event": "upload",
                "client_ip": "192.0.2.7",
                "user": "alice",
                "path": path,
                "bytes": 5,
                "duration": 0.1,
                "protocol": "ftp",
                "outcome": "ok",
            },
        }

    def test_mode_append_and_rotation(self) -> None:
        directory = tempdir(self)
        path = directory / "xferlog"
        path.write_text("earlier line\n")
        os.chmod(path, 0o600)
        log = XferlogFile(path)
        self.addCleanup(log.close)
        log(self.event("/one"))
        self.assertEqual(path.read_text().splitlines()[0], "earlier line")
        self.assertEqual(parse(path.read_text().splitlines()[1])["filename"], "/one")
        # logrotate moves it away: the next line starts a new file.
        path.rename(directory / "xferlog.1")
        log(self.event("/two"))
        self.assertEqual(
            [parse(x)["filename"] for x in path.read_text().splitlines()], ["/two"]
        )
        self.assertEqual(stat.S_IMODE(path.stat().st_mode) & 0o640, 0o640)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode) & 0o037, 0)
        # And when it is deleted.
        path.unlink()
        log(self.event("/three"))
        self.assertEqual(parse(path.read_text())["filename"], "/three")
        self.assertEqual(len((directory / "xferlog.1").read_text().splitlines()), 2)

    def test_unwritable_directory_loses_the_line_only(self) -> None:
        directory = tempdir(self)
        path = directory / "sub" / "xferlog"
        path.parent.mkdir()
        log = XferlogFile(path)
        self.addCleanup(log.close)
        shutil.rmtree(path.parent)
        log(self.event("/lost"))
        path.parent.mkdir()
        log(self.event("/kept"))
        self.assertEqual(parse(path.read_text())["filename"], "/kept")


class GatewayTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_ftp_upload_and_download_lines(self) -> Any:
        """ftplib against a gateway made by makeService with [server] xferlog."""
        path = tempdir(self) / "logs" / "xferlog"
        gw = yield start_gateway(self, "local", xferlog=path)
        data = os.urandom(70_000)

        def run() -> bytes:
            ftp = connect(gw)
            ftp.storbinary("STOR in file.bin", io.BytesIO(data))
            got = io.BytesIO()
            ftp.retrbinary("RETR in file.bin", got.write)
            ftp.quit()
            return got.getvalue()

        self.assertEqual((yield in_thread(run)), data)
        yield gw.service.stopService()
        records = [parse(line) for line in path.read_text().splitlines()]
        self.assertEqual(
            [
                (
                    r["remote_host"],
                    r["byte_count"],
                    r["filename"],
                    r["direction"],
                    r["username"],
                    r["service_name"],
                    r["completion_status"],
                    r["transfer_type"],
                    r["access_mode"],
                )
                for r in records
            ],
            [
                (
                    "127.0.0.1",
                    "70000",
                    "/in_file.bin",
                    "i",
                    "alice",
                    "ftp",
                    "c",
                    "b",
                    "r",
                ),
                (
                    "127.0.0.1",
                    "70000",
                    "/in_file.bin",
                    "o",
                    "alice",
                    "ftp",
                    "c",
                    "b",
                    "r",
                ),
            ],
        )
        self.assertTrue(all(int(r["transfer_time"]) >= 1 for r in records))
        self.assertTrue(all(abs(r["time"] - time.time()) < 120 for r in records))
        self.assertEqual(stat.S_IMODE(path.stat().st_mode) & 0o037, 0)
