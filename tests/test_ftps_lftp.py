"""
lftp (GnuTLS) against the gateway's FTPS, the client whose uploads used to
fail under TLS 1.3 (issue 12, item 16): it never reads an upload's data
connection, and the session tickets the gateway sent there turned its close
into a reset that could destroy the last bytes (426; lftp then retried).

Each test mirrors a tree of 50 files (two of 2 and 3 MiB, the others of 4
to 64 KiB, in four directories) up with C{mirror -R} and back down with
C{mirror}, five times, with C{net:max-retries 1} (no second try), over
explicit FTPS (AUTH TLS) or implicit FTPS, with GnuTLS limited to TLS 1.2
or to TLS 1.3.  Every run must succeed at the first try, with no 4xx reply,
one connection, and the store's and the downloaded copies' hashes equal to
the source's.  Before the fix, the TLS 1.3 runs failed ("max-retries
exceeded" after a 426 on a large file).  curl (OpenSSL) uploads under TLS
1.3 are checked in tests/test_ftps.py.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.harness import PASSWORD, MiB, in_thread, sha256
from tests.test_ftps import FTPSGatewayMixin, read_tree

RUNS = 5
FILES = 50
KiB = 1024

TLS12 = ("NORMAL:-VERS-ALL:+VERS-TLS1.2", "TLSv1.2")
TLS13 = ("NORMAL:-VERS-ALL:+VERS-TLS1.3", "TLSv1.3")


def write_tree(root: Path, seed: int) -> dict[str, bytes]:
    """
    FILES files under root, a/, a/b/ and c/: two of 2 and 3 MiB, the rest
    of 4 to 64 KiB.  The large ones make the gateway pause reading (the
    store holds the upload back), so that bytes are still unread when the
    client closes: what a reset destroyed.
    """
    rng = random.Random(seed)
    directories = ["", "a/", "a/b/", "c/"]
    files = {}
    for i in range(FILES):
        rel = f"{directories[i % len(directories)]}f{i:02d}.bin"
        size = (2 + i) * MiB if i < 2 else rng.randint(4 * KiB, 64 * KiB)
        files[rel] = rng.randbytes(size)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def lftp(url: str, cafile: Path, home: Path, priority: str, *commands: str) -> Any:
    """
    Run lftp against C{url} with TLS forced on control and data, the
    certificate checked against C{cafile} (host name included), GnuTLS
    limited by C{priority}, and no retry of a failed operation.
    """
    script = "; ".join(
        [
            "set cmd:fail-exit yes",
            "set net:max-retries 1",
            "set net:timeout 20",
            "set xfer:log no",
            "set ftp:ssl-force yes",
            "set ftp:ssl-protect-data yes",
            "set ftp:ssl-protect-list yes",
            "set ssl:verify-certificate yes",
            "set ssl:check-hostname yes",
            f'set ssl:ca-file "{cafile}"',
            f'set ssl:priority "{priority}"',
            "debug 5",  # the dialogue, on stderr
            f"open -u alice,{PASSWORD} {url}",
            *commands,
        ]
    )
    return subprocess.run(
        ["lftp", "-c", script],
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(home)},
    )


class LftpMirrorTests(FTPSGatewayMixin, unittest.TestCase):
    def setUp(self) -> Any:
        return self.start("local")

    def url(self, implicit: bool) -> str:
        if implicit:
            return f"ftps://{self.gw.host}:{self.implicit_port}"
        return f"ftp://{self.gw.host}:{self.gw.port}"

    @defer.inlineCallbacks
    def mirror(self, implicit: bool, tls: tuple[str, str]) -> Generator[Any, Any, None]:
        priority, version = tls
        kind = "implicit" if implicit else "explicit"
        for run in range(RUNS):
            label = f"{kind}-{version}-{run}"
            source = self.scratch / f"{label}-source"
            copy = self.scratch / f"{label}-copy"
            files = write_tree(source, seed=run)
            self.handshakes.clear()
            done = yield in_thread(
                lftp,
                self.url(implicit),
                self.cert,
                self.scratch,
                priority,
                f'mirror -R "{source}" "{label}"',
                f'mirror "{label}" "{copy}"',
            )
            self.check_dialogue(label, done)
            stored = [k for k in self.keys(label + "/") if not k.endswith("/")]
            self.assertEqual(sorted(stored), sorted(f"{label}/{f}" for f in files))
            for rel, data in files.items():
                self.assertEqual(self.stored_sha(f"{label}/{rel}"), sha256(data), rel)
            self.assertEqual(read_tree(copy), read_tree(source), label)
            self.assertEqual(len(read_tree(copy)[1]), FILES, label)
            # The control connection and one per file each way, all at the
            # version asked for.
            self.assertEqual(self.handshakes.versions(), {version}, label)
            self.assertGreater(self.handshakes.count(), 2 * FILES, label)
        self.assertEqual(self.gw.inspector.pending_uploads(), [])

    def check_dialogue(self, label: str, done: Any) -> None:
        """
        lftp exited 0 at the first try: no 4xx reply (a refused or failed
        transfer: 425, 426, 451), no reconnection.  (5xx replies are
        lftp's probes, such as MDTM of a directory.)
        """
        dialogue = done.stderr.decode(errors="replace").splitlines()
        command = ""
        trouble = []
        for line in dialogue:
            if line.startswith("---> "):
                command = line
            elif line.startswith("<--- 4"):
                trouble.append(f"{command} {line}")
        connects = [x for x in dialogue if x.startswith("---- Connecting to")]
        said = [x for x in dialogue if not x.startswith(("--->", "<---", "----"))]
        self.assertEqual((done.returncode, trouble), (0, []), (label, said))
        self.assertEqual(len(connects), 1, (label, connects))

    def test_explicit_tls12(self) -> Any:
        return self.mirror(implicit=False, tls=TLS12)

    def test_explicit_tls13(self) -> Any:
        return self.mirror(implicit=False, tls=TLS13)

    def test_implicit_tls12(self) -> Any:
        return self.mirror(implicit=True, tls=TLS12)

    def test_implicit_tls13(self) -> Any:
        return self.mirror(implicit=True, tls=TLS13)
