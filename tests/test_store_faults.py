"""
L{CosStore} (cosgw/storage/cos.py) under store faults: the real COS SDK
over real HTTP to the COS-dialect test server (tests/cosserver.py), which
answers 5xx, drops or resets connections, loses replies after doing the
write, or stores other bytes than it acknowledged; and against a closed
port.  The questions: is every failure a typed store error, is a write
whose reply was lost found stored (whatever lost it), and does a failed
upload leave nothing visible?

The store retries after 10 and 20 ms here (1 and 2 s in service).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from cosgw.interfaces import (
    MIN_PART_SIZE,
    IntegrityError,
    NoSuchKey,
    StoreUnavailable,
)
from cosgw.storage.checksum import crc64
from cosgw.storage.cos import CosStore
from cosgw.storage.cos_errors import StoreUnreachable
from tests.cosserver import closed_port, shared_server
from tests.test_store_contract import cos_settings, read_object

DELAYS = (0.01, 0.02)


class _StoreCase(unittest.TestCase):
    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=4, name=type(self).__name__)
        self.pool.start()
        self.addCleanup(self.pool.stop)

    def make_store(self, bucket: str, settings: dict[str, Any]) -> CosStore:
        return CosStore(
            bucket,
            settings,
            self.reactor,
            self.pool,
            pool_size=4,
            retry_delays=DELAYS,
        )

    def in_pool(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.pool, f, *args)


class FaultyStoreTests(_StoreCase):
    """A reachable store that fails some requests."""

    def setUp(self) -> None:
        super().setUp()
        self.server = shared_server()
        self.bucket = self.server.create_bucket(f"faults-{uuid.uuid4().hex[:10]}")
        self.addCleanup(self.server.reset_faults)
        self.store = self.make_store(self.bucket, cos_settings(self.server))

    def inject(self, kind: str, **params: Any) -> Deferred[None]:
        return self.in_pool(
            lambda: self.server.inject(kind, bucket=self.bucket, **params)
        )

    def counted(self) -> Deferred[dict[str, int]]:
        return self.in_pool(self.server.stats)

    @inlineCallbacks
    def upload(self, key: str, parts: list[bytes]) -> Any:
        """Create an upload of C{key} and store C{parts}; the PartInfos."""
        upload_id = yield self.store.create_multipart(key)
        infos = []
        for number, data in enumerate(parts, 1):
            info = yield self.store.upload_part(key, upload_id, number, data)
            infos.append(info)
        return upload_id, infos

    @inlineCallbacks
    def test_put_reply_lost_to_resets(self) -> Any:
        """
        Every attempt of a PUT is performed and its connection then reset:
        the PUT is found stored and succeeds (it used to fail with an
        AttributeError in the error mapping, skipping the check).
        """
        data = os.urandom(5000)
        yield self.inject(
            "fail", op="PutObject", count=3, after=True, drop=True, reset=True
        )
        info = yield self.store.put("lost/put", data)
        self.assertEqual((info.size, info.crc64), (len(data), crc64(data)))
        self.assertEqual((yield read_object(self.store, "lost/put")), data)

    @inlineCallbacks
    def test_complete_reply_lost_to_drops(self) -> Any:
        """
        The same for CompleteMultipartUpload, every attempt's connection
        closed (the retries find the upload gone, and say nothing either).
        """
        parts = [os.urandom(MIN_PART_SIZE), os.urandom(1000)]
        upload_id, infos = yield self.upload("lost/complete", parts)
        yield self.inject(
            "fail", op="CompleteMultipartUpload", count=3, after=True, drop=True
        )
        info = yield self.store.complete_multipart("lost/complete", upload_id, infos)
        self.assertEqual(info.size, sum(map(len, parts)))
        got = yield read_object(self.store, "lost/complete")
        self.assertEqual(got, b"".join(parts))

    @inlineCallbacks
    def test_lost_reply_found_despite_failing_heads(self) -> Any:
        """
        The HEAD that looks for a lost PUT fails too, through all its
        retries: another round finds the object, so the client is not told
        "failed" about a file that is there.
        """
        data = os.urandom(3000)
        yield self.inject("fail", op="PutObject", count=3, after=True)
        yield self.inject("fail", op="HeadObject", count=3, status=503)
        before = yield self.counted()
        info = yield self.store.put("lost/heads", data)
        after = yield self.counted()
        self.assertEqual(info.crc64, crc64(data))
        self.assertEqual(after["PutObject"] - before.get("PutObject", 0), 3)
        self.assertEqual(after["HeadObject"] - before.get("HeadObject", 0), 4)

    @inlineCallbacks
    def test_failed_put_verified_absent(self) -> Any:
        """
        A PUT refused through every retry (503) may have been performed by
        a proxy's lost reply: one HEAD says it was not, and the PUT fails
        with StoreUnavailable naming COS's request id.
        """
        yield self.inject("fail", op="PutObject", count=-1, status=503)
        before = yield self.counted()
        error = yield self.assertFailure(
            self.store.put("refused/put", b"abc"), StoreUnavailable
        )
        after = yield self.counted()
        self.assertNotIsInstance(error, StoreUnreachable)
        self.assertEqual(str(error), "PUT refused/put: COS 503 SlowDown")
        self.assertTrue(error.request_id)
        self.assertEqual(after["PutObject"] - before.get("PutObject", 0), 3)
        self.assertEqual(after["HeadObject"] - before.get("HeadObject", 0), 1)

    @inlineCallbacks
    def test_complete_confirmed_head_unavailable(self) -> Any:
        """
        COS confirmed the completion but every HEAD after it fails: the
        upload succeeded, and its answer (CRC-64 included) stands.
        """
        parts = [os.urandom(MIN_PART_SIZE), os.urandom(10)]
        upload_id, infos = yield self.upload("done/nohead", parts)
        yield self.inject("fail", op="HeadObject", count=3, status=500)
        info = yield self.store.complete_multipart("done/nohead", upload_id, infos)
        self.assertEqual(info.size, sum(map(len, parts)))
        self.assertEqual(info.crc64, crc64(b"".join(parts)))
        self.assertTrue(info.etag)

    @inlineCallbacks
    def test_completed_object_failing_its_check_is_deleted(self) -> Any:
        """
        A part stored with other bytes than COS acknowledged (its reply's
        CRC-64 is of the bytes sent): the completed object's CRC-64 differs
        from its parts'; complete_multipart() fails with IntegrityError and,
        as put() does, leaves no object behind.
        """
        parts = [os.urandom(MIN_PART_SIZE), os.urandom(5000)]
        yield self.inject("corrupt-put", key="bad/complete")
        upload_id, infos = yield self.upload("bad/complete", parts)
        error = yield self.assertFailure(
            self.store.complete_multipart("bad/complete", upload_id, infos),
            IntegrityError,
        )
        self.assertIn("CRC-64 of the object differs from its parts", str(error))
        yield self.assertFailure(self.store.head("bad/complete"), NoSuchKey)
        keys = yield self.in_pool(self.server.keys, self.bucket, "bad/")
        self.assertEqual(keys, [])
        uploads = yield self.in_pool(self.server.pending_uploads, self.bucket)
        self.assertEqual(uploads, [])

    @inlineCallbacks
    def test_bad_complete_not_found_by_lost_reply_check(self) -> Any:
        """
        The completion's reply is lost and the object that COS made fails
        the check: the lost-reply check does not take it for the upload;
        complete_multipart() fails.  (The object is not ours to delete: it
        may be an older version of the file.)
        """
        parts = [os.urandom(MIN_PART_SIZE), os.urandom(5000)]
        yield self.inject("corrupt-put", key="bad/lost")
        upload_id, infos = yield self.upload("bad/lost", parts)
        yield self.inject("fail", op="CompleteMultipartUpload", count=3, after=True)
        yield self.assertFailure(
            self.store.complete_multipart("bad/lost", upload_id, infos),
            StoreUnavailable,
        )


class UnreachableStoreTests(_StoreCase):
    """A store nobody listens for: every call fails fast and says so."""

    def setUp(self) -> None:
        super().setUp()
        settings = {
            "SecretId": "AKIDtest",
            "SecretKey": "test-key",
            "Region": "ap-guangzhou",
            "Scheme": "http",
            "IP": "127.0.0.1",
            "Port": closed_port(),
        }
        self.store = self.make_store("gone-1250000000", settings)

    @inlineCallbacks
    def test_every_call_unreachable(self) -> Any:
        calls = {
            "HEAD k": lambda: self.store.head("k"),
            "LIST ": lambda: self.store.list(""),
            "GET k": lambda: self.store.open("k"),
            "PUT k": lambda: self.store.put("k", b"data"),
            "INITIATE k": lambda: self.store.create_multipart("k"),
            "DELETE k": lambda: self.store.delete("k"),
            "ABORT k": lambda: self.store.abort_multipart("k", "id"),
            "LIST UPLOADS": lambda: self.store.list_multipart(),
        }
        for what, call in calls.items():
            error = yield self.assertFailure(call(), StoreUnreachable)
            self.assertEqual(
                str(error),
                f"{what}: store unreachable: connection refused (ECONNREFUSED)",
            )
            self.assertIsNone(error.request_id)
