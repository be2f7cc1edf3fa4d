"""
The fixture of the tests of the file system's door objects (readers,
uploads, files opened at offsets): a user's L{ObjectFileSystem} over a
L{MemoryStore} on a L{Clock}, with optional rates, so everything is
synchronous, rate pauses are timed to the second, and every test can pin
the store requests an operation makes (house rule 10).
"""

from __future__ import annotations

from typing import Any, Optional, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cosgw import vfs
from cosgw.config import ALL_PERMISSIONS
from cosgw.policy.quota import Usage
from cosgw.policy.throttle import RateLimit
from cosgw.testing import MemoryStore
from cosgw.transfer import TransferSettings, UploadRegistry

T = TypeVar("T")

MiB = 1024 * 1024
KiB = 1024
HOME = "home/alice"
#: The key prefix of the home.
H = HOME + "/"


def pattern(size: int, seed: int = 1) -> bytes:
    """Bytes that differ at every offset that matters (not all zeros)."""
    return bytes((i * 7 + seed + i // 251) % 256 for i in range(size))


class DoorTestCase(SynchronousTestCase):
    """A file system of user alice (home L{HOME}) over a memory store."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore(self.clock)
        #: The gateway's uploads, shared by every file system of the test.
        self.registry = UploadRegistry()
        self.fs = self.make_fs()

    def make_fs(
        self,
        permissions: frozenset[str] = ALL_PERMISSIONS,
        settings: Optional[TransferSettings] = None,
        upload_rate: Optional[int] = None,
        download_rate: Optional[int] = None,
        burst: int = 64 * KiB,
        usage: Optional[Usage] = None,
    ) -> vfs.ObjectFileSystem:
        """A file system with these rules; rates in bytes per second."""
        return vfs.ObjectFileSystem(
            self.store,
            HOME,
            permissions,
            settings or TransferSettings(part_size=MiB, parts_in_flight=2),
            user="alice",
            registry=self.registry,
            usage=usage,
            upload_limit=(
                RateLimit(upload_rate, self.clock, burst) if upload_rate else None
            ),
            download_limit=(
                RateLimit(download_rate, self.clock, burst) if download_rate else None
            ),
            clock=self.clock,
        )

    def put(self, path: str, data: bytes = b"") -> None:
        """Store C{data} under the home at C{path}, uncounted."""
        self.successResultOf(self.store.put(H + path, data))
        self.store.reset_requests()

    def stored(self, path: str) -> bytes:
        return self.store.stored_bytes(H + path)

    def ok(self, d: Deferred[T]) -> T:
        """The result of an operation; it must have succeeded already."""
        return self.successResultOf(d)

    def fails(self, d: Deferred[Any], error: type[Exception]) -> Any:
        """The error an operation failed with, which must be C{error}."""
        return self.failureResultOf(d, error).value

    def assertRequests(self, **expected: int) -> None:
        """The store saw exactly these requests since the last check."""
        self.assertEqual(dict(self.store.reset_requests()), expected)

    def assertNothingLeft(self) -> None:
        """No unfinished multipart upload and no open source remain."""
        self.assertEqual(self.store.stored_uploads(), [])
        self.assertEqual(self.store.open_sources, 0)
