"""
WebDAV (RFC 4918, classes 1 and 2) over the same file system, accounts and
rules as FTP and SFTP:

  - L{cosgw.frontends.webdav.service}: the frontend, its listeners;
  - L{cosgw.frontends.webdav.channel}: a connection (admission, session,
    timeouts, input held) and its requests (a PUT body streamed);
  - L{cosgw.frontends.webdav.auth}: HTTP basic authentication;
  - L{cosgw.frontends.webdav.resource}: the server and its simple methods;
  - L{cosgw.frontends.webdav.putting}: a PUT body into an upload;
  - L{cosgw.frontends.webdav.properties}: PROPFIND, PROPPATCH;
  - L{cosgw.frontends.webdav.copymove}: COPY, MOVE, walks of collections;
  - L{cosgw.frontends.webdav.locking}, L{cosgw.frontends.webdav.locks}:
    LOCK, UNLOCK, the If header, the lock and dead property tables;
  - L{cosgw.frontends.webdav.answers}: errors to statuses, answers;
  - L{cosgw.frontends.webdav.headers}, L{cosgw.frontends.webdav.xmlbody}:
    the headers and XML bodies.
"""

from cosgw.frontends.webdav.service import WebDAVFrontend

__all__ = ["WebDAVFrontend"]
