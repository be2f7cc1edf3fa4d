"""
The two ways to get a L{Config}: from a file, whose format is told apart by
its sections, or the embedded default used when there is no file.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

from cosgw.config.ini import looks_like_v5, read_text
from cosgw.config.model import (
    DATA_DIR_NAME,
    DEFAULT_FTP_PORT,
    DEFAULT_FTPS_PORT,
    DEFAULT_SFTP_PORT,
    STATE_DIR_NAME,
    Config,
    ServerConfig,
    StorageConfig,
    TransferConfig,
)
from cosgw.config.native import CosgwLoader
from cosgw.config.v5 import V5Loader


def load_config(path: str | os.PathLike[str]) -> Config:
    """
    Read the configuration file C{path}, in cosgw's format or V5's.

    Relative paths inside it (state, log and local storage directories)
    resolve against the file's directory, so the result does not depend on
    the directory the gateway was started from.

    This blocks (it reads a file): call it at start-up.

    @raise ConfigError: if the file is missing, unreadable or not a valid
        configuration.
    """
    label = os.fspath(path)
    source = Path(label).absolute()
    text = read_text(source, label)
    if looks_like_v5(text):
        return V5Loader(source, label, text).load()
    return CosgwLoader(source, label, text).load()


def embedded_config(base: Path | None = None, listen_all: bool = False) -> Config:
    """
    The configuration used when there is no file: a local storage
    C{"default"} at C{base/cosgw-data} and state in C{base/cosgw-state}
    (C{base} defaults to the current directory).  It serves FTP on 2121,
    implicit FTPS on 2990 and SFTP on 2222 (host keys generated in the state
    directory at first start), on 127.0.0.1 only unless C{listen_all}: a
    password shown in a log is no way to open a machine to its network.
    It has no admin listener.

    It has no users: the service creates the generated user C{"cosgw"} with
    all permissions on C{"default"} (see
    L{cosgw.auth.passwd.ensure_generated_account}), so a fresh install never
    runs with a well-known password or none.
    """
    base = Path.cwd() if base is None else Path(base).absolute()
    storage = StorageConfig(name="default", kind="local", path=base / DATA_DIR_NAME)
    where = "" if listen_all else ":interface=127.0.0.1"
    return Config(
        source=None,
        server=ServerConfig(
            state_dir=base / STATE_DIR_NAME,
            ftp_listen=(f"tcp:{DEFAULT_FTP_PORT}{where}",),
            ftps_listen=(f"tcp:{DEFAULT_FTPS_PORT}{where}",),
            sftp_listen=(f"tcp:{DEFAULT_SFTP_PORT}{where}",),
            # A trial run must not take (or fail on) the admin port of a
            # gateway installed on the same host.
            admin_listen="",
        ),
        transfer=TransferConfig(),
        storages=MappingProxyType({storage.name: storage}),
        users=MappingProxyType({}),
        notices=(),
        embedded=True,
    )
