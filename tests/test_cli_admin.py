"""
Tests for C{cosgw sessions} and C{cosgw kick}: the command, run as an
operator runs it, against the admin listener of a real gateway on
127.0.0.1 with a real ftplib session.
"""

from __future__ import annotations

import ftplib
import json
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.clitesting import cosgw, temporary_directory, write_config
from tests.harness import PASSWORD, Gateway, in_thread, start_gateway


def ftp_login(gw: Gateway) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(gw.host, gw.port, timeout=30)
    ftp.login("alice", PASSWORD)
    return ftp


class AdminCommandTests(TestCase):
    """sessions and kick on a gateway whose admin listener asks no user."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(
            self, "local", admin_listen="tcp:0:interface=127.0.0.1"
        )
        port = yield self.gw.service.admin.listener.listening
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.ftp = yield in_thread(ftp_login, self.gw)
        self.addCleanup(self.ftp.close)

    def run_cosgw(self, *args: str, **kwargs: Any) -> Any:
        return in_thread(cosgw, *args, **kwargs)

    @defer.inlineCallbacks
    def sessions(self) -> Any:
        result = yield self.run_cosgw("sessions", "--admin", self.url, "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        return json.loads(result.stdout)["sessions"]

    @defer.inlineCallbacks
    def test_sessions_and_kick(self) -> Any:
        """
        The session shows with its user and real address; kick ends it with
        421 and it is gone from the list.
        """
        client_port = self.ftp.sock.getsockname()[1]
        [session] = yield self.sessions()
        self.assertEqual((session["protocol"], session["user"]), ("ftp", "alice"))
        self.assertEqual(
            (session["client_ip"], session["client_port"]), ("127.0.0.1", client_port)
        )

        # The table, finding the listener from admin_listen in a config.
        config = write_config(
            temporary_directory(self),
            f"[server]\nadmin_listen = tcp:{self.url.rsplit(':', 1)[1]}"
            ":interface=127.0.0.1\n"
            "[storage:s]\ntype = local\npath = d\n[user:u]\npassword = p\n",
        )
        result = yield self.run_cosgw("sessions", "--config", str(config))
        self.assertEqual(result.returncode, 0, result.stderr)
        header, row = result.stdout.splitlines()
        self.assertEqual(
            header.split(),
            ["ID", "PROTOCOL", "USER", "CLIENT", "SINCE", "FOR", "IDLE", "TRANSFERS"],
        )
        self.assertEqual(
            row.split()[:4],
            [session["id"], "ftp", "alice", f"127.0.0.1:{client_port}"],
        )

        result = yield self.run_cosgw("kick", session["id"], "--admin", self.url)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"kicked session {session['id']}\n")
        with self.assertRaises(ftplib.error_temp) as caught:
            yield in_thread(self.ftp.voidcmd, "NOOP")
        self.assertTrue(str(caught.exception).startswith("421"), caught.exception)

        deadline = time.monotonic() + 10
        while (yield self.sessions()):
            self.assertLess(time.monotonic(), deadline, "the session stays listed")

    @defer.inlineCallbacks
    def test_kick_unknown(self) -> Any:
        result = yield self.run_cosgw("kick", "nosuch", "--admin", self.url)
        self.assertEqual((result.returncode, result.stdout), (5, ""))
        self.assertEqual(result.stderr, "cosgw kick: no session 'nosuch'\n")
        self.assertEqual(len((yield self.sessions())), 1)


class AdminUserTests(TestCase):
    """An admin listener with admin_users asks for one of them."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(
            self,
            "local",
            admin_listen="tcp:0:interface=127.0.0.1",
            admin_users=("alice",),
        )
        port = yield self.gw.service.admin.listener.listening
        self.url = f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def test_credentials(self) -> Any:
        result = yield in_thread(cosgw, "sessions", "--admin", self.url)
        self.assertEqual((result.returncode, result.stdout), (4, ""))
        self.assertEqual(
            result.stderr,
            "cosgw sessions: the admin listener asks for a user (401): give"
            " --user NAME (password from $COSGW_ADMIN_PASSWORD or a prompt)\n",
        )

        wrong = {"COSGW_ADMIN_PASSWORD": "not-" + PASSWORD}
        result = yield in_thread(
            cosgw, "sessions", "--admin", self.url, "--user", "alice", env=wrong
        )
        self.assertEqual(result.returncode, 4)
        self.assertEqual(
            result.stderr,
            "cosgw sessions: the admin listener refused user 'alice' (401)\n",
        )

        right = {"COSGW_ADMIN_PASSWORD": PASSWORD}
        result = yield in_thread(
            cosgw, "sessions", "--admin", self.url, "--user", "alice", env=right
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(result.stdout, "no sessions\n")
