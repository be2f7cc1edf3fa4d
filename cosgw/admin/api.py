"""
The admin JSON API, for the status page and the C{cosgw sessions} and
C{cosgw kick} commands:

  - C{GET /api/sessions}: C{{"sessions": [Session.describe(), ...]}};
  - C{GET /api/transfers}: C{{"transfers": [...in progress...],
    "finished": [...the last 100, newest first...]}};
  - C{GET /api/stores}: C{{"ready": bool, "problems": [...], "stores":
    {name: StoreHealth.describe()}}};
  - C{POST /api/sessions/ID/kick}: ends session ID as its protocol does
    (FTP: 421 and close; SFTP: a disconnect), answers C{{"kicked": ID}};
    404 for no such session, 405 for any other method.  A POST that a
    browser sent from another site's page (its Origin is not this
    listener) is refused.
  - C{POST /api/drain}: begins the gateway's drain and stop, as SIGTERM
    does (C{cosgw stop}); answers 202 with what the drain found
    (C{{"draining": true, "sessions": N, "transfers": N, "timeout": S}});
    405 for any other method, 404 for a gateway that cannot be stopped
    from here.
  - C{POST /api/reload}: reloads the config file as SIGHUP does and
    answers once it is done with C{ReloadResult.describe()}: C{{"status":
    "applied" | "unchanged" | "failed", "changes": [...],
    "needs_restart": [...], "error": ...}} (200 whatever the status); 405
    for any other method.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Optional, cast
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from cosgw.admin.access import Refusal, client_host
from cosgw.admin.health import Readiness
from cosgw.audit import SessionTable
from cosgw.escaping import for_log

__all__ = ["KICK_REASON", "ReloadAnswer", "api_resource"]

log = Logger()

#: What a kicked client is told (the FTP 421 text, the SSH disconnect's).
KICK_REASON = "kicked by administrator"

#: Reloads the config: C{(trigger)} -> a Deferred of the result as JSON
#: (L{cosgw.lifecycle.reload.Reloader.answer}).
ReloadAnswer = Callable[[str], Deferred[dict[str, Any]]]


def json_body(request: IRequest, value: Any, code: int = 200) -> bytes:
    """C{value} as a JSON answer that no cache keeps."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def api_resource(
    sessions: SessionTable,
    readiness: Readiness,
    reload: Optional[ReloadAnswer] = None,
) -> Resource:
    """The C{/api} tree; C{/api/reload} with C{reload}."""
    api = Resource()
    api.putChild(b"sessions", _Sessions(sessions))
    api.putChild(b"transfers", _Transfers(sessions))
    api.putChild(b"stores", _Stores(readiness))
    if reload is not None:
        api.putChild(b"reload", _Reload(reload))
    api.putChild(b"drain", _Drain(readiness))
    return api


class _Sessions(Resource):
    def __init__(self, sessions: SessionTable) -> None:
        super().__init__()
        self._sessions = sessions

    def render_GET(self, request: IRequest) -> bytes:
        live = [s.describe() for s in list(self._sessions.sessions.values())]
        return json_body(request, {"sessions": live})

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if not path:
            return self  # /api/sessions/
        return _Session(self._sessions, path.decode("ascii", "replace"))


class _Session(Resource):
    """One session: its description, and its C{kick} child."""

    def __init__(self, sessions: SessionTable, session_id: str) -> None:
        super().__init__()
        self._sessions = sessions
        self._id = session_id

    def render_GET(self, request: IRequest) -> bytes:
        session = self._sessions.get(self._id)
        if session is None:
            return json_body(request, {"error": "no such session"}, 404)
        return json_body(request, session.describe())

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"kick":
            return _Kick(self._sessions, self._id)
        return Refusal(404, "no such resource")


class _Kick(Resource):
    isLeaf = True

    def __init__(self, sessions: SessionTable, session_id: str) -> None:
        super().__init__()
        self._sessions = sessions
        self._id = session_id

    def render(self, request: IRequest) -> bytes:
        refused = _refuse_action(request, "kick")
        if refused is not None:
            return refused
        session = self._sessions.get(self._id)
        if session is None:
            return json_body(request, {"error": "no such session"}, 404)
        log.info(
            "admin {admin} from {address} kicks {protocol} session {session}"
            " of {user} from {client}",
            admin=for_log((request.getUser() or b"-").decode("utf-8", "replace")),
            address=client_host(request) or "local",
            protocol=session.protocol,
            session=session.id,
            user=for_log(session.user),
            client=f"{session.host}:{session.port}",
        )
        session.kick(KICK_REASON)
        return json_body(request, {"kicked": session.id})


class _Drain(Resource):
    isLeaf = True

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def render(self, request: IRequest) -> bytes:
        refused = _refuse_action(request, "drain")
        if refused is not None:
            return refused
        stop = self._readiness.stop
        if stop is None:
            return json_body(request, {"error": "this gateway has no drain"}, 404)
        admin = for_log((request.getUser() or b"-").decode("utf-8", "replace"))
        where = client_host(request) or "local"
        found = stop(f"cosgw stop by admin {admin} from {where}")
        return json_body(request, found, 202)


class _Reload(Resource):
    isLeaf = True

    def __init__(self, reload: ReloadAnswer) -> None:
        super().__init__()
        self._reload = reload

    def render(self, request: IRequest) -> Any:
        refused = _refuse_action(request, "reload")
        if refused is not None:
            return refused
        admin = for_log((request.getUser() or b"-").decode("utf-8", "replace"))
        trigger = f"admin API, {admin} from {client_host(request) or 'local'}"
        gone: list[bool] = []
        # IRequest lacks notifyFinish; twisted.web's Request has it.
        finished = cast(Request, request).notifyFinish()
        finished.addErrback(lambda _: gone.append(True))

        def answer(result: dict[str, Any]) -> None:
            if not gone:
                request.write(json_body(request, result))
                request.finish()

        self._reload(trigger).addCallback(answer)
        return NOT_DONE_YET


def _refuse_action(request: IRequest, verb: str) -> Optional[bytes]:
    """
    The answer to an action asked for the wrong way: not a POST (405), or
    from another site's page (403); None when it may go on.
    """
    if request.method != b"POST":
        request.setHeader(b"allow", b"POST")
        return json_body(request, {"error": f"{verb} with POST"}, 405)
    if not _same_origin(request):
        return json_body(request, {"error": "cross-site request refused"}, 403)
    return None


def _same_origin(request: IRequest) -> bool:
    """
    Whether the request did not come from another site's page: it has no
    Origin (a program such as C{cosgw kick}), or its Origin names the host
    the request was sent to.
    """
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host")
    return host is not None and urlsplit(
        origin.decode("latin-1")
    ).netloc == host.decode("latin-1")


class _Transfers(Resource):
    isLeaf = True

    def __init__(self, sessions: SessionTable) -> None:
        super().__init__()
        self._sessions = sessions

    def render_GET(self, request: IRequest) -> bytes:
        table = self._sessions
        return json_body(
            request,
            {
                "transfers": [t.describe() for t in table.transfers()],
                "finished": list(table.finished),
            },
        )


class _Stores(Resource):
    isLeaf = True

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def render_GET(self, request: IRequest) -> bytes:
        problems = self._readiness.problems()
        return json_body(
            request,
            {
                "ready": not problems,
                "problems": problems,
                "stores": {
                    name: health.describe()
                    for name, health in sorted(self._readiness.stores.items())
                },
            },
        )
