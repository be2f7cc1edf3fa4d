"""
The request headers WebDAV adds to HTTP, and the ones of HTTP it uses,
read into values: Range (RFC 9110 section 14), the If header (RFC 4918
section 10.4), Depth, Overwrite, Destination, Timeout, and the entity tags
and dates of responses.  Each parser takes the header's text and raises
L{BadHeader} (a 400) for what it cannot read; none reaches the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Optional
from urllib.parse import quote, unquote, urlsplit

from cosgw.interfaces import Entry

__all__ = [
    "BadHeader",
    "ByteRange",
    "ForeignDestination",
    "Condition",
    "IfList",
    "entity_tag",
    "href",
    "http_date",
    "iso_date",
    "parse_date",
    "parse_depth",
    "parse_destination",
    "parse_if",
    "parse_overwrite",
    "parse_range",
    "parse_timeout",
    "path_segments",
    "range_applies",
    "request_path",
]

#: The longest lock asked for is granted this many seconds (and Infinite).
MAX_LOCK_SECONDS = 3600


class BadHeader(ValueError):
    """A header that cannot be read: 400 Bad Request."""


class ForeignDestination(ValueError):
    """
    A Destination on another server or scheme: 502 Bad Gateway (RFC 4918
    section 9.8.5), never a place in this user's home.
    """


def request_path(target: str) -> str:
    """
    The path of a request's target: its origin form as it is, the path of
    its absolute form (RFC 9112 section 3.2.2: a server must accept
    C{GET http://host/path}).
    """
    if target.lower().startswith(("http://", "https://")):
        return urlsplit(target).path or "/"
    return target


def path_segments(path: str) -> list[str]:
    """
    The segments of a request's URL path (percent escapes decoded as
    UTF-8), for the file system to check; C{.} and C{..} are refused
    rather than resolved, as clients never send them.

    @raise BadHeader: not UTF-8, or a C{.}/C{..} segment.
    """
    try:
        text = unquote(path.split("?", 1)[0], errors="strict")
    except UnicodeDecodeError:
        raise BadHeader("the path is not UTF-8") from None
    segments = [s for s in text.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise BadHeader("the path may not hold . or ..")
    return segments


def href(segments: list[str], collection: bool) -> str:
    """The URL path of C{segments}: escaped, a collection's ending in /."""
    text = "/" + "/".join(quote(s, safe="!$&'()*+,;=:@-._~") for s in segments)
    if collection and segments:
        text += "/"
    return text


def entity_tag(entry: Entry) -> str:
    """
    A file's entity tag: from its size and time to the second (a listing's
    and a HEAD's times agree to the second), so that PROPFIND, GET and the
    If header all see the same tag.
    """
    return f'"{entry.size:x}-{int(entry.mtime):x}"'


def http_date(when: float) -> str:
    """RFC 9110's IMF-fixdate."""
    moment = datetime.fromtimestamp(int(when), timezone.utc)
    return format_datetime(moment, usegmt=True)


def iso_date(when: float) -> str:
    """RFC 3339, for DAV:creationdate."""
    moment = datetime.fromtimestamp(int(when), timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_date(text: str) -> float:
    """
    A date as clients set a time: RFC 9110's (getlastmodified, Windows'
    Win32LastModifiedTime) or RFC 3339.

    @raise BadHeader: neither.
    """
    text = text.strip()
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise BadHeader(f"not a date: {text[:60]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass(frozen=True)
class ByteRange:
    """Bytes C{start} to C{end}, inclusive, of a file of C{size} bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


class Unsatisfiable(ValueError):
    """A range that holds no byte of the file: 416."""


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(text: str) -> Optional[tuple[Optional[int], Optional[int]]]:
    """
    A Range header's one byte range as (first, last), either None (C{-N}:
    the last N bytes, as (None, N); C{N-}: (N, None)); None for what is not
    one valid byte range (several ranges, another unit, a last byte before
    the first), which RFC 9110 section 14.2 lets a server ignore: the whole
    file is answered (200), as clients that sent it can always use.
    """
    match = _RANGE.match(text)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if first and last and int(last) < int(first):
        return None
    return (int(first) if first else None, int(last) if last else None)


def satisfy(spec: tuple[Optional[int], Optional[int]], size: int) -> ByteRange:
    """
    The bytes of a file of C{size} that C{spec} (from L{parse_range})
    names.

    @raise Unsatisfiable: none (416, with C{Content-Range: bytes */size}).
    """
    first, last = spec
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            raise Unsatisfiable()
        return ByteRange(max(size - last, 0), size - 1, size)
    if first >= size:
        raise Unsatisfiable()
    end = size - 1 if last is None else min(last, size - 1)
    return ByteRange(first, end, size)


def parse_depth(text: Optional[str], default: str) -> str:
    """Depth: "0", "1" or "infinity" (C{default} when absent)."""
    if text is None:
        return default
    value = text.strip().lower()
    if value not in ("0", "1", "infinity"):
        raise BadHeader(f"Depth must be 0, 1 or infinity, not {text[:20]!r}")
    return value


def parse_overwrite(text: Optional[str]) -> bool:
    """Overwrite: T (the default) or F."""
    if text is None:
        return True
    value = text.strip().upper()
    if value not in ("T", "F"):
        raise BadHeader("Overwrite must be T or F")
    return value == "T"


def parse_destination(text: Optional[str], host: Optional[str] = None) -> list[str]:
    """
    The segments of a COPY or MOVE's Destination (an absolute URL or an
    absolute path) in this user's space.

    @param host: the request's Host header: an absolute URL must name the
        same host (and port, when both name one: a TLS proxy in front may
        change the scheme and the port), and http or https.
    @raise BadHeader: missing, or no path.
    @raise ForeignDestination: another server's URL (502).
    """
    if not text:
        raise BadHeader("COPY and MOVE need a Destination header")
    try:
        url = urlsplit(text.strip())
        port = url.port
    except ValueError:
        raise BadHeader("the Destination is not a URL") from None
    if url.scheme or url.netloc:
        if url.scheme.lower() not in ("http", "https"):
            raise ForeignDestination(f"the Destination's scheme {url.scheme!r}")
        if host is not None and not _same_host(url.hostname or "", port, host):
            raise ForeignDestination("the Destination is on another server")
    if not url.path.startswith("/"):
        raise BadHeader("the Destination is not an absolute URL or path")
    return path_segments(url.path)


def _same_host(name: str, port: Optional[int], host: str) -> bool:
    """Whether C{name} and C{port} are the Host header C{host}'s."""
    try:
        ours = urlsplit("//" + host.strip())
        our_port = ours.port
    except ValueError:
        return False
    if name.lower() != (ours.hostname or "").lower():
        return False
    return port is None or our_port is None or port == our_port


def parse_timeout(text: Optional[str]) -> int:
    """
    The lock time granted for a Timeout header (RFC 4918 section 10.7):
    the first of its values, at most L{MAX_LOCK_SECONDS}; that when absent
    or Infinite.
    """
    if text:
        for value in text.split(","):
            value = value.strip()
            if value.lower().startswith("second-") and value[7:].isdigit():
                return max(1, min(int(value[7:]), MAX_LOCK_SECONDS))
    return MAX_LOCK_SECONDS


def range_applies(if_range: Optional[str], tag: str, mtime: float) -> bool:
    """
    Whether a Range is served under C{if_range} (RFC 9110 section 13.1.5):
    absent, or naming the file's entity tag (strongly) or its
    Last-Modified date exactly; else the whole file is sent.
    """
    if if_range is None:
        return True
    text = if_range.strip()
    if text.startswith('"'):
        return text == tag
    if text.startswith("W/"):
        return False
    try:
        return int(parse_date(text)) == int(mtime)
    except BadHeader:
        return False


@dataclass(frozen=True)
class Condition:
    """One condition of an If header's list: a state token or an etag."""

    negated: bool
    token: Optional[str] = None
    etag: Optional[str] = None


@dataclass(frozen=True)
class IfList:
    """One list of an If header; C{resource}: its tag's path, or None."""

    resource: Optional[list[str]]
    conditions: tuple[Condition, ...]


def parse_if(text: str) -> list[IfList]:
    """
    RFC 4918 section 10.4: untagged lists, or lists tagged with the
    resource they are about.

    @raise BadHeader: not that grammar.
    """
    lists: list[IfList] = []
    position = 0
    resource: Optional[list[str]] = None
    current: Optional[list[Condition]] = None
    negated = False
    text = text.strip()
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        char = text[position]
        if current is None:
            if char == "<":
                end = text.find(">", position)
                if end < 0:
                    raise BadHeader("If: a resource tag is not closed")
                resource = parse_destination(text[position + 1 : end])
                position = end + 1
            elif char == "(":
                current = []
                position += 1
            else:
                raise BadHeader("If: expected a list")
            continue
        if char == ")":
            if not current:
                raise BadHeader("If: an empty list")
            lists.append(IfList(resource, tuple(current)))
            current = None
            position += 1
        elif text[position : position + 3].lower() == "not":
            negated = True
            position += 3
        elif char in "<[":
            closing = ">" if char == "<" else "]"
            end = text.find(closing, position)
            if end < 0:
                raise BadHeader("If: a condition is not closed")
            value = text[position + 1 : end]
            if char == "<":
                current.append(Condition(negated, token=value))
            else:
                current.append(Condition(negated, etag=value))
            negated = False
            position = end + 1
        else:
            raise BadHeader("If: unexpected text in a list")
    if current is not None or not lists:
        raise BadHeader("If: a list is not closed")
    return lists


def submitted_tokens(lists: list[IfList]) -> set[str]:
    """Every state token an If header names (the lock tokens submitted)."""
    return {c.token for lst in lists for c in lst.conditions if c.token is not None}
