"""
Tests for L{cosgw.config.model}: a loaded configuration never shows a
secret and cannot be changed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cosgw.config import (
    load_config,
)
from tests.configtesting import (
    BASE,
    PASSWORD,
    SECRET_KEY,
    TOKEN,
    V5_SAMPLE,
    v5,
    v5_account,
    write,
)


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
