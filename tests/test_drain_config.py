"""
C{[server] drain_timeout}: its default, its range, its errors, and the
example config that documents it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cosgw.config import ConfigError, ServerConfig, load_config
from tests.configtesting import BASE, EXAMPLE, assert_one_line_error, write


def test_default_is_60() -> None:
    assert ServerConfig(state_dir=Path("/nonexistent")).drain_timeout == 60


def test_missing_or_empty_means_the_default(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE)).server.drain_timeout == 60
    path = write(tmp_path, "[server]\ndrain_timeout =\n" + BASE)
    assert load_config(path).server.drain_timeout == 60


@pytest.mark.parametrize("value", [0, 2, 300, 86400])
def test_values(tmp_path: Path, value: int) -> None:
    path = write(tmp_path, f"[server]\ndrain_timeout = {value}\n" + BASE)
    assert load_config(path).server.drain_timeout == value


@pytest.mark.parametrize("value", ["-1", "86401", "1m", "ten", "2.5"])
def test_errors_name_the_key(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[server]\ndrain_timeout = {value}\n" + BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_error(caught.value, path, "server", "drain_timeout")


def test_example_documents_it_at_its_default() -> None:
    assert load_config(EXAMPLE).server.drain_timeout == 60
    text = EXAMPLE.read_text(encoding="utf-8")
    section = text[text.index("# Seconds the transfers in progress") :]
    section = section[: section.index("drain_timeout = 60")]
    for needle in ("SIGTERM", "cosgw stop", "/readyz", "421 Shutting", "exits 0"):
        assert needle in section, needle
