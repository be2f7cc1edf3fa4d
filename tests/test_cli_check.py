"""
Tests for C{cosgw check-config}: run as a command, on good, broken and
unreachable configs, probing real stores (the COS test server over moto,
closed and silent ports on 127.0.0.1, local directories).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.clitesting import (
    PASSWORD,
    SECRET_KEY,
    cos_section,
    cosgw,
    new_bucket,
    temporary_directory,
    write_config,
)
from tests.cosserver import closed_port, shared_server

V5_SAMPLE = Path(__file__).resolve().parent / "data" / "v5-vsftpd.conf"


def fields(output: str) -> list[str]:
    """The lines of C{output}, each with its runs of blanks made one space."""
    return [" ".join(line.split()) for line in output.splitlines()]


GOOD = f"""
    [server]
    ftp_listen = tcp:2121
    sftp_listen = tcp:2222

    [storage:files]
    type = local
    path = data

    [storage:photos]
    type = cos
    bucket = examplebucket-1250000000
    region = ap-guangzhou
    secret_id = AKIDEXAMPLEEXAMPLE1234
    secret_key = {SECRET_KEY}

    [user:alice]
    password = {PASSWORD}
    storage = files
    home = /teams/alice
    permissions = list, download, upload
    quota_bytes = 5G
    quota_files = 1000
    upload_rate = 1M
    max_sessions = 3
    allowed_networks = 10.0.0.0/8

    [user:bob]
    password = $scrypt$n=16384,r=8,p=1$8sToge405d78cqbhWZ6/pA$UMeAj0rDVYgWZ21F1y0E4gEy8yuxZ6kQ+xXWrgLWGNU
    storage = photos
    permissions = R
"""


class CheckConfigTests(TestCase):
    """What check-config shows of a config, and its errors."""

    def setUp(self) -> None:
        self.dir = temporary_directory(self)

    def assertNoSecret(self, *texts: str) -> None:
        for text in texts:
            self.assertNotIn(SECRET_KEY, text)
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn("AKIDEXAMPLEEXAMPLE", text)

    def test_good(self) -> None:
        """The effective storages, users and notices; exit 0; no secret."""
        path = write_config(self.dir, GOOD)
        result = cosgw("check-config", str(path))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        lines = fields(result.stdout)
        self.assertEqual(lines[0], f"{path}: valid")
        for expected in [
            "storage files:",
            f"path {self.dir / 'data'}",
            "users alice",
            "storage photos:",
            "bucket examplebucket-1250000000",
            "region ap-guangzhou",
            "key id ...1234",
            "user alice:",
            "storage files",
            "home /teams/alice",
            "permissions download, list, upload",
            "login password (plain text)",
            "quota 5G, 1000 files",
            "rates upload 1M/s",
            "sessions at most 3",
            "allowed 10.0.0.0/8",
            "user bob:",
            "home /",
            "permissions download, list",
            "login password",
            "notices:",
        ]:
            self.assertIn(expected, lines)
        self.assertIn("sftp tcp:2222", lines)
        [notice] = [line for line in lines if line.startswith("-")]
        self.assertIn("[user:alice] password: user 'alice' has a plain-text", notice)
        self.assertNoSecret(result.stdout)

    def test_v5(self) -> None:
        """A COS FTP Server V5 vsftpd.conf is read as twistd reads it."""
        result = cosgw("check-config", str(V5_SAMPLE))
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = fields(result.stdout)
        self.assertIn("bucket other-bucket-1250000001", lines)
        self.assertIn("user user1:", lines)
        self.assertIn("permissions download, list", lines)
        self.assertIn("key id ...0000", lines)
        for secret in ("fakeSecretKeyZero", "fakeSecretKeyOne", "pass0", "pass1"):
            self.assertNotIn(secret, result.stdout)

    def assertConfigError(self, text: str, *expected: str) -> str:
        """check-config of C{text} fails with one line holding C{expected}."""
        path = write_config(self.dir, text)
        result = cosgw("check-config", str(path))
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        [line] = result.stderr.splitlines()
        self.assertTrue(line.startswith(f"cosgw check-config: {path}: "), line)
        for part in expected:
            self.assertIn(part, line)
        self.assertNoSecret(result.stderr)
        return line

    def test_typo(self) -> None:
        """A misspelt key: the one line names it and suggests the right one."""
        self.assertConfigError(
            GOOD + "\n[transfer]\npart_sise = 8M\n",
            "[transfer] part_sise: unknown key",
            "did you mean 'part_size'?",
        )

    def test_bad_value(self) -> None:
        self.assertConfigError(
            GOOD.replace("ftp_listen = tcp:2121", "passive_ports = 70000-1"),
            "[server] passive_ports: expected 'LOW-HIGH'",
        )

    def test_bad_key(self) -> None:
        """A storage missing its bucket: named, and its secret not quoted."""
        self.assertConfigError(
            GOOD.replace("bucket = examplebucket-1250000000", ""),
            "[storage:photos] bucket: missing",
        )

    def test_missing_file(self) -> None:
        result = cosgw("check-config", str(self.dir / "nothere.ini"))
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertEqual(
            result.stderr,
            f"cosgw check-config: {self.dir / 'nothere.ini'}: no such file\n",
        )


class ProbeTests(TestCase):
    """check-config --probe asks each store, once, with a short timeout."""

    def setUp(self) -> None:
        self.dir = temporary_directory(self)
        self.server = shared_server()

    def probe(self, storages: str, *options: str) -> tuple[int, list[str], str]:
        """Probe a config with C{storages} and a user on each."""
        names = [
            line[len("[storage:") : -1]
            for line in storages.splitlines()
            if line.startswith("[storage:")
        ]
        users = "".join(
            f"[user:u{i}]\npassword = {PASSWORD}\nstorage = {name}\nhome = /h{i}/x\n"
            for i, name in enumerate(names)
        )
        path = write_config(self.dir, storages + "\n" + users)
        result = cosgw("check-config", str(path), "--probe", *options)
        self.assertNotIn(SECRET_KEY, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        probed = lines[lines.index("probe:") + 1 :] if "probe:" in lines else []
        return result.returncode, probed, result.stderr

    def test_reachable(self) -> None:
        """
        A bucket that answers and a writable directory: OK, exit 0; the
        bucket cost exactly one listing of one key under its user's home.
        """
        bucket = new_bucket(self.server)
        (self.dir / "data").mkdir()
        self.server.reset_stats()
        code, probed, stderr = self.probe(
            f"[storage:cos]{cos_section(self.server, bucket)}"
            "[storage:files]\ntype = local\npath = data\n"
        )
        self.assertEqual(code, 0, (probed, stderr))
        self.assertEqual(len(probed), 2)
        self.assertRegex(
            probed[0],
            rf"^  cos: OK \(\d+\.\d\d s\): COS bucket {bucket} at 127\.0\.0\.1:"
            rf"{self.server.port}: listed nothing yet under 'h0/x/'$",
        )
        self.assertRegex(
            probed[1],
            rf"^  files: OK .*: local directory {self.dir / 'data'}: exists and"
            " takes new files$",
        )
        stats = {k: v for k, v in self.server.stats().items() if v}
        self.assertEqual(stats, {"ListObjects": 1})
        # The write test left nothing behind.
        self.assertEqual(list((self.dir / "data").iterdir()), [])

    def test_wrong_key(self) -> None:
        """Credentials COS refuses: FAILED with COS's reason, exit 2."""
        bucket = new_bucket(self.server)
        code, probed, _ = self.probe(
            f"[storage:cos]{cos_section(self.server, bucket, SECRET_KEY)}"
        )
        self.assertEqual(code, 2)
        [line] = probed
        self.assertIn("  cos: FAILED", line)
        self.assertIn("COS 403 SignatureDoesNotMatch", line)

    def test_missing_bucket(self) -> None:
        code, probed, _ = self.probe(
            f"[storage:cos]{cos_section(self.server, 'nosuch-1250000000')}"
        )
        self.assertEqual(code, 2)
        [line] = probed
        self.assertIn("cos: FAILED", line)
        self.assertIn("404 NoSuchBucket", line)

    def test_closed_port(self) -> None:
        """Nothing listens: FAILED at once (no retries), exit 2."""
        port = closed_port()
        storage = cos_section(self.server, "b-1250000000").replace(
            f"127.0.0.1:{self.server.port}", f"127.0.0.1:{port}"
        )
        started = time.monotonic()
        code, probed, _ = self.probe(f"[storage:down]{storage}", "--timeout", "5")
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(code, 2)
        [line] = probed
        self.assertIn("  down: FAILED", line)
        self.assertIn(
            f"COS bucket b-1250000000 at 127.0.0.1:{port}: LIST h0/x/: store"
            " unreachable: connection refused (ECONNREFUSED)",
            line,
        )

    def test_silent_port(self) -> None:
        """
        A port that takes the connection and never answers: FAILED after
        the timeout, not the SDK's minute.
        """
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        storage = cos_section(self.server, "b-1250000000").replace(
            f"127.0.0.1:{self.server.port}", f"127.0.0.1:{port}"
        )
        started = time.monotonic()
        code, probed, _ = self.probe(f"[storage:mute]{storage}", "--timeout", "1")
        elapsed = time.monotonic() - started
        self.assertEqual(code, 2)
        [line] = probed
        self.assertIn("mute: FAILED", line)
        self.assertIn("no reply from the store in time", line)
        self.assertGreaterEqual(elapsed, 1)
        self.assertLess(elapsed, 15)

    def test_local_directories(self) -> None:
        """
        A file where the directory should be fails; a missing directory the
        gateway can create passes, and the probe does not create it.
        """
        (self.dir / "plain").write_bytes(b"x")
        code, probed, _ = self.probe(
            "[storage:afile]\ntype = local\npath = plain\n"
            "[storage:later]\ntype = local\npath = later/data\n"
        )
        self.assertEqual(code, 2)
        self.assertEqual(len(probed), 2)
        self.assertRegex(
            probed[0], rf"^  afile: FAILED .*: {self.dir / 'plain'}: not a directory$"
        )
        self.assertRegex(
            probed[1],
            rf"^  later: OK .*: local directory {self.dir / 'later' / 'data'}:"
            " missing; the gateway creates it$",
        )
        self.assertFalse((self.dir / "later").exists())
