"""
cosgw's configuration: one INI file read into frozen, typed values.

Two formats are read, and L{load_config} tells them apart by their sections:

  - cosgw's own INI (C{etc/cosgw.ini} documents every key): C{[server]},
    C{[transfer]}, C{[storage:NAME]} and C{[user:NAME]}.  It is strict: an
    unknown section or key is an error, because a misspelt key that is
    silently ignored leaves a gateway running with a setting nobody chose.
    A C{[user:NAME]} may carry its own bucket's keys (C{bucket},
    C{region}, C{secret_id}, ...) instead of naming a storage: the loader
    makes them the storage C{user:NAME}, and a file whose users all do so
    needs no C{[storage:NAME]}.
  - COS FTP Server V5's C{conf/vsftpd.conf}, read unchanged, so a V5
    installation can switch to cosgw without touching its file.  Any file
    with a C{[COS_ACCOUNT...]} section is V5's.  It is lenient where V5 was:
    keys cosgw does not use become notices, not errors.

Every error is a L{ConfigError} whose text is one line naming the file, the
section, the key and what was expected, and never quotes a secret.  Things an
operator should know but that do not stop the gateway (a plain-text password,
a V5 key cosgw ignores, passive ports that collide with outgoing connections)
are collected in L{Config.notices} for the service to log once at start.

This module imports only the standard library: the twistd plugin and the
command-line tools import it cheaply, and it must never install a reactor.
The one exception is checking a user's SSH public keys, which imports
C{twisted.conch.ssh.keys} (no reactor) when a file has keys, at load time.

How a V5 file maps onto cosgw (facts from V5's C{ftp_v5/conf/ftp_config.py},
C{stream_uploader.py} and README):

  - Each C{[COS_ACCOUNT_<n>]} becomes a storage named C{cos_account_<n>} (the
    section name in lower case) and one user.  C{cos_secretid},
    C{cos_secretkey}, C{cos_bucket} (C{name-appid}), C{cos_region},
    C{cos_protocol} (C{https} by default) and C{cos_endpoint} keep their V5
    meaning; as in V5, an endpoint takes precedence over the region.
    C{cos_endpoint} may also be a URL such as C{http://127.0.0.1:9000}, which
    cosgw connects to instead (V5 could not).
  - C{home_dir} is, in V5, a local directory that must exist on the V5 host;
    V5 uses it only to find the account's bucket, and the user sees the
    bucket's root as C{/}.  cosgw needs no local directory: the user's home
    is the bucket root, and C{home_dir} is read only to warn when two
    accounts share one (V5 then served both users from the last account's
    bucket; cosgw gives each user their own section's bucket).
  - C{authority} is C{R}, C{W} or C{RW}; C{delete_enable} (true by default)
    takes away deleting (files and directories).  L{authority_permissions}
    is the one mapping, used by both formats.
  - C{[NETWORK]}: C{listen_port} (2121) becomes C{tcp:<port>} on all
    interfaces, as V5 listened on 0.0.0.0.  C{passive_port = LOW,HIGH} is a
    Python C{range(LOW, HIGH)} in V5, so HIGH itself was never used: cosgw
    serves C{LOW} to C{HIGH - 1}.  C{masquerade_address} is used only when it
    is an IPv4 address, as in V5, which ignored anything else (including the
    example's C{XXX.XXX.XXX.XXX}).
  - C{[FILE_OPTION] single_file_max_size} is in bytes (V5's default 200 GiB).
    V5 also sized every part as C{single_file_max_size / 10000}, so a large
    limit cost memory; cosgw grows the part size as an upload grows, so the
    key is only an upload size limit.  Absent, cosgw sets no limit beyond
    COS's.
  - C{[OPTIONAL]}: C{min_part_size} is in bytes (V5's default 2 MiB) and
    becomes the first part size; C{upload_thread_num} the COS thread pool;
    C{max_connection_num} (512 by default, 0 for no limit as V5's README
    says) the connection limit; C{log_level} and C{log_dir} as named.  V5
    silently ignored a value it could not use (and the example's
    C{default}): cosgw uses its own default then, with a notice unless the
    value was C{default}.  C{max_list_file} is ignored: cosgw streams
    listings page by page and never truncates them.
  - Nothing else maps: V5 had no SFTP, SSH keys, per-user quotas, limits,
    rates or networks, server-wide networks, login or data timeouts, or
    login defender.  A V5 file sets no SFTP listener (a notice says how to
    turn SFTP on), its users log in with passwords, and every other setting
    keeps cosgw's default.

V5's parser was Python 2's C{ConfigParser.RawConfigParser}: full-line C{#}
and C{;} comments, C{key = value} or C{key: value}, option names in any case,
and C{;} after whitespace starts an inline comment.  Python 2 did not treat
C{#} after a value as a comment, but V5's own documentation puts such
comments after values, so cosgw drops them everywhere except in
C{ftp_login_user_password}, where it keeps V5's reading (the text is part of
the password) and says so in a notice.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn, Optional
from urllib.parse import urlsplit

__all__ = [
    "ALL_PERMISSIONS",
    "Config",
    "ConfigError",
    "ServerConfig",
    "StorageConfig",
    "TransferConfig",
    "UserConfig",
    "authority_permissions",
    "embedded_config",
    "load_config",
    "normalize_home",
    "parse_bool",
    "parse_permissions",
    "parse_size",
]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

# COS limits (see ARCHITECTURE.md); repeated here so that this module needs
# nothing beyond the standard library.
MIN_PART_SIZE = 1 * MIB
MAX_PART_SIZE = 5 * GIB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = MAX_PARTS * MAX_PART_SIZE

#: Every permission a user can hold.  L{cosgw.vfs} checks them.
ALL_PERMISSIONS = frozenset(
    {"list", "download", "upload", "overwrite", "delete", "rename", "mkdir", "rmdir"}
)
#: What V5's C{R} grants: pyftpdlib's read permissions C{elr}.
READ_PERMISSIONS = frozenset({"list", "download"})
#: What V5's C{W} grants: pyftpdlib's write permissions C{adfmw}.
WRITE_PERMISSIONS = frozenset(
    {"upload", "overwrite", "rename", "mkdir", "delete", "rmdir"}
)
#: What C{delete_enable = false} takes away: pyftpdlib's C{d} (DELE, RMD).
DELETE_PERMISSIONS = frozenset({"delete", "rmdir"})

#: Linux's default C{net.ipv4.ip_local_port_range}.  A passive port in it can
#: be taken by the gateway's own outgoing connections to COS.
EPHEMERAL_PORTS = (32768, 60999)

LOG_LEVELS = ("debug", "info", "warn", "error")
HASH_PREFIXES = ("$scrypt$", "$pbkdf2-sha256$")
#: The embedded default's implicit FTPS port.
DEFAULT_FTPS_PORT = 2990
DEFAULT_FTP_PORT = 2121
#: The embedded default's SFTP port.
DEFAULT_SFTP_PORT = 2222
STATE_DIR_NAME = "cosgw-state"
DATA_DIR_NAME = "cosgw-data"


# --------------------------------------------------------------------------
# The values
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageConfig:
    """
    One place users' files live: a local directory or a COS bucket.

    Several users may share a storage (each confined to their own C{home});
    the service builds one object store per storage, so they also share its
    connections.  Secrets are left out of C{repr} so that logging a config
    never logs a key.
    """

    name: str
    kind: str  # "local" or "cos"
    path: Path | None = None
    bucket: str | None = None
    region: str | None = None
    secret_id: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    #: A domain suffix that replaces C{cos.<region>.myqcloud.com} (the SDK's
    #: C{Endpoint=}); it takes precedence over C{region}.
    endpoint: str | None = None
    scheme: str = "https"
    #: Connect to this host and port instead of the bucket's domain (the
    #: SDK's C{IP=}/C{Port=}), e.g. a private endpoint or a test server.
    address: tuple[str, int] | None = None
    verify_tls: bool = True


@dataclass(frozen=True)
class UserConfig:
    """
    One account: how it logs in, the storage it sees, what it may do and
    the limits it works within.

    C{home} is a key prefix inside the storage, already normalised (C{""} is
    the storage's root, else C{"a/b"}): the user's C{/}.  The password is a
    hash from L{cosgw.auth.hash_password} or, for files carried over from V5,
    plain text; it is left out of C{repr}.  A user has a password, SSH keys
    or both, never neither.  A user whose section carries its own bucket's
    keys has the storage C{"user:NAME"}, which the loader adds to
    L{Config.storages}.
    """

    name: str
    #: None: the user logs in with an SSH key only (C{authorized_keys}).
    password: str | None = field(repr=False)
    #: False when there is no password.
    password_is_hashed: bool
    storage: str
    home: str
    permissions: frozenset[str]
    #: Per-user TLS policies; None follows [server]'s.
    tls_required: bool | None = None
    tls_data_required: bool | None = None
    #: Public keys that may log in over SFTP, each normalised to
    #: C{"type base64"} (no options, no comment).
    authorized_keys: tuple[str, ...] = ()
    #: Bytes and files the user may store under their home; None: no quota.
    quota_bytes: int | None = None
    quota_files: int | None = None
    #: Largest upload; None: [transfer] max_file_size applies.
    max_file_size: int | None = None
    #: Sessions at once over FTP, FTPS and SFTP together; None: no limit.
    max_sessions: int | None = None
    #: Bytes per second, shared by all the user's sessions; None: unlimited.
    upload_rate: int | None = None
    download_rate: int | None = None
    #: Normalised networks (C{str(ipaddress.ip_network(...))}), applied in
    #: addition to [server]'s: empty allowed means any address; a denied
    #: network always wins.
    allowed_networks: tuple[str, ...] = ()
    denied_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransferConfig:
    """
    How uploads and downloads use memory and threads.

    Memory per upload is bounded by (C{parts_in_flight} + 1) x part size.
    C{part_size} is the first part's size: the transfer code grows it as an
    upload grows so that a stream of unknown length stays within COS's
    10,000 parts.
    """

    part_size: int = 8 * MIB
    parts_in_flight: int = 4
    threads: int = 16
    max_file_size: int | None = None
    read_chunk: int = 4 * MIB
    #: Seconds after which an unfinished multipart upload (left by a crash,
    #: or by another gateway that died) is aborted by the sweeper.
    stale_upload_age: int = 86400
    #: Keep the stored parts of an upload whose client went away, so it can
    #: be resumed (until stale_upload_age), instead of aborting them.
    resume_uploads: bool = True


@dataclass(frozen=True)
class ServerConfig:
    """
    Listeners, passive ports, host keys, limits, timeouts, network access,
    the login defender and logging for the whole gateway.

    The default passive range sits above Linux's ephemeral range
    (32768-60999) so passive listeners never collide with the gateway's own
    outgoing connections to COS.
    """

    state_dir: Path
    ftp_listen: tuple[str, ...] = (f"tcp:{DEFAULT_FTP_PORT}",)
    passive_ports: tuple[int, int] = (61000, 61999)
    masquerade_address: str | None = None
    max_connections: int | None = None
    idle_timeout: int = 600
    log_level: str = "info"
    log_dir: Path | None = None
    #: Implicit FTPS listeners (TLS from the first byte), endpoint strings.
    ftps_listen: tuple[str, ...] = ()
    #: PEM certificate, key and chain; none: a self-signed certificate is
    #: generated in state_dir at first start.
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tls_chain: Path | None = None
    #: Policies (per user too): TLS on the control connection before login;
    #: PROT P for every transfer; data connections must resume the control
    #: connection's TLS session (vsftpd's require_ssl_reuse).
    tls_required: bool = False
    tls_data_required: bool = False
    tls_session_reuse: bool = False
    #: SFTP listeners, endpoint strings.
    sftp_listen: tuple[str, ...] = ()
    #: OpenSSH private host key files; none: Ed25519 and RSA 3072 keys are
    #: generated in state_dir at first start.
    ssh_host_keys: tuple[Path, ...] = ()
    #: Connections at once from one client address; None: no limit.
    max_connections_per_ip: int | None = None
    #: Seconds a client has to log in after connecting (FTP and SFTP).
    login_timeout: int = 60
    #: Seconds a data transfer may stall (no bytes either way) before it is
    #: aborted.
    data_timeout: int = 120
    #: Normalised networks (C{str(ipaddress.ip_network(...))}): empty
    #: allowed means any address; a denied network always wins.
    allowed_networks: tuple[str, ...] = ()
    denied_networks: tuple[str, ...] = ()
    #: The login defender: C{login_max_failures} failed logins from one
    #: address within C{login_failure_window} seconds ban it for
    #: C{login_ban_time} seconds (0 failures: never ban).  The first failure
    #: is answered after C{login_failure_delay} seconds, each further one
    #: after twice the last, at most 16 times C{login_failure_delay}.
    login_max_failures: int = 10
    login_failure_window: int = 600
    login_ban_time: int = 1800
    login_failure_delay: float = 1.0


@dataclass(frozen=True)
class Config:
    """
    Everything cosgw was configured with, checked and typed.

    C{notices} are messages for the service to log once at start; none of
    them quotes a secret.
    """

    source: Path | None
    server: ServerConfig
    transfer: TransferConfig
    storages: Mapping[str, StorageConfig]
    users: Mapping[str, UserConfig]
    notices: tuple[str, ...]
    embedded: bool = False


class ConfigError(Exception):
    """
    A configuration cannot be used.

    C{str(e)} is ONE line naming the file, the section, the key and what was
    expected, e.g. C{"/etc/cosgw.ini: [server] passive_ports: expected
    'LOW-HIGH' with 1024 <= LOW <= HIGH <= 65535, got '70000-1'"}.  Secret
    values are never quoted.  The parts are also kept as attributes for
    tools that want them.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.section = section
        self.key = key


# --------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^(\d+)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": TIB}


def parse_size(text: str) -> int:
    """
    Read a size: plain bytes (C{"8388608"}) or a number with a binary suffix
    (C{"8M"}, C{"8 MiB"}, C{"8mb"}; K, M, G and T are powers of 1024).

    Binary units because COS's limits (1 MB to 5 GB parts) are binary.

    @raise ValueError: if C{text} is not such a size.
    """
    match = _SIZE_RE.match(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


_BOOLEANS = {
    "1": True,
    "yes": True,
    "true": True,
    "on": True,
    "0": False,
    "no": False,
    "false": False,
    "off": False,
}


def parse_bool(text: str) -> bool:
    """
    Read yes/no, true/false, on/off or 1/0 in any case, as V5's
    C{getboolean} did.

    @raise ValueError: for anything else.
    """
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"not a boolean: {text!r}") from None


def authority_permissions(authority: str, delete_enable: bool = True) -> frozenset[str]:
    """
    Map V5's C{authority} (C{R}, C{W} or C{RW}, any order and case) and
    C{delete_enable} onto cosgw's permissions.

    V5 gave pyftpdlib's read permissions C{elr} for C{R} and its write
    permissions C{adfmw} for C{W}; C{delete_enable = false} takes away C{d}
    (deleting files and directories).  C{delete_enable} also applies to
    permissions given as words, so it means the same wherever it appears.

    @raise ValueError: if C{authority} holds anything but R and W.
    """
    letters = authority.strip().upper()
    if not letters or set(letters) - {"R", "W"}:
        raise ValueError(f"not an authority: {authority!r}")
    permissions: frozenset[str] = frozenset()
    if "R" in letters:
        permissions |= READ_PERMISSIONS
    if "W" in letters:
        permissions |= WRITE_PERMISSIONS
    if not delete_enable:
        permissions -= DELETE_PERMISSIONS
    return permissions


_AUTHORITY_RE = re.compile(r"^[rw]+$", re.IGNORECASE)


def parse_permissions(text: str, delete_enable: bool = True) -> frozenset[str]:
    """
    Read C{all}, a comma- or space-separated list of L{ALL_PERMISSIONS}
    words, or a V5 authority (C{R}, C{W}, C{RW}); C{delete_enable = False}
    then takes away C{delete} and C{rmdir}.

    @raise ValueError: naming the first word that is not a permission.
    """
    words = [word for word in re.split(r"[\s,]+", text.strip()) if word]
    if not words:
        raise ValueError("no permissions")
    if len(words) == 1 and _AUTHORITY_RE.match(words[0]):
        return authority_permissions(words[0], delete_enable)
    permissions: set[str] = set()
    for word in words:
        lowered = word.lower()
        if lowered == "all":
            permissions |= ALL_PERMISSIONS
        elif lowered in ALL_PERMISSIONS:
            permissions.add(lowered)
        else:
            raise ValueError(f"not a permission: {word!r}")
    if not delete_enable:
        permissions -= DELETE_PERMISSIONS
    return frozenset(permissions)


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def normalize_home(text: str) -> str:
    """
    Turn a home given as C{"/a/b/"}, C{"a/b"} or C{"/"} into the key prefix
    form C{"a/b"} (C{""} for the storage's root).

    One leading and one trailing slash are dropped; anything that could make
    the home ambiguous or escape it is refused rather than repaired: empty
    segments (C{a//b}), C{.} and C{..}, and control characters.

    @raise ValueError: on such a home.
    """
    home = text.strip()
    if _CONTROL_RE.search(home):
        raise ValueError("control character in home")
    if home.startswith("/"):
        home = home[1:]
    if home.endswith("/"):
        home = home[:-1]
    if not home:
        return ""
    for segment in home.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"bad segment {segment!r} in home")
    return home


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """
    Read the configuration file C{path}, in cosgw's format or V5's.

    Relative paths inside it (state, log and local storage directories)
    resolve against the file's directory, so the result does not depend on
    the directory the gateway was started from.

    This blocks (it reads a file): call it at start-up.

    @raise ConfigError: if the file is missing, unreadable or not a valid
        configuration.
    """
    label = os.fspath(path)
    source = Path(label).absolute()
    text = _read_text(source, label)
    if _V5_DETECT_RE.search(text):
        return _V5Loader(source, label, text).load()
    return _CosgwLoader(source, label, text).load()


def embedded_config(base: Path | None = None) -> Config:
    """
    The configuration used when there is no file: a local storage
    C{"default"} at C{base/cosgw-data} and state in C{base/cosgw-state}
    (C{base} defaults to the current directory).  It serves FTP on 2121,
    implicit FTPS on 2990 and SFTP on 2222 (host keys generated in the state
    directory at first start).

    It has no users: the service creates the generated user C{"cosgw"} with
    all permissions on C{"default"} (see
    L{cosgw.auth.ensure_generated_account}), so a fresh install never runs
    with a well-known password or none.
    """
    base = Path.cwd() if base is None else Path(base).absolute()
    storage = StorageConfig(name="default", kind="local", path=base / DATA_DIR_NAME)
    return Config(
        source=None,
        server=ServerConfig(
            state_dir=base / STATE_DIR_NAME,
            ftps_listen=(f"tcp:{DEFAULT_FTPS_PORT}",),
            sftp_listen=(f"tcp:{DEFAULT_SFTP_PORT}",),
        ),
        transfer=TransferConfig(),
        storages=MappingProxyType({storage.name: storage}),
        users=MappingProxyType({}),
        notices=(),
        embedded=True,
    )


# --------------------------------------------------------------------------
# Reading and parsing the file
# --------------------------------------------------------------------------

_V5_DETECT_RE = re.compile(r"^[ \t]*\[[ \t]*COS_ACCOUNT", re.IGNORECASE | re.MULTILINE)
# A section name nothing will use: turns configparser's DEFAULT section off,
# so a [DEFAULT] in the file is just another (unknown) section.
_NO_DEFAULT_SECTION = "\x00no default section"
_MISSING = object()


def _read_text(source: Path, label: str) -> str:
    """Read the file as UTF-8 (a BOM is fine); V5 files may be GB18030."""
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{label}: no such file", path=label) from None
    except OSError as e:
        raise ConfigError(
            f"{label}: cannot read: {e.strerror or e.__class__.__name__}", path=label
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        utf8_error = e
    # Chinese editors save V5 files (whose comments are Chinese) as GBK;
    # V5 on Python 2 read bytes and never noticed.  Only V5 files get this
    # leniency: cosgw's own format is UTF-8.
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        text = None
    if text is not None and _V5_DETECT_RE.search(text):
        return text
    line = data[: utf8_error.start].count(b"\n") + 1
    raise ConfigError(f"{label}: line {line}: expected UTF-8 text", path=label)


def _parse(text: str, label: str, *, v5: bool) -> configparser.RawConfigParser:
    """
    Parse INI text, turning configparser's errors into one-line
    L{ConfigError}s that give the line number but never the line (it could
    hold a secret).
    """
    if v5:
        # As Python 2's RawConfigParser, which V5 used: "=" or ":", ";" after
        # whitespace starts a comment, a repeated key or section is merged.
        parser = configparser.RawConfigParser(
            delimiters=("=", ":"),
            comment_prefixes=("#", ";"),
            inline_comment_prefixes=(";",),
            strict=False,
            empty_lines_in_values=False,
            default_section=_NO_DEFAULT_SECTION,
        )
    else:
        # Whole-line comments only: "#" or ";" inside a value (a password,
        # an endpoint string) is part of the value.
        parser = configparser.RawConfigParser(
            delimiters=("=",),
            comment_prefixes=("#", ";"),
            inline_comment_prefixes=None,
            strict=True,
            empty_lines_in_values=False,
            default_section=_NO_DEFAULT_SECTION,
        )
    try:
        parser.read_string(text, source=label)
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            f"{label}: line {e.lineno}: expected a [section] header first",
            path=label,
        ) from None
    except configparser.DuplicateSectionError as e:
        raise ConfigError(
            f"{label}: [{e.section}]: defined again at line {e.lineno};"
            " expected each section once",
            path=label,
            section=str(e.section),
        ) from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(
            f"{label}: [{e.section}] {e.option}: set again at line {e.lineno};"
            " expected each key once per section",
            path=label,
            section=str(e.section),
            key=str(e.option),
        ) from None
    except configparser.ParsingError as e:
        lines = ", ".join(str(lineno) for lineno, _ in e.errors)
        raise ConfigError(
            f"{label}: line {lines}: expected '[section]' or 'key = value'",
            path=label,
        ) from None
    except configparser.Error as e:  # anything else configparser may add
        raise ConfigError(
            f"{label}: cannot parse: {e.__class__.__name__}", path=label
        ) from None
    return parser


def _quote(value: str) -> str:
    """A value for an error message: quoted, one line, not too long."""
    if len(value) > 80:
        value = value[:77] + "..."
    return repr(value)


class _Section:
    """
    One section's values, with typed getters that raise L{ConfigError}s
    naming the file, section and key, and a record of which keys were read
    (what is left is unknown).
    """

    def __init__(
        self,
        label: str,
        name: str,
        values: Mapping[str, str],
        secrets: Iterable[str] = (),
    ) -> None:
        self.label = label
        self.name = name
        self._values = dict(values)
        self._secrets = frozenset(secrets)
        self._used: set[str] = set()

    # -- errors --------------------------------------------------------------

    def fail(self, key: str | None, expected: str, got: object = _MISSING) -> NoReturn:
        """Raise the one-line error for C{key}: what was expected, and got."""
        where = f"{self.label}: [{self.name}]"
        if key is not None:
            where += f" {key}"
        if got is _MISSING:
            message = f"{where}: expected {expected}"
        elif key in self._secrets:
            message = f"{where}: expected {expected} (the value is not shown)"
        else:
            message = f"{where}: expected {expected}, got {_quote(str(got))}"
        raise ConfigError(message, path=self.label, section=self.name, key=key)

    def missing(self, key: str, expected: str) -> NoReturn:
        """Raise the error for a required key that is absent or empty."""
        raise ConfigError(
            f"{self.label}: [{self.name}] {key}: missing; expected {expected}",
            path=self.label,
            section=self.name,
            key=key,
        )

    # -- raw access ----------------------------------------------------------

    def has(self, key: str) -> bool:
        return key in self._values

    def raw(self, key: str) -> str | None:
        """The value as written (stripped), or None when the key is absent."""
        self._used.add(key)
        value = self._values.get(key)
        return None if value is None else value.strip()

    def text(self, key: str) -> str | None:
        """The value, or None when the key is absent or empty."""
        value = self.raw(key)
        return value or None

    def require(self, key: str, expected: str) -> str:
        value = self.text(key)
        if value is None:
            self.missing(key, expected)
        return value

    def unused(self) -> list[str]:
        return [key for key in self._values if key not in self._used]

    def keys(self) -> list[str]:
        return list(self._values)

    # -- typed access --------------------------------------------------------

    def integer(
        self, key: str, default: int, minimum: int, maximum: int | None = None
    ) -> int:
        value = self.text(key)
        if value is None:
            return default
        bounds = f"an integer >= {minimum}"
        if maximum is not None:
            bounds = f"an integer from {minimum} to {maximum}"
        try:
            number = int(value)
        except ValueError:
            self.fail(key, bounds, value)
        if number < minimum or (maximum is not None and number > maximum):
            self.fail(key, bounds, value)
        return number

    def size(
        self, key: str, default: int | None, minimum: int, maximum: int
    ) -> int | None:
        value = self.text(key)
        if value is None:
            return default
        expected = (
            f"a size from {_format_size(minimum)} to {_format_size(maximum)}"
            " (bytes, or a number with K, M, G or T)"
        )
        try:
            size = parse_size(value)
        except ValueError:
            self.fail(key, expected, value)
        if not minimum <= size <= maximum:
            self.fail(key, expected, value)
        return size

    def boolean(self, key: str, default: bool) -> bool:
        value = self.text(key)
        if value is None:
            return default
        try:
            return parse_bool(value)
        except ValueError:
            self.fail(key, "yes/no, true/false, on/off or 1/0", value)

    def number(self, key: str, default: float, minimum: float, maximum: float) -> float:
        """A decimal number such as C{"1"} or C{"0.25"}, within bounds."""
        value = self.text(key)
        if value is None:
            return default
        expected = f"a number from {minimum:g} to {maximum:g}"
        try:
            number = float(value)
        except ValueError:
            self.fail(key, expected, value)
        # "not (a <= x <= b)" also refuses nan, which compares false.
        if not minimum <= number <= maximum:
            self.fail(key, expected, value)
        return number

    def words(self, key: str) -> list[str]:
        """The value split at blanks, commas and new lines (none if absent)."""
        value = self.text(key)
        if value is None:
            return []
        return [word for word in re.split(r"[\s,]+", value) if word]

    def path(self, key: str, base: Path) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        return self._resolve(key, base, value)

    def paths(self, key: str, base: Path) -> list[Path]:
        """Paths separated by blanks, commas or new lines (none if absent)."""
        return [self._resolve(key, base, word) for word in self.words(key)]

    def _resolve(self, key: str, base: Path, value: str) -> Path:
        if _CONTROL_RE.search(value):
            self.fail(key, "a path without control characters", value)
        return base / Path(value).expanduser()


def _format_size(size: int) -> str:
    for unit, factor in (("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


# --------------------------------------------------------------------------
# Value checks shared by both formats
# --------------------------------------------------------------------------

# COS bucket: lower-case letters, digits and hyphens, then "-<appid>".
_BUCKET_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?-[0-9]+$")
_BUCKET_EXPECTED = "a COS bucket name 'name-appid' such as 'examplebucket-1250000000'"
_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_STORAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENDPOINT_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_PORTED_ENDPOINTS = ("tcp", "tcp6", "ssl")


def _is_hostname(text: str) -> bool:
    """A DNS name (underscores allowed, as private zones use them).  A name
    whose last label is all digits is a mistyped IP address, not a name."""
    if not text or len(text) > 253:
        return False
    labels = text.split(".")
    if labels[-1].isdigit():
        return False
    return all(_HOST_LABEL_RE.match(label) for label in labels)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_user_name(section: _Section, key: str | None, name: str) -> None:
    if not name or any(c.isspace() for c in name) or ":" in name:
        section.fail(key, "a user name without whitespace or ':'", name)
    if _CONTROL_RE.search(name):
        section.fail(key, "a user name without control characters", name)


def _check_bucket(section: _Section, key: str, bucket: str) -> None:
    if len(bucket) > 63 or not _BUCKET_RE.match(bucket):
        section.fail(key, _BUCKET_EXPECTED, bucket)


def _check_region(section: _Section, key: str, region: str) -> None:
    if not _REGION_RE.match(region):
        section.fail(key, "a COS region such as 'ap-guangzhou'", region)


_ENDPOINT_EXPECTED = (
    "a domain suffix such as 'cos.ap-guangzhou.myqcloud.com'"
    " or a URL 'http(s)://host[:port]'"
)


def _parse_endpoint(
    section: _Section, key: str, value: str
) -> tuple[str | None, str | None, tuple[str, int] | None]:
    """
    Read an endpoint: a domain suffix for the SDK's C{Endpoint=}, or a URL
    whose scheme, host and port say where to connect instead.

    @return: C{(endpoint, scheme, address)}, the unset ones None.
    """
    if "://" not in value:
        if not _is_hostname(value):
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
        or not (_is_ip(host) or _is_hostname(host))
        or port == 0
    ):
        section.fail(key, _ENDPOINT_EXPECTED, value)
    if port is None:
        port = 443 if scheme == "https" else 80
    return None, scheme, (host, port)


def _check_scheme(section: _Section, key: str, value: str) -> str:
    scheme = value.lower()
    if scheme not in ("http", "https"):
        section.fail(key, "'http' or 'https'", value)
    return scheme


def _check_password(section: _Section, key: str, password: str) -> bool:
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


def _plain_password_notice(label: str, where: str, user: str) -> str:
    return (
        f"{label}: {where}: user {user!r} has a plain-text password; run"
        " cosgw-passwd and put the hash it prints in place of the password"
    )


def _passive_notice(label: str, where: str, low: int, high: int) -> str | None:
    first, last = EPHEMERAL_PORTS
    if high < first or low > last:
        return None
    return (
        f"{label}: {where}: passive ports {low}-{high} overlap Linux's ephemeral"
        f" port range {first}-{last} (net.ipv4.ip_local_port_range), where the"
        " gateway's own connections to COS take their local ports; passive"
        f" listens can then fail under load. Prefer a range above {last}."
    )


def _freeze(
    source: Path,
    server: ServerConfig,
    transfer: TransferConfig,
    storages: Mapping[str, StorageConfig],
    users: Mapping[str, UserConfig],
    notices: list[str],
) -> Config:
    return Config(
        source=source,
        server=server,
        transfer=transfer,
        storages=MappingProxyType(dict(storages)),
        users=MappingProxyType(dict(users)),
        notices=tuple(notices),
    )


# --------------------------------------------------------------------------
# cosgw's own format
# --------------------------------------------------------------------------

_SERVER_KEYS = (
    "state_dir",
    "ftp_listen",
    "passive_ports",
    "masquerade_address",
    "max_connections",
    "idle_timeout",
    "log_level",
    "log_dir",
    "ftps_listen",
    "tls_certificate",
    "tls_key",
    "tls_chain",
    "tls_required",
    "tls_data_required",
    "tls_session_reuse",
    "sftp_listen",
    "ssh_host_keys",
    "max_connections_per_ip",
    "login_timeout",
    "data_timeout",
    "allowed_networks",
    "denied_networks",
    "login_max_failures",
    "login_failure_window",
    "login_ban_time",
    "login_failure_delay",
)
_TRANSFER_KEYS = (
    "part_size",
    "parts_in_flight",
    "threads",
    "max_file_size",
    "read_chunk",
    "stale_upload_age",
    "resume_uploads",
)
_LOCAL_KEYS = ("type", "path")
_COS_KEYS = (
    "type",
    "bucket",
    "region",
    "secret_id",
    "secret_key",
    "token",
    "endpoint",
    "scheme",
    "verify_tls",
)
# A COS storage's keys in cosgw's format, by cosgw's names: the same in a
# [storage:NAME] and in a [user:NAME] that carries its own bucket.
_COS_KEY_NAMES = {
    key: key
    for key in ("bucket", "region", "secret_id", "secret_key", "endpoint", "scheme")
}
_COS_SECRETS = ("secret_id", "secret_key", "token")
#: The keys that give a user its own bucket instead of C{storage}.
_USER_COS_KEYS = tuple(key for key in _COS_KEYS if key != "type")
_USER_KEYS = (
    "password",
    "authorized_keys",
    "authorized_keys_file",
    "storage",
    "home",
    "permissions",
    "delete_enable",
    "tls_required",
    "tls_data_required",
    "quota_bytes",
    "quota_files",
    "max_file_size",
    "max_sessions",
    "upload_rate",
    "download_rate",
    "allowed_networks",
    "denied_networks",
    *_USER_COS_KEYS,
)
#: Upper bounds that only catch typos (a quota in bytes of 1 EiB, a rate
#: of 1 TiB/s).
MAX_QUOTA_BYTES = 1024 * 1024 * TIB
MAX_RATE = TIB
_SECTION_KINDS = "[server], [transfer], [storage:NAME] or [user:NAME]"


class _CosgwLoader:
    """Reads cosgw's own INI format; strict about every name."""

    def __init__(self, source: Path, label: str, text: str) -> None:
        self.source = source
        self.label = label
        self.base = source.parent
        self.parser = _parse(text, label, v5=False)
        self.notices: list[str] = []

    def section(self, name: str, secrets: Iterable[str] = ()) -> _Section:
        values = self.parser[name] if self.parser.has_section(name) else {}
        return _Section(self.label, name, values, secrets)

    def load(self) -> Config:
        storage_sections: list[str] = []
        user_sections: list[str] = []
        for name in self.parser.sections():
            if name in ("server", "transfer"):
                continue
            if name.startswith("storage:"):
                storage_sections.append(name)
            elif name.startswith("user:"):
                user_sections.append(name)
            else:
                raise ConfigError(
                    f"{self.label}: [{name}]: unknown section; expected "
                    + _SECTION_KINDS,
                    path=self.label,
                    section=name,
                )
        server = self.load_server()
        transfer = self.load_transfer()
        storages = {}
        for name in storage_sections:
            storage = self.load_storage(name)
            storages[storage.name] = storage
        # A user's own bucket becomes the storage "user:NAME", added after
        # every user is read: "storage may be omitted when there is exactly
        # one" counts [storage:NAME] sections only.
        users = {}
        own_storages = {}
        for name in user_sections:
            user, own = self.load_user(name, storages)
            users[user.name] = user
            if own is not None:
                own_storages[own.name] = own
        if not users:
            raise ConfigError(
                f"{self.label}: no [user:NAME] section; expected at least one",
                path=self.label,
            )
        used = {user.storage for user in users.values()}
        for name in storages:
            if name not in used:
                self.notices.append(
                    f"{self.label}: [storage:{name}]: no user uses this storage"
                )
        storages.update(own_storages)
        if not server.sftp_listen:
            for user in users.values():
                if user.password is None:
                    self.notices.append(
                        f"{self.label}: [user:{user.name}]: user {user.name!r}"
                        " has SSH keys but no password, and [server]"
                        " sftp_listen is empty: it cannot log in"
                    )
        return _freeze(self.source, server, transfer, storages, users, self.notices)

    def finish(self, section: _Section, known: tuple[str, ...]) -> None:
        """Refuse any key of C{section} nobody read: it is a typo."""
        for key in section.unused():
            expected = f"one of {', '.join(known)}"
            hint = difflib.get_close_matches(key, known, n=1)
            if hint:
                expected += f" (did you mean {hint[0]!r}?)"
            raise ConfigError(
                f"{self.label}: [{section.name}] {key}: unknown key; expected"
                f" {expected}",
                path=self.label,
                section=section.name,
                key=key,
            )

    # -- [server] ------------------------------------------------------------

    def load_server(self) -> ServerConfig:
        sec = self.section("server")
        state_dir = sec.path("state_dir", self.base) or self.base / STATE_DIR_NAME
        ftp_listen = _parse_listen(sec, "ftp_listen", ServerConfig.ftp_listen)
        passive = _parse_passive_ports(sec, "passive_ports")
        notice = _passive_notice(self.label, "[server] passive_ports", *passive)
        if notice and sec.has("passive_ports"):
            self.notices.append(notice)
        masquerade = sec.text("masquerade_address")
        if masquerade is not None:
            masquerade = _parse_host(sec, "masquerade_address", masquerade)
        max_connections = sec.integer("max_connections", 0, 0) or None
        idle_timeout = sec.integer("idle_timeout", 600, 1, 7 * 24 * 3600)
        log_level = _parse_log_level(sec, "log_level", "info")
        log_dir = sec.path("log_dir", self.base)
        ftps_listen = _parse_listen(sec, "ftps_listen", ())
        certificate = sec.path("tls_certificate", self.base)
        key = sec.path("tls_key", self.base)
        chain = sec.path("tls_chain", self.base)
        if (certificate is None) != (key is None):
            sec.missing(
                "tls_key" if key is None else "tls_certificate",
                "tls_certificate and tls_key together",
            )
        tls_required = sec.boolean("tls_required", False)
        tls_data_required = sec.boolean("tls_data_required", False)
        tls_session_reuse = sec.boolean("tls_session_reuse", False)
        sftp_listen = _parse_listen(sec, "sftp_listen", ())
        ssh_host_keys = _parse_host_keys(sec, "ssh_host_keys", self.base)
        max_connections_per_ip = sec.integer("max_connections_per_ip", 0, 0) or None
        login_timeout = sec.integer(
            "login_timeout", ServerConfig.login_timeout, 1, 3600
        )
        data_timeout = sec.integer(
            "data_timeout", ServerConfig.data_timeout, 1, 24 * 3600
        )
        allowed_networks = _parse_networks(sec, "allowed_networks")
        denied_networks = _parse_networks(sec, "denied_networks")
        login_max_failures = sec.integer(
            "login_max_failures", ServerConfig.login_max_failures, 0, 1_000_000
        )
        login_failure_window = sec.integer(
            "login_failure_window", ServerConfig.login_failure_window, 1, 7 * 86400
        )
        login_ban_time = sec.integer(
            "login_ban_time", ServerConfig.login_ban_time, 1, 365 * 86400
        )
        login_failure_delay = sec.number(
            "login_failure_delay", ServerConfig.login_failure_delay, 0, 60
        )
        self.finish(sec, _SERVER_KEYS)
        return ServerConfig(
            state_dir=state_dir,
            ftp_listen=ftp_listen,
            passive_ports=passive,
            masquerade_address=masquerade,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            log_level=log_level,
            log_dir=log_dir,
            ftps_listen=ftps_listen,
            tls_certificate=certificate,
            tls_key=key,
            tls_chain=chain,
            tls_required=tls_required,
            tls_data_required=tls_data_required,
            tls_session_reuse=tls_session_reuse,
            sftp_listen=sftp_listen,
            ssh_host_keys=ssh_host_keys,
            max_connections_per_ip=max_connections_per_ip,
            login_timeout=login_timeout,
            data_timeout=data_timeout,
            allowed_networks=allowed_networks,
            denied_networks=denied_networks,
            login_max_failures=login_max_failures,
            login_failure_window=login_failure_window,
            login_ban_time=login_ban_time,
            login_failure_delay=login_failure_delay,
        )

    # -- [transfer] ----------------------------------------------------------

    def load_transfer(self) -> TransferConfig:
        sec = self.section("transfer")
        defaults = TransferConfig()
        part_size = sec.size(
            "part_size", defaults.part_size, MIN_PART_SIZE, MAX_PART_SIZE
        )
        parts_in_flight = sec.integer(
            "parts_in_flight", defaults.parts_in_flight, 1, 1024
        )
        threads = sec.integer("threads", defaults.threads, 1, 1024)
        max_file_size = None
        if (sec.text("max_file_size") or "none").lower() != "none":
            max_file_size = sec.size("max_file_size", None, 1, MAX_OBJECT_SIZE)
        read_chunk = sec.size("read_chunk", defaults.read_chunk, KIB, 64 * MIB)
        stale_upload_age = sec.integer(
            "stale_upload_age", defaults.stale_upload_age, 60, 365 * 86400
        )
        resume_uploads = sec.boolean("resume_uploads", defaults.resume_uploads)
        self.finish(sec, _TRANSFER_KEYS)
        assert part_size is not None and read_chunk is not None
        return TransferConfig(
            part_size=part_size,
            parts_in_flight=parts_in_flight,
            threads=threads,
            max_file_size=max_file_size,
            read_chunk=read_chunk,
            stale_upload_age=stale_upload_age,
            resume_uploads=resume_uploads,
        )

    # -- [storage:NAME] ------------------------------------------------------

    def load_storage(self, section_name: str) -> StorageConfig:
        sec = self.section(section_name, secrets=_COS_SECRETS)
        name = section_name[len("storage:") :]
        if not _STORAGE_NAME_RE.match(name):
            sec.fail(None, "a storage name of letters, digits, '_', '.' and '-'", name)
        kind = (sec.raw("type") or "").lower()
        if kind == "local":
            path = sec.path("path", self.base)
            if path is None:
                sec.missing("path", "the directory to serve")
            self.refuse_other_kind(sec, _LOCAL_KEYS, "local")
            return StorageConfig(name=name, kind="local", path=path)
        if kind == "cos":
            storage = self.load_cos(sec, name)
            self.refuse_other_kind(sec, _COS_KEYS, "cos")
            return storage
        if not kind:
            sec.missing("type", "'local' or 'cos'")
        sec.fail("type", "'local' or 'cos'", sec.raw("type"))

    def load_cos(self, sec: _Section, name: str) -> StorageConfig:
        """
        A COS storage from C{sec}'s bucket, keys, endpoint, scheme, token and
        verify_tls: a C{[storage:NAME]} of type cos, or a user's own bucket.
        """
        storage = _load_cos_storage(sec, name, keys=_COS_KEY_NAMES, notices=None)
        token = sec.text("token")
        verify_tls = sec.boolean("verify_tls", True)
        return dataclasses.replace(storage, token=token, verify_tls=verify_tls)

    def refuse_other_kind(
        self, sec: _Section, known: tuple[str, ...], kind: str
    ) -> None:
        for key in sec.unused():
            if key in _LOCAL_KEYS or key in _COS_KEYS:
                raise ConfigError(
                    f"{self.label}: [{sec.name}] {key}: not a key of a storage"
                    f" with type = {kind}; expected one of {', '.join(known)}",
                    path=self.label,
                    section=sec.name,
                    key=key,
                )
        self.finish(sec, known)

    # -- [user:NAME] ---------------------------------------------------------

    def load_user(
        self, section_name: str, storages: Mapping[str, StorageConfig]
    ) -> tuple[UserConfig, StorageConfig | None]:
        """
        One C{[user:NAME]}: the user and, when the section carries its own
        bucket's keys, that storage (named C{"user:NAME"}).  C{storages} are
        the C{[storage:NAME]} sections.
        """
        sec = self.section(section_name, secrets=("password", *_COS_SECRETS))
        name = section_name[len("user:") :]
        _check_user_name(sec, None, name)
        password = sec.raw("password") or None
        hashed = password is not None and _check_password(sec, "password", password)
        authorized_keys = self.load_authorized_keys(sec)
        if password is None and not authorized_keys:
            sec.missing(
                "password",
                "a hash printed by cosgw-passwd, or SSH keys in authorized_keys"
                " or authorized_keys_file",
            )
        storage, own = self.user_storage(sec, section_name, storages)
        home = sec.raw("home") or ""
        try:
            home = normalize_home(home)
        except ValueError:
            sec.fail(
                "home",
                "a path inside the storage such as 'a/b' (no '.', '..' or"
                " empty segments)",
                home,
            )
        delete_enable = sec.boolean("delete_enable", True)
        permissions_text = sec.raw("permissions")
        if permissions_text is None:
            permissions_text = "all"
        try:
            permissions = parse_permissions(permissions_text, delete_enable)
        except ValueError:
            sec.fail(
                "permissions",
                "'all', R, W, RW or a list of " + ", ".join(sorted(ALL_PERMISSIONS)),
                permissions_text,
            )
        tls_required = (
            sec.boolean("tls_required", False) if sec.has("tls_required") else None
        )
        tls_data_required = (
            sec.boolean("tls_data_required", False)
            if sec.has("tls_data_required")
            else None
        )
        quota_bytes = _size_limit(sec, "quota_bytes", 1, MAX_QUOTA_BYTES)
        quota_files = sec.integer("quota_files", 0, 0) or None
        value = sec.text("max_file_size")
        if value is not None and value.lower() == "none":
            sec.fail(
                "max_file_size",
                "a size (leave the key out to use [transfer] max_file_size)",
                value,
            )
        max_file_size = sec.size("max_file_size", None, 1, MAX_OBJECT_SIZE)
        max_sessions = sec.integer("max_sessions", 0, 0) or None
        upload_rate = _size_limit(sec, "upload_rate", KIB, MAX_RATE)
        download_rate = _size_limit(sec, "download_rate", KIB, MAX_RATE)
        allowed_networks = _parse_networks(sec, "allowed_networks")
        denied_networks = _parse_networks(sec, "denied_networks")
        self.finish(sec, _USER_KEYS)
        if password is not None and not hashed:
            self.notices.append(
                _plain_password_notice(self.label, f"[{section_name}] password", name)
            )
        user = UserConfig(
            name=name,
            password=password,
            password_is_hashed=hashed,
            storage=storage,
            home=home,
            permissions=permissions,
            tls_required=tls_required,
            tls_data_required=tls_data_required,
            authorized_keys=authorized_keys,
            quota_bytes=quota_bytes,
            quota_files=quota_files,
            max_file_size=max_file_size,
            max_sessions=max_sessions,
            upload_rate=upload_rate,
            download_rate=download_rate,
            allowed_networks=allowed_networks,
            denied_networks=denied_networks,
        )
        return user, own

    def user_storage(
        self,
        sec: _Section,
        section_name: str,
        storages: Mapping[str, StorageConfig],
    ) -> tuple[str, StorageConfig | None]:
        """
        The storage a user sees: the one C{storage} names, the user's own
        bucket (a storage named like the section, C{"user:NAME"}), or the
        only C{[storage:NAME]}.

        @return: C{(name, own)}, C{own} the user's own storage or None.
        """
        storage = sec.text("storage")
        inline = [key for key in _USER_COS_KEYS if sec.has(key)]
        if inline:
            if storage is not None:
                sec.fail(
                    "storage",
                    f"either storage or the user's own bucket ({inline[0]} and"
                    " the other COS keys), not both",
                    storage,
                )
            return section_name, self.load_cos(sec, section_name)
        if storage is None:
            if not storages:
                sec.missing(
                    "storage",
                    "the name of a [storage:NAME] or the user's own bucket"
                    " (bucket, region, secret_id, secret_key); there is no"
                    " [storage:NAME]",
                )
            if len(storages) != 1:
                sec.missing(
                    "storage",
                    "the name of a [storage:NAME] (there is more than one)",
                )
            return next(iter(storages)), None
        if storage not in storages:
            sec.fail(
                "storage",
                f"the name of a storage ({', '.join(sorted(storages))})",
                storage,
            )
        return storage, None

    def load_authorized_keys(self, sec: _Section) -> tuple[str, ...]:
        """
        The keys of C{authorized_keys} (one per line of the value) and of the
        file C{authorized_keys_file} names, in that order, each once.
        """
        keys = []
        text = sec.raw("authorized_keys")
        if text:
            keys += _parse_authorized_keys(
                sec, "authorized_keys", text.splitlines(), "of the value"
            )
        key = "authorized_keys_file"
        path = sec.path(key, self.base)
        if path is not None:
            try:
                content = path.read_text(encoding="utf-8-sig")
            except FileNotFoundError:
                sec.fail(key, "an existing authorized_keys file", path)
            except UnicodeDecodeError:
                sec.fail(key, "an authorized_keys file of UTF-8 text", path)
            except OSError as e:
                reason = e.strerror or e.__class__.__name__
                sec.fail(key, f"a readable authorized_keys file ({reason})", path)
            keys += _parse_authorized_keys(sec, key, content.splitlines(), f"of {path}")
        return tuple(dict.fromkeys(keys))


def _load_cos_storage(
    sec: _Section,
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


def _parse_listen(sec: _Section, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """
    Read one or more Twisted server endpoint strings separated by blanks or
    new lines; C{default} when the key is absent or empty.  A bare port
    number means C{tcp:PORT}.  Only the port of C{tcp:}, C{tcp6:} and
    C{ssl:} endpoints (possibly inside C{haproxy:}) is checked here; Twisted
    checks the rest when the service starts.
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


def _parse_passive_ports(sec: _Section, key: str) -> tuple[int, int]:
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


def _parse_host(sec: _Section, key: str, value: str) -> str:
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if _is_ip(host):
        return str(ipaddress.ip_address(host))
    if _is_hostname(host):
        return host.lower()
    sec.fail(key, "an IPv4 or IPv6 address or a host name", value)


def _parse_log_level(sec: _Section, key: str, default: str) -> str:
    value = sec.text(key)
    if value is None:
        return default
    level = value.lower()
    if level == "warning":
        level = "warn"
    if level not in LOG_LEVELS:
        sec.fail(key, "one of " + ", ".join(LOG_LEVELS), value)
    return level


def _size_limit(sec: _Section, key: str, minimum: int, maximum: int) -> int | None:
    """A size where 0, like no value, means no limit (None)."""
    value = sec.text(key)
    if value is None:
        return None
    expected = (
        f"0 (no limit) or a size from {_format_size(minimum)} to"
        f" {_format_size(maximum)} (bytes, or a number with K, M, G or T)"
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


def _parse_networks(sec: _Section, key: str) -> tuple[str, ...]:
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


def _parse_host_keys(sec: _Section, key: str, base: Path) -> tuple[Path, ...]:
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
#: that starts with something else but has a key type later has options.
_SSH_KEY_TYPE_RE = re.compile(r"^(?:ssh|ecdsa|sk)-[A-Za-z0-9@.-]+$")
_PUBLIC_KEY_EXPECTED = "an OpenSSH public key 'type base64 [comment]'"
MIN_RSA_BITS = 2048


def _parse_authorized_keys(
    sec: _Section, key: str, lines: Iterable[str], where: str
) -> list[str]:
    """
    Read authorized_keys lines (blank lines and C{#} comments skipped) into
    normalised C{"type base64"} keys; C{where} (C{"of the value"}, C{"of
    /path"}) says which lines an error's line number counts.
    """
    keys = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(_public_key(sec, key, line, f"on line {number} {where}"))
    return keys


def _public_key(sec: _Section, key: str, line: str, where: str) -> str:
    """
    Check one C{type base64 [comment]} line with Twisted's key parser and
    return C{"type base64"}.  Refused: an options field (cosgw does not
    apply C{from=}, C{command=} and the like, so it must not seem to), DSA
    keys, RSA keys under L{MIN_RSA_BITS} bits, security-key and certificate
    types (Twisted cannot verify their signatures), and a type that is not
    the one inside the key data.
    """
    fields = line.split()
    kind = fields[0]
    if not _SSH_KEY_TYPE_RE.match(kind):
        if any(_SSH_KEY_TYPE_RE.match(word) for word in fields[1:]):
            sec.fail(
                key,
                f"'type base64 [comment]' {where}, without options (cosgw does"
                " not support from=, command= and the like)",
                kind,
            )
        sec.fail(key, f"{_PUBLIC_KEY_EXPECTED} {where}", line)
    if len(fields) < 2:
        sec.fail(key, f"{_PUBLIC_KEY_EXPECTED} {where}", line)
    if kind == "ssh-dss":
        sec.fail(key, f"an Ed25519, ECDSA or RSA key {where} (DSA is too weak)", kind)
    if kind.startswith("sk-") or "-cert-" in kind:
        sec.fail(
            key,
            f"an Ed25519, ECDSA or RSA key {where} (security-key and"
            " certificate keys are not supported)",
            kind,
        )
    normalised = f"{kind} {fields[1]}"
    # Imported here, not at the top: the module must stay cheap to import
    # (see the module docstring), and only configs with keys need it.
    from twisted.conch.ssh.keys import Key

    try:
        parsed = Key.fromString(normalised.encode("ascii"))
    except Exception:
        # Bad base64 or key data raises BadKeyError, binascii.Error,
        # struct.error, ValueError or IndexError: all mean the same here.
        sec.fail(key, f"{_PUBLIC_KEY_EXPECTED} {where}", normalised)
    if parsed.sshType() != kind.encode("ascii"):
        actual = parsed.sshType().decode("ascii")
        sec.fail(key, f"a key {where} whose type matches its data ({actual!r})", kind)
    if parsed.type() == "RSA" and parsed.size() < MIN_RSA_BITS:
        sec.fail(
            key,
            f"an RSA key of at least {MIN_RSA_BITS} bits {where}",
            f"{kind} ({parsed.size()} bits)",
        )
    return normalised


# --------------------------------------------------------------------------
# COS FTP Server V5's conf/vsftpd.conf
# --------------------------------------------------------------------------

_V5_ACCOUNT_KEYS = {
    "bucket": "cos_bucket",
    "region": "cos_region",
    "secret_id": "cos_secretid",
    "secret_key": "cos_secretkey",
    "endpoint": "cos_endpoint",
    "scheme": "cos_protocol",
}
_V5_SECRETS = (
    "cos_secretid",
    "cos_secretkey",
    "ftp_login_user_password",
    "login_users",
)
# Keys whose value V5 took literally even after " #": the only one where
# dropping an inline "#" comment could change what a working V5 setup meant.
_V5_LITERAL_KEYS = ("ftp_login_user_password", "login_users")
_V5_INLINE_HASH_RE = re.compile(r"\s+#.*", re.DOTALL)
_V5_DEFAULT_WORD = "default"
# V5's defaults where cosgw keeps them for V5 files.
_V5_MAX_CONNECTIONS = 512
_V5_IGNORED = {
    "max_list_file": (
        "ignored: cosgw streams listings page by page and never truncates them"
    ),
    "log_rotate_enabled": "ignored: rotate cosgw's log with twistd or logrotate",
    "log_rotate_when": "ignored: rotate cosgw's log with twistd or logrotate",
    "log_backup_count": "ignored: rotate cosgw's log with twistd or logrotate",
    "config_check_enable": (
        "ignored: cosgw bounds memory per transfer ((parts_in_flight + 1) x"
        " part_size) and needs no start-up memory check"
    ),
}


class _V5Loader:
    """Reads COS FTP Server V5's conf/vsftpd.conf, unchanged."""

    def __init__(self, source: Path, label: str, text: str) -> None:
        self.source = source
        self.label = label
        self.base = source.parent
        self.parser = _parse(text, label, v5=True)
        self.notices: list[str] = [
            f"{label}: read as a COS FTP Server V5 configuration; etc/cosgw.ini"
            " documents cosgw's own format",
            f"{label}: SFTP is off, as V5 had none; to serve it, move to"
            " cosgw's own format and set [server] sftp_listen",
        ]
        # V5 looked its sections up case-sensitively; accept any case.
        self.by_upper: dict[str, str] = {}
        for name in self.parser.sections():
            self.by_upper.setdefault(name.upper(), name)
        self.sections: dict[str, _Section] = {}
        self.home_dirs: dict[str, str] = {}

    def section(self, name: str) -> _Section:
        """
        The section C{name} (any case), read once so that what every reader
        used is known at the end.  Inline C{#} comments are dropped from
        every value but the password (see the module docstring).
        """
        actual = self.by_upper.get(name.upper(), name)
        if actual in self.sections:
            return self.sections[actual]
        values: dict[str, str] = {}
        if self.parser.has_section(actual):
            for key, value in self.parser[actual].items():
                if key in _V5_LITERAL_KEYS:
                    if _V5_INLINE_HASH_RE.search(value):
                        self.notices.append(
                            f"{self.label}: [{actual}] {key}: the value holds"
                            " ' #'; V5 read what follows as part of the"
                            " password, not as a comment, and so does cosgw"
                        )
                else:
                    value = _V5_INLINE_HASH_RE.sub("", value)
                values[key] = value
        sec = _Section(self.label, actual, values, _V5_SECRETS)
        self.sections[actual] = sec
        return sec

    def load(self) -> Config:
        names = self.parser.sections()
        accounts = [name for name in names if name.upper().startswith("COS_ACCOUNT")]
        known = {"NETWORK", "FILE_OPTION", "OPTIONAL", "FTP_ACCOUNT"}
        for name in names:
            if name not in accounts and name.upper() not in known:
                self.notices.append(f"{self.label}: [{name}]: unknown section, ignored")
        storages: dict[str, StorageConfig] = {}
        users: dict[str, UserConfig] = {}
        defined_in: dict[str, str] = {}
        for name in accounts:
            storage, account_users = self.load_account(name)
            storages[storage.name] = storage
            for user, sec, key in account_users:
                if user.name in users:
                    sec.fail(
                        key,
                        f"a user name not already used in [{defined_in[user.name]}]",
                        user.name,
                    )
                users[user.name] = user
                defined_in[user.name] = sec.name
        if not users:
            raise ConfigError(
                f"{self.label}: no [COS_ACCOUNT_<n>] section with"
                " ftp_login_user_name; expected at least one",
                path=self.label,
            )
        server = self.load_server()
        transfer = self.load_transfer()
        for sec in self.sections.values():
            for key in sec.unused():
                reason = _V5_IGNORED.get(key, "unknown key, ignored")
                self.notices.append(f"{self.label}: [{sec.name}] {key}: {reason}")
        return _freeze(self.source, server, transfer, storages, users, self.notices)

    def load_account(
        self, name: str
    ) -> tuple[StorageConfig, list[tuple[UserConfig, _Section, str]]]:
        """One C{[COS_ACCOUNT_<n>]}: its storage and its user(s)."""
        sec = self.section(name)
        storage = _load_cos_storage(sec, name.lower(), _V5_ACCOUNT_KEYS, self.notices)
        delete_enable = sec.boolean("delete_enable", True)
        home_dir = sec.text("home_dir")
        if home_dir is not None:
            home_dir = home_dir.rstrip("/") or "/"
            first = self.home_dirs.setdefault(home_dir, name)
            if first != name:
                self.notices.append(
                    f"{self.label}: [{name}] home_dir: [{first}] has the same"
                    " home_dir; V5 served both accounts' users from the bucket"
                    " of the last of them, cosgw serves each user from its own"
                    " section's bucket"
                )
        for key in ("cos_appid", "cos_user_home_dir", "cos_download_domain"):
            if sec.text(key) is not None:
                self.notices.append(
                    f"{self.label}: [{name}] {key}: ignored (the bucket name"
                    " carries the appid; users see the bucket's root as /)"
                )
        legacy = self.section("FTP_ACCOUNT")
        if sec.has("ftp_login_user_name") or not legacy.has("login_users"):
            return storage, [self.account_user(sec, storage.name, delete_enable)]
        return storage, self.legacy_users(legacy, storage.name)

    def account_user(
        self, sec: _Section, storage: str, delete_enable: bool
    ) -> tuple[UserConfig, _Section, str]:
        """The user of a current V5 account section."""
        name = sec.require("ftp_login_user_name", "the FTP user name")
        _check_user_name(sec, "ftp_login_user_name", name)
        password = sec.raw("ftp_login_user_password")
        if not password:
            sec.missing("ftp_login_user_password", "the FTP user's password")
        authority = sec.require("authority", "R, W or RW")
        try:
            permissions = authority_permissions(authority, delete_enable)
        except ValueError:
            sec.fail("authority", "R, W or RW", authority)
        user = self._v5_user(
            sec, "ftp_login_user_password", name, password, storage, permissions
        )
        return user, sec, "ftp_login_user_name"

    def _v5_user(
        self,
        sec: _Section,
        key: str,
        name: str,
        password: str,
        storage: str,
        permissions: frozenset[str],
    ) -> UserConfig:
        """A V5 user: its home is the bucket root; plain passwords noticed."""
        hashed = _check_password(sec, key, password)
        if not hashed:
            self.notices.append(
                _plain_password_notice(self.label, f"[{sec.name}] {key}", name)
            )
        return UserConfig(
            name=name,
            password=password,
            password_is_hashed=hashed,
            storage=storage,
            home="",
            permissions=permissions,
        )

    def legacy_users(
        self, legacy: _Section, storage: str
    ) -> list[tuple[UserConfig, _Section, str]]:
        """
        Users of V5's first format (2017-2018): C{[FTP_ACCOUNT] login_users =
        user1:pass1:RW;user2:pass2:RW}, all on the one C{[COS_ACCOUNT]}.
        """
        text = legacy.raw("login_users") or ""
        users = []
        for entry in text.split(";"):
            entry = entry.strip()
            if not entry:
                continue
            fields = entry.split(":")
            if len(fields) != 3 or not fields[0] or not fields[1]:
                # Never quote the entry: it holds a password.
                raise ConfigError(
                    f"{self.label}: [{legacy.name}] login_users: expected"
                    " 'user:password:RW' entries separated by ';'",
                    path=self.label,
                    section=legacy.name,
                    key="login_users",
                )
            name, password, authority = fields
            _check_user_name(legacy, "login_users", name)
            try:
                permissions = authority_permissions(authority)
            except ValueError:
                legacy.fail("login_users", f"R, W or RW for user {name!r}", authority)
            user = self._v5_user(
                legacy, "login_users", name, password, storage, permissions
            )
            users.append((user, legacy, "login_users"))
        return users

    # -- [NETWORK] and [OPTIONAL] --------------------------------------------

    def load_server(self) -> ServerConfig:
        net = self.section("NETWORK")
        opt = self.section("OPTIONAL")
        port = net.integer("listen_port", DEFAULT_FTP_PORT, 1, 65535)
        passive = ServerConfig.passive_ports
        value = net.text("passive_port")
        if value is not None:
            passive = self.passive_range(net, value)
            notice = _passive_notice(self.label, "[NETWORK] passive_port", *passive)
            if notice:
                self.notices.append(notice)
        masquerade = net.text("masquerade_address")
        if masquerade is not None:
            try:
                masquerade = str(ipaddress.IPv4Address(masquerade))
            except ValueError:
                self.notices.append(
                    f"{self.label}: [NETWORK] masquerade_address: not an IPv4"
                    " address; V5 ignored it and so does cosgw (cosgw's own"
                    " format also takes a host name)"
                )
                masquerade = None
        max_connections = self.optional_int(
            opt, "max_connection_num", _V5_MAX_CONNECTIONS, 0
        )
        log_level = "info"
        level = opt.text("log_level")
        if level is not None:
            log_level = level.lower()
            if log_level == "warning":
                log_level = "warn"
            if log_level not in LOG_LEVELS:
                self.notices.append(
                    f"{self.label}: [OPTIONAL] log_level: not one of "
                    + ", ".join(LOG_LEVELS)
                    + "; using info, as V5 did"
                )
                log_level = "info"
        log_dir = opt.path("log_dir", self.base)
        return ServerConfig(
            state_dir=self.base / STATE_DIR_NAME,
            ftp_listen=(f"tcp:{port}",),
            passive_ports=passive,
            masquerade_address=masquerade,
            max_connections=max_connections or None,
            log_level=log_level,
            log_dir=log_dir,
        )

    def passive_range(self, net: _Section, value: str) -> tuple[int, int]:
        """
        V5's C{passive_port = LOW,HIGH} is C{range(LOW, HIGH)}: HIGH is never
        used.  A lone C{LOW} meant C{range(LOW, 65535)}.
        """
        expected = "'LOW,HIGH' with 1024 <= LOW < HIGH <= 65535"
        match = re.match(r"^(\d+)\s*(?:,\s*(\d+))?$", value)
        if match is None:
            net.fail("passive_port", expected, value)
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else 65535
        if not 1024 <= low < high <= 65535:
            net.fail("passive_port", expected, value)
        return low, high - 1

    def load_transfer(self) -> TransferConfig:
        files = self.section("FILE_OPTION")
        opt = self.section("OPTIONAL")
        defaults = TransferConfig()
        max_file_size = files.size("single_file_max_size", None, 1, MAX_OBJECT_SIZE)
        if max_file_size is not None:
            self.notices.append(
                f"{self.label}: [FILE_OPTION] single_file_max_size: only limits"
                " the size of an upload; cosgw grows the part size as an upload"
                " grows instead of sizing every part for the largest file"
            )
        part_size = self.optional_int(
            opt, "min_part_size", defaults.part_size, 1, MAX_PART_SIZE - 1
        )
        if part_size < MIN_PART_SIZE:
            self.notices.append(
                f"{self.label}: [OPTIONAL] min_part_size: COS's smallest part is"
                f" 1 MiB; using {MIN_PART_SIZE}"
            )
            part_size = MIN_PART_SIZE
        threads = self.optional_int(opt, "upload_thread_num", defaults.threads, 1)
        return TransferConfig(
            part_size=part_size,
            threads=threads,
            max_file_size=max_file_size,
        )

    def optional_int(
        self,
        sec: _Section,
        key: str,
        default: int,
        minimum: int,
        maximum: int | None = None,
    ) -> int:
        """
        An C{[OPTIONAL]} integer as V5 read it: C{default} (the example's
        word) or a value V5 could not use means the default.  cosgw adds a
        notice for the latter, where V5 said nothing.
        """
        value = sec.text(key)
        if value is None or value.lower() == _V5_DEFAULT_WORD:
            return default
        try:
            number = int(value)
        except ValueError:
            number = None
        if (
            number is None
            or number < minimum
            or (maximum is not None and number > maximum)
        ):
            self.notices.append(
                f"{self.label}: [{sec.name}] {key}: {value!r} is not usable;"
                f" using the default {default}, as V5 ignored it too"
            )
            return default
        return number
