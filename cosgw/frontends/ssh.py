"""
The SSH layer of the SFTP frontend: host keys, the transport, user
authentication and the avatar.  It offers one thing, the C{sftp} subsystem;
the file system behind it is L{cosgw.frontends.sftp}'s.

Conch does the protocol; what it gets wrong for an internet-facing gateway
is replaced here (see reference/twisted-conch-cos-facts.md section c):

  - Algorithms.  Conch offers 3des-cbc, the cbc modes, hmac-sha1, hmac-md5,
    diffie-hellman-group14-sha1, group-exchange-sha1, zlib, ssh-dss and
    ssh-rsa (SHA-1) signatures.  L{GatewaySSHTransport} keeps only the
    modern ones, by filtering Conch's own lists, so a Conch that lacks one
    of ours still works and one that adds a weak one does not get it
    offered.  The host-key list is not the transport's class attribute:
    L{SSHFactory.buildProtocol} builds it for every connection from the
    loaded keys, and an RSA key brings C{ssh-rsa} with it, so
    L{GatewaySSHFactory} computes and filters it itself, once.
  - server-sig-algs (RFC 8308).  Conch advertises the *host key* algorithms
    as the algorithms it accepts for *user* keys, so a server with only an
    Ed25519 host key would tell OpenSSH clients that RSA user keys are
    unusable.  The transport advertises what
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
    (L{cosgw.policy.limits.ConnectionLimits}) before anything else and gives the
    slot back exactly once when the connection ends.
  - Login attempts that can guess a secret (a password, a signed public
    key) go through the login defender, which delays failures and bans
    addresses; a public-key query (no signature) proves nothing and is not
    counted.  Conch's own password delay is off: the defender delays.
  - Conch's public-key checker answers "this key would do" to a query for
    I{any} key; L{cosgw.auth.keys.KeyChecker} only for a listed one,
    refuses SHA-1 (ssh-rsa) and DSA signatures, and parses its keys once.
  - A login that completes after its connection was lost, or a second login
    completing on an already authenticated connection (a client may
    pipeline USERAUTH_REQUESTs), is logged out at once: Conch would install
    the avatar over the first and never call its logout.
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

Everything that blocks (reading and generating host keys, reading
/etc/ssh/moduli) happens at construction, before the reactor runs.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import (
    IConchUser,
    ISession,
    ISessionSetEnv,
    ISFTPServer,
)
from twisted.conch.openssh_compat.primes import parseModuliFile
from twisted.conch.ssh import keys, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.connection import (
    MSG_CHANNEL_OPEN_FAILURE,
    OPEN_UNKNOWN_CHANNEL_TYPE,
    SSHConnection,
)
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.filetransfer import FileTransferServer
from twisted.conch.ssh.session import SSHSession, SSHSessionProcessProtocol
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.auth.files import create_exclusively
from cosgw.auth.keys import check_key_strength, fingerprint
from cosgw.auth.text import decode_bytes
from cosgw.policy.accounts import LoginRefused

__all__ = [
    "BANNED_MESSAGE",
    "GENERATED_HOST_KEYS",
    "NOT_SFTP_MESSAGE",
    "GatewayConnection",
    "GatewaySSHFactory",
    "GatewaySSHTransport",
    "GatewayUserAuthServer",
    "SFTPSession",
    "SFTPUser",
    "load_host_keys",
]

log = Logger(namespace="cosgw.ssh")


class ConchLogger(Logger):
    """
    The logger for Conch's classes: its warnings and errors pass, its debug
    and info events (one per packet, window adjustment or SFTP request) are
    dropped before they are even built; twistd's own observer would format
    and write every one of them.
    """

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    def info(self, *args: Any, **kwargs: Any) -> None:
        pass


#: OpenSSH's session window: Conch's 128 KiB made a client wait for a
#: window adjustment every 64 KiB.  Memory stays bounded: the SFTP server
#: stops reading the connection while its uploads are backed up.
SESSION_WINDOW = 2 * 1024 * 1024

# --------------------------------------------------------------------------
# Host keys
# --------------------------------------------------------------------------

#: RSA host keys generated at first start, as OpenSSH's ssh-keygen -A makes.
_GENERATED_RSA_BITS = 3072


def _new_ed25519() -> Any:
    return ed25519.Ed25519PrivateKey.generate()


def _new_rsa() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=_GENERATED_RSA_BITS)


#: The host keys generated in the state directory when none are configured:
#: file name and key maker, in the order they are loaded.
GENERATED_HOST_KEYS: tuple[tuple[str, Callable[[], Any]], ...] = (
    ("ssh_host_ed25519_key", _new_ed25519),
    ("ssh_host_rsa_key", _new_rsa),
)


def _load_host_key(path: Path) -> keys.Key:
    """
    Read one private host key (OpenSSH, PEM or PuTTY format).

    @raise ValueError: one line naming C{path}: unreadable, not a private
        key, protected by a passphrase, or too weak.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(
            f"SSH host key {path}: cannot be read: {e.strerror or e}"
        ) from None
    try:
        key = keys.Key.fromString(data)
    except keys.EncryptedKeyError:
        raise ValueError(
            f"SSH host key {path}: protected by a passphrase;"
            " the gateway needs it without one (ssh-keygen -p -N '')"
        ) from None
    except Exception:
        raise ValueError(
            f"SSH host key {path}: not an SSH private key cosgw can read"
        ) from None
    if key.isPublic():
        raise ValueError(
            f"SSH host key {path}: a public key; give the private key file"
        )
    check_key_strength(key, f"SSH host key {path}")
    return key


def _generated_host_key(
    state_dir: Path, name: str, make: Callable[[], Any]
) -> keys.Key:
    """
    The host key C{state_dir/name}, generated first if it does not exist.

    A new key is written to a temporary file (mode 0600) and linked into
    place, so a crash never leaves half a key and an existing key, or one a
    concurrent start wrote first, is never overwritten.
    """
    path = state_dir / name
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = make()
        text = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode("ascii")
        if create_exclusively(path, text):
            key = keys.Key(private)
            log.info(
                "Generated SSH host key {path} ({fingerprint})",
                path=str(path),
                fingerprint=fingerprint(key),
            )
            return key
    return _load_host_key(path)


def load_host_keys(paths: Sequence[Path], state_dir: Path) -> dict[bytes, keys.Key]:
    """
    The gateway's SSH host keys, as C{{key.sshType(): private Key}}.

    With C{paths}, each file is loaded.  Without, the keys of
    L{GENERATED_HOST_KEYS} in C{state_dir} are used, generated at the first
    start (Ed25519 and RSA 3072, OpenSSH private format, mode 0600) and the
    same ones on every later start, so clients' known_hosts stay valid.

    This blocks (file I/O, RSA generation): call it at start-up, before the
    reactor runs.

    @raise ValueError: one line naming the file: unreadable, not a private
        key, passphrase-protected, ssh-dss, RSA under 2048 bits, or a second
        key of a type already loaded.
    """
    loaded: list[tuple[Path, keys.Key]] = []
    if paths:
        for p in paths:
            path = Path(p)
            loaded.append((path, _load_host_key(path)))
    else:
        state_dir = Path(state_dir)
        for name, make in GENERATED_HOST_KEYS:
            loaded.append(
                (state_dir / name, _generated_host_key(state_dir, name, make))
            )
    host_keys: dict[bytes, keys.Key] = {}
    for path, key in loaded:
        key_type = key.sshType()
        if key_type in host_keys:
            raise ValueError(
                f"SSH host key {path}: a second {key_type.decode('ascii')} key;"
                " give at most one key of each type"
            )
        host_keys[key_type] = key
    return host_keys


# --------------------------------------------------------------------------
# Algorithms
# --------------------------------------------------------------------------

# What we are willing to offer, in our order of preference (the client's
# order decides the negotiation, RFC 4253 section 7.1).  Each list is
# intersected with what this Conch implements.

#: AEAD ciphers first should Conch ever implement them (then it must also
#: implement strict key exchange, or chacha20 and -etm MACs are open to
#: Terrapin, CVE-2023-48795; ctr with plain hmac-sha2 is not).
_CIPHERS = (
    b"chacha20-poly1305@openssh.com",
    b"aes256-gcm@openssh.com",
    b"aes128-gcm@openssh.com",
    b"aes256-ctr",
    b"aes192-ctr",
    b"aes128-ctr",
)
_MACS = (
    b"hmac-sha2-512-etm@openssh.com",
    b"hmac-sha2-256-etm@openssh.com",
    b"hmac-sha2-512",
    b"hmac-sha2-256",
)
_KEY_EXCHANGES = (
    b"mlkem768x25519-sha256",
    b"sntrup761x25519-sha512",
    b"sntrup761x25519-sha512@openssh.com",
    b"curve25519-sha256",
    b"curve25519-sha256@libssh.org",
    b"ecdh-sha2-nistp256",
    b"ecdh-sha2-nistp384",
    b"ecdh-sha2-nistp521",
    # Only when the factory has primes (GatewaySSHFactory.getPrimes).
    b"diffie-hellman-group-exchange-sha256",
    b"diffie-hellman-group16-sha512",
    b"diffie-hellman-group18-sha512",
    b"diffie-hellman-group14-sha256",
)
#: Signature algorithms, for host keys and user keys alike.  Never ssh-rsa
#: (RSA with SHA-1) nor ssh-dss.
_SIGNATURE_ALGORITHMS = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)


def _keep(offered: Iterable[bytes], wanted: Sequence[bytes]) -> list[bytes]:
    """The names in C{wanted} that C{offered} has, in C{wanted}'s order."""
    available = set(offered)
    return [name for name in wanted if name in available]


#: The key exchanges that need the factory's primes (RFC 4419).
_GEX_PREFIX = b"diffie-hellman-group-exchange-"

#: DH group-exchange primes smaller than this are dropped from the moduli
#: file (RFC 8270 sets the minimum at 2048 bits).
_MIN_GEX_BITS = 2048

#: Seconds a disconnecting client gets to read our DISCONNECT before the
#: socket is aborted: a peer that never reads must not hold the connection.
_DISCONNECT_GRACE = 10.0


def _peer_text(address: Any) -> str:
    """The peer's host as text (its IP for TCP)."""
    return str(getattr(address, "host", address))


def _banned_type() -> Optional[type]:
    """
    L{cosgw.policy.defender.LoginBanned}, or None if this build has no defender.

    Imported when needed: the defender is optional for this module.
    """
    try:
        from cosgw.policy.defender import LoginBanned
    except ImportError:
        return None
    return LoginBanned


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


class GatewaySSHTransport(transport.SSHServerTransport):
    """
    The server transport: modern algorithms only, a version string without a
    Twisted version, admission, and the login, idle and closing deadlines of
    L{_State}.
    """

    _log = ConchLogger(namespace="twisted.conch.ssh.transport")

    factory: GatewaySSHFactory

    version = b"cosgw"
    comment = b""
    ourVersionString = (
        b"SSH-" + transport.SSHServerTransport.protocolVersion + b"-cosgw"
    )

    supportedCiphers = _keep(transport.SSHServerTransport.supportedCiphers, _CIPHERS)
    supportedMACs = _keep(transport.SSHServerTransport.supportedMACs, _MACS)
    supportedKeyExchanges = _keep(
        transport.SSHServerTransport.supportedKeyExchanges, _KEY_EXCHANGES
    )
    supportedPublicKeys = _keep(
        transport.SSHServerTransport.supportedPublicKeys, _SIGNATURE_ALGORITHMS
    )
    supportedCompressions = [b"none"]

    #: The user-key signature algorithms advertised in server-sig-algs.
    userKeyAlgorithms: list[bytes] = list(supportedPublicKeys)

    peer = "?"
    _state = _State.LOGGING_IN
    _timer: Optional[IDelayedCall] = None
    _lost_waiters: Optional[list[defer.Deferred[None]]] = None
    #: Admission counted this connection: close it exactly once.
    _admitted = False
    _last_received = 0.0

    @property
    def _clock(self) -> IReactorTime:
        return self.factory.reactor

    @property
    def username(self) -> Optional[str]:
        """The logged-in user's name, or None before login."""
        return getattr(getattr(self, "avatar", None), "username", None)

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
        self.peer = _peer_text(self.transport.getPeer())
        super().connectionMade()
        admission = self.factory.admission
        if admission is not None:
            try:
                refusal = admission.open(self.peer)
            except Exception:
                log.failure("Admission check failed for {peer}", peer=self.peer)
                refusal = "service unavailable"
            if refusal is not None:
                # The admission policy logs its refusals.
                self.sendDisconnect(transport.DISCONNECT_TOO_MANY_CONNECTIONS, refusal)
                return
            self._admitted = True
        log.info("SSH connection from {peer}", peer=self.peer)
        self._timer = self._clock.callLater(
            self.factory.login_timeout, self._login_timed_out
        )

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._enter(_State.LOST)
        self.factory.connections.discard(self)
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
            log.info(
                "SSH connection from {peer} closed (user {user})",
                peer=self.peer,
                user=self.username,
            )

    def dataReceived(self, data: bytes) -> None:
        if self._state in (_State.CLOSING, _State.LOST):
            return  # disconnecting: whatever the client still sends is moot
        self._last_received = self._clock.seconds()
        super().dataReceived(data)

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
        if self._state in (_State.CLOSING, _State.LOST):
            return
        self._enter(_State.CLOSING, _DISCONNECT_GRACE, self._abort)
        if isinstance(desc, str):
            # Conch itself passes str in places (its ML-KEM checks).
            desc = desc.encode("utf-8")
        self.sendPacket(
            transport.MSG_DISCONNECT, struct.pack(">L", reason) + NS(desc) + NS(b"")
        )
        log.info(
            "SSH connection from {peer} disconnected: code {code}, {description}",
            peer=self.peer,
            code=reason,
            description=desc.decode("utf-8", "replace"),
        )
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        else:
            self.transport.loseConnection()

    def _abort(self) -> None:
        self._timer = None
        log.info(
            "SSH connection from {peer} did not close after DISCONNECT; aborting",
            peer=self.peer,
        )
        self.transport.abortConnection()

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

    # -- login and idle deadlines -------------------------------------------

    def setService(self, service: Any) -> None:
        super().setService(service)
        if hasattr(self, "avatar") and self._state is _State.LOGGING_IN:
            # Userauth installed the avatar and started ssh-connection.
            idle_timeout = self.factory.idle_timeout
            self._last_received = self._clock.seconds()
            self._enter(_State.LOGGED_IN, idle_timeout, self._check_idle)
            log.info(
                "SSH user {user} logged in from {peer}",
                user=self.username,
                peer=self.peer,
            )

    def _login_timed_out(self) -> None:
        self._timer = None
        log.info(
            "SSH connection from {peer} did not log in within {timeout} s;"
            " disconnecting",
            peer=self.peer,
            timeout=self.factory.login_timeout,
        )
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
        log.info(
            "SSH connection from {peer} (user {user}) idle for {idle:.0f} s;"
            " disconnecting",
            peer=self.peer,
            user=self.username,
            idle=idle,
        )
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"idle timeout")


# --------------------------------------------------------------------------
# User authentication
# --------------------------------------------------------------------------

#: What a banned address is told before it is disconnected.
BANNED_MESSAGE = b"too many failed logins; try again later"


def _is_key_query(credentials: Any) -> bool:
    """
    A public-key query (RFC 4252 section 7: "has signature" FALSE): it asks
    whether a key would do and proves nothing.  Conch treats an empty
    signature the same way.
    """
    return ISSHPrivateKey.providedBy(credentials) and not credentials.signature


class _AttemptPortal:
    """
    The portal as userauth sees it: every login that can guess a secret (a
    password, a signed key) goes through C{guard.guard(ip, user, login)}
    when there is a guard, and every attempt under way can be cancelled
    when the client goes.
    """

    def __init__(self, portal: Portal, guard: Any, ip: str, peer: Any = None) -> None:
        """
        @param peer: the client's address, given to the realm as the mind
            (Conch passes None), so per-user network rules see it as they
            do over FTP.
        """
        self._portal = portal
        self._guard = guard
        self._ip = ip
        self._peer = peer
        self._pending: set[defer.Deferred] = set()

    def listCredentialsInterfaces(self) -> list[Any]:
        return self._portal.listCredentialsInterfaces()

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        if mind is None:
            mind = self._peer

        def login() -> defer.Deferred:
            return self._portal.login(credentials, mind, *interfaces)

        if self._guard is None or _is_key_query(credentials):
            d = login()
        else:
            username = credentials.username
            user = decode_bytes(username) if isinstance(username, bytes) else username
            d = self._guard.guard(self._ip, user, login)
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def cancel_pending(self) -> None:
        """
        Cancel the attempts still under way: the checker's work or the
        defender's failure delay then ends, and no avatar is made for a
        client that hung up.
        """
        for d in list(self._pending):
            d.cancel()


class GatewayUserAuthServer(userauth.SSHUserAuthServer):
    """
    ssh-userauth offering C{publickey} and C{password} (password only once
    the transport is encrypted, as Conch does), with the login guard; the
    attempts under way are cancelled when the service stops.
    """

    transport: GatewaySSHTransport

    interfaceToMethod = {
        ISSHPrivateKey: b"publickey",
        IUsernamePassword: b"password",
    }
    # The login defender delays failures; Conch's delay would add to it.
    passwordDelay = 0

    def serviceStarted(self) -> None:
        factory = self.transport.factory
        # Conch's class attribute is the global reactor.
        self.clock = factory.reactor
        super().serviceStarted()
        # The transport's login deadline runs from the TCP connection;
        # Conch's would start only now.
        if self._cancelLoginTimeout is not None:
            self._cancelLoginTimeout.cancel()
            self._cancelLoginTimeout = None
        tcp = getattr(self.transport, "transport", None)
        self.portal = _AttemptPortal(
            self.portal,
            factory.login_guard,
            self.transport.peer,
            tcp.getPeer() if tcp is not None else None,
        )

    def serviceStopped(self) -> None:
        super().serviceStopped()
        if isinstance(self.portal, _AttemptPortal):
            self.portal.cancel_pending()

    def _ebPassword(self, f: Failure) -> Failure:
        # Conch waits passwordDelay (0 here) on a timer; fail at once.
        return f

    def _cbFinishedAuth(self, result: Any) -> None:
        interface, avatar, logout = result
        transport_ = self.transport
        login_allowed = getattr(transport_, "login_allowed", None)
        if hasattr(transport_, "avatar") or (
            login_allowed is not None and not login_allowed()
        ):
            # A pipelined second login, or the connection is closing or
            # gone: nobody would ever call this avatar's logout.
            log.info(
                "SSH login of {user} from {peer} completed too late; logged out",
                user=getattr(avatar, "username", None),
                peer=getattr(transport_, "peer", "?"),
            )
            logout()
            return
        super()._cbFinishedAuth(result)

    def _ebBadAuth(self, reason: Failure) -> None:
        if reason.check(defer.CancelledError) and not self._connected():
            return  # cancelled by serviceStopped: the client is gone
        banned = _banned_type()
        if banned is not None and reason.check(banned):
            log.info(
                "SSH login from {peer} refused: address banned",
                peer=self.transport.peer,
            )
            self.transport.sendDisconnect(
                transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, BANNED_MESSAGE
            )
            return
        if reason.check(LoginRefused):
            # The right secret, but a rule (the user's networks or session
            # limit) refuses the session: say why and hang up, as FTP's 421.
            log.info(
                "SSH login from {peer} refused: {reason}",
                peer=self.transport.peer,
                reason=str(reason.value),
            )
            self.transport.sendDisconnect(
                transport.DISCONNECT_TOO_MANY_CONNECTIONS,
                str(reason.value).encode("utf-8"),
            )
            return
        super()._ebBadAuth(reason)

    def _connected(self) -> bool:
        login_allowed = getattr(self.transport, "login_allowed", None)
        return login_allowed is None or login_allowed()


# --------------------------------------------------------------------------
# The connection service
# --------------------------------------------------------------------------


class GatewayConnection(SSHConnection):
    """ssh-connection that refuses unknown channel types without a traceback."""

    _log = ConchLogger(namespace="twisted.conch.ssh.connection")

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        channel_type, rest = getNS(packet)
        lookup = getattr(getattr(self.transport, "avatar", None), "channelLookup", None)
        if lookup is None or channel_type in lookup or len(rest) < 4:
            super().ssh_CHANNEL_OPEN(packet)
            return
        (sender_channel,) = struct.unpack(">L", rest[:4])
        log.info(
            "SSH user {user} asked for a {channel_type} channel; refused",
            user=getattr(self.transport, "username", None),
            channel_type=channel_type[:40].decode("ascii", "replace"),
        )
        self.transport.sendPacket(
            MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender_channel, OPEN_UNKNOWN_CHANNEL_TYPE)
            + NS(b"unknown channel type")
            + NS(b""),
        )


# --------------------------------------------------------------------------
# The factory
# --------------------------------------------------------------------------


class GatewaySSHFactory(SSHFactory):
    """
    Builds L{GatewaySSHTransport}s over one portal and one set of host keys.
    """

    protocol = GatewaySSHTransport
    services = {
        b"ssh-userauth": GatewayUserAuthServer,
        b"ssh-connection": GatewayConnection,
    }

    #: OpenSSH's DH group-exchange primes; group exchange is offered only
    #: when this file exists.
    moduli_path = Path("/etc/ssh/moduli")

    def __init__(
        self,
        portal: Portal,
        host_keys: dict[bytes, keys.Key],
        reactor: IReactorTime,
        *,
        login_timeout: float = 60,
        idle_timeout: Optional[float] = 600,
        admission: Any = None,
        login_guard: Any = None,
    ) -> None:
        """
        @param portal: logs users in; its realm answers for L{IConchUser}.
        @param host_keys: private keys as L{load_host_keys} returns them.
        @param reactor: every timer of every connection runs on it.
        @param login_timeout: seconds from TCP connect to a completed login.
        @param idle_timeout: seconds without data from an authenticated
            client before it is disconnected; None for no limit.
        @param admission: an object with C{open(ip) -> Optional[str]} and
            C{close(ip)}, such as L{cosgw.policy.limits.ConnectionLimits}; None to
            admit everyone.
        @param login_guard: an object with C{guard(ip, user, login)}, such as
            L{cosgw.policy.defender.LoginDefender}; None for no guard.
        @raise ValueError: no usable host key, or a non-positive timeout.
        """
        if login_timeout <= 0:
            raise ValueError(f"login_timeout must be positive: {login_timeout!r}")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive or None: {idle_timeout!r}")
        private = {key_type: key for key_type, key in host_keys.items()}
        for key_type, key in private.items():
            if key.isPublic():
                raise ValueError(f"{key_type.decode('ascii')} host key is not private")
        if not self._host_key_algorithms(private.values()):
            raise ValueError("no usable SSH host key (ed25519, ecdsa or RSA)")
        self.portal = portal
        self.privateKeys = private
        self.publicKeys = {key_type: key.public() for key_type, key in private.items()}
        self.reactor = reactor
        self.login_timeout = login_timeout
        self.idle_timeout = idle_timeout
        self.admission = admission
        self.login_guard = login_guard
        #: The transports whose socket is still open.
        self.connections: set[GatewaySSHTransport] = set()
        self.primes = self.getPrimes()
        self._public_key_algorithms = self._host_key_algorithms(private.values())
        self._key_exchanges = list(self.protocol.supportedKeyExchanges)
        if not self.primes:
            self._key_exchanges = [
                name for name in self._key_exchanges if not name.startswith(_GEX_PREFIX)
            ]
            log.info(
                "No DH group-exchange primes in {path}; group exchange not offered",
                path=str(self.moduli_path),
            )

    def _host_key_algorithms(self, host_keys: Iterable[keys.Key]) -> list[bytes]:
        """The signature algorithms the host keys allow that we offer."""
        offered = [
            algorithm
            for key in host_keys
            for algorithm in key.supportedSignatureAlgorithms()
        ]
        return _keep(offered, self.protocol.supportedPublicKeys)

    def getPrimes(self) -> Optional[dict[int, list[tuple[int, int]]]]:
        """
        DH group-exchange primes of at least 2048 bits from L{moduli_path},
        or None (no group exchange) when it is missing or unreadable.
        """
        path = Path(self.moduli_path)
        if not path.exists():
            return None
        try:
            primes = parseModuliFile(str(path))
        except (OSError, ValueError) as e:
            log.warn(
                "Cannot read {path} ({error}); DH group exchange disabled",
                path=str(path),
                error=str(e),
            )
            return None
        primes = {
            bits: groups for bits, groups in primes.items() if bits >= _MIN_GEX_BITS
        }
        return primes or None

    def buildProtocol(self, addr: Any) -> GatewaySSHTransport:
        # Not SSHFactory.buildProtocol: it offers every algorithm the host
        # keys can sign with (ssh-rsa included) and logs a line for every
        # connection when there are no primes.  The lists are computed once.
        t: GatewaySSHTransport = Factory.buildProtocol(self, addr)  # type: ignore[assignment]
        t.supportedPublicKeys = list(self._public_key_algorithms)
        t.supportedKeyExchanges = list(self._key_exchanges)
        self.connections.add(t)
        return t

    def disconnect_all(
        self, description: str = "server shutting down"
    ) -> defer.Deferred[None]:
        """
        Disconnect every open connection (SSH_DISCONNECT_BY_APPLICATION with
        C{description}), for a service that stops.

        @return: a L{Deferred} that fires with None once every socket is
            gone: when each client has closed its side, or after the grace
            period at the latest.
        """
        transports = list(self.connections)
        for t in transports:
            t.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, description)
        done = defer.gatherResults([t.when_lost() for t in transports])
        return done.addCallback(lambda _: None)


# --------------------------------------------------------------------------
# The avatar and its sessions
# --------------------------------------------------------------------------

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

    def eofReceived(self) -> None:
        if self.client is None or self.conn is None:
            return
        if isinstance(self.session, _RefusingSession) and self.session.refusing:
            return  # it closes the channel once its message is out
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
            user=self._avatar.username,
            what=what,
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
    clock = getattr(getattr(channel.conn.transport, "factory", None), "reactor", None)
    if clock is None:
        # A plain SSHFactory (not ours) has no injected reactor.
        from twisted.internet import reactor as clock
    return clock  # type: ignore[return-value]


@implementer(IConchUser)
class SFTPUser(ConchUser):
    """
    A logged-in SSH user: one C{session} channel type, one C{sftp}
    subsystem served by C{sftp_server}.
    """

    def __init__(
        self,
        username: str,
        sftp_server: ISFTPServer,
        subsystem: type = FileTransferServer,
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
