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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from twisted.application.service import MultiService, Service
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import DailyLogFile
from twisted.python.threadpool import ThreadPool

from cosgw.auth.passwd import DEFAULT_USERNAME, ensure_generated_account
from cosgw.auth.passwords import PasswordChecker
from cosgw.auth.realm import Realm
from cosgw.config import ALL_PERMISSIONS, Config, StorageConfig, UserConfig
from cosgw.interfaces import IObjectStore
from cosgw.policy.accounts import Account, Accounts
from cosgw.policy.defender import LoginDefender
from cosgw.policy.limits import ConnectionLimits, NetworkRule, SessionLimits
from cosgw.policy.quota import Usage
from cosgw.policy.throttle import RateLimit
from cosgw.storage._runner import BlockingRunner
from cosgw.transfer import TransferSettings
from cosgw.vfs import home_prefix, is_hidden_key

if TYPE_CHECKING:
    from cosgw.frontends.ftp.service import FTPFrontend
    from cosgw.frontends.sftp.service import SFTPFrontend

log = Logger()


class ThreadPoolService(Service):
    """Starts the gateway's own thread pool with the service and stops it last."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        if not self.pool.joined:
            self.pool.stop()


class LogFileService(Service):
    """
    Writes the gateway's log, from C{level} up, to a daily-rotated
    C{cosgw.log} in C{directory} (V5's log_dir), beside whatever twistd logs.
    """

    def __init__(self, directory: Path, level: str) -> None:
        self.directory = directory
        self.level = LogLevel.levelWithName(level)
        self._observer: Optional[FilteringLogObserver] = None
        self._file: Optional[DailyLogFile] = None

    def startService(self) -> None:
        super().startService()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = DailyLogFile("cosgw.log", str(self.directory))
        self._observer = FilteringLogObserver(
            textFileLogObserver(self._file),
            [LogLevelFilterPredicate(defaultLogLevel=self.level)],
        )
        globalLogPublisher.addObserver(self._observer)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None


class UploadSweeper(Service):
    """
    Aborts multipart uploads that nobody will finish: those initiated more
    than C{max_age} seconds ago, in every store, at start and then every
    C{interval} seconds.  A gateway that crashed mid-upload leaves such
    uploads behind (their parts cost storage and are invisible); so does one
    whose abort request failed.
    """

    def __init__(
        self,
        stores: dict[str, IObjectStore],
        max_age: float,
        clock: Any,
        interval: float = 3600,
        active: Optional[Any] = None,
    ) -> None:
        """
        @param active: The uploads this gateway is writing (an
            L{UploadRegistry}): never swept, however old (a resumed upload
            keeps the date it was begun).
        """
        self.active = active if active is not None else ()
        self.stores = stores
        self.max_age = max_age
        self.clock = clock
        self.interval = interval
        self._loop: Optional[LoopingCall] = None
        #: Fires with the number of uploads the latest sweep aborted.
        self.last_sweep: Optional[Deferred[int]] = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._sweep_logged)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _sweep_logged(self) -> Deferred[int]:
        # A failed sweep is logged; the loop must go on (the store may be
        # back in an hour).
        d = ensureDeferred(self.sweep())
        d.addErrback(lambda f: log.failure("sweeping stale uploads", f) and 0)
        done: Deferred[int] = Deferred()

        def report(count: int) -> int:
            done.callback(count)
            return count

        d.addCallback(report)
        self.last_sweep = done
        return d

    async def sweep(self) -> int:
        """
        @return: How many uploads were aborted.  Failures to abort one are
            logged and the sweep goes on with the next.
        """
        aborted = 0
        now = self.clock.seconds()
        for name, store in self.stores.items():
            for upload in await store.list_multipart(""):
                if (
                    now - upload.initiated < self.max_age
                    or upload.upload_id in self.active
                ):
                    continue
                try:
                    await store.abort_multipart(upload.key, upload.upload_id)
                except Exception:
                    log.failure(
                        "aborting stale upload {upload_id} of {key}",
                        upload_id=upload.upload_id,
                        key=upload.key,
                    )
                    continue
                aborted += 1
                log.info(
                    "storage {name}: aborted the stale upload of {key} started "
                    "{age:.0f}s ago",
                    name=name,
                    key=upload.key,
                    age=now - upload.initiated,
                )
        return aborted


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
        self.defender: Optional[LoginDefender] = None

    def ready(self) -> Deferred[list[IListeningPort]]:
        """Fires with the FTP listening ports once they all listen."""
        assert self.ftp is not None, "makeService builds the FTP frontend"
        return self.ftp.ready()


def _make_store(
    storage: StorageConfig, reactor: Any, pool: ThreadPool, threads: int
) -> IObjectStore:
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
    assert storage.bucket is not None
    return CosStore(storage.bucket, settings, reactor, pool, pool_size=threads)


def _account(
    user: UserConfig, store: IObjectStore, settings: TransferSettings, reactor: Any
) -> Account:
    """One user's account: their store, home and the rules that apply."""
    if user.max_file_size is not None:
        settings = dataclasses.replace(settings, max_file_size=user.max_file_size)
    usage = None
    if user.quota_bytes or user.quota_files:
        usage = Usage(
            store,
            home_prefix(user.home),
            user.quota_bytes or None,
            user.quota_files or None,
            ignore=is_hidden_key,
        )
    return Account(
        name=user.name,
        store=store,
        home=user.home,
        permissions=frozenset(user.permissions),
        settings=settings,
        usage=usage,
        upload_limit=RateLimit(user.upload_rate, reactor) if user.upload_rate else None,
        download_limit=(
            RateLimit(user.download_rate, reactor) if user.download_rate else None
        ),
        max_sessions=user.max_sessions,
        network=NetworkRule(user.allowed_networks, user.denied_networks),
    )


def _embedded_user(config: Config) -> tuple[UserConfig, Optional[str]]:
    """
    The embedded default's one user: its password is generated at first
    start, kept hashed in the state directory and shown once, so the
    second value is the password only on that first start.
    """
    stored, password = ensure_generated_account(config.server.state_dir)
    storage = next(iter(config.storages))
    user = UserConfig(
        name=DEFAULT_USERNAME,
        password=stored,
        password_is_hashed=True,
        storage=storage,
        home="",
        permissions=ALL_PERMISSIONS,
    )
    return user, password


def _announce(
    service: GatewayService, user: UserConfig, password: Optional[str]
) -> None:
    def say(ports: list[IListeningPort]) -> None:
        for port in ports:
            address: Any = port.getHost()  # a TCP port's: it has host and port
            host = (
                address.host if address.host not in ("0.0.0.0", "::") else "127.0.0.1"
            )
            if ":" in host:
                host = f"[{host}]"
            if password is not None:
                log.info(
                    "cosgw embedded default: log in at ftp://{user}@{host}:{port}/ "
                    "with password {password} (shown once; stored hashed)",
                    user=user.name,
                    host=host,
                    port=address.port,
                    password=password,
                )
            else:
                log.info(
                    "cosgw embedded default: log in at ftp://{user}@{host}:{port}/ "
                    "with the password shown at first start (delete {passwd} to "
                    "get a new one)",
                    user=user.name,
                    host=host,
                    port=address.port,
                    passwd="users.passwd in the state directory",
                )

    def say_also(scheme: str, note: str) -> Callable[[IListeningPort], None]:
        def say_it(port: IListeningPort) -> None:
            address: Any = port.getHost()  # a TCP port's: it has host and port
            host = (
                address.host if address.host not in ("0.0.0.0", "::") else "127.0.0.1"
            )
            log.info(
                "cosgw embedded default: {scheme}://{user}@{host}:{port}/ ({note})",
                scheme=scheme,
                user=user.name,
                host=host,
                port=address.port,
                note=note,
            )

        return say_it

    say_ftps = say_also(
        "ftps", "implicit FTPS; explicit FTPS: AUTH TLS on the FTP port"
    )
    say_sftp = say_also("sftp", "SFTP, same password; host key fingerprints above")

    service.ready().addCallbacks(say, lambda f: None)
    assert service.ftp is not None
    for listener in service.ftp.implicit_listeners:
        listener.listening.addCallbacks(say_ftps, lambda f: None)
    for listener in service.sftp.listeners if service.sftp is not None else ():
        listener.listening.addCallbacks(say_sftp, lambda f: None)


def makeService(config: Config, reactor: Any = None) -> GatewayService:
    """
    Build the gateway for C{config}.  Blocking set-up (creating directories,
    the embedded account) happens here, before the reactor runs.
    """
    if reactor is None:
        from twisted.internet import reactor as running

        reactor = running
    from cosgw.frontends.ftp.service import FTPFrontend

    for notice in config.notices:
        log.warn("config: {notice}", notice=notice)

    service = GatewayService()
    if config.server.log_dir is not None:
        LogFileService(config.server.log_dir, config.server.log_level).setServiceParent(
            service
        )
    threads = config.transfer.threads
    pool = ThreadPool(minthreads=0, maxthreads=threads, name="cosgw")
    service.pool = pool
    ThreadPoolService(pool).setServiceParent(service)

    users = dict(config.users)
    generated: Optional[str] = None
    if config.embedded:
        user, generated = _embedded_user(config)
        users[user.name] = user

    for name, storage in config.storages.items():
        service.stores[name] = _make_store(storage, reactor, pool, threads)
        log.info(
            "storage {name}: {where}", name=name, where=service.stores[name].description
        )

    settings = TransferSettings(
        part_size=config.transfer.part_size,
        parts_in_flight=config.transfer.parts_in_flight,
        read_chunk=config.transfer.read_chunk,
        max_file_size=config.transfer.max_file_size,
        resume_uploads=config.transfer.resume_uploads,
    )
    accounts = Accounts(
        {
            name: _account(user, service.stores[user.storage], settings, reactor)
            for name, user in users.items()
        },
        settings,
        runner=BlockingRunner(reactor, pool, threads * 2),
        sessions=SessionLimits(),
        clock=reactor,
    )
    service.accounts = accounts
    UploadSweeper(
        service.stores,
        config.transfer.stale_upload_age,
        reactor,
        active=accounts.registry,
    ).setServiceParent(service)

    server = config.server
    defender = LoginDefender(
        reactor,
        max_failures=server.login_max_failures,
        window=server.login_failure_window,
        ban_time=server.login_ban_time,
        base_delay=server.login_failure_delay,
    )
    limits = ConnectionLimits(
        max_total=server.max_connections,
        max_per_ip=server.max_connections_per_ip,
        network=NetworkRule(server.allowed_networks, server.denied_networks),
    )
    service.defender, service.limits = defender, limits
    checker = PasswordChecker(
        {
            name: (u.password, u.password_is_hashed)
            for name, u in users.items()
            if u.password is not None
        },
        reactor,
        pool,
        failure_delay=0,  # the defender delays failed logins
    )
    realm = Realm()
    checkers: list[Any] = [checker]
    if server.sftp_listen:
        from cosgw.auth.keys import KeyChecker

        checkers.append(
            KeyChecker({name: u.authorized_keys for name, u in users.items()})
        )
    portal = Portal(realm, checkers)

    service.ftp = FTPFrontend(
        config,
        portal=portal,
        realm=realm,
        accounts=accounts,
        limits=limits,
        defender=defender,
        reactor=reactor,
    )
    service.ftp.setServiceParent(service)
    if server.sftp_listen:
        from cosgw.frontends.sftp.service import SFTPFrontend

        service.sftp = SFTPFrontend(
            config,
            portal=portal,
            realm=realm,
            accounts=accounts,
            limits=limits,
            defender=defender,
            reactor=reactor,
        )
        service.sftp.setServiceParent(service)

    if config.embedded:
        _announce(service, users[DEFAULT_USERNAME], generated)
    return service
