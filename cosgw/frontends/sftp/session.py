"""
After login: the ssh-connection service, the session channel and the
avatar, L{SFTPUser}, which offers one channel type (C{session}) and one
subsystem (C{sftp}).

  - A channel type the avatar does not offer (port forwarding, agent or X11
    forwarding) is refused with a log line; Conch would log a traceback for
    each (its C{ssh_CHANNEL_OPEN} logs any refusal as a failure).
  - Sessions.  SSHSession adapts the avatar to L{ISession} for env, pty,
    shell and exec requests; without an adapter an C{env} request (OpenSSH
    sends them) logs a "Could not adapt" traceback.  L{SFTPUser} provides a
    session that accepts env and pty silently and answers shell and exec
    with one line on stderr and exit status 1 (so C{scp -O} fails cleanly).
    Once a session object exists, SSHSession hands the client's EOF to it
    and expects I{it} to close the channel, so L{SFTPSession} closes the
    channel on EOF itself; otherwise an OpenSSH C{sftp} that sent an env
    request would hang at exit.
  - Flow control (see L{cosgw.frontends.sftp.flow}).  Conch refills a
    channel's window as soon as data arrives and keeps what the client's
    window does not yet allow in a buffer it copies whole on every write.
    L{SFTPSession} gives the client window back only for bytes its SFTP
    server has taken, and keeps its output in a L{ChunkQueue}.  At most
    L{MAX_CHANNELS} channels are open per connection (OpenSSH's
    MaxSessions), so the limits of one channel bound the connection.
  - Copies and calls.  Channel data goes out as views of what was
    written, joined once into its SSH packet, and the packets that the
    client's window and the TCP transport's room let go at once are
    written together (L{GatewayConnection.send_channel_data}), and
    comes in as a view of the decrypted packet
    (L{GatewayConnection.ssh_CHANNEL_DATA}); the last short packet of a
    READ reply waits for the end of the reactor turn so that replies
    answered together fill whole packets (L{SFTPSession.write_parts}).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union, cast

from twisted.conch.avatar import ConchUser, SubsystemFactory
from twisted.conch.interfaces import (
    IConchUser,
    ISession,
    ISessionSetEnv,
    ISFTPServer,
)
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.connection import (
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_OPEN_FAILURE,
    OPEN_RESOURCE_SHORTAGE,
    OPEN_UNKNOWN_CHANNEL_TYPE,
    SSHConnection,
)
from twisted.conch.ssh.filetransfer import FileTransferServer
from twisted.conch.ssh.session import SSHSession, SSHSessionProcessProtocol
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.escaping import for_log
from cosgw.frontends.sftp.conchlog import ConchLogger
from cosgw.frontends.sftp.flow import ChunkQueue

__all__ = [
    "MAX_CHANNELS",
    "NOT_SFTP_MESSAGE",
    "SESSION_WINDOW",
    "GatewayConnection",
    "SFTPSession",
    "SFTPUser",
]

log = Logger(namespace="cosgw.ssh")

#: OpenSSH's session window: Conch's 128 KiB made a client wait for a
#: window adjustment every 64 KiB.  Memory stays bounded: the SFTP server
#: stops reading the connection while its uploads are backed up.
SESSION_WINDOW = 2 * 1024 * 1024

#: Channels one connection may have open at once (OpenSSH's MaxSessions).
MAX_CHANNELS = 10

#: CHANNEL_DATA's fields before the data: the recipient channel, the length.
_DATA_HEADER = struct.Struct(">2L")


class GatewayConnection(SSHConnection):
    """
    ssh-connection that refuses unknown channel types without a traceback,
    and more than L{MAX_CHANNELS} channels, and lets an L{SFTPSession} keep
    its own window.
    """

    _log = ConchLogger(namespace="twisted.conch.ssh.connection")

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        channel_type, rest = getNS(packet)
        ssh = self.transport
        lookup = getattr(getattr(ssh, "avatar", None), "channelLookup", None)
        if ssh is None or lookup is None or len(rest) < 4:
            super().ssh_CHANNEL_OPEN(packet)
            return
        if channel_type not in lookup:
            self._refuse_channel(
                rest, OPEN_UNKNOWN_CHANNEL_TYPE, "unknown channel type", channel_type
            )
        elif len(self.channels) >= MAX_CHANNELS:
            self._refuse_channel(
                rest,
                OPEN_RESOURCE_SHORTAGE,
                f"too many channels (max {MAX_CHANNELS})",
                channel_type,
            )
        else:
            super().ssh_CHANNEL_OPEN(packet)

    def _refuse_channel(
        self, rest: bytes, code: int, reason: str, channel_type: bytes
    ) -> None:
        ssh = self.transport
        assert ssh is not None
        (sender_channel,) = struct.unpack(">L", rest[:4])
        log.info(
            "SSH user {user} asked for a {channel_type} channel; refused: {reason}",
            user=for_log(str(getattr(ssh, "username", None))),
            channel_type=for_log(channel_type[:40].decode("ascii", "replace")),
            reason=reason,
        )
        ssh.sendPacket(
            MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender_channel, code)
            + NS(reason.encode("ascii"))
            + NS(b""),
        )

    def send_channel_data(
        self, channel: Any, packets: Sequence[Sequence[Union[bytes, memoryview]]]
    ) -> None:
        """
        L{sendData} of each of C{packets} (a packet's data in parts) in
        packets of their own, written together, each packet's parts joined
        only once, into the packet (Conch copies the data twice on the way,
        the transport twice more).
        """
        if channel.localClosed:
            return
        recipient = self.channelsToRemoteChannel[channel]
        payloads = [
            [_DATA_HEADER.pack(recipient, sum(map(len, parts))), *parts]
            for parts in packets
        ]
        send_packets = getattr(self.transport, "send_packets", None)
        if send_packets is not None:
            send_packets(MSG_CHANNEL_DATA, payloads)
        else:
            assert self.transport is not None
            for payload in payloads:
                self.transport.sendPacket(MSG_CHANNEL_DATA, b"".join(payload))

    def ssh_CHANNEL_DATA(self, packet: Union[bytes, memoryview]) -> None:
        """
        Conch's, handing an L{SFTPSession} a view of the data, not a copy
        (Conch copies it twice): C{packet} is a view of the decrypted
        packet when the cipher is AEAD (L{PacketLayer.read_sealed}).
        """
        local, length = struct.unpack(">2L", packet[:8])
        channel = self.channels[local]
        if length > channel.localWindowLeft or length > channel.localMaxPacket:
            # More than the window or the maximum packet size allow.
            self._log.error("too much data")
            self.sendClose(channel)
            return
        data = memoryview(packet)[8 : 8 + length]
        channel.localWindowLeft -= length
        if channel.localWindowLeft < channel.localWindowSize // 2:
            self.adjustWindow(
                channel, channel.localWindowSize - channel.localWindowLeft
            )
        channel.dataReceived(data if isinstance(channel, SFTPSession) else bytes(data))

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        """
        Conch calls this for every channel as data arrives, before the
        channel has taken it; an L{SFTPSession} gives its window back
        itself once its reader took the bytes (L{SFTPSession.refill_window}).
        """
        if isinstance(channel, SFTPSession):
            return
        super().adjustWindow(channel, bytesToAdd)


#: The one line a shell or exec request gets, on stderr.
NOT_SFTP_MESSAGE = b"This service offers SFTP only.\r\n"


class SFTPSession(SSHSession):
    """
    A session channel that closes itself on the client's EOF.

    SSHSession does so only while it has no session object; once an env or
    pty request made one, it hands EOF to it and expects it to close the
    channel (RFC 4254 section 5.3 leaves the close to us).
    """

    _log = ConchLogger(namespace="twisted.conch.ssh.session")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("localWindow", SESSION_WINDOW)
        super().__init__(*args, **kwargs)
        self._output = ChunkQueue()
        #: Bytes the reader (the SFTP server) received and has not taken
        #: yet; set by the reader.  They count against the client's window.
        self.input_held: Callable[[], int] = lambda: 0
        #: Called when output waiting for the client's window was sent.
        self.on_output_sent: Callable[[], None] = lambda: None
        self._flush: Optional[IDelayedCall] = None

    # -- input: the client's window ---------------------------------------

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.refill_window()

    def window_credit(self) -> int:
        """
        How many bytes the client's window may grow by: the window less what
        the client may still send and what was received but not taken.
        """
        held = len(self.buf or b"") + self.input_held()
        return self.localWindowSize - self.localWindowLeft - held

    def refill_window(self) -> None:
        """
        Give the client window back for the bytes taken, in steps of at
        least a quarter window once less than half is left (as Conch and
        OpenSSH do), so a reader that takes everything at once sees no
        difference.
        """
        if self.conn is None or self.localClosed:
            return
        if self.localWindowLeft >= self.localWindowSize // 2:
            return
        credit = self.window_credit()
        if credit >= self.localWindowSize // 4:
            SSHConnection.adjustWindow(self.conn, self, credit)

    # -- output: waiting for the client's window --------------------------

    @property
    def output_waiting(self) -> int:
        """Bytes written and not sent yet (most wait for the client's window)."""
        return len(self._output)

    @property
    def window_closed(self) -> bool:
        """Output waits for the client's window to open."""
        return bool(self._output) and self.remoteWindowLeft <= 0

    def write(self, data: bytes) -> None:
        """
        Send C{data} as far as the client's window allows; keep the rest in
        a L{ChunkQueue} (Conch appends to one bytes buffer, copying all of
        it on every write).
        """
        self.write_parts((data,))

    def write_parts(self, parts: Sequence[bytes], more_soon: bool = False) -> None:
        """
        Write C{parts} one after the other, without joining them.

        @param more_soon: more output is likely this reactor turn (a READ
            reply: the reader often answers several at once).  The last
            packet, if it would be short of the client's maximum packet
            size, then waits for the end of the turn, so that replies fill
            whole packets: a 32 KiB read's reply is 13 bytes over 32 KiB,
            and on its own takes two packets.
        """
        if self.localClosed:
            return
        for part in parts:
            self._output.append(part)
        self._send_output(hold_tail=more_soon)

    def addWindowBytes(self, data: int) -> None:
        # Not SSHChannel's: it would also send self.buf, which SSHSession
        # uses for *input* received before the subsystem started.
        self.remoteWindowLeft += data
        waited = bool(self._output)
        self._send_output()
        if self.extBuf:
            pending, self.extBuf = self.extBuf, []
            for data_type, chunk in pending:
                self.writeExtended(data_type, chunk)
        if waited:
            self.on_output_sent()

    def _send_output(self, hold_tail: bool = False) -> None:
        """
        Send what waits, in packets of the client's maximum size, as far as
        its window allows and, each time, until the TCP transport's buffer
        is full (L{GatewaySSHTransport.output_room}): those packets go to
        the transport in one write.  C{hold_tail}: see L{write_parts}.
        """
        conn = self.conn
        assert conn is not None
        packet = self.remoteMaxPacket or 32768
        # Not while the TCP transport's buffer is over its limit: the bytes
        # wait here, unencrypted (often the reader's own), not there twice.
        ssh = conn.transport
        room_of = getattr(ssh, "output_room", None)
        output = self._output
        # A last packet short of full waits for the end of the turn, as
        # long as the window would let a full one go.
        held = 0
        if hold_tail and len(output) < self.remoteWindowLeft:
            held = len(output) % packet
        while (
            len(output) > held
            and self.remoteWindowLeft > 0
            and not getattr(ssh, "output_full", False)
        ):
            size = min(self.remoteWindowLeft, len(output) - held)
            room = room_of() if room_of is not None else None
            if room is None:
                room = size
            # At least one packet; the one that fills the buffer goes too
            # (as when each packet was written alone and checked after).
            packets: list[list[memoryview]] = []
            sent = 0
            while sent < size and (sent < room or not packets):
                n = min(packet, size - sent)
                packets.append(output.take_views(n))
                sent += n
            if isinstance(conn, GatewayConnection):
                conn.send_channel_data(self, packets)
            else:
                for pieces in packets:
                    conn.sendData(self, b"".join(pieces))
            self.remoteWindowLeft -= sent
        if held and len(output) == held:
            self._flush_soon()
        if self.closing and not output and not self.extBuf:
            conn.sendClose(self)

    def _flush_soon(self) -> None:
        """Send what L{_send_output} held back at the end of this turn."""
        if self._flush is None or not self._flush.active():
            self._flush = _clock_of(self).callLater(0, self._flush_held)

    def _flush_held(self) -> None:
        self._flush = None
        self.send_waiting()

    def send_waiting(self) -> None:
        """Send what waits, as far as the window and the TCP buffer allow."""
        if self.conn is not None and not self.localClosed:
            self._send_output()
            self.on_output_sent()

    def loseConnection(self) -> None:
        # SSHSession's, with the output kept here: close once it is sent.
        if self.client and self.client.transport:
            self.client.transport.loseConnection()
        self.closing = 1
        if not self._output and not self.extBuf and self.conn is not None:
            self.conn.sendClose(self)

    def closed(self) -> None:
        self._output.clear()
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        super().closed()

    def eofReceived(self) -> None:
        if self.client is None or self.conn is None:
            return
        if isinstance(self.session, _RefusingSession) and self.session.refusing:
            return  # it closes the channel once its message is out
        # A reply's last packet held for the end of the turn goes first.
        self._send_output()
        self.conn.sendClose(self)


@implementer(ISession, ISessionSetEnv)
class _RefusingSession:
    """
    What a session channel of an L{SFTPUser} gets instead of a shell: env
    and pty requests are accepted and ignored, shell and exec are answered
    with L{NOT_SFTP_MESSAGE} on stderr and exit status 1.
    """

    def __init__(self, avatar: SFTPUser) -> None:
        self._avatar = avatar
        #: A shell or exec request is being refused.
        self.refusing = False

    def getPty(self, term: bytes, windowSize: Any, modes: Any) -> None:
        pass

    def setEnv(self, name: bytes, value: bytes) -> None:
        pass

    def windowChanged(self, newWindowSize: Any) -> None:
        pass

    def openShell(self, proto: SSHSessionProcessProtocol) -> None:
        self._refuse(proto, "a shell")

    def execCommand(self, proto: SSHSessionProcessProtocol, command: bytes) -> None:
        # The program name only: a command line may carry anything.
        words = command.split(None, 1)
        program = words[0][:40].decode("utf-8", "replace") if words else ""
        self._refuse(proto, f"command {program!r}")

    def eofReceived(self) -> None:
        pass  # SFTPSession closes the channel.

    def closed(self) -> None:
        pass

    def _refuse(self, proto: SSHSessionProcessProtocol, what: str) -> None:
        channel = proto.session
        self.refusing = True
        log.info(
            "SSH user {user} asked for {what}; refused (SFTP only)",
            user=for_log(self._avatar.username),
            what=for_log(what),
        )
        # After the request's reply, which the connection sends when this
        # returns: exit-status and CLOSE must not precede it.
        _clock_of(channel).callLater(0, self._finish, proto)

    @staticmethod
    def _finish(proto: SSHSessionProcessProtocol) -> None:
        channel = proto.session
        conn = channel.conn
        if conn is None or channel.localClosed or channel.remoteClosed:
            return  # closed meanwhile
        proto.errReceived(NOT_SFTP_MESSAGE)
        proto.processEnded(Failure(ProcessTerminated(exitCode=1)))


def _clock_of(channel: SSHSession) -> IReactorTime:
    """The reactor of the factory that built C{channel}'s SSH transport."""
    ssh = getattr(channel.conn, "transport", None)
    clock = getattr(getattr(ssh, "factory", None), "reactor", None)
    if clock is None:
        # A plain SSHFactory (not ours) has no injected reactor.
        from twisted.internet import reactor as global_reactor

        clock = global_reactor
    return cast(IReactorTime, clock)


@implementer(IConchUser)
class SFTPUser(ConchUser):
    """
    A logged-in SSH user: one C{session} channel type, one C{sftp}
    subsystem served by C{sftp_server}.
    """

    _log = ConchLogger(namespace="twisted.conch.avatar")

    def __init__(
        self,
        username: str,
        sftp_server: ISFTPServer,
        subsystem: SubsystemFactory = FileTransferServer,
        *,
        on_logout: Optional[Callable[[], Any]] = None,
    ) -> None:
        """
        @param username: the account name, for logs.
        @param sftp_server: what C{ISFTPServer(avatar)} returns, so the
            subsystem (which adapts its avatar) serves it.
        @param subsystem: the protocol class of the C{sftp} subsystem, built
            as C{subsystem(data, avatar=self)}.
        @param on_logout: called once by the first L{logout}.
        """
        super().__init__()
        # IConchUser.conn; SSHConnection sets it when the connection starts.
        self.conn = None
        self.username = username
        self.sftp_server = sftp_server
        self.channelLookup = {b"session": SFTPSession}
        self.subsystemLookup = {b"sftp": subsystem}
        self._on_logout = on_logout
        self._logged_out = False

    def __conform__(self, interface: Any) -> Any:
        # FileTransferServer does ISFTPServer(avatar), SSHSession does
        # ISession(avatar).  Conforming here instead of registering global
        # adapters keeps the answer per avatar (each user's own file system)
        # and per channel (a new session object for each).
        if interface is ISFTPServer:
            return self.sftp_server
        if interface is ISession:
            return _RefusingSession(self)
        return None

    def logout(self) -> None:
        """End the user's session; only the first call does anything."""
        if self._logged_out:
            return
        self._logged_out = True
        if self._on_logout is not None:
            self._on_logout()
