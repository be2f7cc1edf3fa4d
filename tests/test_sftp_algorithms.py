"""
Tests for L{cosgw.frontends.sftp.algorithms}: what the server offers, read
from its clear-text KEXINIT, and group exchange, whose arithmetic on the
reactor stays small whatever size a client asks for.
"""

from __future__ import annotations

import struct
import time
from typing import Any, cast

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from cosgw.auth.keys import fingerprint
from cosgw.frontends.sftp.transport import GatewaySSHTransport
from tests.sshtesting import (
    MESSAGE,
    NO_OPENSSH,
    PASSWORD,
    USER,
    SSHServerMixin,
    TrackingFactory,
    ed25519_host_keys,
    host_keys,
    key_login,
    paramiko_transport,
    raw_server_packets,
    sftp_realpath,
    user_key,
)


def parse_kexinit(payload: bytes) -> list[list[str]]:
    """The ten name-lists of a KEXINIT payload."""
    assert payload[0] == 20, payload[0]
    rest = payload[17:]
    lists = []
    for _ in range(10):
        (length,) = struct.unpack(">I", rest[:4])
        text = rest[4 : 4 + length].decode("ascii")
        lists.append(text.split(",") if text else [])
        rest = rest[4 + length :]
    return lists


class TimedTransport(GatewaySSHTransport):
    """
    Records the group size and the reactor thread's CPU time of each
    group-exchange step (the GROUP reply and the shared secret), as the
    factory's C{gex} list of (step, bits, seconds).
    """

    def ssh_KEX_DH_GEX_REQUEST(self, packet: bytes) -> None:
        start = time.thread_time()
        super().ssh_KEX_DH_GEX_REQUEST(packet)
        self.record("group", time.thread_time() - start)

    def ssh_KEX_DH_GEX_INIT(self, packet: bytes) -> None:
        start = time.thread_time()
        super().ssh_KEX_DH_GEX_INIT(packet)
        self.record("secret", time.thread_time() - start)

    def record(self, step: str, seconds: float) -> None:
        cast(GEXFactory, self.factory).gex.append((step, self.p.bit_length(), seconds))


class GEXFactory(TrackingFactory):
    protocol = TimedTransport

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gex: list[tuple[str, int, float]] = []


class AlgorithmTests(SSHServerMixin, TestCase):
    """What the server offers, read from its clear-text KEXINIT."""

    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_offered_algorithms(self) -> Any:
        port = self.start_server()
        seen = yield self.in_thread(raw_server_packets, port, packets=1)
        self.assertEqual(seen["version"], b"SSH-2.0-cosgw")
        (
            kex,
            hostkeys,
            c2s,
            s2c,
            mac_c2s,
            mac_s2c,
            comp_c2s,
            comp_s2c,
            lang_c2s,
            lang_s2c,
        ) = parse_kexinit(seen["packets"][0])
        self.assertEqual(
            kex,
            [
                "mlkem768x25519-sha256",
                "curve25519-sha256",
                "curve25519-sha256@libssh.org",
                "ecdh-sha2-nistp256",
                "ecdh-sha2-nistp384",
                "ecdh-sha2-nistp521",
                "diffie-hellman-group-exchange-sha256",
                # Strict key exchange (first KEXINIT only), RFC 8308.
                "kex-strict-s-v00@openssh.com",
                "ext-info-s",
            ],
        )
        self.assertEqual(hostkeys, ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"])
        self.assertEqual(
            c2s,
            [
                "chacha20-poly1305@openssh.com",
                "aes256-gcm@openssh.com",
                "aes128-gcm@openssh.com",
                "aes256-ctr",
                "aes192-ctr",
                "aes128-ctr",
            ],
        )
        self.assertEqual(s2c, c2s)
        self.assertEqual(mac_c2s, ["hmac-sha2-512", "hmac-sha2-256"])
        self.assertEqual(mac_s2c, mac_c2s)
        self.assertEqual((comp_c2s, comp_s2c), (["none"], ["none"]))
        self.assertEqual((lang_c2s, lang_s2c), ([], []))
        offered = kex + hostkeys + c2s + mac_c2s + comp_c2s
        for name in offered:
            for weak in ("ssh-dss", "3des", "cbc", "sha1", "md5", "group1-", "zlib"):
                self.assertNotIn(weak, name)
        self.assertNotIn("ssh-rsa", offered)
        self.assertNotIn("diffie-hellman-group14-sha1", offered)
        self.assertNotIn("diffie-hellman-group-exchange-sha1", offered)

    @defer.inlineCallbacks
    def test_host_key_algorithms_follow_keys(self) -> Any:
        """
        An Ed25519-only server offers only ssh-ed25519 as host key, yet
        server-sig-algs still lists the RSA SHA-2 signatures, so an RSA user
        key works (Conch would advertise its host key algorithms there).
        """
        port = self.start_server(ed25519_host_keys())
        seen = yield self.in_thread(raw_server_packets, port, packets=1)
        self.assertEqual(parse_kexinit(seen["packets"][0])[1], ["ssh-ed25519"])
        result = yield self.in_thread(key_login, port, USER, user_key("rsa"))
        self.assertEqual(result["root"], "/")
        self.assertEqual(result["host_key"].get_name(), "ssh-ed25519")
        self.assertEqual(
            result["host_key"].fingerprint, fingerprint(host_keys()[b"ssh-ed25519"])
        )
        sig_algs = result["extensions"]["server-sig-algs"]
        if isinstance(sig_algs, bytes):
            sig_algs = sig_algs.decode("ascii")
        self.assertEqual(
            sig_algs.split(","),
            [
                "ssh-ed25519",
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
                "rsa-sha2-512",
                "rsa-sha2-256",
            ],
        )

    @defer.inlineCallbacks
    def test_group_exchange_cost_bounded(self) -> Any:
        """
        OpenSSH with group exchange only asks for an 8192-bit group: it
        gets the 4096-bit RFC 3526 group, and each step costs the reactor
        milliseconds of CPU (a moduli-file group of 4096 bits cost 6.7 s,
        of 8192 bits 49 s); paramiko asks for 2048 bits and gets them.
        """
        port = self.start_server(factory_class=GEXFactory)
        gex = ["-o", "KexAlgorithms=diffie-hellman-group-exchange-sha256"]
        result = yield self.openssh(
            port, user_key("ed25519"), *gex, f"{USER}@127.0.0.1", "true"
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(MESSAGE.encode(), result.stderr)
        self.assertEqual(
            [(step, bits) for step, bits, _ in self.factory.gex],
            [("group", 4096), ("secret", 4096)],
        )
        for step, _, seconds in self.factory.gex:
            self.assertLess(seconds, 0.1, f"{step} took {seconds:.3f} s of CPU")

        def gex_login() -> str:
            with paramiko_transport(
                port, kex=["diffie-hellman-group-exchange-sha256"]
            ) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                return sftp_realpath(t)

        self.assertEqual((yield self.in_thread(gex_login)), "/")
        self.assertEqual([bits for _, bits, _ in self.factory.gex[2:]], [2048, 2048])
