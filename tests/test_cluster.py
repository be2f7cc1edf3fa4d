"""
Two gateway processes behind a real HAProxy on the COS test store
(L{tests.clustertesting}): FTP in passive mode (PASV and EPSV, with ftplib,
curl and lftp), implicit FTPS and SFTP sessions go through the balancer,
land on both replicas, and each data connection meets the replica of its
control connection; HAProxy's PROXY v2 header gives each replica the
client's own address for its rules and logs.  One cluster for the class.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import subprocess
from pathlib import Path

from twisted.trial import unittest

from tests.clustertesting import (
    PASSWORD,
    PUBLIC,
    TIMEOUT,
    ClassCleanups,
    Cluster,
    end_sftp,
)
from tests.processtesting import poll

KiB = 1024
MiB = 1024 * KiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ClusterTests(unittest.SynchronousTestCase):
    cluster: Cluster
    cleanups: ClassCleanups

    @classmethod
    def setUpClass(cls) -> None:
        cls.cleanups = ClassCleanups()
        try:
            cls.cluster = Cluster(
                cls.cleanups, server_lines="denied_networks = 127.0.0.3/32\n"
            )
        except BaseException:
            cls.cleanups.run()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cleanups.run()

    def run_client(self, argv: list[str], work: Path) -> str:
        done = subprocess.run(
            argv, cwd=work, capture_output=True, text=True, timeout=TIMEOUT * 2
        )
        self.assertEqual(done.returncode, 0, f"{argv[0]}: {done.stderr}")
        return done.stdout

    def landed(self, event: str, path: str) -> list[str]:
        """The replicas whose logs have C{event} (ok) for C{path}."""
        return [
            r.name
            for r in self.cluster.replicas
            for e in r.audit(event)
            if str(e.get("path", "")).lstrip("/") == path and e.get("outcome") == "ok"
        ]

    def test_sessions_land_on_both_replicas(self) -> None:
        """
        Two FTP, two implicit FTPS and two SFTP sessions held open at once:
        round robin gives each replica one of each (its /api/sessions); an
        upload in each is stored whole, through the replica it landed on.
        """
        c = self.cluster
        sessions = [c.ftp(), c.ftp(), c.ftp(tls=True), c.ftp(tls=True)]
        sftps = [c.sftp(), c.sftp()]
        try:
            blobs = {f"s-{i}.bin": os.urandom(300 * KiB + i) for i in range(6)}
            names = sorted(blobs)
            for ftp, name in zip(sessions, names):
                ftp.storbinary(f"STOR {name}", io.BytesIO(blobs[name]))
            for sftp, name in zip(sftps, names[4:]):
                sftp.putfo(io.BytesIO(blobs[name]), name)
            for replica in c.replicas:
                protocols = sorted(s["protocol"] for s in replica.sessions())
                self.assertEqual(protocols, ["ftp", "ftps", "sftp"], replica.name)
                self.assertTrue(
                    all(s["user"] == "alice" for s in replica.sessions()),
                    replica.sessions(),
                )
        finally:
            for ftp in sessions:
                ftp.quit()
            for sftp in sftps:
                end_sftp(sftp)
        for name, data in blobs.items():
            self.assertEqual(sha(c.stored(name)), sha(data), name)
            self.assertEqual(len(self.landed("upload", name)), 1, name)
        self.assertEqual(
            sorted(self.landed("upload", n)[0] for n in names), sorted("aabbab")
        )

    def test_pasv_and_epsv_through_haproxy(self) -> None:
        """
        ftplib (PASV), curl with EPSV and with PASV, lftp with EPSV: two
        uploads and a download each, so both replicas serve each way; every
        byte arrives (hashes), and each transfer is logged by one replica.
        """
        c = self.cluster
        work = c.directory / "clients"
        work.mkdir(exist_ok=True)
        data = os.urandom(MiB + 77)
        (work / "up.bin").write_bytes(data)
        url = f"ftp://alice:{PASSWORD}@{PUBLIC}:{c.public.ftp}"
        ways = {
            "curl-epsv": lambda n: ["curl", "-sS", "--ftp-pasv", "-T", "up.bin", f"{url}/p-{n}"],
            "curl-pasv": lambda n: [
                "curl", "-sS", "--ftp-pasv", "--disable-epsv", "-T", "up.bin", f"{url}/p-{n}",
            ],
            "lftp-epsv": lambda n: [
                "lftp", "-c",
                "set ftp:ssl-allow no; set ftp:prefer-epsv yes; set ftp:passive-mode yes; "
                f"set net:max-retries 1; open -u alice,{PASSWORD} -p {c.public.ftp} {PUBLIC}; "
                f"put up.bin -o p-{n}",
            ],
        }  # fmt: skip
        names = []
        for way, argv in ways.items():
            for i in range(2):
                name = f"{way}-{i}.bin"
                self.run_client(argv(name), work)
                names.append(f"p-{name}")
        ftp = c.ftp()
        try:
            for i in range(2):
                ftp.storbinary(f"STOR p-ftplib-{i}.bin", io.BytesIO(data))
                names.append(f"p-ftplib-{i}.bin")
        finally:
            ftp.quit()
        for name in names:
            self.assertEqual(sha(c.stored(name)), sha(data), name)
        # Downloads: curl over EPSV and PASV, twice each.
        for i, extra in enumerate([[], [], ["--disable-epsv"], ["--disable-epsv"]]):
            got = work / f"got-{i}.bin"
            self.run_client(
                [
                    "curl",
                    "-sS",
                    "--ftp-pasv",
                    *extra,
                    "-o",
                    str(got),
                    f"{url}/{names[i]}",
                ],
                work,
            )
            self.assertEqual(sha(got.read_bytes()), sha(data))
        landed = [self.landed("upload", n) for n in names]
        self.assertTrue(all(len(r) == 1 for r in landed), landed)
        self.assertEqual({r[0] for r in landed}, {"a", "b"})
        downloads = [r for n in names[:4] for r in self.landed("download", n)]
        self.assertEqual(len(downloads), 4)

    def test_sftp_sees_one_host_key(self) -> None:
        """Both replicas show the same host key: a client pinning it never objects."""
        c = self.cluster
        keys = set()
        for _ in range(4):
            sftp = c.sftp()
            transport = sftp.get_channel().get_transport()
            keys.add(transport.get_remote_server_key().get_fingerprint())
            end_sftp(sftp)
        poll(
            lambda: all(not r.sessions() for r in c.replicas),
            TIMEOUT,
            "sessions closed",
        )
        self.assertEqual(len(keys), 1)
        self.assertTrue(all(r.audit("login") for r in c.replicas))

    def test_client_address_reaches_rules_and_logs(self) -> None:
        """
        Clients bound to 127.0.0.2 (allowed) and 127.0.0.3 (denied_networks)
        through HAProxy, whose own address is 127.0.0.1: each replica's
        sessions and audit events show 127.0.0.2, over FTP, FTPS and SFTP;
        127.0.0.3 is refused with the reason, and logged as 127.0.0.3.
        """
        c = self.cluster
        sessions = [c.ftp(source="127.0.0.2"), c.ftp(source="127.0.0.2")]
        sessions.append(c.ftp(source="127.0.0.2", tls=True))
        sftp = c.sftp(source="127.0.0.2")
        try:
            seen = {
                (r.name, s["protocol"], s["client_ip"])
                for r in c.replicas
                for s in r.sessions()
            }
            self.assertEqual({ip for _, _, ip in seen}, {"127.0.0.2"})
            self.assertEqual({name for name, _, _ in seen}, {"a", "b"})
            self.assertEqual({p for _, p, _ in seen}, {"ftp", "ftps", "sftp"})
        finally:
            for ftp in sessions:
                ftp.quit()
            end_sftp(sftp)
        for _ in c.replicas:
            with self.assertRaises(ftplib.Error) as refused:
                c.ftp(source="127.0.0.3")
            self.assertIn("not allowed", str(refused.exception))
        logged = [e for r in c.replicas for e in r.events() if "127.0.0.3" in str(e)]
        self.assertTrue(logged)
        self.assertFalse(
            [
                e
                for r in c.replicas
                for e in r.audit("login")
                if e["client_ip"] == "127.0.0.1"
            ]
        )
