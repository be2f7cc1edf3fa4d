"""Passwords, hashes and helpers shared by the tests of L{cosgw.auth}."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import shutil
import tempfile
from pathlib import Path

from twisted.logger import formatEvent
from twisted.trial.unittest import TestCase
from zope.interface import Interface

from cosgw.auth.hashes import hash_password

PROJECT_ROOT = Path(__file__).resolve().parent.parent

SCRYPT_RE = re.compile(
    r"^\$scrypt\$n=16384,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$"
)

ALICE_PASSWORD = "correct horse battery staple"
JOSE_PASSWORD = "密码-sekrit"
PLAIN_PASSWORD = "plain-v5-passw0rd"


@functools.cache
def cached_hash(password: str) -> str:
    """scrypt is slow on purpose; hash each test password once per run."""
    return hash_password(password)


def pbkdf2_hash(
    password: str, iterations: int = 1000, salt: bytes = b"0123456789abcdef"
) -> str:
    """A C{$pbkdf2-sha256$} hash made independently of the code under test."""
    key = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"$pbkdf2-sha256${iterations}${b64(salt).decode()}${b64(key).decode()}"


def passlib_ab64(data: bytes) -> str:
    """passlib's "adapted" base64: C{.} for C{+}, no padding."""
    return base64.b64encode(data).decode().replace("+", ".").rstrip("=")


def temporary_directory(testcase: TestCase) -> Path:
    """
    A fresh directory removed after the test.  Not C{mktemp}: under pytest
    that writes into the working directory, the source tree.
    """
    path = Path(tempfile.mkdtemp(prefix="cosgw-test-auth-"))
    testcase.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def logged_text(events: list[dict]) -> str:
    """Everything a log observer could write for C{events}."""
    return "\n".join(formatEvent(e) + repr(e) for e in events)


def assert_not_logged(testcase: TestCase, events: list[dict], *secrets: str) -> None:
    """Fail if any of C{secrets}, in any encoding a protocol uses, was logged."""
    text = logged_text(events)
    for secret in secrets:
        variants = {
            secret,
            repr(secret.encode("utf-8")),
            secret.encode("utf-8").decode("latin-1"),
        }
        for variant in variants:
            testcase.assertNotIn(variant, text)


class IFoo(Interface):
    """An avatar interface a frontend might register."""


class IBar(Interface):
    """Another one."""


def noop() -> None:
    pass
