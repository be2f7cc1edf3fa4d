"""
A real paramiko session killed (an RST) while the gateway decides how its
first write to an existing file is made, end to end over the local store
and the COS-dialect server: the store's reply the decision waits for is
held until the gateway has seen the session go, then let go.  Whatever the
decision then starts (a spooled copy of the file, an append's multipart
upload with its quota reservation) must not outlive the session.  The
unit tests of the same race, at every step, are in test_vfs_editing_abort.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import paramiko
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread
from twisted.trial.unittest import TestCase

from cosgw.config import ALL_PERMISSIONS, UserConfig
from tests.harness import PASSWORD, MiB, in_thread, random_bytes, start_gateway
from tests.test_sftp import poll
from tests.test_spool_budget import spool_usage

RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close is a reset


class Held:
    """
    The gateway store's C{method}, answered only once L{release}d: the
    request reached the store, its reply is in flight.  C{seen} gets each
    answer as the store gives it.
    """

    def __init__(
        self, store: Any, method: str, seen: Callable[[Any], Any] = lambda r: r
    ) -> None:
        self.store, self.method, self.seen = store, method, seen
        self.original = getattr(store, method)
        self.waiting: list[tuple[Deferred[Any], Deferred[Any]]] = []
        setattr(store, method, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        later: Deferred[Any] = Deferred()
        answer = self.original(*args, **kwargs).addCallback(self.seen)
        self.waiting.append((answer, later))
        return later

    def release(self) -> None:
        delattr(self.store, self.method)
        for answer, later in self.waiting:
            answer.chainDeferred(later)


class LostDecisionTestsMixin:
    kind = "local"
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        users = {
            "alice": UserConfig(
                name="alice",
                password=PASSWORD,
                password_is_hashed=False,
                storage="store",
                home="",
                permissions=ALL_PERMISSIONS,
                quota_bytes=1024 * MiB,
            )
        }
        self.gateway = yield start_gateway(
            self,
            self.kind,
            users=users,
            transfer_overrides={"max_spool_size": 64 * MiB},
        )
        self.data = random_bytes(2 * MiB + 7)
        yield self.gateway.store.put("f.bin", self.data)

    @defer.inlineCallbacks
    def lose_session(self, hold: Callable[[], list[Held]], offset: int) -> Any:
        """
        Open f.bin without TRUNC, C{hold} the store's replies, send one
        WRITE at C{offset}, and kill the session as soon as the gateway
        waits for a held reply; then let the store answer.
        """
        gateway = self.gateway
        sock = socket.create_connection(("127.0.0.1", gateway.sftp_port))
        held: list[Held] = []

        def client() -> None:
            transport = paramiko.Transport(sock)
            transport.connect(username="alice", password=PASSWORD)
            sftp = paramiko.SFTPClient.from_transport(transport)
            sessions = gateway.service.limits.total
            f = sftp.open("/f.bin", "r+")
            held.extend(blockingCallFromThread(reactor, hold))
            f.set_pipelined(True)
            f.seek(offset)
            f.write(b"EDIT")  # sent; its reply is not awaited
            assert poll(lambda: any(h.waiting for h in held), 10), "not asked"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
            sock.close()
            assert poll(lambda: gateway.service.limits.total < sessions), "not seen"

        try:
            yield in_thread(client)
        finally:
            for h in held:
                h.release()

    @defer.inlineCallbacks
    def test_lost_while_copying_for_an_edit(self) -> Any:
        """
        A write in the middle: the copy into the spool is under way when
        the session goes; once its GET is closed, no spool file and no
        spool space remain.
        """
        closed: list[bool] = []

        def watch(source: Any) -> Any:
            close = source.close

            def closing() -> Any:
                closed.append(True)
                return close()

            source.close = closing
            return source

        yield self.lose_session(lambda: [Held(self.gateway.store, "open", watch)], 10)
        settings = self.gateway.service.sftp.settings

        def settled() -> bool:
            return bool(closed) and spool_usage(settings.spool_dir) == (0, 0)

        clean = yield in_thread(poll, settled, 15)
        self.assertTrue(clean, (closed, spool_usage(settings.spool_dir)))
        self.assertEqual(settings.spool_budget.used, 0)
        self.assertEqual(self.gateway.inspector.read("f.bin"), self.data)

    @defer.inlineCallbacks
    def test_lost_while_deciding_to_append(self) -> Any:
        """
        A write at the end: the user's usage is being computed (for the
        quota reservation) when the session goes; the append's multipart
        upload begun then is aborted and its reservation released.
        """
        usage = self.gateway.service.accounts.accounts["alice"].usage
        yield self.lose_session(
            lambda: [Held(self.gateway.store, "list")], len(self.data)
        )

        def settled() -> bool:
            return (
                usage.ready
                and usage.reserved == 0
                and not self.gateway.inspector.pending_uploads()
            )

        clean = yield in_thread(poll, settled, 15)
        self.assertTrue(
            clean, (usage.reserved, self.gateway.inspector.pending_uploads())
        )
        self.assertEqual(self.gateway.inspector.read("f.bin"), self.data)


class LocalLostDecisionTests(LostDecisionTestsMixin, TestCase):
    kind = "local"


class CosLostDecisionTests(LostDecisionTestsMixin, TestCase):
    kind = "cos"
