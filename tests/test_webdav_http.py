"""
WebDAV's HTTP edges end to end, each through a real socket on 127.0.0.1:
Expect: 100-continue after the login and permission checks only, refused
PUTs whose body is still on its way, oversized and malformed headers,
absolute-form targets, a collection's page for browsers, conditional and
ranged GET and HEAD, timeouts and limits, a 20,000-entry PROPFIND, plain
HTTP passwords from a non-loopback address (a PROXY header says where the
client is), and the admin API's and metrics' view of WebDAV sessions.
"""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from typing import Any

from twisted.internet import defer, reactor, task

from tests.admintesting import request as admin_request
from tests.admintesting import samples, value
from tests.davtesting import (
    DAVCase,
    Raw,
    basic,
    head_request,
    status_of,
    until,
)
from tests.harness import PASSWORD, READER_PASSWORD, in_thread
from tests.proxytesting import proxied_socket, v1_header

ALICE = basic("alice", PASSWORD)


class ExpectContinueTests(DAVCase):
    @defer.inlineCallbacks
    def test_continue_only_after_login_and_permission(self) -> Any:
        """
        A PUT waiting with its body hears 100 Continue only once it may be
        stored; refused (no password, no permission), it gets the final
        status at once, a 401 with its challenge, and nothing is stored.
        """
        yield self.start("local")
        put = {"Content-Length": "100000", "Expect": "100-continue"}
        anonymous = self.raw()
        yield in_thread(anonymous.send, head_request("PUT", "/a.bin", put))
        refused = yield in_thread(anonymous.read_to_close)
        self.assertTrue(refused.startswith(b"HTTP/1.1 401 "), refused)
        self.assertNotIn(b"100 Continue", refused)
        self.assertIn(
            b'WWW-Authenticate: Basic realm="cosgw", charset="UTF-8"', refused
        )
        reader = self.raw()
        headers = {**put, "Authorization": basic("reader", READER_PASSWORD)}
        yield in_thread(reader.send, head_request("PUT", "/a.bin", headers))
        forbidden = yield in_thread(reader.read_to_close)
        self.assertTrue(forbidden.startswith(b"HTTP/1.1 403 "), forbidden)
        self.assertNotIn(b"100 Continue", forbidden)
        allowed = self.raw()
        headers = {
            "Content-Length": "5",
            "Expect": "100-continue",
            "Authorization": ALICE,
        }
        yield in_thread(allowed.send, head_request("PUT", "/a.bin", headers))
        go_on = yield in_thread(allowed.read_head)
        self.assertEqual(go_on, b"HTTP/1.1 100 Continue")
        yield in_thread(allowed.send, b"hello")
        done = yield in_thread(allowed.read_head)
        self.assertEqual(status_of(done), 201, done)
        self.assertEqual(self.gw.inspector.keys(), ["a.bin"])
        self.assertEqual(self.gw.inspector.read("a.bin"), b"hello")

    @defer.inlineCallbacks
    def test_refused_put_with_body_in_flight_has_its_challenge(self) -> Any:
        """A PUT without credentials, its body half sent: 401 + challenge, closed."""
        yield self.start("local")
        cut = self.raw()
        head = head_request("PUT", "/b.bin", {"Content-Length": "1000000"})
        yield in_thread(cut.send, head + b"x" * 1000)
        answer = yield in_thread(cut.read_to_close)
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer)
        self.assertIn(b"WWW-Authenticate: Basic", answer)
        self.assertEqual(self.gw.inspector.keys(), [])


class MalformedTests(DAVCase):
    @defer.inlineCallbacks
    def test_oversized_many_and_broken_headers_are_answered(self) -> Any:
        """
        431 (a 20 kB header, 600 headers) and 400 (a broken request line,
        a bad Content-Length) with a reason, not a silent or bare close;
        the gateway keeps serving.
        """
        yield self.start("local")
        cases = [
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
            (
                b"GET / HTTP/1.1\r\n"
                + b"".join(b"X-%d: 1\r\n" % i for i in range(600))
                + b"\r\n",
                431,
            ),
            (b"NONSENSE\r\n\r\n", 400),
            (b"PUT /x HTTP/1.1\r\nContent-Length: many\r\n\r\n", 400),
        ]
        for data, status in cases:
            raw = self.raw()
            yield in_thread(raw.send, data)
            answer = yield in_thread(raw.read_to_close)
            self.assertEqual(status_of(answer), status, answer[:200])
            self.assertIn(b"Content-Type: text/plain", answer)
        fine = yield self.client().request("PROPFIND", "/", headers={"Depth": "0"})
        self.assertEqual(fine.status, 207)
        yield until(lambda: len(self.events("session-close")) >= 4, "the closes")
        reasons = [e.get("reason", "") for e in self.events("session-close")]
        self.assertTrue(any("over 16384 bytes" in r for r in reasons), reasons)

    @defer.inlineCallbacks
    def test_absolute_form_target(self) -> Any:
        """RFC 9112 3.2.2: GET http://host/path is GET /path."""
        yield self.start("local")
        dav = self.client()
        yield dav.request("PUT", "/f.txt", b"abc")
        got = yield dav.request("GET", f"http://127.0.0.1:{self.port}/f.txt")
        self.assertEqual((got.status, got.body), (200, b"abc"))


class BrowserTests(DAVCase):
    @defer.inlineCallbacks
    def test_collection_page_is_escaped_and_streamed(self) -> Any:
        """
        A browser's GET of a collection: an HTML page of its members, each
        name escaped and linked by its percent-encoded path; HEAD has the
        same headers; a stored HTML file is served sandboxed.
        """
        yield self.start("local")
        dav = self.client()
        evil = '<img src=x onerror="alert(1)">&.txt'
        from urllib.parse import quote

        self.assertEqual((yield dav.request("MKCOL", "/d")).status, 201)
        for name in (evil, "a b+c.txt", "中文.txt"):
            path = "/d/" + quote(name, safe="")
            self.assertEqual((yield dav.request("PUT", path, b"1")).status, 201)
        self.assertEqual((yield dav.request("MKCOL", "/d/sub")).status, 201)
        page = yield dav.request("GET", "/d")
        self.assertEqual(page.status, 200, page)
        self.assertEqual(page.headers["Content-Type"], "text/html; charset=utf-8")
        self.assertIn("default-src 'none'", page.headers["Content-Security-Policy"])
        text = page.body.decode("utf-8")
        self.assertNotIn("<img", text)
        self.assertIn("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;.txt", text)
        self.assertIn(
            'href="/d/%3Cimg%20src=x%20onerror=%22alert(1)%22%3E&amp;.txt"', text
        )
        self.assertIn('href="/d/a%20b+c.txt">a b+c.txt</a>', text)
        self.assertIn('href="/d/%E4%B8%AD%E6%96%87.txt">中文.txt</a>', text)
        self.assertIn('href="/d/sub/">sub/</a>', text)
        self.assertIn('href="/">../</a>', text)
        head = yield dav.request("HEAD", "/d/")
        self.assertEqual(head.status, 200)
        for name in (
            "Content-Type",
            "Content-Security-Policy",
            "X-Content-Type-Options",
        ):
            self.assertEqual(head.headers[name], page.headers[name], name)
        yield dav.request("PUT", "/d/page.html", b"<script>steal()</script>")
        html = yield dav.request("GET", "/d/page.html")
        self.assertEqual(html.headers["Content-Security-Policy"], "sandbox")
        self.assertEqual(html.headers["X-Content-Type-Options"], "nosniff")
        missing = yield dav.request("GET", "/nothing/")
        self.assertEqual(missing.status, 404)
        self.assertIn("/d", [e["path"] for e in self.events("list")])


class ConditionalTests(DAVCase):
    @defer.inlineCallbacks
    def test_ranges_conditions_and_head(self) -> Any:
        yield self.start("local")
        dav = self.client()
        data = bytes(range(100))
        put = yield dav.request("PUT", "/r.bin", data)
        got = yield dav.request("GET", "/r.bin")
        tag, modified = got.headers["ETag"], got.headers["Last-Modified"]
        self.assertEqual(put.headers["ETag"], tag)
        self.assertRegex(tag, r'^"[0-9a-f]+-[0-9a-f]+"$')

        def get(**headers: str) -> Any:
            return dav.request("GET", "/r.bin", headers=headers)

        same = yield get(Range="bytes=10-19", **{"If-Range": tag})
        self.assertEqual((same.status, same.body), (206, data[10:20]))
        dated = yield get(Range="bytes=10-19", **{"If-Range": modified})
        self.assertEqual(dated.status, 206)
        other = yield get(Range="bytes=10-19", **{"If-Range": '"0-0"'})
        self.assertEqual((other.status, other.body), (200, data))
        stale = yield get(Range="bytes=500-", **{"If-Range": '"0-0"'})
        self.assertEqual((stale.status, stale.body), (200, data))
        for ignored in ("bytes=9-3", "bytes=0-1,5-6", "lines=1-2"):
            whole = yield get(Range=ignored)
            self.assertEqual((whole.status, whole.body), (200, data), ignored)
        for unsatisfiable in ("bytes=-0", "bytes=100-"):
            refused = yield get(Range=unsatisfiable)
            self.assertEqual(refused.status, 416, unsatisfiable)
            self.assertEqual(refused.headers["Content-Range"], "bytes */100")
        suffix = yield get(Range="bytes=-1000")
        self.assertEqual((suffix.status, suffix.body), (206, data))
        self.assertEqual(suffix.headers["Content-Range"], "bytes 0-99/100")
        for method in ("GET", "HEAD"):
            cached = yield dav.request(method, "/r.bin", headers={"If-None-Match": tag})
            self.assertEqual((cached.status, cached.body), (304, b""), method)
            self.assertEqual(cached.headers["ETag"], tag)
            self.assertNotIn("Content-Length", cached.headers)
            since = yield dav.request(
                method, "/r.bin", headers={"If-Modified-Since": modified}
            )
            self.assertEqual(since.status, 304, method)
            failed = yield dav.request(method, "/r.bin", headers={"If-Match": '"0-0"'})
            self.assertEqual(failed.status, 412, method)
        head = yield dav.request("HEAD", "/r.bin")
        for name in (
            "ETag",
            "Last-Modified",
            "Content-Type",
            "Content-Length",
            "Accept-Ranges",
            "Content-Security-Policy",
        ):
            self.assertEqual(head.headers[name], got.headers[name], name)
        deleted = yield dav.request("DELETE", "/r.bin")
        self.assertEqual(deleted.status, 204)
        self.assertNotIn("Content-Length", deleted.headers)
        # A 304 opened no download: one download, the first GET's ... and
        # the ranged and whole ones above.
        downloads = self.events("download")
        self.assertNotIn(0, [e["bytes"] for e in downloads if e["outcome"] == "ok"])


class LimitTests(DAVCase):
    @defer.inlineCallbacks
    def test_login_timeout_cuts_a_slow_header_trickle(self) -> Any:
        """Headers sent a byte at a time never log in: cut at login_timeout."""
        yield self.start("local", login_timeout=1)
        raw = self.raw()
        started = reactor.seconds()
        yield in_thread(raw.send, b"PROPFIND / HTTP/1.1\r\nX-Pad: ")
        loop = task.LoopingCall(_send_quietly, raw, b"a")
        loop.clock = reactor
        loop.start(0.1)
        try:
            yield until(lambda: self.events("session-close"), "the cut", bound=30)
        finally:
            loop.stop()
        self.assertLess(reactor.seconds() - started, 20)
        [closed] = self.events("session-close")
        self.assertIn("login timeout", closed["reason"])

    @defer.inlineCallbacks
    def test_connections_per_address_are_limited(self) -> Any:
        yield self.start("local", max_connections_per_ip=2)
        held = [self.raw(), self.raw()]
        yield until(lambda: self.gw.service.limits.total == 2, "two admitted")
        third = self.raw()
        answer = yield in_thread(third.read_to_close)
        self.assertEqual(status_of(answer), 503, answer)
        for raw in held:
            raw.close()
        yield until(lambda: self.gw.service.limits.total == 0, "the closes")
        fine = yield self.client().request("PROPFIND", "/", headers={"Depth": "0"})
        self.assertEqual(fine.status, 207)

    @defer.inlineCallbacks
    def test_propfind_of_20000_entries_streams(self) -> Any:
        """
        A 20,000-entry collection's depth-1 PROPFIND to a slow reader: every
        entry arrives, and what the gateway holds for the connection stays
        far below the 15 MB answer.
        """
        yield self.start("local")
        big = self.gw.inspector.root / "big"
        big.mkdir(parents=True)
        for i in range(20000):
            (big / f"file-{i:05d}-{'x' * 40}.txt").touch()
        raw = self.raw()
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        headers = {"Depth": "1", "Authorization": ALICE}
        yield in_thread(raw.send, head_request("PROPFIND", "/big/", headers))
        peak = [0]

        def sample() -> None:
            for channel in self.gw.service.webdav.site.connections:
                t = channel.transport
                held = len(t.dataBuffer) + t._tempDataLen
                peak[0] = max(peak[0], held)

        loop = task.LoopingCall(sample)
        loop.clock = reactor
        loop.start(0.01)

        def read_slowly() -> bytes:
            head = raw.read_head()
            assert status_of(head) == 207, head
            body = bytearray(raw.buffer)
            while not body.endswith(b"0\r\n\r\n"):
                data = raw.sock.recv(16384)
                if not data:
                    break
                body += data
            return bytes(body)

        try:
            chunked = yield in_thread(read_slowly)
        finally:
            loop.stop()
        body = _dechunk(chunked)
        self.assertGreater(len(body), 15_000_000)
        root = ET.fromstring(body)
        self.assertEqual(len(root.findall("{DAV:}response")), 20001)
        self.assertLess(peak[0], 3 * 1024 * 1024, "bytes held for one client")


def _ask_from(port: int, auth: str, source: str = "192.0.2.7") -> bytes:
    """A PROPFIND from C{source}, as a PROXY header tells the gateway."""
    header = v1_header((source, 40000), ("127.0.0.1", port))
    raw = Raw(port, proxied_socket(port, header))
    try:
        headers = {"Depth": "0", "Authorization": auth, "Connection": "close"}
        raw.send(head_request("PROPFIND", "/", headers))
        return raw.read_to_close()
    finally:
        raw.close()


class PlainPasswordTests(DAVCase):
    @defer.inlineCallbacks
    def test_plain_http_password_from_elsewhere_is_refused(self) -> Any:
        """
        A client at 192.0.2.7 (a PROXY header from a trusted balancer says
        so) sending a password over plain HTTP: 403 with the reason, and
        no login is tried.
        """
        yield self.start(
            "local", webdav_listen=("tcp:0:interface=127.0.0.1:proxy_protocol=yes",)
        )
        refused = yield in_thread(_ask_from, self.port, ALICE)
        self.assertEqual(status_of(refused), 403, refused)
        self.assertIn(b"connect with HTTPS", refused)
        yield until(lambda: self.events("session-close"), "the close")
        self.assertEqual(self.events("login", "login-failed"), [])
        [closed] = self.events("session-close")
        self.assertEqual(closed["client_ip"], "192.0.2.7")
        self.assertIn("plain HTTP refused", closed["reason"])

    @defer.inlineCallbacks
    def test_allowed_plain_passwords_count_toward_a_ban(self) -> Any:
        """
        With webdav_allow_plain_auth, wrong passwords from 192.0.2.7 are
        401s with the challenge and count: the third try, right or not,
        is refused; loopback is not banned with it.
        """
        yield self.start(
            "local",
            webdav_listen=(
                "tcp:0:interface=127.0.0.1:proxy_protocol=yes",
                "tcp:0:interface=127.0.0.1",
            ),
            webdav_allow_plain_auth=True,
            login_max_failures=2,
            login_ban_time=60,
        )
        wrong = basic("alice", "wrong")
        for _ in range(2):
            answer = yield in_thread(_ask_from, self.port, wrong)
            self.assertEqual(status_of(answer), 401, answer)
            self.assertIn(b'Basic realm="cosgw", charset="UTF-8"', answer)
        banned = yield in_thread(_ask_from, self.port, ALICE)
        self.assertEqual(status_of(banned), 403, banned)
        failed = self.events("login-failed")
        self.assertGreaterEqual(len(failed), 2)
        self.assertEqual({e["client_ip"] for e in failed}, {"192.0.2.7"})
        local = self.client()
        local.connection.port = self.ports[1]
        fine = yield local.request("PROPFIND", "/", headers={"Depth": "0"})
        self.assertEqual(fine.status, 207)


class AdminViewTests(DAVCase):
    @defer.inlineCallbacks
    def test_sessions_api_and_metrics_show_webdav(self) -> Any:
        """
        /api/sessions lists a WebDAV session with its user and address;
        the metrics have webdav and webdavs series, at 0 when none is open.
        """
        yield self.start("local", admin_listen="tcp:0:interface=127.0.0.1")
        port = self.gw.admin_port
        before = yield in_thread(admin_request, port, "/metrics")
        scrape = samples(before.text)
        for protocol in ("webdav", "webdavs"):
            self.assertIn(("cosgw_sessions", (("protocol", protocol),)), scrape)
            self.assertEqual(value(scrape, "cosgw_sessions", protocol=protocol), 0)
        dav = self.client()
        yield dav.request("PROPFIND", "/", headers={"Depth": "0"})
        answer = yield in_thread(admin_request, port, "/api/sessions")
        [listed] = json.loads(answer.body)["sessions"]
        self.assertEqual(
            (listed["protocol"], listed["user"], listed["client_ip"]),
            ("webdav", "alice", "127.0.0.1"),
        )
        self.assertEqual(listed["client_port"], dav.local_port)
        during = yield in_thread(admin_request, port, "/metrics")
        scrape = samples(during.text)
        self.assertEqual(value(scrape, "cosgw_sessions", protocol="webdav"), 1)
        self.assertEqual(value(scrape, "cosgw_sessions", protocol="webdavs"), 0)


def _send_quietly(raw: Raw, data: bytes) -> None:
    try:
        raw.send(data)
    except OSError:
        pass


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    position = 0
    while True:
        end = data.index(b"\r\n", position)
        size = int(data[position:end], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        position = end + 2 + size + 2
