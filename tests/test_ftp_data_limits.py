"""
Unit tests of the bounds on FTP data connections (L{cosgw.frontends.ftp.ports}
and L{cosgw.frontends.ftp.data}): a passive listener or data connection no
transfer takes is closed by the next PASV/EPSV/PORT/EPRT, REIN, QUIT, the
loss of the control connection, a failed transfer command and the unused
timeout (the config's data_timeout); a listener stops once it has its
connection; open data connections are counted per session (with a limit)
and for the gateway; running out of descriptors gets a 425 and the session
goes on.  Driven through the fakes of tests/ftp_unit.py.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial import unittest

from cosgw.frontends.ftp.data import ChannelCount, DataChannelFactory
from cosgw.frontends.ftp.ports import MAX_SESSION_DATA_CONNECTIONS
from tests.ftp_unit import (
    CLIENT_HOST,
    SERVER_HOST,
    ControlClient,
    DataClient,
    FakeTCP,
    FTPGateway,
    GatewayTestCase,
    KiB,
)
from tests.logevents import LogEvents

#: The config's data_timeout in these tests (seconds).
DATA_TIMEOUT = 50


class UnusedDataConnectionTests(GatewayTestCase):
    """What no transfer takes is closed, and counted until then."""

    def setUp(self) -> None:
        self.gw = FTPGateway(data_timeout=DATA_TIMEOUT)
        self.store = self.gw.store

    @property
    def counted(self) -> int:
        """The gateway's open data connections."""
        return int(self.gw.factory.data_connections.open)

    def connected(self, client: ControlClient, command: str = "EPSV") -> DataClient:
        data = client.passive(command)
        self.assertTrue(data.connect())
        return data

    def assertAborted(self, data: DataClient) -> None:
        self.assertTrue(data.ended, "the unused data connection is still open")
        assert data.reason is not None
        self.assertIsInstance(data.reason.value, error.ConnectionAborted)

    def test_listener_stops_once_connected(self) -> None:
        client = self.login()
        data = client.passive()
        self.assertEqual(len(self.gw.clock.listening()), 1)
        self.assertTrue(data.connect())
        self.assertEqual(self.gw.clock.listening(), [])
        self.assertEqual(self.counted, 1)

    def test_unused_connection_closed_after_data_timeout(self) -> None:
        """The timeout counts again from the connection, not from PASV."""
        client = self.login()
        data = client.passive()
        self.gw.advance(DATA_TIMEOUT - 1)
        self.assertTrue(data.connect())
        self.gw.advance(DATA_TIMEOUT - 1)
        self.assertFalse(data.ended)
        self.gw.advance(1)
        self.assertAborted(data)
        self.assertEqual(self.counted, 0)
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])
        self.assertEqual(
            client.command("LIST"), ["425 Use PASV, EPSV, PORT or EPRT first"]
        )

    def test_unused_listener_closed_after_data_timeout(self) -> None:
        client = self.login()
        logs = LogEvents(self, "cosgw.frontends.ftp")
        client.passive()
        self.gw.advance(DATA_TIMEOUT - 1)
        self.assertEqual(len(self.gw.clock.listening()), 1)
        self.gw.advance(1)
        self.assertEqual(self.gw.clock.listening(), [])
        (event,) = logs.at(LogLevel.info)
        self.assertEqual(
            (event["what"], event["peer"], event["seconds"]),
            ("listener", CLIENT_HOST, DATA_TIMEOUT),
        )

    def test_next_data_command_closes_it(self) -> None:
        client = self.login()
        for command, code in (
            ("PASV", "227"),
            ("EPSV", "229"),
            ("PORT 192,0,2,10,200,1", "200"),
            ("EPRT |1|192.0.2.10|51201|", "200"),
        ):
            data = self.connected(client)
            (reply,) = client.command(command)
            self.assertEqual(reply[:3], code, reply)
            self.assertAborted(data)
            self.assertEqual(self.counted, 0, command)
        self.assertEqual(self.gw.clock.listening(), [])

    def test_rein_closes_it(self) -> None:
        client = self.login()
        data = self.connected(client)
        self.assertEqual(client.command("REIN"), ["220 Ready for a new user"])
        self.assertAborted(data)
        self.assertEqual(self.counted, 0)

    def test_quit_closes_it(self) -> None:
        client = self.login()
        data = self.connected(client)
        client.passive()  # and a listener
        second = self.connected(client)
        self.assertAborted(data)
        self.assertEqual(client.command("QUIT"), ["221 Goodbye"])
        self.assertAborted(second)
        self.assertEqual(self.gw.clock.listening(), [])
        self.assertEqual(self.counted, 0)

    def test_connection_loss_closes_it(self) -> None:
        client = self.login()
        data = self.connected(client)
        client.close()
        self.assertAborted(data)
        self.assertEqual(self.counted, 0)

    def test_failed_transfer_closes_it(self) -> None:
        """RETR of a missing file after PASV and connect: 550, and no leak."""
        client = self.login()
        data = self.connected(client)
        (reply,) = client.command("RETR missing")
        self.assertEqual(reply[:3], "550")
        self.assertAborted(data)
        self.assertEqual(self.counted, 0)

    def test_a_transfer_takes_it_out_of_the_unused_timeout(self) -> None:
        """Once STOR has it, only the stall timeout applies (bytes flow)."""
        client = self.login()
        self.gw.advance(1)
        data = self.start_stor(client, "f")
        for _ in range(4):
            self.gw.advance(DATA_TIMEOUT - 1)
            data.send(b"x" * KiB)
        self.assertFalse(data.ended)
        self.assertEqual(self.finish_upload(client, data), ["226 Transfer complete"])
        self.assertEqual(self.store.stored_bytes("f"), b"x" * 4 * KiB)
        self.assertEqual(self.counted, 0)
        self.assertEqual(self.gw.factory.data_connections.peak, 1)


class SessionLimitTests(unittest.TestCase):
    """The per-session count refuses a connection beyond its limit."""

    def connect(self, factory: DataChannelFactory, port: int) -> Any:
        peer = IPv4Address("TCP", CLIENT_HOST, port)
        channel = factory.buildProtocol(peer)
        if channel is None:
            return None
        transport = FakeTCP(self.clock, IPv4Address("TCP", SERVER_HOST, 61000), peer)
        transport.connect(channel)
        return transport

    def test_limit(self) -> None:
        self.clock = MemoryReactorClock()
        gateway = ChannelCount()
        session = ChannelCount(MAX_SESSION_DATA_CONNECTIONS, parent=gateway)
        factories = [
            DataChannelFactory(CLIENT_HOST, clock=self.clock, count=session)
            for _ in range(MAX_SESSION_DATA_CONNECTIONS + 1)
        ]
        transports = [self.connect(f, 40000 + i) for i, f in enumerate(factories)]
        self.assertIsNone(transports[-1], "one more than the limit is refused")
        self.assertEqual((session.open, gateway.open), (2, 2))
        transports[0].peer_reset()
        self.assertEqual((session.open, gateway.open, gateway.peak), (1, 1, 2))
        self.assertIsNotNone(self.connect(factories[-1], 40009))
        self.assertEqual(gateway.open, 2)


class OutOfDescriptorsTests(GatewayTestCase):
    """EMFILE: a clear 425 and a log line; the session goes on."""

    def test_passive_listener(self) -> None:
        client = self.login()
        logs = LogEvents(self, "cosgw.frontends.ftp")
        listen = self.gw.clock.listenTCP
        attempts: list[int] = []

        def exhausted(
            port: int, factory: Any, backlog: int = 50, interface: str = ""
        ) -> Any:
            attempts.append(port)
            raise error.CannotListenError(
                interface, port, OSError(errno.EMFILE, "Too many open files")
            )

        self.gw.clock.listenTCP = exhausted  # type: ignore[method-assign]
        self.assertEqual(
            client.command("EPSV"),
            ["425 Can't open passive connection: server busy, try later"],
        )
        self.assertEqual(len(attempts), 1, "no trying every port of the range")
        (event,) = logs.at(LogLevel.error)
        self.assertEqual(event["peer"], CLIENT_HOST)
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])
        self.gw.clock.listenTCP = listen  # type: ignore[method-assign]
        self.store.put("f", b"content")
        data = self.connected(client)
        client.command("RETR f")
        self.assertEqual(data.read_all(), b"content")

    def connected(self, client: ControlClient) -> DataClient:
        data = client.passive()
        self.assertTrue(data.connect())
        return data

    def test_active_connection(self) -> None:
        self.store.put("f", b"content")
        client = self.login()
        logs = LogEvents(self, "cosgw.frontends.ftp")
        self.assertEqual(
            client.command("PORT 192,0,2,10,200,1"), ["200 PORT command successful"]
        )
        self.assertEqual(client.command("RETR f"), [])
        host, port, factory, _, _ = self.gw.clock.tcpClients[-1]
        self.assertEqual((host, port), (CLIENT_HOST, 200 * 256 + 1))
        factory.clientConnectionFailed(
            None, Failure(error.ConnectBindError(errno.EMFILE, "Too many open files"))
        )
        self.gw.pump()
        self.assertEqual(
            client.replies(), ["425 Can't open data connection: server busy"]
        )
        self.assertEqual(len(logs.at(LogLevel.error)), 1)
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])
        self.assertNothingLeft()
