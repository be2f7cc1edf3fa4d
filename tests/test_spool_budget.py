"""
The gateway-wide spool budget ([transfer] max_spool_size) end to end:
paramiko sessions of two users against a real gateway (local store and the
COS-dialect server over moto) change 20 files in place at once, each copy
held in the spool until its handle is closed.  The spool files' real size
is measured all along (the gateway runs in this process: its open spool
files are found in /proc/self/fd).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from paramiko.sftp import CMD_CLOSE
from twisted.internet import defer, reactor
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from cosgw.config import ALL_PERMISSIONS, UserConfig
from tests.harness import PASSWORD, in_thread, random_bytes, start_gateway
from tests.logevents import LogEvents
from tests.test_sftp import close_and_wait, connect, poll

KiB = 1024
FILES = 20
SIZE = 512 * KiB
#: Room for five copies and a bit: the sixth does not fit.
BUDGET = 5 * SIZE + 100 * KiB


def spool_usage(directory: str) -> tuple[int, int]:
    """
    (disk allocated, apparent size) of the files open in C{directory}:
    spool files have no name, so they are found through this process's
    open descriptors.
    """
    prefix = os.path.realpath(directory) + os.sep
    allocated = apparent = 0
    for fd in os.listdir("/proc/self/fd"):
        path = f"/proc/self/fd/{fd}"
        try:
            if not os.readlink(path).startswith(prefix):
                continue
            st = os.stat(path)
        except OSError:
            continue  # closed meanwhile
        allocated += st.st_blocks * 512
        apparent += st.st_size
    return allocated, apparent


def close_reply(sftp: Any, f: Any) -> Optional[str]:
    """
    CLOSE a handle and return the server's error, None when stored
    (paramiko's own close() ignores the reply).
    """
    f._closed = True
    try:
        sftp._request(CMD_CLOSE, f.handle)
    except OSError as e:
        return str(e)
    return None


class SpoolBudgetTestsMixin:
    kind = "local"
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        users = {
            name: UserConfig(
                name=name,
                password=PASSWORD,
                password_is_hashed=False,
                storage="store",
                home="",
                permissions=ALL_PERMISSIONS,
            )
            for name in ("alice", "bob")
        }
        self.gateway = yield start_gateway(
            self,
            self.kind,
            users=users,
            transfer_overrides={"max_spool_size": BUDGET},
        )
        self.logs = LogEvents(self, "cosgw.vfs.editing")
        self.data = [random_bytes(SIZE) for _ in range(FILES)]
        for i, data in enumerate(self.data):
            yield self.gateway.store.put(f"e{i}.bin", data)
        self.sessions = []
        for user in ("alice", "bob"):
            sftp = yield in_thread(connect, self.gateway.sftp_port, user)
            self.sessions.append(sftp)
            self.addCleanup(in_thread, close_and_wait, sftp, self.gateway)

    @defer.inlineCallbacks
    def test_twenty_edits_share_the_budget(self) -> Any:
        """
        20 handles (ten per user) each write one byte at offset 0 of a
        512 KiB file, and stay open: five copies fit, the other fifteen
        writes fail with "gateway spool is full" and leave their files as
        they were; the spool never holds more than the budget; closing
        gives the space back, and an edit then succeeds.
        """
        settings = self.gateway.service.sftp.settings
        budget = settings.spool_budget
        self.assertEqual(budget.limit, BUDGET)
        peak = [0, 0]

        def sample() -> None:
            allocated, apparent = spool_usage(settings.spool_dir)
            peak[0], peak[1] = max(peak[0], allocated), max(peak[1], apparent)

        sampler = LoopingCall(sample)
        sampler.clock = reactor
        sampler.start(0.005)

        def client() -> tuple[list[Optional[str]], list[Optional[str]], int]:
            handles = [
                (sftp, sftp.open(f"/e{i}.bin", "r+"))
                for i, sftp in enumerate(self.sessions * (FILES // 2))
            ]
            writes: list[Optional[str]] = []
            for i, (_, f) in enumerate(handles):
                try:
                    f.write(bytes([65 + i]))
                    writes.append(None)
                except OSError as e:
                    writes.append(str(e))
            held = spool_usage(settings.spool_dir)[0]
            closes = [close_reply(sftp, f) for sftp, f in handles]
            return writes, closes, held

        writes, closes, held = yield in_thread(client)
        sampler.stop()
        sample()
        self.assertEqual(sum(w is None for w in writes), 5, writes)
        for i in range(FILES):
            if writes[i] is None:
                self.assertIsNone(closes[i])
                expected = bytes([65 + i]) + self.data[i][1:]
            else:
                self.assertIn("gateway spool is full", writes[i])
                self.assertIn("gateway spool is full", closes[i])
                expected = self.data[i]
            self.assertEqual(self.gateway.inspector.read(f"e{i}.bin"), expected)
        # The copies were really on disk, and never more than the budget.
        self.assertGreaterEqual(held, 5 * SIZE)
        self.assertLessEqual(peak[0], BUDGET)
        self.assertLessEqual(peak[1], BUDGET)
        refusals = [e for e in self.logs.events if "write refused" in e["log_format"]]
        self.assertEqual(len(refusals), FILES - 5)
        self.assertEqual(budget.used, 0)
        gone = yield in_thread(
            poll, lambda: spool_usage(settings.spool_dir) == (0, 0), 10
        )
        self.assertTrue(gone)

        def again() -> None:
            with self.sessions[1].open("/e19.bin", "r+") as f:
                f.write(b"z")

        yield in_thread(again)
        self.assertEqual(
            self.gateway.inspector.read("e19.bin"), b"z" + self.data[19][1:]
        )
        self.assertEqual(self.gateway.inspector.pending_uploads(), [])


class LocalSpoolBudgetTests(SpoolBudgetTestsMixin, TestCase):
    kind = "local"


class CosSpoolBudgetTests(SpoolBudgetTestsMixin, TestCase):
    kind = "cos"
