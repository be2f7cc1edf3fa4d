"""
Tests for L{cosgw.config.native}: cosgw's own INI format, its defaults and
values, SSH-key-only users and users with their own bucket.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cosgw.config import (
    ALL_PERMISSIONS,
    ConfigError,
    ServerConfig,
    StorageConfig,
    UserConfig,
    load_config,
)
from tests.configtesting import (
    BASE,
    ED25519,
    EXAMPLE,
    GIB,
    MIB,
    OWN_BUCKET,
    PASSWORD,
    SECRET_KEY,
    STORAGE,
    TOKEN,
    USER,
    assert_one_line_error,
    keys_value,
    write,
)

# --------------------------------------------------------------------------
# The example
# --------------------------------------------------------------------------


def test_example_ini_loads() -> None:
    """etc/cosgw.ini, which documents every key, is itself a valid config."""
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert not config.embedded
    assert config.server.state_dir == EXAMPLE.parent / "cosgw-state"
    assert config.server.ftp_listen == ("tcp:2121",)
    assert config.server.passive_ports == (61000, 61999)
    assert config.server.max_connections == 200
    assert config.transfer.part_size == 8 * MIB
    assert config.transfer.max_file_size is None
    assert set(config.storages) == {"photos", "scratch", "user:carol"}
    photos = config.storages["photos"]
    assert (photos.kind, photos.bucket, photos.region) == (
        "cos",
        "examplebucket-1250000000",
        "ap-guangzhou",
    )
    assert config.storages["scratch"].path == EXAMPLE.parent / "cosgw-data"
    alice = config.users["alice"]
    assert alice.password_is_hashed
    assert (alice.storage, alice.home) == ("photos", "teams/alice")
    assert alice.permissions == {"list", "download", "upload", "mkdir"}
    (alice_key,) = alice.authorized_keys
    assert alice_key.startswith("ssh-ed25519 AAAA") and "alice@" not in alice_key
    bob = config.users["bob"]
    assert not bob.password_is_hashed
    assert bob.permissions == ALL_PERMISSIONS - {"delete", "rmdir"}
    carol = config.users["carol"]
    assert carol.password is None and not carol.password_is_hashed
    assert len(carol.authorized_keys) == 1
    assert (carol.storage, carol.home) == ("user:carol", "")
    assert (carol.quota_bytes, carol.max_sessions, carol.download_rate) == (
        50 * GIB,
        4,
        10 * MIB,
    )
    own = config.storages["user:carol"]
    assert (own.kind, own.bucket, own.region) == (
        "cos",
        "carolsbucket-1250000000",
        "ap-shanghai",
    )
    server = config.server
    assert server.sftp_listen == ("tcp:2222",)
    assert server.ssh_host_keys == ()
    assert (server.max_connections_per_ip, server.ipv6_prefix) == (64, 64)
    assert server.max_handles == 64
    assert (config.transfer.max_sparse_gap, config.transfer.max_spool_size) == (
        64 * 1024 * 1024,
        4 * 1024 * 1024 * 1024,
    )
    assert config.transfer.upload_buffer_budget == 32 * 1024 * 1024
    assert config.transfer.download_buffer_budget == 32 * 1024 * 1024
    assert (server.login_timeout, server.data_timeout) == (60, 120)
    assert (server.allowed_networks, server.denied_networks) == ((), ())
    assert (
        server.login_max_failures,
        server.login_failure_window,
        server.login_ban_time,
        server.login_failure_delay,
    ) == (10, 600, 1800, 1.0)
    # Only bob's plain-text password deserves a notice.
    assert len(config.notices) == 1
    assert "'bob'" in config.notices[0]
    assert "change-me-now" not in config.notices[0]


def test_example_hash_is_of_the_documented_word() -> None:
    """The example says its hash is of "example-only"; keep that true."""
    from cosgw.auth.hashes import verify_password

    alice = load_config(EXAMPLE).users["alice"]
    assert verify_password("example-only", alice.password, True)


# --------------------------------------------------------------------------
# Defaults and values
# --------------------------------------------------------------------------


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    local = "[storage:files]\ntype = local\npath = data\n"
    config = load_config(write(tmp_path, local + USER))
    assert config.server.state_dir == tmp_path / "cosgw-state"
    assert config.server.ftp_listen == ("tcp:2121",)
    assert config.server.passive_ports == (61000, 61999)
    assert config.server.max_connections is None
    assert config.transfer == type(config.transfer)()
    assert config.storages["files"].path == tmp_path / "data"
    alice = config.users["alice"]
    # With one storage, it is the default; permissions default to all.
    assert (alice.storage, alice.home, alice.permissions) == (
        "files",
        "",
        ALL_PERMISSIONS,
    )


def test_server_and_transfer_values(tmp_path: Path) -> None:
    text = """
    [server]
    state_dir = /var/lib/cosgw
    ftp_listen =
        2121
        haproxy:tcp:port=2122:interface=127.0.0.1
        systemd:domain=INET:index=0
    passive_ports = 62000,62009
    masquerade_address = FTP.Example.com
    max_connections = 0
    idle_timeout = 30
    log_level = WARNING
    log_dir = logs

    [transfer]
    part_size = 16 MiB
    parts_in_flight = 2
    threads = 4
    max_file_size = 200G
    read_chunk = 64k
    max_sparse_gap = 0
    max_spool_size = 512M
    upload_buffer_budget = 48M
    download_buffer_budget = 0
    """
    config = load_config(write(tmp_path, textwrap.dedent(text) + BASE))
    server = config.server
    assert server.state_dir == Path("/var/lib/cosgw")
    assert server.ftp_listen == (
        "tcp:2121",
        "haproxy:tcp:port=2122:interface=127.0.0.1",
        "systemd:domain=INET:index=0",
    )
    assert server.passive_ports == (62000, 62009)
    assert server.masquerade_address == "ftp.example.com"
    assert server.max_connections is None
    assert server.idle_timeout == 30
    assert server.log_level == "warn"
    assert server.log_dir == tmp_path / "logs"
    transfer = config.transfer
    assert transfer.part_size == 16 * MIB
    assert (transfer.parts_in_flight, transfer.threads) == (2, 4)
    assert transfer.max_file_size == 200 * GIB
    assert transfer.read_chunk == 64 * 1024
    assert (transfer.max_sparse_gap, transfer.max_spool_size) == (0, 512 * MIB)
    assert transfer.upload_buffer_budget == 48 * MIB
    assert transfer.download_buffer_budget == 0


def test_endpoint_forms(tmp_path: Path) -> None:
    text = (
        STORAGE
        + "endpoint = http://127.0.0.1:9000\n"
        + STORAGE.replace("[storage:main]", "[storage:suffix]")
        + "endpoint = COS.ap-guangzhou.myqcloud.com\nscheme = HTTP\n"
        + STORAGE.replace("[storage:main]", "[storage:v6]").replace(
            "region = ap-guangzhou\n", ""
        )
        + "endpoint = https://[::1]\nverify_tls = no\n"
        + USER
        + "storage = main\n"
    )
    storages = load_config(write(tmp_path, text)).storages
    assert (storages["main"].scheme, storages["main"].address) == (
        "http",
        ("127.0.0.1", 9000),
    )
    assert storages["main"].endpoint is None
    assert storages["suffix"].endpoint == "cos.ap-guangzhou.myqcloud.com"
    assert (storages["suffix"].scheme, storages["suffix"].address) == ("http", None)
    assert storages["v6"].address == ("::1", 443)
    assert storages["v6"].region is None
    assert storages["v6"].verify_tls is False


def test_user_values(tmp_path: Path) -> None:
    text = (
        BASE + "home = /teams/a b/\npermissions = list download\ndelete_enable = no\n"
    )
    alice = load_config(write(tmp_path, text)).users["alice"]
    assert alice.home == "teams/a b"
    assert alice.permissions == {"list", "download"}
    text = BASE + "permissions = RW\ndelete_enable = off\n"
    alice = load_config(write(tmp_path, text)).users["alice"]
    assert alice.permissions == ALL_PERMISSIONS - {"delete", "rmdir"}


def test_hashed_password(tmp_path: Path) -> None:
    stored = "$pbkdf2-sha256$29000$c2FsdA$aGFzaA"
    text = STORAGE + f"[user:alice]\npassword = {stored}\n"
    config = load_config(write(tmp_path, text))
    assert config.users["alice"].password == stored
    assert config.users["alice"].password_is_hashed
    assert config.notices == ()


def test_plain_password_notice(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert not config.users["alice"].password_is_hashed
    (notice,) = config.notices
    assert "'alice'" in notice and "cosgw-passwd" in notice
    assert PASSWORD not in notice


def test_hash_and_semicolon_are_part_of_a_value(tmp_path: Path) -> None:
    """cosgw's format has whole-line comments only: a password keeps them."""
    text = STORAGE + "[user:alice]\npassword = a #b ;c\n"
    assert load_config(write(tmp_path, text)).users["alice"].password == "a #b ;c"


def test_unused_storage_notice(tmp_path: Path) -> None:
    text = BASE + "storage = main\n[storage:spare]\ntype = local\npath = x\n"
    notices = load_config(write(tmp_path, text)).notices
    assert any("[storage:spare]" in notice for notice in notices)


# --------------------------------------------------------------------------
# SFTP, networks, the login defender and per-user policy
# --------------------------------------------------------------------------


def test_new_defaults(tmp_path: Path) -> None:
    """
    Absent, every new key keeps today's behaviour, except the limits that
    keep one client from exhausting the gateway, which are on by default.
    """
    config = load_config(write(tmp_path, BASE))
    assert config.server == ServerConfig(state_dir=tmp_path / "cosgw-state")
    assert config.server.sftp_listen == ()
    assert config.server.ssh_host_keys == ()
    assert config.server.max_connections_per_ip == 64
    assert (config.server.ipv6_prefix, config.server.max_handles) == (64, 64)
    assert config.transfer.max_sparse_gap == 64 * 1024 * 1024
    assert config.transfer.max_spool_size == 4 * 1024 * 1024 * 1024
    assert config.transfer.upload_buffer_budget == 32 * 1024 * 1024
    assert config.transfer.download_buffer_budget == 32 * 1024 * 1024
    assert (config.server.login_timeout, config.server.data_timeout) == (60, 120)
    assert config.users["alice"] == UserConfig(
        name="alice",
        password=PASSWORD,
        password_is_hashed=False,
        storage="main",
        home="",
        permissions=ALL_PERMISSIONS,
    )


def test_server_sftp_and_policy_values(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    for name in ("host_ed25519", "host_rsa"):
        (tmp_path / "keys" / name).write_text("private\n")
    text = r"""
    [server]
    sftp_listen =
        2222
        tcp6:2223:interface=\:\:1
    ssh_host_keys = keys/host_ed25519, keys/host_rsa
        keys/host_ed25519
    max_connections_per_ip = 8
    ipv6_prefix = 56
    max_handles = 10
    login_timeout = 30
    data_timeout = 300
    allowed_networks = 10.1.2.3/8 192.168.0.1, 2001:DB8:0:0::/32
        10.0.0.0/8
    denied_networks = 10.9.0.0/16,::ffff:10.9.0.1
    login_max_failures = 0
    login_failure_window = 60
    login_ban_time = 3600
    login_failure_delay = 0.25
    """
    server = load_config(write(tmp_path, textwrap.dedent(text) + BASE)).server
    assert server.sftp_listen == ("tcp:2222", "tcp6:2223:interface=\\:\\:1")
    assert server.ssh_host_keys == (
        tmp_path / "keys" / "host_ed25519",
        tmp_path / "keys" / "host_rsa",
    )
    assert server.max_connections_per_ip == 8
    assert (server.ipv6_prefix, server.max_handles) == (56, 10)
    assert (server.login_timeout, server.data_timeout) == (30, 300)
    # Normalised (host bits dropped, one address is a /32), each once.
    assert server.allowed_networks == ("10.0.0.0/8", "192.168.0.1/32", "2001:db8::/32")
    assert server.denied_networks == ("10.9.0.0/16", "::ffff:a09:1/128")
    assert (
        server.login_max_failures,
        server.login_failure_window,
        server.login_ban_time,
        server.login_failure_delay,
    ) == (0, 60, 3600, 0.25)


def test_server_empty_and_zero_values(tmp_path: Path) -> None:
    """An empty listener list is none (not FTP's port); 0 is no limit."""
    text = (
        "[server]\nsftp_listen =\nftps_listen =\nmax_connections_per_ip = 0\n"
        "allowed_networks =\nssh_host_keys =\nlogin_failure_delay = 0\n"
    )
    server = load_config(write(tmp_path, text + BASE)).server
    assert (server.sftp_listen, server.ftps_listen) == ((), ())
    assert server.max_connections_per_ip is None
    assert (server.allowed_networks, server.ssh_host_keys) == ((), ())
    assert server.login_failure_delay == 0.0


def test_host_key_messages(tmp_path: Path) -> None:
    (tmp_path / "host_key.pub").write_text("ssh-ed25519 AAAA\n")
    path = write(tmp_path, "[server]\nssh_host_keys = host_key.pub\n" + BASE)
    with pytest.raises(ConfigError, match=r"not '\.pub' public keys"):
        load_config(path)
    (tmp_path / "host_key").mkdir()
    path = write(tmp_path, "[server]\nssh_host_keys = host_key\n" + BASE)
    with pytest.raises(ConfigError, match="existing OpenSSH private host key files"):
        load_config(path)


def test_user_policy_values(tmp_path: Path) -> None:
    text = BASE + textwrap.dedent(
        """
        quota_bytes = 10G
        quota_files = 1000
        max_file_size = 1G
        max_sessions = 3
        upload_rate = 512K
        download_rate = 10 MiB
        allowed_networks = 192.0.2.0/24 2001:db8:1::/48
        denied_networks = 192.0.2.66
        """
    )
    alice = load_config(write(tmp_path, text)).users["alice"]
    assert (alice.quota_bytes, alice.quota_files) == (10 * GIB, 1000)
    assert alice.max_file_size == GIB
    assert alice.max_sessions == 3
    assert (alice.upload_rate, alice.download_rate) == (512 * 1024, 10 * MIB)
    assert alice.allowed_networks == ("192.0.2.0/24", "2001:db8:1::/48")
    assert alice.denied_networks == ("192.0.2.66/32",)


def test_user_zero_is_no_limit(tmp_path: Path) -> None:
    text = BASE + (
        "quota_bytes = 0\nquota_files = 0\nmax_sessions = 0\n"
        "upload_rate = 0\ndownload_rate = 0K\n"
    )
    alice = load_config(write(tmp_path, text)).users["alice"]
    assert alice.quota_bytes is None and alice.quota_files is None
    assert alice.max_sessions is None
    assert alice.upload_rate is None and alice.download_rate is None
    assert alice.max_file_size is None  # [transfer] max_file_size applies


def test_key_only_user(tmp_path: Path) -> None:
    """A user may have keys and no password; with no SFTP listener, a notice
    says it cannot log in."""
    text = "[server]\nsftp_listen = 2222\n" + STORAGE + "[user:kay]\n"
    config = load_config(write(tmp_path, text + keys_value(ED25519)))
    kay = config.users["kay"]
    assert kay.password is None and not kay.password_is_hashed
    assert kay.authorized_keys == (ED25519,)
    assert config.notices == ()
    text = STORAGE + "[user:kay]\npassword =\n" + keys_value(ED25519)
    (notice,) = load_config(write(tmp_path, text)).notices
    assert "[user:kay]" in notice and "sftp_listen" in notice


def test_own_bucket(tmp_path: Path) -> None:
    """A user's own bucket becomes the storage "user:NAME"; a file whose
    users all have one needs no [storage:NAME]."""
    text = (
        f"[user:alice]\npassword = {PASSWORD}\nhome = /teams/a/\n"
        + OWN_BUCKET
        + "endpoint = http://127.0.0.1:9000\nverify_tls = no\n"
        + f"[user:bob]\npassword = {PASSWORD}\n"
        + OWN_BUCKET.replace("ownbucket", "bobsbucket")
    )
    config = load_config(write(tmp_path, text))
    assert set(config.storages) == {"user:alice", "user:bob"}
    alice = config.users["alice"]
    assert (alice.storage, alice.home) == ("user:alice", "teams/a")
    assert config.storages["user:alice"] == StorageConfig(
        name="user:alice",
        kind="cos",
        bucket="ownbucket-1250000000",
        region="ap-shanghai",
        secret_id="AKIDOWNOWNOWNOWN",
        secret_key=SECRET_KEY,
        token=TOKEN,
        scheme="http",
        address=("127.0.0.1", 9000),
        verify_tls=False,
    )
    assert config.storages["user:bob"].bucket == "bobsbucket-1250000000"
    assert config.storages["user:bob"].verify_tls is True
    text = repr(config) + "\n".join(config.notices)
    assert SECRET_KEY not in text and TOKEN not in text


def test_own_bucket_beside_one_storage(tmp_path: Path) -> None:
    """With one [storage:NAME], a user without storage still gets it: a
    user's own bucket does not count as a second storage."""
    text = BASE + f"[user:bob]\npassword = {PASSWORD}\n" + OWN_BUCKET
    config = load_config(write(tmp_path, text))
    assert config.users["alice"].storage == "main"
    assert config.users["bob"].storage == "user:bob"
    assert set(config.storages) == {"main", "user:bob"}
    assert not any("no user uses" in notice for notice in config.notices)


def test_own_bucket_secrets_not_in_errors(tmp_path: Path) -> None:
    text = BASE + OWN_BUCKET.replace("region = ap-shanghai", "region = AP SHANGHAI")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "user:alice", "region")


# --------------------------------------------------------------------------
# Log outputs
# --------------------------------------------------------------------------


def test_log_outputs_default(tmp_path: Path) -> None:
    """No log_format: text lines; no xferlog: none is written."""
    server = load_config(write(tmp_path, BASE)).server
    assert (server.log_format, server.xferlog) == ("text", None)


def test_log_format_and_xferlog(tmp_path: Path) -> None:
    """Any case of json; xferlog relative to the config file's directory."""
    text = "[server]\nlog_format = JSON\nxferlog = logs/xferlog\n"
    server = load_config(write(tmp_path, text + BASE)).server
    assert server.log_format == "json"
    assert server.xferlog == tmp_path / "logs" / "xferlog"
    text = "[server]\nlog_format = text\nxferlog = /var/log/cosgw/xferlog\n"
    server = load_config(write(tmp_path, text + BASE)).server
    assert server.log_format == "text"
    assert server.xferlog == Path("/var/log/cosgw/xferlog")


@pytest.mark.parametrize("value", ["yaml", "syslog", "1"])
def test_log_format_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[server]\nlog_format = {value}\n" + BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "server", "log_format")
    assert "text, json" in str(caught.value)


def test_example_documents_log_outputs() -> None:
    """etc/cosgw.ini shows the log keys at their defaults."""
    server = load_config(EXAMPLE).server
    assert (server.log_format, server.xferlog, server.log_level) == (
        "text",
        None,
        "info",
    )
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in ("log_format", "xferlog", "etc/fail2ban"):
        assert key in text


# --------------------------------------------------------------------------
# Admin listener
# --------------------------------------------------------------------------


def test_admin_defaults(tmp_path: Path) -> None:
    """No admin keys: this host only, on 9121, no password."""
    server = load_config(write(tmp_path, BASE)).server
    assert server.admin_listen == "tcp:9121:interface=127.0.0.1"
    assert server.admin_users == ()


@pytest.mark.parametrize(
    "value",
    [
        "tcp:9200:interface=127.0.0.1",
        "tcp6:9200:interface=\\:\\:1",
        "tcp:9200:interface=localhost",
        "unix:/run/cosgw/admin.sock",
        "haproxy:tcp:9200:interface=127.0.0.1",
    ],
)
def test_admin_listen_loopback_needs_no_users(tmp_path: Path, value: str) -> None:
    text = f"[server]\nadmin_listen = {value}\n" + BASE
    assert load_config(write(tmp_path, text)).server.admin_listen == value


def test_admin_listen_empty_disables(tmp_path: Path) -> None:
    text = "[server]\nadmin_listen =\n" + BASE
    assert load_config(write(tmp_path, text)).server.admin_listen == ""


@pytest.mark.parametrize(
    "value", ["tcp:9121", "tcp:9121:interface=0.0.0.0", "tcp6:9121:interface=\\:\\:"]
)
def test_admin_listen_reachable_needs_users(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[server]\nadmin_listen = {value}\n" + BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "server", "admin_listen")
    assert "other hosts can reach" in str(caught.value)
    text = f"[server]\nadmin_listen = {value}\nadmin_users = alice\n" + BASE
    server = load_config(write(tmp_path, text)).server
    assert (server.admin_listen, server.admin_users) == (value, ("alice",))


def test_admin_listen_one_endpoint(tmp_path: Path) -> None:
    text = "[server]\nadmin_listen = tcp:1:interface=127.0.0.1 tcp:2\n" + BASE
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "server", "admin_listen")


def test_admin_users_must_be_users(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nadmin_users = alice, mallory\n" + BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "server", "admin_users")
    assert "'mallory'" in str(caught.value)


def test_example_documents_admin_keys() -> None:
    """etc/cosgw.ini shows the admin keys at their defaults."""
    server = load_config(EXAMPLE).server
    assert (server.admin_listen, server.admin_users) == (
        "tcp:9121:interface=127.0.0.1",
        (),
    )
    text = EXAMPLE.read_text(encoding="utf-8")
    for needle in ("admin_listen", "admin_users", "/metrics", "/readyz"):
        assert needle in text
