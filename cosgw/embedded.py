"""
The embedded default: with no config, one user whose password is generated
at first start, kept hashed in the state directory and shown once on a log
line, with the URLs to log in at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from cosgw.auth.passwd import DEFAULT_USERNAME, ensure_generated_account
from cosgw.config import ALL_PERMISSIONS, Config, UserConfig

if TYPE_CHECKING:
    from cosgw.service import GatewayService

# The namespace these lines had when cosgw/service.py logged them.
log = Logger(namespace="cosgw.service")


def embedded_user(config: Config) -> tuple[UserConfig, Optional[str]]:
    """
    The embedded default's one user: its password is generated at first
    start, kept hashed in the state directory and shown once, so the
    second value is the password only on that first start.
    """
    stored, password = ensure_generated_account(config.server.state_dir)
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


def announce(
    service: GatewayService, user: UserConfig, password: Optional[str]
) -> None:
    def say(ports: list[IListeningPort]) -> None:
        for port in ports:
            address: Any = port.getHost()  # a TCP port's: it has host and port
            host = (
                address.host if address.host not in ("0.0.0.0", "::") else "127.0.0.1"
            )
            if ":" in host:
                host = f"[{host}]"
            if password is not None:
                log.info(
                    "cosgw embedded default: log in at ftp://{user}@{host}:{port}/ "
                    "with password {password} (shown once; stored hashed)",
                    user=user.name,
                    host=host,
                    port=address.port,
                    password=password,
                )
            else:
                log.info(
                    "cosgw embedded default: log in at ftp://{user}@{host}:{port}/ "
                    "with the password shown at first start (delete {passwd} to "
                    "get a new one)",
                    user=user.name,
                    host=host,
                    port=address.port,
                    passwd="users.passwd in the state directory",
                )

    def say_also(scheme: str, note: str) -> Callable[[IListeningPort], None]:
        def say_it(port: IListeningPort) -> None:
            address: Any = port.getHost()  # a TCP port's: it has host and port
            host = (
                address.host if address.host not in ("0.0.0.0", "::") else "127.0.0.1"
            )
            log.info(
                "cosgw embedded default: {scheme}://{user}@{host}:{port}/ ({note})",
                scheme=scheme,
                user=user.name,
                host=host,
                port=address.port,
                note=note,
            )

        return say_it

    say_ftps = say_also(
        "ftps", "implicit FTPS; explicit FTPS: AUTH TLS on the FTP port"
    )
    say_sftp = say_also("sftp", "SFTP, same password; host key fingerprints above")

    service.ready().addCallbacks(say, lambda f: None)
    assert service.ftp is not None
    for listener in service.ftp.implicit_listeners:
        listener.listening.addCallbacks(say_ftps, lambda f: None)
    for listener in service.sftp.listeners if service.sftp is not None else ():
        listener.listening.addCallbacks(say_sftp, lambda f: None)
