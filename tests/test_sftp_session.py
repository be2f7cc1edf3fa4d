"""
Tests for L{cosgw.frontends.sftp.session}: the avatar, and the session
channel over real sockets (everything but SFTP refused politely, env and
pty accepted, other channel types and subsystems refused).
"""

from __future__ import annotations

import time
import types
from typing import Any, Optional

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message
from twisted.conch.interfaces import (
    IConchUser,
    ISession,
    ISessionSetEnv,
    ISFTPServer,
)
from twisted.conch.ssh.filetransfer import FileTransferServer
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from cosgw.frontends.sftp.session import SFTPUser
from cosgw.frontends.sftp.userauth import GatewayUserAuthServer
from tests.sshtesting import (
    CLIENT_TIMEOUT,
    MESSAGE,
    NO_OPENSSH,
    PASSWORD,
    SCP,
    USER,
    RootOnlySFTP,
    SSHServerMixin,
    openssh_options,
    paramiko_transport,
    run_client,
    user_key,
)


def channel_request(chan: paramiko.Channel, name: str, *strings: str) -> None:
    """
    Send a channel request with want-reply set; raise SSHException if it
    failed (paramiko closes the channel on a failed request).  paramiko's
    own env request sends want-reply false, which hides the answer.
    """
    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string(name)
    m.add_boolean(True)
    for s in strings:
        m.add_string(s)
    chan._event_pending()
    chan.transport._send_user_message(m)
    chan._wait_for_event()


def read_channel_end(chan: paramiko.Channel) -> tuple[bytes, bytes, Optional[int]]:
    """Read stdout and stderr to the channel's end, and its exit status."""
    chan.settimeout(CLIENT_TIMEOUT)
    out = b""
    err = b""
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while time.monotonic() < deadline:
        if chan.recv_stderr_ready():
            err += chan.recv_stderr(4096)
            continue
        if chan.recv_ready():
            out += chan.recv(4096)
            continue
        if chan.closed or chan.eof_received and chan.exit_status_ready():
            break
        time.sleep(0.02)
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(4096)
    status = chan.exit_status if chan.status_event.wait(CLIENT_TIMEOUT) else None
    return out, err, status


class SFTPUserTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        server = RootOnlySFTP()
        avatar = SFTPUser(USER, server)
        verifyObject(IConchUser, avatar)
        self.assertIs(ISFTPServer(avatar), server)
        self.assertEqual(avatar.subsystemLookup, {b"sftp": FileTransferServer})
        self.assertEqual(list(avatar.channelLookup), [b"session"])
        session = ISession(avatar)
        verifyObject(ISession, session)
        verifyObject(ISessionSetEnv, session)
        self.assertIsNot(ISession(avatar), session)

    def test_logout_once(self) -> None:
        calls = []
        avatar = SFTPUser(USER, RootOnlySFTP(), on_logout=lambda: calls.append(1))
        avatar.logout()
        avatar.logout()
        self.assertEqual(calls, [1])
        SFTPUser(USER, RootOnlySFTP()).logout()

    def test_pipelined_second_login_is_logged_out(self) -> None:
        """
        A login completing on a connection that already has an avatar is
        logged out at once instead of replacing the first (whose logout
        Conch would then never call).
        """
        first = SFTPUser(USER, RootOnlySFTP())
        second_logouts = []
        second = SFTPUser(
            USER, RootOnlySFTP(), on_logout=lambda: second_logouts.append(1)
        )
        service = GatewayUserAuthServer()
        service.transport = types.SimpleNamespace(avatar=first, peer="192.0.2.1")
        service._cbFinishedAuth((IConchUser, second, second.logout))
        self.assertEqual(second_logouts, [1])
        self.assertIs(service.transport.avatar, first)

    def test_login_completing_after_disconnect_is_logged_out(self) -> None:
        """
        A login that completes when the connection is closing or gone (a
        realm or checker that cannot be cancelled) is logged out at once.
        """
        logouts = []
        avatar = SFTPUser(USER, RootOnlySFTP(), on_logout=lambda: logouts.append(1))
        service = GatewayUserAuthServer()
        service.transport = types.SimpleNamespace(
            peer="192.0.2.1", login_allowed=lambda: False
        )
        service._cbFinishedAuth((IConchUser, avatar, avatar.logout))
        self.assertEqual(logouts, [1])
        self.assertFalse(hasattr(service.transport, "avatar"))


class SessionTests(SSHServerMixin, TestCase):
    """Everything but SFTP is refused politely; env and pty are accepted."""

    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_exec_refused(self) -> Any:
        port = self.start_server()
        result = yield self.openssh(
            port, user_key("ed25519"), f"{USER}@127.0.0.1", "true"
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(result.stderr.decode().strip(), MESSAGE)
        self.assertEqual(result.stdout, b"")
        yield self.wait_until(lambda: self.logouts == [USER])
        self.assertIn("asked for command 'true'; refused", self.log_text())

    @defer.inlineCallbacks
    def test_legacy_scp_refused(self) -> Any:
        port = self.start_server()
        source = self.workdir / "file.txt"
        source.write_text("hello\n")
        args = [
            SCP or "scp",
            *openssh_options(port),
            "-O",
            "-i",
            str(user_key("ed25519")),
            "-P",
            str(port),
            str(source),
            f"{USER}@127.0.0.1:/file.txt",
        ]
        result = yield self.in_thread(run_client, args, self.workdir)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(MESSAGE.encode(), result.stderr)

    @defer.inlineCallbacks
    def test_shell_refused(self) -> Any:
        port = self.start_server()

        def shell() -> tuple[bytes, bytes, Optional[int]]:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                chan = t.open_session(timeout=CLIENT_TIMEOUT)
                chan.get_pty()
                chan.invoke_shell()
                return read_channel_end(chan)

        out, err, status = yield self.in_thread(shell)
        self.assertEqual(out, b"")
        self.assertEqual(err, (MESSAGE + "\r\n").encode())
        self.assertEqual(status, 1)
        self.assertIn("asked for a shell; refused", self.log_text())

    @defer.inlineCallbacks
    def test_env_and_pty_accepted(self) -> Any:
        """
        env (with want-reply, so the answer is visible) and pty-req succeed
        without a logged error, and SFTP then starts on the same channel.
        """
        port = self.start_server()

        def env_then_sftp() -> str:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                chan = t.open_session(timeout=CLIENT_TIMEOUT)
                chan.settimeout(CLIENT_TIMEOUT)
                channel_request(chan, "env", "LANG", "C.UTF-8")
                chan.set_environment_variable("LC_ALL", "C")
                chan.get_pty()
                chan.invoke_subsystem("sftp")
                sftp = paramiko.SFTPClient(chan)
                try:
                    return sftp.normalize(".")
                finally:
                    sftp.close()

        self.assertEqual((yield self.in_thread(env_then_sftp)), "/")

    @defer.inlineCallbacks
    def test_openssh_setenv_exec(self) -> Any:
        port = self.start_server()
        result = yield self.openssh(
            port,
            user_key("ed25519"),
            "-o",
            "SetEnv=FOO=bar",
            f"{USER}@127.0.0.1",
            "true",
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(MESSAGE.encode(), result.stderr)

    @defer.inlineCallbacks
    def test_other_channels_and_subsystems_refused(self) -> Any:
        port = self.start_server()

        def attempts() -> list[str]:
            refused = []
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                try:
                    t.open_channel(
                        "direct-tcpip",
                        ("127.0.0.1", 22),
                        ("127.0.0.1", 1),
                        timeout=CLIENT_TIMEOUT,
                    )
                except paramiko.ChannelException:
                    refused.append("direct-tcpip")
                try:
                    t.request_port_forward("127.0.0.1", 0)
                except paramiko.SSHException:
                    refused.append("tcpip-forward")
                chan = t.open_session(timeout=CLIENT_TIMEOUT)
                chan.settimeout(CLIENT_TIMEOUT)
                try:
                    chan.invoke_subsystem("netconf")
                except paramiko.SSHException:
                    refused.append("netconf")
            return refused

        self.assertEqual(
            (yield self.in_thread(attempts)),
            ["direct-tcpip", "tcpip-forward", "netconf"],
        )
        self.assertIn("asked for a direct-tcpip channel; refused", self.log_text())
