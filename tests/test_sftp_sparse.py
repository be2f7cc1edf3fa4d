"""
Holes beyond the end of a file ([transfer] max_sparse_gap, 64 MiB by
default) end to end with paramiko against a real gateway (local store and
the COS-dialect server over moto): a far write and a far size change are
refused with a message saying why, and nothing of the zeros is uploaded;
small holes stay zeros.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.harness import MiB, in_thread, start_gateway
from tests.logevents import LogEvents
from tests.test_sftp import close_and_wait, connect, poll
from tests.test_spool_budget import close_reply


class SparseTestsMixin:
    kind = "local"
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gateway = yield start_gateway(self, self.kind)
        self.logs = LogEvents(self, "cosgw.vfs.editing")
        self.sftp = yield in_thread(connect, self.gateway.sftp_port)
        self.addCleanup(in_thread, close_and_wait, self.sftp, self.gateway)

    @property
    def store(self) -> Any:
        return self.gateway.inspector

    def refusals(self) -> list[str]:
        return [
            e["reason"] for e in self.logs.events if "write refused" in e["log_format"]
        ]

    @defer.inlineCallbacks
    def test_write_far_beyond_the_end(self) -> Any:
        """
        One byte at 300 MiB: the WRITE fails with the reason, the CLOSE
        too, and no object (nor multipart upload) is left.
        """

        def client() -> tuple[str, str]:
            f = self.sftp.open("/sparse.bin", "wb")
            f.write(b"head")
            f.seek(300 * MiB)
            try:
                f.write(b"x")
            except OSError as e:
                return str(e), close_reply(self.sftp, f) or ""
            raise AssertionError("the far write was accepted")

        write, close = yield in_thread(client)
        for message in (write, close):
            self.assertIn(
                "/sparse.bin: a write at 314572800 would leave a hole", message
            )
            self.assertIn("max_sparse_gap", message)
        self.assertEqual(len(self.refusals()), 1)
        clean = yield in_thread(poll, lambda: not self.store.pending_uploads(), 10)
        self.assertTrue(clean)
        self.assertEqual(self.store.keys(), [])

    @defer.inlineCallbacks
    def test_size_growth(self) -> Any:
        """
        FSETSTAT to 200 MiB is refused and the file is stored as written;
        SETSTAT by path cannot grow a stored file either; a hole within the
        gap is zeros.
        """

        def client() -> list[str]:
            errors = []
            with self.sftp.open("/grow.bin", "wb") as f:
                f.write(b"hello")
                try:
                    f.truncate(200 * MiB)
                except OSError as e:
                    errors.append(str(e))
            try:
                self.sftp.truncate("/grow.bin", 200 * MiB)
            except OSError as e:
                errors.append(str(e))
            with self.sftp.open("/small.bin", "wb") as f:
                f.write(b"a")
                f.seek(MiB + 1)
                f.write(b"b")
            return errors

        errors = yield in_thread(client)
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("/grow.bin: a size change to 209715200", errors[0])
        self.assertIn("max_sparse_gap", errors[0])
        self.assertEqual(self.store.read("grow.bin"), b"hello")
        self.assertEqual(self.store.read("small.bin"), b"a" + bytes(MiB) + b"b")
        self.assertEqual(len(self.refusals()), 1)


class LocalSparseTests(SparseTestsMixin, TestCase):
    kind = "local"


class CosSparseTests(SparseTestsMixin, TestCase):
    kind = "cos"
