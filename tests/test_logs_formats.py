"""
The log line formats and the observers that write them (L{cosgw.logs}):
real audit events from a L{SessionTable}, real twisted.logger events
(new and legacy, with failures), written by the observers the gateway
installs.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python import log as legacy
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cosgw.audit import SessionTable
from cosgw.audit.events import EVENTS
from cosgw.logs import LineObserver, json_line, output_observer, text_line
from cosgw.runtime import LogFileService

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT = re.compile(r"^(?P<time>\S+) \[(?P<system>[^\]]+)\] (?P<message>.*)$")


def watch(
    case: SynchronousTestCase, log_format: str, level: str = "debug"
) -> io.StringIO:
    """Lines the gateway's observer writes, from now until the test ends."""
    out = io.StringIO()
    observer = output_observer(out, log_format, level)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return out


def upload_session(clock: Clock) -> dict[str, Any]:
    """
    A real session's life through the audit table: open, login, an upload
    of 5000 bytes over 2.5 s with store figures, close.  Returns the
    upload event's fields as the table built them.
    """
    table = SessionTable(clock)
    session = table.open("ftps", "192.0.2.7", 50312, kick=lambda reason: None)
    session.status_of = lambda error: "226" if error is None else "451"
    session.user = "alice"
    session.emit("login")
    transfer = session.start_transfer("upload", "/in/report.csv", size=5000)
    clock.advance(2.5)
    transfer.progress(5000)
    transfer.store_wait = 0.75
    transfer.parts = 1
    transfer.request_ids.append("NjU0YjA2_abc")
    transfer.finish()
    table.close(session, "client quit")
    return dict(table.finished[0])


class JSONLineTests(SynchronousTestCase):
    def test_audit_event_every_field_its_own_key(self) -> None:
        out = watch(self, "json")
        upload_session(Clock())
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        events = [r for r in records if r["namespace"] == "cosgw.audit"]
        self.assertEqual(
            [r["event"] for r in events],
            ["session-open", "login", "upload", "session-close"],
        )
        upload = events[2]
        self.assertEqual(
            {k: upload[k] for k in ("level", "namespace")},
            {"level": "info", "namespace": "cosgw.audit"},
        )
        self.assertRegex(upload["time"], ISO_UTC)
        self.assertEqual(
            upload["message"],
            "ftps upload of /in/report.csv by alice from 192.0.2.7:50312: ok,"
            " 5000 bytes in 2.500s",
        )
        expected = {
            "event": "upload",
            "protocol": "ftps",
            "client_ip": "192.0.2.7",
            "client_port": 50312,
            "user": "alice",
            "outcome": "ok",
            "status": "226",
            "path": "/in/report.csv",
            "direction": "upload",
            "bytes": 5000,
            "duration": 2.5,
            "size": 5000,
            "offset": 0,
            "rate": 2000.0,
            "store_wait": 0.75,
            "parts": 1,
            "retries": 0,
            "request_ids": ["NjU0YjA2_abc"],
        }
        self.assertEqual({k: upload[k] for k in expected}, expected)
        self.assertEqual(upload["session"], events[0]["session"])
        self.assertNotIn("traceback", upload)
        close = events[3]
        self.assertEqual((close["reason"], close["duration"]), ("client quit", 2.5))

    def test_time_is_utc_to_the_millisecond(self) -> None:
        event = {
            "log_format": "x",
            "log_time": 1736172187.4129,
            "log_level": LogLevel.warn,
            "log_namespace": "n",
        }
        record = json.loads(json_line(event) or "")
        self.assertEqual(record["time"], "2025-01-06T14:03:07.412Z")
        self.assertEqual(list(record), ["time", "level", "namespace", "message"])

    def test_values_json_cannot_hold_become_strings(self) -> None:
        """Bytes, exceptions, paths, NaN, odd keys: a line all the same."""

        class Unprintable:
            def __str__(self) -> str:
                raise RuntimeError("no")

        odd = {
            "event": "delete",
            "bytes_name": b"caf\xc3\xa9 \xff",
            "error": ValueError("bad"),
            "path": Path("/a/b"),
            "nan": math.nan,
            "nested": {1: {"deeper": [b"x", {2, 3}]}},
            "odd": Unprintable(),
        }
        event = {
            "log_format": "{audit_text}",
            "audit_text": "t",
            "audit": odd,
            "log_namespace": "cosgw.audit",
            "log_level": LogLevel.info,
            "log_time": time.time(),
        }
        record = json.loads(json_line(event) or "")
        self.assertEqual(record["bytes_name"], "café \\xff")
        self.assertEqual(record["error"], "ValueError: bad")
        self.assertEqual(record["path"], "/a/b")
        self.assertEqual(record["nan"], "nan")
        self.assertEqual(record["nested"], {"1": {"deeper": ["x", [2, 3]]}})
        self.assertEqual(record["odd"], "<unprintable Unprintable>")

    def test_an_audit_field_never_hides_a_fixed_key(self) -> None:
        event = {
            "log_format": "{audit_text}",
            "audit_text": "line",
            "audit": {"event": "list", "message": "client's", "time": 5},
            "log_namespace": "cosgw.audit",
            "log_level": LogLevel.info,
            "log_time": 0.0,
        }
        record = json.loads(json_line(event) or "")
        self.assertEqual(
            (record["message"], record["time"]), ("line", "1970-01-01T00:00:00.000Z")
        )
        self.assertEqual(
            (record["audit_message"], record["audit_time"]), ("client's", 5)
        )

    def test_failure_adds_traceback(self) -> None:
        out = watch(self, "json")
        try:
            raise KeyError("missing-part")
        except KeyError:
            Logger(namespace="cosgw.test").failure("store said no to {key}", key="k1")
        try:
            raise OSError("disk")
        except OSError:
            legacy.err(Failure(), "legacy why")
        new, old = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual(
            (new["level"], new["namespace"], new["message"]),
            ("critical", "cosgw.test", "store said no to k1"),
        )
        self.assertIn("KeyError: 'missing-part'", new["traceback"])
        self.assertIn("test_failure_adds_traceback", new["traceback"])
        self.assertEqual(
            (old["message"], old["namespace"]), ("legacy why", "log_legacy")
        )
        self.assertIn("OSError: disk", old["traceback"])
        self.flushLoggedErrors(KeyError, OSError)

    def test_event_without_text_writes_nothing(self) -> None:
        self.assertIsNone(json_line({"log_level": LogLevel.info, "x": 1}))
        self.assertIsNone(text_line({"log_level": LogLevel.info, "x": 1}))


class TextLineTests(SynchronousTestCase):
    def test_audit_events_show_their_text_line(self) -> None:
        out = watch(self, "text")
        upload_session(Clock())
        lines = [TEXT.match(line) for line in out.getvalue().splitlines()]
        audit = [m for m in lines if m and m["system"] == "cosgw.audit#info"]
        self.assertEqual(len(audit), 4)
        self.assertEqual(
            audit[2]["message"],
            "ftps upload of /in/report.csv by alice from 192.0.2.7:50312: ok,"
            " 5000 bytes in 2.500s",
        )
        self.assertTrue(audit[0]["message"].startswith("ftps session "))
        self.assertTrue(audit[0]["message"].endswith(" opened from 192.0.2.7:50312"))
        self.assertRegex(audit[0]["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$")

    def test_failed_login_line_names_address_before_user(self) -> None:
        out = watch(self, "text")
        table = SessionTable(Clock())
        session = table.open("sftp", "2001:db8::5", 41000, kick=lambda reason: None)
        session.user = "x from 1.2.3.4\nforged line"
        session.emit("login-failed", PermissionError("bad password"))
        (line,) = [x for x in out.getvalue().splitlines() if "login failed" in x]
        self.assertIn(
            "[cosgw.audit#info] sftp login failed from 2001:db8::5 port 41000 for"
            " user x from 1.2.3.4\\nforged line (session ",
            line,
        )
        self.assertTrue(line.endswith("): bad password"))
        self.assertIn("login-failed", EVENTS)


class LevelTests(SynchronousTestCase):
    def test_below_the_level_is_not_written(self) -> None:
        out = watch(self, "text", level="warn")
        log = Logger(namespace="cosgw.test")
        log.debug("debug line")
        log.info("info line")
        legacy.msg("legacy info line")
        log.warn("warn line")
        log.error("error line")
        legacy.err(ValueError("legacy error"), "legacy critical")
        text = out.getvalue()
        for hidden in ("debug line", "info line", "legacy info line"):
            self.assertNotIn(hidden, text)
        for shown in ("[cosgw.test#warn] warn line", "[cosgw.test#error] error line"):
            self.assertIn(shown, text)
        self.assertIn("legacy critical", text)
        self.flushLoggedErrors(ValueError)

    def test_debug_shows_everything(self) -> None:
        out = watch(self, "json", level="debug")
        Logger(namespace="cosgw.test").debug("conch said {what}", what="hello")
        (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual(
            (record["level"], record["message"]), ("debug", "conch said hello")
        )


class NeverRaisesTests(SynchronousTestCase):
    def test_closed_output(self) -> None:
        out = io.StringIO()
        observer = LineObserver(out, "json", LogLevel.info)
        out.close()
        observer({"log_format": "x", "log_level": LogLevel.info, "log_time": 0.0})

    def test_unformattable_event_still_written(self) -> None:
        out = io.StringIO()
        observer = LineObserver(out, "text", LogLevel.info)
        observer(
            {
                "log_format": "{x.y}",
                "x": object(),
                "log_level": LogLevel.info,
                "log_namespace": "n",
                "log_time": 0.0,
            }
        )
        self.assertIn("Unable to format event", out.getvalue())

    def test_format_error_writes_a_line(self) -> None:
        out = io.StringIO()
        observer = LineObserver(out, "json", LogLevel.info)

        def broken(event: Any) -> str:
            raise RuntimeError("format bug")

        observer._line = broken
        observer({"log_format": "x", "log_level": LogLevel.error, "log_namespace": "n"})
        self.assertEqual(out.getvalue(), "unformattable log event in n: RuntimeError\n")


class LogFileServiceTests(SynchronousTestCase):
    def test_log_dir_in_json_from_the_level(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="cosgw-logdir-"))
        self.addCleanup(shutil.rmtree, directory, True)
        service = LogFileService(directory / "logs", "info", "json")
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        log = Logger(namespace="cosgw.test")
        log.debug("not this")
        upload_session(Clock())
        service.stopService()
        log.info("nor this, stopped")
        records = [
            json.loads(line)
            for line in (directory / "logs" / "cosgw.log").read_text().splitlines()
        ]
        self.assertEqual(
            [r.get("event") for r in records],
            ["session-open", "login", "upload", "session-close"],
        )
        self.assertEqual(records[2]["bytes"], 5000)
