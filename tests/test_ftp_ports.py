"""
Unit tests of setting up FTP data connections (L{cosgw.frontends.ftp.ports}):
PASV and EPSV listeners on the control connection's address and the
passive range, the masquerade address, EPSV ALL, port stealing and FTP
bounce refused, and the deadline for the data connection; driven through
the fakes of tests/ftp_unit.py (no socket, no thread, no sleep).
"""

from __future__ import annotations

import os

from cosgw.frontends.ftp.ports import DATA_CONNECTION_TIMEOUT
from tests.ftp_unit import SERVER_HOST, FTPGateway, GatewayTestCase, KiB

DATA = os.urandom(300 * KiB)


class PassiveTests(GatewayTestCase):
    def test_epsv_listens_on_the_control_address(self) -> None:
        client = self.login()
        data = client.passive("EPSV")
        self.assertTrue(61000 <= data.port <= 61999, data.port)
        self.assertEqual(self.gw.clock.tcpServers[0][3], SERVER_HOST)

    def test_pasv_announces_the_address(self) -> None:
        client = self.login()
        data = client.passive("PASV")
        self.assertTrue(61000 <= data.port <= 61999, data.port)

    def test_masquerade_address(self) -> None:
        self.gw = FTPGateway(masquerade_address="203.0.113.5")
        client = self.gw.login()
        (reply,) = client.command("PASV")
        port = self.gw.clock.ports[-1].port
        self.assertEqual(
            reply,
            f"227 Entering Passive Mode (203,0,113,5,{port >> 8},{port & 0xFF})",
        )

    def test_new_pasv_closes_the_previous_listener(self) -> None:
        client = self.login()
        client.passive()
        client.passive("PASV")
        self.assertEqual(self.gw.clock.listening(), [self.gw.clock.ports[1]])
        client.command("QUIT")
        self.assertEqual(self.gw.clock.listening(), [])

    def test_epsv_protocol_and_all(self) -> None:
        client = self.login()
        self.assertEqual(
            client.command("EPSV 2"), ["522 Network protocol not supported, use (1)"]
        )
        self.assertEqual(client.command("EPSV ALL"), ["200 EPSV ALL ok"])
        self.assertEqual(
            client.command("PASV"), ["503 PASV not allowed after EPSV ALL"]
        )
        self.assertEqual(
            client.command("PORT 192,0,2,10,200,1"),
            ["503 PORT and EPRT are not allowed after EPSV ALL"],
        )
        client.passive("EPSV")

    def test_data_connection_only_from_the_client(self) -> None:
        """RFC 2577 port stealing: another host's connection is refused."""
        self.store.put("f", b"secret")
        client = self.login()
        data = client.passive()
        self.assertFalse(data.connect(host="203.0.113.66"))
        self.assertTrue(data.connect())
        self.assertFalse(data.connect(), "one connection per transfer")
        self.assertEqual(
            client.command("RETR f"),
            [
                "150 Opening BINARY mode data connection for f (6 bytes)",
                "226 Transfer complete",
            ],
        )
        self.assertEqual(data.read_all(), b"secret")

    def test_transfer_needs_a_data_connection_first(self) -> None:
        client = self.login()
        self.assertEqual(
            client.command("LIST"), ["425 Use PASV, EPSV, PORT or EPRT first"]
        )

    def test_port_bounce_refused(self) -> None:
        client = self.login()
        self.assertEqual(
            client.command("PORT 203,0,113,66,200,1"),
            ["504 Data connections go only to your own address and a port >= 1024"],
        )
        self.assertEqual(
            client.command("PORT 192,0,2,10,0,21"),
            ["504 Data connections go only to your own address and a port >= 1024"],
        )
        self.assertEqual(
            client.command("PORT 192,0,2,10,200,1"), ["200 PORT command successful"]
        )

    def test_data_connection_timeout(self) -> None:
        """No data connection within the limit: 425, and nothing held open."""
        self.store.put("f", DATA)
        client = self.login()
        data = client.passive()
        self.assertEqual(client.command("RETR f"), [])
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"], "nothing waits")
        self.gw.advance(DATA_CONNECTION_TIMEOUT - 0.1)
        self.assertEqual(client.replies(), [])
        self.gw.advance(0.1)
        self.assertEqual(client.replies(), ["425 Can't open data connection"])
        self.assertFalse(data.connect(host="203.0.113.66"))
        self.assertNothingLeft()
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])

    def test_data_connection_timeout_on_upload(self) -> None:
        client = self.login()
        client.passive()
        self.assertEqual(client.command("STOR f"), [])
        self.gw.advance(DATA_CONNECTION_TIMEOUT)
        self.assertEqual(client.replies(), ["425 Can't open data connection"])
        self.assertEqual(self.store.stored_keys(), [])
        self.assertNothingLeft()
