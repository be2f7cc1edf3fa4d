"""
Store requests per operation, end to end (house rule 10, issue 11): real
clients (ftplib, paramiko, OpenSSH's sftp, lftp, rclone) against a gateway
on the COS test server, whose C{/__test__/stats} counts the COS requests
the gateway makes for each command.  On COS each request is billed and
costs a round trip; the targets are at most two requests for an upload of
a new small file (one check and the PUT, or the PUT alone where the
session knows the name is free) and one GET for a download.

What a session saw in the last second answers its stats and checks
(L{cosgw.vfs.knowledge}), and what the gateway read of a directory's
markers of times answers every session's stats and listings there
(L{cosgw.vfs.timecache}); these tests stretch that second to a minute, so
a loaded machine cannot change a count, and forget the markers between
client runs (each its own process, seconds apart).  The same counts, and why, over a
memory store: tests/test_vfs_directories.py, tests/test_vfs_knowledge.py
and tests/test_vfs.py.
"""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.trial import unittest

from cosgw.storage.sweeper import UploadSweeper
from cosgw.vfs import knowledge, timecache
from tests.harness import PASSWORD, Gateway, in_thread, start_gateway
from tests.test_sftp_clients import ClientTestsBase, lftp_sftp, run

SMALL = b"x" * (16 * 1024)
#: What setting a file's time costs after its upload: the file's HEAD (its
#: identity) with the LIST of its directory's markers, then the new
#: marker's PUT under .cosgw/ (see cosgw.vfs.mtimes).  Before markers: a
#: COPY of the file onto itself (and two HEADs) and the directory's index
#: (GET, PUT), 5 requests.
WITH_TIME = {"HeadObject": 1, "ListObjects": 1, "PutObject": 1}
#: The same where the directory's markers are known (a listing, a time set
#: there within the second): no LIST.
WITH_KNOWN_TIME = {"HeadObject": 1, "PutObject": 1}
#: An old time for the files clients upload, which they then set: never
#: the second of the upload, so setting it always costs what it costs.
OLD = 1_600_000_000


def ftp_login(gw: Gateway) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(gw.host, gw.port, timeout=30)
    ftp.login("alice", PASSWORD)
    ftp.voidcmd("TYPE I")
    return ftp


def paramiko_session(gw: Gateway) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    transport = paramiko.Transport((gw.host, gw.sftp_port))
    transport.connect(username="alice", password=PASSWORD)
    sftp = paramiko.SFTPClient.from_transport(transport)
    assert sftp is not None
    return transport, sftp


def requests_of(server: Any) -> Counter[str]:
    """The COS requests counted so far (without the adapter's own counters)."""
    return Counter({k: v for k, v in server.stats().items() if not k.startswith("_")})


class Counting:
    """A gateway on the COS test server, and its requests per action."""

    gw: Gateway

    def long_knowledge(self) -> None:
        """What a session saw stays known for the whole test (see the module)."""
        self.patch(knowledge, "NAME_TTL", 60.0)  # type: ignore[attr-defined]
        self.patch(timecache, "TIMES_TTL", 60.0)  # type: ignore[attr-defined]

    def forget_times(self) -> None:
        """What the gateway read of markers is gone, as a second later."""
        self.gw.service.accounts.filesystem("alice").times.cache.clear()

    @defer.inlineCallbacks
    def swept(self, gw: Gateway) -> Any:
        """Wait for the sweeper's first LIST of uploads, which is not a command's."""
        [sweeper] = [s for s in gw.service if isinstance(s, UploadSweeper)]
        yield sweeper.last_sweep

    def counted(self, action: Callable[[], Any]) -> dict[str, int]:
        """
        The COS requests made while C{action} ran (in this thread); a
        refusal (FTP's 5xx) is counted as well.
        """
        server = self.gw.inspector.server
        server.reset_stats()
        try:
            action()
        except ftplib.error_perm:
            pass
        return dict(requests_of(server))


class StoreRequestTests(Counting, unittest.TestCase):
    """FTP commands and paramiko, each action counted on its own."""

    maxDiff = None

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.long_knowledge()
        self.work = Path(tempfile.mkdtemp(prefix="cosgw-requests-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.gw = yield start_gateway(self, "cos")
        yield self.swept(self.gw)

    def ftp_counts(self, ftp: ftplib.FTP, *commands: str) -> list[dict[str, int]]:
        """Requests per command; C{STOR name} sends L{SMALL}."""

        def send(command: str) -> None:
            if command.startswith("STOR "):
                ftp.storbinary(command, io.BytesIO(SMALL))
            elif command.startswith("LIST"):
                ftp.retrlines(command, lambda _: None)
            else:
                ftp.sendcmd(command)

        return [self.counted(lambda c=c: send(c)) for c in commands]

    @defer.inlineCallbacks
    def test_ftp_uploads(self) -> Any:
        """
        The first upload at the home or into a directory the session made:
        one LIST (of the name, and the names after it) and the PUT; the
        next new names there, and overwrites of the session's own files:
        the PUT alone.  Into a directory the session knows is not there:
        the name's LIST, which was on its way, and a 550.
        """

        def run() -> list[dict[str, int]]:
            ftp = ftp_login(self.gw)
            try:
                return self.ftp_counts(
                    ftp,
                    "STOR new.bin",
                    "MKD made",
                    "STOR made/a.bin",
                    "STOR made/b.bin",
                    "STOR new.bin",
                    "STOR made/b.bin",
                    "STOR made/none/x.bin",  # 550: no such directory
                )
            finally:
                ftp.close()

        one_check = {"ListObjects": 1, "PutObject": 1}
        put = {"PutObject": 1}
        counts = yield in_thread(run)
        self.assertEqual(counts, [one_check, one_check, one_check, put, put, put, {}])
        self.assertEqual(self.gw.inspector.read("made/b.bin"), SMALL)

    @defer.inlineCallbacks
    def test_ftp_commands(self) -> Any:
        """
        STOR into a directory another session made (two LISTs at once), the
        next one (the PUT), CWD, LIST, SIZE, MDTM, DELE, RMD.
        """

        def setup() -> None:
            ftp = ftp_login(self.gw)
            ftp.mkd("d")
            ftp.quit()

        yield in_thread(setup)

        def run() -> list[dict[str, int]]:
            ftp = ftp_login(self.gw)
            try:
                counts = self.ftp_counts(ftp, "STOR d/first.bin", "STOR d/second.bin")
                counts += self.ftp_counts(
                    ftp,
                    "CWD d",
                    "LIST",
                    "SIZE first.bin",
                    "MDTM first.bin",
                    "DELE first.bin",
                    "DELE second.bin",
                    "CWD /",
                    "RMD d",
                )
                return counts
            finally:
                ftp.close()

        counts = yield in_thread(run)
        self.assertEqual(
            counts,
            [
                {"ListObjects": 2, "PutObject": 1},  # STOR, d not seen yet
                {"PutObject": 1},  # STOR: the first one's LIST showed no second
                {"ListObjects": 1},  # CWD d: always asked
                # LIST: the directory's and, at once, its markers of times.
                {"ListObjects": 2},
                {},  # SIZE: the session wrote it
                {},  # MDTM: likewise (the PUT's reply gave its time)
                # DELE: its size (quota) and its markers at once, the
                # delete, is the directory kept?
                {"HeadObject": 1, "DeleteObject": 1, "ListObjects": 2},
                {"HeadObject": 1, "DeleteObject": 1, "ListObjects": 2},
                {},  # CWD / : the home
                {"ListObjects": 1, "DeleteObject": 1},  # RMD
            ],
        )

    @defer.inlineCallbacks
    def test_ftp_stats_of_files_it_did_not_write(self) -> Any:
        """
        Stats, a time set, a rename and a delete of files another client
        stored in a/, then listings: the first stat reads a/'s markers (a
        LIST), which answers for the other files there for the second (the
        window, here a minute); a delete and a rename still LIST the file's
        markers; a listing of a/ then needs no LIST of markers, nor one of
        a/sub/, which a/'s page of markers shows holds none.
        """
        cos = self.gw.inspector.server.cos_client()
        for key in ("a/x1.bin", "a/x2.bin", "a/x3.bin", "a/x4.bin", "a/sub/y.bin"):
            yield in_thread(
                cos.put_object, Bucket=self.gw.inspector.bucket, Key=key, Body=SMALL
            )

        def run() -> list[dict[str, int]]:
            ftp = ftp_login(self.gw)
            try:
                return self.ftp_counts(
                    ftp,
                    "MLST a/x1.bin",
                    "MDTM a/x2.bin",
                    "MLST a/x3.bin",
                    "MFMT 20200913122640 a/x3.bin",
                    "RNFR a/x4.bin",
                    "RNTO a/x5.bin",
                    "DELE a/x2.bin",
                    "LIST a",
                    "LIST a/sub",
                )
            finally:
                ftp.close()

        counts = yield in_thread(run)
        self.assertEqual(
            counts,
            [
                {"HeadObject": 1, "ListObjects": 1},  # the HEAD, a/'s markers
                {"HeadObject": 1},  # a/'s markers are known
                {"HeadObject": 1},
                {"HeadObject": 1, "PutObject": 1},  # MFMT: no old marker
                {"HeadObject": 1},  # RNFR's stat
                # RNTO: the name's LIST, the COPY (the COS store HEADs its
                # source and its copy) and the source's markers' LIST, the
                # DELETE, and the LIST that keeps a/.
                {"ListObjects": 3, "HeadObject": 2, "CopyObject": 1, "DeleteObject": 1},
                # DELE: its HEAD and its markers' LIST at once, the DELETE,
                # the LIST that keeps a/.
                {"HeadObject": 1, "ListObjects": 2, "DeleteObject": 1},
                {"ListObjects": 1},  # a/'s markers are known
                {"ListObjects": 1},  # a/'s page said a/sub/ holds none
            ],
        )
        self.assertEqual(self.gw.inspector.read("a/x5.bin"), SMALL)
        markers = yield in_thread(self.gw.inspector.keys, ".cosgw/")
        self.assertEqual(len(markers), 1)
        self.assertTrue(markers[0].startswith(".cosgw/mtimes/a/x3.bin  1600000000"))

    @defer.inlineCallbacks
    def test_paramiko(self) -> Any:
        """
        paramiko's put (OPEN with CREAT|TRUNC, WRITE, CLOSE, then a STAT
        to check the size, answered by what the session just stored) and
        get (STAT, OPEN, READs).
        """

        def setup() -> None:
            transport, sftp = paramiko_session(self.gw)
            try:
                sftp.mkdir("pre")
                with sftp.open("theirs.bin", "wb") as f:
                    f.write(SMALL)
            finally:
                transport.close()

        yield in_thread(setup)
        fetched: list[bytes] = []

        def run() -> list[dict[str, int]]:
            transport, sftp = paramiko_session(self.gw)
            local = str(self.work / "local.bin")
            Path(local).write_bytes(SMALL)

            def get(path: str) -> None:
                sftp.get(path, local + ".got")
                fetched.append(Path(local + ".got").read_bytes())

            try:
                return [
                    self.counted(action)
                    for action in (
                        lambda: sftp.put(local, "s.bin"),
                        lambda: sftp.put(local, "s2.bin"),
                        lambda: sftp.mkdir("sd"),
                        lambda: sftp.put(local, "sd/a.bin"),
                        lambda: sftp.put(local, "sd/b.bin"),
                        lambda: get("s.bin"),
                        lambda: get("theirs.bin"),
                        lambda: sftp.put(local, "pre/x.bin"),
                    )
                ]
            finally:
                transport.close()

        counts = yield in_thread(run)
        one_check = {"ListObjects": 1, "PutObject": 1}
        self.assertEqual(
            counts,
            [
                one_check,  # the first upload: the name's LIST, the PUT
                {"PutObject": 1},  # that LIST showed s2.bin free
                {"PutObject": 1},  # ...and sd: MKD is its marker
                one_check,  # the first upload into sd/
                {"PutObject": 1},
                {"GetObject": 1},  # the session wrote it: the GET alone
                # Another session's file: its stat (HEAD, LIST of markers).
                {"HeadObject": 1, "ListObjects": 1, "GetObject": 1},
                # A directory the session has not seen: it and the name.
                {"ListObjects": 2, "PutObject": 1},
            ],
        )
        self.assertEqual(fetched, [SMALL, SMALL])
        self.assertEqual(self.gw.inspector.read("pre/x.bin"), SMALL)


class ClientStoreRequestTests(Counting, ClientTestsBase, unittest.TestCase):
    """
    OpenSSH's sftp, lftp and rclone: each run is a session of its own.  A
    command's requests are those of a run of the commands up to it less
    those of a run of the commands before it (the names each run uploads
    are its own, so every run starts from the same state).
    """

    kind = "cos"
    timeout = 120
    maxDiff = None

    @defer.inlineCallbacks
    def begin(self) -> Any:
        """A gateway with d/ (holding have.bin) and a/, made by another session."""
        self.long_knowledge()
        self.gw = yield self.start()
        yield self.swept(self.gw)
        self.source = self.file("source.bin", SMALL)
        os.utime(self.source, (OLD, OLD))
        cos = self.gw.inspector.server.cos_client()
        for key, body in (("d/", b""), ("d/have.bin", SMALL), ("a/", b"")):
            yield in_thread(
                cos.put_object, Bucket=self.gw.inspector.bucket, Key=key, Body=body
            )

    @defer.inlineCallbacks
    def per_command(
        self,
        session: Callable[[list[str]], Any],
        prefix: list[str],
        commands: list[str],
    ) -> Any:
        """
        The requests of each of C{commands} (format strings: C{{n}} is the
        run's number, C{{src}} the local file, C{{out}} a local name), run
        after C{prefix} in a session started by C{session(commands)}.
        """
        server = self.gw.inspector.server
        totals = []
        for n in range(len(commands) + 1):
            lines = [
                c.format(n=n, src=self.source, out=self.work / f"out-{n}-{i}")
                for i, c in enumerate(prefix + commands[:n])
            ]
            self.forget_times()
            yield in_thread(server.reset_stats)
            result = yield session(lines)
            self.assertEqual(result.returncode, 0, result.stderr)
            totals.append((yield in_thread(requests_of, server)))
        return [dict(b - a) for a, b in zip(totals, totals[1:])]

    @defer.inlineCallbacks
    def test_openssh_sftp(self) -> Any:
        """
        OpenSSH's put STATs the name first, its get LSTATs and STATs it:
        the STAT's HEAD finds no file, the LIST that tells the name is no
        directory shows the names after it too, and the OPEN's checks are
        answered by them.  A get of a file the session just wrote is the
        GET alone.
        """
        yield self.begin()
        counts = yield self.per_command(
            lambda lines: self.password_sftp(self.gw, "\n".join(lines) + "\n"),
            ["cd /d"],
            [
                "put {src} n1-{n}.bin",
                "put {src} n2-{n}.bin",
                "get n1-{n}.bin {out}",
                "get have.bin {out}",
                "put {src} /a/x-{n}.bin",
            ],
        )
        self.assertEqual(
            counts,
            [
                # The first upload of the session in a directory it entered.
                {"HeadObject": 1, "ListObjects": 1, "PutObject": 1},
                {"HeadObject": 1, "PutObject": 1},  # the next ones
                {"GetObject": 1},  # the session's own file
                # Another session's file: its stat (HEAD, LIST of markers).
                {"HeadObject": 1, "ListObjects": 1, "GetObject": 1},
                # A directory the session has not seen: it, and the name.
                {"HeadObject": 1, "ListObjects": 2, "PutObject": 1},
            ],
        )
        self.assertEqual((self.work / "out-5-3").read_bytes(), SMALL)
        self.assertEqual(self.gw.inspector.read("a/x-5.bin"), SMALL)

    @defer.inlineCallbacks
    def test_lftp(self) -> Any:
        """
        lftp opens without a STAT, and sets the file's time (FSETSTAT)
        before CLOSE: the PUT, then the time (L{WITH_TIME}; the next ones in
        the directory L{WITH_KNOWN_TIME}).  lftp's get opens at once: the
        GET alone.
        """
        yield self.begin()
        counts = yield self.per_command(
            lambda lines: lftp_sftp(
                self.gw.sftp_port, "; ".join(lines), self.env, self.work
            ),
            ["cd d"],
            [
                "put {src} -o n1-{n}.bin",
                "put {src} -o n2-{n}.bin",
                "get n1-{n}.bin -o {out}",
                "get have.bin -o {out}",
                "put {src} -o /a/x-{n}.bin",
            ],
        )
        put = Counter({"PutObject": 1}) + Counter(WITH_TIME)
        known = Counter({"PutObject": 1}) + Counter(WITH_KNOWN_TIME)
        self.assertEqual(
            counts,
            [
                dict(Counter({"ListObjects": 1}) + put),  # the name, and after
                dict(known),  # the first time's LIST knew d's markers
                {"GetObject": 1},
                {"GetObject": 1},
                dict(Counter({"ListObjects": 2}) + put),  # a directory not seen
            ],
        )
        self.assertEqual((self.work / "out-4-3").read_bytes(), SMALL)
        self.assertEqual(self.gw.inspector.read("a/x-5.bin"), SMALL)

    def rclone(self, obscured: str, *args: str) -> Any:
        return run(
            [
                "rclone",
                *args,
                "--sftp-disable-hashcheck",
                "--sftp-shell-type",
                "none",
                "--transfers",
                "1",
                "--checkers",
                "1",
                "--retries",
                "1",
                "--low-level-retries",
                "1",
                "--contimeout",
                "15s",
                "--timeout",
                "15s",
            ],
            {
                **self.env,
                "RCLONE_SFTP_HOST": "127.0.0.1",
                "RCLONE_SFTP_PORT": str(self.gw.sftp_port),
                "RCLONE_SFTP_USER": "alice",
                "RCLONE_SFTP_PASS": obscured,
            },
            self.work,
        )

    @defer.inlineCallbacks
    def test_rclone(self) -> Any:
        """
        rclone copyto of one file (a session that knows nothing: STATs of
        the directory and the name, the PUT, the time set, a STAT to check
        answered by the session), of two files into a directory (which it
        lists, so their names are known free), and back (STAT, OPEN).
        """
        yield self.begin()
        result = yield run(["rclone", "obscure", PASSWORD], self.env, self.work)
        self.assertEqual(result.returncode, 0, result.stderr)
        obscured = result.stdout.decode().strip()
        tree = self.work / "tree"
        tree.mkdir()
        for name in ("t1.bin", "t2.bin"):
            (tree / name).write_bytes(SMALL)
            os.utime(tree / name, (OLD, OLD))
        fetched = self.work / "fetched.bin"
        server = self.gw.inspector.server
        counts = []
        for args in (
            ("copyto", str(self.source), ":sftp:d/r.bin"),
            ("copy", str(tree), ":sftp:d"),
            ("copyto", ":sftp:d/r.bin", str(fetched)),
        ):
            self.forget_times()
            yield in_thread(server.reset_stats)
            result = yield self.rclone(obscured, *args)
            self.assertEqual(result.returncode, 0, result.stderr)
            counts.append(dict((yield in_thread(requests_of, server))))
        put = Counter({"PutObject": 1}) + Counter(WITH_TIME)
        self.assertEqual(
            counts,
            [
                # STAT d and STAT d/r.bin (a HEAD and a LIST each), the PUT
                # and the time; the STATs after are answered.
                dict(Counter({"HeadObject": 2, "ListObjects": 2}) + put),
                # STAT d, its listing (and its markers of times, which the
                # times set then know), then per file the PUT and the time.
                dict(
                    Counter({"HeadObject": 1, "ListObjects": 3})
                    + Counter({"PutObject": 2})
                    + Counter(WITH_KNOWN_TIME)
                    + Counter(WITH_KNOWN_TIME)
                ),
                # STAT (HEAD, LIST of markers), GET.
                {"HeadObject": 1, "ListObjects": 1, "GetObject": 1},
            ],
        )
        self.assertEqual(fetched.read_bytes(), SMALL)
        self.assertEqual(self.gw.inspector.read("d/t2.bin"), SMALL)
