"""
The SSH ciphers through real sockets with the clients people use, over a
local store: OpenSSH's sftp and lftp (which runs OpenSSH's ssh) with each
cipher forced (``-c``), rekeying every MiB so that new keys, and strict key
exchange's sequence numbers starting again, are crossed mid-transfer;
paramiko with AES-GCM (it has no chacha20-poly1305); rclone (Go), which
picks aes128-gcm@openssh.com itself (1.60 has no cipher option); curl,
whose libssh2 1.10 has neither GCM nor chacha20 and gets aes-ctr.  Every transfer is checked by SHA-256 in the
downloaded file and in the store.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.harness import PASSWORD, MiB, in_thread, random_bytes, sha256, start_gateway
from tests.test_sftp_clients import lftp_sftp, openssh_options, run

AEAD = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
)
TOOLS = ("sftp", "ssh", "ssh-keygen", "lftp", "rclone", "curl")
MISSING = [t for t in TOOLS if shutil.which(t) is None]


class CipherTestsBase(unittest.TestCase):
    timeout = 120
    skip = f"clients missing: {', '.join(MISSING)}" if MISSING else None

    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="cosgw-sftp-ciphers-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        home = self.work / "home"
        home.mkdir()
        askpass = self.work / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\necho '{PASSWORD}'\n")
        askpass.chmod(0o700)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "DISPLAY": ":0",
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "RCLONE_CONFIG": str(self.work / "rclone.conf"),
        }
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    def file(self, name: str, data: bytes) -> Path:
        path = self.work / name
        path.write_bytes(data)
        return path

    @defer.inlineCallbacks
    def openssh_round_trip(self, cipher: str) -> Any:
        """
        Put and get 3 MiB with OpenSSH's sftp forcing C{cipher}, rekeying
        every MiB; return sftp's debug output.
        """
        gw = yield start_gateway(self, "local")
        data = random_bytes(3 * MiB + 4321)
        source = self.file("up.bin", data)
        fetched = self.work / "down.bin"
        batch = self.file(
            "batch", f"put {source} c.bin\nget c.bin {fetched}\n".encode()
        )
        result = yield run(
            [
                "sftp",
                *openssh_options(gw.sftp_port),
                "-vvv",
                "-c",
                cipher,
                "-o",
                "RekeyLimit=1M",
                "-o",
                "BatchMode=no",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password",
                "-b",
                str(batch),
                "alice@127.0.0.1",
            ],
            self.env,
            self.work,
        )
        debug = result.stderr.decode("utf-8", "replace")
        self.assertEqual(result.returncode, 0, debug[-3000:])
        self.assertEqual(sha256(fetched.read_bytes()), sha256(data))
        stored = yield in_thread(gw.inspector.read, "c.bin")
        self.assertEqual(sha256(stored), sha256(data))
        return debug


class OpenSSHCipherTests(CipherTestsBase):
    """OpenSSH's sftp with each cipher, new keys every MiB."""

    @defer.inlineCallbacks
    def check_aead(self, cipher: str) -> Any:
        debug = yield self.openssh_round_trip(cipher)
        for direction in ("client->server", "server->client"):
            self.assertIn(f"kex: {direction} cipher: {cipher} MAC: <implicit>", debug)
        # limits@openssh.com: requests of 255 KiB, not 32 KiB.
        self.assertRegex(
            debug,
            r"server upload/download buffer sizes \d+ / \d+; using 261120 / 261120",
        )
        # Several key exchanges each way, each with the cipher.
        self.assertGreaterEqual(debug.count("SSH2_MSG_NEWKEYS received"), 4)
        # OpenSSH (9.6, and Debian's 9.2 since its Terrapin fix) offers
        # strict key exchange; so does the gateway.
        self.assertIn(
            f"cipher {cipher} (MAC <implicit>), strict key exchange", self.log_text()
        )

    def test_chacha20_poly1305(self) -> Any:
        return self.check_aead("chacha20-poly1305@openssh.com")

    def test_aes256_gcm(self) -> Any:
        return self.check_aead("aes256-gcm@openssh.com")

    def test_aes128_gcm(self) -> Any:
        return self.check_aead("aes128-gcm@openssh.com")

    @defer.inlineCallbacks
    def test_aes128_ctr_still_negotiated_with_hmac(self) -> Any:
        debug = yield self.openssh_round_trip("aes128-ctr")
        self.assertRegex(
            debug, r"kex: server->client cipher: aes128-ctr MAC: hmac-sha2-\d+ "
        )

    @defer.inlineCallbacks
    def test_default_choice_is_aead(self) -> Any:
        """Without -c, OpenSSH's own order picks chacha20-poly1305."""
        gw = yield start_gateway(self, "local")
        batch = self.file("batch", b"pwd\n")
        result = yield run(
            [
                "sftp",
                *openssh_options(gw.sftp_port),
                "-vv",
                "-o",
                "BatchMode=no",
                "-o",
                "PubkeyAuthentication=no",
                "-b",
                str(batch),
                "alice@127.0.0.1",
            ],
            self.env,
            self.work,
        )
        debug = result.stderr.decode("utf-8", "replace")
        self.assertEqual(result.returncode, 0, debug[-3000:])
        self.assertIn("cipher: chacha20-poly1305@openssh.com MAC: <implicit>", debug)


class LftpCipherTests(CipherTestsBase):
    """lftp over OpenSSH's ssh with each AEAD cipher: a mirror both ways."""

    @defer.inlineCallbacks
    def check_mirror(self, cipher: str) -> Any:
        gw = yield start_gateway(self, "local")
        root = self.work / "up"
        root.mkdir()
        files = {
            f"f{i}.bin": random_bytes(size)
            for i, size in enumerate((0, 1, 70_000, 2 * MiB + 9))
        }
        for name, data in files.items():
            (root / name).write_bytes(data)
        down = self.work / "down"
        result = yield lftp_sftp(
            gw.sftp_port,
            f"mirror -R {root} /m; mirror /m {down}",
            self.env,
            self.work,
            ssh_options=f"-c {cipher}",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for name, data in files.items():
            self.assertEqual(sha256((down / name).read_bytes()), sha256(data), name)
            stored = yield in_thread(gw.inspector.read, f"m/{name}")
            self.assertEqual(sha256(stored), sha256(data), name)
        self.assertIn(f"cipher {cipher}", self.log_text())

    def test_chacha20_poly1305(self) -> Any:
        return self.check_mirror("chacha20-poly1305@openssh.com")

    def test_aes256_gcm(self) -> Any:
        return self.check_mirror("aes256-gcm@openssh.com")

    def test_aes128_gcm(self) -> Any:
        return self.check_mirror("aes128-gcm@openssh.com")


def paramiko_round_trip(port: int, cipher: str, data: bytes) -> tuple[bytes, str]:
    """Put and get C{data} with paramiko forcing C{cipher}; (data, cipher used)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    transport = paramiko.Transport(sock)
    try:
        transport.get_security_options().ciphers = (cipher,)
        transport.start_client(timeout=15)
        transport.auth_password("alice", PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        sftp.get_channel().settimeout(15)
        with sftp.open("p.bin", "wb") as f:
            f.set_pipelined(True)
            f.write(data)
        with sftp.open("p.bin", "rb") as f:
            back = f.read()
        used = transport.remote_cipher
        sftp.close()
        return back, used
    finally:
        transport.close()
        sock.close()


class ParamikoCipherTests(CipherTestsBase):
    """paramiko's AES-GCM (paramiko has no chacha20-poly1305)."""

    @defer.inlineCallbacks
    def check(self, cipher: str) -> Any:
        gw = yield start_gateway(self, "local")
        data = random_bytes(2 * MiB + 77)
        back, used = yield in_thread(paramiko_round_trip, gw.sftp_port, cipher, data)
        self.assertEqual(used, cipher)
        self.assertEqual(sha256(back), sha256(data))
        stored = yield in_thread(gw.inspector.read, "p.bin")
        self.assertEqual(sha256(stored), sha256(data))

    def test_aes256_gcm(self) -> Any:
        return self.check("aes256-gcm@openssh.com")

    def test_aes128_gcm(self) -> Any:
        return self.check("aes128-gcm@openssh.com")


class RcloneCipherTests(CipherTestsBase):
    """rclone (Go's x/crypto) chooses aes128-gcm@openssh.com itself."""

    @defer.inlineCallbacks
    def test_rclone_copy_both_ways(self) -> Any:
        gw = yield start_gateway(self, "local")
        result = yield run(["rclone", "obscure", PASSWORD], self.env, self.work)
        self.assertEqual(result.returncode, 0, result.stderr)
        root = self.work / "tree"
        root.mkdir()
        files = {
            f"r{i}.bin": random_bytes(size)
            for i, size in enumerate((5, 40_000, 3 * MiB + 1))
        }
        for name, data in files.items():
            (root / name).write_bytes(data)
        env = {
            **self.env,
            "RCLONE_SFTP_HOST": "127.0.0.1",
            "RCLONE_SFTP_PORT": str(gw.sftp_port),
            "RCLONE_SFTP_USER": "alice",
            "RCLONE_SFTP_PASS": result.stdout.decode().strip(),
        }
        common = [
            "--sftp-disable-hashcheck",
            "--sftp-shell-type",
            "none",
            "--retries",
            "1",
            "--timeout",
            "15s",
        ]
        result = yield run(
            ["rclone", "copy", str(root), ":sftp:t", *common], env, self.work
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        back = self.work / "back"
        result = yield run(
            ["rclone", "copy", ":sftp:t", str(back), *common], env, self.work
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for name, data in files.items():
            self.assertEqual(sha256((back / name).read_bytes()), sha256(data), name)
            stored = yield in_thread(gw.inspector.read, f"t/{name}")
            self.assertEqual(sha256(stored), sha256(data), name)
        self.assertTrue(
            re.search(r"cipher aes128-gcm@openssh\.com", self.log_text()),
            self.log_text()[-2000:],
        )


class CurlCipherTests(CipherTestsBase):
    """curl's libssh2 (1.10 here) has no AEAD cipher: it gets aes-ctr."""

    @defer.inlineCallbacks
    def test_curl_round_trip(self) -> Any:
        gw = yield start_gateway(self, "local")
        data = random_bytes(2 * MiB + 3)
        source = self.file("curl.bin", data)
        url = f"sftp://127.0.0.1:{gw.sftp_port}/curl.bin"
        base = ["curl", "-sS", "--insecure", "-u", f"alice:{PASSWORD}"]
        result = yield run([*base, "-T", str(source), url], self.env, self.work)
        self.assertEqual(result.returncode, 0, result.stderr)
        result = yield run([*base, url], self.env, self.work)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sha256(result.stdout), sha256(data))
        stored = yield in_thread(gw.inspector.read, "curl.bin")
        self.assertEqual(sha256(stored), sha256(data))
        self.assertRegex(self.log_text(), r"cipher aes\d+-ctr \(MAC hmac-sha2-\d+\)")
