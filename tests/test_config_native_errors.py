"""
Tests for L{cosgw.config.native}'s errors: every bad input fails with one
line naming the file, section and key, and never quotes a secret.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cosgw.config import (
    ConfigError,
    load_config,
)
from tests.configtesting import (
    BASE,
    DSA,
    ED25519,
    OWN_BUCKET,
    PASSWORD,
    RSA_1024,
    SECRET_KEY,
    STORAGE,
    USER,
    assert_one_line_error,
    keys_value,
    write,
)

COSGW_ERRORS = [
    (
        "listen-port",
        "[server]\nftp_listen = tcp:70000\n" + BASE,
        "server",
        "ftp_listen",
    ),
    ("listen-word", "[server]\nftp_listen = 2121x\n" + BASE, "server", "ftp_listen"),
    (
        "passive",
        "[server]\npassive_ports = 70000-1\n" + BASE,
        "server",
        "passive_ports",
    ),
    (
        "passive-low",
        "[server]\npassive_ports = 21-30\n" + BASE,
        "server",
        "passive_ports",
    ),
    ("size-word", "[transfer]\npart_size = 8X\n" + BASE, "transfer", "part_size"),
    ("size-small", "[transfer]\npart_size = 512K\n" + BASE, "transfer", "part_size"),
    ("int", "[transfer]\nthreads = many\n" + BASE, "transfer", "threads"),
    ("unknown-key", "[server]\nlisten_port = 21\n" + BASE, "server", "listen_port"),
    ("unknown-section", "[servr]\nx = 1\n" + BASE, "servr", None),
    ("log-level", "[server]\nlog_level = loud\n" + BASE, "server", "log_level"),
    (
        "masquerade",
        "[server]\nmasquerade_address = a b\n" + BASE,
        "server",
        "masquerade_address",
    ),
    (
        "missing-bucket",
        STORAGE.replace("bucket = examplebucket-1250000000\n", "") + USER,
        "storage:main",
        "bucket",
    ),
    (
        "bad-bucket",
        STORAGE.replace("examplebucket-1250000000", "ExampleBucket") + USER,
        "storage:main",
        "bucket",
    ),
    (
        "no-region",
        STORAGE.replace("region = ap-guangzhou\n", "") + USER,
        "storage:main",
        "region",
    ),
    (
        "missing-secret",
        STORAGE.replace(f"secret_key = {SECRET_KEY}\n", "") + USER,
        "storage:main",
        "secret_key",
    ),
    (
        "endpoint-url",
        STORAGE + "endpoint = ftp://127.0.0.1:9000\n" + USER,
        "storage:main",
        "endpoint",
    ),
    (
        "endpoint-port",
        STORAGE + "endpoint = http://127.0.0.1:99999\n" + USER,
        "storage:main",
        "endpoint",
    ),
    (
        "endpoint-path",
        STORAGE + "endpoint = http://h:9000/x\n" + USER,
        "storage:main",
        "endpoint",
    ),
    (
        "endpoint-host",
        STORAGE + "endpoint = cos..example.com\n" + USER,
        "storage:main",
        "endpoint",
    ),
    (
        "scheme-conflict",
        STORAGE + "endpoint = http://127.0.0.1:9000\nscheme = https\n" + USER,
        "storage:main",
        "scheme",
    ),
    ("bool", STORAGE + "verify_tls = maybe\n" + USER, "storage:main", "verify_tls"),
    ("other-kind-key", STORAGE + "path = /srv\n" + USER, "storage:main", "path"),
    ("type", "[storage:main]\ntype = s3\n" + USER, "storage:main", "type"),
    ("unknown-storage", BASE + "storage = nosuch\n", "user:alice", "storage"),
    ("duplicate-user", BASE + USER, "user:alice", None),
    ("duplicate-key", BASE + "home = a\nhome = b\n", "user:alice", "home"),
    ("home-dotdot", BASE + "home = a/../b\n", "user:alice", "home"),
    ("home-empty-segment", BASE + "home = a//b\n", "user:alice", "home"),
    (
        "permission-word",
        BASE + "permissions = list, fly\n",
        "user:alice",
        "permissions",
    ),
    ("user-name", STORAGE + "[user:al ice]\npassword = x\n", "user:al ice", None),
    ("user-key", BASE + "pasword = x\n", "user:alice", "pasword"),
    (
        "storage-required",
        BASE + "[storage:other]\ntype = local\npath = d\n",
        "user:alice",
        "storage",
    ),
    (
        "truncated-hash",
        STORAGE + "[user:alice]\npassword = $scrypt$n=1\n",
        "user:alice",
        "password",
    ),
    # [server]: SFTP, limits, timeouts, networks, login defender.
    (
        "sftp-port",
        "[server]\nsftp_listen = tcp:99999\n" + BASE,
        "server",
        "sftp_listen",
    ),
    ("sftp-word", "[server]\nsftp_listen = ssh\n" + BASE, "server", "sftp_listen"),
    (
        "host-key-missing",
        "[server]\nssh_host_keys = no_such_key\n" + BASE,
        "server",
        "ssh_host_keys",
    ),
    (
        "host-key-pub",
        "[server]\nssh_host_keys = ssh_host_ed25519_key.pub\n" + BASE,
        "server",
        "ssh_host_keys",
    ),
    (
        "per-ip",
        "[server]\nmax_connections_per_ip = -1\n" + BASE,
        "server",
        "max_connections_per_ip",
    ),
    ("ipv6-prefix", "[server]\nipv6_prefix = 16\n" + BASE, "server", "ipv6_prefix"),
    ("max-handles", "[server]\nmax_handles = 0\n" + BASE, "server", "max_handles"),
    (
        "sparse-gap",
        "[transfer]\nmax_sparse_gap = lots\n" + BASE,
        "transfer",
        "max_sparse_gap",
    ),
    (
        "spool-size",
        "[transfer]\nmax_spool_size = -1\n" + BASE,
        "transfer",
        "max_spool_size",
    ),
    (
        "buffer-budget",
        "[transfer]\nupload_buffer_budget = 512K\n" + BASE,
        "transfer",
        "upload_buffer_budget",
    ),
    (
        "download-budget",
        "[transfer]\ndownload_buffer_budget = -1\n" + BASE,
        "transfer",
        "download_buffer_budget",
    ),
    (
        "login-timeout",
        "[server]\nlogin_timeout = 0\n" + BASE,
        "server",
        "login_timeout",
    ),
    (
        "login-timeout-word",
        "[server]\nlogin_timeout = 1m\n" + BASE,
        "server",
        "login_timeout",
    ),
    ("data-timeout", "[server]\ndata_timeout = 0\n" + BASE, "server", "data_timeout"),
    (
        "allowed-prefix",
        "[server]\nallowed_networks = 10.0.0.0/33\n" + BASE,
        "server",
        "allowed_networks",
    ),
    (
        "denied-name",
        "[server]\ndenied_networks = 10.0.0.1 example.com\n" + BASE,
        "server",
        "denied_networks",
    ),
    (
        "max-failures",
        "[server]\nlogin_max_failures = -1\n" + BASE,
        "server",
        "login_max_failures",
    ),
    (
        "failure-window",
        "[server]\nlogin_failure_window = 0\n" + BASE,
        "server",
        "login_failure_window",
    ),
    (
        "ban-time",
        "[server]\nlogin_ban_time = forever\n" + BASE,
        "server",
        "login_ban_time",
    ),
    (
        "failure-delay",
        "[server]\nlogin_failure_delay = soon\n" + BASE,
        "server",
        "login_failure_delay",
    ),
    (
        "failure-delay-negative",
        "[server]\nlogin_failure_delay = -0.5\n" + BASE,
        "server",
        "login_failure_delay",
    ),
    (
        "failure-delay-nan",
        "[server]\nlogin_failure_delay = nan\n" + BASE,
        "server",
        "login_failure_delay",
    ),
    # [user:NAME]: keys, limits, networks, own bucket.
    (
        "key-options",
        BASE + keys_value(f'from="10.0.0.0/8" {ED25519}'),
        "user:alice",
        "authorized_keys",
    ),
    ("key-dsa", BASE + keys_value(DSA), "user:alice", "authorized_keys"),
    ("key-rsa-1024", BASE + keys_value(RSA_1024), "user:alice", "authorized_keys"),
    (
        "key-base64",
        BASE + keys_value("ssh-ed25519 AAAAC3Nz!!"),
        "user:alice",
        "authorized_keys",
    ),
    (
        "key-type-mismatch",
        BASE + keys_value("ssh-rsa " + ED25519.split()[1]),
        "user:alice",
        "authorized_keys",
    ),
    (
        "key-security-key",
        BASE + keys_value("sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5"),
        "user:alice",
        "authorized_keys",
    ),
    ("key-no-data", BASE + keys_value("ssh-ed25519"), "user:alice", "authorized_keys"),
    ("key-garbage", BASE + keys_value("hello world"), "user:alice", "authorized_keys"),
    (
        "keys-file-missing",
        BASE + "authorized_keys_file = no_such_file\n",
        "user:alice",
        "authorized_keys_file",
    ),
    (
        "no-password-no-keys",
        STORAGE + "[user:alice]\nhome = a\n",
        "user:alice",
        "password",
    ),
    ("quota-bytes", BASE + "quota_bytes = 10X\n", "user:alice", "quota_bytes"),
    ("quota-files", BASE + "quota_files = -5\n", "user:alice", "quota_files"),
    ("user-file-size", BASE + "max_file_size = 0\n", "user:alice", "max_file_size"),
    (
        "user-file-size-none",
        BASE + "max_file_size = none\n",
        "user:alice",
        "max_file_size",
    ),
    ("max-sessions", BASE + "max_sessions = many\n", "user:alice", "max_sessions"),
    ("upload-rate-small", BASE + "upload_rate = 100\n", "user:alice", "upload_rate"),
    ("download-rate", BASE + "download_rate = fast\n", "user:alice", "download_rate"),
    (
        "user-allowed",
        BASE + "allowed_networks = 300.1.1.1\n",
        "user:alice",
        "allowed_networks",
    ),
    (
        "user-denied",
        BASE + "denied_networks = 2001:db8::g\n",
        "user:alice",
        "denied_networks",
    ),
    (
        "storage-and-own-bucket",
        BASE + "storage = main\n" + OWN_BUCKET,
        "user:alice",
        "storage",
    ),
    (
        "own-bucket-no-secret",
        BASE + OWN_BUCKET.replace(f"secret_key = {SECRET_KEY}\n", ""),
        "user:alice",
        "secret_key",
    ),
    (
        "own-bucket-name",
        BASE + OWN_BUCKET.replace("ownbucket-1250000000", "Own_Bucket"),
        "user:alice",
        "bucket",
    ),
    (
        "own-bucket-verify-tls",
        BASE + OWN_BUCKET + "verify_tls = perhaps\n",
        "user:alice",
        "verify_tls",
    ),
    ("own-bucket-type", BASE + OWN_BUCKET + "type = cos\n", "user:alice", "type"),
    (
        "own-bucket-no-id",
        BASE + OWN_BUCKET.replace("secret_id = AKIDOWNOWNOWNOWN\n", ""),
        "user:alice",
        "secret_id",
    ),
    (
        "own-bucket-endpoint",
        BASE + OWN_BUCKET + "endpoint = ftp://127.0.0.1:9000\n",
        "user:alice",
        "endpoint",
    ),
    ("own-bucket-scheme", BASE + OWN_BUCKET + "scheme = ftp\n", "user:alice", "scheme"),
    (
        "no-storage-at-all",
        f"[user:alice]\npassword = {PASSWORD}\n",
        "user:alice",
        "storage",
    ),
]


@pytest.mark.parametrize(
    "text, section, key",
    [case[1:] for case in COSGW_ERRORS],
    ids=[case[0] for case in COSGW_ERRORS],
)
def test_cosgw_errors(tmp_path: Path, text: str, section: str, key: str | None) -> None:
    """Each bad input fails with one line naming file, section and key."""
    path = write(tmp_path, text, "bad.ini")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, section, key)


def test_passive_ports_message(tmp_path: Path) -> None:
    """The message reads as the documentation promises."""
    path = write(tmp_path, "[server]\npassive_ports = 70000-1\n" + BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: [server] passive_ports: expected 'LOW-HIGH' with"
        " 1024 <= LOW <= HIGH <= 65535, got '70000-1'"
    )


def test_unknown_key_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\npasive_ports = 61000-61999\n" + BASE)
    with pytest.raises(ConfigError, match="did you mean 'passive_ports'"):
        load_config(path)


def test_no_user(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no \[user:NAME\] section"):
        load_config(write(tmp_path, STORAGE))
