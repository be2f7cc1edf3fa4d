"""
Server endpoint strings checked when the config is read, by Twisted itself.

An endpoint string is only a promise until Twisted parses it: a typo in the
type (C{tpc:3121}) or an argument (C{tcp:2121:intreface=...}) used to be
found when the service started, as a traceback.  Here the string is given to
C{twisted.internet.endpoints.serverFromString} (Twisted's own types and the
endpoint plugins installed on this host) with a reactor stand-in: the
endpoint it builds only keeps that reactor for the listen that never comes,
so nothing is bound and no reactor is installed.  C{cosgw check-config}
then reports the same errors the gateway would stop on.

C{twisted.internet.endpoints} is imported when a file names an endpoint,
not with the package (it takes a tenth of a second).

What only the running gateway can know stays for it: whether the port is
free, and for C{systemd:} whether systemd passed that socket, which is
looked up here only when systemd passed sockets to this very process
(C{$LISTEN_PID}), so that C{check-config} run from a shell accepts the
C{systemd:} endpoints of the shipped units.
"""

from __future__ import annotations

import os
import re
import socket

__all__ = [
    "LISTENER_OPTIONS",
    "endpoint_error",
    "endpoint_problem",
    "listener_option_problem",
    "split_listener",
]

#: cosgw's own options in a listener's string, taken out before Twisted
#: reads it: C{tcp:2121:proxy_protocol=yes:ftp_encoding=gbk}.
LISTENER_OPTIONS = ("proxy_protocol", "ftp_encoding")

#: Types C{serverFromString} knows without plugins.
_BUILT_IN = ("ssl", "tcp", "unix")
#: Endpoint strings split on colons not escaped with a backslash.
_FIELDS = re.compile(r"(?<!\\):")
#: A TypeError's leading C{"_parseTCP() "}: not the operator's business.
_FUNCTION = re.compile(r"^[\w.]+\(\) (got an? )?")


class _Nowhere:
    """
    The reactor the checked endpoints are built with.  Parsers only store
    it; a C{listen} would fail on it, and none is made.
    """


def _types(description: str) -> list[str]:
    """The endpoint types of C{description}, wrappers (C{haproxy:}) first."""
    fields = _FIELDS.split(description)
    types = [fields[0].lower()]
    while types[-1] == "haproxy" and len(fields) > len(types):
        types.append(fields[len(types)].lower())
    return types


def _known_types() -> list[str]:
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    plugins = getPlugins(IStreamServerEndpointStringParser)
    return sorted({*_BUILT_IN, *(p.prefix.lower() for p in plugins)})


def _sockets_passed() -> bool:
    """Whether systemd passed listening sockets to this process."""
    return os.environ.get("LISTEN_PID") == str(os.getpid())


def _systemd_domain_problem(description: str) -> str | None:
    """
    A C{systemd:} endpoint's C{domain}, which Twisted checks only after it
    found the socket (here, perhaps, not passed).
    """
    fields = _FIELDS.split(description)[1:]
    named = [f[len("domain=") :] for f in fields if f.startswith("domain=")]
    positional = [f for f in fields if "=" not in f]
    domain = (named or positional or [""])[0]
    if not domain or not hasattr(socket, f"AF_{domain}"):
        return "a systemd endpoint with domain=INET, INET6 or UNIX"
    return None


def endpoint_error(description: str, error: Exception) -> str:
    """
    Why C{serverFromString} refused C{description}, in words for the
    operator.
    """
    if isinstance(error, (KeyError, IndexError)) and "systemd" in _types(description):
        which = (
            f"named {error.args[0]!r}"
            if isinstance(error, KeyError)
            else "at that index"
        )
        return (
            f"systemd passed no socket {which} to this process (start it"
            " through its .socket units, or listen on tcp:PORT)"
        )
    if isinstance(error, OSError) and error.strerror:
        where = f" {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    return _FUNCTION.sub("", str(error)) or type(error).__name__


def split_listener(description: str) -> tuple[str, dict[str, str]]:
    """
    A listener's endpoint string without cosgw's own options, and those
    options (L{LISTENER_OPTIONS}) by name, their values as written.

    The options are fields like any endpoint argument, so an operator writes
    them where the other arguments go; Twisted never sees them (its parsers
    refuse arguments they do not know).
    """
    kept: list[str] = []
    options: dict[str, str] = {}
    for field in _FIELDS.split(description):
        name, equals, value = field.partition("=")
        if equals and name.lower() in LISTENER_OPTIONS and kept:
            options[name.lower()] = value
        else:
            kept.append(field)
    return ":".join(kept), options


def listener_option_problem(name: str, value: str) -> str | None:
    """
    What is wrong with one of cosgw's listener options, as the "expected"
    part of a config error; None when it can be used.
    """
    from cosgw.config.values import parse_bool, parse_encoding

    try:
        if name == "proxy_protocol":
            parse_bool(value)
        elif name == "ftp_encoding":
            parse_encoding(value)
    except ValueError:
        if name == "proxy_protocol":
            return "proxy_protocol=yes or proxy_protocol=no"
        return (
            "ftp_encoding=auto or an ASCII-compatible Python codec such as"
            " ftp_encoding=gbk"
        )
    return None


def endpoint_problem(description: str) -> str | None:
    """
    What is wrong with the server endpoint string C{description} (cosgw's
    listener options included), as the "expected" part of a config error;
    None when Twisted can use it.
    """
    description, options = split_listener(description)
    for name, value in options.items():
        problem = listener_option_problem(name, value)
        if problem is not None:
            return problem
    types = _types(description)
    own = options.get("proxy_protocol")
    if types[0] == "haproxy" and own is not None:
        from cosgw.config.values import parse_bool

        if not parse_bool(own):
            return "haproxy: or proxy_protocol=no, not both"
    if types[-1] not in _BUILT_IN:
        known = _known_types()
        if types[-1] not in known:
            return f"an endpoint type Twisted knows here ({', '.join(known)})"
    if types[-1] == "systemd":
        problem = _systemd_domain_problem(description)
        if problem is not None:
            return problem
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(_Nowhere(), description)
    except Exception as e:
        if "systemd" in types and isinstance(e, (KeyError, IndexError)):
            if not _sockets_passed():
                return None
        return f"an endpoint string Twisted can use ({endpoint_error(description, e)})"
    return None
