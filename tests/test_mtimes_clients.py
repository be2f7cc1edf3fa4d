"""
Times clients set, end to end on the COS test store: C{lftp mirror -R}
(which sets every file's time: MFMT over FTP, SETSTAT over SFTP) leaves
in the bucket exactly the uploaded files plus markers under C{.cosgw/};
a second mirror transfers nothing; two gateways on one bucket setting
times in one directory at once lose none, and a time set through one shows
on the other once what that one read of the directory's markers aged
(L{cosgw.vfs.timecache}); a user whose home is the whole bucket never sees
the reserved prefix, over FTP and SFTP.
"""

from __future__ import annotations

import ftplib
import os
from pathlib import Path
from typing import Any

import paramiko
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from cosgw.vfs import timecache
from tests.harness import PASSWORD, in_thread, start_gateway
from tests.test_sftp_clients import ClientTestsBase, lftp_sftp, run
from tests.test_store_requests import requests_of

OLD = 1_600_000_000
TREE = {
    "a.txt": b"alpha",
    "with space.bin": b"x" * 3000,
    "sub/中文 名.txt": b"unicode",
    "sub/deeper/z": b"zz",
}


def write_tree(root: Path) -> None:
    for i, (rel, data) in enumerate(sorted(TREE.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (OLD + i * 100, OLD + i * 100))


class MirrorTests(ClientTestsBase, unittest.TestCase):
    kind = "cos"
    timeout = 120

    @defer.inlineCallbacks
    def mirror_twice(self, client: Any, target: str) -> Any:
        gw = self.gw
        source = self.work / "tree"
        write_tree(source)
        result = yield client(f'mirror -R "{source}" {target}')
        self.assertEqual(result.returncode, 0, result.stderr)
        keys = yield in_thread(gw.inspector.keys)
        files = [k for k in keys if not k.startswith(".cosgw/") and not k.endswith("/")]
        self.assertEqual(sorted(files), sorted(f"{target}/{r}" for r in TREE))
        markers = [k for k in keys if k.startswith(".cosgw/")]
        self.assertEqual(len(markers), len(TREE))
        for rel in TREE:
            self.assertTrue(
                any(
                    m.startswith(f".cosgw/mtimes/{target}/{rel.replace(' ', ' !')}  ")
                    for m in markers
                ),
                rel,
            )
        # Nothing else among the user's keys: only files and directories.
        self.assertEqual([k for k in keys if "cosgw-mtimes" in k], [])
        server = gw.inspector.server
        yield in_thread(server.reset_stats)
        again = yield client(f'mirror -R "{source}" {target}')
        self.assertEqual(again.returncode, 0, again.stderr)
        counts = yield in_thread(requests_of, server)
        self.assertEqual(counts.get("PutObject", 0), 0, dict(counts))
        self.assertEqual(counts.get("CompleteMultipartUpload", 0), 0, dict(counts))
        return markers

    @defer.inlineCallbacks
    def test_lftp_sftp(self) -> Any:
        self.gw = yield self.start()
        yield self.mirror_twice(
            lambda cmd: lftp_sftp(self.gw.sftp_port, cmd, self.env, self.work),
            "over-sftp",
        )

    @defer.inlineCallbacks
    def test_lftp_ftp(self) -> Any:
        self.gw = yield self.start()

        def client(cmd: str) -> Any:
            script = (
                "set ftp:ssl-allow no; set cmd:fail-exit yes; set net:max-retries 1; "
                f"set net:timeout 15; {cmd}; bye"
            )
            url = f"ftp://127.0.0.1:{self.gw.port}"
            return run(
                ["lftp", "-u", f"alice,{PASSWORD}", "-e", script, url],
                self.env,
                self.work,
            )

        yield self.mirror_twice(client, "over-ftp")

        # The times are the files' own, as a fresh session lists them.
        def mdtm() -> str:
            ftp = ftplib.FTP()
            ftp.connect(self.gw.host, self.gw.port, timeout=30)
            ftp.login("alice", PASSWORD)
            try:
                return ftp.sendcmd("MDTM over-ftp/sub/deeper/z")
            finally:
                ftp.close()

        reply = yield in_thread(mdtm)
        self.assertEqual(reply, "213 20200913122820")  # OLD + 100 s


class SharedBucketTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def two_gateways(self, ttl: float) -> Any:
        """Two gateway services on one bucket, markers known C{ttl} seconds."""
        self.patch(timecache, "TIMES_TTL", ttl)
        first = yield start_gateway(self, "cos")
        second = yield start_gateway(
            self, "cos", storages={"store": first.inspector.storage()}
        )
        return first, second

    @defer.inlineCallbacks
    def until(self, seconds: float, ask: Any, expected: Any) -> Any:
        """Ask until the answer is C{expected}; the seconds that took."""
        start = reactor.seconds()
        while True:
            answer = yield ask()
            if answer == expected:
                return reactor.seconds() - start
            if reactor.seconds() - start > seconds:
                self.assertEqual(answer, expected)
            yield deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_two_gateways_set_times_at_once(self) -> Any:
        """
        Two gateway services on one bucket set the times of many files of
        one directory at once, interleaved: none is lost, and each gateway
        lists them all once what it read of the markers aged.
        """
        first, second = yield self.two_gateways(0.5)
        cos = first.inspector.server.cos_client()
        count = 30
        for i in range(count):
            yield in_thread(
                cos.put_object, Bucket=first.inspector.bucket, Key=f"d/f{i}", Body=b"x"
            )
        systems = [gw.service.accounts.filesystem("alice") for gw in (first, second)]
        yield defer.gatherResults(
            [systems[i % 2].set_mtime(["d", f"f{i}"], OLD + i) for i in range(count)]
        )
        for gw in (first, second):
            fs = gw.service.accounts.filesystem("alice")

            @defer.inlineCallbacks
            def times(fs: Any = fs) -> Any:
                entries = yield fs.list_all(["d"])
                return {e.name: e.mtime for e in entries}

            yield self.until(10, times, {f"f{i}": float(OLD + i) for i in range(count)})
        keys = yield in_thread(first.inspector.keys)
        self.assertEqual(len([k for k in keys if k.startswith(".cosgw/")]), count)

    @defer.inlineCallbacks
    def test_time_set_elsewhere_shows_after_the_window(self) -> Any:
        """
        Gateway A reads a directory's markers (a stat of one of its files);
        B sets the time of another file there: within the window A's stats
        show that file's store time (no LIST of markers), after it B's time.
        Both ways over FTP (MDTM), each stat a new session.
        """
        ttl = 3.0
        first, second = yield self.two_gateways(ttl)
        cos = first.inspector.server.cos_client()
        for key in ("d/a", "d/b"):
            yield in_thread(
                cos.put_object, Bucket=first.inspector.bucket, Key=key, Body=b"x"
            )

        def mdtm(gw: Any, path: str) -> str:
            ftp = ftplib.FTP()
            ftp.connect(gw.host, gw.port, timeout=30)
            ftp.login("alice", PASSWORD)
            try:
                return ftp.sendcmd(f"MDTM {path}")
            finally:
                ftp.close()

        began = reactor.seconds()
        stored = yield in_thread(mdtm, first, "d/a")  # A reads d's markers
        yield second.service.accounts.filesystem("alice").set_mtime(["d", "b"], OLD)
        server = first.inspector.server
        yield in_thread(server.reset_stats)
        within = yield in_thread(mdtm, first, "d/b")
        counts = yield in_thread(requests_of, server)
        self.assertLess(reactor.seconds() - began, ttl, "too slow to see the window")
        self.assertNotEqual(within, "213 20200913122640")
        self.assertEqual(within[:8], stored[:8])  # the store's time, today
        self.assertEqual(dict(counts), {"HeadObject": 1})
        yield self.until(
            ttl + 10, lambda: in_thread(mdtm, first, "d/b"), "213 20200913122640"
        )
        self.assertGreater(reactor.seconds() - began, ttl)


class ReservedPrefixTests(unittest.TestCase):
    """alice's home is the whole bucket (the harness's default)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_never_seen_nor_reached(self) -> Any:
        gw = yield start_gateway(self, "cos")
        fs = gw.service.accounts.filesystem("alice")
        cos = gw.inspector.server.cos_client()
        yield in_thread(cos.put_object, Bucket=gw.inspector.bucket, Key="f", Body=b"x")
        yield fs.set_mtime(["f"], OLD)

        def over_ftp() -> tuple[list[str], list[str]]:
            ftp = ftplib.FTP()
            ftp.connect(gw.host, gw.port, timeout=30)
            ftp.login("alice", PASSWORD)
            refused = []
            try:
                names = ftp.nlst()
                for command in (
                    "CWD .cosgw",
                    "DELE .cosgw/mtimes",
                    "RNFR .cosgw",
                    "MKD .cosgw/x",
                    "SIZE .cosgw/mtimes/f",
                ):
                    try:
                        ftp.sendcmd(command)
                    except ftplib.error_perm as e:
                        refused.append(str(e)[:3])
                try:
                    ftp.retrbinary("RETR .cosgw/mtimes/x", lambda _: None)
                except ftplib.error_perm as e:
                    refused.append(str(e)[:3])
                return names, refused
            finally:
                ftp.close()

        names, refused = yield in_thread(over_ftp)
        self.assertEqual(names, ["f"])
        self.assertEqual(refused, ["550"] * 6)

        def over_sftp() -> tuple[list[str], list[str]]:
            transport = paramiko.Transport((gw.host, gw.sftp_port))
            transport.connect(username="alice", password=PASSWORD)
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None
            errors = []
            try:
                names = sftp.listdir("/")
                for attempt in (
                    lambda: sftp.listdir("/.cosgw"),
                    lambda: sftp.stat("/.cosgw/mtimes"),
                    lambda: sftp.open("/.cosgw/new", "wb").close(),
                    lambda: sftp.remove("/.cosgw/mtimes/f"),
                ):
                    try:
                        attempt()
                    except PermissionError:
                        errors.append("denied")
                return names, errors
            finally:
                transport.close()

        names, errors = yield in_thread(over_sftp)
        self.assertEqual(names, ["f"])
        self.assertEqual(errors, ["denied"] * 4)
        keys = yield in_thread(gw.inspector.keys)
        self.assertEqual([k for k in keys if k.startswith(".cosgw/")].__len__(), 1)
