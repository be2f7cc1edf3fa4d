"""
Unit tests of the FTP session's state table (L{cosgw.frontends.ftp.session})
and of the dispatch table (L{cosgw.frontends.ftp.commands}): the tables on
their own, then what a client sees of them through the fakes of
tests/ftp_unit.py.
"""

from __future__ import annotations

from twisted.trial import unittest

from cosgw.frontends.ftp.commands import COMMANDS
from cosgw.frontends.ftp.context import Arg
from cosgw.frontends.ftp.facts import DEFAULT_FACTS
from cosgw.frontends.ftp.protocol import GatewayFTP
from cosgw.frontends.ftp.session import (
    ADMISSION,
    TRANSITIONS,
    Access,
    Event,
    InvalidTransition,
    Session,
    State,
)
from tests.ftp_unit import ALICE_PASSWORD, READER_PASSWORD, GatewayTestCase


class _FileSystem:
    """All a session reads of a file system: its user."""

    def __init__(self, user: str) -> None:
        self.user = user


LIVE = (State.CONNECTED, State.USER_GIVEN, State.LOGGED_IN, State.RENAMING)


class StateTableTests(unittest.SynchronousTestCase):
    def test_every_live_state_admits_or_refuses_every_access(self) -> None:
        for state in LIVE:
            self.assertEqual(set(ADMISSION[state]), set(Access), state)
        self.assertNotIn(State.QUITTING, ADMISSION)
        self.assertNotIn(State.CLOSED, ADMISSION)

    def test_anyone_commands_run_in_every_live_state(self) -> None:
        for state in LIVE:
            self.assertIsNone(ADMISSION[state][Access.ANYONE], state)

    def test_every_state_can_be_lost(self) -> None:
        for state in State:
            self.assertIs(TRANSITIONS[(state, Event.LOST)], State.CLOSED)

    def test_login_sequence(self) -> None:
        session = Session()
        self.assertIs(session.state, State.CONNECTED)
        session.name_user("alice")
        self.assertIs(session.state, State.USER_GIVEN)
        self.assertEqual(session.take_pending_user(), "alice")
        session.advance(Event.LOGIN_REFUSED)
        self.assertIs(session.state, State.CONNECTED)
        self.assertFalse(session.logged_in)

    def test_no_transition_is_a_bug(self) -> None:
        session = Session()
        self.assertRaises(InvalidTransition, session.advance, Event.RENAME_STARTED)
        self.assertIs(session.state, State.CONNECTED)

    def test_once_over_only_the_loss_moves_the_state(self) -> None:
        session = Session()
        session.advance(Event.QUIT)
        self.assertTrue(session.over)
        session.advance(Event.LOGIN_REFUSED)  # a login ending after QUIT
        self.assertIs(session.state, State.QUITTING)
        session.advance(Event.LOST)
        self.assertIs(session.state, State.CLOSED)

    def test_a_command_other_than_rnto_ends_a_rename(self) -> None:
        session = Session(state=State.LOGGED_IN)
        session.start_rename(["a"])
        self.assertIs(session.state, State.RENAMING)
        self.assertIsNone(session.admit(Access.ANYONE))
        self.assertEqual(session.rename_from, ["a"], "NOOP keeps the rename")
        self.assertIsNone(session.admit(Access.LOGGED_IN))
        self.assertIs(session.state, State.LOGGED_IN)
        self.assertIsNone(session.rename_from)

    def test_login_and_reinitialize(self) -> None:
        logouts: list[str] = []
        session = Session(state=State.USER_GIVEN)
        session.log_in(_FileSystem("alice"), lambda: logouts.append("alice"))
        session.working_directory = ["d"]
        session.restart, session.allocated = 5, 10
        session.hash_algorithm, session.hash_range = "MD5", (0, 1)
        session.facts = {"type"}
        session.secure, session.pbsz, session.prot = True, True, "P"
        session.binary = False
        session.reinitialize(implicit_tls=False)
        self.assertEqual(logouts, ["alice"])
        self.assertEqual(
            (session.state, session.user, session.fs, session.working_directory),
            (State.CONNECTED, None, None, []),
        )
        self.assertEqual((session.restart, session.allocated), (0, None))
        self.assertEqual(
            (session.hash_algorithm, session.hash_range), ("SHA-256", None)
        )
        self.assertEqual(session.facts, set(DEFAULT_FACTS))
        self.assertEqual(
            (session.secure, session.pbsz, session.prot), (True, False, "C")
        )
        self.assertFalse(session.binary, "TYPE survives REIN")


class DispatchTableTests(unittest.SynchronousTestCase):
    def test_every_handler_is_the_protocols(self) -> None:
        for name, command in COMMANDS.items():
            self.assertIs(getattr(GatewayFTP, f"ftp_{name}"), command.handler, name)

    def test_every_protocol_handler_is_in_the_table(self) -> None:
        handlers = {n[4:] for n in dir(GatewayFTP) if n.startswith("ftp_")}
        self.assertEqual(handlers, set(COMMANDS))

    def test_syntax_names_the_command(self) -> None:
        for name, command in COMMANDS.items():
            self.assertEqual(command.syntax.split()[0], name)

    def test_only_optional_commands_have_defaults(self) -> None:
        for name, command in COMMANDS.items():
            if command.argument is not Arg.OPTIONAL:
                self.assertEqual(command.default, "", name)


class AdmissionTests(GatewayTestCase):
    def test_arguments(self) -> None:
        client = self.login()
        self.assertEqual(client.command("PWD x"), ["501 PWD takes no argument"])
        self.assertEqual(client.command("QUIT now"), ["501 QUIT takes no argument"])
        self.assertEqual(client.command("MKD"), ["501 MKD requires an argument"])
        self.assertEqual(client.command("NOOP anything"), ["200 NOOP ok"])
        self.assertEqual(client.command("MKD d"), ['257 "/d" created'])
        self.assertEqual(client.command("CWD d"), ["250 Directory changed to /d"])
        self.assertEqual(client.command("CWD"), ["250 Directory changed to /"])

    def test_stru_and_mode(self) -> None:
        client = self.login()
        self.assertEqual(client.command("STRU F"), ["200 Command OK"])
        self.assertEqual(client.command("MODE s"), ["200 Command OK"])
        self.assertEqual(
            client.command("STRU R"), ["504 Not implemented for parameter 'R'."]
        )
        self.assertEqual(
            client.command("MODE B"), ["504 Not implemented for parameter 'B'."]
        )
        self.assertEqual(client.command("MODE"), ["501 MODE requires an argument"])

    def test_help_lists_the_table(self) -> None:
        client = self.login()
        lines = client.command("HELP")
        self.assertEqual(lines[0], "214-The following commands are recognized:")
        self.assertEqual(lines[-1], "214 Help OK")
        self.assertEqual(
            sorted(word for line in lines[1:-1] for word in line.split()),
            sorted(COMMANDS),
        )
        self.assertEqual(
            client.command("HELP mfmt"), [f"214 Syntax: {COMMANDS['MFMT'].syntax}"]
        )

    def test_rnto_must_follow_rnfr(self) -> None:
        self.store.put("a", b"1")
        client = self.login()
        self.assertEqual(client.command("RNFR a"), ["350 Ready for RNTO"])
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])
        self.assertEqual(client.command("RNTO b"), ["250 Rename successful"])
        self.assertEqual(client.command("RNFR b"), ["350 Ready for RNTO"])
        client.command("PWD")
        self.assertEqual(client.command("RNTO c"), ["503 RNFR required first"])
        self.assertEqual(self.store.stored_keys(), ["b"])

    def test_transfer_right_after_rnfr(self) -> None:
        """A transfer command ends a rename and runs as a transfer."""
        self.store.put("a", b"data")
        client = self.login()
        data = client.passive()
        data.connect()
        self.assertEqual(client.command("RNFR a"), ["350 Ready for RNTO"])
        self.assertEqual(
            client.command("RETR a"),
            [
                "150 Opening BINARY mode data connection for a (4 bytes)",
                "226 Transfer complete",
            ],
        )
        self.assertEqual(data.read_all(), b"data")
        self.assertEqual(client.command("RNTO b"), ["503 RNFR required first"])

    def test_idle_in_a_rename_is_an_idle_timeout(self) -> None:
        self.store.put("a", b"1")
        client = self.login()
        client.command("RNFR a")
        self.gw.advance(600)
        self.assertEqual(client.replies(), ["421 Idle timeout: closing the connection"])

    def test_pass_when_logged_in(self) -> None:
        client = self.login()
        self.assertEqual(client.command("PASS x"), ["503 Already logged in"])
        self.assertEqual(client.command("PWD"), ['257 "/" is the current directory'])

    def test_logging_in_again_ends_the_first_session(self) -> None:
        client = self.login()
        self.assertEqual(client.command("USER reader"), ["331 Password required"])
        self.assertEqual(client.command("PWD"), ["503 PASS required after USER"])
        self.assertEqual(
            client.command(f"PASS {READER_PASSWORD}"), ["230 Login successful"]
        )
        self.assertEqual(self.gw.logouts, ["alice"])
        self.assertEqual(self.gw.accounts.sessions.count("alice"), 0)
        self.assertEqual(self.gw.accounts.sessions.count("reader"), 1)
        lines = client.command("STAT")
        self.assertEqual(lines[2], " Logged in as reader")
        client.command("QUIT")
        self.assertEqual(self.gw.logouts, ["alice", "reader"])

    def test_rein(self) -> None:
        client = self.login()
        client.command("MKD d")
        client.command("CWD d")
        client.command("REST 5")
        self.assertEqual(client.command("REIN"), ["220 Ready for a new user"])
        self.assertEqual(self.gw.logouts, ["alice"])
        self.assertEqual(client.command("PWD"), ["530 Please login with USER and PASS"])
        client.login()
        self.assertEqual(client.command("PWD"), ['257 "/" is the current directory'])
        self.assertEqual(client.command("STAT")[4], " REST offset: 0")

    def test_lines_after_quit_are_ignored(self) -> None:
        client = self.gw.connect()
        client.replies()
        client.send("QUIT", "USER alice", f"PASS {ALICE_PASSWORD}")
        self.assertEqual(client.replies(), ["221 Goodbye"])
        self.assertTrue(client.ended)
        self.assertEqual(self.gw.accounts.sessions.count("alice"), 0)
