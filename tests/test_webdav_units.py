"""
WebDAV's parsers and tables without a network: XML bodies, the Range, If,
Depth, Timeout and Destination headers, the lock and dead property tables,
and the refusal of passwords over plain HTTP.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cosgw.frontends.webdav import locks
from cosgw.frontends.webdav.auth import Authenticator, HTTPError, is_loopback
from cosgw.frontends.webdav.headers import (
    BadHeader,
    ForeignDestination,
    Unsatisfiable,
    href,
    parse_depth,
    parse_destination,
    parse_if,
    parse_overwrite,
    parse_range,
    parse_timeout,
    path_segments,
    range_applies,
    request_path,
    satisfy,
    submitted_tokens,
)
from cosgw.frontends.webdav.locks import (
    DeadProperties,
    LockTable,
    PropertiesFull,
    TooManyLocks,
)
from cosgw.frontends.webdav.xmlbody import (
    BadXML,
    element_xml,
    parse,
    parse_lockinfo,
    parse_propertyupdate,
    parse_propfind,
    response,
)


class XMLTests(SynchronousTestCase):
    def test_propfind_kinds(self) -> None:
        self.assertEqual(parse_propfind(None).kind, "allprop")
        body = (
            b'<?xml version="1.0"?><a:propfind xmlns:a="DAV:"><a:prop>'
            b'<a:getetag/><z:x xmlns:z="urn:z"/></a:prop></a:propfind>'
        )
        find = parse_propfind(parse(body))
        self.assertEqual(find.kind, "prop")
        self.assertEqual(find.names, (("DAV:", "getetag"), ("urn:z", "x")))
        names = parse(b'<propfind xmlns="DAV:"><propname/></propfind>')
        self.assertEqual(parse_propfind(names).kind, "propname")
        self.assertRaises(BadXML, parse_propfind, parse(b"<other/>"))

    def test_doctype_entities_and_depth_refused(self) -> None:
        bomb = b'<!DOCTYPE a [<!ENTITY x "xxxx"><!ENTITY y "&x;&x;">]><a>&y;</a>'
        self.assertRaises(BadXML, parse, bomb)
        external = b'<!DOCTYPE a SYSTEM "file:///etc/passwd"><a/>'
        self.assertRaises(BadXML, parse, external)
        self.assertRaises(BadXML, parse, b"<a>" * 70 + b"</a>" * 70)
        self.assertRaises(BadXML, parse, b"<a><b></a>")
        self.assertIsNone(parse(b"  \n"))

    def test_propertyupdate_keeps_order_and_values(self) -> None:
        body = (
            b'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
            b'<Z:a>one &amp; <Z:b k="v">two</Z:b></Z:a></D:prop></D:set>'
            b"<D:remove><D:prop><Z:c/></D:prop></D:remove></D:propertyupdate>"
        )
        first, second = parse_propertyupdate(parse(body))
        self.assertEqual((first.action, first.name), ("set", ("urn:z", "a")))
        self.assertEqual((second.action, second.name), ("remove", ("urn:z", "c")))
        again = parse(first.value)
        assert again is not None
        self.assertEqual(again.tag, "{urn:z}a")
        self.assertEqual("".join(again.itertext()), "one & two")
        self.assertEqual(again[0].attrib, {"k": "v"})

    def test_empty_namespace_written_standalone(self) -> None:
        element = parse(b'<a xmlns=""><b>t</b></a>')
        assert element is not None
        self.assertEqual(element_xml(element), b'<a xmlns=""><b>t</b></a>')

    def test_lockinfo(self) -> None:
        body = (
            b'<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:shared/></D:lockscope>'
            b"<D:locktype><D:write/></D:locktype><D:owner>me</D:owner></D:lockinfo>"
        )
        info = parse_lockinfo(parse(body))
        assert info is not None
        self.assertEqual(info.scope, "shared")
        self.assertIn(b">me<", info.owner)
        self.assertIsNone(parse_lockinfo(None))
        no_type = b'<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:shared/></D:lockscope></D:lockinfo>'
        self.assertRaises(BadXML, parse_lockinfo, parse(no_type))

    def test_response_escapes(self) -> None:
        out = response("/a&b", [(200, ["<D:x/>"]), (404, [])], description="<no>")
        self.assertIn(b"<D:href>/a&amp;b</D:href>", out)
        self.assertIn(b"HTTP/1.1 200 OK", out)
        self.assertNotIn(b"404", out)
        self.assertIn(b"&lt;no&gt;", out)


class HeaderTests(SynchronousTestCase):
    def test_ranges(self) -> None:
        self.assertEqual(parse_range("bytes=0-99"), (0, 99))
        self.assertEqual(parse_range("bytes=-5"), (None, 5))
        self.assertEqual(parse_range("bytes=7-"), (7, None))
        self.assertIsNone(parse_range("bytes=0-1,5-6"))
        self.assertIsNone(parse_range("items=0-1"))
        # An invalid range is ignored (RFC 9110 14.2): the whole file.
        self.assertIsNone(parse_range("bytes=9-3"))
        chosen = satisfy((5, 1000), 100)
        self.assertEqual((chosen.start, chosen.end, chosen.length), (5, 99, 95))
        self.assertEqual(chosen.content_range(), "bytes 5-99/100")
        self.assertEqual(satisfy((None, 500), 100).start, 0)
        self.assertRaises(Unsatisfiable, satisfy, (100, None), 100)
        self.assertRaises(Unsatisfiable, satisfy, (None, 0), 100)
        self.assertRaises(Unsatisfiable, satisfy, (None, 3), 0)

    def test_if_header(self) -> None:
        lists = parse_if(
            '<http://h/a/b> (<opaquelocktoken:1> ["e1"]) (Not <DAV:no-lock>)'
        )
        self.assertEqual([lst.resource for lst in lists], [["a", "b"], ["a", "b"]])
        first = lists[0].conditions
        self.assertEqual((first[0].token, first[1].etag), ("opaquelocktoken:1", '"e1"'))
        self.assertTrue(lists[1].conditions[0].negated)
        self.assertEqual(submitted_tokens(lists), {"opaquelocktoken:1", "DAV:no-lock"})
        for bad in ("", "(", "()", "x", "(<a>", "(<a> [b)"):
            self.assertRaises(BadHeader, parse_if, bad)

    def test_if_range(self) -> None:
        """A range is served only for the version If-Range names."""
        tag, when = '"64-5"', 1_600_000_000.4
        self.assertTrue(range_applies(None, tag, when))
        self.assertTrue(range_applies('"64-5"', tag, when))
        self.assertFalse(range_applies('"64-6"', tag, when))
        self.assertFalse(range_applies('W/"64-5"', tag, when))
        self.assertTrue(range_applies("Sun, 13 Sep 2020 12:26:40 GMT", tag, when))
        self.assertFalse(range_applies("Sun, 13 Sep 2020 12:26:41 GMT", tag, when))
        self.assertFalse(range_applies("garbage", tag, when))

    def test_destination_on_another_server(self) -> None:
        """Another host or scheme is a 502, never a place in this home."""
        host = "gw.example:8080"
        self.assertEqual(parse_destination("http://gw.example:8080/a", host), ["a"])
        self.assertEqual(parse_destination("https://GW.example/a", host), ["a"])
        self.assertEqual(parse_destination("/a/b/", host), ["a", "b"])
        for foreign in (
            "http://evil.example/a",
            "http://gw.example:9090/a",
            "ftp://gw.example:8080/a",
            "file:///etc/passwd",
        ):
            self.assertRaises(ForeignDestination, parse_destination, foreign, host)
        self.assertRaises(BadHeader, parse_destination, "http://gw.example:x/a", host)

    def test_absolute_form_targets(self) -> None:
        self.assertEqual(request_path("http://h:1/a%20b?x"), "/a%20b")
        self.assertEqual(request_path("HTTPS://h"), "/")
        self.assertEqual(request_path("/plain/path"), "/plain/path")

    def test_other_headers(self) -> None:
        self.assertEqual(parse_depth(None, "infinity"), "infinity")
        self.assertEqual(parse_depth("1", "0"), "1")
        self.assertRaises(BadHeader, parse_depth, "2", "0")
        self.assertFalse(parse_overwrite("F"))
        self.assertTrue(parse_overwrite(None))
        self.assertRaises(BadHeader, parse_overwrite, "maybe")
        self.assertEqual(parse_timeout("Second-60, Infinite"), 60)
        self.assertEqual(parse_timeout("Infinite"), 3600)
        self.assertEqual(parse_timeout("Second-999999"), 3600)
        self.assertEqual(parse_destination("http://h:1/a/%E4%B8%AD/"), ["a", "中"])
        self.assertRaises(BadHeader, parse_destination, None)
        self.assertRaises(BadHeader, parse_destination, "relative/path")
        self.assertRaises(BadHeader, path_segments, "/a/../b")
        self.assertRaises(BadHeader, path_segments, "/%ff")
        self.assertEqual(href(["a b", "中"], True), "/a%20b/%E4%B8%AD/")
        self.assertEqual(href([], True), "/")


class LockTableTests(SynchronousTestCase):
    def test_conflicts_depth_and_expiry(self) -> None:
        clock = Clock()
        table = LockTable(clock, max_locks=2)
        coll = ("s", "home", "d")
        lock = table.add(coll, "exclusive", "infinity", b"", 10, "/d/", "alice")
        self.assertEqual(table.covering(coll + ("f",)), [lock])
        self.assertTrue(table.conflict(coll + ("f",), "shared", "0"))
        self.assertFalse(table.conflict(("s", "home", "e"), "exclusive", "0"))
        self.assertTrue(table.conflict(("s", "home"), "exclusive", "infinity"))
        shared = table.add(("s", "x"), "shared", "0", b"", 10, "/x", "alice")
        self.assertFalse(table.conflict(("s", "x"), "shared", "0"))
        self.assertRaises(
            TooManyLocks, table.add, ("s", "y"), "shared", "0", b"", 10, "/y", "a"
        )
        clock.advance(11)
        self.assertEqual(table.covering(coll + ("f",)), [])
        self.assertIsNone(table.get(shared.token))
        self.assertEqual(len(table), 0)

    def test_covering_looks_up_the_path_not_the_table(self) -> None:
        """
        A PROPFIND asks, for each member, which locks cover it: the
        table's other locks are never looked at.
        """
        clock = Clock()
        table = LockTable(clock)
        for i in range(500):
            table.add(("s", "other", str(i)), "exclusive", "0", b"", 60, "/", "a")
        mine = table.add(("s", "d"), "shared", "infinity", b"", 60, "/d/", "a")
        looked = []
        real = locks.Lock.covers

        def counted(lock: locks.Lock, resource: locks.ResourceId) -> bool:
            looked.append(lock)
            return real(lock, resource)

        self.patch(locks.Lock, "covers", counted)
        self.assertEqual(table.covering(("s", "d", "e", "f")), [mine])
        self.assertEqual(table.covering(("s", "elsewhere")), [])
        self.assertEqual(looked, [mine])
        self.assertEqual(len(table.on(("s", "other", "7"))), 1)
        clock.advance(61)
        self.assertEqual(table.covering(("s", "d", "e")), [])
        self.assertEqual(table.on(("s", "other", "7")), [])
        self.assertEqual(len(table), 0)

    def test_dead_properties_follow_and_are_bounded(self) -> None:
        props = DeadProperties(max_bytes=100)
        name = ("urn:z", "a")
        props.set(("s", "d", "f"), name, b"<a/>")
        props.move(("s", "d"), ("s", "e"))
        self.assertEqual(props.of(("s", "e", "f")), {name: b"<a/>"})
        props.copy(("s", "e"), ("s", "c"), tree=True)
        self.assertEqual(props.of(("s", "c", "f")), {name: b"<a/>"})
        props.drop(("s", "e"))
        self.assertEqual(props.of(("s", "e", "f")), {})
        self.assertEqual(props.size, 4)
        self.assertRaises(PropertiesFull, props.check, ("s", "z"), name, b"x" * 97)


class _Channel:
    def __init__(self, peer: str, secure: bool) -> None:
        self.peer = peer
        self.secure = secure
        self.close_reason: Any = None

    def end_reason(self, reason: str) -> None:
        self.close_reason = reason


class PlainAuthTests(SynchronousTestCase):
    def test_plain_http_from_elsewhere_refused_unless_allowed(self) -> None:
        refusing = Authenticator(None, None, allow_plain=False)
        channel: Any = _Channel("192.0.2.7", secure=False)
        error = self.assertRaises(HTTPError, refusing.check_transport, channel)
        self.assertEqual(error.status, 403)
        self.assertIn("HTTPS", error.text)
        self.assertIn("plain HTTP", channel.close_reason)
        self.flushLoggedErrors()
        refusing.check_transport(_Channel("192.0.2.7", secure=True))  # type: ignore[arg-type]
        refusing.check_transport(_Channel("127.0.0.1", secure=False))  # type: ignore[arg-type]
        refusing.check_transport(_Channel("::ffff:127.0.0.1", secure=False))  # type: ignore[arg-type]
        allowing = Authenticator(None, None, allow_plain=True)
        allowing.check_transport(_Channel("192.0.2.7", secure=False))  # type: ignore[arg-type]
        self.assertTrue(is_loopback("::1"))
        self.assertFalse(is_loopback("not an address"))
