"""
Unit tests of FTP transfers on the control connection
(L{cosgw.frontends.ftp.transfers}): RETR and STOR through a passive data
connection, ABOR, the client going away, REST, APPE and SIZE, listings,
and store failures; what the client gets (replies, bytes) and what the
store holds afterwards.  Driven through the fakes of tests/ftp_unit.py (no
socket, no thread, no sleep); the end-to-end proof with real clients is in
tests/test_ftp_transfers.py.
"""

from __future__ import annotations

import os

from twisted.internet import error

from cosgw.frontends.ftp.transfers import EOF_GRACE
from cosgw.interfaces import StoreUnavailable
from tests.ftp_unit import GatewayTestCase, KiB, MiB

DATA = os.urandom(300 * KiB)


class RetrTests(GatewayTestCase):
    def test_retr_streams_the_object(self) -> None:
        self.store.put("dir/f.bin", DATA)
        self.store.reset_requests()
        client = self.login()
        data = client.passive()
        data.connect()
        self.assertEqual(
            client.command("RETR dir/f.bin"),
            [
                f"150 Opening BINARY mode data connection for dir/f.bin ({len(DATA)} bytes)"
            ],
        )
        self.assertLess(len(data.read()), len(DATA), "paused by the send buffer")
        self.assertEqual(client.replies(), [])
        self.assertSameBytes(data.read_all(), DATA)
        self.assertEqual(client.replies(), ["226 Transfer complete"])
        self.assertIsInstance(data.reason.value, error.ConnectionDone)
        self.assertEqual(dict(self.store.requests), {"open": 1})
        self.assertNothingLeft()

    def test_retr_missing_file(self) -> None:
        client = self.login()
        data = client.passive()
        data.connect()
        self.assertEqual(
            client.command("RETR nope"), ["550 /nope: no such file or directory"]
        )
        self.assertNothingLeft()

    def test_abor_during_retr(self) -> None:
        self.store.put("f.bin", DATA)
        client = self.login()
        data = client.passive()
        data.connect()
        client.command("RETR f.bin")
        first = data.read()
        self.assertGreater(len(first), 0)
        self.assertEqual(
            client.command("ABOR"), ["426 Transfer aborted", "226 ABOR successful"]
        )
        self.assertIsInstance(data.reason.value, error.ConnectionAborted)
        self.assertLess(len(data.read_all()), len(DATA))
        self.assertNothingLeft()
        self.assertEqual(client.command("NOOP"), ["200 NOOP ok"])

    def test_abor_while_waiting_for_the_data_connection(self) -> None:
        self.store.put("f.bin", DATA)
        client = self.login()
        client.passive()
        self.assertEqual(client.command("RETR f.bin"), [])
        self.assertEqual(
            client.command("ABOR"),
            ["426 Connection closed; transfer aborted", "226 ABOR successful"],
        )
        self.assertNothingLeft()

    def test_abor_without_a_transfer(self) -> None:
        client = self.login()
        self.assertEqual(client.command("ABOR"), ["225 No transfer to abort"])

    def test_client_reset_during_retr(self) -> None:
        self.store.put("f.bin", DATA)
        client = self.login()
        data = client.passive()
        data.connect()
        client.command("RETR f.bin")
        data.read()
        data.reset()
        self.assertEqual(client.replies(), ["426 Connection closed; transfer aborted"])
        self.assertNothingLeft()


class StorTests(GatewayTestCase):
    def test_small_stor(self) -> None:
        client = self.login()
        self.store.reset_requests()
        data = self.start_stor(client, "f.txt")
        data.send(b"hello ")
        data.send(b"world")
        self.assertEqual(self.finish_upload(client, data), ["226 Transfer complete"])
        self.assertEqual(self.store.stored_bytes("f.txt"), b"hello world")
        self.assertNothingLeft()

    def test_multipart_stor(self) -> None:
        content = os.urandom(2 * MiB + 512 * KiB)
        client = self.login()
        self.store.reset_requests()
        data = self.start_stor(client, "big.bin")
        for i in range(0, len(content), 64 * KiB):
            data.send(content[i : i + 64 * KiB])
        self.assertEqual(self.finish_upload(client, data), ["226 Transfer complete"])
        self.assertSameBytes(self.store.stored_bytes("big.bin"), content)
        self.assertEqual(self.store.requests["create_multipart"], 1)
        self.assertEqual(self.store.requests["upload_part"], 3)
        self.assertEqual(self.store.requests["complete_multipart"], 1)
        self.assertNothingLeft()

    def test_abor_during_stor_leaves_nothing(self) -> None:
        client = self.login()
        data = self.start_stor(client, "big.bin")
        data.send(os.urandom(MiB + 512 * KiB))
        self.assertEqual(len(self.store.stored_uploads()), 1, "a part is stored")
        self.assertEqual(
            client.command("ABOR"),
            ["426 Transfer aborted; nothing was stored", "226 ABOR successful"],
        )
        self.assertIsInstance(data.reason.value, error.ConnectionAborted)
        self.assertEqual(self.store.stored_keys(), [])
        self.assertEqual(self.store.requests["abort_multipart"], 1)
        self.assertNothingLeft()
        self.assertEqual(
            client.command("SIZE big.bin"), ["550 /big.bin: no such file or directory"]
        )

    def test_reset_keeps_whole_parts_for_a_resume(self) -> None:
        content = os.urandom(2 * MiB + 100)
        client = self.login()
        data = self.start_stor(client, "f.bin")
        data.send(content[: MiB + 300 * KiB])
        data.reset()
        self.assertEqual(
            client.replies(),
            [
                f"426 Connection closed; transfer aborted; {MiB} bytes kept:"
                f" resume with REST {MiB}"
            ],
        )
        self.assertEqual(self.store.stored_keys(), [])
        self.assertEqual(client.command("SIZE f.bin"), [f"213 {MiB}"])
        self.assertEqual(
            client.command(f"REST {MiB}"),
            [f"350 Restarting at {MiB}; send RETR, STOR or APPE"],
        )
        data = self.start_stor(client, "f.bin", from_byte=MiB)
        data.send(content[MiB:])
        self.assertEqual(self.finish_upload(client, data), ["226 Transfer complete"])
        self.assertSameBytes(self.store.stored_bytes("f.bin"), content)
        self.assertNothingLeft()

    def test_quit_during_a_transfer_waits_for_it(self) -> None:
        client = self.login()
        data = self.start_stor(client, "f.txt")
        data.send(b"payload")
        self.assertEqual(client.command("QUIT"), [])
        self.assertFalse(client.ended)
        self.assertEqual(
            self.finish_upload(client, data), ["226 Transfer complete", "221 Goodbye"]
        )
        self.assertTrue(client.ended)
        self.assertEqual(self.store.stored_bytes("f.txt"), b"payload")
        self.assertEqual(self.gw.logouts, ["alice"])

    def test_control_connection_lost_during_stor_commits_nothing(self) -> None:
        client = self.login()
        data = self.start_stor(client, "f.txt")
        data.send(b"partial")
        client.close()
        self.assertTrue(data.ended, "the data connection is dropped")
        self.assertIsInstance(data.reason.value, error.ConnectionAborted)
        self.gw.advance(EOF_GRACE)
        self.assertEqual(self.store.stored_keys(), [])
        self.assertEqual(self.gw.logouts, ["alice"])
        self.assertNothingLeft()

    def test_stall_timeout_aborts_the_upload(self) -> None:
        client = self.login()
        data = self.start_stor(client, "f.txt")
        data.send(b"partial")
        self.gw.advance(119.9)
        self.assertFalse(data.ended)
        self.gw.advance(0.1)
        self.assertEqual(client.replies(), ["426 Connection closed; transfer aborted"])
        self.assertIsInstance(data.reason.value, error.ConnectionAborted)
        self.assertEqual(self.store.stored_keys(), [])
        self.assertNothingLeft()


class RestartTests(GatewayTestCase):
    ORIGINAL = b"A" * 2000

    def setUp(self) -> None:
        super().setUp()
        self.store.put("f", self.ORIGINAL)

    def test_rest_then_stor_keeps_the_prefix(self) -> None:
        client = self.login()
        self.assertEqual(
            client.command("REST 1000"),
            ["350 Restarting at 1000; send RETR, STOR or APPE"],
        )
        data = self.start_stor(client, "f", from_byte=1000)
        data.send(b"B" * 500)
        self.assertEqual(self.finish_upload(client, data), ["226 Transfer complete"])
        self.assertEqual(self.store.stored_bytes("f"), b"A" * 1000 + b"B" * 500)

    def test_rest_then_appe_is_ignored(self) -> None:
        client = self.login()
        client.command("REST 10")
        data = client.passive()
        data.connect()
        self.assertEqual(
            client.command("APPE f"), ["150 Ok to send data for f (from byte 2000)"]
        )
        data.send(b"C" * 5)
        self.assertEqual(self.finish_upload(client, data), ["226 Transfer complete"])
        self.assertEqual(self.store.stored_bytes("f"), self.ORIGINAL + b"C" * 5)
        self.assertIn(" REST offset: 0", client.command("STAT"))

    def test_rest_is_reset_after_a_transfer(self) -> None:
        client = self.login()
        client.command("REST 1500")
        data = client.passive()
        data.connect()
        self.assertEqual(
            client.command("RETR f"),
            [
                "150 Opening BINARY mode data connection for f (500 bytes)",
                "226 Transfer complete",
            ],
        )
        self.assertEqual(data.read_all(), b"A" * 500)
        self.assertIn(" REST offset: 0", client.command("STAT"))
        data = client.passive()
        data.connect()
        client.command("RETR f")
        self.assertEqual(data.read_all(), self.ORIGINAL)

    def test_rest_is_reset_after_a_failed_transfer(self) -> None:
        client = self.login()
        client.command("REST 1500")
        client.passive()
        self.assertEqual(
            client.command("RETR nope"), ["550 /nope: no such file or directory"]
        )
        self.assertIn(" REST offset: 0", client.command("STAT"))

    def test_rest_stat_and_syntax(self) -> None:
        client = self.login()
        self.assertEqual(client.command("REST x"), ["501 REST needs a byte offset"])
        client.command("REST 1500")
        self.assertIn(" REST offset: 1500", client.command("STAT"))

    def test_rest_past_the_end(self) -> None:
        client = self.login()
        client.command("REST 5000")
        client.passive()
        (reply,) = client.command("STOR f")
        self.assertTrue(reply.startswith("554 /f: "), reply)
        self.assertEqual(self.store.stored_bytes("f"), self.ORIGINAL)
        self.assertNothingLeft()

    def test_size(self) -> None:
        client = self.login()
        client.command("MKD d")
        self.assertEqual(client.command("SIZE f"), ["213 2000"])
        self.assertEqual(client.command("SIZE d"), ["550 d: not a plain file"])
        self.assertEqual(
            client.command("SIZE nope"), ["550 /nope: no such file or directory"]
        )


class ListingTests(GatewayTestCase):
    def test_nlst(self) -> None:
        for name in ("b", "a", "c/d"):
            self.store.put(name, b"x")
        client = self.login()
        data = client.passive()
        data.connect()
        self.assertEqual(
            client.command("NLST"),
            [
                "150 Here comes the directory listing",
                "226 Directory send OK (3 entries)",
            ],
        )
        self.assertEqual(data.read_all(), b"a\r\nb\r\nc\r\n")
        self.assertNothingLeft()


class StoreFailureTests(GatewayTestCase):
    """The store fails: the client is told (451), nothing is left behind."""

    STORE_DOWN = r"; try again later \(request memory-\d{6}\)$"

    def test_failed_put(self) -> None:
        client = self.login()
        data = self.start_stor(client, "f.txt")
        data.send(b"small")
        self.store.fail_next("put")
        (reply,) = self.finish_upload(client, data)
        self.assertRegex(reply, r"^451 /f\.txt: .*" + self.STORE_DOWN)
        self.assertEqual(self.store.stored_keys(), [])
        self.assertNothingLeft()
        # A store that is down is a warning line, not a traceback.
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])

    def test_failed_part_stops_the_client(self) -> None:
        client = self.login()
        data = self.start_stor(client, "big.bin")
        self.store.fail_next("upload_part")
        data.send(os.urandom(MiB + 1))
        self.assertTrue(data.ended, "the client is stopped sending")
        self.assertIsInstance(data.reason.value, error.ConnectionAborted)
        (reply,) = client.replies()
        self.assertRegex(reply, r"^451 /big\.bin: .*" + self.STORE_DOWN)
        self.assertEqual(self.store.stored_keys(), [])
        self.assertEqual(self.store.requests["abort_multipart"], 1)
        self.assertNothingLeft()
        # A store that is down is a warning line, not a traceback.
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])

    def test_failed_open(self) -> None:
        self.store.put("f", b"data")
        client = self.login()
        client.passive()
        self.store.fail_next("open")
        (reply,) = client.command("RETR f")
        self.assertRegex(reply, r"^451 /f: .*" + self.STORE_DOWN)
        self.assertNothingLeft()
        # A store that is down is a warning line, not a traceback.
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])
