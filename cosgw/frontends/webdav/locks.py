"""
What WebDAV keeps beside the files: write locks (RFC 4918 sections 6
and 7) and dead properties (section 4), both in this process's memory.

Locks are advisory coordination between WebDAV clients (Windows and
macOS lock a file while an application has it open); they live as long as
their timeout (L{MAX_LOCK_SECONDS} at most) or the process, and FTP and
SFTP ignore them, as they ignore each other.  Dead properties (what a
client sets with PROPPATCH beyond the times, which go to the store as
MFMT's do) are kept here too: COS has no place for arbitrary XML on a
prefix, and a client that sets them (Office, litmus) reads them back in
the same session.  They follow their resource through MOVE and COPY, go
with DELETE, and are lost on a restart; that is documented.

Both are keyed by L{ResourceId}: the store and the object key's segments,
so two users whose homes overlap see the same locks.  Both are bounded
(L{MAX_LOCKS}, L{MAX_PROPERTY_BYTES}): at the bound a new one is refused
(503 for a lock, 507 for a property), never an old one dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

from twisted.internet.interfaces import IReactorTime

from cosgw.frontends.webdav.xmlbody import Name

__all__ = [
    "DeadProperties",
    "Lock",
    "LockTable",
    "PropertiesFull",
    "ResourceId",
    "TooManyLocks",
]

#: The store's description and the segments of an object key.
ResourceId = tuple[str, ...]

MAX_LOCKS = 10_000
MAX_PROPERTY_BYTES = 16 * 1024 * 1024
#: Dead properties of one resource, and bytes of one value, at most.
MAX_PROPERTIES = 200
MAX_VALUE_BYTES = 64 * 1024


class TooManyLocks(Exception):
    """The lock table is full (503)."""


class PropertiesFull(Exception):
    """No room for another dead property (507)."""


def _below(resource: ResourceId, root: ResourceId) -> bool:
    """Whether C{resource} is C{root} or inside it."""
    return resource[: len(root)] == root


@dataclass
class Lock:
    token: str
    root: ResourceId
    #: "0" or "infinity".
    depth: str
    #: "exclusive" or "shared".
    scope: str
    owner: bytes
    timeout: int
    expires: float
    #: The lock root's URL path, as lockdiscovery shows it.
    href: str
    #: Who took it: only they may use its token.
    user: str

    def covers(self, resource: ResourceId) -> bool:
        if resource == self.root:
            return True
        return self.depth == "infinity" and _below(resource, self.root)


class LockTable:
    """
    Every lock of the gateway's WebDAV listeners, indexed by root: the
    locks covering a resource are found by its own path's prefixes (a
    PROPFIND asks for every member it lists), never by a walk of the table.
    """

    def __init__(self, clock: IReactorTime, max_locks: int = MAX_LOCKS) -> None:
        self._clock = clock
        self._max = max_locks
        self._locks: dict[str, Lock] = {}
        self._roots: dict[ResourceId, dict[str, Lock]] = {}

    def _expired(self, lock: Lock) -> bool:
        if lock.expires > self._clock.seconds():
            return False
        self.remove(lock.token)
        return True

    def _live(self) -> Iterator[Lock]:
        for lock in list(self._locks.values()):
            if not self._expired(lock):
                yield lock

    def __len__(self) -> int:
        return sum(1 for _ in self._live())

    def get(self, token: str) -> Optional[Lock]:
        lock = self._locks.get(token)
        if lock is None or self._expired(lock):
            return None
        return lock

    def covering(self, resource: ResourceId) -> list[Lock]:
        """The locks on C{resource} or on a collection holding it (depth infinity)."""
        found = []
        for end in range(1, len(resource) + 1):
            for lock in self.on(resource[:end]):
                if lock.covers(resource):
                    found.append(lock)
        return found

    def inside(self, resource: ResourceId) -> list[Lock]:
        """The locks on members of C{resource}, at any depth."""
        return [
            lock
            for lock in self._live()
            if lock.root != resource and _below(lock.root, resource)
        ]

    def on(self, resource: ResourceId) -> list[Lock]:
        """The locks whose root is C{resource}."""
        here = self._roots.get(resource)
        if not here:
            return []
        return [lock for lock in list(here.values()) if not self._expired(lock)]

    def conflict(self, resource: ResourceId, scope: str, depth: str) -> bool:
        """Whether a new lock would conflict with one held (section 6.1)."""
        held = self.covering(resource)
        if depth == "infinity":
            held += self.inside(resource)
        if scope == "exclusive":
            return bool(held)
        return any(lock.scope == "exclusive" for lock in held)

    def add(
        self,
        resource: ResourceId,
        scope: str,
        depth: str,
        owner: bytes,
        timeout: int,
        href: str,
        user: str,
    ) -> Lock:
        """
        A new lock.

        @raise TooManyLocks: the table holds L{MAX_LOCKS}.
        """
        if len(self._locks) >= self._max and len(self) >= self._max:
            raise TooManyLocks(f"{self._max} locks are held; try again later")
        token = f"opaquelocktoken:{uuid.uuid4()}"
        lock = Lock(
            token,
            resource,
            depth,
            scope,
            owner,
            timeout,
            self._clock.seconds() + timeout,
            href,
            user,
        )
        self._locks[token] = lock
        self._roots.setdefault(resource, {})[token] = lock
        return lock

    def refresh(self, lock: Lock, timeout: int) -> None:
        lock.timeout = timeout
        lock.expires = self._clock.seconds() + timeout

    def remove(self, token: str) -> None:
        lock = self._locks.pop(token, None)
        if lock is None:
            return
        here = self._roots.get(lock.root, {})
        here.pop(token, None)
        if not here:
            self._roots.pop(lock.root, None)

    def drop(self, resource: ResourceId) -> None:
        """The resource (and what it held) is gone: its locks go too."""
        for lock in list(self._live()):
            if _below(lock.root, resource):
                self.remove(lock.token)


class DeadProperties:
    """Properties clients set that the gateway only keeps (see the module)."""

    def __init__(self, max_bytes: int = MAX_PROPERTY_BYTES) -> None:
        self._max = max_bytes
        self._size = 0
        self._props: dict[ResourceId, dict[Name, bytes]] = {}

    @property
    def size(self) -> int:
        return self._size

    def of(self, resource: ResourceId) -> dict[Name, bytes]:
        """The properties of C{resource} (a copy), by name."""
        return dict(self._props.get(resource, {}))

    def check(self, resource: ResourceId, name: Name, value: bytes) -> None:
        """
        @raise PropertiesFull: C{value} cannot be kept (too long, too many
            on the resource, the table full).
        """
        props = self._props.get(resource, {})
        if len(value) > MAX_VALUE_BYTES:
            raise PropertiesFull(f"a property value is over {MAX_VALUE_BYTES} bytes")
        if name not in props and len(props) >= MAX_PROPERTIES:
            raise PropertiesFull(f"a resource holds {MAX_PROPERTIES} properties")
        grows = len(value) - len(props.get(name, b""))
        if self._size + grows > self._max:
            raise PropertiesFull("no room for more properties")

    def set(self, resource: ResourceId, name: Name, value: bytes) -> None:
        """Keep C{value} (checked with L{check} first)."""
        props = self._props.setdefault(resource, {})
        self._size += len(value) - len(props.get(name, b""))
        props[name] = value

    def remove(self, resource: ResourceId, name: Name) -> None:
        props = self._props.get(resource)
        if props is not None and name in props:
            self._size -= len(props.pop(name))
            if not props:
                del self._props[resource]

    def _tree(self, root: ResourceId) -> list[ResourceId]:
        return [r for r in self._props if _below(r, root)]

    def drop(self, root: ResourceId) -> None:
        """C{root} and everything in it were deleted."""
        for resource in self._tree(root):
            for value in self._props.pop(resource).values():
                self._size -= len(value)

    def move(self, source: ResourceId, target: ResourceId) -> None:
        """C{source} (and what it held) became C{target}."""
        self.drop(target)
        for resource in self._tree(source):
            self._props[target + resource[len(source) :]] = self._props.pop(resource)

    def copy(self, source: ResourceId, target: ResourceId, tree: bool) -> None:
        """
        C{source} was copied to C{target} (C{tree}: with its members); the
        copies are kept while there is room, as a copy in the store is.
        """
        resources = self._tree(source) if tree else [source]
        for resource in resources:
            for name, value in self._props.get(resource, {}).items():
                place = target + resource[len(source) :]
                try:
                    self.check(place, name, value)
                except PropertiesFull:
                    return
                self.set(place, name, value)
