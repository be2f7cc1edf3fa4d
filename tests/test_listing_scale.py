"""
LIST, NLST and MLSD of a directory too big for one store page.

A directory of 2,500 entries (2,490 files and 10 subdirectories, names with
spaces, 中文, '#', '+' and '%') is written straight into the store, not
through FTP: files under the local store's root, or objects put into moto
behind the test COS server.  Through the gateway, ftplib must then see every
entry exactly once: ``NLST dir`` gives the 2,500 names, ``LIST dir`` 2,500
lines with the right names, 'd' for the subdirectories and the right sizes.

Subdirectories sit where a 1,000-key page of the store ends and the next one
begins (with and without the ``dir/`` marker object taking a slot of the
first page), so a page that ends on a common prefix is covered.  For COS the
listing is also checked with no marker objects at all, only keys below the
prefix, as buckets written by other tools look.

Putting 2,500 objects with boto3 takes ~17 s against moto's server here
(~6.6 ms of client and server CPU each); the objects are sent as plain
HTTP PUTs with a SigV4-shaped Authorization header instead, which the test
COS server hands to moto unchanged (see tests/cosserver.py), at ~2.4 ms
each from four threads.
"""

from __future__ import annotations

import ftplib
import http.client
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.trial import unittest

from tests.harness import PASSWORD, in_thread, start_gateway

DIRECTORY = "dir"
ENTRIES = 2500
#: Positions (in listing order) of the subdirectories: both ends, and the
#: ends of the store's 1,000-key pages with and without the "dir/" marker.
SUBDIR_AT = (0, 998, 999, 1000, 1500, 1998, 1999, 2000, 2498, 2499)
_FILE_NAMES = (
    "{i:04d} plain.txt",
    "{i:04d} 中文 报告.csv",
    "{i:04d} #hash# and  two  spaces.dat",
    "{i:04d}+plus 100% done.bin",
    "{i:04d}_한국어 ＃ fullwidth.txt",
)
#: What the test COS server passes to moto without checking (moto does not
#: verify signatures).
_SIGV4 = (
    "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=" + "0" * 64
)


def directory() -> tuple[dict[str, int], list[str]]:
    """({file name: size}, [subdirectory names]), in listing order."""
    files: dict[str, int] = {}
    subdirs: list[str] = []
    for i in range(ENTRIES):
        if i in SUBDIR_AT:
            subdirs.append(f"{i:04d} sub 目录 #{len(subdirs)}")
        else:
            files[_FILE_NAMES[i % len(_FILE_NAMES)].format(i=i)] = (i * 37) % 1500
    return files, subdirs


def store_keys(markers: bool) -> list[tuple[str, bytes]]:
    """
    The objects of the directory.  With C{markers}, "dir/" exists and the
    subdirectories have a marker, a file, or both; without, there are only
    files below the prefix.
    """
    files, subdirs = directory()
    keys = [(f"{DIRECTORY}/", b"")] if markers else []
    keys += [(f"{DIRECTORY}/{name}", b"x" * size) for name, size in files.items()]
    for n, name in enumerate(subdirs):
        if markers and n % 3 != 1:
            keys.append((f"{DIRECTORY}/{name}/", b""))
        if not markers or n % 3 != 0:
            keys.append((f"{DIRECTORY}/{name}/inside.txt", b"inside"))
    return keys


def put_objects(server: Any, bucket: str, keys: list[tuple[str, bytes]]) -> None:
    """PUT C{keys} into moto through the test COS server's SigV4 bypass."""
    local = threading.local()
    connections: list[http.client.HTTPConnection] = []

    def put(item: tuple[str, bytes]) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(
                server.host, server.port, timeout=30
            )
            connections.append(conn)
        key, body = item
        conn.request(
            "PUT",
            f"/{bucket}/{quote(key, safe='/')}",
            body=body,
            headers={"Authorization": _SIGV4},
        )
        response = conn.getresponse()
        answer = response.read()
        if response.status != 200:
            raise AssertionError(f"PUT {key!r}: {response.status} {answer[:300]!r}")

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in pool.map(put, keys, chunksize=50):
                pass
    finally:
        for conn in connections:
            conn.close()


def write_files(root: Any) -> None:
    """The directory as files and directories under a local store's root."""
    files, subdirs = directory()
    base = os.path.join(root, DIRECTORY)
    os.makedirs(base, exist_ok=True)
    for name, size in files.items():
        with open(os.path.join(base, name), "wb") as f:
            f.write(b"x" * size)
    for n, name in enumerate(subdirs):
        os.mkdir(os.path.join(base, name))
        if n % 3 != 0:
            with open(os.path.join(base, name, "inside.txt"), "wb") as f:
                f.write(b"inside")


def list_directory(
    gw: Any,
) -> tuple[list[str], str, list[str], str, list[tuple[str, dict[str, str]]]]:
    """(NLST lines, its reply, LIST lines, its reply, MLSD entries) of dir."""
    ftp = ftplib.FTP(encoding="utf-8")
    ftp.connect(gw.host, gw.port, timeout=60)
    try:
        ftp.login("alice", PASSWORD)
        nlst: list[str] = []
        nlst_done = ftp.retrlines(f"NLST {DIRECTORY}", nlst.append)
        lines: list[str] = []
        list_done = ftp.retrlines(f"LIST {DIRECTORY}", lines.append)
        mlsd = list(ftp.mlsd(DIRECTORY, facts=["type", "size"]))
        ftp.quit()
    finally:
        ftp.close()
    return nlst, nlst_done, lines, list_done, mlsd


class ListingScaleMixin:
    kind = "local"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(self, self.kind)

    @defer.inlineCallbacks
    def populate(self, markers: bool = True) -> Any:
        inspector = self.gw.inspector
        if self.kind == "local":
            yield in_thread(write_files, inspector.root)
            return
        keys = store_keys(markers)
        yield in_thread(put_objects, inspector.server, inspector.bucket, keys)
        # The store holds exactly these keys ('+', '%' and '#' unmangled), so
        # a failure below is the gateway's.
        stored = yield in_thread(inspector.keys, f"{DIRECTORY}/")
        self.assertEqual(stored, sorted(key for key, _ in keys))

    @defer.inlineCallbacks
    def check_listing(self) -> Any:
        files, subdirs = directory()
        expected = set(files) | set(subdirs)
        self.assertEqual(len(expected), ENTRIES)

        nlst, nlst_done, lines, list_done, mlsd = yield in_thread(
            list_directory, self.gw
        )

        self.assertTrue(nlst_done.startswith("226"), nlst_done)
        self.assertEqual(len(nlst), ENTRIES, "NLST line count")
        self.assertEqual(len(set(nlst)), len(nlst), "NLST repeats names")
        self.assertEqual(set(nlst), expected)

        self.assertTrue(list_done.startswith("226"), list_done)
        self.assertEqual(len(lines), ENTRIES, "LIST line count")
        # mode, links, owner, group, size, month, day, time or year, name:
        # the name is everything after the eighth field, spaces included.
        parsed = {}
        for line in lines:
            fields = line.split(None, 8)
            self.assertEqual(len(fields), 9, line)
            self.assertNotIn(fields[8], parsed, "LIST repeats a name")
            parsed[fields[8]] = fields
        self.assertEqual(set(parsed), expected)
        for name in subdirs:
            self.assertTrue(parsed[name][0].startswith("d"), parsed[name])
        for name, size in files.items():
            self.assertTrue(parsed[name][0].startswith("-"), parsed[name])
            self.assertEqual(int(parsed[name][4]), size, parsed[name])

        self.assertEqual(len(mlsd), ENTRIES, "MLSD line count")
        facts = dict(mlsd)
        self.assertEqual(set(facts), expected)
        for name in subdirs:
            self.assertEqual(facts[name]["type"], "dir", name)
        for name, size in files.items():
            self.assertEqual(facts[name]["type"], "file", name)
            self.assertEqual(int(facts[name]["size"]), size, name)

    @defer.inlineCallbacks
    def test_large_directory(self) -> Any:
        yield self.populate(markers=True)
        yield self.check_listing()


class LocalListingScaleTests(ListingScaleMixin, unittest.TestCase):
    kind = "local"


class CosListingScaleTests(ListingScaleMixin, unittest.TestCase):
    kind = "cos"

    @defer.inlineCallbacks
    def test_large_directory_without_markers(self) -> Any:
        yield self.populate(markers=False)
        self.assertFalse([k for k, _ in store_keys(False) if k.endswith("/")])
        yield self.check_listing()
