"""
Who may use the admin listener: loopback clients only without admin_users
(and only when the browser asked for an address, against DNS rebinding);
with admin_users, HTTP basic auth over those users' passwords, checked by
the gateway's password checker under the login defender.
"""

from __future__ import annotations

import base64
import ftplib
from pathlib import Path
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from twisted.web.util import DeferredResource
from zope.interface import implementer

from cosgw.admin.access import AdminAccess, Refusal
from cosgw.policy.defender import LoginDefender
from tests.admintesting import request
from tests.harness import PASSWORD, READER_PASSWORD, in_thread, start_gateway

ADMIN = "tcp:0:interface=127.0.0.1"


class _Page(Resource):
    isLeaf = True


def _request(client: Any, host: bytes | None = b"127.0.0.1:9121") -> DummyRequest:
    req = DummyRequest([b"metrics"])
    req.client = client
    if host is not None:
        req.requestHeaders.setRawHeaders(b"host", [host])
    return req


class LoopbackRuleTests(unittest.SynchronousTestCase):
    """Without admin_users."""

    def setUp(self) -> None:
        self.page = _Page()
        self.root = Resource()
        self.root.putChild(b"metrics", self.page)
        self.access = AdminAccess((), None, LoginDefender(Clock()), Clock())

    def admit(self, req: DummyRequest) -> Any:
        return self.access.admit(req, self.root, b"metrics")

    def test_loopback_clients_admitted(self) -> None:
        for client in (
            IPv4Address("TCP", "127.0.0.1", 5000),
            IPv4Address("TCP", "127.8.9.10", 5000),
            IPv6Address("TCP", "::1", 5000),
            UNIXAddress(b"/run/cosgw/admin.sock"),
        ):
            self.assertIs(self.admit(_request(client)), self.page, client)

    def test_other_clients_refused(self) -> None:
        for host in ("192.0.2.7", "10.0.0.1", "2001:db8::1"):
            kind = IPv6Address if ":" in host else IPv4Address
            answer = self.admit(_request(kind("TCP", host, 5000)))
            self.assertIsInstance(answer, Refusal)
            self.assertEqual(answer.code, 403)

    def test_host_must_be_an_address(self) -> None:
        client = IPv4Address("TCP", "127.0.0.1", 5000)
        for host in (b"127.0.0.1", b"localhost:9121", b"[::1]:9121", None):
            self.assertIs(self.admit(_request(client, host)), self.page, host)
        for host in (b"evil.example:9121", b"evil.example", b"127.0.0.1.nip.io"):
            answer = self.admit(_request(client, host))
            self.assertIsInstance(answer, Refusal)
            self.assertEqual(
                (answer.code, answer.text),
                (403, "ask for the admin listener by IP address"),
            )


@implementer(ICredentialsChecker)
class _Checker:
    """The password checker's part: alice's password is "right"."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    def requestAvatarId(self, credentials: Any) -> Deferred[str]:
        self.asked.append(credentials.username)
        if (credentials.username, credentials.password) == (b"alice", b"right"):
            return succeed("alice")
        return fail(UnauthorizedLogin())


class RememberTests(unittest.SynchronousTestCase):
    """A verified user and password are not checked again for 60 s."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.checker = _Checker()
        self.root = Resource()
        self.page = _Page()
        self.root.putChild(b"metrics", self.page)
        self.access = AdminAccess(
            ("alice",),
            self.checker,
            LoginDefender(self.clock, base_delay=0),
            self.clock,
        )

    def admit(self, password: bytes) -> Any:
        req = _request(IPv4Address("TCP", "192.0.2.5", 5000))
        req.prepath = [b"metrics"]
        req.postpath = []
        token = base64.b64encode(b"alice:" + password)
        req.requestHeaders.setRawHeaders(b"authorization", [b"Basic " + token])
        return self.access.admit(req, self.root, b"metrics")

    def test_remembered(self) -> None:
        self.assertIsInstance(self.admit(b"right"), DeferredResource)
        self.assertIs(self.admit(b"right"), self.root)
        self.assertEqual(self.checker.asked, [b"alice"])
        self.clock.advance(61)
        self.assertIsInstance(self.admit(b"right"), DeferredResource)
        self.assertEqual(self.checker.asked, [b"alice", b"alice"])

    def test_forget(self) -> None:
        """After L{AdminAccess.forget} (a reload) the password is checked again."""
        self.assertIsInstance(self.admit(b"right"), DeferredResource)
        self.assertIs(self.admit(b"right"), self.root)
        self.access.forget()
        self.assertIsInstance(self.admit(b"right"), DeferredResource)
        self.assertEqual(self.checker.asked, [b"alice", b"alice"])

    def test_failures_not_remembered(self) -> None:
        for _ in range(3):
            self.assertIsInstance(self.admit(b"wrong"), DeferredResource)
        self.assertEqual(len(self.checker.asked), 3)


class BasicAuthTests(unittest.TestCase):
    """admin_users = alice, over a real gateway and real HTTP requests."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(
            self,
            "local",
            admin_listen=ADMIN,
            admin_users=("alice",),
            login_max_failures=3,
        )

    def get(self, path: str, auth: Any = None) -> Any:
        return in_thread(request, self.gw.admin_port, path, auth=auth)

    @defer.inlineCallbacks
    def test_admin_user_accepted(self) -> Any:
        answer = yield self.get("/metrics", ("alice", PASSWORD))
        self.assertEqual(answer.status, 200)
        self.assertIn("cosgw_sessions", answer.text)
        answer = yield self.get("/api/sessions", ("alice", PASSWORD))
        self.assertEqual((answer.status, answer.text), (200, '{"sessions":[]}\n'))

    @defer.inlineCallbacks
    def test_refused(self) -> Any:
        for path, auth in (
            ("/metrics", None),
            ("/", ("alice", "wrong")),
            ("/api/sessions", ("reader", READER_PASSWORD)),  # not an admin
            ("/metrics", ("nobody", PASSWORD)),
        ):
            answer = yield self.get(path, auth)
            self.assertEqual(answer.status, 401, (path, auth))
            self.assertEqual(
                answer.headers["WWW-Authenticate"],
                'Basic realm="cosgw admin", charset="UTF-8"',
            )
            self.assertNotIn(b"cosgw_", answer.body)

    @defer.inlineCallbacks
    def test_health_needs_no_password(self) -> Any:
        answer = yield self.get("/healthz")
        self.assertEqual((answer.status, answer.text), (200, "ok\n"))
        answer = yield self.get("/readyz")
        self.assertIn(answer.status, (200, 503))

    @defer.inlineCallbacks
    def test_failures_ban_the_address_for_every_protocol(self) -> Any:
        """Three wrong passwords: banned here, and for FTP from that address."""
        for _ in range(3):
            answer = yield self.get("/metrics", ("alice", "guess"))
            self.assertEqual(answer.status, 401)
        self.assertGreater(self.gw.service.defender.banned("127.0.0.1"), 0)
        answer = yield self.get("/metrics", ("alice", PASSWORD))
        self.assertEqual(answer.status, 429)
        self.assertGreater(int(answer.headers["Retry-After"]), 0)

        def ftp_banner() -> str:
            ftp = ftplib.FTP()
            try:
                return ftp.connect(self.gw.host, self.gw.port, timeout=20)
            except ftplib.error_temp as e:
                return str(e)
            finally:
                ftp.close()

        reply = yield in_thread(ftp_banner)
        self.assertTrue(reply.startswith("421 Too many failed logins"), reply)


class EmbeddedDefaultTests(unittest.SynchronousTestCase):
    def test_no_admin_listener(self) -> None:
        """
        A trial run (twistd cosftp with no config) takes no admin port: an
        installed gateway's 9121 stays its own.
        """
        from cosgw.config import embedded_config

        self.assertEqual(embedded_config(Path("/nonexistent")).server.admin_listen, "")
