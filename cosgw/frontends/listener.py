"""
One listening endpoint as a service, shared by the FTP and SFTP frontends.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

# The gateway's start-up lines share the namespace of makeService's.
log = Logger(namespace="cosgw.service")


class ListenerService(Service):
    """
    Listens on one endpoint string.  Unlike StreamServerEndpointService it
    keeps the port, so the gateway can say where it listens (tcp:0 included).
    """

    def __init__(self, reactor: Any, description: str, factory: IProtocolFactory):
        self._reactor = reactor
        self.description = description
        self.endpoint = serverFromString(reactor, description)
        self.factory = factory
        self.port: Optional[IListeningPort] = None
        self.listening: Deferred[IListeningPort] = Deferred()
        self._started = False

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges (ports 21 and 990).
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._started:
            return
        self._started = True
        d = self.endpoint.listen(self.factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            self.listening.callback(port)
            return port

        def failed(failure: Failure) -> None:
            log.failure("cannot listen on {where}", failure, where=self.description)
            self.listening.errback(failure)
            if self._reactor.running:
                # A gateway that cannot listen where it was told must not
                # look healthy.
                self._reactor.callLater(0, self._reactor.stop)

        d.addCallbacks(listening, failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        self._started = False
        stopped = port.stopListening() if port is not None else None
        return stopped if stopped is not None else succeed(None)
