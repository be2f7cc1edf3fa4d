"""
Who a logged-in user is, once the checker has said they are who they claim:
the store their home is in, the home prefix, their permissions, transfer
settings and the rules that apply to them (quota, rates, sessions,
networks).  Both frontends build their avatars from here, so a user sees the
same file system, and meets the same rules, over FTP, FTPS and SFTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cosgw.audit import Session
from cosgw.interfaces import IObjectStore
from cosgw.policy.limits import NetworkRule, SessionLimits
from cosgw.policy.quota import Usage
from cosgw.policy.throttle import RateLimit
from cosgw.transfer import TransferSettings, UploadRegistry
from cosgw.vfs import METADATA_PREFIX, ObjectFileSystem

if TYPE_CHECKING:
    from cosgw.policy.shared.quota import QuotaSharing

log = Logger()

#: A session's file system and the logout that ends it.
Opened = tuple[ObjectFileSystem, Callable[[], None]]


class LoginRefused(Exception):
    """
    The password (or key) was right, but a rule refuses this session: the
    user's networks or session limit.  Not an UnauthorizedLogin, so the
    login defender does not count it as a guess.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Account:
    name: str
    store: IObjectStore
    home: str
    permissions: frozenset[str]
    #: Transfer settings for this user (their max file size); None: the
    #: gateway's.
    settings: Optional[TransferSettings] = None
    #: Quota usage, shared by all the user's sessions; None: no quota.
    usage: Optional[Usage] = None
    upload_limit: Optional[RateLimit] = None
    download_limit: Optional[RateLimit] = None
    max_sessions: Optional[int] = None
    network: NetworkRule = field(default_factory=NetworkRule)
    #: Where the gateway keeps its own objects ([server] metadata_prefix).
    metadata_prefix: str = METADATA_PREFIX


class Accounts:
    """The accounts of a running gateway, by user name."""

    def __init__(
        self,
        accounts: Mapping[str, Account],
        settings: TransferSettings,
        runner: Optional[Any] = None,
        sessions: Optional[SessionLimits] = None,
        clock: Optional[IReactorTime] = None,
    ) -> None:
        """
        @param clock: times the pauses that hold users to their rates;
            needed when an account has one.
        """
        self.accounts = dict(accounts)
        self.settings = settings
        #: Runs CPU-bound work (hashing) in the gateway's thread pool.
        self.runner = runner
        #: Uploads in progress on this gateway, across all sessions and
        #: protocols, so a resume never picks one that is still being fed.
        self.registry = UploadRegistry()
        self.sessions = sessions if sessions is not None else SessionLimits()
        self.clock = clock
        #: Shares each quota across replicas (L{cosgw.policy.shared});
        #: None: this process alone.  A usage is shared from its first
        #: session on, so the accounts of a reload are too.
        self.shared_quota: Optional[QuotaSharing] = None

    def replace(self, accounts: Mapping[str, Account]) -> None:
        """
        A config reload: new logins get C{accounts}.  Sessions already open
        keep the file system (store, permissions, quota, rates) they logged
        in with; the upload registry, the session counts (so max_sessions
        counts the sessions opened before) and the settings with their
        shared buffers stay.
        """
        self.accounts = dict(accounts)

    def filesystem(
        self, name: str, session: Optional[Session] = None
    ) -> ObjectFileSystem:
        """
        A new file system for one session of user C{name}; with the
        client's C{session}, it emits that session's audit events and keeps
        its live transfers.

        @raise KeyError: no such account (the checker should have refused).
        """
        account = self.accounts[name]
        if account.usage is not None and self.shared_quota is not None:
            self.shared_quota.attach(account.usage)
        return ObjectFileSystem(
            account.store,
            account.home,
            account.permissions,
            account.settings or self.settings,
            user=account.name,
            registry=self.registry,
            runner=self.runner,
            usage=account.usage,
            upload_limit=account.upload_limit,
            download_limit=account.download_limit,
            clock=self.clock,
            session=session,
            metadata_prefix=account.metadata_prefix,
        )

    def open_session(self, name: str, peer: Any) -> ObjectFileSystem:
        """
        A session of C{name} from C{peer} begins: check the user's networks
        and session limit.  Call L{close_session} when it ends.

        @param peer: the client's L{Session} (the frontends' avatar mind):
            it is then the user's, and the file system records its events
            and transfers in it; or just an address with C{.host}; or None.
        @raise LoginRefused: a rule refuses the session.
        """
        account = self._allowed(name, peer)
        host = getattr(peer, "host", None)
        if not self.sessions.login(name, account.max_sessions):
            log.debug(
                "login of {user} from {peer} refused: {count} sessions open",
                user=name,
                peer=host,
                count=self.sessions.count(name),
            )
            raise LoginRefused(
                f"too many sessions for {name} ({account.max_sessions}); "
                "try again later"
            )
        return self._user_filesystem(name, peer)

    def _user_filesystem(self, name: str, peer: Any) -> ObjectFileSystem:
        if isinstance(peer, Session):
            peer.user = name
            return self.filesystem(name, peer)
        return self.filesystem(name)

    def _allowed(self, name: str, peer: Any) -> Account:
        """The account of C{name}, if its networks allow C{peer}."""
        account = self.accounts.get(name)
        if account is None:
            # Removed by a reload while its password was being checked.
            raise LoginRefused(f"user {name} is no longer configured")
        host = getattr(peer, "host", None)
        if account.network and (host is None or not account.network.allows(host)):
            log.debug(
                "login of {user} from {peer} refused: address not allowed",
                user=name,
                peer=host,
            )
            raise LoginRefused(f"user {name} may not log in from this address")
        return account

    async def _open_everywhere(self, name: str, peer: Any) -> ObjectFileSystem:
        """L{open_session} with the session limit held across replicas."""
        account = self._allowed(name, peer)
        refused = await self.sessions.login_everywhere(name, account.max_sessions)
        if refused is not None:
            raise LoginRefused(refused)
        try:
            return self._user_filesystem(name, peer)
        except BaseException:
            self.close_session(name)
            raise

    def close_session(self, name: str) -> None:
        self.sessions.logout(name)

    def session(self, name: str, peer: Any) -> Union[Opened, Deferred[Opened]]:
        """
        A session of C{name} from C{peer} begins: its file system, and the
        logout that ends it.  Every frontend's avatar factory calls this,
        and the logout may be called more than once (a frontend's own
        logout and the portal's both end up here): only the first call
        gives the session back, so the user's session count never drops
        below what is really open.

        @return: the pair; with shared state (C{self.sessions.shared}), a
            Deferred of it, since the user's sessions on other replicas
            count too.
        @raise LoginRefused: a rule refuses the session (see
            L{open_session}); the Deferred fails with it.
        """
        if self.sessions.shared is not None:
            opened = Deferred.fromCoroutine(self._open_everywhere(name, peer))
            return opened.addCallback(self._with_logout, name)
        return self._with_logout(self.open_session(name, peer), name)

    def _with_logout(self, fs: ObjectFileSystem, name: str) -> Opened:
        open_ = [True]

        def logout() -> None:
            if open_:
                open_.clear()
                self.close_session(name)

        return fs, logout
