"""
The realm: what a logged-in user gets, whichever protocol they logged in
with.

The realm knows nothing of FTP or SSH: each frontend registers a factory for
the avatar interface it needs (C{IFileSystem} for FTP, C{IConchUser} for
SFTP), and one realm then serves every frontend through one portal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional, Union

from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

from cosgw.auth.text import decode_bytes

__all__ = ["AvatarFactory", "Realm"]

#: Makes one logged-in user's avatar: C{(avatarId, mind) -> (avatar, logout)},
#: or a Deferred of that pair.
AvatarFactory = Callable[[str, Any], Any]


@implementer(IRealm)
class Realm:
    """
    Gives each logged-in user the avatar their protocol asked for.

    The realm owns nothing protocol-specific: each frontend registers, per
    avatar interface, a factory that builds the user's avatar (bound to the
    user's file system) and its logout callable.  One realm then serves FTP
    and SFTP through one portal.
    """

    def __init__(
        self, factories: Optional[Mapping[InterfaceClass, AvatarFactory]] = None
    ) -> None:
        self._factories: dict[InterfaceClass, AvatarFactory] = dict(factories or {})

    def register(self, interface: InterfaceClass, factory: AvatarFactory) -> None:
        """
        Add the factory for C{interface}.

        @raise ValueError: if C{interface} already has one; two frontends
            claiming the same interface is a wiring mistake.
        """
        if interface in self._factories:
            raise ValueError(f"an avatar factory for {interface!r} is registered")
        self._factories[interface] = factory

    # Twisted's stubs type avatar ids as bytes; cosgw's checkers give str.
    def requestAvatar(  # type: ignore[override]
        self, avatarId: Union[str, bytes], mind: Any, *interfaces: InterfaceClass
    ) -> Any:
        """
        Build the avatar for the first of C{interfaces} with a factory.

        @param avatarId: the checker's user name; bytes (from Conch's key
            checker) are decoded as UTF-8.
        @return: C{(interface, avatar, logout)}, or a L{Deferred} of it when
            the factory returns one.
        @raise NotImplementedError: when no interface has a factory, as
            L{IRealm} asks.
        """
        if isinstance(avatarId, bytes):
            avatarId = decode_bytes(avatarId)
        for interface in interfaces:
            factory = self._factories.get(interface)
            if factory is None:
                continue
            result = factory(avatarId, mind)
            if isinstance(result, Deferred):
                return result.addCallback(_with_interface, interface)
            avatar, logout = result
            return (interface, avatar, logout)
        raise NotImplementedError(
            "no avatar factory for any of "
            + ", ".join(getattr(i, "__name__", repr(i)) for i in interfaces)
        )


def _with_interface(
    pair: tuple[Any, Any], interface: InterfaceClass
) -> tuple[InterfaceClass, Any, Any]:
    """C{(avatar, logout)} as L{IRealm.requestAvatar} returns it."""
    return (interface, pair[0], pair[1])
