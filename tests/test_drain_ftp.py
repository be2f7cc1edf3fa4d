"""
The FTP frontend's side of the drain (L{cosgw.frontends.ftp.audited}), on a
memory reactor and store: idle sessions get C{421} at once, a transfer
finishes with its 226 and then the 421 and nothing else runs, the drain's
interruption keeps an upload for a resume, and a new connection is refused
with the reason without opening a session.
"""

from __future__ import annotations

import os

from cosgw.audit import audit_fields
from cosgw.lifecycle.drain import REASON
from tests.ftp_unit import GatewayTestCase, KiB, MiB
from tests.logevents import LogEvents

AUDIT_NAMESPACE = "cosgw.audit"


class FTPDrainTests(GatewayTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.log = LogEvents(self, AUDIT_NAMESPACE)

    def drain(self, now: bool = False) -> None:
        """The gateway's drain tells every session (as L{Drain} does)."""
        for session in list(self.gw.factory.sessions.sessions.values()):
            session.drain(REASON, now)
        self.gw.pump()

    def closes(self) -> list[tuple[str, str]]:
        """(status, reason) of every session-close event so far."""
        found = [audit_fields(e) or {} for e in self.log.events]
        return [
            (e["status"], e["reason"]) for e in found if e["event"] == "session-close"
        ]

    def test_idle_sessions_get_421_at_once(self) -> None:
        anonymous = self.gw.connect()
        self.assertEqual(anonymous.replies(), ["220 cosgw FTP gateway ready"])
        logged_in = self.login()
        self.drain()
        for client in (anonymous, logged_in):
            self.assertEqual(client.replies(), ["421 Shutting down"])
            self.assertTrue(client.ended)
        self.assertEqual(self.closes(), [("421", REASON)] * 2)
        self.assertEqual(self.gw.factory.sessions.sessions, {})

    def test_a_transfer_finishes_then_421_and_nothing_else_runs(self) -> None:
        content = os.urandom(300 * KiB)
        client = self.login()
        data = self.start_stor(client, "f.bin")
        data.send(content[: 100 * KiB])
        self.drain()
        self.assertEqual(client.replies(), [])
        client.send("MKD later")  # queued behind the transfer: never runs
        data.send(content[100 * KiB :])
        self.assertEqual(
            self.finish_upload(client, data),
            ["226 Transfer complete", "421 Shutting down"],
        )
        self.assertTrue(client.ended)
        self.assertSameBytes(self.store.stored_bytes("f.bin"), content)
        self.assertEqual(self.store.stored_keys(), ["f.bin"])  # no "later/"
        self.assertEqual(self.closes(), [("421", REASON)])
        self.assertNothingLeft()

    def test_interrupted_upload_is_kept_for_a_resume(self) -> None:
        client = self.login()
        data = self.start_stor(client, "big.bin")
        data.send(os.urandom(MiB + 300 * KiB))
        self.drain()
        self.drain(now=True)  # the drain's timeout
        self.assertEqual(
            client.replies(),
            [
                f"426 Connection closed; transfer aborted; {MiB} bytes kept:"
                f" resume with REST {MiB}",
                "421 Shutting down",
            ],
        )
        self.assertTrue(client.ended and data.ended)
        self.assertEqual(self.store.stored_keys(), [])  # nothing visible
        self.assertEqual(len(self.store.stored_uploads()), 1)  # kept
        aborts = [
            f
            for f in (audit_fields(e) or {} for e in self.log.events)
            if f["event"] == "abort"
        ]
        self.assertEqual(
            [(a["kept"], a["bytes"], a["error"]) for a in aborts],
            [(True, MiB + 300 * KiB, f"interrupted: {REASON}")],
        )

    def test_a_command_running_is_answered_first(self) -> None:
        client = self.login()
        protocol = client.protocol
        protocol.busy = True  # as while a command waits for the store
        self.drain()
        self.assertEqual(client.replies(), [])
        protocol._command_done()
        self.assertEqual(client.replies(), ["421 Shutting down"])

    def test_new_connections_are_refused_with_the_reason(self) -> None:
        self.gw.factory.refusing = REASON
        client = self.gw.connect()
        self.assertEqual(client.replies(), ["421 Shutting down"])
        self.assertTrue(client.ended)
        self.assertEqual(self.gw.factory.refused, 1)
        self.assertEqual(self.log.events, [])  # no session, no event
        self.assertEqual(self.gw.factory.connections, 0)
