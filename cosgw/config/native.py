"""
cosgw's own INI format, which C{etc/cosgw.ini} documents key by key:
C{[server]}, C{[transfer]}, C{[storage:NAME]} and C{[user:NAME]}.

It is strict: an unknown section or key is an error, because a misspelt key
that is silently ignored leaves a gateway running with a setting nobody
chose.  A C{[user:NAME]} may carry its own bucket's keys (C{bucket},
C{region}, C{secret_id}, ...) instead of naming a storage: the loader makes
them the storage C{user:NAME}, and a file whose users all do so needs no
C{[storage:NAME]}.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from cosgw.config import reach
from cosgw.config.fields import (
    check_admin,
    check_password,
    check_user_name,
    default_state_dir,
    load_cos_storage,
    parse_admin_listen,
    parse_host,
    parse_host_keys,
    parse_listen,
    parse_log_format,
    parse_log_level,
    parse_networks,
    parse_passive_ports,
    passive_notice,
    plain_password_notice,
    size_limit,
)
from cosgw.config.ini import Section, parse_ini
from cosgw.config.model import (
    ALL_PERMISSIONS,
    KIB,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MIB,
    MIN_PART_SIZE,
    TIB,
    Config,
    ConfigError,
    ServerConfig,
    StorageConfig,
    TransferConfig,
    UserConfig,
    freeze_config,
)
from cosgw.config.sshkeys import load_authorized_keys
from cosgw.config.values import normalize_home, parse_permissions

_STORAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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
    "ipv6_prefix",
    "max_handles",
    "login_timeout",
    "data_timeout",
    "allowed_networks",
    "denied_networks",
    "login_max_failures",
    "login_failure_window",
    "login_ban_time",
    "login_failure_delay",
    "log_format",
    "xferlog",
    "admin_listen",
    "admin_users",
    "drain_timeout",
    *reach.SERVER_KEYS,
)
_TRANSFER_KEYS = (
    "part_size",
    "parts_in_flight",
    "threads",
    "max_file_size",
    "read_chunk",
    "stale_upload_age",
    "resume_uploads",
    "max_sparse_gap",
    "max_spool_size",
    "upload_buffer_budget",
    "download_buffer_budget",
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
    *reach.USER_KEYS,
    *_USER_COS_KEYS,
)
#: Upper bounds that only catch typos (a quota in bytes of 1 EiB, a rate
#: of 1 TiB/s).
MAX_QUOTA_BYTES = 1024 * 1024 * TIB
MAX_RATE = TIB
_SECTION_KINDS = "[server], [transfer], [storage:NAME] or [user:NAME]"


class CosgwLoader:
    """Reads cosgw's own INI format; strict about every name."""

    def __init__(self, source: Path, label: str, text: str) -> None:
        self.source = source
        self.label = label
        self.base = source.parent
        self.parser = parse_ini(text, label, v5=False)
        self.notices: list[str] = []

    def section(self, name: str, secrets: Iterable[str] = ()) -> Section:
        values = self.parser[name] if self.parser.has_section(name) else {}
        return Section(self.label, name, values, secrets)

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
        check_admin(self.label, server, users)
        reach.check_homes(self.label, server, users)
        if not server.sftp_listen:
            for user in users.values():
                if user.password is None:
                    self.notices.append(
                        f"{self.label}: [user:{user.name}]: user {user.name!r}"
                        " has SSH keys but no password, and [server]"
                        " sftp_listen is empty: it cannot log in"
                    )
        return freeze_config(
            self.source, server, transfer, storages, users, self.notices
        )

    def finish(self, section: Section, known: tuple[str, ...]) -> None:
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
        """
        C{[server]}, one group of keys at a time; any key left unread after
        them is refused.
        """
        sec = self.section("server")
        server = self.server_ftp(sec)
        server = self.server_tls(sec, server)
        server = self.server_sftp_and_timeouts(sec, server)
        server = self.server_access(sec, server)
        server = reach.server_reach(sec, server)
        self.finish(sec, _SERVER_KEYS)
        return server

    def server_ftp(self, sec: Section) -> ServerConfig:
        """State directory, FTP listeners and passive ports, connections, logs."""
        state_dir = sec.path("state_dir", self.base) or default_state_dir(self.base)
        ftp_listen = parse_listen(sec, "ftp_listen", ServerConfig.ftp_listen)
        passive = parse_passive_ports(sec, "passive_ports")
        notice = passive_notice(self.label, "[server] passive_ports", *passive)
        if notice and sec.has("passive_ports"):
            self.notices.append(notice)
        masquerade = sec.text("masquerade_address")
        if masquerade is not None:
            masquerade = parse_host(sec, "masquerade_address", masquerade)
        max_connections = sec.integer("max_connections", 0, 0) or None
        idle_timeout = sec.integer("idle_timeout", 600, 1, 7 * 24 * 3600)
        log_level = parse_log_level(sec, "log_level", "info")
        log_dir = sec.path("log_dir", self.base)
        return ServerConfig(
            log_format=parse_log_format(sec, "log_format"),
            xferlog=sec.path("xferlog", self.base),
            admin_listen=parse_admin_listen(
                sec, "admin_listen", ServerConfig.admin_listen
            ),
            admin_users=tuple(sec.words("admin_users")),
            drain_timeout=sec.integer(
                "drain_timeout", ServerConfig.drain_timeout, 0, 24 * 3600
            ),
            state_dir=state_dir,
            ftp_listen=ftp_listen,
            passive_ports=passive,
            masquerade_address=masquerade,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            log_level=log_level,
            log_dir=log_dir,
        )

    def server_tls(self, sec: Section, server: ServerConfig) -> ServerConfig:
        """Implicit FTPS listeners, the certificate and the TLS policies."""
        ftps_listen = parse_listen(sec, "ftps_listen", ())
        certificate = sec.path("tls_certificate", self.base)
        key = sec.path("tls_key", self.base)
        chain = sec.path("tls_chain", self.base)
        if (certificate is None) != (key is None):
            sec.missing(
                "tls_key" if key is None else "tls_certificate",
                "tls_certificate and tls_key together",
            )
        return dataclasses.replace(
            server,
            ftps_listen=ftps_listen,
            tls_certificate=certificate,
            tls_key=key,
            tls_chain=chain,
            tls_required=sec.boolean("tls_required", False),
            tls_data_required=sec.boolean("tls_data_required", False),
            tls_session_reuse=sec.boolean("tls_session_reuse", False),
        )

    def server_sftp_and_timeouts(
        self, sec: Section, server: ServerConfig
    ) -> ServerConfig:
        """SFTP listeners and host keys, connections per address, timeouts."""
        sftp_listen = parse_listen(sec, "sftp_listen", ())
        ssh_host_keys = parse_host_keys(sec, "ssh_host_keys", self.base)
        max_connections_per_ip = (
            sec.integer(
                "max_connections_per_ip", ServerConfig.max_connections_per_ip or 0, 0
            )
            or None
        )
        ipv6_prefix = sec.integer("ipv6_prefix", ServerConfig.ipv6_prefix, 32, 128)
        max_handles = sec.integer("max_handles", ServerConfig.max_handles, 1, 100_000)
        login_timeout = sec.integer(
            "login_timeout", ServerConfig.login_timeout, 1, 3600
        )
        data_timeout = sec.integer(
            "data_timeout", ServerConfig.data_timeout, 1, 24 * 3600
        )
        return dataclasses.replace(
            server,
            sftp_listen=sftp_listen,
            ssh_host_keys=ssh_host_keys,
            max_connections_per_ip=max_connections_per_ip,
            ipv6_prefix=ipv6_prefix,
            max_handles=max_handles,
            login_timeout=login_timeout,
            data_timeout=data_timeout,
        )

    def server_access(self, sec: Section, server: ServerConfig) -> ServerConfig:
        """The networks clients may connect from, and the login defender."""
        allowed_networks = parse_networks(sec, "allowed_networks")
        denied_networks = parse_networks(sec, "denied_networks")
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
        return dataclasses.replace(
            server,
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
        max_sparse_gap = sec.size(
            "max_sparse_gap", defaults.max_sparse_gap, 0, MAX_OBJECT_SIZE
        )
        max_spool_size = sec.size(
            "max_spool_size", defaults.max_spool_size, 0, MAX_OBJECT_SIZE
        )
        upload_buffer_budget = sec.size(
            "upload_buffer_budget",
            defaults.upload_buffer_budget,
            MIN_PART_SIZE,
            MAX_OBJECT_SIZE,
        )
        download_buffer_budget = sec.size(
            "download_buffer_budget",
            defaults.download_buffer_budget,
            0,
            MAX_OBJECT_SIZE,
        )
        self.finish(sec, _TRANSFER_KEYS)
        assert part_size is not None and read_chunk is not None
        assert max_sparse_gap is not None and max_spool_size is not None
        assert upload_buffer_budget is not None and download_buffer_budget is not None
        return TransferConfig(
            part_size=part_size,
            parts_in_flight=parts_in_flight,
            threads=threads,
            max_file_size=max_file_size,
            read_chunk=read_chunk,
            stale_upload_age=stale_upload_age,
            resume_uploads=resume_uploads,
            max_sparse_gap=max_sparse_gap,
            max_spool_size=max_spool_size,
            upload_buffer_budget=upload_buffer_budget,
            download_buffer_budget=download_buffer_budget,
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

    def load_cos(self, sec: Section, name: str) -> StorageConfig:
        """
        A COS storage from C{sec}'s bucket, keys, endpoint, scheme, token and
        verify_tls: a C{[storage:NAME]} of type cos, or a user's own bucket.
        """
        storage = load_cos_storage(sec, name, keys=_COS_KEY_NAMES, notices=None)
        token = sec.text("token")
        verify_tls = sec.boolean("verify_tls", True)
        return dataclasses.replace(storage, token=token, verify_tls=verify_tls)

    def refuse_other_kind(
        self, sec: Section, known: tuple[str, ...], kind: str
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
        check_user_name(sec, None, name)
        password, hashed, authorized_keys = self.user_credentials(sec)
        storage, own = self.user_storage(sec, section_name, storages)
        user = UserConfig(
            name=name,
            password=password,
            password_is_hashed=hashed,
            storage=storage,
            home=self.user_home(sec),
            permissions=self.user_permissions(sec),
            authorized_keys=authorized_keys,
        )
        user = reach.user_reach(sec, self.user_limits(sec, user))
        self.finish(sec, _USER_KEYS)
        if password is not None and not hashed:
            self.notices.append(
                plain_password_notice(self.label, f"[{section_name}] password", name)
            )
        return user, own

    def user_credentials(
        self, sec: Section
    ) -> tuple[str | None, bool, tuple[str, ...]]:
        """
        The password, whether it is a hash, and the SSH keys: a user with
        neither a password nor a key could never log in.
        """
        password = sec.raw("password") or None
        hashed = password is not None and check_password(sec, "password", password)
        authorized_keys = load_authorized_keys(sec, self.base)
        if password is None and not authorized_keys:
            sec.missing(
                "password",
                "a hash printed by cosgw-passwd, or SSH keys in authorized_keys"
                " or authorized_keys_file",
            )
        return password, hashed, authorized_keys

    def user_home(self, sec: Section) -> str:
        home = sec.raw("home") or ""
        try:
            return normalize_home(home)
        except ValueError:
            sec.fail(
                "home",
                "a path inside the storage such as 'a/b' (no '.', '..' or"
                " empty segments)",
                home,
            )

    def user_permissions(self, sec: Section) -> frozenset[str]:
        """C{permissions} (all by default), less deleting when
        C{delete_enable} is false."""
        delete_enable = sec.boolean("delete_enable", True)
        permissions_text = sec.raw("permissions")
        if permissions_text is None:
            permissions_text = "all"
        try:
            return parse_permissions(permissions_text, delete_enable)
        except ValueError:
            sec.fail(
                "permissions",
                "'all', R, W, RW or a list of " + ", ".join(sorted(ALL_PERMISSIONS)),
                permissions_text,
            )

    def user_limits(self, sec: Section, user: UserConfig) -> UserConfig:
        """
        The user's TLS policies, quotas, sizes, sessions, rates and networks;
        an absent key keeps the default, which defers to [server] or
        [transfer] or sets no limit.
        """
        tls_required = (
            sec.boolean("tls_required", False) if sec.has("tls_required") else None
        )
        tls_data_required = (
            sec.boolean("tls_data_required", False)
            if sec.has("tls_data_required")
            else None
        )
        quota_bytes = size_limit(sec, "quota_bytes", 1, MAX_QUOTA_BYTES)
        quota_files = sec.integer("quota_files", 0, 0) or None
        value = sec.text("max_file_size")
        if value is not None and value.lower() == "none":
            sec.fail(
                "max_file_size",
                "a size (leave the key out to use [transfer] max_file_size)",
                value,
            )
        max_file_size = sec.size("max_file_size", None, 1, MAX_OBJECT_SIZE)
        return dataclasses.replace(
            user,
            tls_required=tls_required,
            tls_data_required=tls_data_required,
            quota_bytes=quota_bytes,
            quota_files=quota_files,
            max_file_size=max_file_size,
            max_sessions=sec.integer("max_sessions", 0, 0) or None,
            upload_rate=size_limit(sec, "upload_rate", KIB, MAX_RATE),
            download_rate=size_limit(sec, "download_rate", KIB, MAX_RATE),
            allowed_networks=parse_networks(sec, "allowed_networks"),
            denied_networks=parse_networks(sec, "denied_networks"),
        )

    def user_storage(
        self,
        sec: Section,
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
