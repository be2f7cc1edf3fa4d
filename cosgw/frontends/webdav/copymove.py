"""
COPY and MOVE (RFC 4918 sections 9.8, 9.9), and the walks over a
collection that they and DELETE make.

Everything goes through the user's file system: a file is copied with
one server-side copy (L{cosgw.vfs.copies}), a MOVE is the file system's
rename (a file's copy and delete, a directory's copy of every key then
delete, as FTP's RNFR/RNTO), never bytes through the gateway.  A COPY of
a collection makes the collection and copies its members one by one, and
a DELETE of a collection removes its members one by one, so each member's
failure can be named in a 207 multistatus and each is its own audit
event.  Locks and dead properties follow their resources.  A Destination
on another server is refused (502), one holding the source or inside it
too (403): nothing is deleted for a copy or move that cannot be.
"""

from __future__ import annotations

from cosgw.frontends.webdav.answers import Call, HTTPError, respond, status_for
from cosgw.frontends.webdav.headers import (
    BadHeader,
    href,
    parse_depth,
    parse_destination,
    parse_overwrite,
)
from cosgw.frontends.webdav.locking import check_write
from cosgw.frontends.webdav.xmlbody import multistatus_close, multistatus_open, response
from cosgw.vfs import FSError, NotFound

__all__ = ["copy", "delete_tree", "move", "respond_failures"]

#: What could not be done: the member's segments and the error.
Failures = list[tuple[list[str], BaseException]]


async def copy(call: Call) -> None:
    await _transfer(call, move=False)


async def move(call: Call) -> None:
    await _transfer(call, move=True)


async def _transfer(call: Call, move: bool) -> None:
    """COPY or MOVE: 201 (new), 204 (replaced), 412, 409, 207."""
    target = parse_destination(call.header("Destination"), call.header("Host"))
    overwrite = parse_overwrite(call.header("Overwrite"))
    depth = parse_depth(call.header("Depth"), "infinity")
    if depth == "1" or (move and depth != "infinity"):
        raise BadHeader("COPY takes Depth 0 or infinity, MOVE only infinity")
    source, fs = call.segments, call.fs
    if not source or not target:
        raise HTTPError(403, "the home collection cannot be copied or moved")
    if target == source:
        raise HTTPError(403, "the source and the destination are the same")
    if source[: len(target)] == target:
        # Overwrite would delete the destination, and the source with it.
        raise HTTPError(403, "the destination is a collection holding the source")
    entry = await fs.stat(source)
    if entry.is_dir and target[: len(source)] == source:
        raise HTTPError(403, "a collection cannot go inside itself")
    if move:
        await check_write(call, source, members=True)
    await check_write(call, target, members=True)
    try:
        existing = await fs.stat(target)
    except NotFound:
        existing = None
    if existing is not None:
        if not overwrite:
            raise HTTPError(412, "the destination exists and Overwrite is F")
        failures = await delete_tree(call, target, existing.is_dir)
        if failures:
            respond_failures(call, failures)
            return
    failures = []
    try:
        if move:
            await fs.rename(source, target)
        elif entry.is_dir:
            failures = await _copy_tree(call, source, target, depth == "infinity")
        else:
            await fs.copy(source, target)
    except NotFound:
        if target[:-1]:
            try:
                await fs.stat(target[:-1])
            except NotFound:
                raise HTTPError(
                    409, "the destination's parent does not exist"
                ) from None
        raise
    tables = call.server
    if move:
        tables.properties.move(call.rid(source), call.rid(target))
        tables.locks.drop(call.rid(source))
    else:
        tables.properties.copy(call.rid(source), call.rid(target), entry.is_dir)
    if failures:
        respond_failures(call, failures)
        return
    respond(call.request, 204 if existing is not None else 201)


async def _copy_tree(
    call: Call, source: list[str], target: list[str], members: bool
) -> Failures:
    """The collection at C{target}, and (C{members}) copies of what it holds."""
    fs = call.fs
    await fs.mkdir(target)
    if not members:
        return []
    failures: Failures = []
    listing = fs.listing(source)
    while True:
        page = await listing.next_page()
        if page is None:
            return failures
        for entry in page:
            here, there = [*source, entry.name], [*target, entry.name]
            try:
                if entry.is_dir:
                    failures += await _copy_tree(call, here, there, True)
                else:
                    await fs.copy(here, there)
            except FSError as e:
                failures.append((there, e))


async def delete_tree(call: Call, segments: list[str], is_dir: bool) -> Failures:
    """
    Delete the file, or the collection and everything in it, at
    C{segments}.  A collection keeps what could not be deleted (and
    itself, then): those are returned.
    """
    fs = call.fs
    if not is_dir:
        await fs.remove(segments)
    else:
        failures: Failures = []
        listing = fs.listing(segments)
        while True:
            page = await listing.next_page()
            if page is None:
                break
            for entry in page:
                member = [*segments, entry.name]
                try:
                    if entry.is_dir:
                        failures += await delete_tree(call, member, True)
                    else:
                        await fs.remove(member)
                        _forget(call, member)
                except FSError as e:
                    failures.append((member, e))
        if failures:
            return failures
        await fs.rmdir(segments)
    _forget(call, segments)
    return []


def _forget(call: Call, segments: list[str]) -> None:
    resource = call.rid(segments)
    call.server.properties.drop(resource)
    call.server.locks.drop(resource)


def respond_failures(call: Call, failures: Failures) -> None:
    """207: the members that could not be changed, each with its status."""
    body = multistatus_open()
    for segments, error in failures:
        status, text = status_for(error)
        body += response(href(segments, False), status=status, description=text)
    respond(call.request, 207, body=body + multistatus_close())
