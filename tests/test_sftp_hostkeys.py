"""
Tests for L{cosgw.frontends.sftp.hostkeys}: host keys loaded from files or
generated once in the state directory, and their fingerprints as OpenSSH
shows them.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from twisted.conch.ssh import keys
from twisted.trial.unittest import SynchronousTestCase

from cosgw.auth.keys import fingerprint
from cosgw.frontends.sftp.hostkeys import load_host_keys
from tests.sshtesting import (
    NO_OPENSSH,
    SSH_KEYGEN,
    host_keys,
    keygen,
    load_paramiko_key,
    temporary_directory,
    user_key,
)


def openssh_fingerprint(path: Path) -> str:
    out = subprocess.run(
        [SSH_KEYGEN or "ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return out.split()[1]


class HostKeyTests(SynchronousTestCase):
    """L{load_host_keys} and L{fingerprint}."""

    skip = NO_OPENSSH

    def setUp(self) -> None:
        self.dir = temporary_directory(self)

    def test_generated_at_first_start_and_reused(self) -> None:
        """
        Without paths, an Ed25519 key and an RSA 3072 key are generated in
        the state directory (OpenSSH format, mode 0600, directory 0700) and
        the same keys come back on the next start.
        """
        state = self.dir / "state"
        first = load_host_keys([], state)
        self.assertEqual(set(first), {b"ssh-ed25519", b"ssh-rsa"})
        self.assertEqual(first[b"ssh-rsa"].size(), 3072)
        self.assertEqual(stat.S_IMODE(state.stat().st_mode), 0o700)
        for name in ("ssh_host_ed25519_key", "ssh_host_rsa_key"):
            path = state / name
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
            self.assertTrue(
                path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
            )
        self.assertEqual(
            sorted(p.name for p in state.iterdir()),
            ["ssh_host_ed25519_key", "ssh_host_rsa_key"],
        )
        mtimes = {p.name: p.stat().st_mtime_ns for p in state.iterdir()}

        second = load_host_keys([], state)
        for key_type in first:
            self.assertEqual(
                fingerprint(second[key_type]), fingerprint(first[key_type])
            )
            self.assertFalse(second[key_type].isPublic())
        self.assertEqual(
            {p.name: p.stat().st_mtime_ns for p in state.iterdir()}, mtimes
        )
        self.assertEqual(
            fingerprint(first[b"ssh-ed25519"]),
            openssh_fingerprint(state / "ssh_host_ed25519_key"),
        )

    def test_existing_generated_key_is_kept(self) -> None:
        """A key already in the state directory is used, never replaced."""
        state = self.dir / "state"
        state.mkdir()
        existing = keygen(state, "ssh_host_ed25519_key", "-t", "ed25519")
        before = existing.read_bytes()
        loaded = load_host_keys([], state)
        self.assertEqual(existing.read_bytes(), before)
        self.assertEqual(
            fingerprint(loaded[b"ssh-ed25519"]), openssh_fingerprint(existing)
        )
        self.assertIn(b"ssh-rsa", loaded)

    def test_broken_generated_key_is_an_error(self) -> None:
        state = self.dir / "state"
        state.mkdir()
        (state / "ssh_host_ed25519_key").write_text("garbage\n")
        e = self.assertRaises(ValueError, load_host_keys, [], state)
        self.assertIn(str(state / "ssh_host_ed25519_key"), str(e))
        self.assertEqual((state / "ssh_host_ed25519_key").read_text(), "garbage\n")

    def test_given_keys(self) -> None:
        """Given paths, each is loaded, keyed by its type, and nothing is generated."""
        ed = keygen(self.dir, "ed", "-t", "ed25519")
        ec = keygen(self.dir, "ec", "-t", "ecdsa", "-b", "384")
        rs = keygen(self.dir, "rs", "-t", "rsa", "-b", "2048")
        state = self.dir / "state"
        loaded = load_host_keys([ed, ec, rs], state)
        self.assertEqual(
            set(loaded), {b"ssh-ed25519", b"ecdsa-sha2-nistp384", b"ssh-rsa"}
        )
        self.assertEqual(fingerprint(loaded[b"ssh-ed25519"]), openssh_fingerprint(ed))
        self.assertEqual(
            fingerprint(loaded[b"ecdsa-sha2-nistp384"]), openssh_fingerprint(ec)
        )
        self.assertEqual(fingerprint(loaded[b"ssh-rsa"]), openssh_fingerprint(rs))
        self.assertFalse(state.exists())

    def assertRefused(self, path: Path, *words: str) -> None:
        e = self.assertRaises(ValueError, load_host_keys, [path], self.dir / "state")
        message = str(e)
        self.assertIn(str(path), message)
        self.assertNotIn("\n", message)
        for word in words:
            self.assertIn(word, message)

    def test_missing_file(self) -> None:
        self.assertRefused(self.dir / "nope", "cannot be read")

    def test_not_a_key(self) -> None:
        path = self.dir / "junk"
        path.write_text("hello\n")
        self.assertRefused(path, "not an SSH private key")

    def test_public_key(self) -> None:
        ed = keygen(self.dir, "ed", "-t", "ed25519")
        self.assertRefused(Path(str(ed) + ".pub"), "public key")

    def test_passphrase(self) -> None:
        path = self.dir / "locked"
        subprocess.run(
            [
                SSH_KEYGEN or "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "secret",
                "-f",
                str(path),
            ],
            check=True,
            timeout=60,
        )
        self.assertRefused(path, "passphrase")

    def test_dsa(self) -> None:
        path = self.dir / "dsa"
        private = dsa.generate_private_key(key_size=1024)
        path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        self.assertRefused(path, "ssh-dss")

    def test_short_rsa(self) -> None:
        path = self.dir / "rsa1024"
        private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        self.assertRefused(path, "1024 bits", "2048")

    def test_two_keys_of_one_type(self) -> None:
        a = keygen(self.dir, "a", "-t", "ed25519")
        b = keygen(self.dir, "b", "-t", "ed25519")
        e = self.assertRaises(ValueError, load_host_keys, [a, b], self.dir / "state")
        self.assertIn(str(b), str(e))
        self.assertIn("ssh-ed25519", str(e))

    def test_fingerprint_format(self) -> None:
        key = host_keys()[b"ssh-rsa"]
        text = fingerprint(key)
        self.assertTrue(text.startswith("SHA256:"))
        self.assertEqual(len(text), len("SHA256:") + 43)
        self.assertEqual(fingerprint(key.public()), text)
        path = user_key("rsa")
        expected = openssh_fingerprint(path)
        self.assertEqual(fingerprint(keys.Key.fromFile(str(path))), expected)
        self.assertEqual(load_paramiko_key(path).fingerprint, expected)
