"""
The embedded default: with no config, one user whose password is generated
at first start, kept hashed in the state directory and shown once on a log
line, with the URLs to log in at; and the addresses it really listens on,
127.0.0.1 unless twistd cosftp --listen-all said every interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from cosgw.auth.passwd import DEFAULT_USERNAME, ensure_generated_account
from cosgw.config import ALL_PERMISSIONS, Config, UserConfig
from cosgw.privileges import as_gateway_user, private_directory

if TYPE_CHECKING:
    from cosgw.service import GatewayService

# The namespace these lines had when cosgw/service.py logged them.
log = Logger(namespace="cosgw.service")


def embedded_user(config: Config) -> tuple[UserConfig, Optional[str]]:
    """
    The embedded default's one user: its password is generated at first
    start, kept hashed in the state directory and shown once, so the
    second value is the password only on that first start.  Blocking; it
    runs as the gateway's user (L{cosgw.privileges}), whose the state
    directory (0700) and the password file (0600) are.
    """
    state_dir = private_directory(config.server.state_dir)
    with as_gateway_user():
        stored, password = ensure_generated_account(state_dir)
    storage = next(iter(config.storages))
    user = UserConfig(
        name=DEFAULT_USERNAME,
        password=stored,
        password_is_hashed=True,
        storage=storage,
        home="",
        permissions=ALL_PERMISSIONS,
    )
    return user, password


def _where(port: IListeningPort) -> tuple[str, str, int]:
    """
    Where C{port} really listens, as the kernel says (C{getHost}), not as
    the config asked: the address to print, and a host and port that reach
    it from this machine (a wildcard address is reached on loopback).
    """
    address: Any = port.getHost()  # a TCP port's: it has host and port
    host, number = address.host, address.port
    if host == "0.0.0.0":
        return f"0.0.0.0:{number} (every IPv4 interface)", "127.0.0.1", number
    if host == "::":
        return f"[::]:{number} (every interface)", "[::1]", number
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{number}", host, number


def announce(
    service: GatewayService, user: UserConfig, password: Optional[str]
) -> None:
    """
    Once each listener listens: log the address it really listens on, and
    how to log in there (the generated password only on the first start).
    """

    def ftp(port: IListeningPort) -> IListeningPort:
        address, host, number = _where(port)
        log.info(
            "cosgw embedded default: listening on {address} for FTP and explicit"
            " FTPS (AUTH TLS)",
            address=address,
        )
        if password is not None:
            log.info(
                "cosgw embedded default: log in at ftp://{user}@{host}:{port}/ "
                "with password {password} (shown once; stored hashed)",
                user=user.name,
                host=host,
                port=number,
                password=password,
            )
        else:
            log.info(
                "cosgw embedded default: log in at ftp://{user}@{host}:{port}/ "
                "with the password shown at first start (delete {passwd} to "
                "get a new one)",
                user=user.name,
                host=host,
                port=number,
                passwd="users.passwd in the state directory",
            )
        return port

    def also(scheme: str, what: str) -> Callable[[IListeningPort], IListeningPort]:
        def say(port: IListeningPort) -> IListeningPort:
            address, host, number = _where(port)
            log.info(
                "cosgw embedded default: listening on {address} for {what}:"
                " {scheme}://{user}@{host}:{port}/",
                address=address,
                what=what,
                scheme=scheme,
                user=user.name,
                host=host,
                port=number,
            )
            return port

        return say

    assert service.ftp is not None
    sftp = service.sftp.listeners if service.sftp is not None else []
    for listeners, said in (
        (service.ftp.listeners, ftp),
        (service.ftp.implicit_listeners, also("ftps", "implicit FTPS")),
        (sftp, also("sftp", "SFTP, same password; host key fingerprints above")),
    ):
        for listener in listeners:
            # The port goes on down the chain for whoever else waits on it.
            listener.listening.addCallback(said)
