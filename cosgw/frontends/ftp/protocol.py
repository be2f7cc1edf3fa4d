"""
One FTP control connection: lines in, replies out, one command at a time
through the dispatch table, transfers detached, and the login and idle
deadlines.

The protocol does not subclass Twisted's L{twisted.protocols.ftp.FTP} any
more: the gateway replaced all it offered (its login states by the
explicit L{Session}, its TypeError-sniffing dispatch by the table in
L{cosgw.frontends.ftp.commands}, its DTP by L{DataChannel}, its blocking
of the control channel during transfers by the queue below), and importing
it imports the global reactor.  What is left is Twisted's
L{LineReceiver} (lines, the line-length limit, pausing) and
L{TimeoutMixin} (deadlines on the injected clock).

Commands and names are UTF-8 (RFC 2640) both ways; invalid UTF-8 gets a
501 instead of a dropped connection; a line over the length limit gets a
500 and the session goes on.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from twisted.internet import protocol
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.logger import Logger
from twisted.protocols import basic, policies
from twisted.python.failure import Failure

from cosgw.frontends.ftp.commands import COMMANDS
from cosgw.frontends.ftp.context import Arg, Command
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

if TYPE_CHECKING:
    from cosgw.frontends.ftp.factory import GatewayFTPFactory

# One namespace for the whole frontend, as when it was one module.
log = Logger(namespace="cosgw.frontends.ftp")

#: Commands answered at once while a transfer runs (RFC 959 4.1.3).
IMMEDIATE_COMMANDS = frozenset({b"ABOR", b"NOOP", b"STAT"})
#: Command lines kept while a transfer runs before reading stops.
MAX_QUEUED_LINES = 16


def strip_telnet(line: bytes) -> bytes:
    """
    Remove Telnet commands (RFC 854) from a command line: clients send
    "IAC IP IAC DM" before an urgent ABOR (RFC 959 4.1.3), and a few send
    option negotiation.  0xFF never occurs in UTF-8, so nothing else is lost.
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


class GatewayFTP(
    LoginCommands,
    FileCommands,
    InfoCommands,
    HashCommands,
    PortCommands,
    TransferCommands,
    basic.LineReceiver,
    policies.TimeoutMixin,
):
    """
    One FTP control connection.  The handlers (C{ftp_<CMD>}) come from the
    mixins, one per concern; the table L{COMMANDS} says which handler a
    command runs, who may send it and whether it takes an argument.
    """

    commands: Mapping[str, Command] = COMMANDS
    factory: GatewayFTPFactory

    def __init__(self) -> None:
        self.session = Session()
        self.transfer: Optional[ActiveTransfer] = None
        #: Lines that arrived while a command or transfer ran.
        self._queued: deque[bytes] = deque()
        #: A command other than a transfer is running: reading is paused.
        self._busy = False
        #: The rest of an over-long line is being dropped.
        self._discarding = False
        #: What followed an over-long line in the same segment.
        self._after_long_line = b""

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        if self.factory.implicit:
            # Implicit FTPS: TLS from the first byte, data private by default.
            session = self.session
            session.secure, session.pbsz, session.prot = True, True, "P"
        self.peer = self.transport.getPeer()
        self.data = DataConnections(self.factory, self.peer.host)
        # TimeoutMixin's hook for another clock (it is a method there).
        self.callLater = self.reactor.callLater  # type: ignore[method-assign]
        _urgent_data_inline(self.transport)
        self.setTimeout(self.control_timeout())
        self.sendLine(f"220 {self.factory.welcomeMessage}")
        log.info("FTP connection from {peer}", peer=self.peer.host)

    def control_timeout(self) -> Optional[float]:
        """Before login the login timeout applies, after it the idle one."""
        if self.session.logged_in:
            return self.factory.timeOut
        return self.factory.login_timeout

    def timeoutConnection(self) -> None:
        if self.session.logged_in:
            log.info(
                "FTP session of {user} from {peer} idle for {seconds} s: closed",
                user=self.session.user,
                peer=self.peer.host,
                seconds=self.factory.timeOut,
            )
            self.sendLine("421 Idle timeout: closing the connection")
        else:
            log.info(
                "FTP connection from {peer} did not log in within {seconds} s: closed",
                peer=self.peer.host,
                seconds=self.factory.login_timeout,
            )
            self.sendLine("421 Login timeout: closing the connection")
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.connection_closed(self.peer.host)
        self.session.advance(Event.LOST)
        self.data.close()
        self._queued.clear()
        if self.transfer is not None:
            # The client is gone: an upload is kept resumable, not committed.
            self.transfer.cancel(client_gone=True)
        self.setTimeout(None)
        self.session.end_login()
        log.info(
            "FTP connection from {peer} closed (user {user})",
            peer=self.peer.host,
            user=self.session.user,
        )

    def sendLine(self, line: Union[str, bytes]) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8")
        super().sendLine(line)

    # -- command lines ------------------------------------------------------
    #
    # One command runs at a time, as RFC 959 has it, except that a transfer
    # (RETR, STOR, LIST, ...) runs detached: while it does, ABOR, STAT and
    # NOOP are answered at once, and any other command waits in a short
    # queue (reading stops when the queue is full) until the transfer has
    # replied.  Twisted's FTP instead stops reading during a transfer, so
    # ABOR could never arrive (twisted-conch-cos-facts.md, a4).

    def dataReceived(self, data: bytes) -> None:
        while True:
            if self._discarding:
                # Drop the rest of an over-long line, up to its end.
                end = data.find(b"\n")
                if end == -1:
                    return
                self._discarding = False
                data = data[end + 1 :]
            super().dataReceived(data)
            data, self._after_long_line = self._after_long_line, b""
            if not data:
                return

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine("500 Command line too long")
        log.warn("over-long command line from {peer}", peer=self.peer.host)
        end = line.find(b"\n")
        if end == -1:
            self._discarding = True
        else:
            # LineReceiver is still inside dataReceived, which would only
            # buffer what it is fed now, unread until more bytes arrive: the
            # loop in our dataReceived feeds it once LineReceiver returns.
            self._after_long_line = line[end + 1 :]

    def lineReceived(self, line: bytes) -> None:
        if self.session.over:
            return  # after QUIT
        self.resetTimeout()
        line = strip_telnet(line)
        if self.transfer is not None or self._queued or self._busy:
            if self.transfer is not None and _immediate(line):
                self._execute(line)
                return
            self._queued.append(line)
            if len(self._queued) >= MAX_QUEUED_LINES:
                self.pauseProducing()
            return
        self._execute(line)

    def _execute(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.sendLine("501 Command is not valid UTF-8")
            return
        command, _, argument = text.partition(" ")
        command = command.upper()
        if self.factory.trace_commands:
            shown = "PASS ****" if command == "PASS" else text
            log.debug(
                "{user}@{peer}> {line}",
                user=self.session.user,
                peer=self.peer.host,
                line=shown,
            )
        transfer: Optional[ActiveTransfer] = None
        if self.transfer is not None:
            pass  # ABOR, STAT or NOOP during a transfer: no waiting
        elif command in TRANSFER_COMMANDS and self.session.logged_in:
            transfer = self.transfer = ActiveTransfer(command, argument, self.reactor)
            self.setTimeout(None)
        else:
            self._busy = True
            self.pauseProducing()
        d = maybeDeferred(self._dispatch, command, argument, " " in text)
        d.addCallbacks(self._send_result, self._send_failure, errbackArgs=(command,))
        d.addErrback(lambda f: log.failure("replying to {command}", f, command=command))
        if transfer is not None:
            d.addBoth(lambda _: self._transfer_done(transfer))
        elif self._busy:
            d.addBoth(lambda _: self.reactor.callLater(0, self._command_done))

    def _transfer_done(self, transfer: ActiveTransfer) -> None:
        for reply in transfer.after_reply:
            self.sendLine(reply)
        self.transfer = None
        if not self.session.over:
            self.setTimeout(self.control_timeout())
        self._drain()

    def _command_done(self) -> None:
        self._busy = False
        if not self.session.over and self.paused:
            self.resumeProducing()
        self._drain()

    def _drain(self) -> None:
        """Run the commands that arrived during a transfer, in order."""
        while (
            self._queued
            and self.transfer is None
            and not self._busy
            and not self.session.over
        ):
            self._execute(self._queued.popleft())
        if (
            not self._queued
            and not self._busy
            and not self.session.over
            and self.paused
        ):
            self.resumeProducing()

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
