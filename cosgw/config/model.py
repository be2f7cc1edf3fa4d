"""
The values a configuration is read into, and the error it can fail with.

Every value is a frozen dataclass holding checked, typed settings: once
L{cosgw.config.load_config} returns, nothing downstream needs to re-check or
can change a setting.  The constants here are shared by both formats'
loaders and by the code that enforces the settings (L{cosgw.vfs} checks
L{ALL_PERMISSIONS}).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

# COS limits (see ARCHITECTURE.md); repeated here so that the package needs
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
    hash from L{cosgw.auth.hashes.hash_password} or, for files carried over
    from V5, plain text; it is left out of C{repr}.  A user has a password, SSH keys
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
    #: The user's FTP name encoding; None follows the listener's, then
    #: [server]'s.
    ftp_encoding: str | None = None


@dataclass(frozen=True)
class TransferConfig:
    """
    How uploads and downloads use memory and threads.

    Memory per upload is bounded by (C{parts_in_flight} + 1) x part size,
    and the part buffers of all uploads together by C{upload_buffer_budget}.
    C{part_size} is the first part's size: the transfer code grows it as an
    upload grows so that a stream of unknown length stays within COS's
    10,000 parts.
    """

    part_size: int = 8 * MIB
    parts_in_flight: int = 4
    threads: int = 16
    max_file_size: int | None = None
    read_chunk: int = MIB
    #: Seconds after which an unfinished multipart upload (left by a crash,
    #: or by another gateway that died) is aborted by the sweeper.
    stale_upload_age: int = 86400
    #: Keep the stored parts of an upload whose client went away, so it can
    #: be resumed (until stale_upload_age), instead of aborting them.
    resume_uploads: bool = True
    #: Largest hole a write may leave beyond the end of a file (SFTP writes
    #: far ahead, FSETSTAT growth): the zeros would be uploaded and billed.
    max_sparse_gap: int = 64 * MIB
    #: Spool disk (state_dir/spool) all out-of-order and in-place SFTP
    #: writes may hold together, across every user.
    max_spool_size: int = 4 * GIB
    #: Memory the part buffers of all uploads share: uploads wait their turn
    #: for it (paused), they never fail for lack of it.
    upload_buffer_budget: int = 32 * MIB
    #: Memory all downloads may hold read ahead of their clients together;
    #: beyond it each download holds just its next chunk.
    download_buffer_budget: int = 32 * MIB


#: Where the admin listener listens unless told otherwise: this host only.
DEFAULT_ADMIN_LISTEN = "tcp:9121:interface=127.0.0.1"

#: Peers whose PROXY headers are believed unless the config says otherwise:
#: a balancer on this host.
DEFAULT_PROXY_TRUSTED = ("127.0.0.0/8", "::1/128")
#: The values of [server] shared_state_failure.
SHARED_STATE_FAILURES = ("open", "closed")

#: The values of [server] log_format.
LOG_FORMATS = ("text", "json")


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
    #: Connections at once from one client address (IPv6: one
    #: C{ipv6_prefix} network); None: no limit.  On by default so that one
    #: address cannot take every descriptor, and high enough for an office
    #: behind one NAT address.
    max_connections_per_ip: int | None = 64
    #: IPv6 clients are counted (for C{max_connections_per_ip} and by the
    #: login defender) per network of this prefix length, since one host
    #: usually holds a whole /64 and can pick a new address per connection.
    ipv6_prefix: int = 64
    #: Open SFTP handles at once in one SFTP session.
    max_handles: int = 64
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
    #: How log lines are written, to standard output and log_dir alike:
    #: "text" (one readable line each) or "json" (one object per line, every
    #: audit field its own key).
    log_format: str = "text"
    #: A wu-ftpd/vsftpd xferlog file, one line per transfer; None: none.
    xferlog: Path | None = None
    #: The admin listener (metrics, health, status page, JSON API), an
    #: endpoint string; empty: none.
    admin_listen: str = DEFAULT_ADMIN_LISTEN
    #: Users (from the config) whose passwords open the admin listener;
    #: empty: no authentication, allowed only on a loopback interface.
    admin_users: tuple[str, ...] = ()
    #: Seconds transfers in progress get to finish after SIGTERM (or
    #: ``cosgw stop``) before they are interrupted.
    drain_timeout: int = 60
    #: Every listener (FTP, implicit FTPS, SFTP, WebDAV) expects a PROXY
    #: protocol v1 or v2 header first, as if each named
    #: C{proxy_protocol=yes}; a listener's own option wins.
    proxy_protocol: bool = False
    #: Normalised networks whose PROXY headers are believed: a header from
    #: any other peer is refused with the connection.
    proxy_trusted_networks: tuple[str, ...] = DEFAULT_PROXY_TRUSTED
    #: C{redis://host:port/db} (or C{rediss://}) where replicas share bans,
    #: failed-login counts, session counts and quota usage; None: each
    #: process keeps its own.
    shared_state: str | None = None
    #: What a shared rule does while Redis cannot be reached: "open" (the
    #: process's own view decides) or "closed" (refuse what needs it).
    shared_state_failure: str = "open"
    #: WebDAV listeners, endpoint strings (C{ssl:} for HTTPS with the FTPS
    #: certificate).
    webdav_listen: tuple[str, ...] = ()
    #: Accept HTTP basic auth over plain HTTP from non-loopback addresses
    #: (passwords in clear text on the network).
    webdav_allow_plain_auth: bool = False
    #: How FTP sessions' names are encoded on the wire: a Python codec
    #: name, or "auto" (UTF-8 until a path argument is only GB18030).
    ftp_encoding: str = "utf-8"
    #: Where in each storage the gateway keeps what it stores for itself
    #: (file times): a prefix no user's home may hold, never listed.
    metadata_prefix: str = ".cosgw/"


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


def freeze_config(
    source: Path,
    server: ServerConfig,
    transfer: TransferConfig,
    storages: Mapping[str, StorageConfig],
    users: Mapping[str, UserConfig],
    notices: list[str],
) -> Config:
    """
    The loaders' result: they collect into plain dicts and lists, and the
    read-only views made here keep a loaded configuration from being changed
    by whoever holds it.
    """
    return Config(
        source=source,
        server=server,
        transfer=transfer,
        storages=MappingProxyType(dict(storages)),
        users=MappingProxyType(dict(users)),
        notices=tuple(notices),
    )
