"""
The observer twistd's own log output gets under C{twistd cosftp}.

twistd begins logging with the L{ILogObserver} component of the
Application when it has one (the way a .tac file customises logging, and
what L{cosgw.service.GatewayService} sets from its C{log_output});
otherwise it builds a plain text observer that shows every level.  So that
C{log_format} and C{log_level} reach twistd's output too, the plugin builds
the observer twistd would have built, for the same destination, from
twistd's own options:

    - C{-n} without C{--logfile}, or C{--logfile=-}: standard output;
    - C{--logfile=PATH}, or a daemon without one (C{twistd.log}): twistd's
      size-rotated L{LogFile}, rotated on SIGUSR1 as twistd does;
    - C{--syslog}: twistd's syslog observer, at C{log_level} (syslog keeps
      its own format);
    - C{--logger}: the operator's own observer; twistd ignores the
      component then, and cosgw leaves it alone.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping
from typing import IO, Any, Optional, cast

from twisted.logger import ILogObserver, LegacyLogObserverWrapper, LogLevel
from twisted.python.components import Componentized
from twisted.python.log import ILogObserver as LegacyILogObserver
from twisted.python.logfile import LogFile

from cosgw.config import ServerConfig
from cosgw.logs.observers import AtLevel, output_observer

__all__ = ["offer_log_observer", "twistd_observer"]


def twistd_observer(
    options: Mapping[str, Any], server: ServerConfig
) -> Optional[ILogObserver]:
    """
    The observer for the log destination twistd's C{options} (its
    ServerOptions) name, or None when twistd should keep its own.
    """
    if options.get("logger"):
        return None
    if options.get("syslog"):
        from twisted.python.syslog import SyslogObserver

        # A legacy observer: the wrapper's stubs name only the new kind.
        legacy = cast(Any, SyslogObserver(options["prefix"]).emit)
        syslog = LegacyLogObserverWrapper(legacy)
        return AtLevel(syslog, LogLevel.levelWithName(server.log_level))
    path = options.get("logfile")
    daemon = not options.get("nodaemon")
    if path == "-" and daemon:
        return None  # twistd refuses this itself ("Daemons cannot log to stdout")
    if path == "-" or (not path and not daemon):
        return output_observer(sys.stdout, server.log_format, server.log_level)
    logfile = LogFile.fromFullPath(path or "twistd.log")
    _rotate_on_sigusr1(logfile)
    # A LogFile is a file in all but its stubs' name for it.
    return output_observer(cast(IO[Any], logfile), server.log_format, server.log_level)


def _rotate_on_sigusr1(logfile: LogFile) -> None:
    """As twistd does for its own log file, unless SIGUSR1 is taken."""
    if signal.getsignal(signal.SIGUSR1):
        return

    def rotate(signum: int, frame: Any) -> None:
        from twisted.internet import reactor
        from twisted.internet.interfaces import IReactorThreads

        # Rotate on the reactor's thread, not inside the signal handler.
        IReactorThreads(reactor).callFromThread(logfile.rotate)

    signal.signal(signal.SIGUSR1, rotate)


def offer_log_observer(parent: object, observer: Optional[ILogObserver]) -> None:
    """
    Make C{observer} the log observer of C{parent} when it is an
    Application (a Componentized) that has none yet, new or legacy: a .tac
    that set its own keeps it.
    """
    if observer is None or not isinstance(parent, Componentized):
        return
    for interface in (ILogObserver, LegacyILogObserver):
        if parent.getComponent(interface) is not None:
            return
    parent.setComponent(ILogObserver, observer)
