"""
The gateway under systemd's C{Type=notify} (sd_notify(3)): it tells the
service manager C{READY=1} once every listener listens, C{RELOADING=1} then
C{READY=1} around a config reload (L{cosgw.lifecycle.reload}),
C{STOPPING=1} when a stop begins, and C{WATCHDOG=1} every half
C{WatchdogSec} while the reactor turns, so a gateway whose event loop is
stuck is restarted.

No libsystemd and no C{sdnotify} package: the protocol is one datagram of
C{KEY=value} lines to the C{AF_UNIX} socket named by C{$NOTIFY_SOCKET} (a
path, or C{@name} for Linux's abstract namespace).  The socket is
non-blocking and a datagram is sent whole or not at all, so the reactor
never waits on the service manager; a message that cannot be sent is
dropped with one warning, as libsystemd drops it with an error code.

The service is added by C{makeService} only when C{$NOTIFY_SOCKET} is set:
under C{twistd -n} started by systemd, the main process is the one that
sends (C{NotifyAccess=main}).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any, Optional, Union

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cosgw.frontends.listener import ListenerService

__all__ = ["Notifier", "SystemdNotifier", "notify_address"]

log = Logger(namespace="cosgw.service")


def notify_address(environ: Mapping[str, str]) -> Optional[Union[str, bytes]]:
    """
    The address C{$NOTIFY_SOCKET} names, as C{sendto} takes it: a path, or
    for C{@name} the abstract name (a leading NUL byte); None when unset or
    of a kind this module does not speak (C{vsock:}, systemd 253 and later
    in virtual machines).
    """
    value = environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    if value:
        log.warn(
            "NOTIFY_SOCKET={value} is not a unix socket; systemd will not be told"
            " when the gateway is ready",
            value=value,
        )
    return None


class Notifier:
    """Sends sd_notify messages to one address, never blocking."""

    def __init__(self, address: Union[str, bytes]) -> None:
        self.address = address
        self._socket = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
        )
        self._socket.setblocking(False)
        self._warned = False

    def send(self, *fields: str) -> bool:
        """
        Send C{fields} (C{"READY=1"}, C{"STATUS=..."}) as one message.

        @return: whether it was sent; a failure (no listener on the socket,
            its queue full) is logged once and otherwise ignored.
        """
        try:
            self._socket.sendto("\n".join(fields).encode("utf-8"), self.address)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warn(
                    "cannot tell systemd {fields}: {error}",
                    fields=" ".join(f.split("=", 1)[0] for f in fields),
                    error=e.strerror or str(e),
                )
            return False
        return True

    def close(self) -> None:
        self._socket.close()


def _listeners(service: IService) -> Iterator[ListenerService]:
    """Every listener in the tree below C{service}."""
    if isinstance(service, ListenerService):
        yield service
    if isinstance(service, MultiService):
        for child in service:
            yield from _listeners(child)


def _address(port: IListeningPort) -> str:
    host: Any = port.getHost()
    if hasattr(host, "port"):
        return (
            f"[{host.host}]:{host.port}"
            if ":" in host.host
            else f"{host.host}:{host.port}"
        )
    return str(getattr(host, "name", host))


class SystemdNotifier(Service):
    """
    Tells systemd about the gateway it belongs to (its parent's tree):
    ready once every listener there listens and the reactor runs, stopping
    when the stop begins, alive every C{watchdog} seconds.
    """

    name = "systemd"

    def __init__(
        self, notifier: Notifier, reactor: Any, watchdog: Optional[float] = None
    ) -> None:
        """
        @param watchdog: seconds between two C{WATCHDOG=1} (half of
            C{WatchdogSec}); None: no watchdog.
        """
        self.notifier = notifier
        self._reactor = reactor
        self._watchdog: Optional[LoopingCall] = None
        self._stopping = False
        if watchdog is not None:
            self._watchdog = LoopingCall(self.notifier.send, "WATCHDOG=1")
            self._watchdog.clock = reactor
            self._interval = watchdog

    @classmethod
    def from_environment(
        cls, reactor: Any, environ: Mapping[str, str] = os.environ
    ) -> Optional[SystemdNotifier]:
        """
        The notifier systemd asks for, if it does (C{$NOTIFY_SOCKET}); its
        watchdog when C{$WATCHDOG_USEC} is set for this process (no
        C{$WATCHDOG_PID}, or ours), as sd_watchdog_enabled(3) says.
        """
        address = notify_address(environ)
        if address is None:
            return None
        watchdog = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            watchdog = int(usec) / 2e6
        return cls(Notifier(address), reactor, watchdog)

    def startService(self) -> None:
        super().startService()
        if self._watchdog is not None and not self._watchdog.running:
            self._watchdog.start(self._interval, now=True)
        root: IService = self
        while root.parent is not None:
            root = root.parent
        listeners = list(_listeners(root))
        waiting = DeferredList(
            [listener.listening for listener in listeners],
            fireOnOneErrback=True,
            consumeErrors=True,
        )

        def ready(_: object) -> None:
            where = ", ".join(
                _address(listener.port)
                for listener in listeners
                if listener.port is not None
            )
            self._reactor.callWhenRunning(
                self.notifier.send, "READY=1", f"STATUS=listening on {where}"
            )

        # A listener that failed was logged where it failed; systemd then
        # sees the process end without READY.
        waiting.addCallbacks(ready, lambda failure: None)

    def reloading(self) -> None:
        """
        Say C{RELOADING=1}, with the C{MONOTONIC_USEC} that
        C{Type=notify-reload} needs to match it to the reload it asked for
        (sd_notify(3)); L{reloaded} must follow.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.send(
            "RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the config"
        )

    def reloaded(self, status: str) -> None:
        """Say C{READY=1} again, the reload over (applied or not): C{status}."""
        self.notifier.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        """
        Say C{STOPPING=1} (once), with C{status}: the drain says it as it
        begins (L{cosgw.lifecycle.drain}), before any service stops.  The
        watchdog keeps ticking: a drain may outlast C{WatchdogSec}, and
        the process is alive until the reactor stops, which ends the ticks.
        """
        if not self._stopping:
            self._stopping = True
            self.notifier.send("STOPPING=1", f"STATUS={status}")

    def stopService(self) -> None:
        """Say C{STOPPING=1}, unless the drain said it."""
        super().stopService()
        self.stopping()
