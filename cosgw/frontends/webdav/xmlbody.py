"""
The XML of WebDAV (RFC 4918 section 14): request bodies read safely,
response bodies written as bytes.

Request bodies are parsed with expat directly, into an ElementTree whose
tags are C{{namespace}local} names, and anything that could make a small
body expensive or reach outside is refused before it is used: a document
type declaration (so no entity is ever declared, internal or external, and
no "billion laughs"), more than L{MAX_DEPTH} nested elements, and bodies
over L{MAX_BODY} bytes (the request layer answers 413 before reading
more).  Responses are written as text with every value escaped, so a
multistatus can be sent one C{<response>} at a time while a listing
arrives page by page (L{response}).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "DAV",
    "MAX_BODY",
    "BadXML",
    "LockRequest",
    "PropFind",
    "PropUpdate",
    "element_xml",
    "multistatus_close",
    "multistatus_open",
    "parse",
    "parse_lockinfo",
    "parse_propfind",
    "parse_propertyupdate",
    "prop_name_xml",
    "response",
]

DAV = "DAV:"
#: Largest XML request body (PROPFIND, PROPPATCH, LOCK) taken, in bytes.
MAX_BODY = 1024 * 1024
#: Deepest element nesting taken in a request body.
MAX_DEPTH = 64

#: A property's name: (namespace, local name).
Name = tuple[str, str]

XML_HEAD = b'<?xml version="1.0" encoding="utf-8"?>\n'


class BadXML(ValueError):
    """A request body that is not acceptable XML (RFC 4918: 400)."""


def _qualified(name: str) -> str:
    """expat's C{namespace}local{separator} form as ElementTree's."""
    if "\x01" in name:
        namespace, local = name.split("\x01", 1)
        return "{" + namespace + "}" + local
    return name


def parse(data: bytes) -> Optional[ET.Element]:
    """
    The root element of C{data}, or None for an empty body.

    @raise BadXML: not well-formed, a DOCTYPE, too deep or too long.
    """
    if not data.strip():
        return None
    if len(data) > MAX_BODY:
        raise BadXML(f"XML body over {MAX_BODY} bytes")
    parser = expat.ParserCreate(namespace_separator="\x01")
    builder = ET.TreeBuilder()
    depth = [0]

    def refuse_doctype(*_: object) -> None:
        raise BadXML("document type declarations are not accepted")

    def start(name: str, attributes: dict[str, str]) -> None:
        depth[0] += 1
        if depth[0] > MAX_DEPTH:
            raise BadXML(f"XML nested deeper than {MAX_DEPTH} elements")
        builder.start(
            _qualified(name), {_qualified(k): v for k, v in attributes.items()}
        )

    def end(name: str) -> None:
        depth[0] -= 1
        builder.end(_qualified(name))

    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_doctype
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
        return builder.close()
    except expat.ExpatError as e:
        raise BadXML(f"malformed XML: {e}") from None
    except AssertionError:
        raise BadXML("malformed XML") from None


def _name(element: ET.Element) -> Name:
    tag = element.tag
    if tag.startswith("{"):
        namespace, local = tag[1:].split("}", 1)
        return namespace, local
    return "", tag


def _is(element: ET.Element, local: str) -> bool:
    return element.tag == "{DAV:}" + local


@dataclass(frozen=True)
class PropFind:
    """What a PROPFIND asks for: C{allprop}, C{propname} or C{prop} names."""

    kind: str
    names: tuple[Name, ...] = ()


def parse_propfind(root: Optional[ET.Element]) -> PropFind:
    """
    RFC 4918 section 9.1: no body means allprop.

    @raise BadXML: not a propfind element, or one without a known child.
    """
    if root is None:
        return PropFind("allprop")
    if not _is(root, "propfind"):
        raise BadXML("the body is not a DAV:propfind")
    for child in root:
        if _is(child, "allprop"):
            return PropFind("allprop")
        if _is(child, "propname"):
            return PropFind("propname")
        if _is(child, "prop"):
            return PropFind("prop", tuple(_name(p) for p in child))
    raise BadXML("DAV:propfind holds none of allprop, propname, prop")


@dataclass(frozen=True)
class PropUpdate:
    """One instruction of a PROPPATCH, in document order."""

    #: "set" or "remove".
    action: str
    name: Name
    #: The property element as XML (set), to be kept as a dead property.
    value: bytes = b""
    #: Its text (set), for live properties with a value (times).
    text: str = ""


def parse_propertyupdate(root: Optional[ET.Element]) -> list[PropUpdate]:
    """
    RFC 4918 section 14.19: set and remove, in document order.

    @raise BadXML: not a propertyupdate element.
    """
    if root is None or not _is(root, "propertyupdate"):
        raise BadXML("the body is not a DAV:propertyupdate")
    updates: list[PropUpdate] = []
    for instruction in root:
        if _is(instruction, "set"):
            action = "set"
        elif _is(instruction, "remove"):
            action = "remove"
        else:
            continue
        for prop in instruction:
            if not _is(prop, "prop"):
                continue
            for element in prop:
                updates.append(
                    PropUpdate(
                        action,
                        _name(element),
                        element_xml(element) if action == "set" else b"",
                        "".join(element.itertext()).strip(),
                    )
                )
    if not updates:
        raise BadXML("DAV:propertyupdate changes no property")
    return updates


@dataclass(frozen=True)
class LockRequest:
    """A LOCK's lockinfo (RFC 4918 section 14.11)."""

    #: "exclusive" or "shared".
    scope: str
    #: The DAV:owner element as XML, echoed in lockdiscovery; b"" if none.
    owner: bytes


def parse_lockinfo(root: Optional[ET.Element]) -> Optional[LockRequest]:
    """
    The lockinfo of a LOCK; None for no body (a refresh).

    @raise BadXML: not a lockinfo, or without a write lock type and a scope.
    """
    if root is None:
        return None
    if not _is(root, "lockinfo"):
        raise BadXML("the body is not a DAV:lockinfo")
    scope = None
    write = False
    owner = b""
    for child in root:
        if _is(child, "lockscope"):
            for s in child:
                if _is(s, "exclusive") or _is(s, "shared"):
                    scope = _name(s)[1]
        elif _is(child, "locktype"):
            write = any(_is(t, "write") for t in child)
        elif _is(child, "owner"):
            owner = element_xml(child)
    if scope is None or not write:
        raise BadXML("DAV:lockinfo needs a lockscope and the write locktype")
    return LockRequest(scope, owner)


def element_xml(element: ET.Element) -> bytes:
    """C{element} as XML that stands alone (its namespaces declared)."""
    return _write_element(element, {}).encode("utf-8")


def _write_element(element: ET.Element, declared: dict[str, str]) -> str:
    namespace, local = _name(element)
    scope = dict(declared)
    attributes = ""
    if not namespace:
        if "" not in scope:
            attributes = ' xmlns=""'
            scope[""] = ""
    elif namespace not in scope:
        prefix = f"n{len(scope)}"
        scope[namespace] = prefix
        attributes += f" xmlns:{prefix}={quoteattr(namespace)}"
    tag = f"{scope[namespace]}:{local}" if namespace else local
    for key, value in element.attrib.items():
        if key.startswith("{"):
            continue  # namespaced attributes: not kept
        attributes += f" {key}={quoteattr(value)}"
    inner = escape(element.text or "")
    for child in element:
        inner += _write_element(child, scope) + escape(child.tail or "")
    return f"<{tag}{attributes}>{inner}</{tag}>"


def prop_name_xml(name: Name, value: str = "") -> str:
    """
    C{<name>value</name>} with its namespace declared (DAV: as C{D:},
    declared on the multistatus); C{value} is XML already.
    """
    namespace, local = name
    if namespace == DAV:
        tag, declaration = f"D:{local}", ""
    elif namespace:
        tag, declaration = f"x:{local}", f" xmlns:x={quoteattr(namespace)}"
    else:
        tag, declaration = local, ""
    if not value:
        return f"<{tag}{declaration}/>"
    return f"<{tag}{declaration}>{value}</{tag}>"


def multistatus_open() -> bytes:
    return XML_HEAD + b'<D:multistatus xmlns:D="DAV:">\n'


def multistatus_close() -> bytes:
    return b"</D:multistatus>\n"


#: Reason phrases of the statuses a propstat or response carries.
REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    412: "Precondition Failed",
    423: "Locked",
    424: "Failed Dependency",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


def status_line(code: int) -> str:
    return f"HTTP/1.1 {code} {REASONS.get(code, 'Error')}"


def response(
    href: str,
    propstats: Iterable[tuple[int, Sequence[str]]] = (),
    status: Optional[int] = None,
    description: str = "",
) -> bytes:
    """
    One C{<D:response>}: for C{href} (already escaped for a URL), either
    its propstats (status, property elements as XML) or a C{status}.
    """
    parts = [f"<D:response><D:href>{escape(href)}</D:href>"]
    if status is not None:
        parts.append(f"<D:status>{status_line(status)}</D:status>")
    for code, props in propstats:
        if not props:
            continue
        parts.append("<D:propstat><D:prop>")
        parts.extend(props)
        parts.append(f"</D:prop><D:status>{status_line(code)}</D:status></D:propstat>")
    if description:
        parts.append(
            f"<D:responsedescription>{escape(description)}</D:responsedescription>"
        )
    parts.append("</D:response>\n")
    return "".join(parts).encode("utf-8")


def error_body(condition: str) -> bytes:
    """An RFC 4918 section 16 error body naming a precondition."""
    return XML_HEAD + f'<D:error xmlns:D="DAV:"><D:{condition}/></D:error>\n'.encode()
