"""
Stored passwords: making and checking the hashes an account's password is
kept as.

A stored password is a self-describing hash (C{$scrypt$...}, or
C{$pbkdf2-sha256$...} as passlib writes it) or, for configurations carried
over from COS FTP Server V5, plain text.  Every comparison is constant-time.

Hashing and verifying cost tens of milliseconds of CPU on purpose: nothing
here may run on the reactor thread.  L{cosgw.auth.passwords.PasswordChecker}
runs L{verify_quietly} in the thread pool and logs its verdict on the
reactor thread; L{verify_password} is the same check with a warning for
callers outside the checker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Optional

from twisted.logger import Logger

__all__ = [
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "hash_password",
    "verify_password",
    "verify_quietly",
]

# One namespace for the whole package: an operator follows every password
# login with one filter.
log = Logger(namespace="cosgw.auth")

#: scrypt cost parameters of new hashes: 16 MiB of memory and roughly 50 ms
#: of one core per verification, the interactive-login setting of RFC 7914.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32

# Bounds on what a stored hash may ask for.  The config is trusted, but a
# typo such as n=2**30 should be an unusable hash, not a process that tries
# to allocate 128 GiB in every login.
_MAX_SCRYPT_N = 2**20
_MAX_SCRYPT_R = 32
_MAX_SCRYPT_P = 16
_MAX_SCRYPT_MEMORY = 1024**3
_MAX_PBKDF2_ITERATIONS = 10_000_000
_MIN_SALT_BYTES = 8
_MIN_KEY_BYTES = 16


def _b64encode(data: bytes) -> str:
    """Standard base64 without padding: shorter, and still unambiguous."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    """
    Decode standard base64 with or without padding, and passlib's "adapted"
    base64 (C{.} instead of C{+}, no padding), so hashes made by passlib or
    by other tools can be pasted into the config unchanged.

    @raise ValueError: (or L{binascii.Error}, a subclass) on anything else.
    """
    text = text.replace(".", "+")
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text.encode("ascii"), validate=True)


def _scrypt_maxmem(n: int, r: int, p: int) -> int:
    """
    The C{maxmem} that OpenSSL's scrypt needs for these parameters
    (C{128*r*(n+p+2)} bytes, see C{EVP_PBE_scrypt}) plus slack: the default
    limit of 32 MiB is too tight for anything above the defaults.
    """
    return 128 * r * (n + p + 2) + 1024 * 1024


def hash_password(password: str) -> str:
    """
    Hash C{password} for storage, as
    C{$scrypt$n=16384,r=8,p=1$<salt b64>$<hash b64>}.

    scrypt is in the standard library (no extra dependency for the console
    script) and is memory-hard, which is what a password stored in a config
    file needs.  The password is encoded as UTF-8.

    This blocks for tens of milliseconds: do not call it on the reactor
    thread.
    """
    salt = secrets.token_bytes(_SALT_BYTES)
    key = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=_scrypt_maxmem(SCRYPT_N, SCRYPT_R, SCRYPT_P),
        dklen=_KEY_BYTES,
    )
    return (
        f"$scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}"
        f"${_b64encode(salt)}${_b64encode(key)}"
    )


def _digest_equal(a: bytes, b: bytes) -> bool:
    """Constant-time equality, C{False} for an empty expected digest."""
    return len(b) > 0 and hmac.compare_digest(a, b)


def _verify_scrypt(password: bytes, params: str, salt: str, expected: str) -> bool:
    """
    Check C{password} against the fields of a C{$scrypt$} hash.

    Parameters are C{n=,r=,p=} as L{hash_password} writes them, or passlib's
    C{ln=} (log2 of n).

    @raise ValueError: if the fields are malformed or out of bounds.
    """
    fields = {}
    for item in params.split(","):
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit() or name in fields:
            raise ValueError("bad scrypt parameters")
        fields[name] = int(value)
    if "ln" in fields and "n" not in fields:
        if not 1 <= fields["ln"] <= 20:
            raise ValueError("bad scrypt parameters")
        fields["n"] = 2 ** fields.pop("ln")
    if set(fields) != {"n", "r", "p"}:
        raise ValueError("bad scrypt parameters")
    n, r, p = fields["n"], fields["r"], fields["p"]
    if not (
        2 <= n <= _MAX_SCRYPT_N
        and n & (n - 1) == 0
        and 1 <= r <= _MAX_SCRYPT_R
        and 1 <= p <= _MAX_SCRYPT_P
    ):
        raise ValueError("scrypt parameters out of bounds")
    maxmem = _scrypt_maxmem(n, r, p)
    if maxmem > _MAX_SCRYPT_MEMORY:
        raise ValueError("scrypt parameters out of bounds")
    salt_bytes = _b64decode(salt)
    key = _b64decode(expected)
    if len(salt_bytes) < _MIN_SALT_BYTES or len(key) < _MIN_KEY_BYTES:
        raise ValueError("scrypt salt or key too short")
    derived = hashlib.scrypt(
        password, salt=salt_bytes, n=n, r=r, p=p, maxmem=maxmem, dklen=len(key)
    )
    return _digest_equal(derived, key)


def _verify_pbkdf2_sha256(
    password: bytes, iterations: str, salt: str, expected: str
) -> bool:
    """
    Check C{password} against the fields of a C{$pbkdf2-sha256$} hash, the
    format passlib (and so many provisioning tools) write.

    @raise ValueError: if the fields are malformed or out of bounds.
    """
    if not iterations.isdigit():
        raise ValueError("bad pbkdf2 iterations")
    rounds = int(iterations)
    if not 1 <= rounds <= _MAX_PBKDF2_ITERATIONS:
        raise ValueError("pbkdf2 iterations out of bounds")
    salt_bytes = _b64decode(salt)
    key = _b64decode(expected)
    if len(salt_bytes) < _MIN_SALT_BYTES or len(key) < _MIN_KEY_BYTES:
        raise ValueError("pbkdf2 salt or key too short")
    derived = hashlib.pbkdf2_hmac("sha256", password, salt_bytes, rounds, len(key))
    return _digest_equal(derived, key)


def verify_quietly(password: str, stored: str, is_hashed: bool) -> Optional[bool]:
    """
    The work behind L{verify_password}, without logging, so that worker
    threads never log: L{cosgw.auth.passwords.PasswordChecker} logs on the
    reactor thread.

    This blocks for tens of milliseconds: do not call it on the reactor
    thread.

    @return: C{True} or C{False}, or C{None} when C{stored} is not a hash
        this module understands.  Never raises for bad input: an exception
        message could quote the password.
    """
    try:
        secret = password.encode("utf-8")
        if not is_hashed:
            # Hash both sides first: compare_digest is constant-time only
            # between equal lengths, and the length of a plain-text password
            # is itself worth hiding.  An empty stored password never
            # matches: it is far more often a blank in a config than a
            # deliberate choice.
            if not stored:
                return False
            return hmac.compare_digest(
                hashlib.sha256(secret).digest(),
                hashlib.sha256(stored.encode("utf-8")).digest(),
            )
        parts = stored.split("$")
        if len(parts) != 5 or parts[0] != "":
            return None
        _, scheme, a, b, c = parts
        if scheme == "scrypt":
            return _verify_scrypt(secret, a, b, c)
        if scheme == "pbkdf2-sha256":
            return _verify_pbkdf2_sha256(secret, a, b, c)
        return None
    except (ValueError, TypeError, OverflowError, MemoryError, AttributeError):
        # ValueError covers binascii.Error and UnicodeError.
        return None


def verify_password(password: str, stored: str, is_hashed: bool) -> bool:
    """
    Say whether C{password} matches C{stored}.

    C{stored} is a hash from L{hash_password} or passlib's
    C{$pbkdf2-sha256$<iterations>$<salt>$<hash>} when C{is_hashed} is true,
    else the password itself in plain text, as COS FTP Server V5 configs keep
    it.  Every comparison is constant-time.

    A hash in a format this module does not know returns C{False} and logs a
    warning that does not quote it: an operator who wrote C{is_hashed} by
    mistake would otherwise find a password in the log.

    This blocks for tens of milliseconds: do not call it on the reactor
    thread (L{cosgw.auth.passwords.PasswordChecker} runs it in a thread
    pool).
    """
    result = verify_quietly(password, stored, is_hashed)
    if result is None:
        log.warn(
            "Stored password hash is in an unrecognised or malformed format;"
            " the login cannot succeed"
        )
        return False
    return result
