"""
Reload on SIGHUP (and C{cosgw reload}): the config file the gateway was
started with is read again, and what can change for new logins and
connections without dropping a session changes, in one swap.

  1. A request (SIGHUP, handed to the reactor thread; the admin API's
     C{POST /api/reload}) asks the L{Reloader}.  One reload runs at a time:
     requests that arrive meanwhile wait for one more run after it, which
     reads the file again, so the last edit is always the one applied.
  2. In the gateway's thread pool, so the reactor never waits on a disk, a
     hash or a key: the file is read and checked as at start
     (L{cosgw.config.load_config}: every key, password hashes, SSH public
     keys, endpoints), the TLS certificate, key and chain are read and
     matched, and the new parts are built by the functions makeService
     builds them with (L{cosgw.service}): the accounts, the key checker,
     a login defender and connection limits to take settings from.
     Nothing that runs is touched.
  3. On the reactor thread, in one turn: the accounts table, the password
     checker's table, the key checker, the defender's and the connection
     limits' settings, the FTPS certificate and TLS policies, and the log
     level of every output.  A login is checked against one whole config,
     the old or the new.

A session keeps what it logged in with: its file system holds its account's
store, permissions, quota usage and rate limits.  An account whose quota is
unchanged keeps its usage object (its counts are live), one whose rate is
unchanged its rate limit (shared by the user's sessions); the session
counts (max_sessions), the upload registry and the buffers are the same
objects before and after.  The defender keeps its bans and failures, the
connection limits their counts.  An FTPS connection keeps the certificate
it began with, and its data connections with it (they resume its TLS
session).

A config that fails (a L{ConfigError}, a certificate that cannot be read, a
key that does not match) changes nothing: one error line says why.  Changes
that need a restart (listeners, passive ports, storages, state_dir,
threads, the admin listener, log outputs other than the level, ...) are one
warning line naming them; the rest still applies.  One info line says what
changed: users added, removed and changed by name (and which of their
settings, never a value), [server] keys, the certificate's fingerprint.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from twisted.application.service import Service
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from cosgw.auth.passwords import PasswordChecker
from cosgw.config import Config, ConfigError, UserConfig, load_config
from cosgw.escaping import for_log
from cosgw.logs import set_level
from cosgw.policy.accounts import Account
from cosgw.policy.defender import LoginDefender
from cosgw.policy.limits import ConnectionLimits
from cosgw.runtime import LogFileService
from cosgw.service import account_table, key_table, login_policy, password_table

if TYPE_CHECKING:
    from cosgw.auth.keys import KeyChecker
    from cosgw.frontends.ftp.tls import ServerTLS
    from cosgw.service import GatewayService
    from cosgw.systemd import SystemdNotifier

__all__ = ["RELOADED_SERVER_KEYS", "ReloadResult", "ReloadService", "Reloader"]

log = Logger(namespace="cosgw.reload")

#: The [server] keys a reload applies; a change to any other needs a
#: restart.
RELOADED_SERVER_KEYS = frozenset(
    {
        "max_connections",
        "max_connections_per_ip",
        "allowed_networks",
        "denied_networks",
        "login_max_failures",
        "login_failure_window",
        "login_ban_time",
        "login_failure_delay",
        "log_level",
        "tls_certificate",
        "tls_key",
        "tls_chain",
        "tls_required",
        "tls_data_required",
    }
)

#: A user's settings as a reload names them (the password's two fields are
#: one).
_USER_SETTING = {"password_is_hashed": "password"}


@dataclasses.dataclass(frozen=True)
class ReloadResult:
    """What one reload did, for its log lines and the admin API."""

    #: "applied" (something changed), "unchanged" or "failed".
    status: str
    #: Who asked: "SIGHUP", "admin API (...)".
    trigger: str
    config: Optional[Path]
    changes: tuple[str, ...] = ()
    #: Changes the file holds that wait for a restart.
    needs_restart: tuple[str, ...] = ()
    #: Why nothing was applied (status "failed"); one line.
    error: Optional[str] = None

    def describe(self) -> dict[str, Any]:
        """As the admin API answers it (JSON)."""
        return {
            "status": self.status,
            "trigger": self.trigger,
            "config": None if self.config is None else str(self.config),
            "changes": list(self.changes),
            "needs_restart": list(self.needs_restart),
            "error": self.error,
        }


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A new config and the parts built from it, ready to swap in."""

    config: Config
    #: The users in effect after the swap (see L{_user_changes}).
    users: Mapping[str, UserConfig]
    accounts: dict[str, Account]
    passwords: dict[str, tuple[str, bool]]
    keys: Optional[KeyChecker]
    #: The new certificate; None: the same as the running one.
    tls: Optional[ServerTLS]
    defender: LoginDefender
    limits: ConnectionLimits
    changes: tuple[str, ...]
    needs_restart: tuple[str, ...]


class Reloader:
    """
    Reloads the config of one gateway (see the module docstring).

    @ivar config: the config last applied (the started one at first).
    """

    def __init__(
        self,
        gateway: GatewayService,
        config: Config,
        reactor: Any,
        systemd: Optional[SystemdNotifier] = None,
    ) -> None:
        """
        @param gateway: as makeService built it: its accounts, policy,
            frontends, stores, pool and log outputs are what a reload
            swaps parts of.
        @param config: the config it was built from.
        @param systemd: told RELOADING=1 and READY=1 around each reload.
        """
        self.config = config
        self._started = config
        #: The users in effect: the config's, less those whose storage
        #: waits for a restart.
        self._users: Mapping[str, UserConfig] = dict(config.users)
        self._gateway = gateway
        self._reactor = reactor
        self._systemd = systemd
        self._level = config.server.log_level
        self._busy = False
        self._waiting: list[tuple[str, Deferred[ReloadResult]]] = []

    def reload(self, trigger: str) -> Deferred[ReloadResult]:
        """
        Reload the config file now, or right after the reload under way.

        @param trigger: who asked, for the log line.
        @return: fires with the L{ReloadResult}; never fails.
        """
        d: Deferred[ReloadResult] = Deferred()
        if self._busy:
            self._waiting.append((trigger, d))
        else:
            self._start(trigger, [d])
        return d

    def answer(self, trigger: str) -> Deferred[dict[str, Any]]:
        """L{reload}, its result as the admin API answers it."""
        return self.reload(trigger).addCallback(ReloadResult.describe)

    def _start(self, trigger: str, waiters: list[Deferred[ReloadResult]]) -> None:
        self._busy = True
        if self._systemd is not None:
            self._systemd.reloading()
        self._run(trigger).addCallback(self._done, waiters)

    def _done(
        self, result: ReloadResult, waiters: list[Deferred[ReloadResult]]
    ) -> None:
        if self._systemd is not None:
            self._systemd.reloaded(_status_line(result))
        self._busy = False
        for d in waiters:
            d.callback(result)
        if self._waiting and not self._busy:
            waiting, self._waiting = self._waiting, []
            triggers = dict.fromkeys(trigger for trigger, _ in waiting)
            self._start(", ".join(triggers), [d for _, d in waiting])

    def _run(self, trigger: str) -> Deferred[ReloadResult]:
        path = self._started.source
        if path is None:
            reason = "started without --config: no file to reload"
            return succeed(self._failed(trigger, None, reason))
        gateway = self._gateway
        assert gateway.pool is not None, "makeService makes the pool"
        d: Deferred[Any] = deferToThreadPool(
            self._reactor, gateway.pool, self._prepare, path
        )
        d.addCallback(self._apply, trigger, path)
        return d.addErrback(self._failure, trigger, path)

    # -- in the thread pool -------------------------------------------------

    def _prepare(self, path: Path) -> _Plan:
        """
        Runs in the thread pool: read, check and build (see the module
        docstring).  Reads the running parts, never changes them.

        @raise ConfigError: the file, or a file it names, cannot be used.
        @raise ValueError: a setting the new parts refuse.
        """
        from cosgw.frontends.ftp.service import read_server_tls

        new = load_config(path)
        started, gateway = self._started, self._gateway
        assert gateway.accounts is not None and gateway.ftp is not None
        users, user_changes, waiting = _user_changes(
            self._users, new.users, gateway.stores.keys()
        )
        changes = user_changes + _server_changes(self.config, new)
        restart = waiting + _restart_changes(started, new)
        # The certificate as the running gateway would load it: a state
        # directory moved by the new file waits for the restart.
        server = dataclasses.replace(new.server, state_dir=started.server.state_dir)
        tls, _ = read_server_tls(dataclasses.replace(new, server=server))
        running = gateway.ftp.tls
        if (tls.fingerprint, tls.chain) == (running.fingerprint, running.chain):
            new_tls = None
        else:
            new_tls = tls
            changes.append(f"TLS certificate SHA-256 {tls.fingerprint}")
        keys = None
        if gateway.sftp is not None:
            from cosgw.auth.keys import KeyChecker

            keys = KeyChecker(key_table(users))
        accounts = gateway.accounts
        defender, limits = login_policy(new, self._reactor)
        return _Plan(
            config=new,
            users=users,
            accounts=account_table(
                users,
                gateway.stores,
                accounts.settings,
                self._reactor,
                previous=accounts.accounts,
                metadata_prefix=new.server.metadata_prefix,
            ),
            passwords=password_table(users),
            keys=keys,
            tls=new_tls,
            defender=defender,
            limits=limits,
            changes=tuple(changes),
            needs_restart=tuple(restart),
        )

    # -- on the reactor thread ----------------------------------------------

    def _apply(self, plan: _Plan, trigger: str, path: Path) -> ReloadResult:
        """Swap the new parts in, in this one reactor turn, and say so."""
        gateway = self._gateway
        assert gateway.accounts is not None and gateway.ftp is not None
        assert gateway.defender is not None and gateway.limits is not None
        portal = gateway.ftp.parts.portal
        passwords = portal.checkers[IUsernamePassword]
        assert isinstance(passwords, PasswordChecker), "makeService registers it"
        gateway.accounts.replace(plan.accounts)
        passwords.users = plan.passwords
        if plan.keys is not None:
            portal.registerChecker(plan.keys)
        gateway.defender.adopt_settings(plan.defender)
        gateway.limits.adopt_settings(plan.limits)
        gateway.ftp.reconfigure(plan.config, plan.tls)
        if gateway.admin is not None:
            gateway.admin.access.forget()
        self.config, self._users = plan.config, plan.users
        status = "applied" if plan.changes else "unchanged"
        result = ReloadResult(status, trigger, path, plan.changes, plan.needs_restart)
        self._log_level_and_result(plan.config.server.log_level, result)
        return result

    def _log_level_and_result(self, level: str, result: ReloadResult) -> None:
        """
        Apply C{level} to every output, and log the result where both the
        old and the new level show it: before a quieter level, after a
        more verbose one.
        """
        old = LogLevel.levelWithName(self._level)
        quieter = LogLevel.levelWithName(level) > old
        if not quieter:
            self._set_level(level)
        summary = "; ".join(result.changes) or "no change"
        log.info(
            "reload ({trigger}) of {path}: {summary}",
            trigger=result.trigger,
            path=str(result.config),
            summary=summary,
        )
        if result.needs_restart:
            log.warn(
                "reload ({trigger}) of {path}: not applied until a restart: {keys}",
                trigger=result.trigger,
                path=str(result.config),
                keys=", ".join(result.needs_restart),
            )
        if quieter:
            self._set_level(level)

    def _set_level(self, level: str) -> None:
        """C{level} for every output of the gateway, and Conch's chatter."""
        from cosgw.frontends.sftp.conchlog import set_conch_verbose

        self._level = level
        gateway = self._gateway
        set_level(gateway.log_output, level)
        for child in gateway:
            if isinstance(child, LogFileService):
                child.set_level(level)
        if gateway.sftp is not None:
            set_conch_verbose(level == "debug")

    def _failure(self, failure: Failure, trigger: str, path: Path) -> ReloadResult:
        """A reload that read, checked or built something it cannot use."""
        error = failure.value
        if isinstance(error, ConfigError):
            reason = str(error)
        elif isinstance(error, (ValueError, OSError)):
            reason = f"{path}: {error}"
        else:
            reason = f"{path}: {type(error).__name__}: {error}"
        return self._failed(trigger, path, reason)

    def _failed(self, trigger: str, path: Optional[Path], reason: str) -> ReloadResult:
        """The one line a failed reload logs, and its result."""
        reason = " ".join(reason.split())
        log.error(
            "reload ({trigger}) failed, the running config is kept: {reason}",
            trigger=trigger,
            reason=reason,
        )
        return ReloadResult("failed", trigger, path, error=reason)


def _status_line(result: ReloadResult) -> str:
    """What systemd shows for the reload (C{systemctl status})."""
    if result.status == "failed":
        return f"reload failed, running the previous config: {result.error}"
    if result.needs_restart:
        return "config reloaded; some changes wait for a restart"
    return "config reloaded"


def _user_changes(
    old: Mapping[str, UserConfig],
    new: Mapping[str, UserConfig],
    stores: Collection[str],
) -> tuple[dict[str, UserConfig], list[str], list[str]]:
    """
    The users in effect after a reload from C{old} to C{new}, what changed
    (by name), and what waits for a restart: a user on a storage this
    process does not have stays as it was (or is not added).
    """
    users: dict[str, UserConfig] = {}
    added, changed, waiting = [], [], []
    for name, user in new.items():
        before = old.get(name)
        if user.storage not in stores:
            waiting.append(f"user {for_log(name)} (storage {for_log(user.storage)})")
            if before is not None:
                users[name] = before
            continue
        users[name] = user
        if before is None:
            added.append(for_log(name))
        elif before != user:
            settings = dict.fromkeys(
                _USER_SETTING.get(f.name, f.name)
                for f in dataclasses.fields(UserConfig)
                if getattr(before, f.name) != getattr(user, f.name)
            )
            changed.append(f"{for_log(name)} ({', '.join(settings)})")
    removed = [for_log(name) for name in old if name not in users]
    changes = []
    for what, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            changes.append(f"users {what}: {', '.join(names)}")
    return users, changes, waiting


def _server_changes(old: Config, new: Config) -> list[str]:
    """The [server] keys a reload applies that C{new} changes."""
    return [
        f"[server] {key}"
        for key in sorted(RELOADED_SERVER_KEYS)
        if getattr(old.server, key) != getattr(new.server, key)
    ]


def _restart_changes(started: Config, new: Config) -> list[str]:
    """What C{new} changes that only a restart applies."""
    waiting = [
        f"[server] {f.name}"
        for f in dataclasses.fields(started.server)
        if f.name not in RELOADED_SERVER_KEYS
        and getattr(started.server, f.name) != getattr(new.server, f.name)
    ]
    waiting += [
        f"[transfer] {f.name}"
        for f in dataclasses.fields(started.transfer)
        if getattr(started.transfer, f.name) != getattr(new.transfer, f.name)
    ]
    for name in sorted(set(started.storages) | set(new.storages)):
        if started.storages.get(name) != new.storages.get(name):
            # A user's own bucket is the storage "user:NAME".
            section = name if name.startswith("user:") else f"storage:{name}"
            waiting.append(f"[{for_log(section)}] storage")
    return waiting


class ReloadService(Service):
    """
    Reloads on SIGHUP.  twistd leaves SIGHUP at its default, which ends the
    process with no log line; the handler is installed once the reactor
    runs and stays for the life of the process, so a SIGHUP while the
    gateway stops (a drain) is ignored with a line rather than fatal.
    """

    name = "reload"

    def __init__(self, reloader: Reloader, reactor: Any) -> None:
        self.reloader = reloader
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        # signal.signal works in the main thread only, where the reactor
        # of twistd (and of any program that embeds the gateway) runs.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._signalled)

    def _signalled(self, signum: int, frame: Any) -> None:
        # In a signal handler: hand over to the reactor thread, nothing else.
        self._reactor.callFromThread(self._hangup)

    def _hangup(self) -> None:
        if not self.running:
            log.info("SIGHUP ignored: the gateway is stopping")
            return
        self.reloader.reload("SIGHUP")
