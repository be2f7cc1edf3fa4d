"""
Reading one key of a section into a checked value, the same way in both
formats: user names, passwords, COS storages and their endpoints, listeners,
passive ports, hosts, log levels, size limits, networks and host keys.

Each reader takes the L{Section} so that a bad value fails with the one-line
L{ConfigError} naming the file, section and key.  Where the formats name a
key differently, the caller passes the file's name for it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from cosgw.config.endpoints import endpoint_problem
from cosgw.config.ini import Section
from cosgw.config.model import (
    EPHEMERAL_PORTS,
    HASH_PREFIXES,
    LOG_FORMATS,
    LOG_LEVELS,
    STATE_DIR_NAME,
    ConfigError,
    ServerConfig,
    StorageConfig,
)
from cosgw.config.values import CONTROL_RE, format_size, is_hostname, is_ip, parse_size

# COS bucket: lower-case letters, digits and hyphens, then "-<appid>".
_BUCKET_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?-[0-9]+$")
_BUCKET_EXPECTED = "a COS bucket name 'name-appid' such as 'examplebucket-1250000000'"
_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def check_user_name(section: Section, key: str | None, name: str) -> None:
    if not name or any(c.isspace() for c in name) or ":" in name:
        section.fail(key, "a user name without whitespace or ':'", name)
    if CONTROL_RE.search(name):
        section.fail(key, "a user name without control characters", name)


def _check_bucket(section: Section, key: str, bucket: str) -> None:
    if len(bucket) > 63 or not _BUCKET_RE.match(bucket):
        section.fail(key, _BUCKET_EXPECTED, bucket)


def _check_region(section: Section, key: str, region: str) -> None:
    if not _REGION_RE.match(region):
        section.fail(key, "a COS region such as 'ap-guangzhou'", region)


_ENDPOINT_EXPECTED = (
    "a domain suffix such as 'cos.ap-guangzhou.myqcloud.com'"
    " or a URL 'http(s)://host[:port]'"
)


def _parse_endpoint(
    section: Section, key: str, value: str
) -> tuple[str | None, str | None, tuple[str, int] | None]:
    """
    Read an endpoint: a domain suffix for the SDK's C{Endpoint=}, or a URL
    whose scheme, host and port say where to connect instead.

    @return: C{(endpoint, scheme, address)}, the unset ones None.
    """
    if "://" not in value:
        if not is_hostname(value):
            section.fail(key, _ENDPOINT_EXPECTED, value)
        return value.lower(), None, None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        section.fail(key, _ENDPOINT_EXPECTED, value)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if (
        scheme not in ("http", "https")
        or not host
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or not (is_ip(host) or is_hostname(host))
        or port == 0
    ):
        section.fail(key, _ENDPOINT_EXPECTED, value)
    if port is None:
        port = 443 if scheme == "https" else 80
    return None, scheme, (host, port)


def _check_scheme(section: Section, key: str, value: str) -> str:
    scheme = value.lower()
    if scheme not in ("http", "https"):
        section.fail(key, "'http' or 'https'", value)
    return scheme


def check_password(section: Section, key: str, password: str) -> bool:
    """
    Say whether C{password} is a hash; refuse one that looks like a pasted
    hash but is cut short (it could never match, and nothing else would
    say why).
    """
    if not password.startswith(HASH_PREFIXES):
        return False
    parts = password.split("$")
    if len(parts) != 5 or not all(parts[2:]):
        section.fail(
            key,
            "a whole hash as printed by cosgw-passwd ('$scheme$params$salt$hash')",
            password,
        )
    return True


def plain_password_notice(label: str, where: str, user: str) -> str:
    return (
        f"{label}: {where}: user {user!r} has a plain-text password; run"
        " cosgw-passwd and put the hash it prints in place of the password"
    )


def passive_notice(label: str, where: str, low: int, high: int) -> str | None:
    first, last = EPHEMERAL_PORTS
    if high < first or low > last:
        return None
    return (
        f"{label}: {where}: passive ports {low}-{high} overlap Linux's ephemeral"
        f" port range {first}-{last} (net.ipv4.ip_local_port_range), where the"
        " gateway's own connections to COS take their local ports; passive"
        f" listens can then fail under load. Prefer a range above {last}."
    )


def load_cos_storage(
    sec: Section,
    name: str,
    keys: Mapping[str, str],
    notices: Optional[list[str]],
) -> StorageConfig:
    """
    Read a COS storage's bucket, region, keys, endpoint and scheme, whose
    key names differ between the formats (C{keys} maps cosgw's names to the
    file's).  C{notices} is V5's list: there, a URL endpoint overrides a
    conflicting C{cos_protocol} with a notice instead of an error.
    """
    bucket = sec.require(keys["bucket"], _BUCKET_EXPECTED)
    _check_bucket(sec, keys["bucket"], bucket)
    secret_id = sec.require(keys["secret_id"], "the SecretId of a COS API key")
    secret_key = sec.require(keys["secret_key"], "the SecretKey of a COS API key")
    region = sec.text(keys["region"])
    if region is not None:
        _check_region(sec, keys["region"], region)
    endpoint = address = None
    url_scheme = None
    endpoint_text = sec.text(keys["endpoint"])
    if endpoint_text is not None:
        endpoint, url_scheme, address = _parse_endpoint(
            sec, keys["endpoint"], endpoint_text
        )
    scheme_text = sec.text(keys["scheme"])
    scheme = "https"
    if scheme_text is not None:
        scheme = _check_scheme(sec, keys["scheme"], scheme_text)
    if url_scheme is not None:
        if scheme_text is not None and scheme != url_scheme:
            if notices is None:
                sec.fail(
                    keys["scheme"],
                    f"the endpoint URL's scheme {url_scheme!r} or no {keys['scheme']}",
                    scheme_text,
                )
            notices.append(
                f"{sec.label}: [{sec.name}] {keys['scheme']}: the endpoint URL"
                f" says {url_scheme!r}; cosgw uses the URL's scheme"
            )
        scheme = url_scheme
    if region is None and endpoint is None and address is None:
        sec.missing(
            keys["region"],
            f"a COS region such as 'ap-guangzhou' (or an {keys['endpoint']})",
        )
    return StorageConfig(
        name=name,
        kind="cos",
        bucket=bucket,
        region=region,
        secret_id=secret_id,
        secret_key=secret_key,
        endpoint=endpoint,
        scheme=scheme,
        address=address,
    )


_ENDPOINT_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_PORTED_ENDPOINTS = ("tcp", "tcp6", "ssl")


def parse_listen(sec: Section, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """
    Read one or more Twisted server endpoint strings separated by blanks or
    new lines; C{default} when the key is absent or empty.  A bare port
    number means C{tcp:PORT}.  The port of C{tcp:}, C{tcp6:} and C{ssl:}
    endpoints (possibly inside C{haproxy:}) is checked here, then Twisted
    parses each string without listening (L{cosgw.config.endpoints}), so a
    bad type or argument is this one-line error, not a failed start.
    """
    value = sec.text(key)
    if value is None:
        return default
    endpoints = []
    for word in value.split():
        if word.isdigit():
            word = f"tcp:{word}"
        if not _ENDPOINT_TYPE_RE.match(word):
            sec.fail(key, "Twisted endpoint strings such as 'tcp:2121'", word)
        port = _endpoint_port(word)
        if port is not None and not (port.isdigit() and 0 <= int(port) <= 65535):
            sec.fail(key, "endpoint strings with a port from 0 to 65535", word)
        problem = endpoint_problem(word)
        if problem is not None:
            sec.fail(key, problem, word)
        endpoints.append(word)
    return tuple(endpoints)


def _endpoint_port(description: str) -> str | None:
    """The port argument of a tcp/tcp6/ssl endpoint string, else None."""
    fields = re.split(r"(?<!\\):", description)
    while fields and fields[0].lower() == "haproxy":
        fields = fields[1:]
    if not fields or fields[0].lower() not in _PORTED_ENDPOINTS:
        return None
    for arg in fields[1:]:
        if arg.startswith("port="):
            return arg[len("port=") :]
    positional = [arg for arg in fields[1:] if "=" not in arg]
    return positional[0] if positional else ""


_PASSIVE_EXPECTED = "'LOW-HIGH' with 1024 <= LOW <= HIGH <= 65535"


def parse_passive_ports(sec: Section, key: str) -> tuple[int, int]:
    value = sec.text(key)
    if value is None:
        return ServerConfig.passive_ports
    match = re.match(r"^(\d+)\s*[-,]\s*(\d+)$", value)
    if match is None:
        sec.fail(key, _PASSIVE_EXPECTED, value)
    low, high = int(match.group(1)), int(match.group(2))
    if not 1024 <= low <= high <= 65535:
        sec.fail(key, _PASSIVE_EXPECTED, value)
    return low, high


def parse_host(sec: Section, key: str, value: str) -> str:
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if is_ip(host):
        return str(ipaddress.ip_address(host))
    if is_hostname(host):
        return host.lower()
    sec.fail(key, "an IPv4 or IPv6 address or a host name", value)


def parse_log_level(sec: Section, key: str, default: str) -> str:
    value = sec.text(key)
    if value is None:
        return default
    level = value.lower()
    if level == "warning":
        level = "warn"
    if level not in LOG_LEVELS:
        sec.fail(key, "one of " + ", ".join(LOG_LEVELS), value)
    return level


def parse_log_format(sec: Section, key: str) -> str:
    value = (sec.text(key) or "text").lower()
    if value not in LOG_FORMATS:
        sec.fail(key, "one of " + ", ".join(LOG_FORMATS), value)
    return value


def parse_admin_listen(sec: Section, key: str, default: str) -> str:
    """
    One endpoint string; C{default} when the key is absent, and the empty
    string (no admin listener) when it is present but empty: an operator
    turns the listener off by writing C{admin_listen =}.
    """
    raw = sec.raw(key)
    if raw is None:
        return default
    if not raw:
        return ""
    endpoints = parse_listen(sec, key, ())
    if len(endpoints) != 1:
        sec.fail(key, "one endpoint string, or nothing to disable it", raw)
    return endpoints[0]


def is_loopback_endpoint(description: str) -> bool:
    """
    Whether an endpoint string listens only where this host alone can
    connect: a UNIX socket, or TCP on a loopback interface.  A TCP endpoint
    with no C{interface=} listens on every interface.
    """
    fields = re.split(r"(?<!\\):", description)
    while fields and fields[0].lower() == "haproxy":
        fields = fields[1:]
    if fields and fields[0].lower() == "unix":
        return True
    for arg in fields[1:]:
        if arg.startswith("interface="):
            address = arg[len("interface=") :].replace("\\:", ":")
            try:
                return ipaddress.ip_address(address).is_loopback
            except ValueError:
                return address == "localhost"
    return False


def check_admin(label: str, server: ServerConfig, users: Mapping[str, object]) -> None:
    """
    The admin listener's users must exist, and a listener other hosts can
    reach must ask for one of them: it can kick any session.
    """
    for name in server.admin_users:
        if name not in users:
            raise ConfigError(
                f"{label}: [server] admin_users: expected names of [user:NAME]"
                f" sections, got {name!r}, which has none",
                path=label,
                section="server",
                key="admin_users",
            )
    if (
        server.admin_listen
        and not server.admin_users
        and not is_loopback_endpoint(server.admin_listen)
    ):
        raise ConfigError(
            f"{label}: [server] admin_listen: expected a loopback interface"
            " (interface=127.0.0.1) or a UNIX socket without admin_users, got"
            f" {server.admin_listen!r}, which other hosts can reach",
            path=label,
            section="server",
            key="admin_listen",
        )


def size_limit(sec: Section, key: str, minimum: int, maximum: int) -> int | None:
    """A size where 0, like no value, means no limit (None)."""
    value = sec.text(key)
    if value is None:
        return None
    expected = (
        f"0 (no limit) or a size from {format_size(minimum)} to"
        f" {format_size(maximum)} (bytes, or a number with K, M, G or T)"
    )
    try:
        size = parse_size(value)
    except ValueError:
        sec.fail(key, expected, value)
    if size == 0:
        return None
    if not minimum <= size <= maximum:
        sec.fail(key, expected, value)
    return size


_NETWORKS_EXPECTED = (
    "IPv4 or IPv6 networks or addresses such as '192.0.2.0/24',"
    " '2001:db8::/32' or '198.51.100.7', separated by blanks or commas"
)


def parse_networks(sec: Section, key: str) -> tuple[str, ...]:
    """
    Read networks and single addresses, IPv4 and IPv6, as
    C{ipaddress.ip_network(text, strict=False)} reads them (host bits are
    dropped: C{192.0.2.7/24} is C{192.0.2.0/24}), each kept once in the
    normalised form C{str(ip_network(...))}.
    """
    networks: list[str] = []
    for word in sec.words(key):
        try:
            network = str(ipaddress.ip_network(word, strict=False))
        except ValueError:
            sec.fail(key, _NETWORKS_EXPECTED, word)
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def default_state_dir(base: Path) -> Path:
    """
    The state directory of a config that names none: systemd's
    C{$STATE_DIRECTORY} (C{StateDirectory=}; the first of several) when it
    starts the gateway, as the config's own directory is read-only there
    (C{ProtectSystem=strict}); otherwise C{cosgw-state} beside the config.
    """
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(given) if given else base / STATE_DIR_NAME


def parse_host_keys(sec: Section, key: str, base: Path) -> tuple[Path, ...]:
    """
    Read private host key files, which must exist now (the SFTP service
    reads them when it starts).  A C{.pub} file is refused: naming the
    public half is the usual slip.
    """
    paths: list[Path] = []
    for path in sec.paths(key, base):
        if path.suffix == ".pub":
            sec.fail(key, "private host key files, not '.pub' public keys", path)
        try:
            exists = path.is_file()
        except OSError:  # e.g. a directory on the way we may not search
            exists = False
        if not exists:
            sec.fail(key, "paths of existing OpenSSH private host key files", path)
        if path not in paths:
            paths.append(path)
    return tuple(paths)


#: What starts an authorized_keys line without options: a key type.  A line
