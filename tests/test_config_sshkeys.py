"""
Tests for L{cosgw.config.sshkeys}: users' SSH public keys, given inline or
in an authorized_keys file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cosgw.config import (
    ConfigError,
    load_config,
)
from tests.configtesting import (
    BASE,
    DSA,
    ECDSA,
    ED25519,
    PASSWORD,
    ROOT,
    RSA_1024,
    RSA_2048,
    assert_one_line_error,
    keys_value,
    write,
)


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


def test_load_with_keys_installs_no_reactor(tmp_path: Path) -> None:
    """Checking keys imports twisted.conch.ssh.keys, never a reactor."""
    path = write(tmp_path, BASE + keys_value(ED25519))
    code = (
        "import sys; from cosgw.config import load_config; "
        f"load_config({str(path)!r}); "
        "sys.exit('twisted.internet.reactor' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
