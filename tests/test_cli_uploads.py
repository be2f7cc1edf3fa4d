"""
Tests for C{cosgw uploads list|abort}: run as a command against real
unfinished multipart uploads in buckets of the COS test server (moto behind
the COS adapter), started with the COS SDK as another writer would.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from cosgw.storage.local import TMP_DIR, LocalStore
from tests.clitesting import (
    PASSWORD,
    cos_section,
    cosgw,
    new_bucket,
    temporary_directory,
    write_config,
)
from tests.cosserver import closed_port, shared_server

MiB = 1024 * 1024


class UploadsTests(TestCase):
    """Two buckets with unfinished uploads; the command sees and aborts them."""

    def setUp(self) -> None:
        self.server = shared_server()
        self.client = self.server.cos_client(retry=0)
        self.first = new_bucket(self.server)
        self.second = new_bucket(self.server)
        self.dir = temporary_directory(self)
        self.config = write_config(
            self.dir,
            f"[storage:first]{cos_section(self.server, self.first)}"
            f"[storage:second]{cos_section(self.server, self.second)}"
            f"[user:u]\npassword = {PASSWORD}\nstorage = first\n",
        )
        # One upload of two parts (1 MiB + 100 bytes), one with no part yet,
        # one in the second bucket.
        self.big = self.start(self.first, "a/big.bin", [MiB, 100])
        self.empty = self.start(self.first, "b/empty", [])
        self.other = self.start(self.second, "c/other", [5000])

    def start(self, bucket: str, key: str, sizes: list[int]) -> str:
        """An unfinished upload of C{key} with parts of C{sizes}."""
        upload_id = self.client.create_multipart_upload(Bucket=bucket, Key=key)[
            "UploadId"
        ]
        for number, size in enumerate(sizes, 1):
            self.client.upload_part(
                Bucket=bucket,
                Key=key,
                Body=b"p" * size,
                PartNumber=number,
                UploadId=upload_id,
            )
        return str(upload_id)

    def pending(self, bucket: str) -> set[tuple[str, str]]:
        return set(self.server.pending_uploads(bucket))

    def uploads(self, *args: str, stdin: str = "") -> Any:
        return cosgw("uploads", *args, "--config", str(self.config), stdin=stdin)

    def test_list_json(self) -> None:
        """Every upload of every bucket, its size the sum of its parts."""
        result = self.uploads("list", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        answer = json.loads(result.stdout)
        self.assertEqual(answer["errors"], {})
        found = {
            (u["storage"], u["key"], u["upload_id"]): (u["size"], u["parts"])
            for u in answer["uploads"]
        }
        self.assertEqual(
            found,
            {
                ("first", "a/big.bin", self.big): (MiB + 100, 2),
                ("first", "b/empty", self.empty): (0, 0),
                ("second", "c/other", self.other): (5000, 1),
            },
        )
        # Moto dates every upload 2010-11-10T20:48:33Z: the age is counted
        # from the date the store gives.
        s3 = self.server.boto3_client()
        listed = s3.list_multipart_uploads(Bucket=self.first)["Uploads"][0]
        initiated = listed["Initiated"].timestamp()
        for upload in answer["uploads"]:
            self.assertEqual(upload["initiated"], initiated)
            self.assertLess(abs(upload["age"] - (time.time() - initiated)), 120)

    def test_list_table(self) -> None:
        result = self.uploads("list", "--storage", "first")
        self.assertEqual(result.returncode, 0, result.stderr)
        header, *rows, total = result.stdout.splitlines()
        self.assertEqual(
            header.split()[:5], ["STORAGE", "AGE", "SIZE", "PARTS", "BEGUN"]
        )
        self.assertEqual(len(rows), 2)
        big = next(row for row in rows if "a/big.bin" in row)
        self.assertIn(self.big, big)
        self.assertIn(" 1 MiB ", big)
        self.assertEqual(total, "2 unfinished uploads, 1 MiB stored")

    def test_unknown_storage(self) -> None:
        result = self.uploads("list", "--storage", "third")
        self.assertEqual(result.returncode, 1)
        self.assertIn("no storage 'third'", result.stderr)
        self.assertIn("first, second", result.stderr)

    def test_abort_one(self) -> None:
        """KEY UPLOAD_ID with --yes: that upload goes, the others stay."""
        result = self.uploads("abort", "a/big.bin", self.big, "--yes")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"aborted first 'a/big.bin' {self.big}\n")
        self.assertEqual(self.pending(self.first), {("b/empty", self.empty)})
        self.assertEqual(self.pending(self.second), {("c/other", self.other)})

    def test_abort_unknown(self) -> None:
        result = self.uploads("abort", "a/big.bin", "nosuchupload", "--yes")
        self.assertEqual(result.returncode, 1)
        self.assertIn("no unfinished upload nosuchupload", result.stdout)
        self.assertEqual(len(self.pending(self.first)), 2)

    def test_abort_older_than_asks(self) -> None:
        """Without --yes it shows what would go and asks; "n" keeps all."""
        result = self.uploads("abort", "--older-than", "1h", stdin="n\n")
        self.assertEqual(result.returncode, 1)
        self.assertIn("Abort these 3 uploads (1 MiB)? [y/N]", result.stdout)
        self.assertIn("nothing aborted", result.stdout)
        self.assertEqual(len(self.pending(self.first)), 2)
        # End of input is a no as well.
        self.assertEqual(self.uploads("abort", "--older-than", "1h").returncode, 1)
        self.assertEqual(len(self.pending(self.second)), 1)

    def test_abort_older_than(self) -> None:
        """A "y" aborts every upload older than the age, in every bucket."""
        result = self.uploads("abort", "--older-than", "1h", stdin="y\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        # The prompt is on standard output too, with no line end.
        self.assertEqual(len(re.findall(r"aborted (first|second) '", result.stdout)), 3)
        self.assertEqual(self.pending(self.first), set())
        self.assertEqual(self.pending(self.second), set())

    def test_abort_needs_a_choice(self) -> None:
        result = self.uploads("abort", "--yes")
        self.assertEqual(result.returncode, 1)
        self.assertIn("give KEY UPLOAD_ID, or --older-than DURATION", result.stderr)
        result = self.uploads("abort", "--older-than", "soon")
        self.assertEqual(result.returncode, 2)
        self.assertIn("not a duration: 'soon'", result.stderr)

    def test_store_down(self) -> None:
        """A storage that does not answer is named; the others are listed."""
        down = cos_section(self.server, "down-1250000000").replace(
            f":{self.server.port}", f":{closed_port()}"
        )
        self.config.write_text(self.config.read_text() + f"[storage:down]{down}")
        result = self.uploads("list")
        self.assertEqual(result.returncode, 2)
        self.assertIn("3 unfinished uploads", result.stdout)
        self.assertIn(
            "cosgw uploads: storage down: LIST UPLOADS: store unreachable:"
            " connection refused",
            result.stderr,
        )


class LocalUploadsTests(TestCase):
    """
    Ages, on a local storage, where an upload is as old as its directory:
    --older-than takes the old upload and leaves the fresh one.
    """

    @defer.inlineCallbacks
    def test_older_than(self) -> Any:
        root = temporary_directory(self)
        store = LocalStore(root / "data", reactor, reactor.getThreadPool())
        store.prepare()
        old = yield store.create_multipart("old/file")
        yield store.upload_part("old/file", old, 1, b"o" * 300)
        fresh = yield store.create_multipart("fresh/file")
        two_days_ago = time.time() - 2 * 86400
        os.utime(root / "data" / TMP_DIR / f"up-{old}", (two_days_ago, two_days_ago))
        config = write_config(
            root,
            f"[storage:disk]\ntype = local\npath = data\n"
            f"[user:u]\npassword = {PASSWORD}\nstorage = disk\n",
        )

        listed = cosgw("uploads", "list", "--config", str(config), "--older-than", "1d")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        [row] = listed.stdout.splitlines()[1:-1]
        self.assertEqual(row.split()[:5], ["disk", "2d00h", "300", "B", "1"])
        self.assertIn("old/file", row)

        result = cosgw(
            "uploads", "abort", "--config", str(config), "--older-than", "1d", "--yes"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"aborted disk 'old/file' {old}\n")
        pending = yield store.list_multipart()
        self.assertEqual(
            [(u.key, u.upload_id) for u in pending], [("fresh/file", fresh)]
        )

    def test_no_directory_yet(self) -> None:
        """
        A local storage the gateway has not created yet has no uploads, and
        the command does not create it (run as root, it would leave a
        directory the gateway's user cannot write).
        """
        root = temporary_directory(self)
        config = write_config(
            root,
            f"[storage:disk]\ntype = local\npath = data\n"
            f"[user:u]\npassword = {PASSWORD}\nstorage = disk\n",
        )
        result = cosgw("uploads", "list", "--config", str(config))
        self.assertEqual(
            (result.returncode, result.stdout), (0, "no unfinished uploads\n")
        )
        self.assertFalse((root / "data").exists())
