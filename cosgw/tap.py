"""
Options and service maker for ``twistd cosftp``.

A start that cannot succeed stops in its first seconds with one line naming
the config key and the reason, exit status 1, never a traceback:

  - the config is loaded in C{postOptions}: a bad file is one line naming
    the file, section and key on standard error.  C{SystemExit}, not
    twistd's C{UsageError}, whose handler prints all of twistd's usage
    text first: the options were right, the file was not;
  - makeService's own failures (a certificate or host key that cannot be
    used, a directory the gateway's user cannot create) likewise;
  - a listener that cannot listen raises L{ListenFailed} from twistd's
    C{privilegedStartService}, after twistd began logging and wrote its
    PID file, before the reactor runs.  twistd removes the PID file (and
    tells a daemon's parent) and lets it through; the hook set here logs
    it as one critical line where the log goes (standard output with
    C{-n}, C{--logfile}, syslog) instead of Python's traceback, and the
    process exits 1.

The service's log observer is built for the destination twistd's own
options name (L{cosgw.logs.twistd}).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Optional

from twisted.logger import Logger
from twisted.python import usage

from cosgw.config import ConfigError, embedded_config, load_config


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Serve Tencent COS buckets (or a local directory) over FTP.  With no "
        "--config, serve ./cosgw-data on port 2121 of 127.0.0.1 (of every "
        "interface with --listen-all) for the user 'cosgw', whose "
        "password is generated at first start and shown once in the log.  "
        "--config takes cosgw's INI format or a COS FTP Server V5 "
        "conf/vsftpd.conf unchanged."
    )
    optParameters = [
        ["config", "c", None, "Path to a cosgw INI file or a V5 vsftpd.conf."],
    ]
    optFlags = [
        [
            "listen-all",
            None,
            "With no --config: listen on every interface, not only 127.0.0.1.",
        ],
    ]

    def postOptions(self) -> None:
        try:
            if self["config"] and self["listen-all"]:
                raise ConfigError(
                    "--listen-all is for the embedded default; with --config,"
                    " the config's *_listen keys say where to listen"
                )
            if self["config"]:
                self.config = load_config(self["config"])
            else:
                self.config = embedded_config(Path.cwd(), self["listen-all"])
        except ConfigError as e:
            raise SystemExit(f"cosftp: {e}") from None


def _start_failure_hook() -> None:
    """
    Make an uncaught L{ListenFailed} one critical log line (see the module
    docstring); any other exception keeps Python's report.
    """
    from cosgw.frontends.listener import ListenFailed

    previous = sys.excepthook
    log = Logger(namespace="cosgw.service")

    def hook(
        kind: type[BaseException],
        value: BaseException,
        traceback: Optional[TracebackType],
    ) -> None:
        if isinstance(value, ListenFailed):
            log.critical("cosftp: {error}", error=str(value))
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


def makeService(options: Options) -> Any:
    from cosgw.logs.twistd import twistd_observer
    from cosgw.privileges import PrivilegeError, creating_as, running_as, twistd_user
    from cosgw.service import makeService as make

    try:
        # Files are created as the user twistd drops to (cosgw.privileges).
        with creating_as(twistd_user(options)):
            service = make(options.config)
    except (ConfigError, PrivilegeError) as e:
        # A certificate that cannot be read, found only when it is loaded.
        raise SystemExit(f"cosftp: {e}") from None
    except OSError as e:
        # A directory or file the gateway's user cannot create or read.
        if e.filename is None:
            raise
        who = running_as(options)
        raise SystemExit(f"cosftp: {e.filename}: {e.strerror} ({who})") from None
    # twistd's own options (-n, --logfile, --syslog, --logger) say where its
    # log goes; the gateway's observer goes there, in log_format from
    # log_level, instead of twistd's plain text of every level.
    twistd = getattr(options, "parent", None)
    if twistd is not None:
        service.log_output = twistd_observer(twistd, options.config.server)
        _start_failure_hook()
        # SIGTERM and SIGINT drain; twistd then exits 0 (cosgw.lifecycle.drain).
        from twisted.internet import reactor

        from cosgw.lifecycle.drain import install_signal_handlers

        if service.drain is not None:
            install_signal_handlers(service.drain, reactor)
    return service
