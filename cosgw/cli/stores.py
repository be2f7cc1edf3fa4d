"""
The gateway's own stores, for commands that talk to them, and the reactor
those commands run on.

A command builds each store with L{cosgw.service.make_store}, the factory
the gateway uses, so it reaches COS with the same settings, signatures and
error mapping: a probe that passes here passes in the gateway.  The stores'
blocking SDK calls run in the reactor's thread pool, never on the reactor
thread, and one attempt with a short timeout makes an unreachable store
fail fast instead of after the gateway's retries.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from cosgw.config import Config, ConfigError
from cosgw.interfaces import IObjectStore

#: Where the systemd unit (etc/systemd/cosgw.service) has the gateway read its
#: config: what a command reads unless told otherwise.
DEFAULT_CONFIG = "/etc/cosgw/cosgw.ini"

#: Store calls a command may have in flight at once.
THREADS = 4

#: The exit status of a command that failed in a way it did not foresee
#: (sysexits' EX_SOFTWARE).
EXIT_INTERNAL = 70

#: Seconds a store request may wait to connect, and for each read.
DEFAULT_TIMEOUT = 10.0


def pick_storages(config: Config, name: str | None) -> list[str]:
    """
    The names of the storages a command works on: C{name} alone, or every
    storage of C{config}.

    @raise ConfigError: if C{name} is not one of them.
    """
    if name is None:
        return sorted(config.storages)
    if name not in config.storages:
        known = ", ".join(sorted(config.storages)) or "none"
        raise ConfigError(f"no storage {name!r} in the config (it has: {known})")
    return [name]


def with_uploads_area(config: Config, names: list[str]) -> list[str]:
    """
    Those of C{names} that can hold unfinished uploads: every COS storage,
    and the local ones whose upload area exists.  Blocking (it looks at the
    disk): call it before the reactor runs.  A command must not create a
    local storage's directories, as the gateway does at start: run as
    root, it would leave them root's, and the gateway's user could not
    write there.
    """
    from cosgw.storage.local import TMP_DIR

    found = []
    for name in names:
        path = config.storages[name].path
        if path is None or (path / TMP_DIR).is_dir():
            found.append(name)
    return found


def open_stores(
    config: Config, names: list[str], reactor: Any, timeout: float
) -> Mapping[str, IObjectStore]:
    """
    A store for each of C{names}, each request tried once and waiting at
    most C{timeout} seconds to connect and for each read.  Building a store
    makes no request; a local one creates its directories when missing (see
    L{with_uploads_area}).
    """
    from cosgw.service import make_store

    pool = reactor.getThreadPool()
    return {
        name: make_store(
            config.storages[name],
            reactor,
            pool,
            THREADS,
            timeout=timeout,
            retry_delays=(),
        )
        for name in names
    }


def run(command: Callable[[Any], Coroutine[Any, Any, int]]) -> NoReturn:
    """
    Run C{command(reactor)} on a reactor and exit with the status it
    returns.  The reactor is imported here, when a command needs it, never
    when the package is imported.

    @raise SystemExit: always, with the status.
    """
    from twisted.internet.task import react

    def main(reactor: Any) -> Deferred[None]:
        def done(status: int) -> None:
            if status:
                raise SystemExit(status)

        def crashed(failure: Failure) -> None:
            # react would log it where nobody looks: no log observer runs.
            failure.trap(Exception)
            print("cosgw: internal error:", file=sys.stderr)
            failure.printTraceback(file=sys.stderr)
            raise SystemExit(EXIT_INTERNAL)

        d = Deferred.fromCoroutine(command(reactor))
        return d.addCallbacks(done, crashed)

    react(main)
