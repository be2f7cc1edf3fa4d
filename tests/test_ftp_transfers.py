"""
Transfers as modern clients drive them: a control channel that answers
during transfers (ABOR, STAT, NOOP), restarts (REST), appends (APPE) and
resumed uploads after a client was killed, with ftplib, curl and lftp.
Every result is checked byte for byte against the store.
"""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.harness import PASSWORD, MiB, in_thread, random_bytes, sha256, start_gateway
from tests.test_ftp import connect, upload

BIG = 32 * MiB  # large enough that a transfer is still running when we act


def read_line(ftp: ftplib.FTP) -> str:
    return ftp.getline()


def drain(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        block = sock.recv(1 << 20)
        if not block:
            return b"".join(chunks)
        chunks.append(block)


def wait_until(predicate: Any, seconds: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class TransferTestsMixin:
    kind = "local"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(self, self.kind)

    # -- the control channel during transfers -----------------------------

    @defer.inlineCallbacks
    def test_abor_during_retr(self) -> Any:
        yield in_thread(upload, self.gw, "big.bin", random_bytes(BIG))

        def run() -> tuple[str, str, str, str]:
            ftp = connect(self.gw)
            conn = ftp.transfercmd("RETR big.bin")
            conn.recv(65536)  # the transfer is under way; we stop reading
            first = ftp.abort()  # the transfer's reply: 426
            second = read_line(ftp)  # ABOR's own: 226
            conn.close()
            noop = ftp.sendcmd("NOOP")
            nothing = ftp.sendcmd("ABOR")  # nothing to abort now
            ftp.quit()
            return first, second, noop, nothing

        first, second, noop, nothing = yield in_thread(run)
        self.assertTrue(first.startswith("426"), first)
        self.assertTrue(second.startswith("226"), second)
        self.assertTrue(noop.startswith("200"), noop)
        self.assertTrue(nothing.startswith("225"), nothing)

    @defer.inlineCallbacks
    def test_abor_during_stor_leaves_nothing(self) -> Any:
        def run() -> tuple[str, str, str]:
            ftp = connect(self.gw)
            conn = ftp.transfercmd("STOR aborted.bin")
            conn.sendall(random_bytes(3 * MiB + 5))
            wait_until(lambda: self.gw.inspector.stored_parts() > 0, what="a part")
            first = ftp.abort()
            second = read_line(ftp)
            conn.close()
            noop = ftp.sendcmd("NOOP")
            ftp.quit()
            return first, second, noop

        first, second, noop = yield in_thread(run)
        self.assertTrue(first.startswith("426"), first)
        self.assertTrue(second.startswith("226"), second)
        self.assertTrue(noop.startswith("200"), noop)
        # ABOR discards: no object and nothing kept for a resume.
        self.assertNotIn("aborted.bin", self.gw.inspector.keys())
        self.assertEqual(self.gw.inspector.pending_uploads(), [])

    @defer.inlineCallbacks
    def test_noop_stat_answered_and_other_commands_queued(self) -> Any:
        data = random_bytes(BIG)
        yield in_thread(upload, self.gw, "big.bin", data)

        def run() -> tuple[str, list[str], str, str, bytes]:
            ftp = connect(self.gw)
            conn = ftp.transfercmd("RETR big.bin")
            head = conn.recv(65536)
            noop = ftp.sendcmd("NOOP")  # answered while the transfer runs
            ftp.putcmd("STAT")
            status = [read_line(ftp)]
            while not status[-1].startswith("211 "):
                status.append(read_line(ftp))
            ftp.putcmd("PWD")  # waits for the transfer
            rest = drain(conn)
            conn.close()
            done = read_line(ftp)
            pwd = read_line(ftp)
            ftp.quit()
            return noop, status, done, pwd, head + rest

        noop, status, done, pwd, got = yield in_thread(run)
        self.assertTrue(noop.startswith("200"), noop)
        self.assertTrue(status[0].startswith("211-"), status)
        self.assertTrue(
            any("Transfer in progress: RETR big.bin" in line for line in status), status
        )
        self.assertTrue(done.startswith("226"), done)
        self.assertEqual(pwd, '257 "/" is the current directory')
        self.assertEqual(sha256(got), sha256(data))

    # -- restarts and appends ---------------------------------------------

    @defer.inlineCallbacks
    def test_pasv_rest_retr_in_filezilla_order(self) -> Any:
        data = random_bytes(2 * MiB + 333)
        yield in_thread(upload, self.gw, "f.bin", data)

        def run() -> tuple[str, str, bytes, str, str]:
            ftp = connect(self.gw)
            host, port = ftplib.parse227(ftp.sendcmd("PASV"))
            rest = ftp.sendcmd("REST 1000")  # no data connection yet
            sock = socket.create_connection((host, port), timeout=20)
            start = ftp.sendcmd("RETR f.bin")
            got = drain(sock)
            sock.close()
            done = ftp.voidresp()
            try:
                ftp.sendcmd(f"REST {len(data) + 1}")
                beyond = ftp.sendcmd("RETR f.bin")
            except ftplib.Error as e:
                beyond = str(e)
            ftp.quit()
            return rest, start, got, done, beyond

        rest, start, got, done, beyond = yield in_thread(run)
        self.assertTrue(rest.startswith("350"), rest)
        self.assertTrue(start.startswith("150"), start)
        self.assertEqual(got, data[1000:])
        self.assertTrue(done.startswith("226"), done)
        self.assertTrue(beyond.startswith("554"), beyond)

    @defer.inlineCallbacks
    def test_curl_and_lftp_restart_downloads(self) -> Any:
        """curl -C n and lftp get -c continue a download from where it was."""
        data = random_bytes(3 * MiB + 77)
        yield in_thread(upload, self.gw, "f.bin", data)
        url = f"ftp://127.0.0.1:{self.gw.port}/f.bin"
        result = yield in_thread(
            subprocess.run,
            ["curl", "-s", "-S", "-u", f"alice:{PASSWORD}", "-C", "1000", url],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, data[1000:])
        directory = Path(tempfile.mkdtemp(prefix="cosgw-client-"))
        self.addCleanup(shutil.rmtree, directory, True)
        partial = directory / "f.bin"
        partial.write_bytes(data[: 2 * MiB + 5])
        result = yield in_thread(
            subprocess.run,
            [
                "lftp",
                "-u",
                f"alice,{PASSWORD}",
                "-p",
                str(self.gw.port),
                "-e",
                "set ftp:ssl-allow no; set cmd:fail-exit yes; "
                f"get -c f.bin -o {partial}; bye",
                "127.0.0.1",
            ],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sha256(partial.read_bytes()), sha256(data))

    @defer.inlineCallbacks
    def test_appe_small_and_large(self) -> Any:
        """
        APPE keeps the existing object's bytes and adds the new ones: read
        back for a prefix under 1 MiB, copied server-side above it.
        """
        for size in (300_000, 3 * MiB + 11):
            old = random_bytes(size)
            new = random_bytes(MiB + 7)
            name = f"log-{size}.bin"
            yield in_thread(upload, self.gw, name, old)

            def appe(name: str = name, new: bytes = new) -> tuple[int, str]:
                ftp = connect(self.gw)
                before = ftp.size(name)
                done = ftp.storbinary(f"APPE {name}", io.BytesIO(new))
                ftp.quit()
                return before or 0, done

            before, done = yield in_thread(appe)
            self.assertEqual(before, size)
            self.assertTrue(done.startswith("226"), done)
            self.assertEqual(sha256(self.gw.inspector.read(name)), sha256(old + new))
        self.assertEqual(self.gw.inspector.pending_uploads(), [])

    @defer.inlineCallbacks
    def test_appe_to_missing_file_creates_it(self) -> Any:
        data = random_bytes(1234)

        def run() -> str:
            ftp = connect(self.gw)
            done = ftp.storbinary("APPE fresh.bin", io.BytesIO(data))
            ftp.quit()
            return done

        done = yield in_thread(run)
        self.assertTrue(done.startswith("226"), done)
        self.assertEqual(self.gw.inspector.read("fresh.bin"), data)

    @defer.inlineCallbacks
    def test_rest_stor_keeps_prefix_of_existing_file(self) -> Any:
        """REST n + STOR on a whole file: bytes 0..n-1 stay, the rest is new."""
        old = random_bytes(3 * MiB)
        yield in_thread(upload, self.gw, "f.bin", old)
        cut = 2 * MiB + 5
        tail = random_bytes(500_000)

        def run() -> str:
            ftp = connect(self.gw)
            done = ftp.storbinary("STOR f.bin", io.BytesIO(tail), rest=cut)
            ftp.quit()
            return done

        done = yield in_thread(run)
        self.assertTrue(done.startswith("226"), done)
        self.assertEqual(
            sha256(self.gw.inspector.read("f.bin")), sha256(old[:cut] + tail)
        )

    # -- resume after a killed client ---------------------------------------

    def kill_upload_midway(self, command: list[str], name: str) -> None:
        """Start a slow upload, wait until parts are stored, kill the client."""
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_until(
                lambda: self.gw.inspector.stored_parts() >= 2, what="stored parts"
            )
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        registry = self.gw.service.accounts.registry
        # The gateway notices, keeps the parts, and lets go of the upload.
        wait_until(lambda: not registry._active, what="the upload to be released")
        self.assertNotIn(name, self.gw.inspector.keys())

    def source_file(self, size: int) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="cosgw-client-"))
        self.addCleanup(shutil.rmtree, directory, True)
        path = directory / "payload.bin"
        path.write_bytes(random_bytes(size))
        return path

    @defer.inlineCallbacks
    def test_curl_resumes_a_killed_upload(self) -> Any:
        source = self.source_file(6 * MiB + 4321)
        url = f"ftp://127.0.0.1:{self.gw.port}/resumed.bin"
        auth = f"alice:{PASSWORD}"
        yield in_thread(
            self.kill_upload_midway,
            ["curl", "-s", "-u", auth, "--limit-rate", "1M", "-T", str(source), url],
            "resumed.bin",
        )
        result = yield in_thread(
            subprocess.run,
            ["curl", "-s", "-S", "-u", auth, "-C", "-", "-T", str(source), url],
            capture_output=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            sha256(self.gw.inspector.read("resumed.bin")), sha256(source.read_bytes())
        )
        self.assertEqual(self.gw.inspector.pending_uploads(), [])

    @defer.inlineCallbacks
    def test_lftp_reput_resumes_a_killed_upload(self) -> Any:
        source = self.source_file(6 * MiB + 999)

        def lftp(script: str) -> list[str]:
            return [
                "lftp",
                "-u",
                f"alice,{PASSWORD}",
                "-p",
                str(self.gw.port),
                "-e",
                "set ftp:ssl-allow no; set cmd:fail-exit yes; set net:max-retries 1; "
                "set net:reconnect-interval-base 1; " + script + "; bye",
                "127.0.0.1",
            ]

        yield in_thread(
            self.kill_upload_midway,
            lftp(f"set net:limit-rate 0:1M; put {source} -o lftp.bin"),
            "lftp.bin",
        )
        result = yield in_thread(
            subprocess.run,
            lftp(f"reput {source} -o lftp.bin"),
            capture_output=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            sha256(self.gw.inspector.read("lftp.bin")), sha256(source.read_bytes())
        )
        self.assertEqual(self.gw.inspector.pending_uploads(), [])


class LocalTransferTests(TransferTestsMixin, unittest.TestCase):
    kind = "local"

    @defer.inlineCallbacks
    def test_name_too_long_for_the_directory(self) -> Any:
        """
        A name longer than the local directory can hold (255 bytes) gets
        553 with what is wrong, not a storage error; the session goes on.
        """
        long = "报" * 86

        def run() -> tuple[str, str]:
            ftp = connect(self.gw)
            try:
                ftp.storbinary(f"STOR {long}", io.BytesIO(b"x"))
            except ftplib.error_perm as e:
                refused = str(e)
            else:
                refused = "stored"
            ftp.storbinary("STOR ok.txt", io.BytesIO(b"x"))
            after = ftp.sendcmd("SIZE ok.txt")
            ftp.quit()
            return refused, after

        refused, after = yield in_thread(run)
        self.assertEqual(
            refused,
            f"553 /{long}: a name longer than 255 bytes, which this directory"
            " cannot hold",
        )
        self.assertEqual(after, "213 1")


class CosTransferTests(TransferTestsMixin, unittest.TestCase):
    kind = "cos"


class MfmtListingTests(unittest.TestCase):
    """
    A time set with MFMT shows in MDTM, MLST, MLSD and LIST, on COS too
    (whose listings carry no metadata), until the file is written again;
    the directory's index of times stays invisible and out of the way.
    """

    kind = "cos"

    @defer.inlineCallbacks
    def test_mfmt_shows_everywhere_until_rewritten(self) -> Any:
        gw = yield start_gateway(self, self.kind)
        yield in_thread(upload, gw, "d/../f.txt", b"x")  # resolves to /f.txt

        def run() -> dict[str, Any]:
            ftp = connect(gw)
            r: dict[str, Any] = {}
            ftp.mkd("d")
            ftp.storbinary("STOR d/f.txt", io.BytesIO(b"payload"))
            r["mfmt"] = ftp.sendcmd("MFMT 20200102030405 d/f.txt")
            r["mdtm"] = ftp.sendcmd("MDTM d/f.txt")
            mlsd = list(ftp.mlsd("d"))
            r["mlsd"] = {name: facts.get("modify") for name, facts in mlsd}
            lines: list[str] = []
            ftp.retrlines("LIST d", lines.append)
            r["list"] = lines
            r["nlst"] = ftp.nlst("d")
            try:
                r["reserved"] = ftp.storbinary(
                    f"STOR d/{'.cosgw-mtimes.json'}", io.BytesIO(b"no")
                )
            except ftplib.Error as e:
                r["reserved"] = str(e)
            ftp.storbinary("STOR d/f.txt", io.BytesIO(b"rewritten"))
            r["after"] = {name: facts.get("modify") for name, facts in ftp.mlsd("d")}
            ftp.delete("d/f.txt")
            r["rmd"] = ftp.rmd("d")
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(r["mfmt"], "213 Modify=20200102030405; d/f.txt")
        self.assertEqual(r["mdtm"], "213 20200102030405")
        self.assertEqual(r["mlsd"], {"f.txt": "20200102030405"})
        self.assertEqual(len(r["list"]), 1)
        self.assertIn(" Jan  2  2020 f.txt", r["list"][0])
        self.assertEqual(r["nlst"], ["f.txt"])
        self.assertTrue(r["reserved"].startswith("553"), r["reserved"])
        self.assertNotEqual(r["after"]["f.txt"], "20200102030405")
        self.assertTrue(r["rmd"].startswith("250"), r["rmd"])
        # The time's marker went with the file (a local store keeps the
        # empty directories that held it, under the hidden prefix).
        keys = gw.inspector.keys()
        self.assertEqual([k for k in keys if not k.startswith(".cosgw/")], ["f.txt"])
        self.assertEqual([k for k in keys if not k.endswith("/")], ["f.txt"])


class LocalMfmtListingTests(MfmtListingTests):
    kind = "local"
