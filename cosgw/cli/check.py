"""
C{cosgw check-config FILE [--probe]}: whether the gateway would start with
a config, what it would serve, and (with C{--probe}) whether its stores
answer.

The file is read exactly as twistd reads it (L{cosgw.config.load_config}),
so an error here is the one line twistd would stop with.  What is shown is
the effective config, defaults applied, without a secret: for a COS key
only the last characters of its id, for a user only whether they have a
password and how many SSH keys.

A probe sends one request per COS storage: a listing of at most one key
under the homes of its users.  A HEAD of some key would not do: its answer
has no body, so a missing bucket and a missing key are the same 404.  The
listing proves that the endpoint answers, that the key signs, that the
bucket exists and that the key may list it, which every session needs.  A
local storage's directory must take a new file, or be missing under a
parent where the gateway can create it at start.  With C{[server]
shared_state}, Redis is asked too, once, as a replica connects (TLS, AUTH,
SELECT), with nothing written: a wrong password or database shows here
rather than as a replica deciding alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThreadPool

from cosgw.cli.stores import open_stores, run
from cosgw.cli.text import format_address
from cosgw.config import Config, ConfigError, StorageConfig, UserConfig, load_config
from cosgw.config.values import format_size
from cosgw.interfaces import IObjectStore, StoreError

#: Exit statuses.
EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_PROBE = 2

#: Seconds a probe waits to connect and for the answer, by default.
PROBE_TIMEOUT = 5.0
#: The name of the Redis probe's line.
SHARED = "shared state"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "check-config",
        help="validate a config and show what it serves",
        description=(
            "Read FILE (cosgw INI or a COS FTP Server V5 vsftpd.conf) as the"
            " gateway would and print the effective storages, users and"
            " notices, or the one-line error (exit 1).  --probe also asks"
            " every storage, and Redis (shared_state), whether it answers"
            " (exit 2 if one does not)."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="the config file")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="send one request per COS bucket and to Redis; check local directories",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=PROBE_TIMEOUT,
        metavar="SECONDS",
        help=f"per probe, to connect and to answer (default {PROBE_TIMEOUT:g})",
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as e:
        print(f"cosgw check-config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print("\n".join(describe(config)))
    if not args.probe:
        return EXIT_OK

    async def probing(reactor: Any) -> int:
        results = await probe(config, reactor, args.timeout)
        print("probe:")
        for result in results:
            print(f"  {result.line()}")
        return EXIT_OK if all(r.ok for r in results) else EXIT_PROBE

    run(probing)


# -- the effective config ---------------------------------------------------


def describe(config: Config) -> list[str]:
    """The lines that show C{config}: listeners, storages, users, notices."""
    server = config.server
    lines = [f"{config.source}: valid"]
    listeners = [
        ("ftp", " ".join(server.ftp_listen)),
        ("ftps", " ".join(server.ftps_listen)),
        ("sftp", " ".join(server.sftp_listen)),
        ("admin", server.admin_listen),
    ]
    lines.append("listen:")
    lines += _fields((name, where or "off") for name, where in listeners)
    if server.shared_state:
        lines.append("shared state:")
        lines += _fields(_shared_fields(server.shared_state, server))
    for name in sorted(config.storages):
        lines.append(f"storage {name}:")
        users = sorted(u.name for u in config.users.values() if u.storage == name)
        lines += _fields(_storage_fields(config.storages[name], users))
    for name in sorted(config.users):
        lines.append(f"user {name}:")
        lines += _fields(_user_fields(config.users[name]))
    if config.notices:
        lines.append("notices:")
        lines += [f"  - {notice}" for notice in config.notices]
    return lines


def _fields(pairs: Iterator[tuple[str, str]] | Sequence[tuple[str, str]]) -> list[str]:
    """C{key  value} lines, indented, the values in one column."""
    pairs = list(pairs)
    width = max((len(key) for key, _ in pairs), default=0)
    return [f"  {key.ljust(width)}  {value}" for key, value in pairs]


def _masked(key_id: str | None) -> str:
    """Enough of a key's id to tell which key it is, not the whole id."""
    if not key_id:
        return "none"
    return "..." + key_id[-4:] if len(key_id) > 8 else "****"


def _shared_fields(url: str, server: Any) -> Iterator[tuple[str, str]]:
    from cosgw.policy.shared.connection import parse_url

    parsed = parse_url(url)
    yield "redis", parsed.where
    login = [f"user {parsed.username}"] if parsed.username else []
    if parsed.password:
        login.append("a password")
    yield "login", ", ".join(login) or "none"
    yield "failing", server.shared_state_failure


def _storage_fields(
    storage: StorageConfig, users: list[str]
) -> Iterator[tuple[str, str]]:
    yield "kind", storage.kind
    if storage.kind == "local":
        yield "path", str(storage.path)
    else:
        yield "bucket", str(storage.bucket)
        if storage.region:
            yield "region", storage.region
        if storage.endpoint:
            yield "endpoint", storage.endpoint
        if storage.address:
            yield "address", format_address(*storage.address)
        tls = "" if storage.scheme != "https" or storage.verify_tls else ", unverified"
        yield "scheme", storage.scheme + tls
        token = " (temporary, with a token)" if storage.token else ""
        yield "key id", _masked(storage.secret_id) + token
    yield "users", ", ".join(users) or "none"


def _user_fields(user: UserConfig) -> Iterator[tuple[str, str]]:
    yield "storage", user.storage
    yield "home", "/" + user.home
    yield "permissions", ", ".join(sorted(user.permissions)) or "none"
    login = []
    if user.password is not None:
        login.append("password" + ("" if user.password_is_hashed else " (plain text)"))
    if user.authorized_keys:
        count = len(user.authorized_keys)
        login.append(f"{count} SSH key" + ("s" if count > 1 else ""))
    yield "login", ", ".join(login)
    quota = []
    if user.quota_bytes:
        quota.append(format_size(user.quota_bytes))
    if user.quota_files:
        quota.append(f"{user.quota_files} files")
    if quota:
        yield "quota", ", ".join(quota)
    if user.max_file_size is not None:
        yield "max file", format_size(user.max_file_size)
    rates = [
        f"{direction} {format_size(rate)}/s"
        for direction, rate in (
            ("upload", user.upload_rate),
            ("download", user.download_rate),
        )
        if rate
    ]
    if rates:
        yield "rates", ", ".join(rates)
    if user.max_sessions is not None:
        yield "sessions", f"at most {user.max_sessions}"
    if user.allowed_networks:
        yield "allowed", ", ".join(user.allowed_networks)
    if user.denied_networks:
        yield "denied", ", ".join(user.denied_networks)
    tls = [
        name
        for name, required in (
            ("control", user.tls_required),
            ("data", user.tls_data_required),
        )
        if required
    ]
    if tls:
        yield "TLS required", ", ".join(tls)


# -- probes -----------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    """What one storage answered a probe."""

    storage: str
    ok: bool
    #: What was checked and found, or why it failed.
    detail: str
    seconds: float

    def line(self) -> str:
        state = "OK" if self.ok else "FAILED"
        return f"{self.storage}: {state} ({self.seconds:.2f} s): {self.detail}"


async def probe(config: Config, reactor: Any, timeout: float) -> list[ProbeResult]:
    """
    Probe every storage of C{config} at once, each with one request waiting
    at most C{timeout} seconds to connect and for each read.

    @return: a L{ProbeResult} for Redis (C{shared_state}) first, if
        set, then one per storage, sorted by name; a probe's failure is in
        its result, never raised.
    """
    names = sorted(config.storages)
    cos = [n for n in names if config.storages[n].kind != "local"]
    probes: list[Deferred[ProbeResult]] = []
    if config.server.shared_state:
        redis = _redis(config.server.shared_state, reactor, timeout)
        probes.append(Deferred.fromCoroutine(_timed(SHARED, reactor, redis)))
    stores = open_stores(config, cos, reactor, timeout)
    work: Awaitable[str]
    for name in names:
        if name in stores:
            prefix = _common_home(config, name)
            work = _list_one(stores[name], prefix)
        else:
            path = config.storages[name].path
            assert path is not None
            pool = reactor.getThreadPool()
            work = deferToThreadPool(reactor, pool, _writable_directory, path)
        probes.append(Deferred.fromCoroutine(_timed(name, reactor, work)))
    return list(await gatherResults(probes))


def _common_home(config: Config, storage: str) -> str:
    """The key prefix under every home of C{storage}'s users ("" for none)."""
    homes = [u.home.split("/") for u in config.users.values() if u.storage == storage]
    common = os.path.commonprefix(homes) if homes else []
    return "".join(segment + "/" for segment in common if segment)


async def _list_one(store: IObjectStore, prefix: str) -> str:
    try:
        page = await store.list(prefix, "/", "", 1)
    except StoreError as e:
        raise StoreError(f"{store.description}: {e}") from None
    where = f"under {prefix!r}" if prefix else "at its root"
    found = "a key or directory" if page.objects or page.prefixes else "nothing yet"
    return f"{store.description}: listed {found} {where}"


def _writable_directory(path: Path) -> str:
    """
    Blocking: C{path} is a directory a new file can be written in, or it is
    missing and the gateway can create it at start (as it does), since its
    nearest existing parent takes new entries.
    """
    if not path.exists():
        parent = next(p for p in path.parents if p.exists())
        if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            return f"local directory {path}: missing; the gateway creates it"
        raise StoreError(f"{path}: missing, and {parent} takes no new directory")
    if not path.is_dir():
        raise StoreError(f"{path}: not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".cosgw-probe-", dir=path)
    except OSError as e:
        raise StoreError(f"{path}: cannot create a file: {e.strerror}") from None
    os.close(fd)
    os.unlink(name)
    return f"local directory {path}: exists and takes new files"


async def _redis(url: str, reactor: Any, timeout: float) -> str:
    """What the Redis of C{[server] shared_state} answered (see above)."""
    from cosgw.policy.shared.connection import SharedStateUnavailable, probe

    try:
        return await probe(url, reactor, timeout)
    except SharedStateUnavailable as e:
        raise StoreError(str(e)) from None


async def _timed(name: str, reactor: Any, work: Awaitable[str]) -> ProbeResult:
    started = reactor.seconds()
    try:
        detail, ok = await work, True
    except StoreError as e:
        detail, ok = str(e), False
    return ProbeResult(name, ok, detail, reactor.seconds() - started)
