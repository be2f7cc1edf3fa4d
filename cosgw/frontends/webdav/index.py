"""
A collection's page for browsers: what a GET of a collection answers (a
WebDAV client lists with PROPFIND; a person who types the address into a
browser gets this), and the headers a HEAD of it shares.

The page is written as the file system lists the collection, page by
page, the response being the listing's consumer (L{Pacer}): a slow reader
pauses the listing, so memory holds one page whatever the collection's
size.  Every name is escaped for HTML and every link is an absolute,
percent-encoded path, so the page works whether the address ended in a
slash or not, and a name such as C{<script>} is shown, never run; the
page's own Content-Security-Policy allows no script at all.
"""

from __future__ import annotations

from html import escape

from cosgw.frontends.webdav.answers import Call, Pacer
from cosgw.frontends.webdav.headers import href, http_date
from cosgw.interfaces import Entry

__all__ = ["page_headers", "send_index"]

#: No script, no outside resource: only the page's own style.
PAGE_POLICY = b"default-src 'none'; style-src 'unsafe-inline'"

_STYLE = (
    "body{font-family:sans-serif;margin:2em}"
    "table{border-collapse:collapse}"
    "td,th{padding:.2em 1.5em .2em 0;text-align:left}"
    "td.n{text-align:right}"
)


def page_headers(request: object, entry: Entry) -> None:
    """The headers of a collection's page, for GET and HEAD alike."""
    set_header = request.setHeader  # type: ignore[attr-defined]
    set_header(b"Content-Type", b"text/html; charset=utf-8")
    set_header(b"Content-Security-Policy", PAGE_POLICY)
    set_header(b"X-Content-Type-Options", b"nosniff")
    set_header(b"Cache-Control", b"no-cache")
    if entry.mtime:
        set_header(b"Last-Modified", http_date(entry.mtime).encode("ascii"))


def _head(segments: list[str]) -> bytes:
    title = escape("/" + "".join(s + "/" for s in segments))
    parts = [
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">',
        f"<title>Index of {title}</title><style>{_STYLE}</style></head>",
        f"<body><h1>Index of {title}</h1>\n<table>",
        "<tr><th>Name</th><th>Size</th><th>Modified</th></tr>\n",
    ]
    if segments:
        up = escape(href(segments[:-1], True), quote=True)
        parts.append(f'<tr><td><a href="{up}">../</a></td><td></td><td></td></tr>\n')
    return "".join(parts).encode("utf-8")


def _row(segments: list[str], entry: Entry) -> str:
    link = escape(href([*segments, entry.name], entry.is_dir), quote=True)
    name = escape(entry.name) + ("/" if entry.is_dir else "")
    size = "" if entry.is_dir else str(entry.size)
    when = http_date(entry.mtime) if entry.mtime else ""
    return (
        f'<tr><td><a href="{link}">{name}</a></td>'
        f'<td class="n">{size}</td><td>{when}</td></tr>\n'
    )


_TAIL = b"</table></body></html>\n"


async def send_index(call: Call, entry: Entry) -> None:
    """
    Answer a GET of the collection C{entry} at the call's path with its
    page, streamed; an error before the first page (no list permission,
    nothing there) is answered as any other, one after it cuts the
    connection (the page cannot be whole).
    """
    request = call.request
    listing = call.fs.listing(call.segments)
    try:
        page = await listing.next_page()
    except BaseException as e:
        listing.close(e)
        raise
    page_headers(request, entry)
    pacer = Pacer()
    request.registerProducer(pacer, True)
    try:
        request.write(_head(call.segments))
        while page is not None:
            rows = "".join(_row(call.segments, e) for e in page)
            request.write(rows.encode("utf-8"))
            await pacer.ready()
            page = await listing.next_page()
        request.write(_TAIL)
    except BaseException as e:
        listing.close(e)
        raise
    finally:
        request.unregisterProducer()
    request.finish()
