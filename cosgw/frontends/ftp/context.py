"""
What a command handler sees of its control connection, and how the
dispatch table describes a command.

Handlers are grouped by concern in mixins (login_commands, file_commands,
info_commands, hash_commands, ports, transfers) that L{GatewayFTP} combines;
they share the base L{CommandContext}, which names the one surface they may
use: the L{Session}, the factory's settings, the peer, the data
connections, the transfer running, and a few protocol methods.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred

from cosgw import vfs
from cosgw.audit import Session as AuditSession
from cosgw.frontends.ftp.encoding import REPLACEMENT, SessionEncoding, label
from cosgw.frontends.ftp.replies import Reply
from cosgw.frontends.ftp.session import Access, Session
from cosgw.interfaces import IFileSystem

if TYPE_CHECKING:
    from cosgw.frontends.ftp.factory import GatewayFTPFactory
    from cosgw.frontends.ftp.ports import DataConnections
    from cosgw.frontends.ftp.transfers import ActiveTransfer


class Arg(enum.Enum):
    """Whether a command takes an argument."""

    #: "CMD x" is answered "501 CMD takes no argument".
    NONE = "none"
    #: "CMD" alone gets the command's default.
    OPTIONAL = "optional"
    #: "CMD" alone is answered "501 CMD requires an argument".
    REQUIRED = "required"


#: A handler: called with the protocol, and the argument unless the
#: command takes none.  It returns a L{Reply}, None (it replied itself) or
#: an awaitable of either, or raises a L{Reply} or a file-system error.
Handler = Callable[..., Any]


@dataclass(frozen=True)
class Command:
    """One row of the dispatch table."""

    handler: Handler
    access: Access
    argument: Arg
    #: HELP's syntax line.
    syntax: str
    #: The argument given to an OPTIONAL command sent without one.
    default: str = ""


Peer = Union[IPv4Address, IPv6Address]


class CommandContext:
    """The part of a control connection that command handlers use."""

    factory: GatewayFTPFactory
    session: Session
    #: The audit session of this connection (see L{AuditedSession}).
    audit: AuditSession
    #: The client's address.
    peer: Peer
    #: A TCP or TLS transport: beyond ITransport, a producer with
    #: startTLS (explicit FTPS) and getHost.
    transport: Any
    #: The data connection prepared for the next transfer.
    data: DataConnections
    #: The transfer running (RETR, STOR, LIST, ...), if any.
    transfer: Optional[ActiveTransfer]
    #: The dispatch table (HELP lists it).
    commands: Mapping[str, Command]
    #: How this session's names are encoded.
    names: SessionEncoding

    if TYPE_CHECKING:
        # Given by TimeoutMixin and the protocol itself (GatewayFTP).
        def sendLine(self, line: Union[str, bytes]) -> None: ...

        def setTimeout(self, period: Optional[float]) -> Optional[float]: ...

        def control_timeout(self) -> Optional[float]: ...

        def start_login_deadline(self) -> None: ...

        def logged_in(self) -> None: ...

        def close_control(self) -> None: ...

        def end_reason(self, reason: str) -> None: ...

        def start_tls(self, options: Any) -> None: ...

        def replies_flushed(self) -> Deferred[None]: ...

    @property
    def reactor(self) -> Any:
        """The reactor the factory was given (a clock, TCP and a resolver)."""
        return self.factory.reactor

    @property
    def protection_required(self) -> bool:
        """
        Whether PROT P is required: as the rules were when the user logged
        in (a reload changes them for later logins only), or the listener's
        before a login.
        """
        if self.session.prot_required is not None:
            return self.session.prot_required
        return self.factory.tls_policy(None)[1]

    @property
    def fs(self) -> IFileSystem:
        """The logged-in user's file system."""
        fs = self.session.fs
        assert fs is not None, "only logged-in users reach the file system"
        return fs

    def resolve(self, path: str) -> list[str]:
        """
        C{path} (absolute, or relative to the working directory) as
        segments below the home.

        @raise Reply: 553, the name is not allowed; 550, it names a name
            shown with replacements (it may stand for several).
        """
        replaced = self.names.replaced_in(path)
        if replaced is not None:
            raise Reply(
                550,
                f"{path}: '{REPLACEMENT}' in {replaced} stands for characters"
                f" {label(self.names.codec)} cannot write; use a UTF-8 client",
            )
        try:
            return vfs.resolve(self.session.working_directory, path)
        except vfs.InvalidName as e:
            raise Reply(553, f"{path}: {e.message}") from None
