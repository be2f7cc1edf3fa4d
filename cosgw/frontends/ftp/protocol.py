"""
One FTP control connection: lines in, replies out, one command at a time
through the dispatch table, transfers detached, the login and idle
deadlines, and flow control both ways.

The protocol subclasses neither Twisted's L{twisted.protocols.ftp.FTP}
(its login states became the explicit L{Session}, its TypeError-sniffing
dispatch the table in L{cosgw.frontends.ftp.commands}, its DTP
L{DataChannel}, and importing it imports the global reactor) nor
L{LineReceiver}, whose buffer and pausing could not say why reading
stopped, nor discard what it had already read.  What is left of Twisted is
L{TimeoutMixin} (the idle timeout on the injected clock).

Flow control (ARCHITECTURE rule 8: one client never exhausts the gateway):

  - Replies.  The protocol is a streaming producer on its transport.  When
    more than L{MAX_UNSENT_REPLIES} of replies wait for a client that does
    not read them, the transport pauses it: no command runs and the
    connection is not read until the client has read them.  A flood of
    HELP or FEAT (allowed before login, as RFC 959 suggests for HELP and
    RFC 2389 needs for FEAT) costs at most that, plus the unread input
    below; C{STAT <dir>} waits between pages the same way.  Under TLS the
    same signal comes through Twisted's producer membrane; while a TLS
    handshake runs, reading never stops, since the handshake needs it.
  - Commands.  Bytes received wait in a buffer; past
    L{MAX_UNREAD_INPUT} reading stops.  Lines are taken from it one
    command at a time, each on its own reactor turn; while a transfer runs
    up to L{MAX_QUEUED_LINES} wait in a queue.  A line longer than
    L{MAX_LINE_LENGTH} is answered 500 and dropped, and what follows it
    runs at once.
  - STARTTLS injection (the CVE-2011-0411 class).  Whatever the client
    sent in clear after C{AUTH TLS} (the rest of its packet, or commands
    queued during a transfer) is discarded and logged, never run inside the
    TLS session, as Postfix does after STARTTLS.
  - Deadlines.  L{login_timeout} runs from the connection (and from REIN
    or a new USER): a session not logged in by then gets 421 and is
    closed, whatever it sends meanwhile.  Once logged in, the idle timeout
    applies, restarted by every command and suspended during a transfer.
    A closing connection whose client does not read its last replies is
    cut off after L{CLOSE_TIMEOUT}.

Every reply line is sent with its control characters shown as C{?}
(L{for_reply}): a name written by another COS client with CR or LF in it
cannot end a reply early and forge another.  Commands and names are in
the session's encoding both ways (L{cosgw.frontends.ftp.encoding}: UTF-8,
RFC 2640, unless a legacy one is configured or detected); a line invalid
in it gets a 501.  Lines are split on CRLF before they are decoded: no
byte of a multibyte character in GBK, GB18030, Big5 or Shift_JIS is a CR
or LF, so a name's 0x5C or 0x7C second bytes pass through whole.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from twisted.internet import error as net_error
from twisted.internet import protocol
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.escaping import for_log, for_reply
from cosgw.frontends.ftp.audited import AuditedSession
from cosgw.frontends.ftp.commands import COMMANDS
from cosgw.frontends.ftp.context import Arg, Command
from cosgw.frontends.ftp.encoding import NotDecodable, SessionEncoding
from cosgw.frontends.ftp.file_commands import FileCommands
from cosgw.frontends.ftp.hash_commands import HashCommands
from cosgw.frontends.ftp.info_commands import InfoCommands
from cosgw.frontends.ftp.login_commands import LoginCommands
from cosgw.frontends.ftp.ports import DataConnections, PortCommands
from cosgw.frontends.ftp.replies import Reply, reply_for
from cosgw.frontends.ftp.session import Access, Event, Session
from cosgw.frontends.ftp.transfers import (
    TRANSFER_COMMANDS,
    ActiveTransfer,
    TransferCommands,
)
from cosgw.frontends.proxied import relay_of

if TYPE_CHECKING:
    from cosgw.frontends.ftp.factory import GatewayFTPFactory

# One namespace for the whole frontend, as when it was one module.
log = Logger(namespace="cosgw.frontends.ftp")

#: Commands answered at once while a transfer runs (RFC 959 4.1.3).
IMMEDIATE_COMMANDS = frozenset({b"ABOR", b"NOOP", b"STAT"})
#: Command lines kept while a transfer runs before reading stops.
MAX_QUEUED_LINES = 16
#: The longest command line (its CRLF aside); a longer one gets a 500.
MAX_LINE_LENGTH = 16384
#: Bytes received but not yet run as commands before reading stops.
MAX_UNREAD_INPUT = 64 * 1024
#: Bytes of replies the client has not read before commands stop running
#: and reading stops: the control transport's send buffer.
MAX_UNSENT_REPLIES = 64 * 1024
#: Seconds a closing connection has to deliver its last replies (and, over
#: TLS, to exchange close_notify) before it is cut off.
CLOSE_TIMEOUT = 10.0


def strip_telnet(line: bytes) -> bytes:
    """
    Remove Telnet commands (RFC 854) from a command line: clients send
    "IAC IP IAC DM" before an urgent ABOR (RFC 959 4.1.3), and a few send
    option negotiation.  0xFF occurs in none of the multibyte encodings a
    session may speak (UTF-8, GBK, GB18030, Big5, Shift_JIS); a data byte
    0xFF is sent doubled (IAC IAC), as Telnet has it.
    """
    if b"\xff" not in line:
        return line
    out = bytearray()
    i = 0
    while i < len(line):
        byte = line[i]
        if byte != 0xFF:
            out.append(byte)
            i += 1
        elif i + 1 < len(line) and 0xFB <= line[i + 1] <= 0xFE:
            i += 3  # IAC WILL/WONT/DO/DONT option
        elif i + 1 < len(line) and line[i + 1] == 0xFF:
            out.append(0xFF)  # IAC IAC: the data byte 0xFF
            i += 2
        else:
            i += 2  # IAC command (IP, DM, ...)
    return bytes(out)


def _immediate(line: bytes) -> bool:
    """Whether a line is answered at once during a transfer (STAT only bare)."""
    return line.strip().upper() in IMMEDIATE_COMMANDS


def _urgent_data_inline(transport: Any) -> None:
    """
    Keep TCP urgent data in the stream.  Clients send ABOR's last byte as
    urgent data (Python's ftplib: the newline, with MSG_OOB); by default
    Linux takes that byte out of the stream, and the line would never end.
    """
    handle = getattr(transport, "getHandle", lambda: None)()
    if isinstance(handle, socket.socket):
        try:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        except OSError:
            pass


def _socket_transport(transport: Any) -> Any:
    """The transport below the wrappers (TLS, a PROXY header's): the socket's."""
    tcp = transport
    for _ in range(4):
        below = tcp.__dict__.get("transport")
        if below is None:
            break
        tcp = below
    return tcp


def _limit_send_buffer(tcp: Any) -> None:
    """
    Make the TCP transport (under TLS, the one below it) pause its producer
    once more than L{MAX_UNSENT_REPLIES} wait to be sent.  It is Twisted's
    default (64 KiB); set here so that the limit is this module's.
    """
    if hasattr(tcp, "bufferSize"):
        tcp.bufferSize = MAX_UNSENT_REPLIES


@implementer(IPushProducer, IHandshakeListener)
class GatewayFTP(
    AuditedSession,
    LoginCommands,
    FileCommands,
    InfoCommands,
    HashCommands,
    PortCommands,
    TransferCommands,
    protocol.Protocol,
    policies.TimeoutMixin,
):
    """
    One FTP control connection.  The handlers (C{ftp_<CMD>}) come from the
    mixins, one per concern; the table L{COMMANDS} says which handler a
    command runs, who may send it and whether it takes an argument.  As the
    producer of its transport's replies it is paused while the client does
    not read them (see the module docstring).
    """

    commands: Mapping[str, Command] = COMMANDS
    factory: GatewayFTPFactory
    #: Seconds a closing connection has to deliver its last replies.
    close_timeout: float = CLOSE_TIMEOUT

    def __init__(self) -> None:
        self.session = Session()
        self.transfer: Optional[ActiveTransfer] = None
        #: Bytes received and not yet taken as command lines.
        self.unread = bytearray()
        #: Lines that arrived while a transfer ran, waiting for its reply.
        self.queued: deque[bytes] = deque()
        #: A command other than a transfer is running: no other may start.
        self.busy = False
        #: The transport said its send buffer is full: the client is not
        #: reading its replies.
        self.replies_full = False
        #: Whether the transport is reading (not paused by this protocol).
        self.reading = True
        #: The rest of an over-long line is being dropped.
        self._discarding = False
        #: A TLS handshake is under way: reading must go on.
        self._handshaking = False
        self._pumping = False
        self._producing = False
        self._flush_waiters: list[Deferred[None]] = []
        self._login_deadline: Optional[IDelayedCall] = None
        self._cut_off: Optional[IDelayedCall] = None
        self.names = SessionEncoding(log_fields=self._log_fields)

    def _log_fields(self) -> dict[str, str]:
        return {"session": self.audit.id, "peer": self.peer.host}

    def makeConnection(self, transport: Any) -> None:
        # The listener's name encoding (else the server's) until a user is
        # named: set before connectionMade greets the client.
        self.names.configure(self.factory.encoding_for(None))
        super().makeConnection(transport)

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        if self.factory.implicit:
            # Implicit FTPS: TLS from the first byte, data private by default.
            session = self.session
            session.secure, session.pbsz, session.prot = True, True, "P"
            self._handshaking = True
        # Behind a balancer, the client the PROXY header named.
        self.peer = self.transport.getPeer()
        relay = relay_of(self.transport)
        self.data = DataConnections(self.factory, self.peer.host, relay)
        # TimeoutMixin's hook for another clock (it is a method there).
        self.callLater = self.reactor.callLater  # type: ignore[method-assign]
        _urgent_data_inline(self.transport)
        _limit_send_buffer(_socket_transport(self.transport))
        if hasattr(self.transport, "setTcpNoDelay"):
            # Replies are small writes, each answering a command: with Nagle
            # a 226 waited for the client's delayed ACK of the 150 (40 ms
            # per transfer).
            self.transport.setTcpNoDelay(True)
        self.transport.registerProducer(self, True)
        self._producing = True
        self.start_login_deadline()
        self.sendLine(f"220 {self.factory.welcomeMessage}")
        self.open_audit()

    def handshakeCompleted(self) -> None:
        self._handshaking = False
        self._update_reading()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.connection_closed(self.peer.host)
        self.session.advance(Event.LOST)
        self.data.close()
        self.queued.clear()
        self.unread.clear()
        if self.transfer is not None:
            # The client is gone: an upload is kept resumable, not committed.
            self.transfer.cancel(client_gone=True)
        self.setTimeout(None)
        for call in (self._login_deadline, self._cut_off):
            if call is not None and call.active():
                call.cancel()
        self._login_deadline = self._cut_off = None
        self._wake_flush_waiters()
        self.session.end_login()
        lost = "connection lost"
        if reason.check(net_error.ConnectionDone):
            lost = "connection closed by the client"
        self.close_audit(lost)

    def sendLine(self, line: Union[str, bytes]) -> None:
        """
        Send one reply line, in the session's encoding.  Control characters
        are shown as C{?}: a line is one line, whatever name it carries.
        """
        if self.kicked:
            return  # the 421 of the kick was the last word
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        if line[:3].isdigit():
            self.last_code = line[:3]
        self.transport.write(self.names.encode(for_reply(line)) + b"\r\n")

    def close_control(self) -> None:
        """
        Close the connection once the replies written so far are sent: no
        further command runs.  Reading goes on (a TLS close waits for the
        client's close_notify), ignored; a client that has not taken its
        last replies after L{close_timeout} is cut off.
        """
        self.session.advance(Event.QUIT)
        self.unread.clear()
        self.queued.clear()
        if self._producing:
            # Registered, a producer would hold the close back: TLS shuts
            # down only without one, and TCP's close after a paused producer
            # waits for it to write again.
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        if not self.reading:
            self.reading = True
            self.transport.resumeProducing()
        if self._cut_off is None:
            self._cut_off = self.reactor.callLater(
                self.close_timeout, self._cut_off_now
            )

    def _cut_off_now(self) -> None:
        self._cut_off = None
        log.info(
            "FTP connection from {peer} did not take its last replies in {seconds} s:"
            " aborted",
            peer=self.peer.host,
            seconds=self.close_timeout,
        )
        self.transport.abortConnection()

    # -- deadlines ----------------------------------------------------------

    def start_login_deadline(self) -> None:
        """
        From now (the connection, REIN, a new USER) the session has
        login_timeout seconds to log in; commands do not extend it.
        """
        if self._login_deadline is not None and self._login_deadline.active():
            self._login_deadline.cancel()
        self._login_deadline = None
        self.setTimeout(None)
        if self.factory.login_timeout:
            self._login_deadline = self.reactor.callLater(
                self.factory.login_timeout, self._login_expired
            )

    def logged_in(self) -> None:
        """The login deadline is over; the idle timeout starts."""
        if self._login_deadline is not None and self._login_deadline.active():
            self._login_deadline.cancel()
        self._login_deadline = None
        self.setTimeout(self.control_timeout())

    def control_timeout(self) -> Optional[float]:
        """The idle timeout once logged in; before, the login deadline rules."""
        return self.factory.timeOut if self.session.logged_in else None

    def _login_expired(self) -> None:
        self._login_deadline = None
        if self.session.logged_in or self.session.over:
            return
        self.end_reason(f"login timeout ({self.factory.login_timeout} s)")
        self.sendLine("421 Login timeout: closing the connection")
        self.close_control()

    def timeoutConnection(self) -> None:
        self.end_reason(f"idle timeout ({self.factory.timeOut} s)")
        self.sendLine("421 Idle timeout: closing the connection")
        self.close_control()

    # -- replies: the transport's producer ------------------------------------

    def pauseProducing(self) -> None:
        """The client is not reading its replies: run nothing, read nothing."""
        self.replies_full = True
        self._update_reading()

    def resumeProducing(self) -> None:
        """The client has read its replies: go on."""
        self.replies_full = False
        self._wake_flush_waiters()
        self._pump()

    def stopProducing(self) -> None:
        """The connection is going: connectionLost does the rest."""

    def replies_flushed(self) -> Deferred[None]:
        """
        Fires once the client has taken the replies written so far (at once
        unless they fill the send buffer), or the connection has ended:
        long replies (STAT <dir>) wait on it between pages.
        """
        if not self.replies_full or self.transport is None or self.session.over:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._flush_waiters.append(d)
        return d

    def _wake_flush_waiters(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        for d in waiters:
            d.callback(None)

    # -- TLS ----------------------------------------------------------------

    def start_tls(self, options: Any) -> None:
        """
        AUTH TLS accepted (its 234 sent in clear): everything from now is
        TLS.  What the client sent after AUTH in clear is dropped, not run
        as if it came through the TLS session.
        """
        self._handshaking = True
        self.transport.startTLS(options)
        dropped = len(self.unread) + sum(len(line) + 2 for line in self.queued)
        self.unread.clear()
        self.queued.clear()
        self._discarding = False
        if dropped:
            log.warn(
                "FTP connection from {peer} sent {bytes} bytes in clear after"
                " AUTH TLS: discarded",
                peer=self.peer.host,
                bytes=dropped,
            )

    # -- command lines --------------------------------------------------------
    #
    # One command runs at a time, as RFC 959 has it, except that a transfer
    # (RETR, STOR, LIST, ...) runs detached: while it does, ABOR, STAT and
    # NOOP are answered at once, and any other command waits in a short
    # queue until the transfer has replied.  Twisted's FTP instead stops
    # reading during a transfer, so ABOR could never arrive
    # (twisted-conch-cos-facts.md, a4).

    def dataReceived(self, data: bytes) -> None:
        if self.session.over:
            return  # after QUIT or a timeout: ignored
        self.unread += data
        self._pump()

    def _pump(self) -> None:
        """Run the commands that may run now, in order; then read or not."""
        if self._pumping:
            return  # the loop below sees what changed
        if self.draining is not None and not self.busy and self.transfer is None:
            self.drained()  # the gateway stops: no command starts
            return
        self._pumping = True
        try:
            while not (self.busy or self.replies_full or self.session.over):
                if self.transfer is None and self.queued:
                    self._execute(self.queued.popleft())
                    continue
                if self.transfer is not None and len(self.queued) >= MAX_QUEUED_LINES:
                    break
                line = self._next_line()
                if line is None:
                    break
                self._line_received(line)
        finally:
            self._pumping = False
        self._update_reading()

    def _update_reading(self) -> None:
        """Read from the transport unless a limit is reached."""
        if self.session.over or self.transport is None:
            return  # close_control keeps reading, to see the end
        hold = (
            len(self.unread) > MAX_UNREAD_INPUT
            or (self.transfer is not None and len(self.queued) >= MAX_QUEUED_LINES)
            or (self.replies_full and not self._handshaking)
        )
        if hold == self.reading:
            self.reading = not hold
            if hold:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _next_line(self) -> Optional[bytes]:
        """
        The next complete command line (without its CRLF), or None.  A line
        over L{MAX_LINE_LENGTH} is answered 500 and dropped up to its end,
        and the lines after it follow at once.
        """
        unread = self.unread
        while True:
            if self._discarding:
                end = unread.find(b"\n")
                if end == -1:
                    unread.clear()
                    return None
                del unread[: end + 1]
                self._discarding = False
            # Look no further than the longest line could reach.
            end = unread.find(b"\r\n", 0, MAX_LINE_LENGTH + 2)
            if end != -1:
                line = bytes(unread[:end])
                del unread[: end + 2]
                return line
            if len(unread) < MAX_LINE_LENGTH + 2:
                return None
            self.sendLine("500 Command line too long")
            log.warn("over-long command line from {peer}", peer=self.peer.host)
            self._discarding = True

    def _line_received(self, line: bytes) -> None:
        self.resetTimeout()
        self.audit.touch()
        line = strip_telnet(line)
        if self.transfer is None or _immediate(line):
            self._execute(line)
        else:
            self.queued.append(line)

    def _execute(self, line: bytes) -> None:
        try:
            text = self.names.decode(line)
        except NotDecodable as e:
            self.sendLine(f"501 {e}")
            return
        command, _, argument = text.partition(" ")
        command = command.upper()
        if self.factory.trace_commands:
            shown = "PASS ****" if command == "PASS" else text
            log.debug(
                "{user}@{peer}> {line}",
                user=self.session.user,
                peer=self.peer.host,
                line=for_log(shown),
            )
        transfer: Optional[ActiveTransfer] = None
        if self.transfer is not None:
            pass  # ABOR, STAT or NOOP during a transfer: no waiting
        elif command in TRANSFER_COMMANDS and self.session.logged_in:
            transfer = self.transfer = ActiveTransfer(command, argument, self.reactor)
            self.setTimeout(None)
        else:
            self.busy = True
            self.command = command
        d = maybeDeferred(self._dispatch, command, argument, " " in text)
        d.addCallbacks(self._send_result, self._send_failure, errbackArgs=(command,))
        d.addErrback(lambda f: log.failure("replying to {command}", f, command=command))
        if transfer is not None:
            d.addBoth(lambda _: self._transfer_done(transfer))
        elif self.busy:
            d.addBoth(self._after_command)

    def _transfer_done(self, transfer: ActiveTransfer) -> None:
        for reply in transfer.after_reply:
            self.sendLine(reply)
        self.transfer = None
        if not self.session.over:
            self.setTimeout(self.control_timeout())
        self._pump()

    def _after_command(self, _: object) -> None:
        """
        The next command on a later reactor turn when one is waiting: one
        connection's pipelined commands do not hold up the others.  With
        none waiting (a client that waits for each reply, as nearly all
        do), the command is over at once: no timer per command.
        """
        if self.unread or self.queued:
            self.reactor.callLater(0, self._command_done)
        else:
            self._command_done()

    def _command_done(self) -> None:
        self.busy = False
        self.command = None
        self._pump()

    def _dispatch(self, name: str, argument: str, has_argument: bool) -> Any:
        """Run one command as the session and the table allow."""
        command = self.commands.get(name)
        refusal = self.session.admit(command.access if command else Access.LOGGED_IN)
        if refusal is not None:
            return refusal
        if command is None:
            return Reply(502, f"Command '{name[:16]}' not implemented")
        if command.argument is Arg.NONE:
            if has_argument:
                return Reply(501, f"{name} takes no argument")
            result = command.handler(self)
        elif has_argument:
            result = command.handler(self, argument)
        elif command.argument is Arg.REQUIRED:
            return Reply(501, f"{name} requires an argument")
        else:
            result = command.handler(self, command.default)
        if hasattr(result, "__await__"):
            return ensureDeferred(result)
        return result

    def _send_result(self, result: Optional[Reply]) -> None:
        if result is not None:
            self.sendLine(result.response())

    def _send_failure(self, failure: Failure, command: str) -> None:
        self.sendLine(reply_for(failure, command).response())
