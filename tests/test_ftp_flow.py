"""
Unit tests of the FTP control connection's flow control and deadlines
(L{cosgw.frontends.ftp.protocol}): replies a client does not read stop the
commands and the reading, STAT <dir> streams page by page as the client
reads, the login deadline runs from the connection, what follows AUTH TLS
in clear is dropped, and names holding control characters stay one line
in every listing.  Driven through the fakes of tests/ftp_unit.py (no
socket, no thread, no sleep); the same with real sockets and clients is in
tests/test_ftp_abuse.py.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import error
from twisted.logger import globalLogPublisher

from cosgw.frontends.ftp.protocol import (
    MAX_LINE_LENGTH,
    MAX_UNREAD_INPUT,
    MAX_UNSENT_REPLIES,
)
from tests.ftp_unit import (
    ALICE_PASSWORD,
    ControlClient,
    FakeTCP,
    FTPGateway,
    GatewayTestCase,
)

#: A key another COS client wrote: CR, LF and NUL in one name.
EVIL = "evil\r\n226 Transfer complete\r\nx\x00y"
#: How the gateway shows it.
SHOWN = "evil??226 Transfer complete??x?y"


def help_reply_size(gw: FTPGateway) -> int:
    """The bytes of one reply to HELP."""
    client = gw.connect(port=50999)
    client.replies()
    return len("\r\n".join(client.command("HELP")).encode()) + 2


class ReplyBackpressureTests(GatewayTestCase):
    def flood(self, client: ControlClient, lines: int, per_segment: int = 100) -> None:
        """The client sends C{lines} HELPs in segments, reading nothing."""
        for _ in range(lines // per_segment):
            client.transport.receive(b"HELP\r\n" * per_segment)
            self.gw.pump()

    def test_help_flood_without_reading_is_held_before_login(self) -> None:
        """
        An unauthenticated client sending HELP without reading: once the
        unsent replies pass the limit, no command runs and nothing is read;
        what the gateway holds for it stays bounded, and another client is
        served meanwhile.  Reading resumes as the client reads.
        """
        reply = help_reply_size(self.gw)
        client = self.gw.connect(send_buffer=MAX_UNSENT_REPLIES)
        protocol = client.protocol
        self.flood(client, 3000)
        self.assertTrue(protocol.replies_full)
        self.assertFalse(protocol.reading)
        self.assertEqual(client.transport.producerState, "paused")
        unsent = len(client.transport.value())
        self.assertLessEqual(unsent, MAX_UNSENT_REPLIES + reply)
        self.assertLessEqual(len(protocol.unread), MAX_UNREAD_INPUT)
        self.assertLessEqual(unsent // reply, MAX_UNSENT_REPLIES // reply + 1)

        other = self.gw.connect(port=50002)
        self.assertEqual(
            other.command("NOOP"), ["220 cosgw FTP gateway ready", "200 NOOP ok"]
        )
        self.assertEqual(len(client.transport.value()), unsent, "nothing more ran")

        # The client reads: the rest is answered, never more than the
        # limit (and a reply) unread at a time.
        helps = 0
        for _ in range(200):
            data = client.transport.read()
            self.gw.pump()
            if not data:
                break
            self.assertLessEqual(len(data), MAX_UNSENT_REPLIES + reply)
            helps += data.count(b"214 Help OK\r\n")
        self.assertEqual(helps, 3000)
        self.assertTrue(protocol.reading)
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])

    def test_feat_flood_after_login_held_too(self) -> None:
        client = self.gw.connect(send_buffer=MAX_UNSENT_REPLIES)
        client.replies()
        client.login()
        for _ in range(50):
            client.transport.receive(b"FEAT\r\n" * 100)
        self.gw.pump()
        self.assertTrue(client.protocol.replies_full)
        self.assertLessEqual(len(client.transport.value()), MAX_UNSENT_REPLIES + 1024)

    def test_input_buffer_bounded_while_a_command_runs(self) -> None:
        """
        Lines sent while a command waits (a login being checked) stay in
        a bounded buffer: past it the connection is not read.
        """
        self.gw = FTPGateway(login_failure_delay=5.0)
        client = self.gw.connect()
        client.replies()
        client.send("USER alice", "PASS wrong", "NOOP")
        client.send("USER alice", "PASS wrong")  # the first failure is delayed
        for _ in range(20):
            client.transport.receive(b"NOOP\r\n" * 2000)
        self.gw.pump()
        self.assertLessEqual(len(client.protocol.unread), MAX_UNREAD_INPUT + 12000)
        self.assertFalse(client.protocol.reading)
        self.gw.advance(5.0)
        self.assertEqual(
            client.replies()[:3],
            ["331 Password required", "530 Login incorrect", "200 NOOP ok"],
        )

    def test_stat_listing_streams_page_by_page(self) -> None:
        """
        STAT <dir> over the control connection: the next page of the
        listing is fetched only once the client has read enough of the
        last; the client gets every entry and one 213 end.
        """
        names = [f"f{i:05d}" for i in range(2500)]
        for name in names:
            self.store.put(name, b"x")
        client = self.gw.connect(send_buffer=MAX_UNSENT_REPLIES)
        client.replies()
        client.login()
        client.replies()
        self.store.reset_requests()
        client.send("STAT /")
        # The first page, and the LIST of the directory's markers of times.
        self.assertEqual(self.store.requests["list"], 2, "one page until read")
        self.assertTrue(client.protocol.replies_full)
        first = client.transport.value()
        self.assertLessEqual(len(first), MAX_UNSENT_REPLIES + 1000 * 100)
        received = b""
        for _ in range(50):
            data = client.transport.read()
            self.gw.pump()
            if not data:
                break
            received += data
        lines = received.decode().split("\r\n")[:-1]
        self.assertEqual(lines[0], "213-Status of /:")
        self.assertEqual(lines[-1], "213 End of status")
        self.assertEqual([line.split()[-1] for line in lines[1:-1]], names)
        self.assertEqual(self.store.requests["list"], 4)

    def test_client_gone_during_stat_ends_it(self) -> None:
        for i in range(2500):
            self.store.put(f"f{i:05d}", b"x")
        client = self.gw.connect(send_buffer=MAX_UNSENT_REPLIES)
        client.replies()
        client.login()
        client.send("STAT /")
        self.store.reset_requests()
        client.transport.peer_reset()
        self.gw.pump()
        self.assertTrue(client.ended)
        self.assertEqual(self.store.requests["list"], 0, "no page after the loss")
        self.assertEqual(self.gw.factory.connections, 0)


class LoginDeadlineTests(GatewayTestCase):
    def test_noops_do_not_extend_it(self) -> None:
        client = self.gw.connect()
        client.replies()
        for _ in range(5):
            self.gw.advance(11)
            self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])
        self.gw.advance(4.9)
        self.assertFalse(client.ended)
        self.gw.advance(0.1)
        self.assertEqual(
            client.replies(), ["421 Login timeout: closing the connection"]
        )
        self.assertTrue(client.ended)
        self.assertEqual(self.gw.factory.connections, 0)

    def test_failed_logins_do_not_extend_it(self) -> None:
        self.gw = FTPGateway(login_failure_delay=0.0, login_timeout=10)
        client = self.gw.connect()
        client.replies()
        for _ in range(9):
            self.assertEqual(
                client.command("USER alice") + client.command("PASS wrong"),
                ["331 Password required", "530 Login incorrect"],
            )
            self.gw.advance(1)
        self.gw.advance(1)
        self.assertEqual(
            client.replies(), ["421 Login timeout: closing the connection"]
        )
        self.assertTrue(client.ended)

    def test_a_login_in_flight_at_the_deadline_is_not_let_in(self) -> None:
        self.gw = FTPGateway(login_failure_delay=0.0, login_timeout=10)
        client = self.gw.connect()
        client.replies()
        client.send("USER alice")
        self.gw.advance(10)
        client.send(f"PASS {ALICE_PASSWORD}")
        self.assertEqual(
            client.replies(),
            ["331 Password required", "421 Login timeout: closing the connection"],
        )
        self.assertTrue(client.ended)
        self.assertEqual(self.gw.accounts.sessions.count("alice"), 0)

    def test_rein_starts_a_new_deadline(self) -> None:
        client = self.login()
        self.gw.advance(500)
        self.assertEqual(client.command("REIN"), ["220 Ready for a new user"])
        self.gw.advance(59.9)
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])
        self.gw.advance(0.1)
        self.assertEqual(
            client.replies(), ["421 Login timeout: closing the connection"]
        )
        self.assertTrue(client.ended)

    def test_a_new_user_starts_a_new_deadline(self) -> None:
        client = self.login()
        self.gw.advance(300)
        self.assertEqual(client.command("USER reader"), ["331 Password required"])
        self.gw.advance(60)
        self.assertEqual(
            client.replies(), ["421 Login timeout: closing the connection"]
        )
        self.assertTrue(client.ended)


class LingeringTCP(FakeTCP):
    """
    A FakeTCP whose clean close waits, as TCP's does, until the peer has
    read what was written; an abort does not wait.
    """

    def loseConnection(self) -> None:
        if not self.value():
            super().loseConnection()
        self.disconnecting = True

    def read(self) -> bytes:
        data = super().read()
        if self.disconnecting and not self.ended:
            super().loseConnection()
        return data


class ClosingTests(GatewayTestCase):
    def test_a_client_not_reading_its_421_is_cut_off(self) -> None:
        client = self.gw.connect(
            send_buffer=MAX_UNSENT_REPLIES, transport_class=LingeringTCP
        )
        for _ in range(30):
            client.transport.receive(b"HELP\r\n" * 100)
        self.gw.pump()
        self.assertTrue(client.protocol.replies_full)
        self.gw.advance(60)
        self.assertTrue(client.protocol.session.over)
        self.assertTrue(
            client.transport.value().endswith(
                b"421 Login timeout: closing the connection\r\n"
            )
        )
        self.gw.advance(client.protocol.close_timeout - 0.1)
        self.assertFalse(client.ended, "the 421 may still be read")
        self.gw.advance(0.1)
        self.assertTrue(client.ended)
        self.assertIsInstance(client.transport.reason.value, error.ConnectionAborted)
        self.assertEqual(self.gw.factory.connections, 0)

    def test_quit_closes_once_the_client_has_read(self) -> None:
        client = self.gw.connect(transport_class=LingeringTCP)
        client.send("QUIT")
        self.assertFalse(client.ended)
        self.assertEqual(
            client.replies(), ["220 cosgw FTP gateway ready", "221 Goodbye"]
        )
        self.gw.pump()
        self.assertTrue(client.ended)
        self.assertIsInstance(client.transport.reason.value, error.ConnectionDone)
        self.assertIsNone(client.protocol._cut_off, "no abort left pending")


class StartTLSTCP(FakeTCP):
    """A FakeTCP that records startTLS and stays clear (no handshake)."""

    started: list[Any]

    def startTLS(self, options: Any) -> None:
        self.started = [options]


class StartTLSInjectionTests(GatewayTestCase):
    def test_commands_in_clear_after_auth_are_dropped(self) -> None:
        """
        AUTH TLS with USER and PASS behind it in the same segment: the
        234, then TLS; the pipelined USER and PASS are not run, and
        a warning says how many bytes were dropped.
        """
        self.gw.factory.tls = type("TLS", (), {"options": object()})()
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        client = self.gw.connect(transport_class=StartTLSTCP)
        client.replies()
        tail = f"USER alice\r\nPASS {ALICE_PASSWORD}\r\n"
        client.send_raw(b"AUTH TLS\r\n" + tail.encode())
        self.assertEqual(client.replies(), ["234 AUTH TLS successful"])
        self.assertEqual(client.transport.started, [self.gw.factory.tls.options])
        self.assertEqual(client.command("PWD"), ["530 Please login with USER and PASS"])
        self.assertEqual(self.gw.accounts.sessions.count("alice"), 0)
        (warning,) = [e for e in logged if "AUTH TLS" in e.get("log_format", "")]
        self.assertEqual(warning["bytes"], len(tail))

    def test_queued_commands_after_auth_are_dropped(self) -> None:
        """AUTH queued behind a transfer: the lines queued after it too."""
        self.gw.factory.tls = type("TLS", (), {"options": object()})()
        client = self.gw.connect(transport_class=StartTLSTCP)
        client.replies()
        client.login()
        data = self.start_stor(client, "f.bin")
        client.send("AUTH TLS", "DELE f.bin")
        self.assertEqual(
            self.finish_upload(client, data),
            ["226 Transfer complete", "234 AUTH TLS successful"],
        )
        self.assertEqual(self.store.stored_keys(), ["f.bin"])


class LongLineTests(GatewayTestCase):
    def test_line_at_the_limit_runs(self) -> None:
        client = self.login()
        line = "NOOP " + "A" * (MAX_LINE_LENGTH - 5)
        self.assertEqual(client.command(line), ["200 NOOP ok"])
        self.assertEqual(client.command(line + "A"), ["500 Command line too long"])

    def test_long_line_while_a_command_runs_keeps_the_order(self) -> None:
        self.gw = FTPGateway(login_failure_delay=1.0)
        client = self.gw.connect()
        client.replies()
        client.send_raw(
            b"USER alice\r\nPASS wrong\r\nNOOP " + b"A" * 20000 + b"\r\nSYST\r\n"
        )
        self.gw.advance(1.0)
        self.assertEqual(
            client.replies(),
            [
                "331 Password required",
                "530 Login incorrect",
                "500 Command line too long",
                "530 Please login with USER and PASS",
            ],
        )


class ControlCharacterNameTests(GatewayTestCase):
    """
    A key written by another COS client with CR, LF or NUL in its name is
    shown with '?' for each: one entry is one line in every listing, and
    no line of it can pass for a reply.
    """

    def setUp(self) -> None:
        super().setUp()
        self.store.put(EVIL, b"bad")
        self.store.put("plain.txt", b"ok")

    def listing(self, command: str) -> tuple[list[str], list[str]]:
        """(control replies, data lines) of a listing command."""
        client = self.login()
        data = client.passive()
        self.assertTrue(data.connect())
        client.send(command)
        body = data.read_all().decode()
        self.gw.pump()
        return client.replies(), body.split("\r\n")[:-1]

    def test_nlst(self) -> None:
        replies, lines = self.listing("NLST")
        self.assertEqual(lines, [SHOWN, "plain.txt"])
        self.assertEqual(replies[-1], "226 Directory send OK (2 entries)")

    def test_list(self) -> None:
        _, lines = self.listing("LIST")
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].endswith(" " + SHOWN), lines[0])

    def test_mlsd(self) -> None:
        _, lines = self.listing("MLSD")
        self.assertEqual(len(lines), 2)
        self.assertRegex(lines[0], r"^type=file;size=3;.* " + re.escape(SHOWN) + "$")

    def test_stat(self) -> None:
        client = self.login()
        lines = client.command("STAT /")
        self.assertEqual(len(lines), 4, lines)
        self.assertEqual(lines[0], "213-Status of /:")
        self.assertTrue(lines[1].endswith(" " + SHOWN), lines[1])
        self.assertEqual(lines[3], "213 End of status")
        self.assertFalse([line for line in lines[1:-1] if line[:1].isdigit()])

    def test_replies_echoing_a_client_path(self) -> None:
        """A path with a bare LF inside a line: refused, on one line."""
        client = self.login()
        client.send_raw(b"MKD a\nb\r\nNOOP\r\n")
        lines = client.replies()
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[0], r"^553 a\?b: ")
        self.assertEqual(lines[1], "200 NOOP ok")

    def test_log_lines_escape_client_text(self) -> None:
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        client = self.gw.connect()
        client.replies()
        client.send_raw(b"CLNT evil\n2024 forged line\r\n")
        self.assertEqual(client.replies(), ["200 Noted"])
        (event,) = [e for e in logged if e.get("log_format", "").startswith("client")]
        self.assertEqual(event["name"], "evil\\n2024 forged line")
