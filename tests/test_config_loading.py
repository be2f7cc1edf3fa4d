"""
Tests for L{cosgw.config.loading}: the embedded default, and a package
cheap enough for the twistd plugin to import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cosgw.config import (
    embedded_config,
)
from tests.configtesting import (
    ROOT,
)


def test_embedded_config(tmp_path: Path) -> None:
    config = embedded_config(tmp_path)
    assert config.embedded
    assert config.source is None
    assert config.users == {}
    assert config.server.state_dir == tmp_path / "cosgw-state"
    # On loopback only: --listen-all (listen_all) opens it to the network.
    assert config.server.ftp_listen == ("tcp:2121:interface=127.0.0.1",)
    assert config.server.ftps_listen == ("tcp:2990:interface=127.0.0.1",)
    # The embedded default serves SFTP on 2222, as it serves FTPS on 2990.
    assert config.server.sftp_listen == ("tcp:2222:interface=127.0.0.1",)
    assert config.server.ssh_host_keys == ()
    (storage,) = config.storages.values()
    assert (storage.name, storage.kind, storage.path) == (
        "default",
        "local",
        tmp_path / "cosgw-data",
    )


def test_embedded_config_listen_all(tmp_path: Path) -> None:
    server = embedded_config(tmp_path, listen_all=True).server
    assert (server.ftp_listen, server.ftps_listen, server.sftp_listen) == (
        ("tcp:2121",),
        ("tcp:2990",),
        ("tcp:2222",),
    )


def test_embedded_config_defaults_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = embedded_config()
    assert config.storages["default"].path == tmp_path / "cosgw-data"
    assert config.server.state_dir == tmp_path / "cosgw-state"


def test_import_is_cheap() -> None:
    """The twistd plugin imports this module: it must not pull in Twisted."""
    code = (
        "import sys, cosgw.config; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('twisted', 'qcloud_cos')]; "
        "sys.exit(bool(bad))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
