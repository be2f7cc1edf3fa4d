"""
COS FTP Server V5's C{conf/vsftpd.conf}, read unchanged, so a V5
installation can switch to cosgw without touching its file.  Any file with a
C{[COS_ACCOUNT...]} section is V5's.  It is lenient where V5 was: keys cosgw
does not use become notices, not errors.

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

import ipaddress
import re
from pathlib import Path

from cosgw.config.fields import (
    check_password,
    check_user_name,
    default_state_dir,
    load_cos_storage,
    passive_notice,
    plain_password_notice,
)
from cosgw.config.ini import Section, parse_ini
from cosgw.config.model import (
    DEFAULT_FTP_PORT,
    LOG_LEVELS,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    Config,
    ConfigError,
    ServerConfig,
    StorageConfig,
    TransferConfig,
    UserConfig,
    freeze_config,
)
from cosgw.config.values import authority_permissions

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
        "ignored: cosgw bounds the memory of all uploads together"
        " (upload_buffer_budget) and needs no start-up memory check"
    ),
}


class V5Loader:
    """Reads COS FTP Server V5's conf/vsftpd.conf, unchanged."""

    def __init__(self, source: Path, label: str, text: str) -> None:
        self.source = source
        self.label = label
        self.base = source.parent
        self.parser = parse_ini(text, label, v5=True)
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
        self.sections: dict[str, Section] = {}
        self.home_dirs: dict[str, str] = {}

    def section(self, name: str) -> Section:
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
        sec = Section(self.label, actual, values, _V5_SECRETS)
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
        return freeze_config(
            self.source, server, transfer, storages, users, self.notices
        )

    def load_account(
        self, name: str
    ) -> tuple[StorageConfig, list[tuple[UserConfig, Section, str]]]:
        """One C{[COS_ACCOUNT_<n>]}: its storage and its user(s)."""
        sec = self.section(name)
        storage = load_cos_storage(sec, name.lower(), _V5_ACCOUNT_KEYS, self.notices)
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
        self, sec: Section, storage: str, delete_enable: bool
    ) -> tuple[UserConfig, Section, str]:
        """The user of a current V5 account section."""
        name = sec.require("ftp_login_user_name", "the FTP user name")
        check_user_name(sec, "ftp_login_user_name", name)
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
        sec: Section,
        key: str,
        name: str,
        password: str,
        storage: str,
        permissions: frozenset[str],
    ) -> UserConfig:
        """A V5 user: its home is the bucket root; plain passwords noticed."""
        hashed = check_password(sec, key, password)
        if not hashed:
            self.notices.append(
                plain_password_notice(self.label, f"[{sec.name}] {key}", name)
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
        self, legacy: Section, storage: str
    ) -> list[tuple[UserConfig, Section, str]]:
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
            check_user_name(legacy, "login_users", name)
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
            notice = passive_notice(self.label, "[NETWORK] passive_port", *passive)
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
            state_dir=default_state_dir(self.base),
            ftp_listen=(f"tcp:{port}",),
            passive_ports=passive,
            masquerade_address=masquerade,
            max_connections=max_connections or None,
            log_level=log_level,
            log_dir=log_dir,
        )

    def passive_range(self, net: Section, value: str) -> tuple[int, int]:
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
        sec: Section,
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
