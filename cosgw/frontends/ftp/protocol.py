"""
The FTP frontend: a L{twisted.protocols.ftp.FTP} subclass over an
L{ObjectFileSystem}.

Twisted's FTP server is kept for its login states, reply table and command
dispatch; what it gets wrong for a gateway is replaced here (see
reference/twisted-conch-cos-facts.md section a):

  - PASV and EPSV answer at once instead of holding the control channel
    until the data connection arrives (Twisted #4819); the transfer command
    waits for it, with a timeout.
  - Data connections are our own L{DataChannel}: it reports *how* the
    connection ended, so a client's reset in the middle of an upload is an
    abort (426, no object), never a "226 Transfer complete" of a partial file
    as in Twisted's DTP; it does not buffer without limit before a consumer
    is attached; it only accepts a passive connection from the client's own
    address (no port stealing), and PORT/EPRT may only name the client's own
    address and an unprivileged port (no FTP bounce, RFC 2577).
  - Downloads and uploads stream through the file system's readers and
    uploads (L{cosgw.vfs}) with backpressure and the user's rates inside; listings stream page by page with a producer, so the first
    line goes out before the last page is fetched.
  - Commands and names are UTF-8 (RFC 2640) both ways; invalid UTF-8 gets a
    501 instead of a dropped connection; a line over the length limit gets a
    500 and the session goes on.
  - TYPE A is accepted and transfers bytes unchanged, as vsftpd does by
    default: an object store holds bytes, and rewriting line ends would make
    SIZE and REST lie.  (Twisted's ASCII mode crashes on Python 3, #9555.)

Errors from the file system reach the client through L{reply_for}, the one
place that maps them to reply codes.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Optional

from twisted.cred import error as cred_error
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import error as net_error
from twisted.internet import protocol
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols import ftp
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw import vfs
from cosgw.frontends.ftp.data import (
    DataChannel,
    DataChannelFactory,
    DataConnectionRefused,
    ListingSender,
    normal_host,
)
from cosgw.frontends.ftp.facts import (
    COMMAND_HELP,
    DEFAULT_FACTS,
    FACTS,
    SITE_HELP,
    feat_mlst,
    format_facts,
)
from cosgw.frontends.listing import format_list_line
from cosgw.interfaces import IReader, IUpload
from cosgw.policy.accounts import LoginRefused
from cosgw.policy.defender import LoginBanned, LoginDefender
from cosgw.policy.limits import ConnectionLimits

log = Logger()

#: Seconds a transfer command waits for its data connection.
DATA_CONNECTION_TIMEOUT = 30


# -- replies ----------------------------------------------------------------


class Reply(ftp.FTPCmdError):
    """A complete reply; raised by handlers, sent by the dispatcher."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    def response(self) -> bytes:
        return f"{self.code} {self.text}".encode()


def reply_for(failure: Failure, action: str = "") -> Reply:
    """
    The one place where file-system and transfer errors become FTP replies.
    Unexpected errors are logged with their traceback and shown to the
    client as a plain 451, never as a traceback.
    """
    e = failure.value
    if isinstance(e, Reply):
        return e
    if isinstance(e, vfs.InvalidName):
        return Reply(553, f"{e.path}: {e.message}")
    if isinstance(e, vfs.InvalidOffset):
        # RFC 3659 section 5.5: an invalid REST parameter.
        return Reply(554, f"{e.path}: {e.message}")
    if isinstance(e, (vfs.QuotaExceeded, vfs.FileTooLarge)):
        return Reply(552, f"{e.path}: {e.message}")
    if isinstance(e, vfs.StoreFailure):
        rid = f" (request {e.request_id})" if e.request_id else ""
        return Reply(451, f"{e.path}: {e.message}; try again later{rid}")
    if isinstance(e, vfs.FSError):
        return Reply(550, f"{e.path}: {e.message}")
    if isinstance(e, vfs.TransferStopped):
        return Reply(426, "Connection closed; transfer aborted")
    log.failure("unexpected error in {action}", failure, action=action or "FTP")
    return Reply(451, "Requested action aborted: local error in processing")


def _quote_path(path: str) -> str:
    """RFC 959 appendix II: a quote inside a quoted path is doubled."""
    return '"' + path.replace('"', '""') + '"'


#: Commands that run detached: the control channel keeps reading meanwhile.
TRANSFER_COMMANDS = frozenset({"RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"})
#: Commands answered at once while a transfer runs (RFC 959 4.1.3).
IMMEDIATE_COMMANDS = frozenset({b"ABOR", b"NOOP", b"STAT"})
#: Command lines kept while a transfer runs before reading stops.
MAX_QUEUED_LINES = 16
#: Seconds to wait after an upload's end of file before committing it, for
#: the control connection of a killed client to show it is gone.
EOF_GRACE = 0.02


def _strip_telnet(line: bytes) -> bytes:
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
    word = line.strip().upper()
    return word in IMMEDIATE_COMMANDS


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


def _parse_time(stamp: str) -> Optional[float]:
    """YYYYMMDDHHMMSS[.sss] in UTC (RFC 3659 time-val) to epoch seconds."""
    digits, _, fraction = stamp.partition(".")
    if len(digits) != 14 or not digits.isdigit():
        return None
    try:
        t = datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    extra = float("0." + fraction) if fraction.isdigit() else 0.0
    return t.timestamp() + extra


class ActiveTransfer:
    """
    The transfer a control connection is running.  ABOR, STAT and the loss
    of the control connection act on it; the transfer's coroutine reads
    C{aborted} and C{client_gone} to choose its reply and what to keep.
    """

    def __init__(self, command: str, argument: str) -> None:
        self.command = command
        self.argument = argument
        self.started = time.monotonic()
        self.aborted = False
        self.client_gone = False
        self.channel: Optional[DataChannel] = None
        self.waiting: Optional[Deferred[Any]] = None
        self.counter: Callable[[], int] = lambda: 0
        #: Lines sent after the transfer's own reply (ABOR's 226).
        self.after_reply: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def cancel(self, client_gone: bool) -> None:
        """Stop now: ABOR (C{client_gone} False) or the client went away."""
        if client_gone:
            self.client_gone = True
        else:
            self.aborted = True
        if self.waiting is not None and not self.waiting.called:
            self.waiting.cancel()
        if self.channel is not None:
            self.channel.abort()


# -- the shell (IFTPShell avatar) -------------------------------------------


@implementer(ftp.IFTPShell)
class FTPShell:
    """
    The avatar of a logged-in FTP user: Twisted's IFTPShell over the user's
    L{ObjectFileSystem}.  The protocol below uses the file system directly
    for streaming; this keeps the avatar usable by any IFTPShell client.
    """

    def __init__(self, fs: vfs.ObjectFileSystem, on_logout: Callable[[], None]):
        self.fs = fs
        self._on_logout = on_logout

    def logout(self) -> None:
        self._on_logout()

    def _ftp(self, d: Deferred[Any], action: str) -> Deferred[Any]:
        return d.addErrback(lambda f: Failure(reply_for(f, action)))

    def _call(
        self, action: str, f: Callable[..., Deferred[Any]], *args: Any
    ) -> Deferred[Any]:
        return self._ftp(maybeDeferred(f, *args), action)

    def makeDirectory(self, path: Sequence[str]) -> Deferred[None]:
        return self._call("MKD", self.fs.mkdir, path)

    def removeDirectory(self, path: Sequence[str]) -> Deferred[None]:
        return self._call("RMD", self.fs.rmdir, path)

    def removeFile(self, path: Sequence[str]) -> Deferred[None]:
        return self._call("DELE", self.fs.remove, path)

    def rename(self, fromPath: Sequence[str], toPath: Sequence[str]) -> Deferred[None]:
        return self._call("RNTO", self.fs.rename, fromPath, toPath)

    def access(self, path: Sequence[str]) -> Deferred[None]:
        return self._call("CWD", self.fs.require_directory, path)

    def stat(self, path: Sequence[str], keys: Sequence[str] = ()) -> Deferred[list]:
        def values(entry: vfs.Entry) -> list:
            return [self._value(entry, k) for k in keys]

        return self._call("STAT", self.fs.stat, path).addCallback(values)

    def list(self, path: Sequence[str], keys: Sequence[str] = ()) -> Deferred[list]:
        def values(entries: list[vfs.Entry]) -> list:
            return [(e.name, [self._value(e, k) for k in keys]) for e in entries]

        return self._call("LIST", self.fs.list_all, path).addCallback(values)

    def _value(self, entry: vfs.Entry, key: str) -> Any:
        from twisted.python.filepath import Permissions

        return {
            "size": entry.size,
            "directory": entry.is_dir,
            "permissions": Permissions(0o755 if entry.is_dir else 0o644),
            "hardlinks": 1,
            "modified": entry.mtime,
            "owner": self.fs.user,
            "group": self.fs.user,
        }[key]

    def openForReading(self, path: Sequence[str]) -> Deferred[Any]:
        return self._call("RETR", self.fs.open_reader, path).addCallback(_ReadFile)

    def openForWriting(self, path: Sequence[str]) -> Deferred[Any]:
        return self._call("STOR", self.fs.open_upload, path).addCallback(_WriteFile)


@implementer(ftp.IReadFile)
class _ReadFile:
    """Twisted's IReadFile over an open file, for IFTPShell users."""

    def __init__(self, reader: IReader):
        self.reader = reader

    def send(self, consumer: IConsumer) -> Deferred[int]:
        return self.reader.send(consumer)


@implementer(ftp.IWriteFile)
class _WriteFile:
    """
    Twisted's IWriteFile over an upload, for IFTPShell users: the object is
    committed by C{close}, which Twisted's STOR waits for before its 226.
    """

    def __init__(self, upload: IUpload):
        self.upload = upload

    def receive(self) -> Deferred[IUpload]:
        return succeed(self.upload)

    def close(self) -> Deferred[Any]:
        return self.upload.commit()


# -- the protocol -------------------------------------------------------------


class GatewayFTP(ftp.FTP):
    """
    One FTP control connection.  Handlers are C{ftp_<CMD>} as in Twisted;
    they may be coroutines, and return a L{Reply}, a Twisted reply tuple or
    None (when they replied themselves), or raise a L{Reply}.
    """

    _encoding = "utf-8"
    PUBLIC_COMMANDS = [
        "FEAT",
        "QUIT",
        "OPTS",
        "NOOP",
        "HELP",
        "CLNT",
        "AUTH",
        "PBSZ",
        "PROT",
        "CCC",
    ]
    #: HASH algorithms in FEAT order; the default is SHA-256.
    HASHES = ("SHA-256", "SHA-512", "SHA-1", "MD5", "CRC32")

    shell: Optional[FTPShell] = None
    _discarding = False

    def __init__(self) -> None:
        self._queued: deque[bytes] = deque()
        self._busy = False
        self._restart = 0
        self._allocated: Optional[int] = None
        self._facts = set(DEFAULT_FACTS)
        self._hash = "SHA-256"
        self._range: Optional[tuple[int, int]] = None
        #: RFC 4217 state: the control connection is encrypted, PBSZ was
        #: given, and the data protection level (C clear, P private).
        self._secure = False
        self._pbsz = False
        self._prot = "C"
        self.workingDirectory: list[str] = []
        self._data_factory: Optional[DataChannelFactory] = None
        self._data_port: Optional[IListeningPort] = None
        self._active: Optional[tuple[str, int]] = None
        self._transfer: Optional[ActiveTransfer] = None
        self._rename_from: Optional[list[str]] = None
        self.user: Optional[str] = None

    @property
    def reactor(self) -> Any:
        return self.factory.reactor

    @property
    def fs(self) -> vfs.ObjectFileSystem:
        assert self.shell is not None
        return self.shell.fs

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        if self.factory.implicit:
            # Implicit FTPS: TLS from the first byte, data private by default.
            self._secure, self._pbsz, self._prot = True, True, "P"
        self.state = self.UNAUTH
        self.peer = self.transport.getPeer()
        self.callLater = self.reactor.callLater
        _urgent_data_inline(self.transport)
        self.setTimeout(self._control_timeout())
        self.sendLine(f"220 {self.factory.welcomeMessage}")
        log.info("FTP connection from {peer}", peer=self.peer.host)

    def _control_timeout(self) -> Optional[float]:
        """Before login the login timeout applies, after it the idle one."""
        if self.state == self.AUTHED:
            return self.factory.timeOut
        return self.factory.login_timeout

    def timeoutConnection(self) -> None:
        if self.state == self.AUTHED:
            log.info(
                "FTP session of {user} from {peer} idle for {seconds} s: closed",
                user=self.user,
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
        self.disconnected = True
        self._close_data()
        self._queued.clear()
        if self._transfer is not None:
            # The client is gone: an upload is kept resumable, not committed.
            self._transfer.cancel(client_gone=True)
        self.setTimeout(None)
        if self.shell is not None:
            self.shell.logout()
        self.shell = None
        log.info(
            "FTP connection from {peer} closed (user {user})",
            peer=self.peer.host if hasattr(self, "peer") else "?",
            user=self.user,
        )

    # -- command lines ------------------------------------------------------
    #
    # One command runs at a time, as RFC 959 has it, except that a transfer
    # (RETR, STOR, LIST, ...) runs detached: while it does, ABOR, STAT and
    # NOOP are answered at once, and any other command waits in a short
    # queue (reading stops when the queue is full) until the transfer has
    # replied.  Twisted's FTP instead stops reading during a transfer, so
    # ABOR could never arrive (twisted-conch-cos-facts.md, a4).

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            # Drop the rest of an over-long line, up to its end.
            end = data.find(b"\n")
            if end == -1:
                return
            self._discarding = False
            data = data[end + 1 :]
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine("500 Command line too long")
        log.warn("over-long command line from {peer}", peer=self.peer.host)
        end = line.find(b"\n")
        if end == -1:
            self._discarding = True
        elif line[end + 1 :]:
            self.dataReceived(line[end + 1 :])

    def lineReceived(self, line: bytes) -> None:
        if self.disconnected:
            return  # after QUIT
        self.resetTimeout()
        line = _strip_telnet(line)
        if self._transfer is not None or self._queued or self._busy:
            if self._transfer is not None and _immediate(line):
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
                "{user}@{peer}> {line}", user=self.user, peer=self.peer.host, line=shown
            )
        transfer: Optional[ActiveTransfer] = None
        if self._transfer is not None:
            pass  # ABOR, STAT or NOOP during a transfer: no waiting
        elif command in TRANSFER_COMMANDS and self.state == self.AUTHED:
            transfer = self._transfer = ActiveTransfer(command, argument)
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
        self._transfer = None
        if not self.disconnected:
            self.setTimeout(self._control_timeout())
        self._drain()

    def _command_done(self) -> None:
        self._busy = False
        if not self.disconnected and self.paused:
            self.resumeProducing()
        self._drain()

    def _drain(self) -> None:
        """Run the commands that arrived during a transfer, in order."""
        while (
            self._queued
            and self._transfer is None
            and not self._busy
            and not self.disconnected
        ):
            self._execute(self._queued.popleft())
        if (
            not self._queued
            and not self._busy
            and not self.disconnected
            and self.paused
        ):
            self.resumeProducing()

    def _dispatch(self, command: str, argument: str, has_argument: bool) -> Any:
        if command in self.PUBLIC_COMMANDS:
            return self._call(command, argument, has_argument)
        if self.state == self.UNAUTH:
            if command == "USER":
                return self.ftp_USER(argument)
            if command == "PASS":
                return Reply(503, "Login with USER first")
            return Reply(530, "Please login with USER and PASS")
        if self.state == self.INAUTH:
            if command == "PASS":
                return self.ftp_PASS(argument)
            return Reply(503, "PASS required after USER")
        if self.state == self.RENAMING and command != "RNTO":
            self.state = self.AUTHED
            self._rename_from = None
        return self._call(command, argument, has_argument)

    def _call(self, command: str, argument: str, has_argument: bool) -> Any:
        method = getattr(self, "ftp_" + command, None)
        if method is None or not command.isalnum():
            return Reply(502, f"Command '{command[:16]}' not implemented")
        if has_argument:
            try:
                result = method(argument)
            except TypeError as e:
                if "positional argument" not in str(e):
                    raise
                return Reply(501, f"{command} takes no argument")
        else:
            try:
                result = method()
            except TypeError as e:
                if "positional argument" not in str(e):
                    raise
                return Reply(501, f"{command} requires an argument")
        if hasattr(result, "__await__"):
            return ensureDeferred(result)
        return result

    def _send_result(self, result: Any) -> None:
        if isinstance(result, Reply):
            self.sendLine(result.response())
        elif isinstance(result, tuple):
            self.reply(*result)
        elif isinstance(result, str):
            self.reply(result)

    def _send_failure(self, failure: Failure, command: str) -> None:
        if failure.check(Reply):
            self.sendLine(failure.value.response())
        elif failure.check(ftp.FTPCmdError):
            self.sendLine(failure.value.response())
        else:
            self.sendLine(reply_for(failure, command).response())

    # -- login --------------------------------------------------------------

    # -- FTPS (RFC 4217) -----------------------------------------------------

    def ftp_AUTH(self, mechanism: str = "") -> Optional[Reply]:
        if self.factory.tls is None:
            return Reply(502, "TLS is not configured")
        if self._secure:
            return Reply(503, "TLS is already in use")
        kind = mechanism.strip().upper()
        if kind not in ("TLS", "TLS-C", "SSL", "TLS-P"):
            return Reply(504, "Use AUTH TLS")
        self.sendLine(f"234 AUTH {kind} successful")
        # Everything after the 234 is TLS (the reply above went in clear).
        self.transport.startTLS(self.factory.tls.options)
        self._secure = True
        if kind in ("SSL", "TLS-P"):
            # The historical mechanisms also protect the data connections.
            self._pbsz, self._prot = True, "P"
        log.info("FTP connection from {peer} now uses TLS", peer=self.peer.host)
        return None

    def ftp_PBSZ(self, size: str = "") -> Reply:
        if not self._secure:
            return Reply(503, "PBSZ requires AUTH TLS first")
        if not size.strip().isdigit():
            return Reply(501, "PBSZ takes a number (0)")
        self._pbsz = True
        return Reply(200, "PBSZ=0")

    def ftp_PROT(self, level: str = "") -> Reply:
        if not self._pbsz:
            return Reply(503, "PROT requires PBSZ first")
        level = level.strip().upper()
        if level == "C":
            if self._tls_policy()[1]:
                return Reply(534, "Policy requires PROT P")
            self._prot = "C"
            return Reply(200, "Protection level set to Clear")
        if level == "P":
            self._prot = "P"
            return Reply(200, "Protection level set to Private")
        if level in ("S", "E"):
            return Reply(536, f"PROT {level} is not supported")
        return Reply(504, "PROT C or P")

    def ftp_CCC(self) -> Reply:
        # Going back to clear text would expose the session; Twisted's TLS
        # transports cannot do it anyway.
        return Reply(534, "CCC is not allowed")

    def ftp_REIN(self) -> Reply:
        """
        RFC 959 REIN: back to a new session (a transfer in progress finishes
        first: REIN waits its turn).  TLS stays on, since it cannot be
        stopped, but PBSZ and PROT must be given again.
        """
        if self.shell is not None:
            self.shell.logout()
        self.shell = None
        self.user = None
        self.state = self.UNAUTH
        self.workingDirectory = []
        self._restart = 0
        self._rename_from = None
        self._allocated = None
        self._range = None
        self._facts = set(DEFAULT_FACTS)
        self._hash = "SHA-256"
        self._close_data()
        if not self.factory.implicit:
            self._pbsz, self._prot = False, "C"
        return Reply(220, "Ready for a new user")

    def _tls_policy(self, user: Optional[str] = None) -> tuple[bool, bool]:
        """(TLS required on control, PROT P required) for this session."""
        return self.factory.tls_policy(user or self.user)

    # -- login --------------------------------------------------------------

    def ftp_USER(self, username: str = "") -> Reply:
        if not username:
            return Reply(501, "USER requires a user name")
        if not self._secure and self._tls_policy(username)[0]:
            log.info("refused a login in clear text from {peer}", peer=self.peer.host)
            return Reply(534, "Policy requires TLS: send AUTH TLS first")
        self._user = username
        self.state = self.INAUTH
        return Reply(331, "Password required")

    def ftp_PASS(self, password: str = "") -> Deferred[Reply]:
        username = self._user
        del self._user
        credentials = UsernamePassword(username, password)
        portal: Portal = self.factory.portal
        defender = self.factory.defender

        def login() -> Deferred[Any]:
            return portal.login(credentials, self.peer, ftp.IFTPShell)

        if defender is not None:
            d = defender.guard(self.peer.host, username, login)
        else:
            d = login()

        def ok(result: tuple[Any, FTPShell, Callable[[], None]]) -> Reply:
            _, shell, _ = result
            if self.disconnected:
                shell.logout()
                return Reply(421, "Connection closed")
            self.shell = shell
            self.user = shell.fs.user
            self.workingDirectory = []
            self.state = self.AUTHED
            self.setTimeout(self._control_timeout())
            log.info(
                "FTP login {user} from {peer}", user=self.user, peer=self.peer.host
            )
            return Reply(230, "Login successful")

        def refused(failure: Failure) -> Reply:
            failure.trap(
                cred_error.UnauthorizedLogin,
                cred_error.UnhandledCredentials,
                LoginRefused,
            )
            self.state = self.UNAUTH
            if failure.check(LoginBanned, LoginRefused):
                # Banned, or a rule refuses this user here or now: say why
                # and hang up (RFC 959: 421 service closing).
                self.reactor.callLater(0, self.transport.loseConnection)
                return Reply(421, str(failure.value))
            return Reply(530, "Login incorrect")

        return d.addCallbacks(ok, refused)

    # -- simple commands ----------------------------------------------------

    def ftp_NOOP(self, *ignored: str) -> Reply:
        return Reply(200, "NOOP ok")

    def ftp_SYST(self) -> Reply:
        return Reply(215, "UNIX Type: L8")

    def features(self) -> list[str]:
        """FEAT's lines (RFC 2389), every extension this server offers."""
        hashes = ";".join(h + ("*" if h == self._hash else "") for h in self.HASHES)
        return [
            "AUTH TLS",
            "CLNT",
            "EPRT",
            "EPSV",
            f"HASH {hashes}",
            "MDTM",
            "MFMT",
            feat_mlst(self._facts),
            "PASV",
            "PBSZ",
            "PROT",
            "RANG STREAM",
            "REST STREAM",
            "SIZE",
            "TVFS",
            "TYPE A;I",
            "UTF8",
        ]

    def ftp_FEAT(self) -> None:
        self.sendLine("211-Features:")
        for feature in self.features():
            self.sendLine(" " + feature)
        self.sendLine("211 End")

    def ftp_OPTS(self, option: str = "") -> Reply:
        name, _, value = option.strip().partition(" ")
        name = name.upper()
        words = value.upper().split()
        if name in ("UTF8", "UTF-8"):
            if words in ([], ["ON"]):
                return Reply(200, "UTF8 mode is always on")
            return Reply(504, "Only UTF8 mode is supported")
        if name == "MLST":
            # RFC 3659 7.9: select facts; unknown ones are ignored.
            wanted = {f.lower() for f in value.split(";") if f}
            self._facts = {f for f in FACTS if f.lower() in wanted}
            chosen = "".join(f + ";" for f in FACTS if f in self._facts)
            # RFC 3659 7.9.1: "MLST OPTS" [ SP 1*( factname ";" ) ]
            return Reply(200, f"MLST OPTS {chosen}".rstrip())
        if name == "HASH":
            if not words:
                return Reply(200, self._hash)
            algorithm = value.strip().upper()
            if algorithm not in self.HASHES:
                return Reply(
                    504, f"Unknown algorithm; use one of {', '.join(self.HASHES)}"
                )
            self._hash = algorithm
            return Reply(200, algorithm)
        return Reply(501, f"Option not understood: {option[:40]}")

    def ftp_HELP(self, command: str = "") -> Reply:
        if command:
            text = COMMAND_HELP.get(command.strip().upper())
            if text is None:
                return Reply(502, f"Unknown command {command.strip()[:16]}")
            return Reply(214, f"Syntax: {text}")
        self.sendLine("214-The following commands are recognized:")
        names = sorted(COMMAND_HELP)
        for i in range(0, len(names), 8):
            self.sendLine(" " + " ".join(f"{n:<8}" for n in names[i : i + 8]))
        return Reply(214, "Help OK")

    def ftp_CLNT(self, name: str = "") -> Reply:
        log.info("client {peer} says it is {name}", peer=self.peer.host, name=name[:80])
        return Reply(200, "Noted")

    def ftp_ALLO(self, size: str = "") -> Reply:
        """RFC 959 ALLO: no storage to reserve; the size sizes the parts."""
        words = size.split()
        if words and words[0].isdigit():
            self._allocated = int(words[0])
        return Reply(202, "No storage allocation necessary")

    async def ftp_SITE(self, command: str = "") -> Reply:
        sub, _, rest = command.strip().partition(" ")
        sub = sub.upper()
        if sub in ("", "HELP"):
            self.sendLine("214-SITE commands:")
            for text in SITE_HELP.values():
                self.sendLine(" " + text)
            return Reply(214, "Help OK")
        if sub == "CHMOD":
            mode, _, path = rest.strip().partition(" ")
            if not mode or not path:
                return Reply(501, "SITE CHMOD <mode> <path>")
            await self.fs.stat(self._resolve(path))
            return Reply(200, "SITE CHMOD accepted; object storage keeps no modes")
        if sub == "CRC64":
            entry = await self.fs.stat(self._resolve(rest.strip()))
            if entry.is_dir or entry.crc64 is None:
                return Reply(550, f"{rest.strip()}: no CRC-64 stored for this file")
            return Reply(213, f"{entry.crc64}")
        return Reply(502, f"SITE {sub[:16]} not implemented")

    async def ftp_MFMT(self, argument: str) -> Reply:
        """MFMT YYYYMMDDHHMMSS path (draft-somers-ftp-mfxx): set mtime."""
        stamp, _, path = argument.partition(" ")
        when = _parse_time(stamp)
        if when is None or not path:
            return Reply(501, "MFMT <YYYYMMDDHHMMSS> <path>")
        await self.fs.set_mtime(self._resolve(path), when)
        return Reply(213, f"Modify={stamp[:14]}; {path}")

    async def ftp_MLST(self, path: str = "") -> Reply:
        segments = self._resolve(path)
        entry = await self.fs.stat(segments)
        facts = format_facts(
            entry,
            self.fs.dir_prefix(segments) if entry.is_dir else self.fs.key(segments),
            self.fs.permissions,
            self._facts,
        )
        shown = vfs.display(segments)
        self.sendLine(f"250-Listing {shown}")
        self.sendLine(f" {facts} {shown}")
        return Reply(250, "End")

    def ftp_MLSD(self, path: str = "") -> Awaitable[Reply]:
        segments = self._resolve(path)
        facts = set(self._facts)

        def line(entry: vfs.Entry, fs: vfs.ObjectFileSystem, now: float) -> str:
            key = fs.dir_prefix(segments) + entry.name + ("/" if entry.is_dir else "")
            return f"{format_facts(entry, key, fs.permissions, facts)} {entry.name}"

        return self._list(path, line, mlsd=True)

    def ftp_RANG(self, argument: str) -> Reply:
        """RANG start end: the byte range of the next HASH (draft-bryan)."""
        words = argument.split()
        if len(words) != 2 or not all(w.isdigit() for w in words):
            return Reply(501, "RANG <start> <end>")
        start, end = int(words[0]), int(words[1])
        if (start, end) == (1, 0):
            self._range = None
            return Reply(350, "Range reset")
        if end < start:
            return Reply(501, "RANG end before start")
        self._range = (start, end)
        return Reply(350, f"Restarting at {start}. Ending byte {end}.")

    async def ftp_HASH(self, path: str) -> Reply:
        start, end = self._range or (0, None)
        self._range = None
        segments = self._resolve(path)
        digest, first, last = await self.fs.digest(segments, self._hash, start, end)
        return Reply(213, f"{self._hash} {first}-{last} {digest} {path}")

    async def _x_digest(self, algorithm: str, argument: str) -> Reply:
        """XCRC/XMD5/XSHA*: 'path [start end]', 250 and the bare digest."""
        words = argument.rsplit(" ", 2)
        start, end = 0, None
        if len(words) == 3 and words[1].isdigit() and words[2].isdigit():
            path, start, end = words[0], int(words[1]), int(words[2]) - 1
        else:
            path = argument
        path = path.strip('"')
        digest, _, _ = await self.fs.digest(self._resolve(path), algorithm, start, end)
        return Reply(250, digest.upper() if algorithm == "CRC32" else digest)

    def ftp_XCRC(self, argument: str) -> Awaitable[Reply]:
        return self._x_digest("CRC32", argument)

    def ftp_XMD5(self, argument: str) -> Awaitable[Reply]:
        return self._x_digest("MD5", argument)

    def ftp_XSHA1(self, argument: str) -> Awaitable[Reply]:
        return self._x_digest("SHA-1", argument)

    def ftp_XSHA256(self, argument: str) -> Awaitable[Reply]:
        return self._x_digest("SHA-256", argument)

    def ftp_TYPE(self, kind: str = "") -> Reply:
        words = kind.upper().split()
        if words in (["I"], ["L", "8"]):
            self.binary = True
            return Reply(200, "Type set to I")
        if words in (["A"], ["A", "N"]):
            self.binary = False
            return Reply(200, "Type set to A (bytes are transferred unchanged)")
        return Reply(504, f"Type not supported: {kind[:20]}")

    def ftp_QUIT(self) -> None:
        self.sendLine("221 Goodbye")
        self.disconnected = True
        self.transport.loseConnection()
        # Keep reading (commands after QUIT are ignored): a TLS close waits
        # for the client's close_notify, which a paused connection never
        # reads, so the connection would linger until the idle timeout.
        self.transport.resumeProducing()

    def ftp_XPWD(self) -> Reply:
        return self.ftp_PWD()

    def ftp_XCWD(self, path: str = "/") -> Awaitable[Reply]:
        return self.ftp_CWD(path)

    def ftp_XCUP(self) -> Awaitable[Reply]:
        return self.ftp_CDUP()

    def ftp_XMKD(self, path: str) -> Awaitable[Reply]:
        return self.ftp_MKD(path)

    def ftp_XRMD(self, path: str) -> Awaitable[Reply]:
        return self.ftp_RMD(path)

    def ftp_PWD(self) -> Reply:
        return Reply(
            257,
            f"{_quote_path(vfs.display(self.workingDirectory))} is the current directory",
        )

    def _resolve(self, path: str) -> list[str]:
        try:
            return vfs.resolve(self.workingDirectory, path)
        except vfs.InvalidName as e:
            raise Reply(553, f"{path}: {e.message}") from None

    async def ftp_CWD(self, path: str = "/") -> Reply:
        segments = self._resolve(path)
        await self.fs.require_directory(segments)
        self.workingDirectory = segments
        return Reply(250, f"Directory changed to {vfs.display(segments)}")

    def ftp_CDUP(self) -> Awaitable[Reply]:
        return self.ftp_CWD("..")

    async def ftp_SIZE(self, path: str) -> Reply:
        try:
            size = await self.fs.restart_size(self._resolve(path))
        except vfs.IsADirectory:
            raise Reply(550, f"{path}: not a plain file") from None
        return Reply(213, str(size))

    async def ftp_MDTM(self, path: str) -> Reply:
        entry = await self.fs.stat(self._resolve(path))
        if entry.is_dir:
            raise Reply(550, f"{path}: not a plain file")
        return Reply(213, time.strftime("%Y%m%d%H%M%S", time.gmtime(entry.mtime)))

    async def ftp_MKD(self, path: str) -> Reply:
        segments = self._resolve(path)
        await self.fs.mkdir(segments)
        return Reply(257, f"{_quote_path(vfs.display(segments))} created")

    async def ftp_RMD(self, path: str) -> Reply:
        await self.fs.rmdir(self._resolve(path))
        return Reply(250, "Directory removed")

    async def ftp_DELE(self, path: str) -> Reply:
        await self.fs.remove(self._resolve(path))
        return Reply(250, "File removed")

    async def ftp_RNFR(self, path: str) -> Reply:
        segments = self._resolve(path)
        self.fs.require("rename", segments)
        await self.fs.stat(segments)
        self._rename_from = segments
        self.state = self.RENAMING
        return Reply(350, "Ready for RNTO")

    async def ftp_RNTO(self, path: str) -> Reply:
        source, self._rename_from = self._rename_from, None
        self.state = self.AUTHED
        if source is None:
            raise Reply(503, "RNFR required first")
        await self.fs.rename(source, self._resolve(path))
        return Reply(250, "Rename successful")

    # -- data connection set-up ---------------------------------------------

    def _close_data(self) -> None:
        port, self._data_port = self._data_port, None
        if port is not None:
            port.stopListening()
        self._data_factory = None
        self._active = None

    def _listen(self, interface: str) -> IListeningPort:
        low, high = self.factory.passive_ports
        count = high - low + 1
        start = random.randrange(count)
        reactor: IReactorTCP = self.reactor
        for i in range(count):
            port = low + (start + i) % count
            try:
                return reactor.listenTCP(
                    port, self._wrapped(self._data_factory), interface=interface
                )
            except net_error.CannotListenError:
                continue
        raise Reply(425, "No passive port available; try again")

    def _new_data_factory(self, host: str) -> DataChannelFactory:
        return DataChannelFactory(
            host,
            tls=self._prot == "P",
            require_reuse=self.factory.tls_session_reuse,
            clock=self.reactor,
            stall_timeout=self.factory.stall_timeout,
        )

    def _wrapped(self, factory: DataChannelFactory) -> Any:
        """The factory to listen or connect with: TLS around it for PROT P."""
        if factory.tls:
            assert self.factory.tls is not None
            return self.factory.tls.wrap(factory)
        return factory

    def _passive(self) -> int:
        self._close_data()
        self._data_factory = self._new_data_factory(self.peer.host)
        host = self.transport.getHost().host
        self._data_port = self._listen(host)
        return self._data_port.getHost().port

    async def ftp_PASV(self) -> Reply:
        if self._epsvAll:
            return Reply(503, "PASV not allowed after EPSV ALL")
        address = await self._pasv_address()
        if address is None:
            return Reply(522, "PASV needs IPv4; use EPSV (1,2)")
        port = self._passive()
        numbers = ",".join(address.split(".") + [str(port >> 8), str(port & 0xFF)])
        return Reply(227, f"Entering Passive Mode ({numbers})")

    async def _pasv_address(self) -> Optional[str]:
        """
        The IPv4 address PASV announces: the masquerade address (resolved
        now, so a dynamic-DNS name follows its changes) or the address the
        client reached.  None when there is no IPv4 address to give.
        """
        name = self.factory.masquerade_address
        if name is None:
            name = normal_host(self.transport.getHost().host)
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            pass
        if self.factory.masquerade_address is None:
            return None
        try:
            resolved = await self.reactor.resolve(name, timeout=(2, 5))
            return str(ipaddress.IPv4Address(resolved))
        except Exception:
            log.failure("cannot resolve masquerade_address {name}", name=name)
            raise Reply(425, "Cannot determine the passive address") from None

    def ftp_EPSV(self, protocol_: str = "") -> Reply:
        if protocol_.upper() == "ALL":
            self._epsvAll = True
            return Reply(200, "EPSV ALL ok")
        family = "2" if ":" in normal_host(self.transport.getHost().host) else "1"
        if protocol_ and protocol_ != family:
            # RFC 2428 3: the listener must use the protocol asked for; this
            # connection only has the address family it arrived on.
            return Reply(522, f"Network protocol not supported, use ({family})")
        port = self._passive()
        return Reply(229, f"Entering Extended Passive Mode (|||{port}|)")

    def _set_active(self, host: str, port: int) -> Reply:
        if self._epsvAll:
            return Reply(503, "PORT and EPRT are not allowed after EPSV ALL")
        if normal_host(host) != normal_host(self.peer.host) or port < 1024:
            log.warn(
                "refused PORT to {host}:{port} from {peer}",
                host=host,
                port=port,
                peer=self.peer.host,
            )
            return Reply(
                504, "Data connections go only to your own address and a port >= 1024"
            )
        self._close_data()
        self._active = (host, port)
        return Reply(200, "PORT command successful")

    def ftp_PORT(self, address: str) -> Reply:
        try:
            numbers = [int(n) for n in address.split(",")]
            if len(numbers) != 6 or not all(0 <= n <= 255 for n in numbers):
                raise ValueError(address)
        except ValueError:
            return Reply(501, "Syntax error in PORT address")
        host = ".".join(str(n) for n in numbers[:4])
        return self._set_active(host, numbers[4] << 8 | numbers[5])

    def ftp_EPRT(self, address: str) -> Reply:
        try:
            protocol_, host, port = ftp.decodeExtendedAddress(address)
            ipaddress.ip_address(host)
            port = int(port)
        except (ValueError, IndexError):
            return Reply(501, "Syntax error in EPRT address")
        if protocol_ not in (1, 2, "1", "2"):
            return Reply(522, "Network protocol not supported, use (1,2)")
        return self._set_active(host, port)

    async def _data_channel(self, transfer: ActiveTransfer) -> DataChannel:
        """
        Wait for the data connection that PASV/EPSV announced, or open the
        one PORT/EPRT asked for; either way only for this one transfer.  ABOR
        (or the client leaving) cancels the wait.
        """
        factory = self._data_factory
        active = self._active
        port = self._data_port
        self._data_factory, self._data_port, self._active = None, None, None
        if self._prot != "P" and self._tls_policy()[1]:
            if port is not None:
                port.stopListening()
            raise Reply(521, "Data connections must be protected: send PROT P")
        if factory is None and active is None:
            raise Reply(425, "Use PASV, EPSV, PORT or EPRT first")
        if factory is not None and factory.tls != (self._prot == "P"):
            # PROT changed after PASV: the listener speaks the old level.
            if port is not None:
                port.stopListening()
            raise Reply(425, "PROT changed after PASV; send PASV again")
        if factory is None:
            assert active is not None
            factory = self._new_data_factory(active[0])
            self.reactor.connectTCP(
                active[0],
                active[1],
                self._wrapped(factory),
                timeout=self.factory.data_timeout,
            )
        d = factory.deferred
        d.addTimeout(self.factory.data_timeout, self.reactor)
        transfer.waiting = d
        try:
            channel = await d
        except Exception:
            if transfer.aborted or transfer.client_gone:
                raise vfs.TransferStopped(
                    "aborted before the data connection"
                ) from None
            raise Reply(425, "Can't open data connection") from None
        finally:
            transfer.waiting = None
            if port is not None:
                port.stopListening()
        transfer.channel = channel
        if transfer.aborted or transfer.client_gone:
            channel.abort()
            raise vfs.TransferStopped("aborted")
        return channel

    async def _channel_ready(self, channel: DataChannel) -> None:
        """
        After the 150: wait until data may flow (over TLS, the handshake,
        which clients start only now).  A policy refusal or a failed
        handshake is the transfer's final reply (522, RFC 4217).
        """
        ready = channel.ready()
        ready.addTimeout(self.factory.data_timeout, self.reactor)
        try:
            await ready
        except DataConnectionRefused as e:
            channel.abort()
            raise Reply(int(str(e)[:3]), str(e)[4:]) from None
        except Exception as e:
            channel.abort()
            raise Reply(
                522, f"TLS negotiation on the data connection failed: {e}"
            ) from None

    # -- transfers ------------------------------------------------------------

    def _take_restart(self) -> int:
        offset, self._restart = self._restart, 0
        return offset

    def ftp_REST(self, position: str) -> Reply:
        """RFC 3659 REST STREAM: the next RETR, STOR or APPE starts there."""
        if not position.isdigit():
            return Reply(501, "REST needs a byte offset")
        self._restart = int(position)
        return Reply(350, f"Restarting at {self._restart}; send RETR, STOR or APPE")

    def ftp_ABOR(self) -> Reply | None:
        """
        RFC 959 ABOR: during a transfer, close its data connection; the
        transfer replies 426, then ABOR replies 226.  An aborted upload
        leaves no object and is not kept for a resume.  With nothing
        running, 225.
        """
        transfer = self._transfer
        if transfer is None:
            return Reply(225, "No transfer to abort")
        transfer.after_reply.append("226 ABOR successful")
        transfer.cancel(client_gone=False)
        return None

    async def ftp_RETR(self, path: str) -> Reply:
        transfer = self._current_transfer()
        fs = self.fs  # the session may end before the transfer does
        offset = self._take_restart()
        segments = self._resolve(path)
        try:
            reader = await fs.open_reader(segments, offset)
        except Exception:
            self._close_data()
            raise
        try:
            channel = await self._data_channel(transfer)
        except BaseException:
            reader.close()
            raise
        self.sendLine(
            f"150 Opening BINARY mode data connection for {path} ({reader.length} bytes)"
        )
        try:
            await self._channel_ready(channel)
        except BaseException:
            reader.close()
            raise
        sending = reader.send(channel)
        transfer.counter = lambda: reader.sent
        try:
            sent = await sending
            end = await channel.closed()
            if end is not None:
                raise vfs.TransferStopped(str(end))
        except BaseException as e:
            channel.abort()
            log.info(
                "{user} RETR {path} failed after {sent} bytes: {error}",
                user=self.user,
                path=vfs.display(segments),
                sent=reader.sent,
                error=str(e),
            )
            if transfer.aborted:
                raise Reply(426, "Transfer aborted") from None
            raise
        finally:
            reader.close()
        log.info(
            "{user} RETR {path} {bytes} bytes from {offset} in {seconds:.2f}s",
            user=self.user,
            path=vfs.display(segments),
            bytes=sent,
            offset=offset,
            seconds=transfer.elapsed(),
        )
        return Reply(226, "Transfer complete")

    def ftp_STOR(self, path: str) -> Awaitable[Reply]:
        return self._store(path, offset=self._take_restart(), append=False)

    def ftp_APPE(self, path: str) -> Awaitable[Reply]:
        self._take_restart()
        return self._store(path, offset=0, append=True)

    def ftp_STOU(self, path: str = "") -> Awaitable[Reply]:
        """RFC 959 / 1123 4.1.2.9: store under a new unique name, told in 150."""
        self._take_restart()
        name = f"{path or 'file'}.{uuid.uuid4().hex[:12]}"
        return self._store(name, offset=0, append=False, unique=True)

    async def _store(
        self, path: str, offset: int, append: bool, unique: bool = False
    ) -> Reply:
        transfer = self._current_transfer()
        fs = self.fs  # the session may end before the transfer does
        segments = self._resolve(path)
        try:
            upload = await fs.open_upload(
                segments, offset=offset, append=append, size_hint=self._allocated
            )
        except Exception:
            self._close_data()
            raise
        finally:
            self._allocated = None
        transfer.counter = lambda: upload.received
        try:
            channel = await self._data_channel(transfer)
        except BaseException:
            await upload.abort()
            raise
        if unique:
            self.sendLine(f"150 FILE: {vfs.display(segments)}")
        else:
            self.sendLine(f"150 Ok to send data for {path} (from byte {upload.base})")
        try:
            await self._channel_ready(channel)
        except BaseException:
            await upload.abort()
            raise
        stopped: Optional[vfs.TransferStopped] = None
        try:
            # The upload pauses the channel for the store and the user's
            # rate, and stops it (the reply then says why) if the store fails.
            await channel.receive(upload)
        except vfs.TransferStopped as e:
            stopped = e
        if stopped is None and not transfer.client_gone:
            # A client killed mid-upload closes both connections at once, and
            # its data connection's end looks like an end of file.  Give the
            # control connection a moment to say whether the client is still
            # there before making the object visible.
            await deferLater(self.reactor, self.factory.eof_grace, lambda: None)
        if not upload.failed:
            if transfer.aborted:
                await upload.abort()
                log.info(
                    "{user} STOR {path} aborted by ABOR after {received} bytes",
                    user=self.user,
                    path=vfs.display(segments),
                    received=upload.received,
                )
                raise Reply(426, "Transfer aborted; nothing was stored")
            if stopped is not None or transfer.client_gone:
                kept = await upload.interrupt()
                hint = f"; {kept} bytes kept: resume with REST {kept}" if kept else ""
                raise Reply(426, f"Connection closed; transfer aborted{hint}")
        # After a store failure this raises it, translated.
        info = await upload.commit()
        log.info(
            "{user} STOR {path} {bytes} bytes ({received} sent) in {seconds:.2f}s "
            "(request {request_id})",
            user=self.user,
            path=vfs.display(segments),
            bytes=info.size,
            received=upload.received,
            seconds=transfer.elapsed(),
            request_id=info.request_id,
        )
        return Reply(226, "Transfer complete")

    async def _list(
        self, path: str, format_line: Callable[..., str], mlsd: bool = False
    ) -> Reply:
        transfer = self._current_transfer()
        if not mlsd:
            words = path.split()
            while words and words[0].startswith("-"):
                words.pop(0)  # ls options such as -la: ignored
            path = " ".join(words) if words else ""
        segments = self._resolve(path)
        fs = self.fs
        try:
            if mlsd and segments:
                entry = await fs.stat(segments)
                if not entry.is_dir:
                    # RFC 3659 7.2.1: MLSD lists directories only.
                    raise Reply(501, f"{path}: not a directory")
            listing = fs.listing(segments)
            first = await listing.next_page()
        except Exception:
            self._close_data()
            raise
        channel = await self._data_channel(transfer)
        self.sendLine("150 Here comes the directory listing")
        await self._channel_ready(channel)
        now = self.reactor.seconds()
        sender = ListingSender(
            listing, first or [], channel, lambda e: format_line(e, fs, now)
        )
        transfer.counter = lambda: sender.count
        try:
            await sender.start()
            end = await channel.closed()
            if end is not None:
                raise vfs.TransferStopped(str(end))
        except BaseException:
            channel.abort()
            if transfer.aborted:
                raise Reply(426, "Transfer aborted") from None
            raise
        return Reply(226, f"Directory send OK ({sender.count} entries)")

    def ftp_LIST(self, path: str = "") -> Awaitable[Reply]:
        return self._list(
            path, lambda e, fs, now: format_list_line(e, fs.permissions, fs.user, now)
        )

    def ftp_NLST(self, path: str = "") -> Awaitable[Reply]:
        return self._list(path, lambda e, fs, now: e.name)

    async def ftp_STAT(self, path: str = "") -> Optional[Reply]:
        """
        RFC 959 STAT.  During a transfer: its progress.  Without an argument:
        the session's status.  With a path: its listing, over the control
        connection (213), streamed page by page like LIST.
        """
        transfer = self._transfer
        if not path:
            lines = [
                "211-cosgw FTP gateway status:",
                f" Connected from {self.peer.host}",
                f" Logged in as {self.user}",
                f" TYPE: {'BINARY' if self.binary else 'ASCII (bytes unchanged)'}",
                f" REST offset: {self._restart}",
            ]
            if transfer is not None:
                lines.append(
                    f" Transfer in progress: {transfer.command} {transfer.argument}: "
                    f"{transfer.counter()} {'entries' if transfer.command in ('LIST', 'NLST', 'MLSD') else 'bytes'}"
                    f" in {transfer.elapsed():.1f}s"
                )
            else:
                lines.append(" No transfer in progress")
            for line in lines:
                self.sendLine(line)
            return Reply(211, "End of status")
        segments = self._resolve(path)
        listing = self.fs.listing(segments)
        page = await listing.next_page()
        now = self.reactor.seconds()
        self.sendLine(f"213-Status of {vfs.display(segments)}:")
        while page is not None:
            for entry in page:
                self.sendLine(
                    " "
                    + format_list_line(entry, self.fs.permissions, self.fs.user, now)
                )
            page = await listing.next_page()
        return Reply(213, "End of status")

    def _current_transfer(self) -> ActiveTransfer:
        assert self._transfer is not None, "a transfer command runs as a transfer"
        return self._transfer


class _OverflowFTP(protocol.Protocol):
    """Says why it hangs up when the server is full (RFC 959: 421)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def connectionMade(self) -> None:
        text = self.reason[:1].upper() + self.reason[1:]
        self.transport.write(f"421 {text}\r\n".encode())
        self.transport.loseConnection()


class GatewayFTPFactory(protocol.ServerFactory):
    """
    Builds the control connections.  Everything the protocol needs from the
    outside (reactor, portal, passive ports, NAT address, limits) is given
    here, never reached for.
    """

    protocol = GatewayFTP
    noisy = False
    #: Log every command line (passwords masked); set for log_level debug.
    trace_commands = False

    def __init__(
        self,
        portal: Portal,
        reactor: Any,
        passive_ports: tuple[int, int] = (61000, 61999),
        masquerade_address: Optional[str] = None,
        idle_timeout: int = 600,
        max_connections: Optional[int] = None,
        limits: Optional[ConnectionLimits] = None,
        defender: Optional[LoginDefender] = None,
        login_timeout: Optional[float] = 60,
        stall_timeout: Optional[float] = 120,
        welcome: str = "cosgw FTP gateway ready",
        data_timeout: float = DATA_CONNECTION_TIMEOUT,
        eof_grace: float = EOF_GRACE,
        tls: Optional[Any] = None,
        implicit: bool = False,
        tls_required: bool = False,
        tls_data_required: bool = False,
        tls_session_reuse: bool = False,
        user_tls: Optional[dict[str, tuple[Optional[bool], Optional[bool]]]] = None,
    ) -> None:
        """
        @param tls: A L{cosgw.tls.ServerTLS} for AUTH TLS and PROT P; None
            offers no FTPS.
        @param implicit: Connections arrive already in TLS (implicit FTPS).
        @param user_tls: Per user, (TLS required, PROT P required) where
            set, overriding the global policies.
        @param limits: connection limits shared with the gateway's other
            listeners; without, C{max_connections} counts this factory's.
        @param defender: the login defender shared with SFTP.
        @param stall_timeout: seconds a data connection may stall.
        """
        self.tls = tls
        self.implicit = implicit
        self.tls_required = tls_required
        self.tls_data_required = tls_data_required
        self.tls_session_reuse = tls_session_reuse
        self.user_tls = user_tls or {}
        self.data_timeout = data_timeout
        self.eof_grace = eof_grace
        self.portal = portal
        self.reactor: IReactorTime = reactor
        self.passive_ports = passive_ports
        self.masquerade_address = masquerade_address
        self.timeOut = idle_timeout
        self.login_timeout = login_timeout
        self.stall_timeout = stall_timeout
        self.defender = defender
        self.limits = limits or ConnectionLimits(max_total=max_connections)
        self.max_connections = max_connections
        self.welcomeMessage = welcome
        self.connections = 0

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        host = getattr(addr, "host", "")
        refusal = self.limits.open(host)
        if refusal is None and self.defender is not None:
            remaining = self.defender.banned(host)
            if remaining:
                self.limits.close(host)
                refusal = str(LoginBanned(remaining))
        if refusal is not None:
            p = _OverflowFTP(refusal)
            p.factory = self
            return p
        self.connections += 1
        return super().buildProtocol(addr)

    def connection_closed(self, host: str) -> None:
        """A control connection built by this factory has ended."""
        self.connections -= 1
        self.limits.close(host)

    def tls_policy(self, user: Optional[str]) -> tuple[bool, bool]:
        """(TLS required on control, PROT P required) for C{user}."""
        control, data = self.user_tls.get(user or "", (None, None))
        return (
            self.tls_required if control is None else control,
            self.tls_data_required if data is None else data,
        )
