"""
C{cosgw uploads list|abort}: the unfinished multipart uploads in each
storage, and aborting them.

An unfinished upload is invisible to every listing yet its parts are
stored, and billed, until it is completed or aborted.  The gateway keeps
the parts of an upload whose client went away so that it can be resumed,
and its sweeper aborts what is older than C{stale_upload_age}; this command
shows what is there now (age, and size as the sum of the stored parts) and
aborts one upload, or all older than an age, sooner.  Aborting an upload a
client is still sending makes that transfer fail.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Optional

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThreadPool

from cosgw.cli.stores import (
    DEFAULT_CONFIG,
    DEFAULT_TIMEOUT,
    open_stores,
    pick_storages,
    run,
    with_uploads_area,
)
from cosgw.cli.text import (
    format_bytes,
    format_duration,
    format_time,
    parse_duration,
    table,
)
from cosgw.config import ConfigError, load_config
from cosgw.interfaces import IObjectStore, NoSuchUpload, PendingUpload, StoreError

#: Exit statuses.
EXIT_OK = 0
#: A config error, no such upload, or the operator said no.
EXIT_REFUSED = 1
#: A store failed to answer.
EXIT_STORE = 2


@dataclass(frozen=True)
class Upload:
    """An unfinished upload and what its stored parts add up to."""

    storage: str
    key: str
    upload_id: str
    initiated: float
    age: float
    size: int
    parts: int


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "uploads",
        help="list or abort unfinished multipart uploads",
        description=(
            "List the unfinished multipart uploads of each storage (age, and"
            " size as the sum of the stored parts), or abort them.  Their"
            " parts are billed until then; the gateway's sweeper aborts those"
            " older than stale_upload_age."
        ),
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show the unfinished uploads")
    abort = actions.add_parser(
        "abort",
        help="abort KEY UPLOAD_ID, or all older than --older-than",
        description=(
            "Abort one upload (KEY UPLOAD_ID) or every upload older than"
            " --older-than; asks first unless --yes.  A client still sending"
            " an aborted upload sees its transfer fail."
        ),
    )
    for sub in (listing, abort):
        sub.add_argument(
            "--config",
            default=DEFAULT_CONFIG,
            metavar="FILE",
            help=f"the gateway's config (default {DEFAULT_CONFIG})",
        )
        sub.add_argument("--storage", metavar="NAME", help="only this storage")
        sub.add_argument(
            "--older-than",
            type=_duration,
            metavar="DURATION",
            help="only uploads begun longer ago than this (90s, 30m, 2h, 7d)",
        )
        sub.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            metavar="SECONDS",
            help=f"per store request (default {DEFAULT_TIMEOUT:g})",
        )
    listing.add_argument("--json", action="store_true", help="JSON for scripts")
    abort.add_argument("key", nargs="?", metavar="KEY")
    abort.add_argument("upload_id", nargs="?", metavar="UPLOAD_ID")
    abort.add_argument("--yes", action="store_true", help="do not ask")
    parser.set_defaults(handler=command)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def command(args: argparse.Namespace) -> int:
    if args.action == "abort" and (args.key is None) == (args.older_than is None):
        print(
            "cosgw uploads abort: give KEY UPLOAD_ID, or --older-than DURATION",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    if args.action == "abort" and args.key is not None and args.upload_id is None:
        print("cosgw uploads abort: KEY needs its UPLOAD_ID", file=sys.stderr)
        return EXIT_REFUSED
    try:
        config = load_config(args.config)
        names = with_uploads_area(config, pick_storages(config, args.storage))
    except ConfigError as e:
        print(f"cosgw uploads: {e}", file=sys.stderr)
        return EXIT_REFUSED

    async def main(reactor: Any) -> int:
        stores = open_stores(config, names, reactor, args.timeout)
        if args.action == "list":
            return await list_command(stores, reactor, args)
        return await abort_command(stores, reactor, args)

    run(main)


# -- finding them -------------------------------------------------------------


async def find(
    stores: Mapping[str, IObjectStore], reactor: Any, prefix: str = ""
) -> tuple[list[Upload], dict[str, str]]:
    """
    The unfinished uploads under C{prefix} in every store, oldest first,
    each with its parts counted (one ListParts each, all at once; the
    stores bound how many run together).

    @return: the uploads, and the error of each store that did not answer.
    """
    now = reactor.seconds()
    found = await gatherResults(
        [
            Deferred.fromCoroutine(_find_in(name, store, prefix, now))
            for name, store in sorted(stores.items())
        ]
    )
    uploads: list[Upload] = []
    errors: dict[str, str] = {}
    for name, (store_uploads, error) in zip(sorted(stores), found):
        uploads += store_uploads
        if error is not None:
            errors[name] = error
    uploads.sort(key=lambda u: (u.initiated, u.storage, u.key))
    return uploads, errors


async def _find_in(
    name: str, store: IObjectStore, prefix: str, now: float
) -> tuple[list[Upload], Optional[str]]:
    try:
        pending = await store.list_multipart(prefix)
        sized = await gatherResults(
            [Deferred.fromCoroutine(_sized(name, store, p, now)) for p in pending]
        )
    except StoreError as e:
        return [], str(e)
    return [u for u in sized if u is not None], None


async def _sized(
    name: str, store: IObjectStore, pending: PendingUpload, now: float
) -> Optional[Upload]:
    try:
        parts = await store.list_parts(pending.key, pending.upload_id)
    except NoSuchUpload:
        return None  # completed or aborted since it was listed
    return Upload(
        storage=name,
        key=pending.key,
        upload_id=pending.upload_id,
        initiated=pending.initiated,
        age=max(now - pending.initiated, 0.0),
        size=sum(part.size for part in parts),
        parts=len(parts),
    )


def _report_errors(errors: Mapping[str, str]) -> None:
    for name, error in sorted(errors.items()):
        print(f"cosgw uploads: storage {name}: {error}", file=sys.stderr)


def _table(uploads: list[Upload]) -> str:
    return table(
        ["STORAGE", "AGE", "SIZE", "PARTS", "BEGUN", "KEY", "UPLOAD ID"],
        [
            [
                u.storage,
                format_duration(u.age),
                format_bytes(u.size),
                u.parts,
                format_time(u.initiated),
                u.key,
                u.upload_id,
            ]
            for u in uploads
        ],
    )


# -- the actions --------------------------------------------------------------


async def list_command(
    stores: Mapping[str, IObjectStore], reactor: Any, args: argparse.Namespace
) -> int:
    uploads, errors = await find(stores, reactor)
    if args.older_than is not None:
        uploads = [u for u in uploads if u.age >= args.older_than]
    if args.json:
        print(
            json.dumps(
                {"uploads": [asdict(u) for u in uploads], "errors": errors},
                indent=2,
            )
        )
    elif uploads:
        print(_table(uploads))
        total = sum(u.size for u in uploads)
        print(f"{len(uploads)} unfinished uploads, {format_bytes(total)} stored")
    else:
        print("no unfinished uploads")
    _report_errors(errors)
    return EXIT_STORE if errors else EXIT_OK


async def abort_command(
    stores: Mapping[str, IObjectStore], reactor: Any, args: argparse.Namespace
) -> int:
    if args.key is not None:
        uploads, errors = await find(stores, reactor, args.key)
        uploads = [
            u for u in uploads if u.key == args.key and u.upload_id == args.upload_id
        ]
    else:
        uploads, errors = await find(stores, reactor)
        uploads = [u for u in uploads if u.age >= args.older_than]
    _report_errors(errors)
    if not uploads:
        if args.key is not None and not errors:
            print(f"cosgw uploads abort: no unfinished upload {args.upload_id}")
            return EXIT_REFUSED
        print("nothing to abort")
        return EXIT_STORE if errors else EXIT_OK
    if not args.yes and not await _confirm(uploads, reactor):
        print("nothing aborted")
        return EXIT_REFUSED
    failed = bool(errors)
    for upload in uploads:
        try:
            await stores[upload.storage].abort_multipart(upload.key, upload.upload_id)
        except StoreError as e:
            failed = True
            print(f"cosgw uploads abort: {e}", file=sys.stderr)
        else:
            print(f"aborted {upload.storage} {upload.key!r} {upload.upload_id}")
    return EXIT_STORE if failed else EXIT_OK


async def _confirm(uploads: list[Upload], reactor: Any) -> bool:
    """Show what would go and ask; reading the terminal waits in a thread."""
    total = sum(u.size for u in uploads)
    print(_table(uploads))
    question = f"Abort these {len(uploads)} uploads ({format_bytes(total)})? [y/N] "
    try:
        answer = await deferToThreadPool(
            reactor, reactor.getThreadPool(), input, question
        )
    except EOFError:
        print()
        return False
    if not sys.stdin.isatty():
        print(answer)  # what a terminal would have echoed
    return str(answer).strip().lower() in ("y", "yes")
