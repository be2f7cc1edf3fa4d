"""
The COS store's costs per small object.

A small GET body is read whole in the GET's own pool call
(L{cosgw.storage.cos.SMALL_BODY}): its reads and its close answer at once,
with no trip to the thread pool (a 16 KiB download took three more: the
read, the read of its end, the close).  A larger body streams as before.
Over the real COS SDK and the COS test server.  Broken small bodies fail the
same read as before: tests/test_store_contract.py (corrupt and truncated
GETs of 300,000 bytes).

The environment (proxies, a CA bundle) is read once, when the store is
made, not again by requests on every request.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from cosgw.interfaces import StoreError
from cosgw.storage.cos import SMALL_BODY, CosStore
from tests.cosserver import closed_port, shared_server
from tests.harness import random_bytes
from tests.test_store_contract import cos_settings


def at_once(d: Deferred[Any]) -> bool:
    """Whether C{d} has its result already (not merely called, and waiting)."""
    done: list[object] = []
    d.addBoth(lambda result: (done.append(result), result)[1])
    return bool(done)


class SmallBodyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=0, maxthreads=4, name="small-body")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.store = self.make_store()

    def make_store(self) -> CosStore:
        server = shared_server()
        self.bucket = server.create_bucket(f"small-{uuid.uuid4().hex[:12]}")
        return CosStore(
            self.bucket, cos_settings(server), reactor, self.pool, 4, retry_delays=()
        )

    def proxy_env(self) -> None:
        """Send HTTP through a proxy nobody listens on, until the test ends."""
        saved = {
            k: os.environ.get(k)
            for k in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")
        }
        for key in saved:
            os.environ.pop(key, None)
        os.environ["HTTP_PROXY"] = f"http://127.0.0.1:{closed_port()}"

        def restore() -> None:
            for key, value in saved.items():
                os.environ.pop(key, None)
                if value is not None:
                    os.environ[key] = value

        self.addCleanup(restore)

    @inlineCallbacks
    def test_environment_read_once(self) -> Any:
        """A proxy set after the store was made is not used; one set before is."""
        self.proxy_env()
        yield self.store.put("k", b"still direct")
        proxied = CosStore(
            self.bucket, cos_settings(shared_server()), reactor, self.pool, 4, ()
        )
        yield self.assertFailure(proxied.head("k"), StoreError)

    @inlineCallbacks
    def test_small_body_read_with_its_get(self) -> Any:
        data = random_bytes(16 * 1024)
        yield self.store.put("small", data)
        source = yield self.store.open("small")
        got = []
        while True:
            d = source.read(5000)
            self.assertTrue(at_once(d), "a read of a small body went to the pool")
            chunk = yield d
            if not chunk:
                break
            got.append(chunk)
        closed = source.close()
        self.assertTrue(at_once(closed))
        yield closed
        self.assertEqual(b"".join(got), data)

    @inlineCallbacks
    def test_small_range_and_empty_object(self) -> Any:
        data = random_bytes(100_000)
        yield self.store.put("ranged", data)
        yield self.store.put("empty", b"")
        source = yield self.store.open("ranged", 1000, 3000)
        d = source.read(10_000)
        self.assertTrue(at_once(d))
        self.assertEqual((yield d), data[1000:3000])
        self.assertEqual((yield source.read(10)), b"")
        yield source.close()
        source = yield self.store.open("empty")
        self.assertEqual((yield source.read(10)), b"")
        yield source.close()

    @inlineCallbacks
    def test_larger_body_streams(self) -> Any:
        data = random_bytes(SMALL_BODY + 1)
        yield self.store.put("large", data)
        source = yield self.store.open("large")
        d = source.read(64 * 1024)
        self.assertFalse(at_once(d), "a large body was read with its GET")
        self.assertEqual((yield d), data[: 64 * 1024])
        yield source.close()
