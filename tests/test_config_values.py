"""
Tests for L{cosgw.config.values}: sizes, booleans, permissions and homes
read from text.
"""

from __future__ import annotations

import pytest

from cosgw.config import (
    ALL_PERMISSIONS,
    authority_permissions,
    normalize_home,
    parse_bool,
    parse_permissions,
    parse_size,
)
from tests.configtesting import (
    GIB,
    MIB,
)


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
