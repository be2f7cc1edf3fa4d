"""
What a small file costs the FTP control connection beyond the store: the
timers set per command and per transfer, and the audit line's cost.  A
session that moves many small files (TYPE, PASV, STOR per file, as ftplib
does) pays these on every file, sequentially: bench/small_files.py
measures the rate; these tests pin the mechanisms, on the fakes of
tests/ftp_unit.py.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.trial import unittest

from cosgw.audit.events import AUDIT_FORMAT
from cosgw.logs.formats import text_line
from tests.ftp_unit import FTPGateway, GatewayTestCase


class TimerSpy:
    """Records the delay of every call the gateway's reactor is asked for."""

    def __init__(self, gateway: FTPGateway) -> None:
        self.delays: list[float] = []
        clock = gateway.clock
        call_later = clock.callLater

        def recorded(delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
            self.delays.append(delay)
            return call_later(delay, f, *args, **kwargs)

        clock.callLater = recorded  # type: ignore[method-assign]


class PerCommandTests(GatewayTestCase):
    def test_command_answered_at_once_ends_at_once(self) -> None:
        """
        A command answered at once, with nothing pipelined behind it, frees
        the connection for the next one without a zero-delay call: the next
        command, sent before the reactor turns, is answered at once too.
        """
        client = self.login()
        spy = TimerSpy(self.gw)
        for line, reply in (("TYPE I", "200 Type set to I"), ("NOOP", "200 NOOP ok")):
            client.transport.receive(line.encode() + b"\r\n")  # no reactor turn
            self.assertEqual(client.replies(), [reply])
        self.assertEqual(spy.delays, [])

    def test_pipelined_commands_still_take_turns(self) -> None:
        """
        Commands that arrive together run one per reactor turn, so one
        connection's pipeline does not hold up the others.
        """
        client = self.login()
        client.transport.receive(b"NOOP\r\nSYST\r\n")
        self.assertEqual(client.replies(), ["200 NOOP ok"])
        self.gw.pump()
        self.assertEqual(client.replies(), ["215 UNIX Type: L8"])


class PerTransferTests(GatewayTestCase):
    def test_connected_data_connection_sets_no_timeout(self) -> None:
        """
        A client that connects before it sends STOR (ftplib, curl, lftp)
        leaves nothing to wait for: no data-connection timeout and no TLS
        handshake timeout is set for it; the file is stored whole.
        """
        client = self.login()
        data = client.passive("PASV")
        self.assertTrue(data.connect())
        spy = TimerSpy(self.gw)
        self.assertEqual(
            client.command("STOR f.bin"),
            ["150 Ok to send data for f.bin (from byte 0)"],
        )
        self.assertNotIn(self.gw.factory.data_timeout, spy.delays)
        data.send(b"small file")
        self.assertEqual(self.finish_upload(client, data), ["226 Transfer complete"])
        self.assertEqual(self.store.stored_bytes("f.bin"), b"small file")
        self.assertEqual(self.store.requests["put"], 1)

    def test_unused_listener_timeout_moves(self) -> None:
        """
        PASV starts the unused-listener timeout; the connection moves it
        (the same call, reset) rather than cancel it and set another.
        """
        client = self.login()
        spy = TimerSpy(self.gw)
        timeout = self.gw.factory.stall_timeout
        data = client.passive("PASV")
        self.assertEqual(spy.delays, [timeout])
        self.gw.advance(1)
        self.assertTrue(data.connect())
        self.assertEqual(spy.delays, [timeout])
        self.gw.advance(timeout - 0.5)
        self.assertEqual(
            data.reason, None, "the unused timeout runs from the connection"
        )
        self.gw.advance(0.5)
        self.assertTrue(data.ended, "the unused connection outlived its timeout")


class AuditLineTests(unittest.TestCase):
    def test_audit_line_is_twisteds_classic_line(self) -> None:
        """
        An audit event's text line, its time remembered for the second, is
        the line Twisted's formatter makes with its own time, at every
        second and around its edges (times are shown to the second).
        """
        event: dict[str, Any] = {
            "log_format": AUDIT_FORMAT,
            "audit_text": "FTP upload of /d/f.bin by alice from 10.0.0.1:5: ok",
            "log_namespace": "cosgw.audit",
            "log_level": LogLevel.info,
            "audit": {},
        }
        for when in (
            1_700_000_000.0,
            1_700_000_000.4999996,
            1_700_000_000.9999996,
            1_700_000_001.0000004,
            1_700_000_001.5,
            1_700_003_600.25,
        ):
            event["log_time"] = when
            self.assertEqual(text_line(event), formatEventAsClassicLogText(event))

    def test_other_events_keep_twisteds_line(self) -> None:
        """Any other event (a system of its own, several lines) as before."""
        for event in (
            {"log_format": "a {x}", "x": 1, "log_level": LogLevel.warn},
            {"log_format": AUDIT_FORMAT, "audit_text": "x", "log_system": "s"},
            {"log_format": AUDIT_FORMAT, "audit_text": "multi\nline"},
        ):
            event["log_time"] = 1_700_000_000.0
            event.setdefault("log_namespace", "n")
            event.setdefault("log_level", LogLevel.info)
            self.assertEqual(text_line(event), formatEventAsClassicLogText(event))
