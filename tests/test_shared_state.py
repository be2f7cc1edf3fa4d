"""
Two replicas sharing their policy through a real redis-server: two
gateway services in this process, each with its own policy objects, both
pointed at the same Redis (C{[server] shared_state}) and the same store,
driven by real clients (ftplib, paramiko) on 127.0.0.1.  Bans, session and
connection limits and quotas hold across them; Redis stopped mid-test gives
the documented C{open} and C{closed} behaviour within a bounded time, and
the rules hold again once it is back.
"""

from __future__ import annotations

import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import paramiko
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from cosgw.policy.limits import ConnectionLimits
from tests.daemons import RedisServer
from tests.harness import PASSWORD, in_thread, random_bytes
from tests.test_policy import (
    DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
    HERE,
    OTHER,
    SSHClient,
    ftp_login,
    ftp_store,
    login_reply,
    sftp_session,
    ssh_attempt,
    start,
    user,
    wait_until,
)

KiB = 1024
BAN = re.compile(
    r"421 Too many failed logins from this address; try again in (\d+) seconds"
)


class Cluster(unittest.TestCase):
    """Redis, and replicas a and b on one local store."""

    failure = "open"

    @defer.inlineCallbacks
    def replicas(self, users: Any = None, **server: Any) -> Any:
        self.redis = RedisServer(self, Path(tempfile.mkdtemp(prefix="cosgw-redis-")))
        settings = {
            "shared_state": self.redis.url,
            "shared_state_failure": self.failure,
            "users": users or {"alice": user("alice")},
            **server,
        }
        self.a = yield start(self, "local", **settings)
        self.b = yield start(
            self, "local", storages={"store": self.a.inspector.storage()}, **settings
        )
        for gw in (self.a, self.b):
            self.assertTrue(
                (yield wait_until(lambda gw=gw: bool(gw.service.shared.up)))
            )

    def sessions(self, gw: Any) -> int:
        return gw.service.accounts.sessions.count("alice")


class BanTests(Cluster):
    @defer.inlineCallbacks
    def test_ban_on_a_refuses_on_b(self) -> Any:
        """
        Three wrong passwords over FTP on replica a ban the address: on
        replica b the right password is refused, over FTP (421 with the
        time left) and SSH (disconnect with the same words); another
        address logs in on b at once.
        """
        yield self.replicas(
            login_max_failures=3, login_ban_time=60, login_failure_window=60
        )

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            r["wrong"] = [
                login_reply(self.a, "alice", OTHER, "wrong")[0] for _ in range(3)
            ]
            r["ftp"], _ = login_reply(self.b, "alice", OTHER)
            r["ssh"] = ssh_attempt(self.b, "alice", OTHER)
            r["here"], ftp = login_reply(self.b, "alice", HERE)
            if ftp is not None:
                ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(r["wrong"], ["530 Login incorrect"] * 3)
        match = BAN.fullmatch(r["ftp"])
        self.assertIsNotNone(match, r["ftp"])
        assert match is not None
        self.assertTrue(50 <= int(match.group(1)) <= 60, r["ftp"])
        self.assertFalse(r["ssh"]["ok"])
        code, text = r["ssh"]["disconnect"]
        self.assertEqual(code, DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE)
        self.assertIsNotNone(BAN.fullmatch(f"421 {text}"), text)
        self.assertEqual(r["here"], "230 Login successful")
        self.assertEqual(self.a.service.defender.bans + self.b.service.defender.bans, 1)

    @defer.inlineCallbacks
    def test_failures_over_sftp_add_up(self) -> Any:
        """Two failures over SSH on a and one on b: banned on both."""
        yield self.replicas(
            login_max_failures=3, login_ban_time=60, login_failure_window=60
        )

        def fail(gw: Any) -> None:
            client = SSHClient(gw, OTHER).start()
            try:
                client.transport.auth_password("alice", "wrong", fallback=False)
            except paramiko.AuthenticationException:
                pass
            finally:
                client.close()

        def run() -> tuple[str, str]:
            for gw in (self.a, self.a, self.b):
                fail(gw)
            return login_reply(self.a, "alice", OTHER)[0], login_reply(
                self.b, "alice", OTHER
            )[0]

        on_a, on_b = yield in_thread(run)
        self.assertIsNotNone(BAN.fullmatch(on_a), on_a)
        self.assertIsNotNone(BAN.fullmatch(on_b), on_b)


class LimitTests(Cluster):
    @defer.inlineCallbacks
    def test_max_sessions_across(self) -> Any:
        """
        max_sessions = 2: one FTP session on a, one SFTP session on b, then
        a third on either is refused (FTP 421, SSH auth fails); once the
        FTP session ends, b admits another.
        """
        yield self.replicas(users={"alice": user("alice", max_sessions=2)})
        refusal = "421 too many sessions for alice (2); try again later"

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            first = ftp_login(self.a, "alice")
            with sftp_session(self.b, "alice") as sftp:
                r["listdir"] = sftp.listdir(".")
                r["third-a"], _ = login_reply(self.a, "alice")
                r["third-b"], _ = login_reply(self.b, "alice")
                r["ssh-a"] = ssh_attempt(self.a, "alice")
                first.quit()
                deadline = time.monotonic() + 10
                while self.sessions(self.a) and time.monotonic() < deadline:
                    time.sleep(0.02)
                r["after"], ftp = login_reply(self.b, "alice")
                if ftp is not None:
                    ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(r["listdir"], [])
        self.assertEqual(r["third-a"], refusal)
        self.assertEqual(r["third-b"], refusal)
        self.assertEqual(r["ssh-a"]["error"], "AuthenticationException")
        self.assertEqual(r["after"], "230 Login successful")

    @defer.inlineCallbacks
    def test_connections_per_ip_across(self) -> Any:
        """
        max_connections_per_ip = 2: a connection on each replica, then a
        third on b is ended with 421 and the reason; after one closes, b
        takes one again.
        """
        yield self.replicas(max_connections_per_ip=2)

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            one, two = (
                socket.create_connection((gw.host, gw.port), 10)
                for gw in (self.a, self.b)
            )
            for s in (one, two):
                s.recv(1024)  # the 220: admitted, and counted in Redis
            r["third"] = _lines_until_closed(self.b)
            one.close()
            deadline = time.monotonic() + 10
            while self.a.service.limits.total and time.monotonic() < deadline:
                time.sleep(0.02)
            r["again"], ftp = login_reply(self.b, "alice")
            if ftp is not None:
                ftp.quit()
            two.close()
            return r

        r = yield in_thread(run)
        self.assertEqual(
            r["third"][-1], "421 too many connections from your address (2)"
        )
        self.assertEqual(r["again"], "230 Login successful")


class WebDAVAcrossTests(Cluster):
    @defer.inlineCallbacks
    def test_webdav_connection_refused_by_the_cluster(self) -> Any:
        """
        max_connections_per_ip = 2 with an FTP connection on each replica: a
        WebDAV connection to b, admitted by b's own count, is answered 503
        with the reason once the cluster's count says no, and is closed
        (and b counts it no more).
        """
        yield self.replicas(
            max_connections_per_ip=2, webdav_listen=("tcp:0:interface=127.0.0.1",)
        )
        webdav = self.b.service.webdav
        assert webdav is not None
        port = (yield webdav.listeners[0].listening).getHost().port

        def run() -> bytes:
            one, two = (
                socket.create_connection((gw.host, gw.port), 10)
                for gw in (self.a, self.b)
            )
            try:
                for s in (one, two):
                    s.recv(1024)  # the 220: admitted, and counted in Redis
                with socket.create_connection(("127.0.0.1", port), 10) as dav:
                    # Nothing sent: the refusal comes a Redis round trip
                    # after the connection, before any request.
                    answer = b""
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        chunk = dav.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
                    return answer
            finally:
                one.close()
                two.close()

        answer = yield in_thread(run)
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer[:200])
        self.assertIn(b"too many connections from your address (2)", answer)
        self.assertTrue((yield wait_until(lambda: self.b.service.limits.total == 0)))


def _lines_until_closed(gw: Any, bound: float = 10) -> list[str]:
    """Connect to C{gw}'s FTP port and read every line until it hangs up."""
    with socket.create_connection((gw.host, gw.port), bound) as s:
        data = b""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().splitlines()


class QuotaTests(Cluster):
    @defer.inlineCallbacks
    def test_quota_across(self) -> Any:
        """
        quota_bytes = 1 MiB: 700 KiB stored through a, then 700 KiB through
        b is stopped over the quota (552, as on one gateway) and not stored.
        """
        yield self.replicas(users={"alice": user("alice", quota_bytes=1024 * KiB)})
        first, second = random_bytes(700 * KiB), random_bytes(700 * KiB)

        def run() -> dict[str, Any]:
            r: dict[str, Any] = {}
            ftp_a, ftp_b = ftp_login(self.a, "alice"), ftp_login(self.b, "alice")
            for ftp in (ftp_a, ftp_b):
                ftp.voidcmd("TYPE I")
            r["a"] = ftp_store(ftp_a, "one", first)
            r["b"] = ftp_store(ftp_b, "two", second)
            ftp_a.quit()
            ftp_b.quit()
            return r

        r = yield in_thread(run)
        self.assertTrue(r["a"].startswith("226"), r)
        self.assertEqual(r["b"], "552 /two: quota exceeded")
        self.assertEqual(self.a.inspector.keys(), ["one"])
        self.assertEqual(self.a.inspector.read("one"), first)

    @defer.inlineCallbacks
    def test_concurrent_uploads(self) -> Any:
        """
        quota_bytes = 1 MiB, two uploads of 700 KiB at once, FTP through a
        and SFTP through b: the store never holds more than the quota, and
        at least one of them is refused.
        """
        yield self.replicas(users={"alice": user("alice", quota_bytes=1024 * KiB)})
        data = random_bytes(700 * KiB)

        def over_ftp() -> str:
            ftp = ftp_login(self.a, "alice")
            ftp.voidcmd("TYPE I")
            try:
                return ftp_store(ftp, "ftp.bin", data)
            finally:
                ftp.close()

        def over_sftp() -> str:
            try:
                with sftp_session(self.b, "alice") as sftp:
                    with sftp.open("sftp.bin", "wb") as f:
                        for i in range(0, len(data), 32 * KiB):
                            f.write(data[i : i + 32 * KiB])
                return "ok"
            except (OSError, paramiko.SSHException) as e:
                return f"refused: {e}"

        ftp_result, sftp_result = yield defer.gatherResults(
            [in_thread(over_ftp), in_thread(over_sftp)]
        )
        stored = {k: len(self.a.inspector.read(k)) for k in self.a.inspector.keys()}
        self.assertLessEqual(
            sum(stored.values()), 1024 * KiB, (stored, ftp_result, sftp_result)
        )
        self.assertFalse(
            ftp_result.startswith("226") and sftp_result == "ok",
            (ftp_result, sftp_result),
        )


class OpenOutageTests(Cluster):
    failure = "open"

    @defer.inlineCallbacks
    def test_redis_stopped_and_back(self) -> Any:
        """
        Redis stopped: each replica decides alone (max_sessions = 1 holds per
        replica only), logins answer within a second, the outage is counted;
        back, the limit holds across replicas again.
        """
        yield self.replicas(users={"alice": user("alice", max_sessions=1)})
        self.redis.stop()

        def during() -> dict[str, Any]:
            start_ = time.monotonic()
            ftp_a = ftp_login(self.a, "alice")
            ftp_b = ftp_login(self.b, "alice")
            seconds = time.monotonic() - start_
            ftp_a.quit()
            ftp_b.quit()
            return {"seconds": seconds}

        r = yield in_thread(during)
        self.assertLess(r["seconds"], 5)
        self.assertGreater(self.a.service.shared.fallbacks, 0)
        self.assertFalse(self.a.service.shared.up)
        yield wait_until(
            lambda: not self.sessions(self.a) and not self.sessions(self.b)
        )
        self.redis.start()
        for gw in (self.a, self.b):
            self.assertTrue(
                (yield wait_until(lambda gw=gw: bool(gw.service.shared.up), 15))
            )

        def after() -> list[str]:
            ftp_a = ftp_login(self.a, "alice")
            try:
                return [login_reply(self.b, "alice")[0]]
            finally:
                ftp_a.quit()

        self.assertEqual(
            (yield in_thread(after)),
            ["421 too many sessions for alice (1); try again later"],
        )


class ClosedOutageTests(Cluster):
    failure = "closed"

    @defer.inlineCallbacks
    def test_redis_stopped_and_back(self) -> Any:
        """
        Redis stopped, closed: a login is refused at once with 421 "try
        again later" over FTP and a disconnect over SSH, an upload that
        needs a quota claim gets 451 (transient) with the reason, a new connection is
        refused when a connection limit needs the cluster's count, and the
        server keeps serving; back,
        logins work again.
        """
        yield self.replicas(
            users={"alice": user("alice", quota_bytes=1024 * KiB)},
            admin_listen="tcp:0:interface=127.0.0.1",
            max_connections_per_ip=None,
        )
        logged_in = yield in_thread(ftp_login, self.a, "alice")
        self.redis.stop()
        yield wait_until(lambda: not self.a.service.shared.connected)

        def during() -> dict[str, Any]:
            r: dict[str, Any] = {}
            start_ = time.monotonic()
            r["ftp"], _ = login_reply(self.b, "alice")
            r["ssh"] = ssh_attempt(self.b, "alice")
            logged_in.voidcmd("TYPE I")
            r["upload"] = ftp_store(logged_in, "x", b"data")
            r["seconds"] = time.monotonic() - start_
            logged_in.quit()
            # With a connection limit, a connection needs the cluster's count.
            self.b.service.limits.adopt_settings(ConnectionLimits(max_per_ip=64))
            r["connect"] = _lines_until_closed(self.b)
            return r

        r = yield in_thread(during)
        self.assertEqual(
            r["ftp"], "421 Login service temporarily unavailable; try again later"
        )
        self.assertFalse(r["ssh"]["ok"])
        self.assertEqual(
            r["ssh"]["disconnect"][0], DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
        )
        self.assertEqual(
            r["upload"], "451 /x: quota state unavailable; try again later"
        )
        self.assertLess(r["seconds"], 10)
        self.assertEqual(
            r["connect"], ["421 Service temporarily unavailable, try again later"]
        )
        self.assertIn(
            "shared state: Redis at",
            " ".join(self.a.service.admin.readiness.problems()),
        )
        self.redis.start()
        for gw in (self.a, self.b):
            self.assertTrue(
                (yield wait_until(lambda gw=gw: bool(gw.service.shared.up), 15))
            )
        self.assertEqual(self.a.service.admin.readiness.problems(), [])
        back, ftp = yield in_thread(login_reply, self.b, "alice")
        self.assertEqual(back, "230 Login successful")
        assert ftp is not None
        yield in_thread(ftp.quit)
        yield deferLater(reactor, 0, lambda: None)


__all__ = ["PASSWORD"]


class ReloadTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_reload_keeps_the_link_and_applies_limits(self) -> Any:
        """
        A replica started from a file with shared_state, reloaded with a
        lower max_connections_per_ip: the same connection to Redis and the
        same replica id (its lease and counts stay), the open session still
        counted in Redis, and the new limit refuses a second connection.
        """
        from tests import test_reload

        redis = RedisServer(self, Path(tempfile.mkdtemp(prefix="cosgw-redis-")))
        server = {"shared_state": redis.url, "max_connections_per_ip": "5"}
        gw = yield defer.Deferred.fromCoroutine(test_reload.start(self, server))
        shared = gw.service.shared
        self.assertTrue((yield wait_until(lambda: bool(shared.up))))
        factory, replica = shared._factory, shared.replica
        first = yield in_thread(test_reload.connect, gw.ftp)
        self.addCleanup(first.close)
        server["max_connections_per_ip"] = "1"
        gw.write(test_reload.config_text(gw.root, server))
        result = yield gw.reload()
        self.assertEqual(result.changes, ("[server] max_connections_per_ip",))
        self.assertEqual(result.needs_restart, ())
        self.assertIs(gw.service.shared, shared)
        self.assertEqual((shared._factory, shared.replica), (factory, replica))
        self.assertTrue(shared.connected)
        said = yield in_thread(test_reload.login_reply, gw.ftp, "alice", PASSWORD)
        self.assertEqual(said, "421 Too many connections from your address (1)")
        with socket.create_connection(("127.0.0.1", redis.port), 10) as s:
            s.sendall(f"HGET cosgw:replica:{replica} c:127.0.0.1\r\n".encode())
            self.assertEqual(s.recv(64), b"$1\r\n1\r\n")
