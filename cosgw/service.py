"""
C{makeService(config, reactor)}: the whole gateway as one MultiService.

The twistd plugin, the .tac file and programs that embed cosgw all come
through here.  The service owns the thread pool that every blocking store
call runs in, one store per configured storage, the portal (checker and
realm) and one listener per endpoint string.  Nothing here imports the global
reactor at module level; a caller that does not pass one gets the running
reactor.

Embedding::

    from cosgw.config import load_config
    from cosgw.service import makeService

    service = makeService(load_config("/etc/cosgw.ini"), reactor)
    service.setServiceParent(application)   # or service.startService()
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Optional

from twisted.application.service import MultiService
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, Logger
from twisted.python.threadpool import ThreadPool

from cosgw.audit import SessionTable
from cosgw.auth.passwd import DEFAULT_USERNAME
from cosgw.auth.passwords import PasswordChecker
from cosgw.auth.realm import Realm
from cosgw.config import Config, StorageConfig, UserConfig
from cosgw.embedded import announce, embedded_user
from cosgw.interfaces import IObjectStore
from cosgw.logs import output_observer
from cosgw.logs.twistd import offer_log_observer
from cosgw.policy.accounts import Account, Accounts
from cosgw.policy.defender import LoginDefender
from cosgw.policy.limits import ConnectionLimits, NetworkRule, SessionLimits
from cosgw.policy.quota import Usage
from cosgw.policy.throttle import RateLimit
from cosgw.runtime import LogFileService, ThreadPoolService, XferlogService
from cosgw.storage._runner import BlockingRunner
from cosgw.storage.sweeper import UploadSweeper
from cosgw.transfer import DownloadBuffers, TransferSettings, UploadBuffers
from cosgw.transfer.buffers import tune_malloc
from cosgw.vfs import METADATA_PREFIX, home_prefix, is_hidden_key

if TYPE_CHECKING:
    from cosgw.admin import AdminService
    from cosgw.frontends.ftp.service import FTPFrontend
    from cosgw.frontends.sftp.service import SFTPFrontend
    from cosgw.frontends.webdav.service import WebDAVFrontend
    from cosgw.lifecycle.drain import Drain
    from cosgw.lifecycle.reload import Reloader
    from cosgw.policy.shared import SharedStore

log = Logger()


class GatewayService(MultiService):
    """The running gateway; its frontends say where they listen."""

    def __init__(self) -> None:
        super().__init__()
        self.ftp: Optional[FTPFrontend] = None
        self.stores: dict[str, IObjectStore] = {}
        self.accounts: Optional[Accounts] = None
        self.pool: Optional[ThreadPool] = None
        self.limits: Optional[ConnectionLimits] = None
        self.sftp: Optional[SFTPFrontend] = None
        self.webdav: Optional[WebDAVFrontend] = None
        self.defender: Optional[LoginDefender] = None
        self.sessions: Optional[SessionTable] = None
        #: The admin listener; None when admin_listen is empty.
        self.admin: Optional[AdminService] = None
        #: Reloads the config file (SIGHUP, the admin API).
        self.reloader: Optional[Reloader] = None
        #: What stopService does first (L{cosgw.lifecycle.drain}).
        self.drain: Optional[Drain] = None
        #: The link to Redis when [server] shared_state is set
        #: (L{cosgw.policy.shared}); None: every rule is this process's.
        self.shared: Optional[SharedStore] = None
        #: The observer for the log of the program that runs the gateway
        #: (twistd's standard output or log file), in log_format from
        #: log_level; None: leave that log as it is.
        self.log_output: Optional[ILogObserver] = None

    def setServiceParent(self, parent: Any) -> None:
        # twistd begins logging with its Application's ILogObserver
        # component (set here, unless a .tac set its own), which is how
        # log_format and log_level reach twistd's output.
        offer_log_observer(parent, self.log_output)
        super().setServiceParent(parent)

    def stopService(self) -> Deferred[Any]:
        """
        Drain first (new connections refused, transfers given drain_timeout
        to finish, L{cosgw.lifecycle.drain}), then stop every service: the
        same for twistd (whose shutdown waits for this Deferred) and for a
        program that embeds the gateway.
        """
        if self.drain is None:
            return super().stopService()
        drained = self.drain.begin("the service was stopped")
        return drained.addCallback(
            lambda _: MultiService.stopService(self) if self.running else None
        )

    def ready(self) -> Deferred[list[IListeningPort]]:
        """Fires with the FTP listening ports once they all listen."""
        assert self.ftp is not None, "makeService builds the FTP frontend"
        return self.ftp.ready()


def make_store(
    storage: StorageConfig,
    reactor: Any,
    pool: ThreadPool,
    threads: int,
    timeout: Optional[float] = None,
    retry_delays: Optional[Sequence[float]] = None,
) -> IObjectStore:
    """
    The object store for C{storage}, its blocking work run in C{pool}: the
    gateway's, and the C{cosgw} command's (which probes and lists uploads
    with the very classes the gateway uses).

    @param timeout: seconds a COS request may wait to connect and for each
        read; None: the SDK's default.
    @param retry_delays: as L{CosStore}'s; None: its default schedule.
    """
    if storage.kind == "local":
        from cosgw.storage.local import LocalStore

        assert storage.path is not None
        store = LocalStore(storage.path, reactor, pool)
        store.prepare()
        return store
    from cosgw.storage.cos import CosStore

    settings: dict[str, Any] = {
        "SecretId": storage.secret_id,
        "SecretKey": storage.secret_key,
        "Scheme": storage.scheme,
    }
    if storage.token:
        settings["Token"] = storage.token
    if storage.region:
        settings["Region"] = storage.region
    if storage.endpoint:
        settings["Endpoint"] = storage.endpoint
    if storage.address:
        settings["IP"], settings["Port"] = storage.address
        settings.setdefault("Region", storage.region or "ap-guangzhou")
    if storage.scheme == "https":
        settings["VerifySSL"] = storage.verify_tls
    if timeout is not None:
        settings["Timeout"] = timeout
    assert storage.bucket is not None
    return CosStore(
        storage.bucket,
        settings,
        reactor,
        pool,
        pool_size=threads,
        retry_delays=retry_delays,
    )


def _account(
    user: UserConfig,
    store: IObjectStore,
    settings: TransferSettings,
    reactor: Any,
    previous: Optional[Account] = None,
    metadata_prefix: str = METADATA_PREFIX,
) -> Account:
    """
    One user's account: their store, home and the rules that apply.

    @param previous: the user's account before a config reload: its quota
        usage (live counts) and rate limits (shared by all the user's
        sessions) are kept where the new rules are the same; an account
        that is the same in every way is C{previous} itself.
    """
    if user.max_file_size is not None:
        settings = dataclasses.replace(settings, max_file_size=user.max_file_size)
    usage = None
    if user.quota_bytes or user.quota_files:
        usage = Usage(
            store,
            home_prefix(user.home),
            user.quota_bytes or None,
            user.quota_files or None,
            ignore=functools.partial(is_hidden_key, metadata_prefix=metadata_prefix),
        )
        old = previous.usage if previous is not None else None
        if old is not None and _same_usage(old, usage):
            usage = old
    account = Account(
        name=user.name,
        store=store,
        home=user.home,
        permissions=frozenset(user.permissions),
        settings=settings,
        usage=usage,
        upload_limit=_rate(
            user.upload_rate, reactor, previous.upload_limit if previous else None
        ),
        download_limit=_rate(
            user.download_rate, reactor, previous.download_limit if previous else None
        ),
        max_sessions=user.max_sessions,
        network=NetworkRule(user.allowed_networks, user.denied_networks),
        metadata_prefix=metadata_prefix,
    )
    return previous if account == previous else account


def _same_usage(old: Usage, new: Usage) -> bool:
    """Whether a quota counts the same files against the same limits."""
    return (old.store, old.prefix, old.max_bytes, old.max_files) == (
        new.store,
        new.prefix,
        new.max_bytes,
        new.max_files,
    )


def _rate(
    rate: Optional[int], reactor: Any, previous: Optional[RateLimit]
) -> Optional[RateLimit]:
    """A user's rate limit: C{previous} when its rate is the same."""
    if not rate:
        return None
    if previous is not None and previous.rate == rate:
        return previous
    return RateLimit(rate, reactor)


def account_table(
    users: Mapping[str, UserConfig],
    stores: Mapping[str, IObjectStore],
    settings: TransferSettings,
    reactor: Any,
    previous: Mapping[str, Account] = MappingProxyType({}),
    metadata_prefix: str = METADATA_PREFIX,
) -> dict[str, Account]:
    """
    Every user's account, for makeService and for a reload (which passes
    the accounts it replaces as C{previous}, see L{_account}).
    """
    return {
        name: _account(
            user,
            stores[user.storage],
            settings,
            reactor,
            previous.get(name),
            metadata_prefix,
        )
        for name, user in users.items()
    }


def makeService(config: Config, reactor: Any = None) -> GatewayService:
    """
    Build the gateway for C{config}.  Blocking set-up (creating directories,
    the embedded account, host keys and certificates) happens here, before
    the reactor runs.  The order is the dependency order: the pool, the
    stores, the accounts and the policy, the portal, then the frontends,
    each built whole from what it is given.
    """
    if reactor is None:
        from twisted.internet import reactor as running

        reactor = running
    from cosgw.frontends.frontend import SharedParts
    from cosgw.frontends.ftp.service import FTPFrontend
    from cosgw.frontends.proxied import ProxySettings

    for notice in config.notices:
        log.warn("config: {notice}", notice=notice)

    service = GatewayService()
    _log_outputs(service, config)
    # Before the pool's threads exist: they share the one heap.
    tune_malloc()
    threads = config.transfer.threads
    pool = ThreadPool(minthreads=0, maxthreads=threads, name="cosgw")
    service.pool = pool
    ThreadPoolService(pool).setServiceParent(service)

    users = dict(config.users)
    generated: Optional[str] = None
    if config.embedded:
        user, generated = embedded_user(config)
        users[user.name] = user

    for name, storage in config.storages.items():
        service.stores[name] = make_store(storage, reactor, pool, threads)
        log.info(
            "storage {name}: {where}", name=name, where=service.stores[name].description
        )
    service.accounts = _accounts(config, users, service.stores, reactor, pool)
    UploadSweeper(
        service.stores,
        config.transfer.stale_upload_age,
        reactor,
        active=service.accounts.registry,
        swept=service.accounts.registry.gone,
    ).setServiceParent(service)
    service.defender, service.limits = login_policy(config, reactor)
    if config.server.shared_state:
        _share(service, config, reactor)

    realm = Realm()
    service.sessions = SessionTable(reactor)
    parts = SharedParts(
        portal=_portal(config, users, realm, reactor, pool),
        realm=realm,
        accounts=service.accounts,
        limits=service.limits,
        defender=service.defender,
        reactor=reactor,
        sessions=service.sessions,
        proxy=ProxySettings.from_config(config.server),
    )
    service.ftp = FTPFrontend(config, parts)
    service.ftp.setServiceParent(service)
    if config.server.sftp_listen:
        from cosgw.frontends.sftp.service import SFTPFrontend

        service.sftp = SFTPFrontend(config, parts)
        service.sftp.setServiceParent(service)
    if config.server.webdav_listen:
        from cosgw.frontends.webdav.service import WebDAVFrontend

        ftp = service.ftp
        service.webdav = WebDAVFrontend(config, parts, lambda: ftp.tls)
        service.webdav.setServiceParent(service)
    from cosgw.lifecycle.reload import Reloader, ReloadService
    from cosgw.systemd import SystemdNotifier

    notifier = SystemdNotifier.from_environment(reactor)
    service.reloader = Reloader(service, config, reactor, notifier)
    ReloadService(service.reloader, reactor).setServiceParent(service)
    if config.server.admin_listen:
        _admin(config, service, parts, reactor)

    if config.embedded:
        announce(service, users[DEFAULT_USERNAME], generated)
    # Last, so it is stopped first: STOPPING=1 before anything stops.
    if notifier is not None:
        notifier.setServiceParent(service)
    from cosgw.lifecycle.drain import gateway_drain

    service.drain = gateway_drain(
        service, config.server.drain_timeout, reactor, notifier
    )
    return service


def _share(service: GatewayService, config: Config, reactor: Any) -> None:
    """
    Shared state: bans, session and connection counts and quotas held
    across replicas in Redis; started before the listeners, stopped after
    them (releasing this replica's counts at once).
    """
    from cosgw.policy.shared import share_policy

    assert service.defender and service.limits and service.accounts
    assert config.server.shared_state is not None
    service.shared = share_policy(
        config.server.shared_state,
        config.server.shared_state_failure,
        reactor,
        service.defender,
        service.limits,
        service.accounts,
    )
    service.shared.setServiceParent(service)


def _log_outputs(service: GatewayService, config: Config) -> None:
    """The log outputs: standard output, log_dir's daily file, the xferlog."""
    server = config.server
    service.log_output = output_observer(
        sys.stdout, server.log_format, server.log_level
    )
    if server.log_dir is not None:
        LogFileService(
            server.log_dir, server.log_level, server.log_format
        ).setServiceParent(service)
    if server.xferlog is not None:
        XferlogService(server.xferlog).setServiceParent(service)


def _admin(config: Config, service: GatewayService, parts: Any, reactor: Any) -> None:
    """
    The admin listener, last: it watches the listeners and stores built
    before it, and, stopped first, stops counting before they go.
    """
    from cosgw.admin import AdminService

    assert service.accounts is not None and service.pool is not None
    assert service.defender is not None and service.sessions is not None
    service.admin = AdminService(
        config.server.admin_listen,
        service,
        service.sessions,
        service.accounts,
        service.pool,
        service.defender,
        service.stores,
        reactor,
        users=config.server.admin_users,
        checker=parts.portal.checkers.get(IUsernamePassword),
        reload=service.reloader.answer if service.reloader is not None else None,
    )
    service.admin.setServiceParent(service)


def _accounts(
    config: Config,
    users: dict[str, UserConfig],
    stores: dict[str, IObjectStore],
    reactor: Any,
    pool: ThreadPool,
) -> Accounts:
    """
    Every user's account, sharing one upload registry and session count,
    and one budget for the part buffers of every upload.
    """
    runner = BlockingRunner(reactor, pool, config.transfer.threads * 2)
    settings = transfer_settings(config, runner)
    return Accounts(
        account_table(
            users,
            stores,
            settings,
            reactor,
            metadata_prefix=config.server.metadata_prefix,
        ),
        settings,
        runner=runner,
        sessions=SessionLimits(),
        clock=reactor,
    )


def transfer_settings(config: Config, runner: BlockingRunner) -> TransferSettings:
    """The gateway's transfer settings, with the buffers every upload shares."""
    transfer = config.transfer
    return TransferSettings(
        part_size=transfer.part_size,
        parts_in_flight=transfer.parts_in_flight,
        read_chunk=transfer.read_chunk,
        max_file_size=transfer.max_file_size,
        resume_uploads=transfer.resume_uploads,
        buffers=UploadBuffers(transfer.upload_buffer_budget, runner),
        download_buffers=DownloadBuffers(transfer.download_buffer_budget),
    )


def login_policy(
    config: Config, reactor: Any
) -> tuple[LoginDefender, ConnectionLimits]:
    """
    The defender and the connection limits every listener shares; on a
    reload, the running ones take their settings from a new pair.
    """
    server = config.server
    defender = LoginDefender(
        reactor,
        max_failures=server.login_max_failures,
        window=server.login_failure_window,
        ban_time=server.login_ban_time,
        base_delay=server.login_failure_delay,
        # As documented: doubling, at most 16 times the first delay.
        max_delay=16 * server.login_failure_delay,
        ipv6_prefix=server.ipv6_prefix,
        # An address may hold max_connections_per_ip connections, each with
        # a login under way; more than that waiting is a flood.
        max_waiting=server.max_connections_per_ip or 64,
    )
    limits = ConnectionLimits(
        max_total=server.max_connections,
        max_per_ip=server.max_connections_per_ip,
        network=NetworkRule(server.allowed_networks, server.denied_networks),
        ipv6_prefix=server.ipv6_prefix,
    )
    return defender, limits


def _portal(
    config: Config,
    users: dict[str, UserConfig],
    realm: Realm,
    reactor: Any,
    pool: ThreadPool,
) -> Portal:
    """
    Passwords for every protocol, SSH keys when SFTP listens; the realm is
    filled in by the frontends, each registering its kind of avatar.
    """
    checkers: list[ICredentialsChecker] = [
        PasswordChecker(
            password_table(users),
            reactor,
            pool,
            failure_delay=0,  # the defender delays failed logins
        )
    ]
    if config.server.sftp_listen:
        from cosgw.auth.keys import KeyChecker

        checkers.append(KeyChecker(key_table(users)))
    return Portal(realm, checkers)


def password_table(users: Mapping[str, UserConfig]) -> dict[str, tuple[str, bool]]:
    """The passwords the password checker knows, by user name."""
    return {
        name: (u.password, u.password_is_hashed)
        for name, u in users.items()
        if u.password is not None
    }


def key_table(users: Mapping[str, UserConfig]) -> dict[str, tuple[str, ...]]:
    """The SSH public keys the key checker knows, by user name."""
    return {name: u.authorized_keys for name, u in users.items()}
