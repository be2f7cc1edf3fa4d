"""
PROPFIND and PROPPATCH (RFC 4918 sections 9.1, 9.2).

A PROPFIND of depth 1 is written as the listing arrives: the multistatus
opens, the collection's own response goes out, then each page of the
file system's listing becomes its responses and is written before the
next page is asked for, the response being the producer's consumer so a
client that reads slowly pauses the listing.  Memory holds one page
(1,000 entries) whatever the directory's size.  Depth infinity (what a
missing Depth means) is refused on a collection (403 with the
propfind-finite-depth precondition, section 9.1): a bucket can hold
millions of keys; on a file it is depth 0.

PROPPATCH sets the time of a file the way FTP's MFMT does, through the
file system (DAV:getlastmodified, and Windows' Win32LastModifiedTime);
every other DAV: property is protected (403).  Any other property is a
dead property, kept in memory (L{cosgw.frontends.webdav.locks}).  The
instructions of one PROPPATCH succeed or fail together: when one fails,
the others answer 424 and nothing is changed.
"""

from __future__ import annotations

import mimetypes
from typing import Optional
from xml.sax.saxutils import escape

from cosgw.frontends.webdav.answers import Call, HTTPError, Pacer, respond
from cosgw.frontends.webdav.headers import (
    BadHeader,
    entity_tag,
    href,
    http_date,
    iso_date,
    parse_date,
    parse_depth,
)
from cosgw.frontends.webdav.locking import activelock, check_write
from cosgw.frontends.webdav.locks import PropertiesFull
from cosgw.frontends.webdav.xmlbody import (
    DAV,
    Name,
    PropFind,
    error_body,
    multistatus_close,
    multistatus_open,
    parse,
    parse_propertyupdate,
    parse_propfind,
    prop_name_xml,
    response,
)
from cosgw.interfaces import Entry

__all__ = ["live_properties", "propfind", "proppatch"]

MICROSOFT = "urn:schemas-microsoft-com:"
#: Properties whose value is a file's time, set as MFMT sets it.
TIMES = frozenset({(DAV, "getlastmodified"), (MICROSOFT, "Win32LastModifiedTime")})
SUPPORTED_LOCK = "".join(
    f"<D:lockentry><D:lockscope><D:{scope}/></D:lockscope>"
    "<D:locktype><D:write/></D:locktype></D:lockentry>"
    for scope in ("exclusive", "shared")
)


def live_properties(call: Call, segments: list[str], entry: Entry) -> dict[Name, str]:
    """A resource's live properties, their values as XML."""
    name = segments[-1] if segments else ""
    props: dict[Name, str] = {
        (DAV, "resourcetype"): "<D:collection/>" if entry.is_dir else "",
        (DAV, "displayname"): escape(name),
        (DAV, "getlastmodified"): http_date(entry.mtime),
        (DAV, "creationdate"): iso_date(entry.mtime),
        (DAV, "supportedlock"): SUPPORTED_LOCK,
        (DAV, "lockdiscovery"): "".join(
            activelock(held) for held in call.server.locks.covering(call.rid(segments))
        ),
    }
    if not entry.is_dir:
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        props[(DAV, "getcontentlength")] = str(entry.size)
        props[(DAV, "getcontenttype")] = escape(kind)
        props[(DAV, "getetag")] = escape(entity_tag(entry))
    return props


def _response(call: Call, segments: list[str], entry: Entry, find: PropFind) -> bytes:
    """One resource's C{<D:response>} for a PROPFIND."""
    live = live_properties(call, segments, entry)
    dead = call.server.properties.of(call.rid(segments))
    where = href(segments, entry.is_dir)
    if find.kind == "propname":
        names = [prop_name_xml(n) for n in live] + [prop_name_xml(n) for n in dead]
        return response(where, [(200, names)])
    if find.kind == "allprop":
        found = [prop_name_xml(n, v) for n, v in live.items()]
        found += [v.decode("utf-8") for v in dead.values()]
        return response(where, [(200, found)])
    found, missing = [], []
    for name in find.names:
        if name in live:
            found.append(prop_name_xml(name, live[name]))
        elif name in dead:
            found.append(dead[name].decode("utf-8"))
        else:
            missing.append(prop_name_xml(name))
    return response(where, [(200, found), (404, missing)])


async def propfind(call: Call) -> None:
    """PROPFIND of depth 0 or 1, streamed; see the module."""
    depth = parse_depth(call.header("Depth"), "infinity")
    find = parse_propfind(parse(call.body()))
    fs, request = call.fs, call.request
    entry = await fs.stat(call.segments)
    if depth == "infinity" and entry.is_dir:
        # A file's infinity is its depth 0 (clients that leave Depth out,
        # which means infinity, ask about files that way).
        raise HTTPError(
            403,
            "Depth: infinity is not served; ask for depth 1",
            body=error_body("propfind-finite-depth"),
        )
    request.setResponseCode(207)
    request.setHeader(b"Content-Type", b"application/xml; charset=utf-8")
    pacer = Pacer()
    request.registerProducer(pacer, True)
    try:
        request.write(multistatus_open() + _response(call, call.segments, entry, find))
        if depth == "1" and entry.is_dir:
            await _members(call, find, pacer)
        request.write(multistatus_close())
    finally:
        request.unregisterProducer()
    request.finish()


async def _members(call: Call, find: PropFind, pacer: Pacer) -> None:
    """Each page of the collection's listing, written as it comes."""
    listing = call.fs.listing(call.segments)
    try:
        while True:
            await pacer.ready()
            page = await listing.next_page()
            if page is None:
                return
            call.request.write(
                b"".join(
                    _response(call, [*call.segments, e.name], e, find) for e in page
                )
            )
    except BaseException as e:
        listing.close(e)
        raise


async def proppatch(call: Call) -> None:
    """PROPPATCH: all instructions or none; see the module."""
    updates = parse_propertyupdate(parse(call.body()))
    await check_write(call, parent=False)
    entry = await call.fs.stat(call.segments)
    resource = call.rid()
    table = call.server.properties
    statuses: list[int] = []
    when: Optional[float] = None
    for update in updates:
        status = 200
        if update.name[0] == DAV and (entry.is_dir or update.name not in TIMES):
            status = 403  # protected, or a time the store keeps for itself
        elif update.action == "set":
            try:
                table.check(resource, update.name, update.value)
                if update.name in TIMES and not entry.is_dir:
                    when = parse_date(update.text)
            except PropertiesFull:
                status = 507
            except BadHeader:
                status = 409
        statuses.append(status)
    failed = any(s != 200 for s in statuses)
    if failed:
        statuses = [424 if s == 200 else s for s in statuses]
    else:
        if when is not None:
            await call.fs.set_mtime(call.segments, when)
        for update in updates:
            if update.name[0] == DAV:
                continue  # getlastmodified: the file's time, set above
            if update.action == "set":
                table.set(resource, update.name, update.value)
            else:
                table.remove(resource, update.name)
    grouped: dict[int, list[str]] = {}
    for update, status in zip(updates, statuses):
        grouped.setdefault(status, []).append(prop_name_xml(update.name))
    body = (
        multistatus_open()
        + response(href(call.segments, entry.is_dir), sorted(grouped.items()))
        + multistatus_close()
    )
    respond(call.request, 207, body=body)
