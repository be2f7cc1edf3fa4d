"""
Home confinement: nothing a client sends names a key outside its home.

Unit tests of path resolution, then the same attempts through a real FTP
session of a user whose home is a prefix inside the store, checked against
the keys actually stored.
"""

from __future__ import annotations

import ftplib
import io
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from cosgw import vfs
from cosgw.testing import MemoryStore
from cosgw.transfer import TransferSettings
from tests.harness import in_thread, start_gateway
from tests.test_ftp import connect


class ResolveTests(unittest.SynchronousTestCase):
    def test_relative_and_absolute(self) -> None:
        self.assertEqual(vfs.resolve(["a"], "b/c"), ["a", "b", "c"])
        self.assertEqual(vfs.resolve(["a"], "/b"), ["b"])
        self.assertEqual(vfs.resolve(["a", "b"], "../c/./d//e/"), ["a", "c", "d", "e"])

    def test_dotdot_clamps_at_home(self) -> None:
        self.assertEqual(vfs.resolve([], "../../etc/passwd"), ["etc", "passwd"])
        self.assertEqual(vfs.resolve(["a"], "/../../.."), [])
        self.assertEqual(vfs.resolve(["a"], "../../../b"), ["b"])

    def test_percent_escapes_are_literal(self) -> None:
        self.assertEqual(vfs.resolve([], "%2e%2e/%2F"), ["%2e%2e", "%2F"])

    def test_invalid_names(self) -> None:
        for bad in ("a\x00b", "tab\tname", "nl\nname", "del\x7f"):
            with self.assertRaises(vfs.InvalidName):
                vfs.resolve([], bad)

    def test_key_length_limit(self) -> None:
        fs = vfs.ObjectFileSystem(
            MemoryStore(Clock()), "home", frozenset(), TransferSettings()
        )
        self.assertEqual(fs.key(["a", "b"]), "home/a/b")
        with self.assertRaises(vfs.InvalidName):
            fs.key(["x" * 900])
        with self.assertRaises(vfs.InvalidName):
            fs.key([".."])


class FTPConfinementTests(unittest.TestCase):
    kind = "local"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(self, self.kind, alice_home="homes/alice")

    @defer.inlineCallbacks
    def test_traversal_attempts_stay_home(self) -> Any:
        def run() -> dict[str, str]:
            ftp = connect(self.gw)
            r: dict[str, str] = {}
            ftp.storbinary("STOR ../../escape1.txt", io.BytesIO(b"1"))
            ftp.storbinary("STOR /../escape2.txt", io.BytesIO(b"2"))
            ftp.storbinary("STOR %2e%2e%2fescape3.txt", io.BytesIO(b"3"))
            r["cwd"] = ftp.cwd("../../../..")
            r["pwd"] = ftp.pwd()
            ftp.storbinary("STOR escape4.txt", io.BytesIO(b"4"))
            for label, line in (
                ("nul", "MKD a\x00b"),
                ("retr_out", "SIZE ../../../homes/alice/escape4.txt"),
            ):
                try:
                    r[label] = ftp.sendcmd(line)
                except ftplib.Error as e:
                    r[label] = str(e)
            r["listing"] = " ".join(sorted(ftp.nlst("/..")))
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(r["pwd"], "/")
        self.assertTrue(r["cwd"].startswith("250"))
        # A NUL can never be part of a name (nor of a key).
        self.assertTrue(r["nul"].startswith("553"), r["nul"])
        # "../../../homes/alice/escape4.txt" resolves inside the home, to a
        # path that does not exist there.
        self.assertTrue(r["retr_out"].startswith("550"), r["retr_out"])
        keys = self.gw.inspector.keys()
        self.assertEqual(
            keys,
            [
                "homes/",
                "homes/alice/",
                "homes/alice/%2e%2e%2fescape3.txt",
                "homes/alice/escape1.txt",
                "homes/alice/escape2.txt",
                "homes/alice/escape4.txt",
            ]
            if self.gw.inspector.kind == "local"
            else [
                "homes/alice/%2e%2e%2fescape3.txt",
                "homes/alice/escape1.txt",
                "homes/alice/escape2.txt",
                "homes/alice/escape4.txt",
            ],
        )
        self.assertEqual(
            r["listing"], "%2e%2e%2fescape3.txt escape1.txt escape2.txt escape4.txt"
        )


class CosFTPConfinementTests(FTPConfinementTests):
    kind = "cos"
