"""
Tests for L{cosgw.frontends.sftp.algorithms}: what the server offers, read
from its clear-text KEXINIT, and group exchange with a moduli file.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from twisted.conch.ssh import _kex
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from cosgw.auth.keys import fingerprint
from tests.sshtesting import (
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


def group14_moduli(path: Path) -> Path:
    """A moduli file holding RFC 3526's 2048-bit group."""
    g, p = _kex.getDHGeneratorAndPrime(b"diffie-hellman-group14-sha1")
    path.write_text(f"20240101000000 2 6 100 2047 {g} {p:X}\n")
    return path


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
                "ext-info-s",
            ],
        )
        self.assertEqual(hostkeys, ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"])
        self.assertEqual(c2s, ["aes256-ctr", "aes192-ctr", "aes128-ctr"])
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
    def test_group_exchange_with_moduli(self) -> Any:
        """With a moduli file, diffie-hellman-group-exchange-sha256 is offered and works."""
        moduli = group14_moduli(self.workdir / "moduli")

        class Factory(TrackingFactory):
            moduli_path = moduli

        port = self.start_server(factory_class=Factory)
        seen = yield self.in_thread(raw_server_packets, port, packets=1)
        kex = parse_kexinit(seen["packets"][0])[0]
        self.assertIn("diffie-hellman-group-exchange-sha256", kex)
        self.assertNotIn("diffie-hellman-group-exchange-sha1", kex)

        def gex_login() -> str:
            with paramiko_transport(
                port, kex=["diffie-hellman-group-exchange-sha256"]
            ) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                return sftp_realpath(t)

        self.assertEqual((yield self.in_thread(gex_login)), "/")
