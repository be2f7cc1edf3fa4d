"""
A program that embeds the gateway (makeService, then stopService) gets the
same drain as twistd: an FTP upload in progress finishes and is stored, an
idle session gets 421, a new connection is refused with the reason, and
only then do the listeners close and the Deferred of stopService fire.
"""

from __future__ import annotations

import ftplib
import io
import os
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from cosgw.config import ALL_PERMISSIONS, UserConfig
from tests.harness import PASSWORD, in_thread, start_gateway
from tests.test_ftp import connect

KiB = 1024


class EmbeddedDrainTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_stop_service_drains(self) -> Any:
        alice = UserConfig(
            name="alice",
            password=PASSWORD,
            password_is_hashed=False,
            storage="store",
            home="",
            permissions=ALL_PERMISSIONS,
            upload_rate=256 * KiB,
        )
        gw = yield start_gateway(
            self, "local", users={"alice": alice}, drain_timeout=30
        )
        content = os.urandom(512 * KiB)
        idle = yield in_thread(connect, gw)
        uploading = yield in_thread(connect, gw)
        stored = in_thread(
            uploading.storbinary, "STOR embedded.bin", io.BytesIO(content)
        )
        while not any(t.bytes for t in gw.service.sessions.transfers()):
            yield _later(0.02)

        stopped = gw.service.stopService()
        self.assertNoResult(stopped)
        told = yield in_thread(_reply, idle)
        self.assertEqual(told, "421 Shutting down")
        refused = yield in_thread(_refusal, gw)
        self.assertEqual(refused, "421 Shutting down")
        self.assertNoResult(stopped)
        self.assertEqual((yield stored), "226 Transfer complete")
        yield stopped
        self.assertEqual(gw.inspector.read("embedded.bin"), content)
        self.assertEqual(gw.service.drain.phase.value, "done")
        self.assertIsNone(gw.service.ftp.listeners[0].port)


def _later(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def _reply(ftp: ftplib.FTP) -> str:
    try:
        return ftp.getresp()
    except ftplib.error_temp as e:
        return str(e)


def _refusal(gw: Any) -> str:
    try:
        ftplib.FTP().connect(gw.host, gw.port, timeout=20)
    except ftplib.error_temp as e:
        return str(e)
    return "welcome"
