"""
Accounts and logins: password hashing, the password checker, the realm and
the generated account of the embedded default.

Both frontends log people in through one L{twisted.cred.portal.Portal}, so
the rules live here once:

  - A stored password is a self-describing hash (C{$scrypt$...}, or
    C{$pbkdf2-sha256$...} as passlib writes it) or, for configurations
    carried over from COS FTP Server V5, plain text.  Every comparison is
    constant-time.
  - Verifying a hash costs tens of milliseconds of CPU on purpose, so it runs
    in the gateway's thread pool, never on the reactor thread.  At most
    C{max_concurrent} verifications run at once and at most C{max_queued}
    wait, so a login flood cannot take every worker away from COS transfers
    nor grow an unbounded queue.
  - An unknown user costs one verification against a dummy hash, exactly as a
    known one does, so user names cannot be enumerated by timing.
  - A failed login fails only after C{failure_delay} seconds (the FTP
    protocol has no delay of its own; Conch adds one more on top).
  - Passwords never reach a log line or an exception message.  Log events
    carry the user name and a reason, on the reactor thread.

Text arrives differently from each protocol: Twisted's FTP decodes the
USER/PASS bytes as latin-1, Conch hands over raw bytes.  L{PasswordChecker}
undoes both (see L{_text_candidates}), so an account is the same account
whatever protocol the client speaks.

The realm knows nothing of FTP or SSH: each frontend registers a factory for
the avatar interface it needs (C{IFTPShell}, C{IConchUser}).
"""

from __future__ import annotations

import argparse
import base64
import enum
import functools
import getpass
import hashlib
import hmac
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

__all__ = [
    "DEFAULT_USERNAME",
    "PASSWD_FILENAME",
    "AvatarFactory",
    "PasswordChecker",
    "Realm",
    "StoredPassword",
    "UserLookup",
    "ensure_generated_account",
    "hash_password",
    "load_passwd_file",
    "main",
    "verify_password",
]

log = Logger(namespace="cosgw.auth")

# --------------------------------------------------------------------------
# Password hashing
# --------------------------------------------------------------------------

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


def _verify(password: str, stored: str, is_hashed: bool) -> Optional[bool]:
    """
    The work behind L{verify_password}, without logging, so that worker
    threads never log: L{PasswordChecker} logs on the reactor thread.

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
    thread (L{PasswordChecker} runs it in a thread pool).
    """
    result = _verify(password, stored, is_hashed)
    if result is None:
        log.warn(
            "Stored password hash is in an unrecognised or malformed format;"
            " the login cannot succeed"
        )
        return False
    return result


# --------------------------------------------------------------------------
# The cosgw-passwd console script
# --------------------------------------------------------------------------


def _read_stdin_password() -> str:
    """One line from stdin, without its line ending but otherwise intact."""
    line = sys.stdin.readline()
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    The C{cosgw-passwd} console script (also C{python -m cosgw.auth}).

    Asks for a password twice on the terminal, or reads one line from stdin
    with C{--stdin} for provisioning scripts, and prints its hash on stdout,
    to paste as C{password = <hash>} in the config.  The password itself is
    never echoed or printed.

    @return: the exit status: 0 on success, 1 if the password is empty, the
        two entries differ or input ended.
    """
    parser = argparse.ArgumentParser(
        prog="cosgw-passwd",
        description=(
            "Hash a password for the cosgw config. Paste the printed line as"
            " 'password = <hash>'."
        ),
    )
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read the password from the first line of stdin (for scripts)",
    )
    args = parser.parse_args(argv)
    try:
        if args.stdin:
            password = _read_stdin_password()
        else:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password (again): ")
            if password != again:
                print("cosgw-passwd: the passwords do not match", file=sys.stderr)
                return 1
    except (EOFError, KeyboardInterrupt):
        print("cosgw-passwd: no password read", file=sys.stderr)
        return 1
    if not password:
        print("cosgw-passwd: refusing an empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


# --------------------------------------------------------------------------
# The password checker
# --------------------------------------------------------------------------


class StoredPassword(NamedTuple):
    """
    An account's password as the config stores it: a hash (C{is_hashed}) or,
    for COS FTP Server V5 configs, plain text.

    Its repr hides C{stored}, so logging an account by mistake does not log a
    password.
    """

    stored: str
    is_hashed: bool

    def __repr__(self) -> str:
        return f"StoredPassword(stored=<redacted>, is_hashed={self.is_hashed!r})"


#: Given a user name, the account's canonical name and password, or None for
#: no such user.  Called on the reactor thread, so it must not block.
UserLookup = Callable[[str], Optional[tuple[str, tuple[str, bool]]]]


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """
    A hash of a random password, made with the default parameters, for
    unknown users to be verified against: they then cost what a known user
    with a default hash costs.
    """
    return hash_password(secrets.token_urlsafe(16))


def decode_bytes(data: bytes) -> str:
    """
    UTF-8, as SSH (RFC 4252 section 5) and modern FTP clients (RFC 2640)
    send; latin-1 for anything else, so no byte string is unrepresentable.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _text_candidates(value: Union[str, bytes, Any]) -> list[str]:
    """
    The texts a client may have meant by C{value}, most likely first.

    Conch hands over bytes: decode them as UTF-8.  Twisted's FTP decodes the
    command line as latin-1, so a UTF-8 client's C{"josé"} arrives as
    C{"josÃ©"}: a str that survives C{encode("latin-1").decode("utf-8")} is
    tried that way first, then as it came (a latin-1 client's C{"josé"}).
    """
    if isinstance(value, bytes):
        return [decode_bytes(value)]
    if not isinstance(value, str):
        return []
    try:
        redecoded = value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return [value]
    if redecoded == value:
        return [value]
    return [redecoded, value]


class _Outcome(enum.Enum):
    """What a verification in the thread pool found, for the reactor to log."""

    SUCCESS = "success"
    WRONG_PASSWORD = "wrong password"
    UNKNOWN_USER = "unknown user"
    UNUSABLE_HASH = "stored password hash unusable"


def _check_in_thread(
    passwords: Sequence[str], entry: Optional[tuple[str, bool]]
) -> _Outcome:
    """
    Runs in the thread pool: try each candidate password against the
    account's, or against the dummy hash for an unknown user (C{entry} is
    None) so both take the same time.
    """
    if entry is None:
        dummy = _dummy_hash()
        for password in passwords:
            _verify(password, dummy, True)
        return _Outcome.UNKNOWN_USER
    stored, is_hashed = entry
    for password in passwords:
        result = _verify(password, stored, is_hashed)
        if result is None:
            return _Outcome.UNUSABLE_HASH
        if result:
            return _Outcome.SUCCESS
    return _Outcome.WRONG_PASSWORD


def _mapping_lookup(
    users: Mapping[str, tuple[str, bool]],
) -> UserLookup:
    """Adapt a C{{name: (stored, is_hashed)}} mapping to a L{UserLookup}."""

    def lookup(name: str) -> Optional[tuple[str, tuple[str, bool]]]:
        entry = users.get(name)
        if entry is None:
            return None
        return name, entry

    return lookup


@implementer(ICredentialsChecker)
class PasswordChecker:
    """
    Checks L{IUsernamePassword} credentials, from FTP (latin-1-decoded str)
    or SSH (bytes), against the accounts' stored passwords.

    The accounts are a mapping C{{username: (stored, is_hashed)}} or a
    L{UserLookup} callable.  Assign L{users} to swap them on a config reload:
    logins already under way finish against the account they looked up.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        users: Union[Mapping[str, tuple[str, bool]], UserLookup],
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        clock: Optional[IReactorTime] = None,
        failure_delay: float = 1.0,
        max_concurrent: int = 4,
        max_queued: int = 64,
    ) -> None:
        """
        @param users: the accounts; see L{users}.
        @param reactor: delivers results from C{pool}'s threads.
        @param pool: the gateway's thread pool, where hashes are verified.
        @param clock: times the failure delay; C{reactor} when None.
        @param failure_delay: seconds before a failed login fails.
        @param max_concurrent: most verifications running at once, so a login
            flood leaves pool threads to COS transfers.
        @param max_queued: most logins waiting for a verification slot;
            beyond that a login fails (after the delay) without being
            checked, so a flood cannot grow an unbounded queue.
        """
        self.users = users
        self._reactor = reactor
        self._pool = pool
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self._failure_delay = failure_delay
        self._semaphore = DeferredSemaphore(max_concurrent)
        self._max_queued = max_queued
        # Start-up may block; the first unknown user must not pay for this.
        _dummy_hash()

    @property
    def users(self) -> UserLookup:
        """The current account lookup; assign a mapping or a callable."""
        return self._lookup

    @users.setter
    def users(self, users: Union[Mapping[str, tuple[str, bool]], UserLookup]) -> None:
        if callable(users):
            self._lookup: UserLookup = users
        else:
            self._lookup = _mapping_lookup(users)

    def _find(self, names: Iterable[str]) -> Optional[tuple[str, tuple[str, bool]]]:
        """The first of C{names} that is an account, with its password."""
        for name in names:
            found = self._lookup(name)
            if found is not None:
                return found
        return None

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:
        """
        Check C{credentials}.

        @return: a L{Deferred} that fires with the account's canonical user
            name (a str), or fails with L{UnauthorizedLogin} after
            C{failure_delay} seconds.  The failure never says why: unknown
            user and wrong password look the same to the client.
        """
        names = _text_candidates(getattr(credentials, "username", None))
        passwords = _text_candidates(getattr(credentials, "password", None))
        offered = names[0] if names else "<none>"
        try:
            found = self._find(names)
        except Exception:
            log.failure("Account lookup failed for user {user}", user=offered)
            return self._fail()
        if found is None:
            user, entry = offered, None
        else:
            user, (stored, is_hashed) = found
            entry = (stored, bool(is_hashed))

        semaphore = self._semaphore
        if semaphore.tokens == 0 and len(semaphore.waiting) >= self._max_queued:
            log.warn(
                "Login for user {user} refused unchecked: {queued} logins"
                " already waiting for verification",
                user=user,
                queued=len(semaphore.waiting),
            )
            return self._fail()

        d = semaphore.run(
            deferToThreadPool,
            self._reactor,
            self._pool,
            _check_in_thread,
            passwords,
            entry,
        )
        d.addCallbacks(
            self._checked,
            self._crashed,
            callbackArgs=(user,),
            errbackArgs=(user,),
        )
        return d

    def _checked(self, outcome: _Outcome, user: str) -> Union[str, Deferred[str]]:
        """Log the verdict from the thread pool, on the reactor thread."""
        if outcome is _Outcome.SUCCESS:
            log.info("Login succeeded for user {user}", user=user)
            return user
        # UNUSABLE_HASH: the stored hash is in an unrecognised or malformed
        # format; the reason says so without quoting it.
        log.warn(
            "Login failed for user {user}: {reason}", user=user, reason=outcome.value
        )
        return self._fail()

    def _crashed(self, failure: Failure, user: str) -> Deferred[str]:
        """
        An unexpected error in verification: log its type only, since its
        message or traceback locals could hold the password, and fail.
        """
        log.error(
            "Login failed for user {user}: verification raised {error_type}",
            user=user,
            error_type=failure.type.__name__ if failure.type else "?",
        )
        return self._fail()

    def _fail(self) -> Deferred[str]:
        """Fail with L{UnauthorizedLogin} after the failure delay."""

        def unauthorized() -> str:
            raise UnauthorizedLogin("Login failed")

        return deferLater(self._clock, self._failure_delay, unauthorized)


# --------------------------------------------------------------------------
# The realm
# --------------------------------------------------------------------------

#: Makes one logged-in user's avatar: C{(avatarId, mind) -> (avatar, logout)},
#: or a Deferred of that pair.
AvatarFactory = Callable[[str, Any], Any]


@implementer(IRealm)
class Realm:
    """
    Gives each logged-in user the avatar their protocol asked for.

    The realm owns nothing protocol-specific: each frontend registers, per
    avatar interface, a factory that builds the user's avatar (bound to the
    user's file system) and its logout callable.  One realm then serves FTP
    and SFTP through one portal.
    """

    def __init__(
        self, factories: Optional[Mapping[InterfaceClass, AvatarFactory]] = None
    ) -> None:
        self._factories: dict[InterfaceClass, AvatarFactory] = dict(factories or {})

    def register(self, interface: InterfaceClass, factory: AvatarFactory) -> None:
        """
        Add the factory for C{interface}.

        @raise ValueError: if C{interface} already has one; two frontends
            claiming the same interface is a wiring mistake.
        """
        if interface in self._factories:
            raise ValueError(f"an avatar factory for {interface!r} is registered")
        self._factories[interface] = factory

    def requestAvatar(
        self, avatarId: Union[str, bytes], mind: Any, *interfaces: InterfaceClass
    ) -> Any:
        """
        Build the avatar for the first of C{interfaces} with a factory.

        @param avatarId: the checker's user name; bytes (from Conch's key
            checker) are decoded as UTF-8.
        @return: C{(interface, avatar, logout)}, or a L{Deferred} of it when
            the factory returns one.
        @raise NotImplementedError: when no interface has a factory, as
            L{IRealm} asks.
        """
        if isinstance(avatarId, bytes):
            avatarId = decode_bytes(avatarId)
        for interface in interfaces:
            factory = self._factories.get(interface)
            if factory is None:
                continue
            result = factory(avatarId, mind)
            if isinstance(result, Deferred):
                return result.addCallback(
                    lambda pair, interface=interface: (interface, pair[0], pair[1])
                )
            avatar, logout = result
            return (interface, avatar, logout)
        raise NotImplementedError(
            "no avatar factory for any of "
            + ", ".join(getattr(i, "__name__", repr(i)) for i in interfaces)
        )


# --------------------------------------------------------------------------
# The generated account of the embedded default
# --------------------------------------------------------------------------

PASSWD_FILENAME = "users.passwd"
DEFAULT_USERNAME = "cosgw"


def load_passwd_file(path: Union[str, Path]) -> dict[str, str]:
    """
    Read a C{name:hash} file (one account a line; blank lines and C{#}
    comments ignored) into C{{name: hash}}.

    This blocks: call it at start-up, before the reactor runs, or in a
    thread.

    @raise ValueError: on a malformed or duplicate line, naming the file and
        line number but never quoting the line.
    @raise OSError: if the file cannot be read.
    """
    path = Path(path)
    users: dict[str, str] = {}
    with path.open("r", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not name or not stored:
                raise ValueError(f"{path}, line {number}: expected 'name:hash'")
            if name in users:
                raise ValueError(f"{path}, line {number}: duplicate user {name!r}")
            users[name] = stored
    return users


def _generate_password() -> str:
    """96 random bits as 16 URL-safe characters: no spaces or quotes to mistype."""
    return secrets.token_urlsafe(12)


def ensure_generated_account(
    state_dir: Path, username: str = DEFAULT_USERNAME
) -> tuple[str, Optional[str]]:
    """
    Make sure the embedded default has an account, so a fresh install never
    runs with a well-known password or none.

    If C{state_dir/users.passwd} is missing, create C{state_dir} (mode 0700),
    generate a random password and store only its hash as C{username:hash}
    in that file (mode 0600), written to a temporary file and linked into
    place so a crash or a concurrent start never leaves a partial file.

    This blocks: call it at start-up, before the reactor runs.

    @return: C{(hash, password)} when the account was just created: the
        caller shows the password once, as nothing can recover it later.
        C{(hash, None)} when the file already existed.
    @raise ValueError: if C{username} is unusable, or an existing file has no
        account C{username}.
    """
    if not username or ":" in username or "\n" in username:
        raise ValueError("the generated account's user name is unusable")
    state_dir = Path(state_dir)
    path = state_dir / PASSWD_FILENAME
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        password = _generate_password()
        stored = hash_password(password)
        if create_exclusively(path, f"{username}:{stored}\n"):
            return stored, password
    users = load_passwd_file(path)
    if username not in users:
        raise ValueError(f"{path} has no account {username!r}")
    return users[username], None


def create_exclusively(path: Path, content: str) -> bool:
    """
    Write C{content} to a new file C{path} (mode 0600) atomically.

    @return: C{False} if C{path} appeared meanwhile (another process got
        there first), leaving it untouched.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        try:
            # link() fails if the target exists, unlike rename(): two first
            # starts at once cannot each print a password only one of them
            # stored.
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # A file system without hard links: fall back to an atomic
            # rename, with a small window against a concurrent start.
            if path.exists():
                return False
            os.replace(tmp, path)
        _fsync_directory(path.parent)
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _fsync_directory(directory: Path) -> None:
    """Make a new directory entry durable; best effort where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
