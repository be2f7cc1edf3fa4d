"""
WebDAV end to end: real clients (curl, rclone, http.client) against a real
listener, the store read directly to see what is really there, and the
audit events as an operator's observer sees them.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from typing import Any

from twisted.internet import defer

from tests.davtesting import DAVCase, until
from tests.harness import PASSWORD, MiB, in_thread, plain_user, random_bytes


def _tree(root: Any) -> dict[str, str]:
    """Every file below C{root}, by relative path, with its SHA-256."""
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            with open(path, "rb") as f:
                found[rel] = hashlib.sha256(f.read()).hexdigest()
    return found


class FileTests(DAVCase):
    @defer.inlineCallbacks
    def test_put_get_range_head_and_events(self) -> Any:
        """PUT then GET whole and ranged, HEAD; 416; the audit events."""
        yield self.start("cos")
        data = random_bytes(3 * MiB + 17)
        dav = self.client()
        put = yield dav.request("PUT", "/a%20b.bin", data)
        self.assertEqual(put.status, 201, put)
        self.assertEqual(self.gw.inspector.read("a b.bin"), data)
        again = yield dav.request("PUT", "/a%20b.bin", data[:10])
        self.assertEqual(again.status, 204, again)
        yield dav.request("PUT", "/a%20b.bin", data)
        whole = yield dav.request("GET", "/a%20b.bin")
        self.assertEqual((whole.status, whole.body), (200, data))
        part = yield dav.request("GET", "/a%20b.bin", headers={"Range": "bytes=5-99"})
        self.assertEqual((part.status, part.body), (206, data[5:100]))
        self.assertEqual(part.headers["Content-Range"], f"bytes 5-99/{len(data)}")
        tail = yield dav.request("GET", "/a%20b.bin", headers={"Range": "bytes=-7"})
        self.assertEqual((tail.status, tail.body), (206, data[-7:]))
        rest = yield dav.request(
            "GET", "/a%20b.bin", headers={"Range": f"bytes={len(data) - 3}-"}
        )
        self.assertEqual((rest.status, rest.body), (206, data[-3:]))
        beyond = yield dav.request(
            "GET", "/a%20b.bin", headers={"Range": f"bytes={len(data)}-"}
        )
        self.assertEqual(beyond.status, 416, beyond)
        self.assertEqual(beyond.headers["Content-Range"], f"bytes */{len(data)}")
        head = yield dav.request("HEAD", "/a%20b.bin")
        self.assertEqual(head.status, 200)
        self.assertEqual(head.headers["Content-Length"], str(len(data)))
        self.assertEqual(head.headers["ETag"], whole.headers["ETag"])
        unchanged = yield dav.request(
            "GET", "/a%20b.bin", headers={"If-None-Match": whole.headers["ETag"]}
        )
        self.assertEqual(unchanged.status, 304)
        missing = yield dav.request("GET", "/nothing")
        self.assertEqual(missing.status, 404)
        dav.close()
        yield until(lambda: self.events("session-close"), "the session's close")
        uploads = self.events("upload")
        self.assertEqual([e["bytes"] for e in uploads], [len(data), 10, len(data)])
        self.assertEqual({e["protocol"] for e in uploads}, {"webdav"})
        self.assertEqual({e["user"] for e in uploads}, {"alice"})
        downloads = [e for e in self.events("download") if e["outcome"] == "ok"]
        self.assertEqual(
            [e["bytes"] for e in downloads], [len(data), 95, 7, 3], downloads
        )

    @defer.inlineCallbacks
    def test_collections_copy_move_delete_and_events(self) -> Any:
        yield self.start("local")
        dav = self.client()
        self.assertEqual((yield dav.request("MKCOL", "/d")).status, 201)
        self.assertEqual((yield dav.request("MKCOL", "/d")).status, 405)
        self.assertEqual((yield dav.request("MKCOL", "/x/y")).status, 409)
        self.assertEqual((yield dav.request("PUT", "/x/f", b"1")).status, 409)
        self.assertEqual((yield dav.request("PUT", "/d/f", b"hello")).status, 201)
        self.assertEqual((yield dav.request("MKCOL", "/d/e")).status, 201)
        self.assertEqual((yield dav.request("PUT", "/d/e/g", b"world")).status, 201)
        copy = yield dav.request("COPY", "/d/", headers={"Destination": "/c/"})
        self.assertEqual(copy.status, 201, copy)
        self.assertEqual(self.gw.inspector.read("c/e/g"), b"world")
        exists = yield dav.request(
            "COPY", "/d/f", headers={"Destination": "/c/f", "Overwrite": "F"}
        )
        self.assertEqual(exists.status, 412)
        move = yield dav.request("MOVE", "/c/", headers={"Destination": "/m/"})
        self.assertEqual(move.status, 201, move)
        gone = yield dav.request("DELETE", "/d/")
        self.assertEqual(gone.status, 204)
        self.assertEqual(
            self.gw.inspector.keys(), ["m/", "m/e/", "m/e/g", "m/f"], "store"
        )
        infinite = yield dav.request("PROPFIND", "/", headers={"Depth": "infinity"})
        self.assertEqual(infinite.status, 403)
        self.assertIn(b"propfind-finite-depth", infinite.body)
        listing = yield dav.request("PROPFIND", "/m/", headers={"Depth": "1"})
        self.assertEqual(listing.status, 207)
        for href in (b"<D:href>/m/</D:href>", b"/m/e/<", b"/m/f<"):
            self.assertIn(href, listing.body)
        dav.close()
        yield until(lambda: self.events("session-close"), "the session's close")
        self.assertEqual(
            [(e["path"], e.get("path_to")) for e in self.events("copy")],
            [("/d/e/g", "/c/e/g"), ("/d/f", "/c/f")],
        )
        self.assertEqual([e["outcome"] for e in self.events("copy")], ["ok", "ok"])
        self.assertEqual(
            [(e["path"], e["path_to"]) for e in self.events("rename")],
            [("/c", "/m")],
        )
        self.assertEqual(
            sorted(e["path"] for e in self.events("delete")), ["/d/e/g", "/d/f"]
        )
        self.assertIn("/d", [e["path"] for e in self.events("rmdir")])
        self.assertIn("/m", [e["path"] for e in self.events("list")])

    @defer.inlineCallbacks
    def test_proppatch_sets_time_like_mfmt(self) -> Any:
        yield self.start("local")
        dav = self.client()
        yield dav.request("PUT", "/t.txt", b"x")
        body = (
            b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:"'
            b' xmlns:Z="urn:schemas-microsoft-com:"><D:set><D:prop>'
            b"<Z:Win32LastModifiedTime>Wed, 01 Jan 2020 10:00:00 GMT"
            b"</Z:Win32LastModifiedTime></D:prop></D:set></D:propertyupdate>"
        )
        patch = yield dav.request("PROPPATCH", "/t.txt", body)
        self.assertEqual(patch.status, 207)
        self.assertIn(b"200 OK", patch.body)
        head = yield dav.request("HEAD", "/t.txt")
        self.assertEqual(head.headers["Last-Modified"], "Wed, 01 Jan 2020 10:00:00 GMT")
        self.assertEqual([e["path"] for e in self.events("mtime")], ["/t.txt"])
        doctype = yield dav.request(
            "PROPFIND",
            "/",
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
            {"Depth": "0"},
        )
        self.assertEqual(doctype.status, 400)
        large = yield dav.request("PROPFIND", "/", b"<" * (1024 * 1024 + 1))
        self.assertEqual(large.status, 413)


class RuleTests(DAVCase):
    @defer.inlineCallbacks
    def test_read_only_user_and_quota(self) -> Any:
        users = {
            "alice": plain_user("alice", quota_bytes=1000),
            "reader": plain_user(
                "reader",
                password="reader-pass",
                permissions=frozenset({"list", "download"}),
            ),
        }
        yield self.start("local", users=users)
        reader = self.client("reader", "reader-pass")
        refused = yield reader.request("PUT", "/r.txt", b"data")
        self.assertEqual(refused.status, 403, refused)
        alice = self.client()
        full = yield alice.request("PUT", "/big", b"z" * 5000)
        self.assertEqual(full.status, 507, full)
        self.assertEqual(self.gw.inspector.keys(), [])
        self.assertEqual(self.gw.inspector.pending_uploads(), [])
        fits = yield alice.request("PUT", "/small", b"z" * 600)
        self.assertEqual(fits.status, 201)
        copy = yield alice.request("COPY", "/small", headers={"Destination": "/c"})
        self.assertEqual(copy.status, 507, copy)
        wrong = self.client("alice", "wrong")
        denied = yield wrong.request("PROPFIND", "/", headers={"Depth": "0"})
        self.assertEqual(denied.status, 401)
        self.assertIn("Basic", denied.headers["WWW-Authenticate"])

    @defer.inlineCallbacks
    def test_banned_address_is_refused_even_when_logged_in(self) -> Any:
        yield self.start("local", login_max_failures=2, login_ban_time=60)
        known = self.client()
        ok = yield known.request("PROPFIND", "/", headers={"Depth": "0"})
        self.assertEqual(ok.status, 207)
        for _ in range(2):
            wrong = self.client("alice", "wrong")
            reply = yield wrong.request("PROPFIND", "/", headers={"Depth": "0"})
            self.assertEqual(reply.status, 401)
        banned = yield self.client().request("PROPFIND", "/", headers={"Depth": "0"})
        self.assertEqual(banned.status, 403, banned)
        self.assertIn(b"too many failed logins", banned.body.lower())
        # The connection that logged in before the ban is refused as well.
        again = yield known.request("PROPFIND", "/", headers={"Depth": "0"})
        self.assertEqual(again.status, 403, again)


class StreamTests(DAVCase):
    @defer.inlineCallbacks
    def test_cut_put_leaves_nothing(self) -> Any:
        """curl killed mid-upload: no object, no multipart upload left."""
        yield self.start("cos")
        source = self.work / "big.bin"
        source.write_bytes(random_bytes(8 * MiB))
        curl = subprocess.Popen(
            [
                "curl", "-s", "-T", str(source), "--limit-rate", "1M",
                "-u", f"alice:{PASSWORD}", f"{self.url}/cut.bin",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.addCleanup(lambda: curl.poll() is None and curl.kill())

        def receiving() -> bool:
            return any(t.bytes > MiB for t in self.gw.service.sessions.transfers())

        yield until(receiving, "the upload under way")
        os.kill(curl.pid, signal.SIGKILL)
        yield in_thread(curl.wait, 30)
        yield until(lambda: self.events("abort"), "the upload's abort")
        yield until(
            lambda: not self.gw.inspector.pending_uploads(), "the multipart abort"
        )
        self.assertEqual(self.gw.inspector.keys(), [])
        [abort] = self.events("abort")
        self.assertEqual((abort["path"], abort["protocol"]), ("/cut.bin", "webdav"))

    @defer.inlineCallbacks
    def test_big_put_and_get_keep_memory_bounded(self) -> Any:
        """64 MiB up and down with curl; the gateway's memory grows far less."""
        yield self.start("local", part_size=MiB, parts_in_flight=2)
        size = 64 * MiB
        source = self.work / "in.bin"
        with open(source, "wb") as f:
            for _ in range(size // MiB):
                f.write(random_bytes(MiB))
        peak = [_rss()]
        base = peak[0]
        watch = _watch(peak)
        try:
            put = yield self.run_tool(
                [
                    "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                    "-T", str(source), "-u", f"alice:{PASSWORD}",
                    f"{self.url}/big.bin",
                ]
            )  # fmt: skip
            self.assertEqual(put.stdout, "201", put.stderr)
            get = yield self.run_tool(
                [
                    "curl", "-sS", "-o", str(self.work / "out.bin"),
                    "-u", f"alice:{PASSWORD}", f"{self.url}/big.bin",
                ]
            )  # fmt: skip
            self.assertEqual(get.returncode, 0, get.stderr)
        finally:
            watch.stop()
        self.assertEqual(_tree(self.work)["out.bin"], _tree(self.work)["in.bin"])
        self.assertLess(peak[0] - base, 40 * MiB, "gateway memory grew")

    @defer.inlineCallbacks
    def test_https_with_the_ftps_certificate(self) -> Any:
        yield self.start("local", webdav_listen=("ssl:0:interface=127.0.0.1",))
        url = f"https://127.0.0.1:{self.port}"
        (self.work / "f.txt").write_bytes(b"secret bytes")
        put = yield self.run_tool(
            ["curl", "-sSk", "-T", "f.txt", "-u", f"alice:{PASSWORD}", f"{url}/f.txt"]
        )
        self.assertEqual(put.returncode, 0, put.stderr)
        get = yield self.run_tool(
            ["curl", "-sSk", "-u", f"alice:{PASSWORD}", f"{url}/f.txt"]
        )
        self.assertEqual(get.stdout, "secret bytes")
        yield until(lambda: len(self.events("session-close")) == 2, "two closes")
        self.assertEqual(
            {e["protocol"] for e in self.events("session-open")}, {"webdavs"}
        )

    @defer.inlineCallbacks
    def test_sessions_are_listed_while_open(self) -> Any:
        yield self.start("local")
        dav = self.client()
        yield dav.request("PROPFIND", "/", headers={"Depth": "0"})
        [session] = self.gw.service.sessions.sessions.values()
        self.assertEqual(
            (session.protocol, session.user, session.port),
            ("webdav", "alice", dav.local_port),
        )
        dav.close()
        yield until(lambda: not self.gw.service.sessions.sessions, "the close")


class RcloneTests(DAVCase):
    @defer.inlineCallbacks
    def test_rclone_copies_both_ways_and_checks(self) -> Any:
        yield self.start("cos")
        tree = self.work / "tree"
        (tree / "sub" / "deeper").mkdir(parents=True)
        for i, name in enumerate(
            ["a.txt", "sub/b.bin", "sub/deeper/c.bin", "中文.txt"]
        ):
            (tree / name).write_bytes(random_bytes(1000 * (i + 1) + 3 * MiB * (i == 2)))
        config = str(self.rclone_config())
        up = yield self.run_tool(
            ["rclone", "--config", config, "copy", str(tree), "dav:up"], timeout=120
        )
        self.assertEqual(up.returncode, 0, up.stderr)
        check = yield self.run_tool(
            ["rclone", "--config", config, "check", str(tree), "dav:up"], timeout=120
        )
        self.assertEqual(check.returncode, 0, check.stderr)
        down = self.work / "down"
        back = yield self.run_tool(
            ["rclone", "--config", config, "copy", "dav:up", str(down)], timeout=120
        )
        self.assertEqual(back.returncode, 0, back.stderr)
        self.assertEqual(_tree(down), _tree(tree))
        self.assertEqual(
            sorted(k for k in self.gw.inspector.keys("up/") if not k.endswith("/")),
            sorted("up/" + name for name in _tree(tree)),
        )


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _watch(peak: list[int]) -> Any:
    from twisted.internet import reactor, task

    loop = task.LoopingCall(lambda: peak.__setitem__(0, max(peak[0], _rss())))
    loop.clock = reactor
    loop.start(0.05)
    return loop
