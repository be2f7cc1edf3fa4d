"""
Tests for L{cosgw.config.ini}: reading the file (missing, unreadable, not
UTF-8, a V5 file saved as GBK) and syntax errors that never quote the line.
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
    PASSWORD,
    v5,
    v5_account,
    write,
)


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


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cosgw.ini"
    path.write_bytes(BASE.encode() + "# \u4e2d\u6587\n".encode("gbk"))
    with pytest.raises(ConfigError, match="expected UTF-8"):
        load_config(path)


def test_v5_gbk_file(tmp_path: Path) -> None:
    """V5 on Python 2 read bytes: a file saved as GBK worked there."""
    text = "# \u6ce8\u91ca\n" + v5(v5_account(0))
    path = tmp_path / "vsftpd.conf"
    path.write_bytes(text.encode("gbk"))
    assert set(load_config(path).users) == {"user0"}
