"""
The whole gateway over a failing store, through real sockets: ftplib and
paramiko against a gateway on the COS-dialect test server
(tests/cosserver.py), which fails a quarter of the gateway's store requests
in every way it knows (500, 503 SlowDown, a dropped or reset connection, a
reply lost after the write happened) and cuts some GET bodies short; and
against a store nobody listens for.

What must hold (cosgw/storage/cos.py, issue 12 item 9): a client told an
upload failed finds no object (and no multipart upload is left once the
gateway has cleaned up); a client told it succeeded finds exactly its bytes
stored; a download is byte-identical or reported failed, never silently
short; the gateway keeps serving.  A store that is down gets a clean 451 or
SFTP failure saying "store unavailable" and one log line per request, no
traceback.
"""

from __future__ import annotations

import ftplib
import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import paramiko
from paramiko.file import BufferedFile
from paramiko.sftp import CMD_CLOSE
from twisted.internet.defer import DeferredList
from twisted.logger import LogLevel
from twisted.trial import unittest

from cosgw.config import StorageConfig
from cosgw.interfaces import StoreUnavailable
from cosgw.storage import cos
from cosgw.storage.sweeper import UploadSweeper
from tests.cosserver import closed_port
from tests.harness import PASSWORD, Gateway, MiB, in_thread, sha256, start_gateway
from tests.logevents import LogEvents

#: Bound on any one client socket operation.
CLIENT_TIMEOUT = 30.0

#: The store's retries, fast for tests (three attempts, as in service).
FAST_RETRIES = (0.02, 0.05)

#: Ways a request fails, each striking with the same probability, so that
#: together they strike a quarter of the requests.
FAULTS: list[dict[str, Any]] = [
    {"status": 500},
    {"status": 503},
    {"drop": True},
    {"drop": True, "reset": True},
    {"after": True, "status": 500},
    {"after": True, "drop": True, "reset": True},
]
EACH = 1 - 0.75 ** (1 / len(FAULTS))

#: Sizes of the 40 files: single PUTs and multipart uploads of 1 MiB parts.
SIZES = [
    0,
    1,
    777,
    64 << 10,
    300 << 10,
    MiB - 1,
    MiB,
    MiB + 1,
    5 * MiB // 2,
    3 * MiB + 17,
]


def arm_faults(server: Any, bucket: str) -> None:
    """A quarter of the bucket's requests fail, and a quarter of GET bodies."""
    for seed, fault in enumerate(FAULTS):
        server.inject(
            "fail",
            op="*",
            bucket=bucket,
            count=-1,
            probability=EACH,
            seed=seed,
            **fault,
        )
    server.inject(
        "truncate-get", bucket=bucket, count=-1, probability=0.25, seed=99, reset=True
    )


def ftp_login(gw: Gateway) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(gw.host, gw.port, timeout=CLIENT_TIMEOUT)
    ftp.login("alice", PASSWORD)
    ftp.voidcmd("TYPE I")
    return ftp


@contextmanager
def sftp_login(gw: Gateway) -> Iterator[paramiko.SFTPClient]:
    transport = paramiko.Transport((gw.host, gw.sftp_port))
    try:
        transport.connect(username="alice", password=PASSWORD)
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        client.get_channel().settimeout(CLIENT_TIMEOUT)
        yield client
    finally:
        transport.close()


class FtpSession:
    """One FTP client; a broken session is replaced by a new login."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.ftp: Optional[ftplib.FTP] = None

    def _run(self, action: Callable[[ftplib.FTP], Any]) -> Optional[str]:
        """None on success, else what the client was told."""
        if self.ftp is None:
            self.ftp = ftp_login(self.gw)
        try:
            action(self.ftp)
            return None
        except ftplib.Error as e:
            return str(e)
        except (OSError, EOFError) as e:
            # The data connection was stopped under the client: its reply
            # is still on its way; a new session keeps the control in step.
            self.ftp.close()
            self.ftp = None
            return f"connection: {e!r}"

    def upload(self, name: str, data: bytes) -> Optional[str]:
        return self._run(lambda f: f.storbinary(f"STOR {name}", io.BytesIO(data)))

    def download(self, name: str) -> tuple[Optional[str], bytes]:
        received = bytearray()
        error = self._run(lambda f: f.retrbinary(f"RETR {name}", received.extend))
        return error, bytes(received)

    def close(self) -> None:
        if self.ftp is not None:
            self.ftp.quit()


def sftp_put(client: paramiko.SFTPClient, path: str, data: bytes) -> None:
    """
    Upload C{data}, raising when the server refuses the file at CLOSE, as an
    SFTP server reports an upload it could not store.  paramiko's own close
    (hence putfo) swallows a failed CLOSE ("may have outlived the Transport
    connection", SFTPFile._close), so this one sends CLOSE itself.
    """
    f = client.open(path, "wb")
    try:
        f.set_pipelined(True)
        f.write(data)
        f.flush()
        client._finish_responses(f)  # raises a failed WRITE's status
    except BaseException:
        f.close()
        raise
    BufferedFile.close(f)  # closed for paramiko: no second CLOSE later
    client._request(CMD_CLOSE, f.handle)


def sftp_upload(client: paramiko.SFTPClient, name: str, data: bytes) -> Optional[str]:
    try:
        sftp_put(client, "/" + name, data)
        return None
    except OSError as e:
        return str(e)


def sftp_download(
    client: paramiko.SFTPClient, name: str
) -> tuple[Optional[str], bytes]:
    received = io.BytesIO()
    try:
        client.getfo("/" + name, received)
        return None, received.getvalue()
    except OSError as e:
        return str(e), received.getvalue()


def ftp_worker(gw: Gateway, files: dict[str, bytes]) -> dict[str, Any]:
    """Upload every file, then download each one the gateway accepted."""
    session = FtpSession(gw)
    uploads = {name: session.upload(name, data) for name, data in files.items()}
    downloads = {
        name: session.download(name) for name, error in uploads.items() if not error
    }
    session.close()
    return {"uploads": uploads, "downloads": downloads}


def sftp_worker(gw: Gateway, files: dict[str, bytes]) -> dict[str, Any]:
    with sftp_login(gw) as client:
        uploads = {
            name: sftp_upload(client, name, data) for name, data in files.items()
        }
        downloads = {
            name: sftp_download(client, name)
            for name, error in uploads.items()
            if not error
        }
    return {"uploads": uploads, "downloads": downloads}


class FaultyStoreTests(unittest.TestCase):
    """Forty uploads and their downloads while a quarter of requests fail."""

    timeout = 120

    async def test_uploads_and_downloads_under_faults(self) -> None:
        self.patch(cos, "RETRY_DELAYS", FAST_RETRIES)
        gw = await start_gateway(self, "cos", part_size=MiB)
        server, bucket = gw.inspector.server, gw.inspector.bucket
        self.addCleanup(server.reset_faults)
        files = {
            f"{proto}{worker}-{n}.bin": os.urandom(size)
            for proto in ("ftp", "sftp")
            for worker in (1, 2)
            for n, size in enumerate(SIZES)
        }
        await in_thread(arm_faults, server, bucket)
        workers = [
            in_thread(
                ftp_worker if proto == "ftp" else sftp_worker,
                gw,
                {k: v for k, v in files.items() if k.startswith(f"{proto}{worker}-")},
            )
            for proto in ("ftp", "sftp")
            for worker in (1, 2)
        ]
        results = await DeferredList(workers, fireOnOneErrback=True, consumeErrors=True)
        faults = await in_thread(server.faults)
        await in_thread(server.reset_faults)
        uploads: dict[str, Optional[str]] = {}
        downloads: dict[str, tuple[Optional[str], bytes]] = {}
        for _ok, result in results:
            uploads.update(result["uploads"])
            downloads.update(result["downloads"])

        # Every kind of fault struck.
        self.assertEqual([f["hits"] > 0 for f in faults], [True] * (len(FAULTS) + 1))
        self.assertEqual(len(uploads), 40)
        stored = set(await in_thread(gw.inspector.keys))
        for name, error in uploads.items():
            if error:
                self.assertNotIn(name, stored, f"{name} failed ({error}) but is stored")
            else:
                self.assertIn(name, stored, name)
                got = await in_thread(gw.inspector.read, name)
                self.assertEqual(sha256(got), sha256(files[name]), name)
        for name, (error, got) in downloads.items():
            if not error:
                self.assertEqual(sha256(got), sha256(files[name]), name)
        accepted = [n for n, e in uploads.items() if not e]
        self.assertGreaterEqual(len(accepted), 20, uploads)

        # An abort that failed through every retry is a warning line, not a
        # traceback (and is left to the sweeper).
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])

        # The gateway's cleanup leaves no multipart upload behind.
        sweeper = next(s for s in gw.service if isinstance(s, UploadSweeper))
        await sweeper.sweep()
        self.assertEqual(await in_thread(gw.inspector.pending_uploads), [])

        # And it serves as before.
        data = os.urandom(MiB + 5)
        session = FtpSession(gw)
        self.assertIsNone(await in_thread(session.upload, "after.bin", data))
        self.assertEqual(await in_thread(session.download, "after.bin"), (None, data))
        await in_thread(session.close)
        result = await in_thread(sftp_worker, gw, {"after-sftp.bin": data})
        self.assertEqual(result["downloads"], {"after-sftp.bin": (None, data)})


class UnreachableStoreTests(unittest.TestCase):
    """A store nobody listens for: clean replies, one log line each."""

    async def start(self) -> tuple[Gateway, LogEvents]:
        self.patch(cos, "RETRY_DELAYS", FAST_RETRIES)
        down = StorageConfig(
            name="store",
            kind="cos",
            bucket="gone-1250000000",
            region="ap-guangzhou",
            secret_id="AKIDtest",
            secret_key="test-key",
            scheme="http",
            address=("127.0.0.1", closed_port()),
        )
        gw = await start_gateway(self, "cos", storages={"store": down})
        sweeper = next(s for s in gw.service if isinstance(s, UploadSweeper))
        self.assertIsNotNone(sweeper.last_sweep)
        await sweeper.last_sweep  # its warning comes before the test's
        return gw, LogEvents(self, "cosgw.vfs.errors")

    def assertOneWarningPer(self, events: LogEvents, paths: list[str]) -> None:
        warnings = events.at(LogLevel.warn)
        self.assertEqual([e["path"] for e in warnings], paths)
        for event in warnings:
            self.assertIn("store unreachable: connection refused", event["error"])
            self.assertNotIn("log_failure", event)
        self.assertEqual(
            [e for e in events.events if e["log_level"] is not LogLevel.warn], []
        )

    async def test_ftp(self) -> None:
        gw, events = await self.start()

        def session() -> list[str]:
            ftp = ftp_login(gw)
            replies = []
            for action in (
                lambda: ftp.retrlines("LIST", lambda line: None),
                lambda: ftp.storbinary("STOR up.bin", io.BytesIO(b"x" * 1000)),
                lambda: ftp.retrbinary("RETR up.bin", lambda data: None),
                lambda: ftp.size("up.bin"),
            ):
                try:
                    action()
                    replies.append("no error")
                except ftplib.error_temp as e:
                    replies.append(str(e))
            replies.append(ftp.voidcmd("NOOP"))
            ftp.quit()
            return replies

        replies = await in_thread(session)
        self.assertEqual(
            replies,
            ["451 /: store unavailable; try again later"]
            + ["451 /up.bin: store unavailable; try again later"] * 3
            + ["200 NOOP ok"],
        )
        self.assertOneWarningPer(events, ["/", "/up.bin", "/up.bin", "/up.bin"])

    async def test_sftp(self) -> None:
        gw, events = await self.start()

        def session() -> list[str]:
            replies = []
            with sftp_login(gw) as client:
                for action in (
                    lambda: client.listdir("/"),
                    lambda: sftp_put(client, "/up.bin", b"x" * 1000),
                    lambda: client.stat("/up.bin"),
                    lambda: client.open("/up.bin").read(),
                ):
                    try:
                        action()
                        replies.append("no error")
                    except OSError as e:
                        replies.append(str(e))
                replies.append(str(client.normalize(".")))
            return replies

        replies = await in_thread(session)
        self.assertEqual(
            replies,
            ["/: store unavailable; try again later"]
            + ["/up.bin: store unavailable; try again later"] * 3
            + ["/"],
        )
        self.assertOneWarningPer(events, ["/", "/up.bin", "/up.bin", "/up.bin"])
