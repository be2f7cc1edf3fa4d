"""
FTP name encodings end to end: real clients (Python's ftplib with
C{encoding="gbk"}, and lftp with C{set ftp:charset gbk}) against a gateway
on 127.0.0.1 over the COS test store, whose keys are read directly: a GBK
client's names are stored as UTF-8 and a UTF-8 client sees them too.  The
unit tests of the same rules are in tests/test_ftp_encoding.py.
"""

from __future__ import annotations

import dataclasses
import ftplib
import io
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.trial import unittest

from cosgw.config import UserConfig
from tests.harness import in_thread, plain_user, random_bytes, start_gateway
from tests.logevents import LogEvents

PASSWORD = "enc-Passw0rd"
DIRECTORY = "中文目录"
REPORT = "报告.txt"
DRAFT = "草稿.txt"
#: Names GBK cannot write: shown to a GBK session as "?.txt" and "???.txt".
EMOJI = "😀.txt"
KOREAN = "한국어.txt"


def user(name: str, encoding: str | None = None) -> UserConfig:
    return plain_user(name, password=PASSWORD, ftp_encoding=encoding)


def connect(port: int, encoding: str, name: str = "alice") -> ftplib.FTP:
    ftp = ftplib.FTP(encoding=encoding)
    ftp.connect("127.0.0.1", port, timeout=20)
    ftp.login(name, PASSWORD)
    ftp.voidcmd("TYPE I")
    return ftp


def listings(ftp: ftplib.FTP, path: str) -> dict[str, list[str]]:
    """The names LIST, NLST and MLSD give for C{path}."""
    lines: list[str] = []
    ftp.retrlines(f"LIST {path}", lines.append)
    return {
        "LIST": sorted(line.split(None, 8)[-1] for line in lines),
        "NLST": sorted(ftp.nlst(path)),
        "MLSD": sorted(name for name, _ in ftp.mlsd(path)),
    }


class EncodingClientTests(unittest.TestCase):
    """
    One gateway: [server] ftp_encoding = big5; listeners: one with
    ftp_encoding=gbk (the first), one plain (so Big5), and implicit FTPS
    with ftp_encoding=gbk; users alice (no encoding of her own) and carol
    (utf-8).
    """

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(
            self,
            "cos",
            users={"alice": user("alice"), "carol": user("carol", "utf-8")},
            ftp_listen=(
                "tcp:0:interface=127.0.0.1:ftp_encoding=gbk",
                "tcp:0:interface=127.0.0.1",
            ),
            ftps_listen=("tcp:0:interface=127.0.0.1:ftp_encoding=gbk",),
            ftp_encoding="big5",
        )
        self.gbk_port = self.gw.port
        self.big5_port = self.gw.service.ftp.listeners[1].port.getHost().port
        implicit = self.gw.service.ftp.implicit_listeners[0]
        yield implicit.listening
        self.ftps_port = implicit.port.getHost().port

    @defer.inlineCallbacks
    def test_gbk_client_uploads_lists_renames_downloads(self) -> Any:
        data = random_bytes(200_000)

        def run() -> tuple[str, dict[str, list[str]], bytes, list[str]]:
            ftp = connect(self.gbk_port, "gbk")
            ftp.mkd(DIRECTORY)
            ftp.cwd(DIRECTORY)
            pwd = ftp.pwd()
            ftp.storbinary(f"STOR {DRAFT}", io.BytesIO(data))
            ftp.rename(DRAFT, REPORT)
            found = listings(ftp, f"/{DIRECTORY}")
            out = io.BytesIO()
            ftp.retrbinary(f"RETR /{DIRECTORY}/{REPORT}", out.write)
            top = ftp.nlst("/")
            ftp.quit()
            return pwd, found, out.getvalue(), top

        pwd, found, got, top = yield in_thread(run)
        self.assertEqual(pwd, f"/{DIRECTORY}")
        self.assertEqual(found, dict.fromkeys(("LIST", "NLST", "MLSD"), [REPORT]))
        self.assertEqual(got, data)
        self.assertEqual(top, [DIRECTORY])
        # Read directly from the store: the key is the UTF-8 name.
        keys = self.gw.inspector.keys()
        self.assertIn(f"{DIRECTORY}/{REPORT}", keys)
        self.assertTrue(set(keys) <= {f"{DIRECTORY}/", f"{DIRECTORY}/{REPORT}"}, keys)
        self.assertEqual(self.gw.inspector.read(f"{DIRECTORY}/{REPORT}"), data)

        def utf8_client() -> tuple[dict[str, list[str]], bytes]:
            # carol's own encoding (UTF-8) beats the listener's GBK.
            ftp = connect(self.gbk_port, "utf-8", "carol")
            found = listings(ftp, DIRECTORY)
            out = io.BytesIO()
            ftp.retrbinary(f"RETR {DIRECTORY}/{REPORT}", out.write)
            ftp.quit()
            return found, out.getvalue()

        found, got = yield in_thread(utf8_client)
        self.assertEqual(found, dict.fromkeys(("LIST", "NLST", "MLSD"), [REPORT]))
        self.assertEqual(got, data)

    @defer.inlineCallbacks
    def test_curl_over_implicit_ftps_in_gbk(self) -> Any:
        """curl sends a URL's bytes as they are: GBK, percent-encoded."""
        data = b"report over implicit FTPS"

        def put() -> None:
            ftp = connect(self.gbk_port, "gbk")
            ftp.mkd(DIRECTORY)
            ftp.storbinary(f"STOR {DIRECTORY}/{REPORT}", io.BytesIO(data))
            ftp.quit()

        yield in_thread(put)
        base = f"ftps://127.0.0.1:{self.ftps_port}/"
        directory = urllib.parse.quote(DIRECTORY.encode("gbk"))
        report = urllib.parse.quote(REPORT.encode("gbk"))
        results = []
        for url, options in [
            (f"{base}{directory}/", ["--list-only"]),
            (f"{base}{directory}/{report}", []),
        ]:
            result = yield in_thread(
                subprocess.run,
                ["curl", "-sS", "--insecure", "--max-time", "30", *options]
                + ["-u", f"alice:{PASSWORD}", url],
                capture_output=True,
                timeout=60,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            results.append(result.stdout)
        self.assertEqual(results, [REPORT.encode("gbk") + b"\n", data])

    @defer.inlineCallbacks
    def test_user_beats_listener_beats_server(self) -> Any:
        def run() -> list[str]:
            made = []
            # alice: the GBK listener's; the plain listener: the server's
            # Big5; carol: her own UTF-8 on either.
            for port, encoding, name, directory in [
                (self.gbk_port, "gbk", "alice", "甲"),
                (self.big5_port, "big5", "alice", "乙"),
                (self.big5_port, "utf-8", "carol", "丙"),
            ]:
                ftp = connect(port, encoding, name)
                made.append(ftp.mkd(directory))
                ftp.quit()
            return made

        made = yield in_thread(run)
        self.assertEqual(made, ["/甲", "/乙", "/丙"])
        self.assertEqual(self.gw.inspector.keys(), ["丙/", "乙/", "甲/"])
        self.assertNotEqual("甲".encode("gbk"), "甲".encode("big5"))

    @defer.inlineCallbacks
    def test_reload_gives_new_logins_the_users_encoding(self) -> Any:
        config = self.gw.service.reloader.config
        users = {**config.users, "alice": user("alice", "gbk")}
        self.gw.service.ftp.reconfigure(dataclasses.replace(config, users=users))

        def run() -> str:
            ftp = connect(self.big5_port, "gbk")
            made = ftp.mkd(DIRECTORY)
            ftp.quit()
            return made

        self.assertEqual((yield in_thread(run)), f"/{DIRECTORY}")
        self.assertEqual(self.gw.inspector.keys(), [f"{DIRECTORY}/"])

    @defer.inlineCallbacks
    def test_opts_utf8_on_and_off(self) -> Any:
        def run() -> tuple[str, ...]:
            ftp = connect(self.gbk_port, "gbk")
            ftp.mkd(DIRECTORY)
            on = ftp.sendcmd("OPTS UTF8 ON")
            ftp.encoding = "utf-8"
            utf8 = ftp.nlst()
            off = ftp.sendcmd("OPTS UTF8 OFF")
            ftp.encoding = "gbk"
            gbk = ftp.nlst()
            ftp.quit()
            return on, off, utf8[0], gbk[0]

        on, off, utf8, gbk = yield in_thread(run)
        self.assertEqual(on, "200 UTF8 on: names are UTF-8")
        self.assertEqual(off, "200 UTF8 off: names are GBK")
        self.assertEqual((utf8, gbk), (DIRECTORY, DIRECTORY))

    @defer.inlineCallbacks
    def test_unwritable_names_shown_replaced(self) -> Any:
        events = LogEvents(self, "cosgw.frontends.ftp")

        def run() -> tuple[list[str], list[str], str, str]:
            ftp = connect(self.gbk_port, "utf-8", "carol")
            for name in (EMOJI, KOREAN, REPORT):
                ftp.storbinary(f"STOR {name}", io.BytesIO(name.encode()))
            ftp.quit()
            ftp = connect(self.gbk_port, "gbk")
            shown = sorted(ftp.nlst())
            found = listings(ftp, "/")
            try:
                refused = ftp.sendcmd("RETR ???.txt")
            except ftplib.error_perm as e:
                refused = str(e)
            size = ftp.sendcmd(f"SIZE {REPORT}")
            ftp.quit()
            return shown, found["LIST"], refused, size

        shown, listed, refused, size = yield in_thread(run)
        self.assertEqual(shown, sorted(["?.txt", "???.txt", REPORT]))
        self.assertEqual(listed, shown)
        self.assertEqual(
            refused,
            "550 ???.txt: '?' in ???.txt stands for characters GBK cannot write;"
            " use a UTF-8 client",
        )
        self.assertEqual(size, f"213 {len(REPORT.encode())}")
        told = [
            e for e in events.at(LogLevel.info) if "cannot write" in e["log_format"]
        ]
        self.assertEqual(len(told), 1, "once per session")

    def lftp(self, settings: str, directory: Path) -> tuple[Any, str]:
        """
        lftp lists C{DIRECTORY} and gets C{REPORT} into C{directory}, with
        its debug log (the commands it sent): the result and the log.
        """
        log = directory / "debug.log"
        script = (
            f"debug -o {log} 5; set ftp:ssl-allow no; set cmd:fail-exit yes; "
            f"{settings}; cls -1 /{DIRECTORY}/; "
            f"get /{DIRECTORY}/{REPORT} -o {directory}/; bye"
        )
        result = subprocess.run(
            ["lftp", "-u", f"alice,{PASSWORD}", "-p", str(self.gbk_port)]
            + ["-e", script, "127.0.0.1"],
            capture_output=True,
            timeout=60,
            env={**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
        )
        return result, log.read_text("utf-8", "replace")

    @defer.inlineCallbacks
    def test_lftp_with_gbk_charset(self) -> Any:
        """
        lftp with C{ftp:charset gbk} on the GBK listener: without OPTS UTF8
        (C{ftp:use-utf8 no}) it speaks GBK; by default it sends OPTS UTF8
        ON (FEAT lists UTF8) and the session speaks UTF-8.  Either way it
        lists and gets the Chinese name.
        """
        data = random_bytes(50_000)

        def put() -> None:
            ftp = connect(self.gbk_port, "gbk")
            ftp.mkd(DIRECTORY)
            ftp.storbinary(f"STOR {DIRECTORY}/{REPORT}", io.BytesIO(data))
            ftp.quit()

        yield in_thread(put)
        for settings, utf8 in [
            ("set ftp:charset gbk; set ftp:use-utf8 no", False),
            ("set ftp:charset gbk", True),
        ]:
            directory = Path(tempfile.mkdtemp(prefix="cosgw-lftp-"))
            self.addCleanup(shutil.rmtree, directory, True)
            result, log = yield in_thread(self.lftp, settings, directory)
            self.assertEqual(result.returncode, 0, result.stderr)
            listed = result.stdout.decode().split()
            self.assertEqual(listed, [f"/{DIRECTORY}/{REPORT}"], settings)
            self.assertEqual((directory / REPORT).read_bytes(), data, settings)
            self.assertEqual("<--- 200 UTF8 on: names are UTF-8" in log, utf8, log)


class AutoEncodingTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(
            self, "cos", users={"alice": user("alice")}, ftp_encoding="auto"
        )

    @defer.inlineCallbacks
    def test_auto_switches_on_the_first_gbk_path(self) -> Any:
        events = LogEvents(self, "cosgw.frontends.ftp")
        data = b"quarterly report\n"

        def run() -> tuple[str, list[str]]:
            ftp = connect(self.gw.port, "gbk")
            # 报告 in GBK is not UTF-8: the session switches on it.
            ftp.storbinary(f"STOR {REPORT}", io.BytesIO(data))
            made = ftp.mkd(DIRECTORY)
            names = sorted(ftp.nlst())
            ftp.quit()
            return made, names

        made, names = yield in_thread(run)
        self.assertEqual(made, f"/{DIRECTORY}")
        self.assertEqual(names, sorted([REPORT, DIRECTORY]))
        self.assertEqual(self.gw.inspector.keys(), sorted([REPORT, f"{DIRECTORY}/"]))
        self.assertEqual(self.gw.inspector.read(REPORT), data)
        switched = [e for e in events.at(LogLevel.info) if "GB18030" in e["log_format"]]
        self.assertEqual(len(switched), 1)
        self.assertEqual(switched[0]["peer"], "127.0.0.1")
        self.assertTrue(switched[0]["session"])

        def utf8_client() -> list[str]:
            ftp = connect(self.gw.port, "utf-8")
            names = sorted(ftp.nlst())
            ftp.quit()
            return names

        self.assertEqual((yield in_thread(utf8_client)), names)
