"""
The SSH server transport, one per TCP connection, and its life as an
explicit state table (L{_State}, L{_TRANSITIONS}).

What it changes in Conch's:

  - Algorithms: only those of L{cosgw.frontends.sftp.algorithms}, with
    the AEAD ciphers and strict key exchange of
    L{cosgw.frontends.sftp.packets}.
  - server-sig-algs (RFC 8308).  Conch advertises the *host key*
    algorithms as the algorithms it accepts for *user* keys, so a server
    with only an Ed25519 host key would tell OpenSSH clients that RSA user
    keys are unusable.  The transport advertises what
    L{cosgw.auth.keys.KeyChecker} accepts instead.
  - The version string names no Twisted version: C{SSH-2.0-cosgw}.
  - A disconnect closes only our side and reads on until the client closes:
    Conch closes the socket at once, so a client whose packet was in flight
    gets a reset and never reads the reason (the refusal of admission, a
    ban, a timeout).
  - Time limits.  Conch's login timeout is 10 hours (its comment says 10
    minutes), starts only when the client asks for C{ssh-userauth}, and runs
    on the global reactor.  Here the transport owns the login deadline from
    the moment the TCP connection is made (a client stalled in the version
    or key exchange is bounded too), an idle deadline after login, and every
    timer runs on the injected reactor.
  - Admission.  The transport asks the shared connection limits
    (L{cosgw.policy.limits.ConnectionLimits}) before anything else and gives
    the slot back exactly once when the connection ends.  Behind a PROXY
    listener (L{cosgw.frontends.proxied}) the transport is connected only
    once the header is read: its peer is the header's client, and its
    version line follows the header.
  - TCP_NODELAY, as OpenSSH's client sets on its side.
  - Input.  Conch appends every TCP read to its buffer (C{buf = buf +
    data}), so a packet arriving in small pieces costs its length squared,
    and it accepts packets of up to 1 MiB.  Here reads wait in a
    L{ChunkQueue} until Conch's next packet is complete, and a packet
    longer than L{MAX_PACKET_LENGTH} (OpenSSH's limit) ends the connection
    as soon as its length is known.
  - Backpressure.  The SFTP sessions on the connection hold its input
    (L{GatewaySSHTransport.hold_input}: the socket is not read while any
    holds it) and learn when the TCP transport's own buffer is over its
    limit (L{GatewaySSHTransport.output_full}); see
    L{cosgw.frontends.sftp.flow}.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union, cast

from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.escaping import for_log
from cosgw.frontends.sftp.aead import AEAD_CIPHERS
from cosgw.frontends.sftp.algorithms import (
    CIPHERS,
    KEY_EXCHANGES,
    MACS,
    SIGNATURE_ALGORITHMS,
    describe,
    keep,
)
from cosgw.frontends.sftp.audited import AuditedConnection, disconnect_text
from cosgw.frontends.sftp.conchlog import ConchLogger
from cosgw.frontends.sftp.flow import ChunkQueue, OutputWatch
from cosgw.frontends.sftp.packets import PacketLayer

if TYPE_CHECKING:
    from cosgw.audit import Session
    from cosgw.frontends.sftp.factory import GatewaySSHFactory

__all__ = ["MAX_PACKET_LENGTH", "GatewaySSHTransport"]

log = Logger(namespace="cosgw.ssh")

#: Seconds a disconnecting client gets to read our DISCONNECT before the
#: socket is aborted: a peer that never reads must not hold the connection.
_DISCONNECT_GRACE = 10.0

#: The longest SSH packet accepted (its packet_length field), as OpenSSH's
#: PACKET_MAX_SIZE; Conch allows 1 MiB.  Channel data comes in packets of
#: at most 32 KiB (the maximum packet size we announce), and nothing else
#: a client sends legitimately is larger than a few KiB.
MAX_PACKET_LENGTH = 256 * 1024

#: Received bytes are handed to Conch in pieces of at least this size (or
#: the rest of the packet it waits for): Conch cuts each packet off the
#: front of its buffer, so a piece holding many small packets costs its
#: length times their number.
_FEED = 16 * 1024


class _FlowControlled(Protocol):
    """What a TCP transport offers for flow control (IConsumer, IPushProducer)."""

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


def _peer_text(address: Any) -> str:
    """The peer's host as text (its IP for TCP)."""
    return str(getattr(address, "host", address))


class _State(enum.Enum):
    """
    A connection's life.  Each state but LOST owns one timer, armed on
    entry and cancelled on exit.
    """

    #: Connected and admitted, not yet authenticated; timer: the login
    #: deadline (from the TCP connection, not from ssh-userauth).
    LOGGING_IN = "logging in"
    #: Authenticated; timer: the idle deadline (none if idle_timeout is None).
    LOGGED_IN = "logged in"
    #: DISCONNECT sent, our side closed, input discarded; timer: the abort of
    #: a peer that does not close its side.
    CLOSING = "closing"
    #: The socket is gone.
    LOST = "lost"


#: The transitions L{GatewaySSHTransport} may make.
_TRANSITIONS: dict[_State, frozenset[_State]] = {
    _State.LOGGING_IN: frozenset({_State.LOGGED_IN, _State.CLOSING, _State.LOST}),
    _State.LOGGED_IN: frozenset({_State.CLOSING, _State.LOST}),
    _State.CLOSING: frozenset({_State.LOST}),
    _State.LOST: frozenset(),
}


class GatewaySSHTransport(AuditedConnection, PacketLayer, transport.SSHServerTransport):
    """
    The server transport: modern algorithms only (AEAD ciphers and strict
    key exchange from L{PacketLayer}), a version string without a Twisted
    version, admission, and the login, idle and closing deadlines of
    L{_State}.
    """

    _log = ConchLogger(namespace="twisted.conch.ssh.transport")

    factory: GatewaySSHFactory

    version = b"cosgw"
    comment = b""
    ourVersionString = (
        b"SSH-" + transport.SSHServerTransport.protocolVersion + b"-cosgw"
    )

    supportedCiphers = keep(
        [*transport.SSHServerTransport.supportedCiphers, *AEAD_CIPHERS], CIPHERS
    )
    supportedMACs = keep(transport.SSHServerTransport.supportedMACs, MACS)
    supportedKeyExchanges = keep(
        transport.SSHServerTransport.supportedKeyExchanges, KEY_EXCHANGES
    )
    supportedPublicKeys = keep(
        transport.SSHServerTransport.supportedPublicKeys, SIGNATURE_ALGORITHMS
    )
    supportedCompressions = [b"none"]

    #: The user-key signature algorithms advertised in server-sig-algs.
    userKeyAlgorithms: list[bytes] = list(supportedPublicKeys)

    max_packet_length = MAX_PACKET_LENGTH

    peer = "?"
    _state = _State.LOGGING_IN
    _timer: Optional[IDelayedCall] = None
    _lost_waiters: Optional[list[defer.Deferred[None]]] = None
    #: Admission counted this connection: close it exactly once.
    _admitted = False
    _last_received = 0.0
    #: The TCP transport's buffer is over its limit (its producer, the
    #: L{OutputWatch}, is paused).
    output_full = False
    _write_side: Optional[OutputWatch] = None
    #: The connection's audit session, once admitted.
    audit: Optional[Session] = None

    @property
    def _clock(self) -> IReactorTime:
        return self.factory.reactor

    @property
    def _socket(self) -> ITCPTransport:
        # Conch types its transport as an optional ITransport; under this
        # protocol it is the connection's TCP (or TLS) transport, set from
        # connectionMade on.
        return cast(ITCPTransport, self.transport)

    @property
    def _stream(self) -> _FlowControlled:
        # The TCP transport as the consumer of our output and the producer
        # of our input.
        return cast(_FlowControlled, self.transport)

    @property
    def username(self) -> Optional[str]:
        """The logged-in user's name, or None before login."""
        return getattr(getattr(self, "avatar", None), "username", None)

    @property
    def input_waiting(self) -> int:
        """Bytes received and not yet taken as packets."""
        return len(self._inbox) + len(self.buf)

    @property
    def connection_lost(self) -> bool:
        """The socket is gone."""
        return self._state is _State.LOST

    def login_allowed(self) -> bool:
        """A login completing now may take this connection."""
        return self._state is _State.LOGGING_IN

    def when_lost(self) -> defer.Deferred[None]:
        """A L{Deferred} that fires with None once the socket is gone."""
        if self._state is _State.LOST:
            return defer.succeed(None)
        if self._lost_waiters is None:
            self._lost_waiters = []
        d: defer.Deferred[None] = defer.Deferred()
        self._lost_waiters.append(d)
        return d

    def _enter(
        self,
        state: _State,
        delay: Optional[float] = None,
        action: Optional[Callable[[], Any]] = None,
    ) -> None:
        """Move to C{state}, cancelling the old state's timer, arming the new."""
        if state not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"SSH transport: {self._state.value} -> {state.value}")
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._state = state
        if delay is not None and action is not None:
            self._timer = self._clock.callLater(delay, action)

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = _peer_text(self._socket.getPeer())
        self._inbox = ChunkQueue()
        self._input_holds: set[object] = set()
        self._input_feeds: set[object] = set()
        self._output_watchers: list[Callable[[], None]] = []
        super().connectionMade()
        self._write_side = OutputWatch(self)
        self._stream.registerProducer(self._write_side, True)
        if hasattr(self.transport, "setTcpNoDelay"):
            # SFTP's replies to writes are small packets: with Nagle one
            # waited for the client's delayed ACK of the one before, and an
            # upload stalled (OpenSSH: 80-120 MB/s in some runs instead of
            # 300-400).  Writes of one reactor turn still leave together.
            self._socket.setTcpNoDelay(True)
        if self.factory.refusing is not None:
            # The gateway drains: the reason, the listening socket still open.
            self.factory.refused += 1
            self.sendDisconnect(
                transport.DISCONNECT_BY_APPLICATION, self.factory.refusing
            )
            return
        admission = self.factory.admission
        if admission is not None:
            try:
                refusal = admission.open(self.peer, self._refused_later)
            except Exception:
                log.failure("Admission check failed for {peer}", peer=self.peer)
                refusal = "service unavailable"
            if refusal is not None:
                # The admission policy logs its refusals.
                self.sendDisconnect(transport.DISCONNECT_TOO_MANY_CONNECTIONS, refusal)
                return
            self._admitted = True
        port = getattr(self._socket.getPeer(), "port", 0)
        self.audit = self.factory.sessions.open(
            "sftp", self.peer, port, self.kick, self.status_of
        )
        self.audit.drain = self.drain
        self._timer = self._clock.callLater(
            self.factory.login_timeout, self._login_timed_out
        )

    def _refused_later(self, reason: str) -> None:
        """The cluster's count refused this connection after all."""
        if not self._closing():
            self.end_reason(f"refused: {reason}")
            self.sendDisconnect(transport.DISCONNECT_TOO_MANY_CONNECTIONS, reason)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._enter(_State.LOST)
        self.factory.connections.discard(self)
        self._inbox.clear()
        self._input_holds.clear()
        self._output_watchers = []
        self._write_side = None
        try:
            super().connectionLost(reason)
        finally:
            waiters, self._lost_waiters = self._lost_waiters or [], None
            for d in waiters:
                d.callback(None)
            if self._admitted:
                self._admitted = False
                try:
                    self.factory.admission.close(self.peer)
                except Exception:
                    log.failure("Admission close failed for {peer}", peer=self.peer)
            if self.audit is not None:
                lost = "connection lost"
                if reason is not None and reason.check(ConnectionDone):
                    lost = "connection closed by the client"
                self.factory.sessions.close(self.audit, self.close_reason or lost)

    def dataReceived(self, data: bytes) -> None:
        """
        Hand Conch whole packets (see L{_FEED}): what arrives waits in a
        L{ChunkQueue} until the packet Conch is reading is complete.  With
        an AEAD cipher (once Conch's own buffer is empty), packets are read
        from the queue and dispatched here instead.
        """
        if self._closing():
            return  # disconnecting: whatever the client still sends is moot
        self._last_received = self._clock.seconds()
        if not self.gotVersion:
            super().dataReceived(data)
            self._check_packet_length()
            return
        self._inbox.append(data)
        while self._inbox and not self._closing():
            opener = getattr(self.currentEncryptions, "opener", None)
            if opener is not None and not self.buf:
                # AEAD: packets straight from the queue (L{read_sealed}).
                payload = self.read_sealed(opener, self._inbox)
                if payload is None:
                    if self._closing():
                        self._inbox.clear()
                    return
                self.dispatchMessage(payload[0], payload[1:])
                continue
            needed = self.bytes_needed()
            if len(self._inbox) < needed:
                return
            super().dataReceived(self._inbox.take(max(needed, _FEED)))
            if not self._check_packet_length():
                return

    def _closing(self) -> bool:
        return self._state in (_State.CLOSING, _State.LOST)

    def _check_packet_length(self) -> bool:
        """
        Disconnect a client whose next packet is longer than
        L{MAX_PACKET_LENGTH}, as soon as its length is known, rather than
        buffer it.
        """
        length = self.packet_length()
        if length is None or self._closing():
            return not self._closing()
        if length <= MAX_PACKET_LENGTH:
            return True
        self._inbox.clear()
        self.sendDisconnect(
            transport.DISCONNECT_PROTOCOL_ERROR,
            f"bad packet length {length} (the limit is {MAX_PACKET_LENGTH})",
        )
        return False

    # -- backpressure ---------------------------------------------------------

    def hold_input(self, holder: object, on: bool) -> None:
        """
        C{holder} asks to stop (C{on}) or no longer stop reading the
        connection; the socket is read while nobody holds it, or somebody
        feeds it (L{feed_input}).  Packets already received are still
        handed on.
        """
        self._input_change(self._input_holds, holder, on)

    def feed_input(self, feeder: object, on: bool) -> None:
        """
        C{feeder} needs the connection read (C{on}) whatever others hold: an
        upload of one of its files holds its turn in the upload buffer
        budget and waits for its bytes, which another file's hold would keep
        out for ever (that file waits for the budget).  A channel whose
        session takes no more requests meanwhile gives its client no more
        window, which bounds what that client sends.
        """
        self._input_change(self._input_feeds, feeder, on)

    def _input_change(self, which: set[object], who: object, on: bool) -> None:
        if self._closing():
            return
        before = bool(self._input_holds) and not self._input_feeds
        if on:
            which.add(who)
        else:
            which.discard(who)
        stopped = bool(self._input_holds) and not self._input_feeds
        if stopped != before:
            if stopped:
                self._stream.pauseProducing()
            else:
                self._stream.resumeProducing()

    def watch_output(self, watcher: Callable[[], None]) -> None:
        """Call C{watcher} whenever L{output_full} changes."""
        self._output_watchers.append(watcher)

    def unwatch_output(self, watcher: Callable[[], None]) -> None:
        if watcher in self._output_watchers:
            self._output_watchers.remove(watcher)

    def output_changed(self, full: bool) -> None:
        """The TCP transport's buffer went over its limit, or emptied."""
        if full == self.output_full:
            return
        self.output_full = full
        for watcher in list(self._output_watchers):
            watcher()

    def output_room(self) -> Optional[int]:
        """
        The bytes that may still be written before the TCP transport's
        buffer counts as full (L{OutputWatch.room}); None without a watch
        (the connection is closing).
        """
        return None if self._write_side is None else self._write_side.room()

    def release_write_side(self) -> None:
        """
        Stop being the TCP transport's producer.  A transport closing while
        its producer is paused resumes the producer instead of closing, and
        then never closes; so this comes before any close.
        """
        if self._write_side is not None:
            self._write_side = None
            self._stream.unregisterProducer()

    def sendDisconnect(self, reason: int, desc: Union[bytes, str]) -> None:
        """
        Send DISCONNECT, then close our side only and discard what the client
        still sends until it closes too; abort the socket if it has not
        within L{_DISCONNECT_GRACE} seconds.  Every disconnect, Conch's own
        included, comes through here.

        Conch closes the socket at once instead: the client's next packet
        (OpenSSH's KEXINIT, sent while ours are in flight) then meets a
        reset and the client dies of "Broken pipe" without reading the
        reason.
        """
        if self._closing():
            return
        self._enter(_State.CLOSING, _DISCONNECT_GRACE, self._abort)
        if self._input_holds:
            # Read on, to see the client close.
            self._input_holds.clear()
            self._stream.resumeProducing()
        self.release_write_side()
        if isinstance(desc, str):
            # Conch itself passes str in places (its ML-KEM checks).
            desc = desc.encode("utf-8")
        self.sendPacket(
            transport.MSG_DISCONNECT, struct.pack(">L", reason) + NS(desc) + NS(b"")
        )
        self.end_reason(disconnect_text(desc))
        self.disconnect_sent = reason
        # The session-close audit event says why, at info.
        log.debug(
            "SSH connection from {peer} disconnected: code {code}, {description}",
            peer=self.peer,
            code=reason,
            description=for_log(desc.decode("utf-8", "replace")),
        )
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        else:
            self._socket.loseConnection()

    def _abort(self) -> None:
        self._timer = None
        log.info(
            "SSH connection from {peer} did not close after DISCONNECT; aborting",
            peer=self.peer,
        )
        self._socket.abortConnection()

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        # Conch sends its host-key algorithms as server-sig-algs; the RFC 8308
        # extension lists the algorithms accepted for user authentication.
        super().sendExtInfo(
            [
                (
                    name,
                    b",".join(self.userKeyAlgorithms)
                    if name == b"server-sig-algs"
                    else value,
                )
                for name, value in extensions
            ]
        )

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        first = self._initial_kex
        super().ssh_NEWKEYS(packet)
        if first and not self._closing():
            log.debug(
                "SSH connection from {peer}: key exchange {kex}, {algorithms}",
                peer=self.peer,
                kex=self.kexAlg.decode("ascii"),
                algorithms=describe(self.currentEncryptions, self.strict_kex),
            )

    # Conch computes the shared secret from the client's public value without
    # catching what cryptography raises for a malformed one (a curve25519 key
    # of the wrong length, a DH value out of range): the connection dropped
    # with a traceback.  A bad value is the client's error: say so and go.

    def ssh_KEX_DH_GEX_REQUEST_OLD(self, packet: bytes) -> None:
        self._checked_kex(super().ssh_KEX_DH_GEX_REQUEST_OLD, packet)

    def ssh_KEX_DH_GEX_INIT(self, packet: bytes) -> None:
        self._checked_kex(super().ssh_KEX_DH_GEX_INIT, packet)

    def _checked_kex(self, step: Callable[[bytes], None], packet: bytes) -> None:
        try:
            step(packet)
        except (ValueError, struct.error) as e:
            log.warn(
                "SSH connection from {peer}: bad key exchange value: {error}",
                peer=self.peer,
                error=for_log(str(e)),
            )
            self.sendDisconnect(
                transport.DISCONNECT_KEY_EXCHANGE_FAILED,
                b"bad key exchange value",
            )

    # -- login and idle deadlines -------------------------------------------

    def setService(self, service: Any) -> None:
        super().setService(service)
        if hasattr(self, "avatar") and self._state is _State.LOGGING_IN:
            # Userauth installed the avatar and started ssh-connection.
            idle_timeout = self.factory.idle_timeout
            self._last_received = self._clock.seconds()
            self._enter(_State.LOGGED_IN, idle_timeout, self._check_idle)

    def _login_timed_out(self) -> None:
        self._timer = None
        self.end_reason(f"login timeout ({self.factory.login_timeout} s)")
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"login timeout")

    def _check_idle(self) -> None:
        # One timer, re-armed for the remainder when data came meanwhile,
        # instead of a reset on every packet.
        self._timer = None
        idle_timeout = self.factory.idle_timeout
        assert idle_timeout is not None
        idle = self._clock.seconds() - self._last_received
        if idle < idle_timeout:
            self._timer = self._clock.callLater(idle_timeout - idle, self._check_idle)
            return
        self.end_reason(f"idle timeout ({idle:.0f} s)")
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"idle timeout")
