"""
Starting a real gateway for a test, and looking into its store.

The gateway runs in the test's own reactor (trial's) on 127.0.0.1 with an
ephemeral control port; blocking clients (ftplib, curl) run in threads or
subprocesses so the reactor keeps serving them.  The store is either a
temporary local directory or a fresh bucket on the COS-dialect server over
moto (tests/cosserver.py), and an inspector reads it directly, bypassing the
gateway, so tests assert what is really stored.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from cosgw.auth.hashes import hash_password
from cosgw.config import (
    ALL_PERMISSIONS,
    Config,
    ServerConfig,
    StorageConfig,
    TransferConfig,
    UserConfig,
)
from cosgw.service import makeService
from cosgw.storage.local import TMP_DIR

MiB = 1024 * 1024
PASSWORD = "s3cret-Passw0rd"
READER_PASSWORD = "reader-pass"
#: Hashed once per test run: scrypt is slow on purpose.
_HASHED = hash_password(PASSWORD)

#: Passive ports for tests: above Linux's ephemeral range, away from the
#: gateway's default.
TEST_PASSIVE_PORTS = (62000, 62999)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalInspector:
    """Reads a local store's directory as the truth."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def keys(self, prefix: str = "") -> list[str]:
        found = []
        for directory, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(directory, self.root)
            if rel.split(os.sep)[0] == TMP_DIR:
                continue
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            if base:
                found.append(base)
            found.extend(base + f for f in files)
        return sorted(k for k in found if k.startswith(prefix))

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def pending_uploads(self) -> list[str]:
        tmp = self.root / TMP_DIR
        return sorted(os.listdir(tmp)) if tmp.exists() else []

    def stored_parts(self) -> int:
        """Parts stored in all unfinished multipart uploads."""
        tmp = self.root / TMP_DIR
        if not tmp.exists():
            return 0
        return sum(
            len([f for f in os.listdir(tmp / d) if f.endswith(".part")])
            for d in os.listdir(tmp)
            if d.startswith("up-")
        )

    def storage(self) -> StorageConfig:
        return StorageConfig(name="store", kind="local", path=self.root)


class CosInspector:
    """Reads a bucket of the test COS server directly (not through cosgw)."""

    kind = "cos"

    def __init__(self, server: Any, bucket: str) -> None:
        self.server = server
        self.bucket = bucket

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(self.server.keys(self.bucket, prefix))

    def read(self, key: str) -> bytes:
        return self.server.get_bytes(self.bucket, key)

    def pending_uploads(self) -> list[str]:
        return [key for key, _ in self.server.pending_uploads(self.bucket)]

    def stored_parts(self) -> int:
        """Parts stored in all unfinished multipart uploads."""
        s3 = self.server.boto3_client()
        return sum(
            len(
                s3.list_parts(Bucket=self.bucket, Key=key, UploadId=uid).get(
                    "Parts", []
                )
            )
            for key, uid in self.server.pending_uploads(self.bucket)
        )

    def storage(self) -> StorageConfig:
        return StorageConfig(
            name="store",
            kind="cos",
            bucket=self.bucket,
            region=self.server.region,
            secret_id=self.server.secret_id,
            secret_key=self.server.secret_key,
            scheme="http",
            address=("127.0.0.1", self.server.port),
        )


def cos_server() -> Any:
    from tests.cosserver import shared_server

    return shared_server()


def make_inspector(kind: str, cleanup: Callable[..., None]) -> Any:
    if kind == "local":
        root = Path(tempfile.mkdtemp(prefix="cosgw-test-"))
        cleanup(shutil.rmtree, root, True)
        return LocalInspector(root / "data")
    server = cos_server()
    bucket = server.create_bucket("t" + uuid.uuid4().hex[:12])
    return CosInspector(server, bucket)


_HOST_KEYS: list[Path] = []


def host_keys() -> tuple[Path, ...]:
    """SSH host keys generated once per test run (RSA 3072 is slow to make)."""
    if not _HOST_KEYS:
        from cosgw.frontends.sftp.hostkeys import load_host_keys

        directory = Path(tempfile.mkdtemp(prefix="cosgw-hostkeys-"))
        load_host_keys((), directory)
        _HOST_KEYS.extend(sorted(directory.glob("ssh_host_*_key")))
    return tuple(_HOST_KEYS)


class Gateway:
    """A running gateway and what a test needs to talk to it."""

    def __init__(
        self, service: Any, inspector: Any, port: int, sftp_port: int = 0
    ) -> None:
        self.service = service
        self.inspector = inspector
        self.port = port
        self.sftp_port = sftp_port
        self.host = "127.0.0.1"
        #: The admin listener's port, when the test asked for one.
        self.admin_port = 0

    @property
    def store(self) -> Any:
        return self.service.stores["store"]



def plain_user(name: str, **rules: Any) -> UserConfig:
    """
    A user of the store with the test password, stored plain (no scrypt per
    login), home the whole store, every permission unless C{rules} say
    otherwise.
    """
    settings: dict[str, Any] = {
        "password": PASSWORD,
        "password_is_hashed": False,
        "storage": "store",
        "home": "",
        "permissions": ALL_PERMISSIONS,
        **rules,
    }
    return UserConfig(name=name, **settings)

def start_gateway(
    testcase: Any,
    kind: str,
    part_size: int = MiB,
    parts_in_flight: int = 2,
    alice_home: str = "",
    data_timeout: float = 3.0,
    resume_uploads: bool = True,
    users: Optional[dict[str, UserConfig]] = None,
    storages: Optional[dict[str, StorageConfig]] = None,
    transfer_overrides: Optional[dict[str, Any]] = None,
    **server_overrides: Any,
) -> Deferred[Gateway]:
    """
    Start a gateway for C{testcase} over a C{kind} ("local"/"cos") store,
    stopped at cleanup.  Users: alice (all permissions, hashed password,
    home C{alice_home}), reader (list+download, plain password).
    """
    inspector = make_inspector(kind, testcase.addCleanup)
    state = Path(tempfile.mkdtemp(prefix="cosgw-state-"))
    testcase.addCleanup(shutil.rmtree, state, True)
    default_users = {
        "alice": UserConfig(
            name="alice",
            password=_HASHED,
            password_is_hashed=True,
            storage="store",
            home=alice_home,
            permissions=ALL_PERMISSIONS,
        ),
        "reader": UserConfig(
            name="reader",
            password=READER_PASSWORD,
            password_is_hashed=False,
            storage="store",
            home="",
            permissions=frozenset({"list", "download"}),
        ),
    }
    if users is None:
        users = default_users
    server_settings: dict[str, Any] = {
        "ftp_listen": ("tcp:0:interface=127.0.0.1",),
        "sftp_listen": ("tcp:0:interface=127.0.0.1",),
        "ssh_host_keys": host_keys(),
        "passive_ports": TEST_PASSIVE_PORTS,
        # Tests log in with wrong passwords on purpose; no growing delays
        # unless a test asks for them.
        "login_failure_delay": 0.0,
        "login_max_failures": 0,
        # Never the default 127.0.0.1:9121; admin tests ask for tcp:0.
        "admin_listen": "",
        # The stop at cleanup drains: a transfer a test left running is
        # interrupted after 2 s, not the default 60.
        "drain_timeout": 2,
        **server_overrides,
    }
    server = ServerConfig(state_dir=state, **server_settings)
    config = Config(
        source=None,
        server=server,
        transfer=TransferConfig(
            part_size=part_size,
            parts_in_flight=parts_in_flight,
            threads=8,
            resume_uploads=resume_uploads,
            **(transfer_overrides or {}),
        ),
        storages={"store": inspector.storage(), **(storages or {})},
        users=users,
        notices=(),
    )
    service = makeService(config, reactor)
    for listener in service.ftp.listeners:
        listener.factory.data_timeout = data_timeout
    service.startService()
    testcase.addCleanup(lambda: service.running and service.stopService())

    async def ready() -> Gateway:
        ports = await service.ready()
        sftp_port = 0
        if service.sftp is not None:
            listener = service.sftp.listeners[0]
            await listener.listening
            sftp_port = listener.port.getHost().port
        gateway = Gateway(service, inspector, ports[0].getHost().port, sftp_port)
        if service.admin is not None:
            admin = await service.admin.listening
            gateway.admin_port = admin.getHost().port
        return gateway

    return Deferred.fromCoroutine(ready())


def in_thread(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Run a blocking client call off the reactor thread."""
    return deferToThread(f, *args, **kwargs)


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
