"""
The keys about how clients reach the gateway and what replicas share:
PROXY protocol headers and whom to believe, WebDAV listeners, FTP name
encodings, the shared-state store and the reserved metadata prefix.

They are read here, not in L{cosgw.config.native}, so that the loader of
the older keys stays one screenful per group; both the server's and a
user's keys of this kind are read in this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from urllib.parse import urlsplit

from cosgw.config.fields import parse_listen, parse_networks
from cosgw.config.ini import ConfigError, Section
from cosgw.config.model import SHARED_STATE_FAILURES, ServerConfig, UserConfig
from cosgw.config.values import parse_encoding

#: The [server] keys this module reads.
SERVER_KEYS = (
    "proxy_protocol",
    "proxy_trusted_networks",
    "shared_state",
    "shared_state_failure",
    "webdav_listen",
    "webdav_allow_plain_auth",
    "ftp_encoding",
    "metadata_prefix",
)
#: The [user:NAME] keys this module reads.
USER_KEYS = ("ftp_encoding",)

_ENCODING_EXPECTED = (
    "'utf-8', 'auto' or an ASCII-compatible Python codec such as 'gbk',"
    " 'gb18030' or 'big5'"
)
_REDIS_EXPECTED = (
    "a Redis URL 'redis://[[user]:password@]host[:port][/db]' (or rediss:// for"
    " TLS), without options"
)


def _without_password(value: str) -> str:
    """C{value} as an error may show it: any password replaced by C{***}."""
    scheme, sep, rest = value.partition("://")
    authority, slash, path = rest.partition("/")
    credentials, at, host = authority.rpartition("@")
    if not at or ":" not in credentials:
        return value
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}{slash}{path}"


def parse_redis_url(sec: Section, key: str) -> str | None:
    """
    A C{redis://} or C{rediss://} URL with a host; None when unset.  A
    password in it is never shown in an error.  Query options (txredisapi
    has none to give them to) and fragments are refused, so that nothing
    written is silently ignored.
    """
    value = sec.text(key)
    if not value:
        return None
    shown = _without_password(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        sec.fail(key, _REDIS_EXPECTED, shown)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        sec.fail(key, _REDIS_EXPECTED, shown)
    database = parts.path.strip("/")
    if (database and not database.isdigit()) or parts.query or parts.fragment:
        sec.fail(key, _REDIS_EXPECTED, shown)
    return value


def parse_metadata_prefix(sec: Section, key: str) -> str:
    """
    A key prefix of plain segments ending in C{/} (C{.cosgw/}); it must not
    be empty, since the gateway's own objects would then be among the
    users'.
    """
    value = sec.text(key)
    if value is None:
        return ServerConfig.metadata_prefix
    segments = value.strip("/").split("/")
    if not value.strip("/") or any(s in ("", ".", "..") for s in segments):
        sec.fail(key, "a key prefix such as '.cosgw/'", value)
    return "/".join(segments) + "/"


def check_homes(
    label: str, server: ServerConfig, users: Mapping[str, UserConfig]
) -> None:
    """
    @raise ConfigError: a user's home is inside [server] metadata_prefix,
        where the gateway keeps its own objects (the times clients set).
    """
    prefix = server.metadata_prefix
    for user in users.values():
        if (user.home + "/").startswith(prefix):
            raise ConfigError(
                f"{label}: [user:{user.name}] home: expected a path outside"
                f" [server] metadata_prefix {prefix!r}, which the gateway"
                f" keeps for itself, got {user.home!r}",
                path=label,
                section=f"user:{user.name}",
                key="home",
            )


def parse_ftp_encoding(sec: Section, key: str, default: str | None) -> str | None:
    value = sec.text(key)
    if value is None:
        return default
    try:
        return parse_encoding(value)
    except ValueError:
        sec.fail(key, _ENCODING_EXPECTED, value)


def server_reach(sec: Section, server: ServerConfig) -> ServerConfig:
    """C{[server]}'s keys of this module, on top of C{server}."""
    trusted = (
        parse_networks(sec, "proxy_trusted_networks")
        if sec.has("proxy_trusted_networks")
        else ServerConfig.proxy_trusted_networks
    )
    failure = (sec.text("shared_state_failure") or "open").lower()
    if failure not in SHARED_STATE_FAILURES:
        sec.fail("shared_state_failure", "'open' or 'closed'", failure)
    encoding = parse_ftp_encoding(sec, "ftp_encoding", ServerConfig.ftp_encoding)
    assert encoding is not None
    return dataclasses.replace(
        server,
        proxy_protocol=sec.boolean("proxy_protocol", False),
        proxy_trusted_networks=trusted,
        shared_state=parse_redis_url(sec, "shared_state"),
        shared_state_failure=failure,
        webdav_listen=parse_listen(sec, "webdav_listen", ()),
        webdav_allow_plain_auth=sec.boolean("webdav_allow_plain_auth", False),
        ftp_encoding=encoding,
        metadata_prefix=parse_metadata_prefix(sec, "metadata_prefix"),
    )


def user_reach(sec: Section, user: UserConfig) -> UserConfig:
    """C{[user:NAME]}'s keys of this module, on top of C{user}."""
    return dataclasses.replace(
        user, ftp_encoding=parse_ftp_encoding(sec, "ftp_encoding", None)
    )
