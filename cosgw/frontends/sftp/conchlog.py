"""
Conch's log lines, made quiet: the logger given to Conch's classes in place
of their own, and the one module-level logger of Conch the gateway meets.

Conch logs its chatter (one line per packet, window adjustment, channel,
authentication attempt, subsystem and SFTP request) at debug and at info.
All of it is debug here, emitted only when the gateway's C{log_level} is
C{debug} (L{ConchLogger.verbose}); otherwise it is dropped before it is even
built, so the event, its formatting and every observer cost nothing per
packet.  Conch's warnings and errors pass as they are.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from twisted.conch.ssh import session as conch_session
from twisted.logger import Logger, LogLevel

__all__ = ["ConchLogger", "set_conch_verbose"]


class ConchLogger(Logger):
    """
    The logger for Conch's classes (their C{_log}): debug and info events
    are emitted at debug, and only while L{verbose} is on.
    """

    #: Whether Conch's chatter is emitted (at debug): on for log_level debug.
    verbose: ClassVar[bool] = False

    def debug(self, format: Optional[str] = None, **kwargs: Any) -> None:
        if ConchLogger.verbose:
            self.emit(LogLevel.debug, format, **kwargs)

    def info(self, format: Optional[str] = None, **kwargs: Any) -> None:
        if ConchLogger.verbose:
            self.emit(LogLevel.debug, format, **kwargs)


def set_conch_verbose(verbose: bool) -> None:
    """
    Emit Conch's chatter (at debug) or not, for the whole process: the SFTP
    frontend sets it from the config's C{log_level}.
    """
    ConchLogger.verbose = verbose


# SSHSession logs through its module's logger, not a class attribute, so no
# subclass can replace it: every SFTP session logged 'Asking for subsystem
# "sftp"' at info.  Its replacement keeps the namespace.
conch_session.log = ConchLogger(namespace="twisted.conch.ssh.session")
