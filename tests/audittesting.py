"""
The fixture of the tests of what the file system records (test_audit_*):
one client session (L{cosgw.audit.Session}) of user alice, logged in the
way every frontend logs in (L{Accounts.session} with the session as the
avatar's mind), over a memory store on a L{Clock}, and the audit events
the session emitted, as an operator's log observer sees them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cosgw import vfs
from cosgw.audit import AUDIT_NAMESPACE, SessionTable, audit_fields
from cosgw.config import ALL_PERMISSIONS
from cosgw.interfaces import IByteSource
from cosgw.policy.accounts import Account, Accounts
from cosgw.testing import MemoryStore
from cosgw.transfer import TransferSettings
from tests.logevents import LogEvents

T = TypeVar("T")

MiB = 1024 * 1024
KiB = 1024
HOME = "home/alice"
H = HOME + "/"
CLIENT = ("192.0.2.7", 50022)


def status_name(error: Optional[BaseException]) -> str:
    """A frontend's mapping of outcomes to replies, for the tests: names."""
    return "ok" if error is None else type(error).__name__


class SlowStore(MemoryStore):
    """
    A memory store whose answers to the methods in C{delays} come that many
    seconds later on its clock, whose stream reads each take C{read_delay}
    (and fail with C{read_failure} once it is set), and whose answers to
    the methods in C{retried} say the store retried that many times: the
    edge that the tests of store wait, retries and failures need.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.clock = clock
        self.delays: dict[str, float] = {}
        self.read_delay = 0.0
        self.read_failure: Optional[Exception] = None
        self.retried: dict[str, int] = {}

    def later(self, result: Any, delay: float) -> Deferred[Any]:
        d: Deferred[None] = Deferred()
        self.clock.callLater(delay, d.callback, None)
        return d.addCallback(lambda _: result)

    def _request(self, method: str, body: Any, *args: Any) -> Deferred[Any]:
        d = super()._request(method, body, *args)
        if self.retried.get(method):
            d.addCallback(replace, retries=self.retried[method])
        if self.delays.get(method):
            d.addBoth(self.later, self.delays[method])
        return d

    def _open(self, key: str, offset: int, end: Optional[int]) -> IByteSource:
        return _SlowSource(self, super()._open(key, offset, end))


@implementer(IByteSource)
class _SlowSource:
    def __init__(self, store: SlowStore, source: IByteSource) -> None:
        self._store = store
        self._source = source
        self.info = source.info
        self.offset = source.offset
        self.length = source.length

    def read(self, size: int) -> Deferred[bytes]:
        if self._store.read_failure is not None:
            return fail(self._store.read_failure)
        d = self._source.read(size)
        if self._store.read_delay:
            d.addBoth(self._store.later, self._store.read_delay)
        return d

    def close(self) -> Deferred[None]:
        return self._source.close()


class AuditTestCase(SynchronousTestCase):
    """Alice's file system in a client session, and its audit events."""

    protocol = "sftp"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = SlowStore(self.clock)
        self.table = SessionTable(self.clock)
        self.log = LogEvents(self, AUDIT_NAMESPACE)
        self.kicks: list[str] = []
        self.session = self.table.open(self.protocol, *CLIENT, self.kicks.append)
        self.session.status_of = status_name
        self.fs = self.login()

    def login(
        self,
        permissions: frozenset[str] = ALL_PERMISSIONS,
        settings: Optional[TransferSettings] = None,
    ) -> vfs.ObjectFileSystem:
        """Alice logs in on the session, as through any frontend."""
        account = Account(
            name="alice", store=self.store, home=HOME, permissions=permissions
        )
        self.accounts = Accounts(
            {"alice": account},
            settings or TransferSettings(part_size=MiB, parts_in_flight=2),
            clock=self.clock,
        )
        fs, logout = self.accounts.session("alice", self.session)
        self.addCleanup(logout)
        return fs

    def put(self, path: str, data: bytes = b"") -> None:
        """Store C{data} under the home at C{path}, uncounted."""
        self.successResultOf(self.store.put(H + path, data))
        self.store.reset_requests()

    def ok(self, d: Deferred[T]) -> T:
        return self.successResultOf(d)

    def fails(self, d: Deferred[Any], error: type[Exception]) -> Any:
        return self.failureResultOf(d, error).value

    def events(self, *names: str) -> list[dict[str, Any]]:
        """The audit fields of the events emitted so far (C{names} only)."""
        found = []
        for event in self.log.events:
            fields = audit_fields(event)
            if fields is None or fields["event"] == "session-open":
                continue
            if not names or fields["event"] in names:
                found.append(dict(fields))
        return found

    def one(self, name: str, **expected: Any) -> dict[str, Any]:
        """
        The only audit event emitted so far, which must be C{name} with the
        session's context and the C{expected} fields.
        """
        events = self.events()
        self.assertEqual([e["event"] for e in events], [name], events)
        event = events[0]
        self.assertEqual(
            (event["session"], event["protocol"], event["user"]),
            (self.session.id, self.protocol, "alice"),
        )
        self.assertEqual((event["client_ip"], event["client_port"]), CLIENT)
        self.assertEqual({k: event.get(k) for k in expected}, expected)
        return event

    def forget_events(self) -> None:
        self.log.events.clear()
