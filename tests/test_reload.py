"""
Config reload (L{cosgw.lifecycle.reload}) on gateways built by makeService
from a real config file, driven by real clients (ftplib, paramiko) over
127.0.0.1: users added, removed and changed, passwords (hashed and plain),
SSH keys, quotas and session limits for new sessions only, connection
limits, the defender's bans kept, a refused file that changes nothing, the
changes that need a restart, coalesced reloads, systemd's RELOADING/READY,
and C{POST /api/reload} with C{cosgw reload}.  The real SIGHUP is in
tests/test_reload_process.py, the certificate and log level in
tests/test_reload_tls.py.
"""

from __future__ import annotations

import ftplib
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from cosgw.config import load_config
from cosgw.service import GatewayService, makeService
from tests.admintesting import request
from tests.authtesting import cached_hash
from tests.clitesting import cosgw
from tests.harness import in_thread, start_gateway
from tests.logevents import LogEvents
from tests.processtesting import scratch
from tests.sshtesting import key_login, password_login, public_line, user_key
from tests.test_systemd import Listening

#: Seconds a client waits for an answer.
CLIENT_TIMEOUT = 20
#: Passive ports of these tests' gateways.
PASSIVE = "63000-63499"

ALICE_OLD, ALICE_NEW = "alice-old-pw", "alice-new-pw"
BOB_OLD, BOB_NEW = "bob-plain-old", "bob-plain-new"
CAROL = "carol-pw"
DAVE = "dave-pw"


def users_text(
    alice: str = ALICE_OLD, bob: str = BOB_OLD, carol: bool = True, extra: str = ""
) -> str:
    """alice (hashed password, 1M quota), bob (plain, 4K quota), carol."""
    text = f"""
[user:alice]
password = {cached_hash(alice)}
storage = files
quota_bytes = 1M

[user:bob]
password = {bob}
storage = files
quota_bytes = 4K
"""
    if carol:
        text += f"\n[user:carol]\npassword = {cached_hash(CAROL)}\nstorage = files\n"
    return text + extra


def host_key(directory: Path) -> Path:
    """An Ed25519 host key (RSA would take seconds to make)."""
    path = directory / "ssh_host_ed25519_key"
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def config_text(
    root: Path,
    server: Optional[dict[str, str]] = None,
    users: Optional[str] = None,
    storages: str = "",
) -> str:
    """
    A gateway on 127.0.0.1 (every port picked by the system) over
    root/data; C{server} overrides or adds [server] keys.
    """
    keys = {
        "state_dir": str(root / "state"),
        "ftp_listen": "tcp:0:interface=127.0.0.1",
        "ftps_listen": "tcp:0:interface=127.0.0.1",
        "sftp_listen": "tcp:0:interface=127.0.0.1",
        "ssh_host_keys": str(root / "ssh_host_ed25519_key"),
        "passive_ports": PASSIVE,
        "admin_listen": "",
        "login_failure_delay": "0",
        "login_max_failures": "0",
        **(server or {}),
    }
    lines = "".join(f"{key} = {value}\n" for key, value in keys.items())
    storage = f"[storage:files]\ntype = local\npath = {root / 'data'}\n"
    return f"[server]\n{lines}\n{storage}{storages}{users or users_text()}"


class Gateway:
    """A gateway started from C{path}, and its ports."""

    def __init__(self, service: GatewayService, path: Path) -> None:
        self.service = service
        self.path = path
        self.ftp = self.ftps = self.sftp = self.admin = 0

    @property
    def root(self) -> Path:
        return self.path.parent

    def write(self, text: str) -> None:
        self.path.write_text(text, encoding="utf-8")

    def reload(self, trigger: str = "test") -> Deferred[Any]:
        assert self.service.reloader is not None
        return self.service.reloader.reload(trigger)


async def start(
    testcase: Any,
    server: Optional[dict[str, str]] = None,
    root: Optional[Path] = None,
) -> Gateway:
    """
    A gateway from a config file (L{config_text} with C{server}) written in
    C{root}, a new directory by default.
    """
    root = root or scratch(testcase, "cosgw-reload-")
    host_key(root)
    path = root / "cosgw.ini"
    path.write_text(config_text(root, server), encoding="utf-8")
    service = makeService(load_config(path), reactor)
    service.startService()
    testcase.addCleanup(lambda: service.running and service.stopService())
    gateway = Gateway(service, path)
    assert service.ftp is not None and service.sftp is not None
    gateway.ftp = (await service.ready())[0].getHost().port
    implicit = await service.ftp.implicit_listeners[0].listening
    gateway.ftps = implicit.getHost().port
    gateway.sftp = (await service.sftp.listeners[0].listening).getHost().port
    if service.admin is not None:
        gateway.admin = (await service.admin.listening).getHost().port
    return gateway


def connect(port: int) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    return ftp


def login(port: int, user: str, password: str) -> ftplib.FTP:
    """A logged-in FTP session (the caller quits it)."""
    ftp = connect(port)
    ftp.login(user, password)
    return ftp


def login_reply(port: int, user: str, password: str) -> str:
    """What the gateway answers a connection and login, whatever it is."""
    try:
        ftp = connect(port)
    except ftplib.Error as e:
        return str(e)
    try:
        return ftp.login(user, password)
    except ftplib.Error as e:
        return str(e)
    finally:
        ftp.close()


def store(ftp: ftplib.FTP, name: str, data: bytes) -> str:
    """STOR C{data}; the final reply, whatever it is."""
    try:
        return ftp.storbinary(f"STOR {name}", io.BytesIO(data))
    except ftplib.Error as e:
        return str(e)


def sftp_refused(port: int, user: str, password: str) -> bool:
    try:
        password_login(port, user, password)
    except paramiko.AuthenticationException:
        return True
    return False


def key_refused(port: int, user: str, key: Path) -> bool:
    try:
        key_login(port, user, key)
    except paramiko.AuthenticationException:
        return True
    return False


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key (ECDSA: quick to make)."""
    from cosgw.frontends.ftp.tls import generate_self_signed

    return generate_self_signed(directory)


class UsersTests(unittest.TestCase):
    timeout = 120

    async def test_users_passwords_and_keys(self) -> None:
        """
        A user added (with a password and a key), two passwords changed
        (hashed, plain), one user removed: the next logins meet the new
        file, over FTP and SFTP; a session opened before goes on; one info
        line names the users, never a password.
        """
        gw = await start(self)
        events = LogEvents(self, "cosgw.reload")
        key = user_key("ed25519")
        dave = (
            f"\n[user:dave]\npassword = {cached_hash(DAVE)}\nstorage = files\n"
            f"authorized_keys = {public_line(key)}\n"
        )
        before = await in_thread(login, gw.ftp, "carol", CAROL)
        self.addCleanup(before.close)
        self.assertTrue(await in_thread(key_refused, gw.sftp, "dave", key))
        new_users = users_text(ALICE_NEW, BOB_NEW, carol=False, extra=dave)
        gw.write(config_text(gw.root, users=new_users))

        result = await gw.reload()

        self.assertEqual(result.status, "applied")
        self.assertEqual(
            result.changes,
            (
                "users added: dave",
                "users removed: carol",
                "users changed: alice (password), bob (password)",
            ),
        )
        self.assertEqual(result.needs_restart, ())
        for user, old, new in (
            ("alice", ALICE_OLD, ALICE_NEW),
            ("bob", BOB_OLD, BOB_NEW),
        ):
            refused = await in_thread(login_reply, gw.ftp, user, old)
            self.assertTrue(refused.startswith("530"), refused)
            accepted = await in_thread(login_reply, gw.ftp, user, new)
            self.assertTrue(accepted.startswith("230"), accepted)
            self.assertTrue(await in_thread(sftp_refused, gw.sftp, user, old))
            self.assertEqual(await in_thread(password_login, gw.sftp, user, new), "/")
        accepted = await in_thread(login_reply, gw.ftp, "dave", DAVE)
        self.assertTrue(accepted.startswith("230"), accepted)
        self.assertEqual(await in_thread(password_login, gw.sftp, "dave", DAVE), "/")
        self.assertEqual(
            (await in_thread(key_login, gw.sftp, "dave", key))["root"], "/"
        )
        refused = await in_thread(login_reply, gw.ftp, "carol", CAROL)
        self.assertTrue(refused.startswith("530"), refused)
        # carol's session from before the reload goes on.
        data = os.urandom(1000)
        self.assertEqual(
            await in_thread(store, before, "still.bin", data), "226 Transfer complete"
        )
        self.assertEqual((gw.root / "data" / "still.bin").read_bytes(), data)
        [line] = events.at(LogLevel.info)
        text = formatEvent(line)
        self.assertIn(f"reload (test) of {gw.path}: users added: dave;", text)
        for secret in (ALICE_NEW, BOB_OLD, BOB_NEW, DAVE, cached_hash(ALICE_NEW)):
            self.assertNotIn(secret, text)
        self.assertEqual(events.at(LogLevel.warn) + events.at(LogLevel.error), [])

    async def test_quota_and_sessions_for_new_logins_only(self) -> None:
        """
        A quota raised applies to the sessions that log in after; one
        opened before keeps the quota it logged in with.  A quota that did
        not change keeps its live usage object; session counts carry over,
        so a lowered max_sessions counts the sessions opened before.
        """
        gw = await start(self)
        accounts = gw.service.accounts
        assert accounts is not None
        alice_usage = accounts.accounts["alice"].usage
        old_session = await in_thread(login, gw.ftp, "bob", BOB_OLD)
        self.addCleanup(old_session.close)
        alice = await in_thread(login, gw.ftp, "alice", ALICE_OLD)
        self.addCleanup(alice.close)
        new_users = users_text().replace("quota_bytes = 4K", "quota_bytes = 1M")
        new_users = new_users.replace(
            "quota_bytes = 1M\n\n[user:bob]",
            "quota_bytes = 1M\nmax_sessions = 1\n\n[user:bob]",
        )
        gw.write(config_text(gw.root, users=new_users))

        result = await gw.reload()

        self.assertEqual(
            result.changes,
            ("users changed: alice (max_sessions), bob (quota_bytes)",),
        )
        self.assertIs(accounts.accounts["alice"].usage, alice_usage)
        data = os.urandom(8 * 1024)
        refused = await in_thread(store, old_session, "old.bin", data)
        self.assertTrue(refused.startswith("552"), refused)
        new_session = await in_thread(login, gw.ftp, "bob", BOB_OLD)
        self.addCleanup(new_session.close)
        self.assertEqual(
            await in_thread(store, new_session, "new.bin", data),
            "226 Transfer complete",
        )
        self.assertEqual((gw.root / "data" / "new.bin").read_bytes(), data)
        self.assertFalse((gw.root / "data" / "old.bin").exists())
        refused = await in_thread(login_reply, gw.ftp, "alice", ALICE_OLD)
        self.assertTrue(refused.startswith("421"), refused)
        self.assertIn("too many sessions for alice (1)", refused)

    async def test_connection_limits_and_bans(self) -> None:
        """
        max_connections lowered to the connections open refuses the next
        one (none is cut); the defender keeps its bans and counts the next
        failures with the new settings.
        """
        policy = {"login_max_failures": "2", "login_ban_time": "600"}
        gw = await start(self, server=policy)
        defender = gw.service.defender
        assert defender is not None
        for _ in range(2):
            defender.failed("192.0.2.7", "x")
        open_session = await in_thread(login, gw.ftp, "carol", CAROL)
        self.addCleanup(open_session.close)
        policy = {
            "login_max_failures": "3",
            "login_ban_time": "60",
            "max_connections": "1",
        }
        gw.write(config_text(gw.root, server=policy))

        result = await gw.reload()

        self.assertEqual(
            result.changes,
            (
                "[server] login_ban_time",
                "[server] login_max_failures",
                "[server] max_connections",
            ),
        )
        self.assertGreater(defender.banned("192.0.2.7"), 500)
        for _ in range(2):
            defender.failed("192.0.2.8", "x")
        self.assertEqual(defender.banned("192.0.2.8"), 0.0)
        defender.failed("192.0.2.8", "x")
        self.assertTrue(0 < defender.banned("192.0.2.8") <= 60)
        refused = await in_thread(login_reply, gw.ftp, "alice", ALICE_OLD)
        self.assertEqual(refused, "421 Too many connections (1), try again later")
        self.assertTrue(
            (await in_thread(open_session.voidcmd, "NOOP")).startswith("200")
        )


class RefusedTests(unittest.TestCase):
    timeout = 120

    async def test_broken_files_keep_the_running_config(self) -> None:
        """
        A key with a bad value, a certificate that cannot be read, a key
        that does not match the certificate: each reload fails with one
        error line saying why, and changes nothing.
        """
        gw = await start(self)
        root = gw.root
        other = await in_thread(certificate, root / "other")
        mine = await in_thread(certificate, root / "mine")
        cases = [
            ({"max_connections": "lots"}, "[server] max_connections"),
            (
                {"tls_certificate": str(root / "missing.pem"), "tls_key": str(mine[1])},
                "tls_certificate",
            ),
            (
                {"tls_certificate": str(mine[0]), "tls_key": str(other[1])},
                "does not match",
            ),
        ]
        dave = f"\n[user:dave]\npassword = {DAVE}\nstorage = files\n"
        for server, reason in cases:
            events = LogEvents(self, "cosgw.reload")
            gw.write(config_text(root, server=server, users=users_text(extra=dave)))
            result = await gw.reload()
            self.assertEqual(result.status, "failed")
            self.assertIn(reason, result.error)
            [line] = events.events
            self.assertEqual(line["log_level"], LogLevel.error)
            text = formatEvent(line)
            self.assertNotIn("\n", text)
            self.assertTrue(
                text.startswith("reload (test) failed, the running config is kept: "),
                text,
            )
            self.assertIn(reason, text)
            refused = await in_thread(login_reply, gw.ftp, "dave", DAVE)
            self.assertTrue(refused.startswith("530"), refused)
            accepted = await in_thread(login_reply, gw.ftp, "bob", BOB_OLD)
            self.assertTrue(accepted.startswith("230"), accepted)

    async def test_needs_restart(self) -> None:
        """
        A listener, the passive range and a storage change only with a
        restart: one warning names them, and the rest applies; a user on
        the new storage waits for the restart.
        """
        gw = await start(self)
        events = LogEvents(self, "cosgw.reload")
        extra = f"\n[storage:extra]\ntype = local\npath = {gw.root / 'extra'}\n"
        erin = "\n[user:erin]\npassword = erin-pw\nstorage = extra\n"
        server = {
            "max_connections": "50",
            "ftp_listen": "tcp:0:interface=127.0.0.2",
            "passive_ports": "63500-63599",
        }
        gw.write(config_text(gw.root, server, users_text(extra=erin), storages=extra))

        result = await gw.reload()

        self.assertEqual(result.changes, ("[server] max_connections",))
        waiting = (
            "user erin (storage extra)",
            "[server] ftp_listen",
            "[server] passive_ports",
            "[storage:extra] storage",
        )
        self.assertEqual(result.needs_restart, waiting)
        [warning] = events.at(LogLevel.warn)
        self.assertIn(
            "not applied until a restart: " + ", ".join(waiting), formatEvent(warning)
        )
        refused = await in_thread(login_reply, gw.ftp, "erin", "erin-pw")
        self.assertTrue(refused.startswith("530"), refused)
        # The next reload still names what waits, and nothing as changed.
        again = await gw.reload()
        self.assertEqual((again.status, again.changes), ("unchanged", ()))
        self.assertEqual(again.needs_restart, waiting)

    async def test_no_config_file(self) -> None:
        """A gateway started without a file has nothing to reload: one line."""
        gw = await start_gateway(self, "local")
        events = LogEvents(self, "cosgw.reload")
        result = await gw.service.reloader.reload("SIGHUP")
        self.assertEqual(
            (result.status, result.error),
            ("failed", "started without --config: no file to reload"),
        )
        [line] = events.events
        self.assertEqual(
            formatEvent(line),
            "reload (SIGHUP) failed, the running config is kept:"
            " started without --config: no file to reload",
        )


class RunsTests(unittest.TestCase):
    timeout = 120

    async def test_coalesced(self) -> None:
        """
        Reloads asked for while one runs wait for it, then share one more
        run: three requests, two runs, one after the other.
        """
        gw = await start(self)
        events = LogEvents(self, "cosgw.reload")
        gw.write(config_text(gw.root, {"max_connections": "7"}))
        first, second, third = gw.reload("a"), gw.reload("b"), gw.reload("c")
        results = await gatherResults([first, second, third])
        self.assertEqual([r.trigger for r in results], ["a", "b, c", "b, c"])
        self.assertIs(results[1], results[2])
        self.assertEqual(results[0].changes, ("[server] max_connections",))
        self.assertEqual((results[1].status, results[1].changes), ("unchanged", ()))
        self.assertEqual(len(events.at(LogLevel.info)), 2)

    async def test_systemd_reloading_then_ready(self) -> None:
        """RELOADING=1 with MONOTONIC_USEC (sd_notify(3)), then READY=1."""
        listening = Listening(self, abstract=False)
        os.environ["NOTIFY_SOCKET"] = listening.env
        self.addCleanup(os.environ.pop, "NOTIFY_SOCKET", None)
        gw = await start(self)
        os.environ.pop("NOTIFY_SOCKET")
        await in_thread(listening.until, "READY")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        gw.write(config_text(gw.root, {"max_connections": "7"}))
        await gw.reload()
        reloading = await in_thread(listening.until, "RELOADING")
        self.assertEqual(reloading["STATUS"], "reloading the config")
        usec = int(reloading["MONOTONIC_USEC"])
        self.assertTrue(before <= usec <= before + 60_000_000, (before, usec))
        ready = await in_thread(listening.until, "READY")
        self.assertEqual(ready["STATUS"], "config reloaded")
        gw.write("not a config")
        await gw.reload()
        await in_thread(listening.until, "RELOADING")
        ready = await in_thread(listening.until, "READY")
        self.assertTrue(
            ready["STATUS"].startswith("reload failed, running the previous config: ")
        )


class AdminTests(unittest.TestCase):
    timeout = 120

    async def test_api_and_command(self) -> None:
        """
        POST /api/reload answers with the result once the reload is done;
        cosgw reload prints it (exit 0), or the refusal (exit 1).
        """
        admin = {"admin_listen": "tcp:0:interface=127.0.0.1"}
        gw = await start(self, server=admin)
        root, url = gw.root, f"http://127.0.0.1:{gw.admin}"
        gw.write(config_text(root, {**admin, "max_connections": "9"}))
        answer = await in_thread(request, gw.admin, "/api/reload", "POST")
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            json.loads(answer.body),
            {
                "status": "applied",
                "trigger": "admin API, - from 127.0.0.1",
                "config": str(gw.path),
                "changes": ["[server] max_connections"],
                "needs_restart": [],
                "error": None,
            },
        )
        self.assertEqual(
            (await in_thread(request, gw.admin, "/api/reload")).status, 405
        )
        waits = {**admin, "max_connections": "9", "passive_ports": "63500-63599"}
        gw.write(config_text(root, waits))
        done = await in_thread(cosgw, "reload", "--admin", url)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(
            done.stdout,
            f"reloaded {gw.path}: unchanged\n"
            "  needs a restart: [server] passive_ports\n",
        )
        gw.write(config_text(root, {**admin, "max_connections": "-1"}))
        refused = await in_thread(cosgw, "reload", "--admin", url, "--json")
        self.assertEqual(refused.returncode, 1)
        answer_json = json.loads(refused.stdout)
        self.assertEqual(answer_json["status"], "failed")
        self.assertIn("[server] max_connections", answer_json["error"])
        plain = await in_thread(cosgw, "reload", "--admin", url)
        self.assertEqual(plain.returncode, 1)
        self.assertTrue(
            plain.stderr.startswith(
                f"cosgw reload: refused: {gw.path}: [server] max_connections"
            ),
            plain.stderr,
        )

    async def test_admin_password_changed(self) -> None:
        """
        An admin's old password stops working at the reload that changes
        it, though the admin listener had just verified (and remembered)
        it; the new one works.
        """
        admin = {"admin_listen": "tcp:0:interface=127.0.0.1", "admin_users": "alice"}
        gw = await start(self, server=admin)
        old, new = ("alice", ALICE_OLD), ("alice", ALICE_NEW)
        for _ in range(2):
            answer = await in_thread(request, gw.admin, "/api/sessions", auth=old)
            self.assertEqual(answer.status, 200, answer.text)
        gw.write(config_text(gw.root, admin, users=users_text(ALICE_NEW)))
        self.assertEqual((await gw.reload()).status, "applied")

        refused = await in_thread(request, gw.admin, "/api/sessions", auth=old)
        accepted = await in_thread(request, gw.admin, "/api/sessions", auth=new)

        self.assertEqual(refused.status, 401, refused.text)
        self.assertEqual(accepted.status, 200, accepted.text)
        self.assertEqual(json.loads(accepted.body), {"sessions": []})
