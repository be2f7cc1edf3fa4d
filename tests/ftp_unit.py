"""
The FTP frontend over test doubles, for protocol unit tests that need no
socket, no thread and no sleep.

Everything between the fakes is the real gateway, composed as
L{cosgw.service.makeService} and L{FTPFrontend} compose it: password
checker, login defender, connection limits, accounts and their file
systems, the realm (the session's file system registered as the FTP
avatar), portal and L{GatewayFTPFactory.from_config}.  Only the edges are
fakes:

  - the store is a L{MemoryStore}, whose Deferreds have fired already and
    which counts requests;
  - the reactor is a L{MemoryReactorClock}: time moves only when a test
    advances it, and C{listenTCP}/C{connectTCP} are recorded, not done, so a
    test builds the data connection from the factory PASV/EPSV listened
    with;
  - the thread pool runs its work inline (L{InlineThreads}), where the
    password checker and the accounts' runner would use pool threads;
  - each connection is a L{FakeTCP}: a StringTransport that behaves as
    Twisted's TCP transport does where the protocols depend on it (see its
    docstring).

FTPS is not wired (C{tls=None}: AUTH TLS is answered 502): TLS needs real
handshakes, which the end-to-end tests in tests/test_ftps.py make.

All the construction is in L{FTPGateway.__init__}, so that when the
frontend's composition changes only that method and the imports change.
(It builds the factory itself rather than an L{FTPFrontend}, which would
read or generate a certificate and listen on endpoints.)
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from twisted.cred.portal import Portal
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from cosgw.auth.passwords import PasswordChecker
from cosgw.auth.realm import Realm
from cosgw.config import ALL_PERMISSIONS, ServerConfig
from cosgw.frontends.ftp.data import DataChannelFactory
from cosgw.frontends.ftp.factory import GatewayFTPFactory
from cosgw.frontends.ftp.transfers import EOF_GRACE
from cosgw.interfaces import IFileSystem
from cosgw.policy.accounts import Account, Accounts
from cosgw.policy.defender import LoginDefender
from cosgw.policy.limits import ConnectionLimits, NetworkRule, SessionLimits
from cosgw.storage._runner import BlockingRunner
from cosgw.testing import MemoryStore
from cosgw.transfer import TransferSettings

KiB = 1024
MiB = 1024 * KiB

ALICE_PASSWORD = "alice-Passw0rd"
READER_PASSWORD = "reader-pass"
#: Users: name -> (plain-text password, permissions).
DEFAULT_USERS: Mapping[str, tuple[str, frozenset[str]]] = {
    "alice": (ALICE_PASSWORD, ALL_PERMISSIONS),
    "reader": (READER_PASSWORD, frozenset({"list", "download"})),
}
#: Small read chunks and parts, so that a test's transfer of a few hundred
#: KiB spans many writes, pauses and (with 1 MiB parts) parts.
UNIT_SETTINGS = TransferSettings(part_size=MiB, parts_in_flight=2, read_chunk=64 * KiB)

#: The gateway's address, as the client reaches it.
SERVER_HOST = "198.51.100.1"
CLIENT_HOST = "192.0.2.10"


class InlineThreads:
    """
    A thread pool and the reactor's C{callFromThread} in one, running the
    work at once on the caller's thread: C{deferToThreadPool(self, self, f)}
    returns a Deferred that has fired.
    """

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], None],
        f: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        try:
            result = f(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class ListeningPort:
    """A listener the gateway opened; it knows whether it was stopped."""

    def __init__(self, port: int, factory: Any, interface: str) -> None:
        self.port = port
        self.factory = factory
        self.interface = interface
        self.listening = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.interface or "0.0.0.0", self.port)

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        self.listening = False
        return succeed(None)


class GatewayReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose TCP listeners are L{ListeningPort}s, so
    tests see which passive listeners the gateway left open.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[ListeningPort] = []

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> ListeningPort:
        super().listenTCP(port, factory, backlog, interface)
        listener = ListeningPort(port, factory, interface)
        self.ports.append(listener)
        return listener

    def listening(self) -> list[ListeningPort]:
        """The listeners not stopped yet."""
        return [p for p in self.ports if p.listening]


class FakeTCP(StringTransport):
    """
    A StringTransport that ends and flows as Twisted's TCP transport does:

      - C{loseConnection} delivers C{connectionLost(ConnectionDone)} on a
        later reactor turn, C{abortConnection} C{ConnectionAborted}; what
        was written stays readable (as in the peer's socket buffer).  A
        producer still registered then is stopped (C{stopProducing}).
      - Bytes from the peer (L{receive}) are delivered only while the
        transport is producing: a paused protocol reads nothing, and what
        the peer sent waits, as in the socket's buffer.  The peer's clean
        close (L{peer_close}) waits behind them; a reset (L{peer_reset})
        does not.
      - With C{send_buffer} set, a write that leaves more than that many
        bytes unread pauses the registered producer, and L{read}, the peer
        reading, resumes it.
    """

    def __init__(
        self,
        clock: IReactorTime,
        host: IPv4Address,
        peer: IPv4Address,
        send_buffer: Optional[int] = None,
    ) -> None:
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)
        self._clock = clock
        self.protocol: Optional[IProtocol] = None
        self.send_buffer = send_buffer
        self._inbound: deque[Optional[bytes]] = deque()  # None: the peer's FIN
        self._delivering = False
        self._producer_paused = False
        self._end: Optional[type[Exception]] = None
        #: Why the connection ended, once the protocol was told.
        self.reason: Optional[Failure] = None

    def connect(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    @property
    def ended(self) -> bool:
        """Whether the protocol has had its C{connectionLost}."""
        return self.reason is not None

    # the peer's side

    def receive(self, data: bytes) -> None:
        """The peer sends C{data}: delivered now, or when reading resumes."""
        self._inbound.append(data)
        self._deliver()

    def peer_close(self) -> None:
        """The peer closes cleanly, after whatever it sent before."""
        self._inbound.append(None)
        self._deliver()

    def peer_reset(self) -> None:
        """The peer resets the connection: unread bytes are lost."""
        self._inbound.clear()
        self._lost(error.ConnectionLost)

    def read(self) -> bytes:
        """The peer reads all that was written so far."""
        data = self.value()
        self.clear()
        if self._producer_paused and self.producer is not None and not self.ended:
            self._producer_paused = False
            self.producer.resumeProducing()
        return data

    # the transport's side

    def write(self, data: bytes) -> None:
        if self.ended:
            return
        super().write(data)
        if (
            self.send_buffer is not None
            and self.producer is not None
            and not self._producer_paused
            and len(self.io.getvalue()) > self.send_buffer
        ):
            self._producer_paused = True
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self._deliver()

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        self._producer_paused = False

    def loseConnection(self) -> None:
        super().loseConnection()
        self._close(error.ConnectionDone)

    def abortConnection(self) -> None:
        self.disconnected = True
        self._inbound.clear()
        super().loseConnection()
        self._close(error.ConnectionAborted)

    def _close(self, end: type[Exception]) -> None:
        """End on the next turn; an abort overrides a clean close pending."""
        if self.ended:
            return
        pending = self._end is not None
        if not pending or end is error.ConnectionAborted:
            self._end = end
        if not pending:
            self._clock.callLater(0, self._closed)

    def _closed(self) -> None:
        assert self._end is not None
        self._lost(self._end)

    def _lost(self, end: type[Exception]) -> None:
        if self.ended:
            return
        self.connected = False
        self.reason = Failure(end())
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        assert self.protocol is not None
        self.protocol.connectionLost(self.reason)

    def _deliver(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        try:
            while (
                self._inbound
                and self.producerState == "producing"
                and not self.disconnecting
                and not self.ended
            ):
                data = self._inbound.popleft()
                assert self.protocol is not None
                if data is None:
                    self._lost(error.ConnectionDone)
                else:
                    self.protocol.dataReceived(data)
        finally:
            self._delivering = False


class DataClient:
    """The client's end of one data connection."""

    def __init__(self, gateway: FTPGateway, factory: DataChannelFactory, port: int):
        self.gateway = gateway
        self.factory = factory
        self.port = port
        self.transport: Optional[FakeTCP] = None
        self._received = bytearray()

    def connect(
        self, host: str = CLIENT_HOST, send_buffer: Optional[int] = 64 * KiB
    ) -> bool:
        """
        Connect from C{host}, as the listener would accept it.

        @return: Whether the gateway took the connection (False: refused).
        """
        peer = IPv4Address("TCP", host, 40000 + self.port % 1000)
        channel = self.factory.buildProtocol(peer)
        if channel is None:
            return False
        server = IPv4Address("TCP", SERVER_HOST, self.port)
        self.transport = FakeTCP(self.gateway.clock, server, peer, send_buffer)
        self.transport.connect(channel)
        self.gateway.pump()
        return True

    @property
    def _tcp(self) -> FakeTCP:
        assert self.transport is not None, "not connected"
        return self.transport

    def send(self, data: bytes) -> None:
        self._tcp.receive(data)
        self.gateway.pump()

    def close(self) -> None:
        """End the upload cleanly (FIN)."""
        self._tcp.peer_close()
        self.gateway.pump()

    def reset(self) -> None:
        self._tcp.peer_reset()
        self.gateway.pump()

    def read(self) -> bytes:
        """Read what has arrived; the gateway may send more meanwhile."""
        data = self._tcp.read()
        self.gateway.pump()
        self._received += data
        return data

    def read_all(self) -> bytes:
        """Read until the gateway stops sending; everything read so far."""
        while self.read():
            pass
        return bytes(self._received)

    @property
    def ended(self) -> bool:
        return self._tcp.ended

    @property
    def reason(self) -> Optional[Failure]:
        return self._tcp.reason


class ControlClient:
    """The client's end of a control connection: lines in, replies out."""

    def __init__(self, gateway: FTPGateway, protocol: Any, transport: FakeTCP):
        self.gateway = gateway
        self.protocol = protocol
        self.transport = transport

    def send_raw(self, data: bytes) -> None:
        """Send C{data} in one segment (one C{dataReceived})."""
        self.transport.receive(data)
        self.gateway.pump()

    def send(self, *lines: str) -> None:
        """Send C{lines}, pipelined in one segment."""
        self.send_raw(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))

    def replies(self) -> list[str]:
        """The reply lines sent since the last call."""
        data = self.transport.read().decode("utf-8")
        assert data == "" or data.endswith("\r\n"), data
        return data.split("\r\n")[:-1]

    def command(self, line: str) -> list[str]:
        """Send one command; every reply line it brought."""
        self.send(line)
        return self.replies()

    def login(self, user: str = "alice", password: str = ALICE_PASSWORD) -> None:
        assert self.command(f"USER {user}") == ["331 Password required"]
        assert self.command(f"PASS {password}") == ["230 Login successful"]

    def passive(self, command: str = "EPSV") -> DataClient:
        """Send EPSV (or PASV); the client side of the listener it opened."""
        (reply,) = self.command(command)
        if command == "PASV":
            match = re.fullmatch(
                r"227 Entering Passive Mode \((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)",
                reply,
            )
            assert match is not None, reply
            numbers = [int(n) for n in match.groups()]
            assert ".".join(map(str, numbers[:4])) == SERVER_HOST, reply
            port = numbers[4] << 8 | numbers[5]
        else:
            match = re.fullmatch(
                r"229 Entering Extended Passive Mode \(\|\|\|(\d+)\|\)", reply
            )
            assert match is not None, reply
            port = int(match.group(1))
        listener = self.gateway.clock.ports[-1]
        assert (listener.port, listener.interface) == (port, SERVER_HOST)
        assert listener.listening
        return DataClient(self.gateway, listener.factory, port)

    def close(self) -> None:
        """The client closes the control connection."""
        self.transport.peer_close()
        self.gateway.pump()

    @property
    def ended(self) -> bool:
        return self.transport.ended


class FTPGateway:
    """
    One gateway, FTP only, on a L{MemoryReactorClock} and a L{MemoryStore}.

    @ivar clock: the reactor; advance it to move time.
    @ivar store: the users' store.
    @ivar factory: the control-connection factory.
    @ivar logouts: the users whose sessions have ended, in order.
    """

    def __init__(
        self,
        users: Mapping[str, tuple[str, frozenset[str]]] = DEFAULT_USERS,
        settings: TransferSettings = UNIT_SETTINGS,
        **server_options: Any,
    ) -> None:
        """
        @param users: name -> (plain-text password, permissions).
        @param server_options: L{ServerConfig} fields over its defaults
            (login_timeout, idle_timeout, data_timeout, login_failure_delay,
            max_connections, ...), mapped as makeService maps them.
        """
        server = ServerConfig(state_dir=Path("/nonexistent"), **server_options)
        self.server = server
        self.clock = GatewayReactor()
        self.threads = InlineThreads()
        self.store = MemoryStore(self.clock)
        self.accounts = Accounts(
            {
                name: Account(
                    name=name, store=self.store, home="", permissions=permissions
                )
                for name, (_, permissions) in users.items()
            },
            settings,
            runner=BlockingRunner(self.threads, self.threads, 16),
            sessions=SessionLimits(),
        )
        self.defender = LoginDefender(
            self.clock,
            max_failures=server.login_max_failures,
            window=server.login_failure_window,
            ban_time=server.login_ban_time,
            base_delay=server.login_failure_delay,
        )
        self.limits = ConnectionLimits(
            max_total=server.max_connections,
            max_per_ip=server.max_connections_per_ip,
            network=NetworkRule(server.allowed_networks, server.denied_networks),
        )
        checker = PasswordChecker(
            {name: (password, False) for name, (password, _) in users.items()},
            self.threads,
            self.threads,
            clock=self.clock,
            failure_delay=0,  # the defender delays failed logins
        )
        realm = Realm()
        self.logouts: list[str] = []

        def session(avatar_id: str, mind: Any) -> tuple[Any, Callable[[], None]]:
            # The file system of a session, as FTPFrontend registers it;
            # its logout (which releases the session once) is recorded.
            fs, logout = self.accounts.session(avatar_id, mind)
            ended: list[bool] = []

            def recorded_logout() -> None:
                if not ended:
                    ended.append(True)
                    self.logouts.append(avatar_id)
                logout()

            return fs, recorded_logout

        realm.register(IFileSystem, session)
        self.factory = GatewayFTPFactory.from_config(
            server,
            Portal(realm, [checker]),
            self.clock,
            limits=self.limits,
            defender=self.defender,
            tls=None,
        )

    def pump(self) -> None:
        """Run what the reactor would run now (zero-delay calls)."""
        self.clock.advance(0)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def connect(
        self,
        host: str = CLIENT_HOST,
        port: int = 50001,
        send_buffer: Optional[int] = None,
        transport_class: type[FakeTCP] = FakeTCP,
    ) -> ControlClient:
        """
        A client connects; its control connection, greeting unread.

        @param send_buffer: replies left unread beyond which the transport
            pauses the protocol (as TCP's send buffer does); None, never.
        """
        peer = IPv4Address("TCP", host, port)
        protocol = self.factory.buildProtocol(peer)
        transport = transport_class(
            self.clock, IPv4Address("TCP", SERVER_HOST, 21), peer, send_buffer
        )
        transport.connect(protocol)
        self.pump()
        return ControlClient(self, protocol, transport)

    def login(
        self,
        user: str = "alice",
        password: str = ALICE_PASSWORD,
        host: str = CLIENT_HOST,
        port: int = 50001,
    ) -> ControlClient:
        """A client connected and logged in, its replies so far read."""
        client = self.connect(host, port)
        assert client.replies() == ["220 cosgw FTP gateway ready"]
        client.login(user, password)
        return client


class GatewayTestCase(unittest.TestCase):
    """A fresh L{FTPGateway} per test, and the steps most tests take."""

    def setUp(self) -> None:
        self.gw = FTPGateway()
        self.store = self.gw.store

    def login(self) -> ControlClient:
        return self.gw.login()

    def start_stor(
        self, client: ControlClient, name: str, from_byte: int = 0
    ) -> DataClient:
        data = client.passive()
        self.assertTrue(data.connect())
        self.assertEqual(
            client.command(f"STOR {name}"),
            [f"150 Ok to send data for {name} (from byte {from_byte})"],
        )
        return data

    def finish_upload(self, client: ControlClient, data: DataClient) -> list[str]:
        """Close the upload; the replies once the end-of-file grace passed."""
        data.close()
        self.assertEqual(client.replies(), [], "no reply before the grace period")
        self.gw.advance(EOF_GRACE)
        return client.replies()

    def assertSameBytes(self, got: bytes, expected: bytes) -> None:
        """Compare by length and digest: a diff of megabytes helps no one."""
        self.assertEqual(
            (len(got), hashlib.sha256(got).hexdigest()),
            (len(expected), hashlib.sha256(expected).hexdigest()),
        )

    def assertNothingLeft(self) -> None:
        """No passive listener open, no multipart upload, no open source."""
        self.assertEqual(self.gw.clock.listening(), [])
        self.assertEqual(self.store.stored_uploads(), [])
        self.assertEqual(self.store.open_sources, 0)
