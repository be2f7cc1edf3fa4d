"""
Tests for L{cosgw.auth.hashes}: making and verifying stored password hashes
(scrypt, passlib's formats, V5's plain text), in constant time, and never
logging a hash that cannot be used.
"""

from __future__ import annotations

import base64
import hashlib

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from cosgw.auth import hashes
from cosgw.auth.hashes import hash_password, verify_password
from tests.authtesting import (
    ALICE_PASSWORD,
    PLAIN_PASSWORD,
    SCRYPT_RE,
    cached_hash,
    logged_text,
    passlib_ab64,
    pbkdf2_hash,
)


class HashPasswordTests(TestCase):
    """L{hash_password} and L{verify_password}."""

    def test_scrypt_format(self) -> None:
        """New hashes are scrypt with the documented parameters and sizes."""
        stored = cached_hash(ALICE_PASSWORD)
        self.assertRegex(stored, SCRYPT_RE)
        salt, key = stored.split("$")[3:]
        self.assertEqual(len(base64.b64decode(salt + "==")), 16)
        self.assertEqual(len(base64.b64decode(key + "=")), 32)

    def test_salted(self) -> None:
        """The same password hashes differently each time."""
        self.assertNotEqual(hash_password("x"), hash_password("x"))

    def test_scrypt_round_trip(self) -> None:
        stored = cached_hash(ALICE_PASSWORD)
        self.assertTrue(verify_password(ALICE_PASSWORD, stored, True))
        self.assertFalse(verify_password(ALICE_PASSWORD + "!", stored, True))
        self.assertFalse(verify_password("", stored, True))

    def test_unicode_password(self) -> None:
        """Passwords are text, hashed as UTF-8."""
        stored = cached_hash("密码")
        self.assertTrue(verify_password("密码", stored, True))
        self.assertFalse(verify_password("密碼", stored, True))
        # What FTP hands over before the checker re-decodes it.
        self.assertFalse(
            verify_password("密码".encode().decode("latin-1"), stored, True)
        )

    def test_scrypt_passlib_ln(self) -> None:
        """passlib's C{ln=} (log2 of n) and adapted base64 are understood."""
        salt = b"saltsaltsaltsalt"
        key = hashlib.scrypt(b"pw+", salt=salt, n=2**4, r=8, p=1, dklen=32)
        stored = f"$scrypt$ln=4,r=8,p=1${passlib_ab64(salt)}${passlib_ab64(key)}"
        self.assertTrue(verify_password("pw+", stored, True))
        self.assertFalse(verify_password("pw-", stored, True))

    def test_pbkdf2_round_trip(self) -> None:
        stored = pbkdf2_hash("密码 pbkdf2")
        self.assertTrue(verify_password("密码 pbkdf2", stored, True))
        self.assertFalse(verify_password("密码 pbkdf3", stored, True))

    def test_pbkdf2_passlib(self) -> None:
        """A hash as passlib writes it (adapted base64) verifies."""
        salt = bytes(range(200, 216))
        key = hashlib.pbkdf2_hmac("sha256", b"tr0ub4dor", salt, 29000)
        stored = f"$pbkdf2-sha256$29000${passlib_ab64(salt)}${passlib_ab64(key)}"
        self.assertTrue(verify_password("tr0ub4dor", stored, True))
        self.assertFalse(verify_password("tr0ub4dor&3", stored, True))

    def test_plain(self) -> None:
        """C{is_hashed=False} compares the text itself, as V5 configs have."""
        self.assertTrue(verify_password(PLAIN_PASSWORD, PLAIN_PASSWORD, False))
        self.assertFalse(verify_password(PLAIN_PASSWORD + "x", PLAIN_PASSWORD, False))
        self.assertTrue(verify_password("密码", "密码", False))
        # A plain-text password that looks like a hash is still plain text.
        stored = cached_hash(ALICE_PASSWORD)
        self.assertTrue(verify_password(stored, stored, False))
        self.assertFalse(verify_password(ALICE_PASSWORD, stored, False))

    def test_plain_empty_never_matches(self) -> None:
        """An empty stored password is a blank in the config, not a login."""
        self.assertFalse(verify_password("", "", False))

    def test_constant_time_everywhere(self) -> None:
        """Every kind of stored password is compared with compare_digest."""
        calls = []
        real = hashes.hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            calls.append((type(a), type(b)))
            return real(a, b)

        self.patch(hashes.hmac, "compare_digest", spy)
        verify_password("a", cached_hash("a"), True)
        verify_password("a", pbkdf2_hash("a"), True)
        verify_password("a", "b", False)
        self.assertEqual(calls, [(bytes, bytes)] * 3)

    def test_malformed(self) -> None:
        """
        A hash that cannot be used returns False and logs a warning that
        does not quote it.
        """
        good_salt = base64.b64encode(b"s" * 16).decode()
        good_key = base64.b64encode(b"k" * 32).decode()
        malformed = [
            "",
            "not-a-hash-but-secret",
            "$scrypt$",
            "$md5$abc$def$ghi",
            "$scrypt$n=16384,r=8,p=1$onlysalt",
            f"$scrypt$n=1000,r=8,p=1${good_salt}${good_key}",
            f"$scrypt$n=1073741824,r=8,p=1${good_salt}${good_key}",
            f"$scrypt$n=16384,r=8${good_salt}${good_key}",
            f"$scrypt$n=16384,r=8,p=1,x=2${good_salt}${good_key}",
            f"$scrypt$n=16384,r=8,p=1$!!!${good_key}",
            f"$scrypt$n=16384,r=8,p=1${good_salt}$",
            f"$scrypt$n=16384,r=8,p=1${good_salt}$a2V5",
            f"$pbkdf2-sha256$abc${good_salt}${good_key}",
            f"$pbkdf2-sha256$0${good_salt}${good_key}",
            f"$pbkdf2-sha256$-5${good_salt}${good_key}",
            f"$pbkdf2-sha256$1000$${good_key}",
            "$pbkdf2-sha256$1000$c2FsdA$",
        ]
        for stored in malformed:
            events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
            self.assertIs(verify_password("anything", stored, True), False, stored)
            self.assertEqual(len(events), 1, stored)
            self.assertEqual(events[0]["log_level"].name, "warn")
            if stored:
                self.assertNotIn(stored, logged_text(events))
            # No partial leak of the payload fields either.
            for field in stored.split("$")[2:]:
                if len(field) > 4:
                    self.assertNotIn(field, logged_text(events))
