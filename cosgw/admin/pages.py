"""
The admin listener's pages: the status page and its script and style,
C{/metrics}, C{/healthz} and C{/readyz}.

The status page is a static HTML file with a script that fetches the JSON
API every second and a half and fills its tables with C{textContent}, so
nothing a client chose (a user name, a path) is ever parsed as HTML.  Its
Content-Security-Policy allows scripts and styles from the listener only
(no inline script, no other site), and no framing.
"""

from __future__ import annotations

from importlib import resources

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from cosgw.admin.health import Readiness

__all__ = ["Healthz", "MetricsPage", "Readyz", "StaticFile", "status_files"]

#: Every answer of the admin listener carries these.
SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"cache-control": b"no-store",
    b"content-security-policy": b"default-src 'self'; frame-ancestors 'none'",
    b"referrer-policy": b"no-referrer",
}

_TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
    "png": b"image/png",
}


class StaticFile(Resource):
    """One file shipped in C{cosgw/admin/static}, read once."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self._body = (
            resources.files("cosgw.admin")
            .joinpath("static")
            .joinpath(name)
            .read_bytes()
        )
        self._type = _TYPES[name.rsplit(".", 1)[-1]]

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", self._type)
        return self._body


class _NoIcon(Resource):
    """Browsers ask for an icon; there is none (and no 404 in their console)."""

    isLeaf = True

    def render_GET(self, request: IRequest) -> bytes:
        request.setResponseCode(204)
        return b""


def status_files() -> dict[bytes, Resource]:
    """The status page at C{/} and what it loads."""
    return {
        b"": StaticFile("status.html"),
        b"status.js": StaticFile("status.js"),
        b"status.css": StaticFile("status.css"),
        b"favicon.ico": _NoIcon(),
    }


def _text(request: IRequest, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return text.encode() + b"\n"


class Healthz(Resource):
    """Alive: the reactor answers."""

    isLeaf = True

    def render_GET(self, request: IRequest) -> bytes:
        return _text(request, 200, "ok")


class Readyz(Resource):
    """200 when ready, else 503 with each reason on a line of its own."""

    isLeaf = True

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def render_GET(self, request: IRequest) -> bytes:
        problems = self._readiness.problems()
        if problems:
            return _text(request, 503, "\n".join(problems))
        return _text(request, 200, "ready")


class MetricsPage(Resource):
    """
    The registry in the format the scraper asks for (Prometheus text, or
    OpenMetrics).  Rendered on the reactor thread: the live gauges read
    state only that thread may touch, and a render is short (4.7 ms for
    455 lines with 300 sessions open, on a loaded 2-core machine).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: IRequest) -> bytes:
        accept = request.getHeader(b"accept") or b""
        encoder, content_type = choose_encoder(accept.decode("latin-1"))
        request.setHeader(b"content-type", content_type.encode())
        return encoder(self._registry)
