"""
SFTP end to end with the clients people use: OpenSSH's sftp (password in
batch mode, and a key), curl (libssh2), rclone's SFTP backend and lftp,
against a real gateway over a local store and over the fake COS server.
Every result is checked byte for byte, in the downloaded files and in the
store itself (read by the inspector, not through the gateway).

Clients run as subprocesses in threads so the reactor keeps serving them;
each is bounded by a timeout, and every wait is a poll with a deadline.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import paramiko
from twisted.conch.ssh.common import NS, getNS
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from cosgw.config import ALL_PERMISSIONS, UserConfig
from cosgw.vfs import is_reserved
from tests.harness import PASSWORD, MiB, in_thread, random_bytes, sha256, start_gateway

#: Bound on any one client run.
CLIENT_TIMEOUT = 60.0

TOOLS = ("sftp", "ssh", "ssh-keygen", "curl", "rclone", "lftp")
MISSING = [t for t in TOOLS if shutil.which(t) is None]


def wait_until(
    predicate: Callable[[], bool], seconds: float = 20, what: str = ""
) -> None:
    """Poll C{predicate} (in a thread) until true, or fail at the deadline."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    timeout: float = CLIENT_TIMEOUT,
) -> defer.Deferred[subprocess.CompletedProcess]:
    """
    Run a client off the reactor thread, bounded in time.  A client still
    running at the deadline is killed and reported as a failed run (exit
    status -9, what it wrote so far, and a note), so the test's assertion
    shows what happened.
    """

    def bounded() -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            note = f"\n[killed: still running after {timeout:.0f} s]".encode()
            return subprocess.CompletedProcess(
                args, -9, e.stdout or b"", (e.stderr or b"") + note
            )

    return in_thread(bounded)


def lftp_sftp(
    port: int,
    commands: str,
    env: dict[str, str],
    cwd: Path,
    ssh_options: str = "",
) -> defer.Deferred[subprocess.CompletedProcess]:
    """
    Run lftp's C{commands} over sftp:// as alice with her password, through
    OpenSSH (lftp's sftp is an ssh subprocess) told to trust nothing on the
    host and to try nothing but the password; C{ssh_options} add to it
    (e.g. C{-c CIPHER}).  One retry at most, so a failure shows.
    """
    connect = (
        f"ssh -a -x {ssh_options} -F /dev/null -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o IdentityAgent=none "
        "-o PubkeyAuthentication=no"
    )
    script = (
        "set sftp:auto-confirm yes; "
        f'set sftp:connect-program "{connect}"; '
        "set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 15; "
        f"{commands}; bye"
    )
    return run(
        ["lftp", "-u", f"alice,{PASSWORD}", "-e", script, f"sftp://127.0.0.1:{port}"],
        env,
        cwd,
    )


def openssh_options(port: int) -> list[str]:
    """No user config, agent or known_hosts for OpenSSH's clients."""
    return [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentityAgent=none",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=15",
        "-P",
        str(port),
    ]


def tree_files(root: Path) -> dict[str, bytes]:
    """Every file under C{root}: relative path (with /) -> content."""
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def content_keys(keys: list[str]) -> list[str]:
    """
    Keys without the markers of client-set times under the metadata prefix
    (clients that set a file's time after an upload make one); nothing of
    the gateway's is left among the user's keys.
    """
    return [k for k in keys if not is_reserved(k)]


def ancestors(paths: list[str]) -> set[str]:
    """Directory keys ("a/", "a/b/") of every path in C{paths}."""
    dirs = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]) + "/")
    return dirs


def raw_sftp_write(
    port: int, name: bytes, data: bytes, padding: bytes, overstate: int = 0
) -> tuple[Any, Any]:
    """
    Speak SFTP by hand (paramiko only for SSH): open C{name}, send one
    WRITE whose packet carries C{padding} after the data string (as
    pkg/sftp's concurrent writer does after a short read), close.  With
    C{overstate}, the data string claims that many bytes more than it has.

    @return: the replies to WRITE and CLOSE, each (type, id, status code)
        or a string saying that none came.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=15)
        transport.auth_password("alice", PASSWORD)
        channel = transport.open_session(timeout=15)
        channel.settimeout(5)
        channel.invoke_subsystem("sftp")

        def send(kind: int, body: bytes) -> None:
            channel.sendall(struct.pack("!LB", len(body) + 1, kind) + body)

        def exactly(n: int) -> bytes:
            got = b""
            while len(got) < n:
                block = channel.recv(n - len(got))
                if not block:
                    raise EOFError("the server closed the channel")
                got += block
            return got

        def receive() -> tuple[int, bytes]:
            (length,) = struct.unpack("!L", exactly(4))
            body = exactly(length)
            return body[0], body[1:]

        def reply(what: str) -> Any:
            try:
                kind, body = receive()
            except (TimeoutError, EOFError) as e:
                return f"no reply to {what}: {e!r}"
            request, code = struct.unpack("!LL", body[:8])
            return kind, request, code

        send(1, struct.pack("!L", 3))  # INIT
        assert receive()[0] == 2  # VERSION
        flags = 0x02 | 0x08 | 0x10  # WRITE | CREAT | TRUNC
        send(3, struct.pack("!L", 1) + NS(name) + struct.pack("!LL", flags, 0))
        kind, body = receive()
        assert kind == 102, (kind, body)  # HANDLE
        handle, _ = getNS(body[4:])
        send(
            6,
            struct.pack("!L", 2)
            + NS(handle)
            + struct.pack("!QL", 0, len(data) + overstate)
            + data
            + padding,
        )
        written = reply("WRITE")
        send(4, struct.pack("!L", 3) + NS(handle))
        closed = reply("CLOSE")
        return written, closed
    finally:
        transport.close()


class ClientTestsBase:
    kind = "local"
    timeout = 180

    skip = f"clients missing: {', '.join(MISSING)}" if MISSING else None

    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="cosgw-sftp-clients-"))
        self.addCleanup(shutil.rmtree, self.work, True)  # type: ignore[attr-defined]
        self.home = self.work / "home"
        self.home.mkdir()
        askpass = self.work / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\necho '{PASSWORD}'\n")
        askpass.chmod(0o700)
        # A home of its own: no ~/.ssh keys, known_hosts or rclone config.
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "DISPLAY": ":0",
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "RCLONE_CONFIG": str(self.work / "rclone.conf"),
        }

    @defer.inlineCallbacks
    def start(self, users: Optional[dict[str, UserConfig]] = None) -> Any:
        gw = yield start_gateway(self, self.kind, users=users)
        # Runs before the gateway stops (cleanups run last-in first-out).
        self.addCleanup(self.connections_closed, gw)  # type: ignore[attr-defined]
        return gw

    @defer.inlineCallbacks
    def connections_closed(self, gw: Any, seconds: float = 15) -> Any:
        """Every client has gone and the gateway has seen each connection end."""
        deadline = reactor.seconds() + seconds
        while gw.service.limits.total:
            if reactor.seconds() > deadline:
                raise AssertionError(
                    f"{gw.service.limits.total} connection(s) still open"
                )
            yield deferLater(reactor, 0.02, lambda: None)

    def file(self, name: str, data: bytes) -> Path:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def sftp_batch(
        self, gw: Any, commands: str, *options: str
    ) -> defer.Deferred[subprocess.CompletedProcess]:
        batch = self.work / f"batch-{time.monotonic_ns()}"
        batch.write_text(commands)
        args = [
            "sftp",
            *openssh_options(gw.sftp_port),
            *options,
            "-b",
            str(batch),
            "alice@127.0.0.1",
        ]
        return run(args, self.env, self.work)

    def password_sftp(
        self, gw: Any, commands: str
    ) -> defer.Deferred[subprocess.CompletedProcess]:
        # BatchMode=no before -b, or sftp refuses to ask for a password.
        return self.sftp_batch(
            gw,
            commands,
            "-o",
            "BatchMode=no",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
        )


class BothStoresTestsMixin(ClientTestsBase):
    """Run over a local store and over the fake COS."""

    # -- OpenSSH sftp, password, batch mode -----------------------------------

    @defer.inlineCallbacks
    def test_openssh_password_batch(self) -> Any:
        gw = yield self.start()
        data = random_bytes(9 * MiB)
        source = self.file("big.bin", data)
        fetched = self.work / "fetched.bin"
        result = yield self.password_sftp(
            gw,
            f"mkdir d\nput {source} d/big.bin\nls -l d\nget d/big.bin {fetched}\n"
            "rename d/big.bin d/renamed.bin\nls -l d\n",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        out = result.stdout.decode()
        self.assertIn(f"{9 * MiB}", out)
        self.assertIn("big.bin", out)
        self.assertIn("renamed.bin", out)
        self.assertEqual(sha256(fetched.read_bytes()), sha256(data))
        keys = yield in_thread(gw.inspector.keys)
        self.assertEqual(keys, ["d/", "d/renamed.bin"])
        stored = yield in_thread(gw.inspector.read, "d/renamed.bin")
        self.assertEqual(sha256(stored), sha256(data))

        result = yield self.password_sftp(gw, "rm d/renamed.bin\nrmdir d\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        keys = yield in_thread(gw.inspector.keys)
        self.assertEqual(keys, [])
        pending = yield in_thread(gw.inspector.pending_uploads)
        self.assertEqual(pending, [])

    # -- OpenSSH sftp, key only -----------------------------------------------

    @defer.inlineCallbacks
    def test_openssh_key_put_get_reput_reget(self) -> Any:
        key = self.work / "id_ed25519"
        done = yield run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            self.env,
            self.work,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        key_type, blob = Path(str(key) + ".pub").read_text().split()[:2]
        users = {
            "alice": UserConfig(
                name="alice",
                password=None,
                password_is_hashed=False,
                storage="store",
                home="",
                permissions=ALL_PERMISSIONS,
                authorized_keys=(f"{key_type} {blob}",),
            )
        }
        gw = yield self.start(users)
        data = random_bytes(5 * MiB + 12345)
        source = self.file("payload.bin", data)
        head = self.file("head.bin", data[: 2 * MiB + 7])
        partial = self.file("partial.bin", data[: 3 * MiB + 1])
        fetched = self.work / "fetched.bin"
        key_options = (
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-i",
            str(key),
        )
        result = yield self.sftp_batch(
            gw,
            f"put {source} whole.bin\nget whole.bin {fetched}\n"
            f"put {head} resumed.bin\nreput {source} resumed.bin\n"
            f"reget whole.bin {partial}\n",
            *key_options,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sha256(fetched.read_bytes()), sha256(data))
        self.assertEqual(sha256(partial.read_bytes()), sha256(data))
        for name in ("whole.bin", "resumed.bin"):
            stored = yield in_thread(gw.inspector.read, name)
            self.assertEqual(sha256(stored), sha256(data), name)
        keys = yield in_thread(gw.inspector.keys)
        self.assertEqual(keys, ["resumed.bin", "whole.bin"])
        self.assertEqual((yield in_thread(gw.inspector.pending_uploads)), [])

        # The key is the only way in: alice has no password.
        result = yield self.password_sftp(gw, "pwd\n")
        self.assertNotEqual(result.returncode, 0)

    # -- rclone's SFTP backend ------------------------------------------------

    def rclone_tree(self) -> Path:
        """200 small files (0..64 KiB, some in subdirectories) and a big one."""
        root = self.work / "tree"
        rng = random.Random(20240607)
        dirs = ["", "a", "a/b", "c", "deep/x/y", "with space"]
        sizes = [0, 1, 4095, 4096, 65535, 65536]
        for i in range(200):
            size = sizes[i] if i < len(sizes) else rng.randint(0, 64 * 1024)
            directory = dirs[i % len(dirs)]
            name = f"f{i:03d}.bin" if i % 17 else f"n{i:03d} é.txt"
            path = root / directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(random_bytes(size))
        (root / "c" / "large.bin").write_bytes(random_bytes(40 * MiB))
        return root

    def rclone(
        self, gw: Any, obscured: str, *args: str
    ) -> defer.Deferred[subprocess.CompletedProcess]:
        """rclone with an on-the-fly C{:sftp:} remote for alice on C{gw}."""
        return run(
            [
                "rclone",
                *args,
                "--sftp-disable-hashcheck",
                "--sftp-shell-type",
                "none",
                "--transfers",
                "4",
                "--checkers",
                "4",
                "--retries",
                "1",
                "--low-level-retries",
                "1",
                "--contimeout",
                "15s",
                # Idle I/O: a request the server never answers fails the run
                # in seconds instead of hanging it.
                "--timeout",
                "15s",
            ],
            {
                **self.env,
                "RCLONE_SFTP_HOST": "127.0.0.1",
                "RCLONE_SFTP_PORT": str(gw.sftp_port),
                "RCLONE_SFTP_USER": "alice",
                "RCLONE_SFTP_PASS": obscured,
            },
            self.work,
            # A copy to the fake COS takes ~30 s here.
            timeout=90,
        )

    @defer.inlineCallbacks
    def test_rclone_copy_check_and_back(self) -> Any:
        gw = yield self.start()
        result = yield run(["rclone", "obscure", PASSWORD], self.env, self.work)
        self.assertEqual(result.returncode, 0, result.stderr)
        obscured = result.stdout.decode().strip()
        root = yield in_thread(self.rclone_tree)
        local = tree_files(root)
        self.assertEqual(len(local), 201)

        result = yield self.rclone(gw, obscured, "copy", str(root), ":sftp:tree")
        self.assertEqual(result.returncode, 0, result.stderr)
        result = yield self.rclone(
            gw, obscured, "check", "--download", str(root), ":sftp:tree"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"0 differences found", result.stderr)
        self.assertIn(b"201 matching files", result.stderr)

        # What is really stored: those files, byte for byte, and directories.
        keys = content_keys((yield in_thread(gw.inspector.keys)))
        expected = {"tree/" + p for p in local}
        self.assertEqual({k for k in keys if not k.endswith("/")}, expected)
        self.assertEqual(
            {k for k in keys if k.endswith("/")}, ancestors(sorted(expected))
        )

        def stored_matches() -> list[str]:
            return [
                p
                for p, content in local.items()
                if sha256(gw.inspector.read("tree/" + p)) != sha256(content)
            ]

        self.assertEqual((yield in_thread(stored_matches)), [])
        self.assertEqual((yield in_thread(gw.inspector.pending_uploads)), [])

        back = self.work / "back"
        result = yield self.rclone(gw, obscured, "copy", ":sftp:tree", str(back))
        self.assertEqual(result.returncode, 0, result.stderr)
        copied = yield in_thread(tree_files, back)
        self.assertEqual(sorted(copied), sorted(local))
        self.assertEqual(
            [p for p in local if sha256(copied[p]) != sha256(local[p])], []
        )

    # -- a session killed in the middle of an upload --------------------------

    @defer.inlineCallbacks
    def test_killed_session_aborts_upload(self) -> Any:
        gw = yield self.start()
        source = self.file("killed.bin", random_bytes(64 * MiB))
        batch = self.work / "kill-batch"
        batch.write_text(f"put {source} killed.bin\n")
        args = [
            "sftp",
            *openssh_options(gw.sftp_port),
            "-o",
            "BatchMode=no",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            # 16 Mbit/s: the upload runs for half a minute unless killed.
            "-l",
            "16000",
            "-b",
            str(batch),
            "alice@127.0.0.1",
        ]
        inspector = gw.inspector

        def kill_midway() -> None:
            proc = subprocess.Popen(
                args,
                cwd=self.work,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                wait_until(
                    lambda: inspector.stored_parts() >= 2,
                    what="parts of the upload in the store",
                )
                self.assertIsNone(proc.poll(), "the upload finished before the kill")
            finally:
                # sftp and its ssh: nothing closes the SFTP handle.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)

        yield in_thread(kill_midway)

        def aborted() -> bool:
            return (
                inspector.pending_uploads() == []
                and inspector.stored_parts() == 0
                and not registry._active
            )

        registry = gw.service.accounts.registry
        yield in_thread(wait_until, aborted, 20, "the upload to be aborted")
        keys = yield in_thread(inspector.keys)
        self.assertNotIn("killed.bin", keys)
        self.assertEqual(keys, [])


class LocalOnlyTestsMixin(ClientTestsBase):
    """
    Clients and protocol details whose path through the gateway does not
    depend on the store; run over a local store only, to keep the module
    fast (the fake COS costs ~80 ms of moto per request here).
    """

    # -- curl (libssh2) -------------------------------------------------------

    @defer.inlineCallbacks
    def test_curl_upload_download_range(self) -> Any:
        gw = yield self.start()
        data = random_bytes(3 * MiB + 333)
        source = self.file("curl.bin", data)
        url = f"sftp://127.0.0.1:{gw.sftp_port}/curl.bin"
        base = ["curl", "-sS", "--insecure", "-u", f"alice:{PASSWORD}"]
        result = yield run([*base, "-T", str(source), url], self.env, self.work)
        self.assertEqual(result.returncode, 0, result.stderr)
        stored = yield in_thread(gw.inspector.read, "curl.bin")
        self.assertEqual(sha256(stored), sha256(data))

        result = yield run([*base, url], self.env, self.work)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sha256(result.stdout), sha256(data))

        result = yield run([*base, "-r", "100-199", url], self.env, self.work)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, data[100:200])

        tail = 2 * MiB + 5
        result = yield run([*base, "-r", f"{tail}-", url], self.env, self.work)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sha256(result.stdout), sha256(data[tail:]))

    # -- lftp over SFTP -------------------------------------------------------

    @defer.inlineCallbacks
    def test_lftp_mirror_both_ways(self) -> Any:
        gw = yield self.start()
        root = self.work / "up"
        rng = random.Random(7)
        for i in range(24):
            directory = ("", "s", "s/t", "u")[i % 4]
            path = root / directory / f"m{i:02d}.dat"
            path.parent.mkdir(parents=True, exist_ok=True)
            size = (0, 1, 300_000, 2 * MiB + 3)[i] if i < 4 else rng.randint(0, 90_000)
            path.write_bytes(random_bytes(size))
        local = tree_files(root)
        down = self.work / "down"
        result = yield lftp_sftp(
            gw.sftp_port,
            f"mirror -R {root} /mirrored; mirror /mirrored {down}",
            self.env,
            self.work,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        copied = yield in_thread(tree_files, down)
        self.assertEqual(sorted(copied), sorted(local))
        self.assertEqual(
            [p for p in local if sha256(copied[p]) != sha256(local[p])], []
        )

        def stored() -> dict[str, str]:
            return {
                k: sha256(gw.inspector.read(k))
                for k in content_keys(gw.inspector.keys("mirrored/"))
                if not k.endswith("/")
            }

        self.assertEqual(
            (yield in_thread(stored)),
            {"mirrored/" + p: sha256(c) for p, c in local.items()},
        )

    # -- a WRITE packet longer than its data ----------------------------------

    @defer.inlineCallbacks
    def test_write_packet_with_trailing_bytes(self) -> Any:
        """
        pkg/sftp 1.13.5 (Debian's rclone 1.60) sends, after a short read of
        its source, WRITE packets whose length covers its whole 32 KiB
        buffer while the data string holds only what was read.  OpenSSH's
        sftp-server skips what follows a request's fields; so must the
        gateway, and it must answer every request.
        """
        gw = yield self.start()
        data = random_bytes(4096)
        written, closed = yield in_thread(
            raw_sftp_write,
            gw.sftp_port,
            b"padded.bin",
            data,
            bytes(16),
        )
        self.assertEqual(written, (101, 2, 0))  # STATUS, request 2, FX_OK
        self.assertEqual(closed, (101, 3, 0))
        stored = yield in_thread(gw.inspector.read, "padded.bin")
        self.assertEqual(stored, data)

    @defer.inlineCallbacks
    def test_write_shorter_than_declared_is_a_bad_message(self) -> Any:
        """
        A WRITE whose data string is cut short is answered BAD_MESSAGE (not
        stored short and acknowledged, not left unanswered); the session
        goes on and the file holds none of it.
        """
        gw = yield self.start()
        written, closed = yield in_thread(
            raw_sftp_write, gw.sftp_port, b"cut.bin", random_bytes(100), b"", 16
        )
        self.assertEqual(written, (101, 2, 5))  # STATUS, request 2, BAD_MESSAGE
        self.assertEqual(closed, (101, 3, 0))
        stored = yield in_thread(gw.inspector.read, "cut.bin")
        self.assertEqual(stored, b"")


class LocalSFTPClientTests(
    BothStoresTestsMixin, LocalOnlyTestsMixin, unittest.TestCase
):
    kind = "local"


class CosSFTPClientTests(BothStoresTestsMixin, unittest.TestCase):
    kind = "cos"
