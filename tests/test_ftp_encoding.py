"""
Unit tests of FTP name encodings (L{cosgw.frontends.ftp.encoding}): the
session's encoding as configured and as the client switches it, command
lines decoded and replies and listings encoded in it, GBK's 0x5C and 0x7C
second bytes and GB18030's four-byte sequences through the line parser,
C{auto} detection, and names the session's encoding cannot write.  Driven
through the fakes of tests/ftp_unit.py (no socket, no thread, no sleep);
tests/test_ftp_encoding_clients.py makes the same points with ftplib and
lftp over real sockets and the COS test store.
"""

from __future__ import annotations

from twisted.logger import LogLevel
from twisted.trial import unittest

from cosgw.frontends.ftp.encoding import (
    MAX_REPLACED_NAMES,
    NotDecodable,
    SessionEncoding,
)
from cosgw.frontends.ftp.protocol import strip_telnet
from tests.ftp_unit import ALICE_PASSWORD, ControlClient, FTPGateway
from tests.logevents import LogEvents

#: Two GBK characters whose second byte is ASCII: 0x5C (backslash) and
#: 0x7C (vertical bar).
BACKSLASH_TRAIL = "乗"
BAR_TRAIL = "亅"
#: A GB18030 character outside GBK: four bytes, two of them ASCII digits.
FOUR_BYTES = "\u1e3f"  # ḿ
DIRECTORY = "中文目录"
REPORT = "报告.txt"
#: Names GBK cannot write.
EMOJI = "旅行😀.jpg"
KOREAN = "한국어.txt"


def fields() -> dict[str, str]:
    return {"session": "s1", "peer": "192.0.2.10"}


class CodecTableTests(unittest.TestCase):
    """Which encoding a session speaks (the module docstring's table)."""

    def codec(self, configured: str, opts: list[bool]) -> str:
        names = SessionEncoding(configured, fields)
        for on in opts:
            names.set_utf8(on)
        return names.codec

    def test_table(self) -> None:
        cases = {
            ("utf-8", ()): "utf-8",
            ("utf-8", (True,)): "utf-8",
            ("utf-8", (False,)): "utf-8",
            ("gbk", ()): "gbk",
            ("gbk", (True,)): "utf-8",
            ("gbk", (True, False)): "gbk",
            ("big5", (False,)): "big5",
            ("auto", ()): "utf-8",
            ("auto", (True,)): "utf-8",
            ("auto", (False,)): "gb18030",
        }
        for (configured, opts), expected in cases.items():
            self.assertEqual(
                self.codec(configured, list(opts)), expected, (configured, opts)
            )

    def test_off_under_utf8_is_refused(self) -> None:
        names = SessionEncoding("utf-8", fields)
        self.assertFalse(names.set_utf8(False))
        self.assertIsNone(names.utf8_option)
        self.assertTrue(names.set_utf8(True))

    def test_utf8_on_holds_over_the_account_encoding(self) -> None:
        names = SessionEncoding("utf-8", fields)
        names.set_utf8(True)
        names.configure("gbk")
        self.assertEqual(names.codec, "utf-8")
        names.set_utf8(False)
        self.assertEqual(names.codec, "gbk")


class DecodeTests(unittest.TestCase):
    def test_gbk_lines_with_ascii_second_bytes(self) -> None:
        names = SessionEncoding("gbk", fields)
        for name in (BACKSLASH_TRAIL, BAR_TRAIL, f"{DIRECTORY}/{REPORT}"):
            line = f"CWD {name}".encode("gbk")
            self.assertEqual(names.decode(line), f"CWD {name}")
        self.assertIn(b"\\", BACKSLASH_TRAIL.encode("gbk"))
        self.assertIn(b"|", BAR_TRAIL.encode("gbk"))

    def test_gb18030_four_byte_sequences(self) -> None:
        names = SessionEncoding("gb18030", fields)
        for name in (FOUR_BYTES, "😀", KOREAN):
            encoded = name.encode("gb18030")
            self.assertEqual(names.decode(b"MKD " + encoded), f"MKD {name}")
        self.assertEqual(len(FOUR_BYTES.encode("gb18030")), 4)

    def test_invalid_lines(self) -> None:
        for configured, line, expected in [
            ("utf-8", b"CWD \xc3\x28", "Command is not valid UTF-8"),
            ("gbk", b"CWD \x81\x20", "Command is not valid GBK"),
            ("auto", b"CWD \x81\x20", "Command is not valid UTF-8 or GB18030"),
        ]:
            names = SessionEncoding(configured, fields)
            with self.assertRaises(NotDecodable) as caught:
                names.decode(line)
            self.assertEqual(str(caught.exception), expected)

    def test_auto_switches_once_and_logs_once(self) -> None:
        events = LogEvents(self, "cosgw.frontends.ftp")
        names = SessionEncoding("auto", fields)
        self.assertEqual(names.decode("CWD 报告".encode()), "CWD 报告")
        self.assertEqual(names.codec, "utf-8", "valid UTF-8 does not switch")
        self.assertEqual(names.decode(f"CWD {REPORT}".encode("gbk")), f"CWD {REPORT}")
        self.assertEqual(names.codec, "gb18030")
        self.assertFalse(names.detecting)
        names.decode(f"CWD {DIRECTORY}".encode("gbk"))
        logged = [e for e in events.at(LogLevel.info) if "GB18030" in e["log_format"]]
        self.assertEqual(len(logged), 1)
        self.assertEqual(
            (logged[0]["session"], logged[0]["peer"]), ("s1", "192.0.2.10")
        )

    def test_auto_reads_a_gbk_name_that_is_valid_utf8_as_utf8(self) -> None:
        """The documented limit of detection: 目录 in GBK is valid UTF-8."""
        names = SessionEncoding("auto", fields)
        line = "MKD 目录".encode("gbk")
        self.assertEqual(names.decode(line), line.decode("utf-8"))
        self.assertEqual(names.codec, "utf-8")

    def test_auto_stays_utf8_after_opts_utf8_on(self) -> None:
        names = SessionEncoding("auto", fields)
        names.set_utf8(True)
        with self.assertRaises(NotDecodable):
            names.decode(f"CWD {REPORT}".encode("gbk"))


class ShownTests(unittest.TestCase):
    def test_replacement_per_character(self) -> None:
        names = SessionEncoding("gbk", fields)
        self.assertEqual(names.shown(DIRECTORY), DIRECTORY)
        self.assertEqual(names.shown(EMOJI), "旅行?.jpg")
        self.assertEqual(names.shown(KOREAN), "???.txt")
        self.assertEqual(names.replaced_in("a/???.txt"), "???.txt")
        self.assertEqual(names.replaced_in("/旅行?.jpg"), "旅行?.jpg")
        self.assertIsNone(names.replaced_in("a/?.txt"))

    def test_nothing_replaced_in_utf8_or_gb18030(self) -> None:
        for codec in ("utf-8", "gb18030"):
            names = SessionEncoding(codec, fields)
            self.assertEqual(names.shown(EMOJI), EMOJI)
            self.assertEqual(names.shown(KOREAN), KOREAN)

    def test_switching_forgets_the_replacements(self) -> None:
        names = SessionEncoding("gbk", fields)
        names.shown(KOREAN)
        names.set_utf8(True)
        self.assertIsNone(names.replaced_in("???.txt"))

    def test_remembered_names_are_bounded(self) -> None:
        names = SessionEncoding("gbk", fields)
        for i in range(MAX_REPLACED_NAMES + 10):
            names.shown(f"{i}😀")
        self.assertIsNone(names.replaced_in("0?"))
        self.assertEqual(
            names.replaced_in(f"{MAX_REPLACED_NAMES + 9}?"),
            f"{MAX_REPLACED_NAMES + 9}?",
        )

    def test_encode_replaces_and_logs_once(self) -> None:
        events = LogEvents(self, "cosgw.frontends.ftp")
        names = SessionEncoding("gbk", fields)
        self.assertEqual(
            names.encode(f'257 "/{DIRECTORY}"'), f'257 "/{DIRECTORY}"'.encode("gbk")
        )
        self.assertEqual(names.encode('257 "/😀"'), b'257 "/?"')
        names.encode('257 "/한"')
        names.shown(KOREAN)
        logged = [
            e for e in events.at(LogLevel.info) if "cannot write" in e["log_format"]
        ]
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["encoding"], "GBK")


class TelnetTests(unittest.TestCase):
    def test_doubled_iac_is_one_data_byte(self) -> None:
        self.assertEqual(strip_telnet(b"CWD a\xff\xffb"), b"CWD a\xffb")
        self.assertEqual(strip_telnet(b"\xff\xf4\xff\xf2ABOR"), b"ABOR")


# -- through the protocol ---------------------------------------------------------


def send(client: ControlClient, codec: str, *lines: str) -> None:
    client.send_raw(b"".join(line.encode(codec) + b"\r\n" for line in lines))


def replies(client: ControlClient) -> list[bytes]:
    data = client.transport.read()
    assert data == b"" or data.endswith(b"\r\n"), data
    return data.split(b"\r\n")[:-1]


class ProtocolTests(unittest.TestCase):
    def test_gbk_session_stores_utf8_and_answers_in_gbk(self) -> None:
        gw = FTPGateway(ftp_encoding="gbk")
        client = gw.login()
        path = f"{DIRECTORY}/{BACKSLASH_TRAIL}{BAR_TRAIL}"
        send(client, "gbk", f"MKD {DIRECTORY}", f"MKD {path}", f"CWD {path}", "PWD")
        self.assertEqual(
            replies(client),
            [
                f'257 "/{DIRECTORY}" created'.encode("gbk"),
                f'257 "/{path}" created'.encode("gbk"),
                f"250 Directory changed to /{path}".encode("gbk"),
                f'257 "/{path}" is the current directory'.encode("gbk"),
            ],
        )
        self.assertEqual(
            gw.store.stored_keys(), [f"{DIRECTORY}/", f"{path}/"], "keys are UTF-8 text"
        )
        send(client, "gbk", f"CWD /{DIRECTORY}/{REPORT}")
        self.assertEqual(
            replies(client),
            [f"550 /{DIRECTORY}/{REPORT}: no such file or directory".encode("gbk")],
        )

    def test_replies_quoting_names_in_gbk(self) -> None:
        """150 of RETR and STOR, MLST's 250, SITE: each in GBK."""
        gw = FTPGateway(ftp_encoding="gbk")
        gw.store.put(f"{DIRECTORY}/{REPORT}", b"report")
        client = gw.login()
        name = f"{DIRECTORY}/{REPORT}"
        data = client.passive()
        data.connect()
        send(client, "gbk", f"RETR {name}")
        self.assertEqual(data.read_all(), b"report")
        self.assertEqual(
            replies(client),
            [
                f"150 Opening BINARY mode data connection for {name} (6 bytes)".encode(
                    "gbk"
                ),
                b"226 Transfer complete",
            ],
        )
        upload = client.passive()
        upload.connect()
        send(client, "gbk", f"STOR {DIRECTORY}/{BAR_TRAIL}")
        self.assertEqual(
            replies(client),
            [
                f"150 Ok to send data for {DIRECTORY}/{BAR_TRAIL} (from byte 0)".encode(
                    "gbk"
                )
            ],
        )
        upload.send(b"bar")
        upload.close()
        gw.advance(1)
        self.assertEqual(replies(client), [b"226 Transfer complete"])
        self.assertEqual(gw.store.stored_bytes(f"{DIRECTORY}/{BAR_TRAIL}"), b"bar")
        send(client, "gbk", f"MLST {name}", f"SITE CHMOD 644 {name}")
        lines = replies(client)
        self.assertEqual(lines[0], f"250-Listing /{name}".encode("gbk"))
        self.assertTrue(lines[1].endswith(f" /{name}".encode("gbk")), lines[1])
        self.assertEqual(
            lines[2:],
            [b"250 End", b"200 SITE CHMOD accepted; object storage keeps no modes"],
        )

    def test_multibyte_characters_split_across_segments(self) -> None:
        gw = FTPGateway(ftp_encoding="gb18030")
        client = gw.login()
        line = f"MKD {FOUR_BYTES}{BACKSLASH_TRAIL}\r\nPWD\r\n".encode("gb18030")
        for i in range(len(line)):
            client.send_raw(line[i : i + 1])
        self.assertEqual(
            replies(client),
            [
                f'257 "/{FOUR_BYTES}{BACKSLASH_TRAIL}" created'.encode("gb18030"),
                b'257 "/" is the current directory',
            ],
        )

    def test_listings_in_gbk(self) -> None:
        gw = FTPGateway(ftp_encoding="gbk")
        gw.store.put(f"{DIRECTORY}/{REPORT}", b"report")
        gw.store.put(f"{DIRECTORY}/{BACKSLASH_TRAIL}.txt", b"x")
        client = gw.login()
        expected = {REPORT, f"{BACKSLASH_TRAIL}.txt"}
        # The name in each kind of line: LIST's last field, MLSD's after
        # the facts.
        name_of = {
            "NLST": lambda line: line,
            "LIST": lambda line: line.split()[-1],
            "MLSD": lambda line: line.split("; ", 1)[1],
        }
        for command, name in name_of.items():
            data = client.passive()
            data.connect()
            send(client, "gbk", f"{command} {DIRECTORY}")
            lines = data.read_all().decode("gbk").split("\r\n")[:-1]
            self.assertEqual({name(line) for line in lines}, expected, command)
            self.assertEqual(
                replies(client),
                [
                    b"150 Here comes the directory listing",
                    b"226 Directory send OK (2 entries)",
                ],
            )
        send(
            client, "gbk", f"RNFR {DIRECTORY}/{REPORT}", f"RNTO {DIRECTORY}/{BAR_TRAIL}"
        )
        self.assertEqual(
            replies(client), [b"350 Ready for RNTO", b"250 Rename successful"]
        )
        self.assertIn(f"{DIRECTORY}/{BAR_TRAIL}", gw.store.stored_keys())

    def test_unwritable_names_are_shown_replaced_and_refused_back(self) -> None:
        events = LogEvents(self, "cosgw.frontends.ftp")
        gw = FTPGateway(ftp_encoding="gbk")
        gw.store.put(EMOJI, b"photo")
        gw.store.put(KOREAN, b"text")
        gw.store.put("旅行?.jpg", b"a real question mark")
        gw.store.put(REPORT, b"report")
        client = gw.login()
        data = client.passive()
        data.connect()
        send(client, "gbk", "NLST")
        listed = data.read_all().decode("gbk").split("\r\n")[:-1]
        self.assertEqual(
            sorted(listed), sorted(["旅行?.jpg", "???.txt", "旅行?.jpg", REPORT])
        )
        replies(client)
        for name in ("旅行?.jpg", "???.txt"):
            send(client, "gbk", f"SIZE {name}")
            (reply,) = replies(client)
            self.assertEqual(
                reply.decode("gbk"),
                f"550 {name}: '?' in {name} stands for characters GBK cannot write;"
                " use a UTF-8 client",
            )
        send(client, "gbk", f"SIZE {REPORT}", "STAT /")
        lines = replies(client)
        self.assertEqual(lines[0], b"213 6")
        self.assertIn(b"???.txt", b"\n".join(lines))
        send(client, "gbk", "OPTS UTF8 ON")
        self.assertEqual(replies(client), [b"200 UTF8 on: names are UTF-8"])
        client.send(f"SIZE {KOREAN}", "SIZE 旅行?.jpg")
        self.assertEqual(client.replies(), ["213 4", "213 20"])
        logged = [
            e for e in events.at(LogLevel.info) if "cannot write" in e["log_format"]
        ]
        self.assertEqual(len(logged), 1)

    def test_opts_utf8_switches(self) -> None:
        gw = FTPGateway(ftp_encoding="gbk")
        gw.store.put(f"{DIRECTORY}/f", b"x")
        client = gw.login()
        send(client, "gbk", f"CWD {DIRECTORY}")
        self.assertEqual(
            replies(client), [f"250 Directory changed to /{DIRECTORY}".encode("gbk")]
        )
        client.send("OPTS UTF8 ON", "PWD")
        self.assertEqual(
            client.replies(),
            [
                "200 UTF8 on: names are UTF-8",
                f'257 "/{DIRECTORY}" is the current directory',
            ],
        )
        send(client, "gbk", f"CWD /{DIRECTORY}")
        self.assertEqual(replies(client), [b"501 Command is not valid UTF-8"])
        client.send("OPTS UTF8 OFF")
        self.assertEqual(client.replies(), ["200 UTF8 off: names are GBK"])
        send(client, "gbk", "PWD")
        self.assertEqual(
            replies(client),
            [f'257 "/{DIRECTORY}" is the current directory'.encode("gbk")],
        )
        client.send("OPTS UTF8 MAYBE")
        self.assertEqual(client.replies(), ["501 OPTS UTF8 ON or OFF"])

    def test_opts_utf8_off_refused_without_a_legacy_encoding(self) -> None:
        client = FTPGateway().login()
        self.assertEqual(
            client.command("OPTS UTF8 OFF"),
            ["504 UTF8 cannot be turned off: no other name encoding is configured"],
        )
        self.assertEqual(
            client.command("OPTS UTF8 ON"), ["200 UTF8 on: names are UTF-8"]
        )

    def test_auto_switches_on_the_first_gbk_path(self) -> None:
        events = LogEvents(self, "cosgw.frontends.ftp")
        gw = FTPGateway(ftp_encoding="auto")
        client = gw.login()
        client.send("MKD 日本語")
        self.assertEqual(client.replies(), ['257 "/日本語" created'])
        send(client, "gbk", f"MKD {REPORT}", f"MKD {DIRECTORY}")
        client.send_raw(b"CWD \x81\x20\r\n")
        self.assertEqual(
            replies(client),
            [
                f'257 "/{REPORT}" created'.encode("gb18030"),
                f'257 "/{DIRECTORY}" created'.encode("gb18030"),
                b"501 Command is not valid GB18030",
            ],
        )
        self.assertEqual(
            gw.store.stored_keys(), sorted([f"{DIRECTORY}/", f"{REPORT}/", "日本語/"])
        )
        switched = [e for e in events.at(LogLevel.info) if "GB18030" in e["log_format"]]
        self.assertEqual(len(switched), 1)
        protocol = client.protocol
        self.assertEqual(switched[0]["session"], protocol.audit.id)
        self.assertEqual(switched[0]["peer"], "192.0.2.10")

    def test_auto_neither_encoding_gets_501_and_serves_on(self) -> None:
        client = FTPGateway(ftp_encoding="auto").login()
        client.send_raw(b"CWD \x81\x20\r\nNOOP\r\n")
        self.assertEqual(
            client.replies(),
            ["501 Command is not valid UTF-8 or GB18030", "200 NOOP ok"],
        )

    def test_user_beats_listener(self) -> None:
        gw = FTPGateway(ftp_encoding="big5")
        gw.factory.user_encodings = {"alice": "gbk"}
        client = gw.connect()
        client.replies()
        # Before USER: the listener's Big5; from USER alice on: GBK.
        send(client, "big5", "USER 使用者")
        self.assertEqual(replies(client), [b"331 Password required"])
        send(client, "big5", "PASS x")
        gw.advance(1.0)  # the login defender's delay
        self.assertEqual(replies(client), [b"530 Login incorrect"])
        self.assertEqual(client.protocol.names.codec, "big5")
        client.login("alice", ALICE_PASSWORD)
        send(client, "gbk", f"MKD {DIRECTORY}")
        self.assertEqual(replies(client), [f'257 "/{DIRECTORY}" created'.encode("gbk")])
        client.send("REIN")
        self.assertEqual(client.replies(), ["220 Ready for a new user"])
        self.assertEqual(client.protocol.names.codec, "big5")
