"""
What Windows' WebClient (Mini-Redirector), macOS Finder and hostile
clients send, replayed with http.client and raw sockets against a real
listener: the request sequences of saving a file (LOCK, PUT with the If
header, PROPPATCH of the Win32 times, UNLOCK), Finder's chunked PUT with
X-Expected-Entity-Length and its AppleDouble files, COPY and MOVE with
Destinations that must not be followed, and paths that try to leave the
home or reach the gateway's reserved prefix.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from twisted.internet import defer

from cosgw.config import UserConfig
from tests.davtesting import DAVCase, basic, head_request, status_of, until
from tests.harness import PASSWORD, in_thread, plain_user

WIN = {"User-Agent": "Microsoft-WebDAV-MiniRedir/10.0.19045"}
FINDER = {"User-Agent": "WebDAVFS/3.0.0 (03008000) Darwin/22.1.0 (arm64)"}
LOCKINFO = (
    b'<?xml version="1.0" encoding="utf-8" ?><D:lockinfo xmlns:D="DAV:">'
    b"<D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/>"
    b"</D:locktype><D:owner><D:href>WIN\\alice</D:href></D:owner></D:lockinfo>"
)
WIN32_TIMES = (
    b'<?xml version="1.0" encoding="utf-8" ?><D:propertyupdate xmlns:D="DAV:"'
    b' xmlns:Z="urn:schemas-microsoft-com:"><D:set><D:prop>'
    b"<Z:Win32CreationTime>Wed, 01 Jan 2020 09:00:00 GMT</Z:Win32CreationTime>"
    b"<Z:Win32LastAccessTime>Thu, 02 Jan 2020 09:00:00 GMT</Z:Win32LastAccessTime>"
    b"<Z:Win32LastModifiedTime>Wed, 01 Jan 2020 10:00:00 GMT"
    b"</Z:Win32LastModifiedTime><Z:Win32FileAttributes>00000020"
    b"</Z:Win32FileAttributes></D:prop></D:set></D:propertyupdate>"
)


def _users() -> dict[str, UserConfig]:
    """alice and bob share the bucket; reader may only read it."""
    users = {name: plain_user(name) for name in ("alice", "bob")}
    users["reader"] = plain_user("reader", permissions=frozenset({"list", "download"}))
    return users


class WindowsTests(DAVCase):
    @defer.inlineCallbacks
    def test_explorer_saves_a_file(self) -> Any:
        """
        Explorer's sequence: OPTIONS and PROPFIND without credentials, then
        with them; an empty PUT, LOCK, the real PUT with the token, the
        Win32 times, UNLOCK; the file is whole with the time Windows set,
        and another user could not write or delete it while it was locked.
        """
        yield self.start("local", users=_users())
        anonymous = self.client(user="")
        options = yield anonymous.request("OPTIONS", "/", headers=WIN)
        self.assertEqual(options.status, 200)
        self.assertEqual(options.headers["DAV"], "1, 2")
        self.assertIn("LOCK", options.headers["Allow"])
        probe = yield anonymous.request("PROPFIND", "/", headers={"Depth": "0", **WIN})
        self.assertEqual(probe.status, 401)
        self.assertEqual(
            probe.headers["WWW-Authenticate"], 'Basic realm="cosgw", charset="UTF-8"'
        )
        win = self.client()
        listed = yield win.request("PROPFIND", "/", headers={"Depth": "0", **WIN})
        self.assertEqual(listed.status, 207)
        yield win.request("MKCOL", "/Docs%20%2B%20more", headers=WIN)
        path = "/Docs%20%2B%20more/" + quote("报告 1+1.docx")
        empty = yield win.request("PUT", path, b"", WIN)
        self.assertEqual(empty.status, 201)
        locked = yield win.request(
            "LOCK", path, LOCKINFO, {"Timeout": "Second-3600", **WIN}
        )
        self.assertEqual(locked.status, 200, locked)
        token = locked.headers["Lock-Token"]
        bob = self.client("bob")
        blocked = yield bob.request("PUT", path, b"bob's")
        self.assertEqual(blocked.status, 423)
        kept = yield bob.request("DELETE", "/Docs%20%2B%20more/")
        self.assertEqual(kept.status, 423)
        steal = yield bob.request("UNLOCK", path, headers={"Lock-Token": token})
        self.assertEqual(steal.status, 403)
        content = b"the real document " * 1000
        saved = yield win.request("PUT", path, content, {"If": f"({token})", **WIN})
        self.assertEqual(saved.status, 204, saved)
        patched = yield win.request(
            "PROPPATCH", path, WIN32_TIMES, {"If": f"({token})", **WIN}
        )
        self.assertEqual(patched.status, 207)
        self.assertNotIn(b"HTTP/1.1 4", patched.body)
        gone = yield win.request("UNLOCK", path, headers={"Lock-Token": token, **WIN})
        self.assertEqual(gone.status, 204)
        head = yield win.request("HEAD", path, headers=WIN)
        self.assertEqual(head.headers["Last-Modified"], "Wed, 01 Jan 2020 10:00:00 GMT")
        listing = yield win.request("PROPFIND", path, headers={"Depth": "0", **WIN})
        self.assertIn(b"Wed, 01 Jan 2020 10:00:00 GMT", listing.body)
        got = yield win.request("GET", path, headers={"Translate": "f", **WIN})
        self.assertEqual(got.body, content)
        self.assertEqual(
            self.gw.inspector.read("Docs + more/报告 1+1.docx"), content, "store"
        )
        self.assertEqual(self.gw.inspector.pending_uploads(), [])
        deleted = yield bob.request("DELETE", "/Docs%20%2B%20more/")
        self.assertEqual(deleted.status, 204)
        for client in (anonymous, win, bob):
            client.close()
        # Every connection's session closes (a client may have opened more
        # than one: it reconnects when the gateway closes after an answer).
        sessions = self.gw.service.sessions
        assert sessions is not None
        yield until(lambda: not sessions.sessions, "the closes")
        self.assertGreaterEqual(len(self.events("session-close")), 3)
        uploads = [(e["path"], e["outcome"]) for e in self.events("upload")]
        name = "/Docs + more/报告 1+1.docx"
        self.assertEqual(uploads, [(name, "ok"), (name, "ok")])
        self.assertEqual([e["path"] for e in self.events("mtime")], [name])
        self.assertEqual([e["user"] for e in self.events("delete")], ["bob"])

    @defer.inlineCallbacks
    def test_lock_needs_the_write_permission(self) -> Any:
        """A read-only user cannot lock others out of a file for an hour."""
        yield self.start("local", users=_users())
        yield self.client().request("PUT", "/shared.txt", b"x")
        reader = self.client("reader")
        refused = yield reader.request("LOCK", "/shared.txt", LOCKINFO)
        self.assertEqual(refused.status, 403, refused)
        self.assertEqual(len(self.gw.service.webdav.dav.locks), 0)
        written = yield self.client("bob").request("PUT", "/shared.txt", b"y")
        self.assertEqual(written.status, 204)

    @defer.inlineCallbacks
    def test_propfind_without_depth(self) -> Any:
        """No Depth means infinity: a file's is depth 0, a collection's 403."""
        yield self.start("local")
        dav = self.client()
        yield dav.request("PUT", "/f.txt", b"abc")
        on_file = yield dav.request("PROPFIND", "/f.txt")
        self.assertEqual(on_file.status, 207, on_file)
        self.assertIn(b"<D:getcontentlength>3</D:getcontentlength>", on_file.body)
        on_collection = yield dav.request("PROPFIND", "/")
        self.assertEqual(on_collection.status, 403)
        self.assertIn(b"propfind-finite-depth", on_collection.body)


class FinderTests(DAVCase):
    @defer.inlineCallbacks
    def test_finder_chunked_put_and_appledouble(self) -> Any:
        """
        Finder's PUT: chunked, with X-Expected-Entity-Length (the upload's
        size while it runs), then its ._ AppleDouble file and .DS_Store;
        a MOVE without Overwrite replaces.
        """
        yield self.start("local")
        raw = self.raw()
        headers = {
            "Authorization": basic("alice", PASSWORD),
            "Transfer-Encoding": "chunked",
            "X-Expected-Entity-Length": "11",
            **FINDER,
        }
        yield in_thread(raw.send, head_request("PUT", "/photo.jpg", headers))
        yield in_thread(raw.send, b"5\r\nhello\r\n")

        def running() -> bool:
            return any(t.size == 11 for t in self.gw.service.sessions.transfers())

        yield until(running, "the upload with its announced size")
        yield in_thread(raw.send, b"6\r\n world\r\n0\r\n\r\n")
        done = yield in_thread(raw.read_head)
        self.assertEqual(status_of(done), 201, done)
        self.assertEqual(self.gw.inspector.read("photo.jpg"), b"hello world")
        finder = self.client()
        for name in ("._photo.jpg", ".DS_Store"):
            stored = yield finder.request(
                "PUT", "/" + name, b"\x00\x05\x16\x07", FINDER
            )
            self.assertEqual(stored.status, 201, name)
        missing = yield finder.request("PROPFIND", "/._other", headers={"Depth": "0"})
        self.assertEqual(missing.status, 404)
        moved = yield finder.request(
            "MOVE", "/._photo.jpg", headers={"Destination": "/.DS_Store", **FINDER}
        )
        self.assertEqual(moved.status, 204)
        self.assertEqual(
            self.gw.inspector.keys(), [".DS_Store", "photo.jpg"], "the store"
        )

    @defer.inlineCallbacks
    def test_tagged_if_header_with_the_absolute_url(self) -> Any:
        """Finder names the locked resource by its absolute URL in If."""
        yield self.start("local")
        dav = self.client()
        locked = yield dav.request("LOCK", "/new.txt", LOCKINFO)
        self.assertEqual(locked.status, 201)
        token = locked.headers["Lock-Token"]
        url = f"http://127.0.0.1:{self.port}/new.txt"
        put = yield dav.request(
            "PUT", "/new.txt", b"data", {"If": f"<{url}> ({token})"}
        )
        self.assertEqual(put.status, 204, put)


class CopyMoveTests(DAVCase):
    @defer.inlineCallbacks
    def test_move_or_copy_onto_an_ancestor_loses_nothing(self) -> Any:
        """
        MOVE /p/c to /p (Overwrite: T) would delete /p, and /p/c in it:
        refused, everything kept.  The same for COPY, and for itself.
        """
        yield self.start("local")
        dav = self.client()
        yield dav.request("MKCOL", "/p")
        yield dav.request("MKCOL", "/p/c")
        yield dav.request("PUT", "/p/c/x.txt", b"precious")
        for method in ("MOVE", "COPY"):
            for target in ("/p", "/p/", f"http://127.0.0.1:{self.port}/p/"):
                refused = yield dav.request(
                    method, "/p/c/", headers={"Destination": target, "Overwrite": "T"}
                )
                self.assertEqual(refused.status, 403, (method, target, refused))
            itself = yield dav.request(method, "/p/c", headers={"Destination": "/p/c/"})
            self.assertEqual(itself.status, 403)
            inside = yield dav.request(method, "/p", headers={"Destination": "/p/c/q"})
            self.assertEqual(inside.status, 403)
        self.assertEqual(self.gw.inspector.keys(), ["p/", "p/c/", "p/c/x.txt"])
        self.assertEqual(self.gw.inspector.read("p/c/x.txt"), b"precious")
        self.assertEqual(self.events("delete", "rmdir", "rename", "copy"), [])

    @defer.inlineCallbacks
    def test_destinations_elsewhere_are_refused(self) -> Any:
        """
        Another host, port or scheme: 502 (RFC 4918 9.8.5); dot segments:
        400; the reserved prefix: 403.  Nothing is created.
        """
        yield self.start("local")
        dav = self.client()
        yield dav.request("PUT", "/f.txt", b"abc")
        port = self.port
        for target, status in (
            ("http://evil.example/f2.txt", 502),
            (f"http://127.0.0.1:{port + 1}/f2.txt", 502),
            (f"ftp://127.0.0.1:{port}/f2.txt", 502),
            ("file:///etc/passwd", 502),
            ("/a/../../f2.txt", 400),
            ("/%2e%2e/f2.txt", 400),
            ("/.cosgw/f2.txt", 403),
            ("/%2Ecosgw/mtimes/f2.txt", 403),
        ):
            for method in ("COPY", "MOVE"):
                answer = yield dav.request(
                    method, "/f.txt", headers={"Destination": target}
                )
                self.assertEqual(answer.status, status, (method, target, answer))
        https = yield dav.request(
            "COPY", "/f.txt", headers={"Destination": f"https://127.0.0.1:{port}/g.txt"}
        )
        self.assertEqual(https.status, 201, "a TLS proxy's https URL of this host")
        keys = [k for k in self.gw.inspector.keys() if not k.startswith(".cosgw")]
        self.assertEqual(keys, ["f.txt", "g.txt"])
        exists = yield dav.request(
            "MOVE", "/f.txt", headers={"Destination": "/g.txt", "Overwrite": "F"}
        )
        self.assertEqual(exists.status, 412)


class ConfinementTests(DAVCase):
    @defer.inlineCallbacks
    def test_paths_stay_in_the_home_and_out_of_the_reserved_prefix(self) -> Any:
        """
        Dot segments (plain or escaped), an escaped slash, a backslash,
        NUL, an overlong path: refused or taken literally, never outside
        the home; the reserved prefix is never listed nor reachable, even
        for a user whose home is the whole bucket.
        """
        yield self.start("local", alice_home="home/alice")
        dav = self.client()
        yield dav.request("PUT", "/f.txt", b"mine")
        patch = WIN32_TIMES.replace(b"Win32CreationTime", b"Other")
        yield dav.request("PROPPATCH", "/f.txt", patch)
        self.assertTrue(self.gw.inspector.keys(".cosgw/"), "a time marker is stored")
        for path, status in (
            ("/../f.txt", 400),
            ("/%2e%2e/f.txt", 400),
            ("/%2E%2E%2f..%2Ff.txt", 400),
            ("/a%2f..%2f..%2ff.txt", 400),
            ("/a%00b", 400),
            ("/" + "a/" * 600, 400),
        ):
            answer = yield dav.request("GET", path)
            self.assertEqual(answer.status, status, (path, answer))
        slash = yield dav.request("PUT", "/a%5Cb.txt", b"x")
        self.assertEqual(slash.status, 201)
        self.assertIn("home/alice/a\\b.txt", self.gw.inspector.keys())
        everything = self.client("reader", "reader-pass")
        for method, path in (
            ("PROPFIND", "/.cosgw/"),
            ("GET", "/.cosgw/"),
            ("GET", "/%2Ecosgw/mtimes/"),
            ("DELETE", "/.cosgw"),
        ):
            answer = yield everything.request(method, path, headers={"Depth": "1"})
            self.assertEqual(answer.status, 403, (method, path, answer))
        listing = yield everything.request("PROPFIND", "/", headers={"Depth": "1"})
        self.assertEqual(listing.status, 207)
        self.assertNotIn(b"cosgw", listing.body)
        page = yield everything.request("GET", "/")
        self.assertNotIn(b"cosgw", page.body)
        self.assertEqual(re.findall(rb'href="([^"]+)"', page.body), [b"/home/"])
