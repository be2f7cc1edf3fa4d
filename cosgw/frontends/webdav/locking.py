"""
LOCK and UNLOCK (RFC 4918 sections 9.10, 9.11), and the checks every
method that changes something makes first: its If header (412 when it
is false), then the lock tokens it must submit (423 Locked without
them), in that order, as litmus's locks group expects.

A LOCK needs the upload permission (a read-only user could otherwise keep
everyone else from writing for an hour).  A LOCK on a name with nothing
there creates an empty file (section 7.3: lock-null resources are gone),
through the file system's upload like any PUT, and answers 201.
"""

from __future__ import annotations

from typing import Optional

from cosgw.frontends.webdav.answers import Call, HTTPError, respond
from cosgw.frontends.webdav.headers import (
    BadHeader,
    IfList,
    entity_tag,
    href,
    parse_depth,
    parse_if,
    parse_timeout,
    submitted_tokens,
)
from cosgw.frontends.webdav.locks import Lock
from cosgw.frontends.webdav.xmlbody import (
    XML_HEAD,
    error_body,
    parse,
    parse_lockinfo,
)
from cosgw.vfs import NotFound

__all__ = ["activelock", "check_write", "lock", "unlock"]


def _if_lists(call: Call) -> list[IfList]:
    text = call.header("If")
    return parse_if(text) if text else []


def _locked(condition: str = "lock-token-submitted") -> HTTPError:
    return HTTPError(423, "the resource is locked", body=error_body(condition))


async def check_write(
    call: Call,
    segments: Optional[list[str]] = None,
    members: bool = False,
    parent: bool = True,
    lists: Optional[list[IfList]] = None,
) -> None:
    """
    A change of the resource at C{segments} (the request's by default)
    may go ahead: every lock on it (and on its collection when C{parent}:
    a member is added or removed; on its members when C{members}: a
    collection is deleted or moved) has its token in the If header, and
    the If header holds.

    @raise HTTPError: 423 or 412.
    """
    segments = call.segments if segments is None else segments
    if lists is None:
        lists = _if_lists(call)
    if lists and not await evaluate(call, lists):
        raise HTTPError(412, "the If header's conditions do not hold")
    tokens = submitted_tokens(lists)
    table = call.server.locks
    needed = table.covering(call.rid(segments))
    if parent and segments:
        needed += table.on(call.rid(segments[:-1]))
    if members:
        needed += table.inside(call.rid(segments))
    for held in needed:
        if held.token not in tokens or held.user != call.fs.user:
            raise _locked()


async def evaluate(call: Call, lists: list[IfList]) -> bool:
    """Whether an If header holds (section 10.4): any list, all of its conditions."""
    tags: dict[tuple[str, ...], Optional[str]] = {}

    async def tag(segments: list[str]) -> Optional[str]:
        place = tuple(segments)
        if place not in tags:
            try:
                entry = await call.fs.stat(segments)
                tags[place] = None if entry.is_dir else entity_tag(entry)
            except NotFound:
                tags[place] = None
        return tags[place]

    for lst in lists:
        segments = call.segments if lst.resource is None else lst.resource
        tokens = {lock.token for lock in call.server.locks.covering(call.rid(segments))}
        holds = True
        for condition in lst.conditions:
            if condition.token is not None:
                met = condition.token in tokens
            else:
                current = await tag(segments)
                wanted = (condition.etag or "").removeprefix("W/")
                met = current is not None and current == wanted
            if met == condition.negated:
                holds = False
                break
        if holds:
            return True
    return False


def activelock(held: Lock) -> str:
    """One C{<D:activelock>} (section 14.1)."""
    owner = held.owner.decode("utf-8")
    return (
        "<D:activelock>"
        "<D:locktype><D:write/></D:locktype>"
        f"<D:lockscope><D:{held.scope}/></D:lockscope>"
        f"<D:depth>{held.depth}</D:depth>"
        f"{owner}"
        f"<D:timeout>Second-{held.timeout}</D:timeout>"
        f"<D:locktoken><D:href>{held.token}</D:href></D:locktoken>"
        f"<D:lockroot><D:href>{held.href}</D:href></D:lockroot>"
        "</D:activelock>"
    )


def _discovery(held: Lock) -> bytes:
    return (
        XML_HEAD
        + b'<D:prop xmlns:D="DAV:"><D:lockdiscovery>'
        + activelock(held).encode("utf-8")
        + b"</D:lockdiscovery></D:prop>\n"
    )


async def lock(call: Call) -> None:
    """LOCK: a new lock, or a refresh (no body, the token in If)."""
    info = parse_lockinfo(parse(call.body()))
    timeout = parse_timeout(call.header("Timeout"))
    table = call.server.locks
    resource = call.rid()
    if info is None:
        tokens = submitted_tokens(_if_lists(call))
        for held in table.covering(resource):
            if held.token in tokens and held.user == call.fs.user:
                table.refresh(held, timeout)
                respond(call.request, 200, body=_discovery(held))
                return
        raise HTTPError(
            412,
            "no lock of this resource is named in the If header",
            body=error_body("lock-token-matches-request-uri"),
        )
    depth = parse_depth(call.header("Depth"), "infinity")
    if depth == "1":
        raise BadHeader("a lock's Depth is 0 or infinity")
    # A lock keeps others from writing: only a user who may write takes one.
    call.fs.require("upload", call.segments)
    if table.conflict(resource, info.scope, depth):
        raise _locked("no-conflicting-lock")
    try:
        entry = await call.fs.stat(call.segments)
    except NotFound:
        entry = None
    status = 200
    if entry is None:
        await check_write(call)
        upload = await call.fs.open_upload(call.segments, size_hint=0)
        await upload.commit()
        status = 201
    is_dir = entry is not None and entry.is_dir
    held = table.add(
        resource,
        info.scope,
        depth if is_dir else "0",
        info.owner,
        timeout,
        href(call.segments, is_dir),
        call.fs.user,
    )
    respond(
        call.request,
        status,
        headers={"Lock-Token": f"<{held.token}>"},
        body=_discovery(held),
    )


async def unlock(call: Call) -> None:
    """UNLOCK: the lock named by Lock-Token, which must cover the resource."""
    text = (call.header("Lock-Token") or "").strip()
    if not (text.startswith("<") and text.endswith(">")):
        raise BadHeader("UNLOCK needs a Lock-Token header")
    held = call.server.locks.get(text[1:-1])
    if held is None or not held.covers(call.rid()):
        raise HTTPError(
            409,
            "that lock does not cover this resource",
            body=error_body("lock-token-matches-request-uri"),
        )
    if held.user != call.fs.user:
        raise HTTPError(403, "the lock belongs to another user")
    call.server.locks.remove(held.token)
    respond(call.request, 204)
