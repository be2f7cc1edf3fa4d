"""
End-to-end FTP tests: a real gateway on 127.0.0.1, real clients (Python's
ftplib and the curl program), and a real store (a local directory, and COS's
SDK over HTTP to the test COS server), checked by reading the store directly.
"""

from __future__ import annotations

import ftplib
import io
import socket
import struct
import subprocess
import time
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from cosgw.interfaces import StoreUnavailable
from tests.harness import (
    PASSWORD,
    READER_PASSWORD,
    MiB,
    in_thread,
    random_bytes,
    sha256,
    start_gateway,
)


def connect(gw: Any, user: str = "alice", password: str = PASSWORD) -> ftplib.FTP:
    ftp = ftplib.FTP(encoding="utf-8")
    ftp.connect(gw.host, gw.port, timeout=20)
    ftp.login(user, password)
    ftp.voidcmd("TYPE I")
    return ftp


def upload(gw: Any, name: str, data: bytes, user: str = "alice") -> str:
    ftp = connect(gw, user, PASSWORD if user == "alice" else READER_PASSWORD)
    try:
        return ftp.storbinary(f"STOR {name}", io.BytesIO(data))
    finally:
        ftp.close()


def download(gw: Any, name: str) -> bytes:
    ftp = connect(gw)
    out = io.BytesIO()
    try:
        ftp.retrbinary(f"RETR {name}", out.write)
    finally:
        ftp.close()
    return out.getvalue()


def reset_upload(gw: Any, name: str, data: bytes) -> str:
    """
    STOR that ends with a reset data connection once the gateway has
    stored parts: the client's final reply.
    """
    ftp = connect(gw)
    conn = ftp.transfercmd(f"STOR {name}")
    conn.sendall(data)
    # Wait (bounded) until parts are stored, so there is something to keep.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not gw.inspector.pending_uploads():
        time.sleep(0.05)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # RST
    try:
        return ftp.voidresp()
    except ftplib.Error as e:
        return str(e)
    finally:
        ftp.close()


def curl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "60", *args],
        input=data,
        capture_output=True,
        timeout=90,
    )


class FTPTestsMixin:
    kind = "local"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(self, self.kind)

    def keys(self, prefix: str = "") -> list[str]:
        return self.gw.inspector.keys(prefix)

    # -- login --------------------------------------------------------------

    @defer.inlineCallbacks
    def test_login_good_and_bad(self) -> Any:
        def run() -> tuple[str, str, str]:
            ftp = ftplib.FTP()
            ftp.connect(self.gw.host, self.gw.port, timeout=20)
            with self.assertRaises(ftplib.error_perm) as bad:
                ftp.login("alice", "wrong password")
            with self.assertRaises(ftplib.error_perm) as unknown:
                ftp.login("mallory", PASSWORD)
            ok = ftp.login("alice", PASSWORD)
            ftp.quit()
            return str(bad.exception), str(unknown.exception), ok

        bad, unknown, ok = yield in_thread(run)
        self.assertTrue(bad.startswith("530"), bad)
        self.assertTrue(unknown.startswith("530"), unknown)
        self.assertTrue(ok.startswith("230"), ok)

    @defer.inlineCallbacks
    def test_commands_before_login_refused(self) -> Any:
        def run() -> list[str]:
            ftp = ftplib.FTP()
            ftp.connect(self.gw.host, self.gw.port, timeout=20)
            replies = []
            for cmd in ("PWD", "LIST", "PASS x", "FEAT"):
                try:
                    replies.append(ftp.sendcmd(cmd))
                except ftplib.Error as e:
                    replies.append(str(e))
            ftp.close()
            return replies

        replies = yield in_thread(run)
        self.assertEqual([r[:3] for r in replies], ["530", "530", "503", "211"])

    # -- transfers ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_upload_download_sizes(self) -> Any:
        # 0 B, 1 B, 1 MiB (one part exactly) and 3.5 MiB (four parts).
        for size in (0, 1, MiB, 3 * MiB + MiB // 2):
            data = random_bytes(size)
            name = f"file-{size}.bin"
            reply = yield in_thread(upload, self.gw, name, data)
            self.assertTrue(reply.startswith("226"), reply)
            self.assertEqual(sha256(self.gw.inspector.read(name)), sha256(data))
            back = yield in_thread(download, self.gw, name)
            self.assertEqual(len(back), size)
            self.assertEqual(sha256(back), sha256(data))
        self.assertEqual(self.gw.inspector.pending_uploads(), [])

    @defer.inlineCallbacks
    def test_overwrite_replaces_whole_object(self) -> Any:
        yield in_thread(upload, self.gw, "f.bin", random_bytes(2 * MiB + 3))
        data = b"short now"
        yield in_thread(upload, self.gw, "f.bin", data)
        self.assertEqual(self.gw.inspector.read("f.bin"), data)

    @defer.inlineCallbacks
    def test_reset_mid_upload_leaves_nothing(self) -> Any:
        """
        A client RST in the middle of STOR, with resume_uploads off: 426,
        no object and no multipart upload left.
        """
        gw = yield start_gateway(self, self.kind, resume_uploads=False)
        data = random_bytes(3 * MiB + 100)
        reply = yield in_thread(reset_upload, gw, "broken.bin", data)
        self.assertTrue(reply.startswith("426"), reply)
        self.assertNotIn("broken.bin", gw.inspector.keys())
        self.assertEqual(gw.inspector.pending_uploads(), [])

    @defer.inlineCallbacks
    def test_reset_upload_resumes_with_rest_stor(self) -> Any:
        """
        With resume on (the default), a reset upload leaves no object but
        keeps its whole parts; SIZE tells how many bytes, and REST n + STOR
        of the rest makes the file byte-identical.
        """
        data = random_bytes(4 * MiB + 12345)
        reply = yield in_thread(reset_upload, self.gw, "big.bin", data)
        self.assertTrue(reply.startswith("426"), reply)
        self.assertNotIn("big.bin", self.keys())
        self.assertEqual(len(self.gw.inspector.pending_uploads()), 1)

        def resume() -> tuple[int, str]:
            ftp = connect(self.gw)
            stored = ftp.size("big.bin")
            assert stored is not None
            done = ftp.storbinary(
                "STOR big.bin", io.BytesIO(data[stored:]), rest=stored
            )
            ftp.quit()
            return stored, done

        stored, done = yield in_thread(resume)
        self.assertIn(f"REST {stored}", reply)
        self.assertTrue(stored > 0 and stored % MiB == 0, stored)
        self.assertTrue(done.startswith("226"), done)
        self.assertEqual(sha256(self.gw.inspector.read("big.bin")), sha256(data))
        self.assertEqual(self.gw.inspector.pending_uploads(), [])

    @defer.inlineCallbacks
    def test_utf8_names_round_trip(self) -> Any:
        names = [
            "中文.txt",
            "한국어 파일.txt",
            "with space.txt",
            "hash#1.txt",
            "pct%41.txt",
        ]

        def run() -> tuple[list[str], list[bytes]]:
            ftp = connect(self.gw)
            ftp.mkd("目录 dir")
            for n in names:
                ftp.storbinary(f"STOR 目录 dir/{n}", io.BytesIO(n.encode()))
            ftp.cwd("目录 dir")
            listed = ftp.nlst()
            contents = []
            for n in names:
                out = io.BytesIO()
                ftp.retrbinary(f"RETR {n}", out.write)
                contents.append(out.getvalue())
            ftp.quit()
            return listed, contents

        listed, contents = yield in_thread(run)
        self.assertEqual(sorted(listed), sorted(names))
        self.assertEqual(contents, [n.encode() for n in names])
        self.assertEqual(
            sorted(self.keys("目录 dir/")),
            sorted(["目录 dir/"] + [f"目录 dir/{n}" for n in names]),
        )

    @defer.inlineCallbacks
    def test_type_a_does_not_crash_and_keeps_bytes(self) -> Any:
        data = b"line one\nline two\r\n\x00\xff"

        def run() -> tuple[str, bytes]:
            ftp = connect(self.gw)
            reply = ftp.sendcmd("TYPE A")
            ftp.storlines("STOR text.txt", io.BytesIO(b"a\nb\n"))
            ftp.storbinary("STOR raw.bin", io.BytesIO(data))
            ftp.sendcmd("TYPE A")
            chunks: list[bytes] = []
            ftp.retrbinary("RETR raw.bin", chunks.append)  # retrbinary sets TYPE I
            ftp.sendcmd("TYPE A")
            conn = ftp.transfercmd("RETR raw.bin")
            got = b""
            while True:
                block = conn.recv(65536)
                if not block:
                    break
                got += block
            conn.close()
            ftp.voidresp()
            ftp.quit()
            return reply, got

        reply, got = yield in_thread(run)
        self.assertTrue(reply.startswith("200"), reply)
        self.assertEqual(got, data)
        self.assertEqual(self.gw.inspector.read("text.txt"), b"a\r\nb\r\n")

    @defer.inlineCallbacks
    def test_active_mode_and_bounce_refused(self) -> Any:
        data = random_bytes(100_000)

        def run() -> tuple[bytes, list[str]]:
            ftp = connect(self.gw)
            ftp.set_pasv(False)
            ftp.storbinary("STOR active.bin", io.BytesIO(data))
            out = io.BytesIO()
            ftp.retrbinary("RETR active.bin", out.write)
            refused = []
            for cmd in (
                "PORT 127,0,0,2,200,10",
                "PORT 127,0,0,1,0,21",
                "EPRT |1|10.0.0.1|5000|",
            ):
                try:
                    refused.append(ftp.sendcmd(cmd))
                except ftplib.Error as e:
                    refused.append(str(e))
            ftp.quit()
            return out.getvalue(), refused

        got, refused = yield in_thread(run)
        self.assertEqual(got, data)
        self.assertEqual([r[:3] for r in refused], ["504", "504", "504"])

    # -- listings and directories -------------------------------------------

    @defer.inlineCallbacks
    def test_listings(self) -> Any:
        def run() -> tuple[list[str], list[str], list[str], list[str]]:
            ftp = connect(self.gw)
            ftp.mkd("sub")
            ftp.storbinary("STOR a.txt", io.BytesIO(b"12345"))
            ftp.storbinary("STOR sub/b.txt", io.BytesIO(b"x"))
            nlst = ftp.nlst()  # NLST with no argument
            lines: list[str] = []
            ftp.retrlines("LIST", lines.append)
            la: list[str] = []
            ftp.retrlines("LIST -la sub", la.append)
            file_line: list[str] = []
            ftp.retrlines("LIST a.txt", file_line.append)
            ftp.quit()
            return nlst, lines, la, file_line

        nlst, lines, la, file_line = yield in_thread(run)
        self.assertEqual(sorted(nlst), ["a.txt", "sub"])
        self.assertEqual(len(lines), 2)
        by_name = {line.split()[-1]: line for line in lines}
        self.assertTrue(by_name["sub"].startswith("d"))
        self.assertTrue(by_name["a.txt"].startswith("-"))
        self.assertEqual(by_name["a.txt"].split()[4], "5")
        self.assertEqual([line.split()[-1] for line in la], ["b.txt"])
        self.assertEqual(file_line[0].split()[-1], "a.txt")

    @defer.inlineCallbacks
    def test_directories(self) -> Any:
        def run() -> dict[str, str]:
            ftp = connect(self.gw)
            r: dict[str, str] = {}

            def cmd(label: str, line: str) -> None:
                try:
                    r[label] = ftp.sendcmd(line)
                except ftplib.Error as e:
                    r[label] = str(e)

            cmd("mkd", "MKD d1")
            cmd("mkd_again", "MKD d1")
            cmd("mkd_nested_missing", "MKD nope/d2")
            ftp.storbinary("STOR d1/f.txt", io.BytesIO(b"data"))
            cmd("rmd_nonempty", "RMD d1")
            cmd("cwd", "CWD d1")
            cmd("pwd", "PWD")
            cmd("cdup", "CDUP")
            cmd("cwd_file", "CWD d1/f.txt")
            cmd("cwd_missing", "CWD missing")
            cmd("size", "SIZE d1/f.txt")
            cmd("size_dir", "SIZE d1")
            cmd("mdtm", "MDTM d1/f.txt")
            cmd("dele_dir", "DELE d1")
            cmd("dele", "DELE d1/f.txt")
            cmd("dele_missing", "DELE d1/f.txt")
            cmd("cwd_kept", "CWD d1")  # the directory outlives its last file
            cmd("cdup2", "CDUP")
            cmd("rmd", "RMD d1")
            cmd("rmd_missing", "RMD d1")
            cmd("stor_no_parent", "SIZE x")
            ftp.quit()
            return r

        r = yield in_thread(run)
        expect = {
            "mkd": "257",
            "mkd_again": "550",
            "mkd_nested_missing": "550",
            "rmd_nonempty": "550",
            "cwd": "250",
            "pwd": '257 "/d1"',
            "cdup": "250",
            "cwd_file": "550",
            "cwd_missing": "550",
            "size": "213 4",
            "size_dir": "550",
            "mdtm": "213 2",
            "dele_dir": "550",
            "dele": "250",
            "dele_missing": "550",
            "cwd_kept": "250",
            "cdup2": "250",
            "rmd": "250",
            "rmd_missing": "550",
            "stor_no_parent": "550",
        }
        for label, prefix in expect.items():
            self.assertTrue(r[label].startswith(prefix), (label, r[label]))
        self.assertEqual(self.keys(), [])

    @defer.inlineCallbacks
    def test_rename_files(self) -> Any:
        def run() -> dict[str, str]:
            ftp = connect(self.gw)
            ftp.mkd("dst")
            ftp.storbinary("STOR a.txt", io.BytesIO(b"AAA"))
            r = {"rn": ftp.rename("a.txt", "dst/b.txt")}
            try:
                ftp.sendcmd("RNFR missing.txt")
            except ftplib.Error as e:
                r["missing"] = str(e)
            try:
                ftp.sendcmd("RNTO x")
            except ftplib.Error as e:
                r["rnto_alone"] = str(e)
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertTrue(r["rn"].startswith("250"), r)
        self.assertTrue(r["missing"].startswith("550"), r)
        self.assertTrue(r["rnto_alone"].startswith("503"), r)
        self.assertEqual(self.gw.inspector.read("dst/b.txt"), b"AAA")
        self.assertNotIn("a.txt", self.keys())

    # -- robustness ---------------------------------------------------------

    @defer.inlineCallbacks
    def test_long_line_gets_500_and_session_goes_on(self) -> Any:
        def run() -> tuple[str, str, str]:
            sock = socket.create_connection((self.gw.host, self.gw.port), timeout=20)
            f = sock.makefile("rb")
            f.readline()  # 220
            sock.sendall(b"NOOP " + b"x" * 20000 + b"\r\n")
            first = f.readline().decode()
            sock.sendall(b"USER alice\r\n")
            second = f.readline().decode()
            sock.sendall(b"\xc3\x28 bad utf8\r\n")
            third = f.readline().decode()
            sock.close()
            return first, second, third

        first, second, third = yield in_thread(run)
        self.assertTrue(first.startswith("500"), first)
        self.assertTrue(second.startswith("331"), second)
        self.assertTrue(third.startswith("501"), third)

    @defer.inlineCallbacks
    def test_pasv_without_connection_does_not_freeze(self) -> Any:
        # The deadline itself is timed on a clock in test_ftp_protocol.py
        # (PassiveTests.test_data_connection_timeout); here, a short one.
        for listener in self.gw.service.ftp.listeners:
            listener.factory.data_timeout = 0.3

        def run() -> tuple[str, str, str, str]:
            ftp = connect(self.gw)
            pasv = ftp.sendcmd("PASV")
            noop = ftp.sendcmd("NOOP")  # answered at once: nothing waits
            try:
                retr = ftp.sendcmd("LIST")  # no data connection ever comes
            except ftplib.Error as e:
                retr = str(e)
            after = ftp.sendcmd("NOOP")
            ftp.quit()
            return pasv, noop, retr, after

        pasv, noop, retr, after = yield in_thread(run)
        self.assertTrue(pasv.startswith("227"), pasv)
        self.assertTrue(noop.startswith("200"), noop)
        self.assertTrue(retr.startswith("425"), retr)
        self.assertTrue(after.startswith("200"), after)

    @defer.inlineCallbacks
    def test_reader_permissions(self) -> Any:
        yield in_thread(upload, self.gw, "doc.txt", b"readable")

        def run() -> dict[str, str]:
            ftp = connect(self.gw, "reader", READER_PASSWORD)
            r: dict[str, str] = {}
            out = io.BytesIO()
            r["retr"] = ftp.retrbinary("RETR doc.txt", out.write)
            r["data"] = out.getvalue().decode()
            for label, line in (
                ("dele", "DELE doc.txt"),
                ("mkd", "MKD x"),
                ("rnfr", "RNFR doc.txt"),
            ):
                try:
                    r[label] = ftp.sendcmd(line)
                except ftplib.Error as e:
                    r[label] = str(e)
            try:
                r["stor"] = ftp.storbinary("STOR new.txt", io.BytesIO(b"no"))
            except ftplib.Error as e:
                r["stor"] = str(e)
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertTrue(r["retr"].startswith("226"))
        self.assertEqual(r["data"], "readable")
        for label in ("dele", "mkd", "rnfr", "stor"):
            self.assertTrue(r[label].startswith("550"), (label, r[label]))
        self.assertEqual(self.keys(), ["doc.txt"])

    # -- curl ----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_curl_upload_download_list(self) -> Any:
        data = random_bytes(2 * MiB + 17)
        base = f"ftp://127.0.0.1:{self.gw.port}"
        auth = f"alice:{PASSWORD}"
        put = yield in_thread(
            curl, "-u", auth, "-T", "-", f"{base}/curl%20up.bin", data=data
        )
        self.assertEqual(put.returncode, 0, put.stderr)
        self.assertEqual(sha256(self.gw.inspector.read("curl up.bin")), sha256(data))
        got = yield in_thread(curl, "-u", auth, f"{base}/curl%20up.bin")
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertEqual(sha256(got.stdout), sha256(data))
        listing = yield in_thread(curl, "-u", auth, "--list-only", f"{base}/")
        self.assertEqual(listing.stdout.decode().splitlines(), ["curl up.bin"])
        bad = yield in_thread(curl, "-u", "alice:nope", f"{base}/curl%20up.bin")
        self.assertEqual(bad.returncode, 67)  # CURLE_LOGIN_DENIED
        active = yield in_thread(
            curl, "-u", auth, "-P", "127.0.0.1", f"{base}/curl%20up.bin"
        )
        self.assertEqual(active.returncode, 0, active.stderr)
        self.assertEqual(sha256(active.stdout), sha256(data))


class LocalFTPTests(FTPTestsMixin, unittest.TestCase):
    kind = "local"


class CosFTPTests(FTPTestsMixin, unittest.TestCase):
    kind = "cos"


class PassiveAddressTests(unittest.TestCase):
    """masquerade_address and passive_ports from the config reach PASV/EPSV."""

    @defer.inlineCallbacks
    def pasv_reply(self, masquerade: str) -> Any:
        gw = yield start_gateway(
            self, "local", masquerade_address=masquerade, passive_ports=(62500, 62500)
        )

        def run() -> tuple[str, str]:
            replies = []
            for command in ("PASV", "EPSV"):
                ftp = connect(gw)
                replies.append(ftp.sendcmd(command))
                ftp.quit()
            return replies[0], replies[1]

        return (yield in_thread(run))

    @defer.inlineCallbacks
    def test_masquerade_ip(self) -> Any:
        pasv, epsv = yield self.pasv_reply("203.0.113.7")
        # 62500 = 244 * 256 + 36
        self.assertEqual(pasv, "227 Entering Passive Mode (203,0,113,7,244,36)")
        self.assertEqual(epsv, "229 Entering Extended Passive Mode (|||62500|)")

    @defer.inlineCallbacks
    def test_masquerade_host_name(self) -> Any:
        pasv, _ = yield self.pasv_reply("localhost")
        self.assertEqual(pasv, "227 Entering Passive Mode (127,0,0,1,244,36)")


class CosFaultTests(unittest.TestCase):
    """
    The store misbehaves (through the test COS server's fault injection):
    the client always learns of it, and nothing partial is left behind.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(self, "cos")
        self.server = self.gw.inspector.server
        self.bucket = self.gw.inspector.bucket
        self.addCleanup(self.server.reset_faults)

    def retr(self, name: str) -> tuple[str, int, bool]:
        """RETR by hand: (final reply, bytes received, ended cleanly)."""
        ftp = connect(self.gw)
        conn = ftp.transfercmd(f"RETR {name}")
        received, clean = 0, True
        try:
            while True:
                block = conn.recv(65536)
                if not block:
                    break
                received += len(block)
        except ConnectionResetError:
            clean = False
        conn.close()
        try:
            reply = ftp.voidresp()
        except ftplib.Error as e:
            reply = str(e)
        ftp.close()
        return reply, received, clean

    @defer.inlineCallbacks
    def test_corrupt_or_short_download_is_never_a_success(self) -> Any:
        data = random_bytes(2 * MiB + 5)
        yield in_thread(upload, self.gw, "f.bin", data)
        for kind in ("corrupt-get", "truncate-get"):
            self.server.inject(kind, key="f.bin", bucket=self.bucket)
            reply, received, clean = yield in_thread(self.retr, "f.bin")
            self.assertTrue(reply.startswith("451"), (kind, reply))
            # The data connection is reset, never closed as if complete.
            self.assertFalse(clean, kind)
            self.assertLessEqual(received, len(data))
        reply, received, clean = yield in_thread(self.retr, "f.bin")  # healthy again
        self.assertTrue(reply.startswith("226"), reply)
        self.assertEqual((received, clean), (len(data), True))

    @defer.inlineCallbacks
    def test_store_failure_mid_upload_leaves_nothing(self) -> Any:
        for op in ("UploadPart", "CompleteMultipartUpload", "PutObject"):
            self.server.inject("fail", op=op, count=-1, status=503, bucket=self.bucket)
            size = 100 if op == "PutObject" else 3 * MiB + 7
            try:
                reply = yield in_thread(
                    upload, self.gw, "doomed.bin", random_bytes(size)
                )
            except ftplib.Error as e:
                reply = str(e)
            self.server.reset_faults()
            self.assertTrue(reply.startswith("451"), (op, reply))
            self.assertNotIn("doomed.bin", self.gw.inspector.keys())
            self.assertEqual(self.gw.inspector.pending_uploads(), [], op)
        # A store that is down is a warning line, not a traceback.
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])


class ConnectionLimitTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_full_server_says_421_and_frees_the_slot(self) -> Any:
        gw = yield start_gateway(self, "local", max_connections=1)

        def greeting() -> str:
            sock = socket.create_connection((gw.host, gw.port), timeout=20)
            line = sock.makefile("rb").readline().decode()
            sock.close()
            return line

        def run() -> tuple[str, str, str]:
            first = connect(gw)
            refused = greeting()
            first.quit()
            # The slot frees when the gateway sees the close: poll, bounded.
            deadline = time.monotonic() + 10
            again = greeting()
            while again.startswith("421") and time.monotonic() < deadline:
                time.sleep(0.05)
                again = greeting()
            return refused, again, first.welcome or ""

        refused, again, welcome = yield in_thread(run)
        self.assertTrue(welcome.startswith("220"), welcome)
        self.assertTrue(refused.startswith("421"), refused)
        self.assertTrue(again.startswith("220"), again)
