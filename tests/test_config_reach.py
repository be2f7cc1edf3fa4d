"""
Tests for L{cosgw.config.reach} and the listener options of
L{cosgw.config.endpoints}: PROXY protocol, shared state, WebDAV, FTP name
encodings and the metadata prefix, read into typed values or refused with
one line naming the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cosgw.config import ConfigError, load_config, parse_encoding, split_listener
from cosgw.config.endpoints import endpoint_problem
from tests.configtesting import BASE, assert_one_line_error, write


def test_defaults(tmp_path: Path) -> None:
    server = load_config(write(tmp_path, BASE)).server
    assert server.proxy_protocol is False
    assert server.proxy_trusted_networks == ("127.0.0.0/8", "::1/128")
    assert server.shared_state is None
    assert server.shared_state_failure == "open"
    assert server.webdav_listen == ()
    assert server.webdav_allow_plain_auth is False
    assert server.ftp_encoding == "utf-8"
    assert server.metadata_prefix == ".cosgw/"
    assert load_config(write(tmp_path, BASE)).users["alice"].ftp_encoding is None


def test_values(tmp_path: Path) -> None:
    text = (
        "[server]\nproxy_protocol = yes\n"
        "proxy_trusted_networks = 10.0.0.7/24 ::1\n"
        "shared_state = redis://127.0.0.1:6390/2\nshared_state_failure = Closed\n"
        "webdav_listen = tcp:8080:interface=127.0.0.1\nwebdav_allow_plain_auth = on\n"
        "ftp_encoding = GBK\nmetadata_prefix = /gw/meta\n"
        + BASE
        + "ftp_encoding = auto\n"
    )
    config = load_config(write(tmp_path, text))
    server = config.server
    assert server.proxy_protocol is True
    assert server.proxy_trusted_networks == ("10.0.0.0/24", "::1/128")
    assert server.shared_state == "redis://127.0.0.1:6390/2"
    assert server.shared_state_failure == "closed"
    assert server.webdav_listen == ("tcp:8080:interface=127.0.0.1",)
    assert server.webdav_allow_plain_auth is True
    assert server.ftp_encoding == "gbk"
    assert server.metadata_prefix == "gw/meta/"
    assert config.users["alice"].ftp_encoding == "auto"


def test_listener_options_kept_and_split(tmp_path: Path) -> None:
    listen = "tcp:2122:interface=127.0.0.1:proxy_protocol=yes:ftp_encoding=big5"
    text = f"[server]\nftp_listen = tcp:2121 {listen}\n" + BASE
    server = load_config(write(tmp_path, text)).server
    assert server.ftp_listen == ("tcp:2121", listen)
    assert split_listener(listen) == (
        "tcp:2122:interface=127.0.0.1",
        {"proxy_protocol": "yes", "ftp_encoding": "big5"},
    )
    assert split_listener("haproxy:tcp:21") == ("haproxy:tcp:21", {})


@pytest.mark.parametrize(
    "word",
    [
        "tcp:2121:proxy_protocol=maybe",
        "tcp:2121:ftp_encoding=utf-16",
        "tcp:21:ftp_encoding=nope",
        "haproxy:tcp:21:proxy_protocol=no",
    ],
)
def test_bad_listener_options(tmp_path: Path, word: str) -> None:
    assert endpoint_problem(word) is not None
    path = write(tmp_path, f"[server]\nftp_listen = {word}\n" + BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "server", "ftp_listen")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("shared_state = http://127.0.0.1:6379", "shared_state"),
        ("shared_state = redis://", "shared_state"),
        ("shared_state = redis://h:99999/0", "shared_state"),
        ("shared_state = redis://h:6379/zero", "shared_state"),
        ("shared_state_failure = sometimes", "shared_state_failure"),
        ("proxy_trusted_networks = 10.0.0.300", "proxy_trusted_networks"),
        ("ftp_encoding = klingon", "ftp_encoding"),
        ("ftp_encoding = utf-32", "ftp_encoding"),
        ("metadata_prefix = a/../b", "metadata_prefix"),
        ("metadata_prefix = /", "metadata_prefix"),
        ("webdav_listen = tpc:8080", "webdav_listen"),
    ],
)
def test_bad_values(tmp_path: Path, line: str, key: str) -> None:
    path = write(tmp_path, f"[server]\n{line}\n" + BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "server", key)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cr3t-pw@h:99999/0",
        "rediss://gw:s3cr3t-pw@h/zero",
        "redis://:s3cr3t-pw@h/0?ssl_cert_reqs=none",
    ],
)
def test_redis_password_never_shown(tmp_path: Path, url: str) -> None:
    """A bad shared_state URL is refused without its password in the error."""
    path = write(tmp_path, f"[server]\nshared_state = {url}\n" + BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "server", "shared_state")
    assert "s3cr3t" not in str(caught.value)
    assert ":***@h" in str(caught.value)


def test_user_encoding_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "ftp_encoding = rot13\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "user:alice", "ftp_encoding")


def test_parse_encoding() -> None:
    assert parse_encoding("UTF8") == "utf-8"
    assert parse_encoding("cp936") == "gbk"
    assert parse_encoding("GB18030") == "gb18030"
    assert parse_encoding("auto") == "auto"
    with pytest.raises(ValueError):
        parse_encoding("auto", auto=False)
    with pytest.raises(ValueError):
        parse_encoding("utf-16-le")


@pytest.mark.parametrize(
    ("server", "home"),
    [
        ("", ".cosgw"),
        ("", "/.cosgw/mtimes/a"),
        ("metadata_prefix = gw/meta\n", "gw/meta/x"),
    ],
)
def test_home_inside_the_metadata_prefix_refused(
    tmp_path: Path, server: str, home: str
) -> None:
    path = write(tmp_path, f"[server]\n{server}" + BASE + f"home = {home}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "user:alice", "home")


def test_home_holding_the_metadata_prefix_allowed(tmp_path: Path) -> None:
    """A home of the whole bucket, or above the prefix, holds it (hidden)."""
    for server, home in [
        ("", ""),
        ("metadata_prefix = gw/meta\n", "gw"),
        ("", "cosgw"),
    ]:
        path = write(tmp_path, f"[server]\n{server}" + BASE + f"home = {home}\n")
        assert load_config(path).users["alice"].home == home
