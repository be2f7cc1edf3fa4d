"""
Tests for L{cosgw.config}: cosgw's INI, COS FTP Server V5's vsftpd.conf, the
embedded default, and the one-line errors that name file, section and key.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cosgw.config import (
    ALL_PERMISSIONS,
    ConfigError,
    ServerConfig,
    StorageConfig,
    UserConfig,
    authority_permissions,
    embedded_config,
    load_config,
    normalize_home,
    parse_bool,
    parse_permissions,
    parse_size,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "cosgw.ini"
V5_SAMPLE = Path(__file__).resolve().parent / "data" / "v5-vsftpd.conf"

MIB = 1024 * 1024
GIB = 1024 * MIB

# Secrets used by the inline configs below; none may appear in an error, a
# notice or a repr.
SECRET_KEY = "SUPERSECRETKEYVALUE"
TOKEN = "SUPERSECRETTOKENVALUE"
PASSWORD = "SUPERSECRETPASSWORD"

STORAGE = f"""
[storage:main]
type = cos
bucket = examplebucket-1250000000
region = ap-guangzhou
secret_id = AKIDTESTTESTTESTTEST
secret_key = {SECRET_KEY}
token = {TOKEN}
"""

USER = f"""
[user:alice]
password = {PASSWORD}
"""

BASE = STORAGE + USER

# A user's own bucket, for a [user:NAME] section.
OWN_BUCKET = f"""
bucket = ownbucket-1250000000
region = ap-shanghai
secret_id = AKIDOWNOWNOWNOWN
secret_key = {SECRET_KEY}
token = {TOKEN}
"""

# Public keys (their private halves were thrown away).
ED25519 = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMO74oQ5BpfrlzlQHxDlZn7HuwK+m2SsJ+4jEKxGSo4p"
)
ECDSA = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPUKxodtprkp2H1RiZjDSFWNhvkQ0x7N1lqiRXaqTIUJ8KOYO41A//aBTK0XWi6WOE/HfsVE2/rFvHLblaDwdOg="
RSA_2048 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQD2WQrapWDqN+5LbHXGQxpWeRF+tnj6k1zBswhhfxEjT4GFIcqqxk6t+Azf4FPhTWRIB3gqPhg8XkwfQpEcoQ/1JJJUkYonEIHB0+CJDit/02dsfwQ0PaoADccFoxwQiGuNb7O3qEnfLXwK1OGHRlYUpq2bO877rx0+4vypdfTsK0pSI/xyI+/HtYhDCO53ApwCoeeWFfHGHt2sqG9Y7sPI77+waO2aFVGGK/yYyJ6yk+P6B+kRSM2c+baP83t5kIb/xz5t3zAg3MV1MK/OBbtybeoxYANZaFF4kXfI8AoGibnE8JuEyMdV4zgmtJiCa1oNqMEvbtbuyX86NRB6v1Kr"
RSA_1024 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDStRXI5LX7Wl6zPxiMUIQJWkPomfPWsAh1bVOS2crJWNZ7t6W0gDaTk5/ikram7dxd1wwDTBpcX6XQuZeUcviWUMVNvo1NW4eqOK8qgFXzjoaHfrkyvjE6OhjbHwrXwTGZCUqaPECQ4vo+uvPoMVHiJKvhZ1QgE7Vw8RjpVaXnkw=="
# Refused by its type before its data is read.
DSA = "ssh-dss AAAAB3NzaC1kc3MAAACBANQHG8ahZPpNVeAo8z3mVMe5y7IM1bs8Q9bXy8EzoG4l"


def keys_value(*lines: str) -> str:
    """An authorized_keys value over indented continuation lines."""
    return "authorized_keys =\n" + "".join(f"    {line}\n" for line in lines)


def write(tmp_path: Path, text: str, name: str = "cosgw.ini") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def v5_account(n: int, **overrides: str) -> str:
    """One [COS_ACCOUNT_<n>] section; an override of "" drops the key."""
    keys = {
        "cos_secretid": f"AKIDTESTTESTTEST{n}",
        "cos_secretkey": f"{SECRET_KEY}{n}",
        "cos_bucket": "examplebucket-1250000000",
        "cos_region": "ap-guangzhou",
        "cos_protocol": "https",
        "home_dir": f"/home/user{n}",
        "ftp_login_user_name": f"user{n}",
        "ftp_login_user_password": f"{PASSWORD}{n}",
        "authority": "RW",
        "delete_enable": "true",
    }
    keys.update(overrides)
    lines = [f"[COS_ACCOUNT_{n}]"]
    lines += [f"{key} = {value}" for key, value in keys.items() if value != ""]
    return "\n".join(lines) + "\n"


def v5(*sections: str, network: str = "listen_port = 2121\n") -> str:
    return "\n".join(sections) + "\n[NETWORK]\n" + network


# --------------------------------------------------------------------------
# The example and the V5 sample
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
    assert server.max_connections_per_ip is None
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


def test_v5_sample() -> None:
    """V5's vsftpd.conf maps onto storages, users, ports and sizes."""
    config = load_config(V5_SAMPLE)
    assert set(config.storages) == {"cos_account_0", "cos_account_1"}
    first = config.storages["cos_account_0"]
    assert first == StorageConfig(
        name="cos_account_0",
        kind="cos",
        bucket="examplebucket-1250000000",
        region="ap-guangzhou",
        secret_id="AKIDFAKEFAKEFAKEFAKEFAKEFAKEFAKE0000",
        secret_key="fakeSecretKeyZero0000000000000000",
        scheme="https",
    )
    second = config.storages["cos_account_1"]
    assert second.endpoint == "cos.ap-shanghai.myqcloud.com"
    assert second.scheme == "http"
    assert second.address is None

    user0, user1 = config.users["user0"], config.users["user1"]
    assert (user0.storage, user0.home) == ("cos_account_0", "")
    assert (user1.storage, user1.home) == ("cos_account_1", "")
    assert user0.permissions == ALL_PERMISSIONS  # RW, delete_enable true
    assert user1.permissions == {"list", "download"}  # R, delete_enable false
    assert user0.password == "pass0" and not user0.password_is_hashed
    # ";" after whitespace is a comment for Python 2's parser too.
    assert user1.password == "pass1"

    server = config.server
    assert server.ftp_listen == ("tcp:2121",)
    # V5's "60000,65535" is range(60000, 65535): 65535 itself was never used.
    assert server.passive_ports == (60000, 65534)
    assert server.masquerade_address == "203.0.113.10"
    assert server.max_connections == 100
    assert server.log_level == "debug"
    assert server.log_dir == V5_SAMPLE.parent / "log"
    assert server.state_dir == V5_SAMPLE.parent / "cosgw-state"

    transfer = config.transfer
    assert transfer.max_file_size == 20 * GIB
    assert transfer.part_size == 8 * MIB  # min_part_size = default
    assert transfer.threads == 8

    notices = "\n".join(config.notices)
    assert "user 'user0' has a plain-text password" in notices
    assert "user 'user1' has a plain-text password" in notices
    assert "cosgw-passwd" in notices
    assert "[OPTIONAL] max_list_file" in notices
    assert "[NETWORK] passive_port" in notices and "32768-60999" in notices
    assert "pass0" not in notices and "pass1" not in notices
    assert "fakeSecretKey" not in notices


# --------------------------------------------------------------------------
# One-line errors naming file, section and key
# --------------------------------------------------------------------------

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


V5_ERRORS = [
    (
        "listen-port",
        v5(v5_account(0), network="listen_port = 99999\n"),
        "NETWORK",
        "listen_port",
    ),
    (
        "passive-port",
        v5(v5_account(0), network="passive_port = 60000-65535\n"),
        "NETWORK",
        "passive_port",
    ),
    ("authority", v5(v5_account(0, authority="X")), "COS_ACCOUNT_0", "authority"),
    (
        "duplicate-user",
        v5(v5_account(0), v5_account(1, ftp_login_user_name="user0")),
        "COS_ACCOUNT_1",
        "ftp_login_user_name",
    ),
    (
        "missing-key",
        v5(v5_account(0, cos_secretkey="")),
        "COS_ACCOUNT_0",
        "cos_secretkey",
    ),
    (
        "bucket",
        v5(v5_account(0, cos_bucket="{bucket name}-{appid}")),
        "COS_ACCOUNT_0",
        "cos_bucket",
    ),
    (
        "delete-enable",
        v5(v5_account(0, delete_enable="sometimes")),
        "COS_ACCOUNT_0",
        "delete_enable",
    ),
    (
        "file-size",
        v5(v5_account(0)) + "[FILE_OPTION]\nsingle_file_max_size = big\n",
        "FILE_OPTION",
        "single_file_max_size",
    ),
    (
        "endpoint",
        v5(v5_account(0, cos_endpoint="https://")),
        "COS_ACCOUNT_0",
        "cos_endpoint",
    ),
]


@pytest.mark.parametrize(
    "text, section, key",
    [case[1:] for case in V5_ERRORS],
    ids=[case[0] for case in V5_ERRORS],
)
def test_v5_errors(tmp_path: Path, text: str, section: str, key: str | None) -> None:
    path = write(tmp_path, text, "vsftpd.conf")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, section, key)


def assert_one_line_error(
    error: ConfigError, path: Path, section: str, key: str | None
) -> None:
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{path}: [{section}]")
    if key is not None:
        assert f"[{section}] {key}:" in message
    assert "expected" in message
    for secret in (SECRET_KEY, TOKEN, PASSWORD):
        assert secret not in message
    assert (error.path, error.section, error.key) == (str(path), section, key)


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


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.ini"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: no such file"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_syntax_error_does_not_quote_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + f"{PASSWORD} without an equals sign\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: line ")
    assert PASSWORD not in message


def test_no_user(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no \[user:NAME\] section"):
        load_config(write(tmp_path, STORAGE))


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cosgw.ini"
    path.write_bytes(BASE.encode() + "# \u4e2d\u6587\n".encode("gbk"))
    with pytest.raises(ConfigError, match="expected UTF-8"):
        load_config(path)


# --------------------------------------------------------------------------
# cosgw's format: defaults and values
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


def test_secrets_never_in_repr(tmp_path: Path) -> None:
    for path in (write(tmp_path, BASE), write(tmp_path, v5(v5_account(0)), "v.conf")):
        config = load_config(path)
        text = repr(config) + "\n".join(config.notices)
        for secret in (SECRET_KEY, TOKEN, PASSWORD):
            assert secret not in text
    sample = load_config(V5_SAMPLE)
    assert "fakeSecretKey" not in repr(sample)
    assert "pass0" not in repr(sample)


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.idle_timeout = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.users["mallory"] = config.users["alice"]  # type: ignore[index]


# --------------------------------------------------------------------------
# cosgw's format: SFTP, networks, the login defender and per-user policy
# --------------------------------------------------------------------------


def test_new_defaults(tmp_path: Path) -> None:
    """Absent, every new key keeps today's behaviour."""
    config = load_config(write(tmp_path, BASE))
    assert config.server == ServerConfig(state_dir=tmp_path / "cosgw-state")
    assert config.server.sftp_listen == ()
    assert config.server.ssh_host_keys == ()
    assert config.server.max_connections_per_ip is None
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


def test_authorized_keys(tmp_path: Path) -> None:
    """Keys are normalised to "type base64" (the comment dropped), each
    once, the value's first; the file's blank lines and comments skipped."""
    keys_file = tmp_path / "alice.keys"
    keys_file.write_text(
        f"# alice's keys\n\n{RSA_2048} alice@desktop\r\n  {ED25519} again\n"
    )
    text = (
        BASE
        + keys_value(f"{ED25519} alice@laptop", f"{ECDSA}   with  spaces")
        + "authorized_keys_file = alice.keys\n"
    )
    alice = load_config(write(tmp_path, text)).users["alice"]
    assert alice.authorized_keys == (ED25519, ECDSA, RSA_2048)
    assert alice.password == PASSWORD  # keys and a password go together


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


def test_authorized_keys_line_numbers(tmp_path: Path) -> None:
    """Errors name the bad key's line: of the value, or of the file."""
    path = write(tmp_path, BASE + keys_value(ED25519, ECDSA, RSA_1024))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: [user:alice] authorized_keys: expected an RSA key of at least"
        " 2048 bits on line 3 of the value, got 'ssh-rsa (1024 bits)'"
    )
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# ok\n{ED25519}\n\n{DSA} old\n")
    path = write(tmp_path, BASE + f"authorized_keys_file = {keys_file}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "user:alice", "authorized_keys_file")
    assert f"on line 4 of {keys_file}" in str(caught.value)
    assert "'ssh-dss'" in str(caught.value)


def test_authorized_keys_options_refused(tmp_path: Path) -> None:
    for options in ("no-pty", 'command="ls",no-port-forwarding', "restrict"):
        path = write(tmp_path, BASE + keys_value(f"{options} {ED25519} x"))
        with pytest.raises(ConfigError, match="without options") as caught:
            load_config(path)
        assert "on line 1 of the value" in str(caught.value)


def test_authorized_keys_file_unreadable(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    path = write(tmp_path, BASE + "authorized_keys_file = keys\n")
    with pytest.raises(ConfigError, match="a readable authorized_keys file"):
        load_config(path)
    (tmp_path / "latin1").write_bytes(b"# caf\xe9\n")
    path = write(tmp_path, BASE + "authorized_keys_file = latin1\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


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


def test_load_with_keys_installs_no_reactor(tmp_path: Path) -> None:
    """Checking keys imports twisted.conch.ssh.keys, never a reactor."""
    path = write(tmp_path, BASE + keys_value(ED25519))
    code = (
        "import sys; from cosgw.config import load_config; "
        f"load_config({str(path)!r}); "
        "sys.exit('twisted.internet.reactor' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --------------------------------------------------------------------------
# V5's format: the details
# --------------------------------------------------------------------------


def test_v5_defaults(tmp_path: Path) -> None:
    """What V5 defaulted, cosgw defaults the same way where it matters."""
    config = load_config(write(tmp_path, v5(v5_account(0)), "vsftpd.conf"))
    assert config.server.ftp_listen == ("tcp:2121",)
    assert config.server.max_connections == 512  # V5's default
    assert config.server.masquerade_address is None
    assert config.storages["cos_account_0"].scheme == "https"
    assert config.transfer.max_file_size is None
    # V5 had no SFTP and none of the new policies: cosgw's defaults, and a
    # notice that says how to turn SFTP on.
    assert config.server.sftp_listen == ()
    assert config.server == ServerConfig(
        state_dir=tmp_path / "cosgw-state",
        max_connections=512,
        log_dir=None,
    )
    user = config.users["user0"]
    assert user.authorized_keys == () and user.quota_bytes is None
    assert any(
        "SFTP is off" in notice and "sftp_listen" in notice for notice in config.notices
    )


def test_v5_endpoint_url(tmp_path: Path) -> None:
    account = v5_account(0, cos_endpoint="http://127.0.0.1:9000")  # https in protocol
    config = load_config(write(tmp_path, v5(account), "vsftpd.conf"))
    storage = config.storages["cos_account_0"]
    assert (storage.scheme, storage.address, storage.endpoint) == (
        "http",
        ("127.0.0.1", 9000),
        None,
    )
    assert any("URL's scheme" in notice for notice in config.notices)


def test_v5_optional_values(tmp_path: Path) -> None:
    optional = """
[OPTIONAL]
min_part_size = 524288
upload_thread_num = default
max_connection_num = 0
log_level = verbose
log_rotate_enabled = yes
config_check_enable = false
"""
    text = v5(v5_account(0)) + optional
    config = load_config(write(tmp_path, text, "vsftpd.conf"))
    assert config.transfer.part_size == MIB  # COS's minimum part
    assert config.transfer.threads == 16  # cosgw's default for "default"
    assert config.server.max_connections is None  # 0: no limit, per V5's README
    assert config.server.log_level == "info"
    notices = "\n".join(config.notices)
    for key in (
        "min_part_size",
        "log_level",
        "log_rotate_enabled",
        "config_check_enable",
    ):
        assert f"[OPTIONAL] {key}" in notices
    assert "upload_thread_num" not in notices


def test_v5_unusable_optional_values(tmp_path: Path) -> None:
    optional = "[OPTIONAL]\nmin_part_size = lots\nmax_connection_num = -3\n"
    config = load_config(write(tmp_path, v5(v5_account(0)) + optional, "vsftpd.conf"))
    assert config.transfer.part_size == 8 * MIB
    assert config.server.max_connections == 512
    notices = "\n".join(config.notices)
    assert "min_part_size" in notices and "max_connection_num" in notices


def test_v5_min_part_size_in_bytes(tmp_path: Path) -> None:
    optional = "[OPTIONAL]\nmin_part_size = 16777216\n"
    config = load_config(write(tmp_path, v5(v5_account(0)) + optional, "vsftpd.conf"))
    assert config.transfer.part_size == 16 * MIB


@pytest.mark.parametrize(
    "value, expected",
    [("60000", (60000, 65534)), ("61000, 61010", (61000, 61009))],
)
def test_v5_passive_port(tmp_path: Path, value: str, expected: tuple[int, int]) -> None:
    text = v5(v5_account(0), network=f"passive_port = {value}\n")
    config = load_config(write(tmp_path, text, "vsftpd.conf"))
    assert config.server.passive_ports == expected


def test_v5_masquerade_placeholder_is_ignored(tmp_path: Path) -> None:
    """V5 used masquerade_address only when it was IPv4; the example's
    XXX.XXX.XXX.XXX was silently ignored, and must not break cosgw."""
    network = "masquerade_address = XXX.XXX.XXX.XXX\nlisten_port = 21\n"
    config = load_config(write(tmp_path, v5(v5_account(0), network=network), "v.conf"))
    assert config.server.masquerade_address is None
    assert config.server.ftp_listen == ("tcp:21",)
    assert any("masquerade_address" in notice for notice in config.notices)


def test_v5_inline_comments(tmp_path: Path) -> None:
    """V5's documentation puts "# comments" after values: cosgw drops them,
    except in the password, which V5 read literally."""
    account = v5_account(
        0,
        ftp_login_user_name="user0   # the account",
        ftp_login_user_password="pa#ss   # not a comment for V5",
        delete_enable="false\t\t# no deleting",
        authority="RW ; Python 2 dropped this",
    )
    config = load_config(write(tmp_path, v5(account), "vsftpd.conf"))
    user = config.users["user0"]
    assert user.password == "pa#ss   # not a comment for V5"
    assert user.permissions == ALL_PERMISSIONS - {"delete", "rmdir"}
    notices = "\n".join(config.notices)
    assert "ftp_login_user_password" in notices
    assert "pa#ss" not in notices


def test_v5_sections_and_keys_any_case(tmp_path: Path) -> None:
    text = (
        v5_account(0)
        .replace("[COS_ACCOUNT_0]", "[cos_account_0]")
        .replace("cos_secretid", "COS_SecretId")
        + "[network]\nlisten_port: 2200\n"
    )
    config = load_config(write(tmp_path, text, "vsftpd.conf"))
    assert config.server.ftp_listen == ("tcp:2200",)
    assert config.storages["cos_account_0"].secret_id == "AKIDTESTTESTTEST0"


def test_v5_shared_home_dir(tmp_path: Path) -> None:
    """V5 found an account's bucket by home_dir; two accounts sharing one
    got the last bucket.  cosgw keeps each user on its own section."""
    text = v5(
        v5_account(0, home_dir="/srv/ftp"),
        v5_account(1, home_dir="/srv/ftp/", cos_bucket="other-1250000000"),
    )
    config = load_config(write(tmp_path, text, "vsftpd.conf"))
    assert config.users["user0"].storage == "cos_account_0"
    assert config.storages["cos_account_1"].bucket == "other-1250000000"
    assert any("same home_dir" in notice for notice in config.notices)


def test_v5_unknown_keys_are_notices(tmp_path: Path) -> None:
    text = v5(v5_account(0, cos_appid="1250000000", mystery="1")) + "[EXTRA]\na = b\n"
    config = load_config(write(tmp_path, text, "vsftpd.conf"))
    notices = "\n".join(config.notices)
    assert "[COS_ACCOUNT_0] mystery" in notices
    assert "[COS_ACCOUNT_0] cos_appid" in notices
    assert "[EXTRA]" in notices


def test_v5_gbk_file(tmp_path: Path) -> None:
    """V5 on Python 2 read bytes: a file saved as GBK worked there."""
    text = "# \u6ce8\u91ca\n" + v5(v5_account(0))
    path = tmp_path / "vsftpd.conf"
    path.write_bytes(text.encode("gbk"))
    assert set(load_config(path).users) == {"user0"}


def test_v5_legacy_format(tmp_path: Path) -> None:
    """V5's first format: one [COS_ACCOUNT] and [FTP_ACCOUNT] login_users."""
    text = f"""
[COS_ACCOUNT]
cos_appid = 1250000000
cos_secretid = AKIDTESTTESTTEST
cos_secretkey = {SECRET_KEY}
cos_bucket = examplebucket-1250000000
cos_region = ap-guangzhou
cos_user_home_dir = /home/cos_ftp/data
[FTP_ACCOUNT]
login_users = user1:{PASSWORD}:RW;user2:pass2:R;
[NETWORK]
listen_port = 2121
"""
    config = load_config(write(tmp_path, text, "vsftpd.conf"))
    assert set(config.storages) == {"cos_account"}
    assert config.users["user1"].permissions == ALL_PERMISSIONS
    assert config.users["user2"].permissions == {"list", "download"}
    assert config.users["user1"].password == PASSWORD
    assert PASSWORD not in "\n".join(config.notices)


# --------------------------------------------------------------------------
# The embedded default
# --------------------------------------------------------------------------


def test_embedded_config(tmp_path: Path) -> None:
    config = embedded_config(tmp_path)
    assert config.embedded
    assert config.source is None
    assert config.users == {}
    assert config.server.state_dir == tmp_path / "cosgw-state"
    assert config.server.ftps_listen == ("tcp:2990",)
    # The embedded default serves SFTP on 2222, as it serves FTPS on 2990.
    assert config.server.sftp_listen == ("tcp:2222",)
    assert config.server.ssh_host_keys == ()
    (storage,) = config.storages.values()
    assert (storage.name, storage.kind, storage.path) == (
        "default",
        "local",
        tmp_path / "cosgw-data",
    )


def test_embedded_config_defaults_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = embedded_config()
    assert config.storages["default"].path == tmp_path / "cosgw-data"
    assert config.server.state_dir == tmp_path / "cosgw-state"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, size",
    [
        ("8388608", 8 * MIB),
        ("8M", 8 * MIB),
        ("8m", 8 * MIB),
        ("8 MiB", 8 * MIB),
        ("8mb", 8 * MIB),
        ("256k", 256 * 1024),
        ("5G", 5 * GIB),
        ("1T", 1024 * GIB),
        ("0", 0),
        ("12b", 12),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1M", "1.5G", "8X", "8 M B", "8P"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    "text, value",
    [
        ("yes", True),
        ("TRUE", True),
        ("On", True),
        ("1", True),
        ("no", False),
        ("false", False),
        ("OFF", False),
        (" 0 ", False),
    ],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "y", "2", "enabled"])
def test_parse_bool_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bool(text)


@pytest.mark.parametrize(
    "authority, delete_enable, permissions",
    [
        ("R", True, {"list", "download"}),
        ("W", True, {"upload", "overwrite", "rename", "mkdir", "delete", "rmdir"}),
        ("RW", True, ALL_PERMISSIONS),
        ("wr", True, ALL_PERMISSIONS),
        ("RW", False, ALL_PERMISSIONS - {"delete", "rmdir"}),
        ("R", False, {"list", "download"}),
    ],
)
def test_authority_permissions(
    authority: str, delete_enable: bool, permissions: set[str]
) -> None:
    assert authority_permissions(authority, delete_enable) == permissions
    # One mapping for both formats.
    assert parse_permissions(authority, delete_enable) == permissions


@pytest.mark.parametrize("authority", ["", "X", "RWX", "read"])
def test_authority_refuses(authority: str) -> None:
    with pytest.raises(ValueError):
        authority_permissions(authority)


def test_parse_permissions() -> None:
    assert parse_permissions("all") == ALL_PERMISSIONS
    assert parse_permissions("ALL", delete_enable=False) == ALL_PERMISSIONS - {
        "delete",
        "rmdir",
    }
    assert parse_permissions("list,download  upload") == {"list", "download", "upload"}
    with pytest.raises(ValueError):
        parse_permissions("")


@pytest.mark.parametrize(
    "text, home",
    [
        ("", ""),
        ("/", ""),
        ("a", "a"),
        ("/a/b/", "a/b"),
        (" a/b ", "a/b"),
        ("a.b/c", "a.b/c"),
    ],
)
def test_normalize_home(text: str, home: str) -> None:
    assert normalize_home(text) == home


@pytest.mark.parametrize(
    "text", ["..", "a/..", "./a", "a//b", "//a", "a\x00b", "a/./b"]
)
def test_normalize_home_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        normalize_home(text)


def test_import_is_cheap() -> None:
    """The twistd plugin imports this module: it must not pull in Twisted."""
    code = (
        "import sys, cosgw.config; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('twisted', 'qcloud_cos')]; "
        "sys.exit(bool(bad))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
