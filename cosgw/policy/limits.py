"""
Who may connect, how many at once, and how many sessions a user may hold.

This is the protocol-independent admission policy of the gateway.  The FTP
frontend (on its control connection) and the SFTP frontend (on its SSH
transport) ask the same objects, so one gateway has one set of counters
whatever protocol a client speaks:

  - L{NetworkRule} says whether a client address may connect at all: a
    denied network always wins; a non-empty allowed list must contain the
    address.
  - L{ConnectionLimits} admits or refuses a new connection
    (L{ConnectionLimits.open}) and forgets it when it ends
    (L{ConnectionLimits.close}): the network rule first, then a limit on all
    connections of the gateway, then a limit per client address.  A refusal
    is a short sentence the frontend can show (FTP replies C{421} with it;
    SSH simply disconnects).
  - L{SessionLimits} counts logged-in sessions per user across protocols, so
    a user limited to two sessions cannot hold two FTP and two SFTP
    sessions.

Addresses arrive as text from the transport's peer.  An IPv4 client of a
dual-stack IPv6 listener shows up as an IPv4-mapped IPv6 address
(C{::ffff:192.0.2.1}, RFC 4291 section 2.5.5.2); it is the same host as
C{192.0.2.1}, so L{canonical_ip} turns it into the IPv4 form before it is
counted or matched.  An IPv6 client is counted per network of
C{ipv6_prefix} bits (a /64 by default): one host is usually given a whole
/64 (RFC 6177) and can pick a fresh address for every connection, so
counting single IPv6 addresses would limit nothing.  A peer that is not an
IP address at all (a UNIX socket peer) is counted under its text as given.

Nothing here touches the reactor: every call is synchronous and O(1) in the
number of connections (O(networks) for the network rule).

With shared state (L{cosgw.policy.shared}), both limits also hold across
replicas: each is decided here first (a process's own count is part of the
cluster's), then by the cluster's count in Redis.  A session waits for that
answer (its login is asynchronous anyway); a connection does not: it is
admitted on this process's count and, when the cluster's says no a moment
later, ended with the reason through the C{refuse} callable its frontend
gave (FTP: C{421}; SSH: a disconnect).  While Redis cannot be reached,
C{shared_state_failure} decides: C{open} counts on this process's view,
C{closed} refuses what needs the cluster's (a connection when a connection
limit is set, a session of a user with C{max_sessions}) with
L{UNAVAILABLE}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Optional, Union

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from cosgw.policy.shared.counts import ReplicaCounts

__all__ = [
    "UNAVAILABLE",
    "ConnectionLimits",
    "NetworkRule",
    "SessionLimits",
    "canonical_ip",
]

log = Logger(namespace="cosgw.policy.limits")

#: Why a connection or session is refused when it needs the cluster's
#: count, Redis cannot be reached and C{shared_state_failure = closed}.
UNAVAILABLE = "service temporarily unavailable, try again later"

#: Told the cluster refused a connection, with the reason (FTP: C{421}).
Refuse = Callable[[str], None]


def _outage(failure: Failure) -> bool:
    """Whether C{failure} means Redis is away (else: a bug, a cancel)."""
    from cosgw.policy.shared.connection import SharedStateUnavailable

    return failure.check(SharedStateUnavailable) is not None


_Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _parse_ip(ip: str) -> Optional[_Address]:
    """
    C{ip} as an address object, IPv4-mapped IPv6 unwrapped to IPv4, or None
    when it is not an IP address (a UNIX socket peer, an empty string).
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
    return address


def canonical_ip(ip: str, ipv6_prefix: int = 128) -> str:
    """
    The key under which C{ip} is counted: the IPv4 form of an IPv4-mapped
    IPv6 address; for any other IPv6 address its network of C{ipv6_prefix}
    bits (C{2001:db8:1:2::/64}), or with 128 the address itself, in the
    compressed lower-case form (so C{2001:DB8:0::1} and C{2001:db8::1} are
    one client); and C{ip} unchanged when it is not an IP address at all.

    Shared by L{ConnectionLimits} and L{cosgw.policy.defender.LoginDefender} so
    that both policies agree on what "one client" is.

    @param ipv6_prefix: 0 to 128; the config allows 32 to 128.
    @raise ValueError: C{ipv6_prefix} is out of range.
    """
    address = _parse_ip(ip)
    if address is None:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and ipv6_prefix != 128:
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


def _check_prefix(ipv6_prefix: int) -> None:
    """Refuse a prefix length no IPv6 network has."""
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be 0 to 128: {ipv6_prefix!r}")


def _parse_network(cidr: str) -> _Network:
    """
    C{cidr} as a network; host bits set are ignored (C{10.1.2.3/8} is
    C{10.0.0.0/8}), as the config validated the text already.  An
    IPv4-mapped IPv6 network (C{::ffff:10.0.0.0/104}) becomes the IPv4
    network it maps, since addresses are matched in their IPv4 form.
    """
    network = ipaddress.ip_network(cidr, strict=False)
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.network_address.ipv4_mapped is not None
    ):
        mapped = network.network_address.ipv4_mapped
        return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


class NetworkRule:
    """
    Which client addresses may connect, from allowed and denied networks.

    A denied network wins over an allowed one, so an operator can allow
    C{10.0.0.0/8} and still deny C{10.6.6.0/24}.  An empty allowed list
    allows every address that is not denied.
    """

    def __init__(self, allowed: Sequence[str] = (), denied: Sequence[str] = ()) -> None:
        """
        @param allowed: CIDR strings (C{192.0.2.0/24}, C{2001:db8::/32}, or
            a single address); when not empty, only these may connect.
        @param denied: CIDR strings that may never connect.
        @raise ValueError: a string is not an address or network.
        """
        self._allowed: tuple[_Network, ...] = tuple(_parse_network(n) for n in allowed)
        self._denied: tuple[_Network, ...] = tuple(_parse_network(n) for n in denied)

    def allows(self, ip: str) -> bool:
        """
        Whether a client at C{ip} may connect.

        A peer that is not an IP address (a UNIX socket peer) cannot be
        matched against networks, so it is allowed only when the rule
        restricts nothing: a rule that names networks fails closed.
        """
        address = _parse_ip(ip)
        if address is None:
            return not self
        # "in" is simply False across IP versions, never an error.
        if any(address in network for network in self._denied):
            return False
        if self._allowed:
            return any(address in network for network in self._allowed)
        return True

    def __bool__(self) -> bool:
        """True when the rule restricts anything (either list is not empty)."""
        return bool(self._allowed or self._denied)

    def __repr__(self) -> str:
        allowed = [str(n) for n in self._allowed]
        denied = [str(n) for n in self._denied]
        return f"NetworkRule(allowed={allowed!r}, denied={denied!r})"


def _check_limit(name: str, value: Optional[int]) -> None:
    """Refuse a limit below 1: None is how "no limit" is spelled."""
    if value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1, or None for no limit: {value!r}")


class ConnectionLimits:
    """
    Shared by every listener (FTP, implicit FTPS, SFTP) of one gateway.

    Counts the connections it admitted, in total and per client address, so
    the limits hold across protocols.  The counts are the state: a mapping
    from canonical address to open connections (an address with none is
    not in it, so memory follows the open connections) and their sum.
    """

    def __init__(
        self,
        max_total: Optional[int] = None,
        max_per_ip: Optional[int] = None,
        network: Optional[NetworkRule] = None,
        ipv6_prefix: int = 64,
    ) -> None:
        """
        @param max_total: most connections open at once on the gateway;
            None for no limit.
        @param max_per_ip: most connections open at once from one client
            address (IPv6: from one network of C{ipv6_prefix} bits); None
            for no limit.
        @param network: which addresses may connect; None allows all.
        @param ipv6_prefix: IPv6 clients are counted per network of this
            many bits (128: per address).
        @raise ValueError: a limit is below 1, or the prefix out of range.
        """
        _check_limit("max_total", max_total)
        _check_limit("max_per_ip", max_per_ip)
        _check_prefix(ipv6_prefix)
        self._ipv6_prefix = ipv6_prefix
        self._max_total = max_total
        self._max_per_ip = max_per_ip
        self._network = network if network is not None else NetworkRule()
        self._per_ip: dict[str, int] = {}
        self._total = 0
        #: This replica's counts in the cluster; None: this process alone.
        self.shared: Optional[ReplicaCounts] = None

    def adopt_settings(self, other: ConnectionLimits) -> None:
        """
        A config reload: admit new connections by C{other}'s limits and
        network rule from now on.  The counts of open connections stay (a
        limit lowered below them refuses new connections until enough
        close; none is cut); so does the IPv6 prefix they are keyed by.
        """
        self._max_total = other._max_total
        self._max_per_ip = other._max_per_ip
        self._network = other._network

    @property
    def total(self) -> int:
        """Connections admitted and not yet closed, on every listener."""
        return self._total

    def count(self, ip: str) -> int:
        """
        Connections admitted from C{ip} (from its IPv6 network) and not yet
        closed.
        """
        return self._per_ip.get(self._key(ip), 0)

    def _key(self, ip: str) -> str:
        """What C{ip} is counted under."""
        return canonical_ip(ip, self._ipv6_prefix)

    def open(self, ip: str, refuse: Optional[Refuse] = None) -> Optional[str]:
        """
        Admit a new connection from C{ip}, or say why not.

        The checks run in this order: the network rule, the gateway-wide
        limit, the per-address limit.  An admitted connection is counted
        until L{close}; a refused one is not counted at all.

        @param refuse: with shared state, called later with the reason if
            the cluster's count refuses the connection after all: end it
            (and L{close} it as any other).  Not called after this returns
            a refusal.
        @return: None when the connection is admitted and counted; else the
            reason for the refusal, one short sentence for the client (FTP
            sends it in a C{421} reply).  A refusal is logged at info with
            the address and the reason.
        """
        key = self._key(ip)
        reason = self._refusal(key, ip)
        if reason is not None:
            self._refused(ip, key, reason)
            return reason
        self._per_ip[key] = self._per_ip.get(key, 0) + 1
        self._total += 1
        if self.shared is not None:
            return self._share(ip, key, refuse)
        return None

    def _refused(self, ip: str, key: str, reason: str, where: str = "") -> None:
        log.info(
            "Connection from {ip} refused{where}: {reason}",
            ip=canonical_ip(ip),
            where=where,
            counted_as=key,
            reason=reason,
            total=self._total,
            from_ip=self._per_ip.get(key, 0),
        )

    def _fields(self, key: str) -> list[tuple[str, int, Optional[int], int]]:
        """The shared counts of connections, each with its limit."""
        total, here = self._total, self._per_ip.get(key, 0)
        return [
            ("c", total, self._max_total, total),
            (f"c:{key}", here, self._max_per_ip, here),
        ]

    def _share(self, ip: str, key: str, refuse: Optional[Refuse]) -> Optional[str]:
        """Count a connection just admitted here in the cluster (see the
        module docstring)."""
        shared = self.shared
        assert shared is not None
        if self._max_total is None and self._max_per_ip is None:
            shared.publish(*((f, v) for f, v, _, _ in self._fields(key)))
            return None
        if not shared.store.connected:
            if shared.store.fallback("connection limits"):
                shared.publish(*((f, v) for f, v, _, _ in self._fields(key)))
                return None
            self._uncount(key)
            self._refused(ip, key, UNAVAILABLE, " (no shared state)")
            return UNAVAILABLE
        d = shared.admit(self._fields(key))

        def verdict(over: Optional[tuple[str, int]]) -> None:
            if over is None:
                return
            field, count = over
            reason = self._reason(field == "c")
            self._refused(ip, key, reason, f" across replicas ({count} open)")
            if refuse is not None:
                refuse(reason)

        def away(failure: Failure) -> Optional[Failure]:
            if not _outage(failure):
                return failure
            if not shared.store.fallback("connection limits"):
                self._refused(ip, key, UNAVAILABLE, " (no shared state)")
                if refuse is not None:
                    refuse(UNAVAILABLE)
            return None

        d.addCallbacks(verdict, away).addErrback(
            lambda f: log.failure("Shared connection count failed", f)
        )
        return None

    def _reason(self, total: bool) -> str:
        if total:
            return f"too many connections ({self._max_total}), try again later"
        return f"too many connections from your address ({self._max_per_ip})"

    def _refusal(self, key: str, ip: str) -> Optional[str]:
        """The reason to refuse a connection from C{key}, or None."""
        if not self._network.allows(ip):
            return "your address is not allowed"
        if self._max_total is not None and self._total >= self._max_total:
            return self._reason(True)
        if (
            self._max_per_ip is not None
            and self._per_ip.get(key, 0) >= self._max_per_ip
        ):
            return self._reason(False)
        return None

    def close(self, ip: str) -> None:
        """
        A connection that L{open} admitted has ended.

        Call it exactly once per admitted connection, and never for a
        refused one.  A close with nothing to close (a frontend bug) is
        logged as a warning and changes nothing, so the counts never go
        negative nor drift below the truth.
        """
        key = self._key(ip)
        if self._per_ip.get(key, 0) == 0:
            log.warn(
                "Connection close from {ip} with no open connection counted; ignored",
                ip=key,
            )
            return
        self._uncount(key)
        if self.shared is not None:
            self.shared.publish(*((f, v) for f, v, _, _ in self._fields(key)))

    def _uncount(self, key: str) -> None:
        open_here = self._per_ip[key]
        if open_here == 1:
            del self._per_ip[key]
        else:
            self._per_ip[key] = open_here - 1
        self._total -= 1


class SessionLimits:
    """
    Concurrent logged-in sessions per user, across protocols.

    The state is a mapping from user name to open sessions; a user with none
    is not in it.  User names are compared exactly as given: the caller
    passes the canonical account name (the avatar id), not what the client
    typed.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, int] = {}
        #: This replica's counts in the cluster; None: this process alone.
        self.shared: Optional[ReplicaCounts] = None

    def count(self, user: str) -> int:
        """Sessions of C{user} logged in and not yet logged out."""
        return self._sessions.get(user, 0)

    def login(self, user: str, max_sessions: Optional[int]) -> bool:
        """
        Count a new session of C{user}, unless that would exceed
        C{max_sessions}.

        The limit is passed per call, not stored, because it is a property
        of the account and a config reload may change it: sessions already
        open stay open, new ones obey the new limit.

        @param max_sessions: most sessions C{user} may hold at once, None
            for no limit.
        @return: True when the session is counted (call L{logout} once when
            it ends); False when C{user} already has C{max_sessions}
            sessions, which is logged at info.
        @raise ValueError: C{max_sessions} is below 1.
        """
        _check_limit("max_sessions", max_sessions)
        current = self._sessions.get(user, 0)
        if max_sessions is not None and current >= max_sessions:
            log.info(
                "Login of user {user} refused: {sessions} sessions already"
                " open, the limit is {max_sessions}",
                user=user,
                sessions=current,
                max_sessions=max_sessions,
            )
            return False
        self._sessions[user] = current + 1
        return True

    def logout(self, user: str) -> None:
        """
        A session that L{login} counted has ended.

        A logout with no session counted (a frontend bug) is logged as a
        warning and changes nothing, so the count never goes negative.
        """
        current = self._sessions.get(user, 0)
        if current == 0:
            log.warn(
                "Logout of user {user} with no session counted; ignored",
                user=user,
            )
            return
        if current == 1:
            del self._sessions[user]
        else:
            self._sessions[user] = current - 1
        if self.shared is not None:
            self.shared.publish((f"s:{user}", current - 1))

    def login_everywhere(
        self, user: str, max_sessions: Optional[int]
    ) -> Deferred[Optional[str]]:
        """
        L{login}, then, with shared state, the same limit on the user's
        sessions on every replica (see the module docstring).

        @return: a Deferred firing with None when the session is counted
            (call L{logout} once when it ends), else with why it is not
            (nothing is counted then).  It never fails, and waits for Redis
            at most the shared state's timeout.
        """
        refused = f"too many sessions for {user} ({max_sessions}); try again later"
        if not self.login(user, max_sessions):
            return succeed(refused)
        shared = self.shared
        if shared is None:
            return succeed(None)
        field, count = f"s:{user}", self._sessions[user]
        if max_sessions is None:
            shared.publish((field, count))
            return succeed(None)
        if not shared.store.connected:
            if shared.store.fallback("session limits"):
                shared.publish((field, count))
                return succeed(None)
            self.logout(user)
            return succeed(UNAVAILABLE)

        def verdict(over: Optional[tuple[str, int]]) -> Optional[str]:
            if over is None:
                return None
            log.info(
                "Login of user {user} refused: {sessions} sessions open across"
                " replicas, the limit is {max_sessions}",
                user=user,
                sessions=over[1],
                max_sessions=max_sessions,
            )
            self.logout(user)
            return refused

        def away(failure: Failure) -> Union[str, None, Failure]:
            if not _outage(failure):
                self.logout(user)
                return failure
            if shared.store.fallback("session limits"):
                return None
            self.logout(user)
            return UNAVAILABLE

        d = shared.admit([(field, count, max_sessions, count - 1)])
        return d.addCallbacks(verdict, away)
