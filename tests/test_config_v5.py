"""
Tests for L{cosgw.config.v5}: COS FTP Server V5's vsftpd.conf, read
unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cosgw.config import (
    ALL_PERMISSIONS,
    ConfigError,
    ServerConfig,
    StorageConfig,
    load_config,
)
from tests.configtesting import (
    GIB,
    MIB,
    PASSWORD,
    SECRET_KEY,
    V5_SAMPLE,
    assert_one_line_error,
    v5,
    v5_account,
    write,
)


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
