"""
Unit tests of the FTP control connection (L{cosgw.frontends.ftp.protocol},
L{cosgw.frontends.ftp.login_commands}): the command queue, login and the
defender, the login and idle timeouts, connection limits; driven through
the fakes of tests/ftp_unit.py (no socket, no thread, no sleep).  Data
connection set-up is in tests/test_ftp_ports.py, transfers in
tests/test_ftp_protocol_transfers.py; the end-to-end proof with real
clients in tests/test_ftp*.py and tests/test_policy.py.
"""

from __future__ import annotations

import socket

from twisted.internet import error
from twisted.internet.address import IPv4Address

from cosgw.audit import AUDIT_NAMESPACE, audit_fields
from cosgw.frontends.ftp.protocol import MAX_QUEUED_LINES
from tests.ftp_unit import (
    ALICE_PASSWORD,
    CLIENT_HOST,
    READER_PASSWORD,
    SERVER_HOST,
    FakeTCP,
    FTPGateway,
    GatewayTestCase,
    MiB,
)
from tests.logevents import LogEvents


class CommandQueueTests(GatewayTestCase):
    def test_pipelined_commands_answered_in_order(self) -> None:
        client = self.login()
        client.send("NOOP", "SYST", "PWD", "TYPE I", "MKD d", "CWD d", "PWD")
        self.assertEqual(
            client.replies(),
            [
                "200 NOOP ok",
                "215 UNIX Type: L8",
                '257 "/" is the current directory',
                "200 Type set to I",
                '257 "/d" created',
                "250 Directory changed to /d",
                '257 "/d" is the current directory',
            ],
        )

    def test_pipelined_before_login(self) -> None:
        client = self.gw.connect()
        client.send("USER alice", f"PASS {ALICE_PASSWORD}", "PWD")
        self.assertEqual(
            client.replies(),
            [
                "220 cosgw FTP gateway ready",
                "331 Password required",
                "230 Login successful",
                '257 "/" is the current directory',
            ],
        )

    def test_commands_during_a_transfer_wait_for_its_reply(self) -> None:
        client = self.login()
        data = self.start_stor(client, "f.bin")
        data.send(b"x" * 1000)
        client.send("PWD", "SYST")
        self.assertEqual(client.replies(), [])
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])
        self.assertEqual(
            self.finish_upload(client, data),
            [
                "226 Transfer complete",
                '257 "/" is the current directory',
                "215 UNIX Type: L8",
            ],
        )

    def test_stat_during_a_transfer_reports_it(self) -> None:
        client = self.login()
        data = self.start_stor(client, "f.bin")
        data.send(b"x" * 1234)
        lines = client.command("STAT")
        self.assertEqual(
            lines[:5],
            [
                "211-cosgw FTP gateway status:",
                f" Connected from {CLIENT_HOST}",
                " Logged in as alice",
                " TYPE: BINARY",
                " REST offset: 0",
            ],
        )
        self.assertRegex(
            lines[5], r"^ Transfer in progress: STOR f\.bin: 1234 bytes in \d+\.\ds$"
        )
        self.assertEqual(lines[6:], ["211 End of status"])
        self.assertEqual(self.finish_upload(client, data), ["226 Transfer complete"])

    def test_stat_times_the_transfer_on_the_reactor(self) -> None:
        client = self.login()
        data = self.start_stor(client, "f.bin")
        self.gw.advance(2.5)
        data.send(b"x" * 10)
        self.assertEqual(
            client.command("STAT")[5],
            " Transfer in progress: STOR f.bin: 10 bytes in 2.5s",
        )
        self.assertEqual(self.finish_upload(client, data), ["226 Transfer complete"])

    def test_queue_is_bounded_then_reading_stops(self) -> None:
        """
        At MAX_QUEUED_LINES queued lines the control connection stops
        reading: even a NOOP then waits (in the socket) until the transfer
        has replied and the queue has drained; nothing is lost.
        """
        client = self.login()
        data = self.start_stor(client, "f.bin")
        extra = 4
        client.send(*["PWD"] * (MAX_QUEUED_LINES + extra))
        self.assertEqual(client.transport.producerState, "paused")
        client.send("NOOP")
        self.assertEqual(client.replies(), [], "not read while the queue is full")
        self.assertEqual(
            self.finish_upload(client, data),
            ["226 Transfer complete"]
            + ['257 "/" is the current directory'] * (MAX_QUEUED_LINES + extra)
            + ["200 NOOP ok"],
        )
        self.assertEqual(client.transport.producerState, "producing")

    def test_telnet_interrupt_before_abor(self) -> None:
        """RFC 959 4.1.3: IAC IP IAC DM ABOR is an ABOR, answered at once."""
        client = self.login()
        data = self.start_stor(client, "f.bin")
        data.send(b"x" * 1000)
        client.send_raw(b"\xff\xf4\xff\xf2ABOR\r\n")
        self.assertEqual(
            client.replies(),
            ["426 Transfer aborted; nothing was stored", "226 ABOR successful"],
        )
        self.assertEqual(self.store.stored_keys(), [])

    def test_telnet_option_negotiation_is_dropped(self) -> None:
        client = self.login()
        client.send_raw(b"\xff\xfb\x01NO\xff\xfd\x03OP\r\n")
        self.assertEqual(client.replies(), ["200 NOOP ok"])

    def test_urgent_data_kept_inline(self) -> None:
        """
        The ABOR line's last byte often comes as TCP urgent data; the control
        socket is set to keep it in the stream (SO_OOBINLINE).
        """
        handle = socket.socket()
        self.addCleanup(handle.close)

        class SocketTCP(FakeTCP):
            def getHandle(self) -> socket.socket:
                return handle

        self.assertEqual(handle.getsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE), 0)
        peer = IPv4Address("TCP", CLIENT_HOST, 50001)
        protocol = self.gw.factory.buildProtocol(peer)
        protocol.makeConnection(
            SocketTCP(self.gw.clock, IPv4Address("TCP", SERVER_HOST, 21), peer)
        )
        self.assertEqual(handle.getsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE), 1)

    def test_long_line_gets_500_and_session_goes_on(self) -> None:
        client = self.login()
        client.send_raw(b"NOOP " + b"A" * 20000 + b"\r\n")
        self.assertEqual(client.replies(), ["500 Command line too long"])
        self.assertEqual(client.command("PWD"), ['257 "/" is the current directory'])

    def test_command_after_a_long_line_in_the_same_segment(self) -> None:
        """What follows an over-long line is answered at once, not when more
        bytes arrive (LineReceiver is still reading when it reports one)."""
        client = self.login()
        client.send_raw(b"NOOP " + b"A" * 20000 + b"\r\nPWD\r\nSYST\r\n")
        self.assertEqual(
            client.replies(),
            [
                "500 Command line too long",
                '257 "/" is the current directory',
                "215 UNIX Type: L8",
            ],
        )

    def test_two_long_lines_in_one_segment(self) -> None:
        client = self.login()
        long = b"NOOP " + b"A" * 20000 + b"\r\n"
        client.send_raw(long + long + b"PWD\r\n")
        self.assertEqual(
            client.replies(),
            [
                "500 Command line too long",
                "500 Command line too long",
                '257 "/" is the current directory',
            ],
        )

    def test_long_line_over_several_segments(self) -> None:
        client = self.login()
        for _ in range(3):
            client.send_raw(b"A" * 10000)
        client.send_raw(b"A\r\nPWD\r\n")
        self.assertEqual(
            client.replies(),
            ["500 Command line too long", '257 "/" is the current directory'],
        )

    def test_invalid_utf8_gets_501(self) -> None:
        client = self.login()
        client.send_raw(b"CWD \xc3\x28\r\nNOOP\r\n")
        self.assertEqual(
            client.replies(), ["501 Command is not valid UTF-8", "200 NOOP ok"]
        )

    def test_unknown_command_502(self) -> None:
        client = self.login()
        self.assertEqual(
            client.command("XYZZY foo"), ["502 Command 'XYZZY' not implemented"]
        )


class LoginTests(GatewayTestCase):
    def test_good_login_and_logout(self) -> None:
        client = self.gw.connect()
        self.assertEqual(client.replies(), ["220 cosgw FTP gateway ready"])
        self.assertEqual(client.command("USER alice"), ["331 Password required"])
        self.assertEqual(
            client.command(f"PASS {ALICE_PASSWORD}"), ["230 Login successful"]
        )
        self.assertEqual(self.gw.accounts.sessions.count("alice"), 1)
        self.assertEqual(client.command("QUIT"), ["221 Goodbye"])
        self.assertTrue(client.ended)
        self.assertEqual(self.gw.logouts, ["alice"])
        self.assertEqual(self.gw.accounts.sessions.count("alice"), 0)
        self.assertEqual(self.gw.factory.connections, 0)

    def test_commands_before_login_refused_with_530(self) -> None:
        client = self.gw.connect()
        client.replies()
        for command in ("LIST", "RETR f", "STOR f", "CWD /", "PASV", "EPSV", "SIZE f"):
            self.assertEqual(
                client.command(command), ["530 Please login with USER and PASS"]
            )
        self.assertEqual(client.command("PASS x"), ["503 Login with USER first"])
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])
        self.assertEqual(client.command("USER alice"), ["331 Password required"])
        self.assertEqual(client.command("LIST"), ["503 PASS required after USER"])
        self.assertEqual(self.gw.clock.ports, [], "no listener opened")
        self.assertEqual(sum(self.store.requests.values()), 0)

    def test_wrong_password_530_after_the_defender_delay(self) -> None:
        client = self.gw.connect()
        client.replies()
        delays = [1.0, 2.0, 4.0]
        for delay in delays:
            self.assertEqual(client.command("USER alice"), ["331 Password required"])
            self.assertEqual(client.command("PASS wrong"), [])
            self.gw.advance(delay - 0.01)
            self.assertEqual(client.replies(), [])
            self.gw.advance(0.01)
            self.assertEqual(client.replies(), ["530 Login incorrect"])
            self.assertEqual(
                client.command("PWD"), ["530 Please login with USER and PASS"]
            )
        client.login()
        self.assertEqual(self.gw.defender.banned(CLIENT_HOST), 0.0)

    def test_unknown_user_looks_like_a_wrong_password(self) -> None:
        client = self.gw.connect()
        client.replies()
        self.assertEqual(client.command("USER mallory"), ["331 Password required"])
        self.assertEqual(client.command("PASS x"), [])
        self.gw.advance(1.0)
        self.assertEqual(client.replies(), ["530 Login incorrect"])

    def test_defender_bans_the_address(self) -> None:
        self.gw = FTPGateway(login_max_failures=3, login_ban_time=60)
        client = self.gw.connect()
        client.replies()
        for delay in (1.0, 2.0, 4.0):
            client.send("USER alice", "PASS wrong")
            self.gw.advance(delay)
            self.assertEqual(
                client.replies(), ["331 Password required", "530 Login incorrect"]
            )
        # The third failure (sent at t=3) banned the address until t=63.
        self.assertEqual(self.gw.clock.seconds(), 7.0)
        client.send("USER alice", f"PASS {ALICE_PASSWORD}")
        self.assertEqual(
            client.replies(),
            [
                "331 Password required",
                "421 Too many failed logins from this address; try again in 56 seconds",
            ],
        )
        self.assertTrue(client.ended, "hung up after the 421")
        refused = self.gw.connect()
        self.assertEqual(
            refused.replies(),
            ["421 Too many failed logins from this address; try again in 56 seconds"],
        )
        self.assertTrue(refused.ended)
        self.gw.login(host="192.0.2.99")  # another address
        self.gw.advance(56)
        self.gw.login()
        self.assertEqual(self.gw.accounts.sessions.count("alice"), 2)
        self.assertEqual(self.gw.logouts, [], "the banned client had no session")

    def test_reader_cannot_upload(self) -> None:
        client = self.gw.login("reader", READER_PASSWORD)
        client.passive()
        lines = client.command("STOR f")
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], r"^550 /f: ")
        self.assertNothingLeft()


class TimeoutTests(GatewayTestCase):
    def test_login_deadline(self) -> None:
        client = self.gw.connect()
        client.replies()
        self.gw.advance(59.9)
        self.assertEqual(client.replies(), [])
        self.assertFalse(client.ended)
        self.gw.advance(0.1)
        self.assertEqual(
            client.replies(), ["421 Login timeout: closing the connection"]
        )
        self.assertTrue(client.ended)
        self.assertIsInstance(client.transport.reason.value, error.ConnectionDone)
        self.assertEqual(self.gw.factory.connections, 0)

    def test_idle_timeout_replaces_the_login_deadline(self) -> None:
        client = self.gw.connect()
        client.replies()
        self.gw.advance(30)
        client.login()
        self.gw.advance(599.5)
        self.assertFalse(client.ended, "the login deadline no longer applies")
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])
        self.gw.advance(599.5)
        self.assertEqual(client.replies(), [])
        self.gw.advance(0.5)
        self.assertEqual(client.replies(), ["421 Idle timeout: closing the connection"])
        self.assertTrue(client.ended)
        self.assertEqual(self.gw.logouts, ["alice"])

    def test_configured_timeouts(self) -> None:
        self.gw = FTPGateway(login_timeout=5, idle_timeout=7)
        client = self.gw.connect()
        self.gw.advance(5)
        self.assertEqual(
            client.replies(),
            [
                "220 cosgw FTP gateway ready",
                "421 Login timeout: closing the connection",
            ],
        )
        client = self.gw.login()
        self.gw.advance(6.9)
        self.assertFalse(client.ended)
        self.gw.advance(0.1)
        self.assertEqual(client.replies(), ["421 Idle timeout: closing the connection"])
        self.assertTrue(client.ended)

    def test_no_idle_timeout_during_a_transfer(self) -> None:
        """A long upload keeps the session; the idle clock restarts after."""
        client = self.login()
        data = self.start_stor(client, "f.bin")
        for _ in range(10):
            self.gw.advance(100)  # under the data connection's stall limit
            data.send(b"x" * 100)
        self.assertFalse(client.ended)
        self.assertEqual(self.finish_upload(client, data), ["226 Transfer complete"])
        self.gw.advance(599)
        self.assertFalse(client.ended)
        self.gw.advance(1)
        self.assertEqual(client.replies(), ["421 Idle timeout: closing the connection"])


class ConnectionLimitTests(GatewayTestCase):
    def test_full_server_says_421(self) -> None:
        self.gw = FTPGateway(max_connections=1)
        first = self.gw.connect()
        second = self.gw.connect(port=50002)
        (line,) = second.replies()
        self.assertTrue(line.startswith("421 "), line)
        self.assertTrue(second.ended)
        first.command("QUIT")
        third = self.gw.connect(port=50003)
        self.assertEqual(third.replies(), ["220 cosgw FTP gateway ready"])


class AuditTests(GatewayTestCase):
    """
    The connection's audit session (L{cosgw.frontends.ftp.audited}): its
    events carry the replies the client got, it ends with why, and a kick
    ends it with 421 and nothing after.
    """

    def setUp(self) -> None:
        super().setUp()
        self.log = LogEvents(self, AUDIT_NAMESPACE)

    def events(self) -> list[tuple[str, str, str]]:
        """(event, status, reason or error) of every audit event so far."""
        found = [dict(audit_fields(e) or {}) for e in self.log.events]
        return [
            (e["event"], e["status"], e.get("reason") or e.get("error", ""))
            for e in found
        ]

    def test_statuses_are_the_replies(self) -> None:
        client = self.gw.connect()
        self.assertEqual(self.events(), [("session-open", "220", "")])
        self.assertEqual(len(self.gw.factory.sessions.sessions), 1)
        client.replies()
        client.login()
        client.command("MKD d")
        client.command("DELE missing")
        client.command("QUIT")
        self.assertEqual(
            self.events(),
            [
                ("session-open", "220", ""),
                ("login", "230", ""),
                ("mkdir", "257", ""),
                ("delete", "550", "/missing: no such file or directory"),
                ("session-close", "221", "client quit"),
            ],
        )
        self.assertEqual(self.gw.factory.sessions.sessions, {})

    def test_timeouts_and_a_lost_connection_say_why(self) -> None:
        self.gw.connect()
        self.gw.advance(60)
        self.gw.login().transport.peer_close()
        self.gw.login().transport.peer_reset()
        closes = [e for e in self.events() if e[0] == "session-close"]
        self.assertEqual(
            closes,
            [
                ("session-close", "421", "login timeout (60 s)"),
                ("session-close", "230", "connection closed by the client"),
                ("session-close", "230", "connection lost"),
            ],
        )

    def test_kick_during_an_upload(self) -> None:
        """
        421 with the reason, then the close; the upload is aborted (nothing
        stored, nothing kept for a resume) and no 426 follows the 421.
        """
        client = self.login()
        data = self.start_stor(client, "f.bin")
        data.send(b"x" * (2 * MiB))
        self.gw.pump()
        [session] = self.gw.factory.sessions.sessions.values()
        session.kick("maintenance")
        self.gw.pump()
        self.assertEqual(client.replies(), ["421 maintenance"])
        self.assertTrue(client.ended)
        self.assertTrue(data.ended)
        self.assertNotIn("f.bin", self.store.stored_keys())
        self.assertNothingLeft()
        self.assertEqual(
            [e[:2] for e in self.events()][-2:],
            [("abort", "421"), ("session-close", "421")],
        )
        self.assertEqual(self.events()[-1][2], "kicked: maintenance")
