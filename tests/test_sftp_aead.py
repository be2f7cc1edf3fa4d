"""
Tests for L{cosgw.frontends.sftp.aead} and L{cosgw.frontends.sftp.packets}:

  - the packet framing against packets computed independently from the
    specifications (AESGCM with the nonce built by hand; ChaCha20's raw
    key stream XORed by hand and Poly1305 over the result);
  - in-process round trips between the gateway's transport and a Conch
    client with the same packet layer (twisted.test.iosim, no sockets):
    every packet size, rekeying, MAC lists without a match, strict key
    exchange and its sequence numbers, a plain Conch client without it;
  - the refusals: a packet too long, a forged tag, strict key exchange
    broken by a client (raw packets over a real socket);
  - the parts of Conch 26.10 the packet layer relies on.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Optional

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305
from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cosgw.frontends.sftp.aead import (
    IMPLICIT_MAC,
    AESGCMPacket,
    ChaChaPolyPacket,
    GatewayCiphers,
)
from cosgw.frontends.sftp.factory import GatewaySSHFactory
from cosgw.frontends.sftp.packets import STRICT_KEX_CLIENT, PacketLayer
from cosgw.frontends.sftp.transport import MAX_PACKET_LENGTH, GatewaySSHTransport
from tests.sshtesting import (
    SSHServerMixin,
    host_keys,
    parse_disconnect,
    raw_server_packets,
)

AEAD = (
    b"chacha20-poly1305@openssh.com",
    b"aes256-gcm@openssh.com",
    b"aes128-gcm@openssh.com",
)


def xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b[: len(a)], "big")).to_bytes(
        len(a), "big"
    )


def chacha_stream(key: bytes, sequence: int, length: int) -> bytes:
    """
    ChaCha20's key stream for the nonce C{sequence}, from block 0: the
    16-byte nonce of cryptography is DJB's 64-bit little-endian block
    counter and 64-bit nonce, the sequence number big-endian.
    """
    nonce = struct.pack("<Q", 0) + struct.pack(">Q", sequence)
    return (
        Cipher(algorithms.ChaCha20(key, nonce), None).encryptor().update(bytes(length))
    )


class GCMVectorTests(SynchronousTestCase):
    """aes-gcm@openssh.com against AESGCM with the nonce built by hand."""

    key = bytes(range(32))
    iv = bytes.fromhex("000102030405060708090a0b")

    def expected(self, key: bytes, counter: int, body: bytes) -> bytes:
        head = struct.pack(">L", len(body))
        nonce = self.iv[:4] + counter.to_bytes(8, "big")
        return head + AESGCM(key).encrypt(nonce, body, head)

    def test_seal_matches_rfc5647(self) -> None:
        for key in (self.key[:16], self.key):
            sealer = AESGCMPacket(key, self.iv + b"extra")
            counter = int.from_bytes(self.iv[4:], "big")
            for n, size in enumerate((16, 32, 32784)):
                body = os.urandom(size)
                # The sequence number plays no part: the counter does.
                sealed = b"".join(sealer.seal(1000 + 7 * n, body))
                self.assertEqual(sealed, self.expected(key, counter + n, body))

    def test_counter_wraps_at_64_bits(self) -> None:
        iv = self.iv[:4] + b"\xff" * 8
        sealer = AESGCMPacket(self.key[:16], iv)
        body = bytes(32)
        sealer.seal(0, body)
        nonce = iv[:4] + bytes(8)
        head = struct.pack(">L", 32)
        self.assertEqual(
            b"".join(sealer.seal(1, body)),
            head + AESGCM(self.key[:16]).encrypt(nonce, body, head),
        )

    def test_open_and_forgery(self) -> None:
        sealer = AESGCMPacket(self.key, self.iv)
        opener = AESGCMPacket(self.key, self.iv)
        bodies = [os.urandom(48), os.urandom(16)]
        packets = [b"".join(sealer.seal(i, b)) for i, b in enumerate(bodies)]
        self.assertEqual(opener.length(0, packets[0][:4]), 48)
        self.assertEqual(opener.open(0, packets[0]), bodies[0])
        forged = bytearray(packets[1])
        forged[3] ^= 1  # the length is authenticated
        self.assertIsNone(opener.open(1, bytes(forged)))

    def test_bad_sizes(self) -> None:
        self.assertRaises(ValueError, AESGCMPacket, bytes(24), self.iv)
        self.assertRaises(ValueError, AESGCMPacket, bytes(16), bytes(8))


class ChaChaVectorTests(SynchronousTestCase):
    """chacha20-poly1305@openssh.com against its specification by hand."""

    main = bytes(range(32))
    header = bytes(range(100, 132))

    def expected(self, sequence: int, body: bytes) -> bytes:
        head = xor(
            struct.pack(">L", len(body)), chacha_stream(self.header, sequence, 4)
        )
        stream = chacha_stream(self.main, sequence, 64 + len(body))
        encrypted = xor(body, stream[64:])
        tag = Poly1305.generate_tag(stream[:32], head + encrypted)
        return head + encrypted + tag

    def test_seal_matches_protocol_chacha20poly1305(self) -> None:
        # K_2 (the packet's) is the first half of the 64 bytes, K_1 (the
        # length's) the second.
        sealer = ChaChaPolyPacket(self.main + self.header + b"more")
        for sequence, size in ((0, 8), (1, 16), (2**31 + 3, 32776)):
            body = os.urandom(size)
            self.assertEqual(
                b"".join(sealer.seal(sequence, body)), self.expected(sequence, body)
            )

    def test_sequence_is_32_bits(self) -> None:
        """OpenSSH's sequence numbers are 32 bits: 2**32 + 5 is 5."""
        sealer = ChaChaPolyPacket(self.main + self.header)
        body = bytes(16)
        self.assertEqual(b"".join(sealer.seal(2**32 + 5, body)), self.expected(5, body))

    def test_length_open_and_forgery(self) -> None:
        key = self.main + self.header
        sealer, opener = ChaChaPolyPacket(key), ChaChaPolyPacket(key)
        body = os.urandom(40)
        packet = b"".join(sealer.seal(9, body))
        self.assertEqual(opener.length(9, packet[:4]), 40)
        self.assertNotEqual(opener.length(8, packet[:4]), 40)
        self.assertEqual(opener.open(9, packet), body)
        self.assertIsNone(opener.open(8, packet))
        forged = bytearray(packet)
        forged[20] ^= 0x80
        self.assertIsNone(opener.open(9, bytes(forged)))
        self.assertRaises(ValueError, ChaChaPolyPacket, bytes(32))


class GatewayCiphersTests(SynchronousTestCase):
    """L{GatewayCiphers} over Conch's L{transport.SSHCiphers}."""

    def test_aead_directions_have_no_mac(self) -> None:
        ciphers = GatewayCiphers(
            b"aes128-gcm@openssh.com",
            b"chacha20-poly1305@openssh.com",
            b"hmac-sha2-256",
            b"hmac-sha2-512",
        )
        self.assertEqual((ciphers.outMACType, ciphers.inMACType), (IMPLICIT_MAC,) * 2)
        keys = [os.urandom(128) for _ in range(6)]
        ciphers.setKeys(*keys)
        self.assertIsInstance(ciphers.sealer, AESGCMPacket)
        self.assertIsInstance(ciphers.opener, ChaChaPolyPacket)
        self.assertEqual(
            (ciphers.encBlockSize, ciphers.decBlockSize, ciphers.verifyDigestSize),
            (16, 8, 16),
        )
        self.assertEqual(ciphers.outCipType, b"aes128-gcm@openssh.com")

    def test_mixed_directions_keep_conch(self) -> None:
        """
        A direction without AEAD is Conch's own cipher and MAC: what a
        Conch SSHCiphers with the same keys sends, ours reads.
        """
        iv, key, mac = os.urandom(64), os.urandom(64), os.urandom(64)
        ours = GatewayCiphers(
            b"aes128-gcm@openssh.com", b"aes128-ctr", b"hmac-sha2-512", b"hmac-sha2-256"
        )
        ours.setKeys(os.urandom(64), os.urandom(64), iv, key, os.urandom(64), mac)
        self.assertEqual(ours.inMACType, b"hmac-sha2-256")
        self.assertIsNone(ours.opener)
        conch = transport.SSHCiphers(b"aes128-ctr", b"none", b"hmac-sha2-256", b"none")
        conch.setKeys(iv, key, b"", b"", mac, b"")
        packet = os.urandom(64)
        encrypted = conch.encrypt(packet)
        self.assertEqual(ours.decrypt(encrypted), packet)
        self.assertTrue(ours.verify(7, packet, conch.makeMAC(7, packet)))
        self.assertEqual((ours.decBlockSize, ours.verifyDigestSize), (16, 32))


# --------------------------------------------------------------------------
# In-process pairs: the gateway's transport and a Conch client
# --------------------------------------------------------------------------


class RecordingServer(GatewaySSHTransport):
    """The gateway's transport, keeping the IGNORE payloads it receives."""

    def connectionMade(self) -> None:
        self.ignored: list[bytes] = []
        super().connectionMade()

    def ssh_IGNORE(self, packet: bytes) -> None:
        self.ignored.append(packet)


class _ClientBase(transport.SSHClientTransport):
    """A Conch client for the pair: trusts the host key, keeps IGNOREs."""

    def connectionMade(self) -> None:
        self.ignored: list[bytes] = []
        self.errors: list[tuple[int, bytes]] = []
        self.secure = False
        super().connectionMade()

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Any:
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.secure = True

    def ssh_IGNORE(self, packet: bytes) -> None:
        self.ignored.append(packet)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.errors.append((reasonCode, description))


class AEADClient(PacketLayer, _ClientBase):
    """The client with the gateway's packet layer (strict, AEAD)."""


class PlainClient(_ClientBase):
    """Conch's own client: no AEAD, no strict key exchange."""


def make_pair(
    client: transport.SSHClientTransport,
    ciphers: list[bytes],
    macs: Optional[list[bytes]] = None,
) -> tuple[RecordingServer, iosim.IOPump]:
    """Connect C{client}, offering C{ciphers} (and C{macs}), to a server."""
    clock = MemoryReactorClock()
    factory = GatewaySSHFactory(Portal(None), host_keys(), clock)  # type: ignore[arg-type]
    factory.protocol = RecordingServer
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 22))
    client.supportedCiphers = ciphers
    client.supportedKeyExchanges = [b"curve25519-sha256"]
    client.supportedPublicKeys = [b"ssh-ed25519"]
    client.supportedCompressions = [b"none"]
    if macs is not None:
        client.supportedMACs = macs
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True, peerAddress=peer),
        client,
        iosim.FakeTransport(client, isServer=False),
    )
    pump.flush()
    return server, pump  # type: ignore[return-value]


#: Payload sizes around every boundary: block sizes, Conch's 16 KiB feed,
#: a channel packet of 32 KiB, the largest packet.
SIZES = (0, 1, 3, 7, 8, 15, 16, 17, 31, 16384, 32768 + 9, MAX_PACKET_LENGTH - 300)


class PairTests(SynchronousTestCase):
    def exchange(
        self, client: Any, server: RecordingServer, pump: iosim.IOPump
    ) -> None:
        """Packets of every size both ways arrive whole."""
        payloads = [os.urandom(size) for size in SIZES]
        for payload in payloads:
            client.sendPacket(transport.MSG_IGNORE, NS(payload))
            server.sendPacket(transport.MSG_IGNORE, NS(payload))
        pump.flush()
        self.assertEqual(server.ignored[-len(SIZES) :], [NS(p) for p in payloads])
        self.assertEqual(client.ignored[-len(SIZES) :], [NS(p) for p in payloads])

    def test_each_cipher_round_trip_and_rekey(self) -> None:
        for cipher in AEAD:
            client = AEADClient()
            server, pump = make_pair(client, [cipher])
            self.assertTrue(client.secure, cipher)
            for side in (client, server):
                current = side.currentEncryptions
                self.assertIsInstance(current, GatewayCiphers)
                self.assertEqual((current.outCipType, current.inCipType), (cipher,) * 2)
                self.assertEqual(current.outMACType, IMPLICIT_MAC)
                self.assertTrue(side.strict_kex)
            self.exchange(client, server, pump)
            sealer = server.currentEncryptions.sealer
            # Client-initiated rekey: new keys, the same cipher, and the
            # sequence numbers start at 0 again after each NEWKEYS.
            client.sendKexInit()
            pump.flush()
            self.assertIsNot(server.currentEncryptions.sealer, sealer)
            self.assertEqual(client.outgoingPacketSequence, 0)
            self.assertEqual(server.incomingPacketSequence, 0)
            self.exchange(client, server, pump)
            self.assertEqual(server.incomingPacketSequence, len(SIZES))
            self.assertEqual(client.errors, [], cipher)
            self.assertFalse(client.transport.disconnecting, cipher)

    def test_aead_without_a_common_mac(self) -> None:
        """
        A client whose MAC list has none of ours still gets an AEAD cipher
        (the MAC lists do not count then), and the exchange hash covers its
        own KEXINIT: the host key signature verifies.
        """
        client = AEADClient()
        server, pump = make_pair(
            client, [b"aes256-gcm@openssh.com"], macs=[b"hmac-md5"]
        )
        self.assertTrue(client.secure)
        self.assertEqual(server.currentEncryptions.inMACType, IMPLICIT_MAC)
        self.exchange(client, server, pump)

    def test_ctr_without_a_common_mac_is_refused(self) -> None:
        client = AEADClient()
        server, pump = make_pair(client, [b"aes128-ctr"], macs=[b"hmac-md5"])
        self.assertFalse(client.secure)
        self.assertEqual(
            client.errors,
            [
                (
                    transport.DISCONNECT_KEY_EXCHANGE_FAILED,
                    b"couldn't match all kex parts",
                )
            ],
        )

    def test_plain_conch_client_without_strict_kex(self) -> None:
        """
        A client that does not offer strict key exchange keeps counting
        its sequence numbers across NEWKEYS (it would fail the MAC check
        otherwise), before and after a rekey.
        """
        client = PlainClient()
        server, pump = make_pair(client, [b"aes128-ctr"])
        self.assertTrue(client.secure)
        self.assertFalse(server.strict_kex)
        self.assertNotIsInstance(server.currentEncryptions, GatewayCiphers)
        self.exchange(client, server, pump)
        client.sendKexInit()
        pump.flush()
        self.assertGreater(server.incomingPacketSequence, len(SIZES))
        self.exchange(client, server, pump)

    def test_packet_too_long(self) -> None:
        """
        A packet longer than the limit ends the connection as soon as its
        length is decrypted, before the rest of it is buffered.
        """
        client = AEADClient()
        server, pump = make_pair(client, [b"chacha20-poly1305@openssh.com"])
        client.sendPacket(transport.MSG_IGNORE, NS(bytes(MAX_PACKET_LENGTH)))
        pump.flush()
        self.assertEqual(
            client.errors,
            [
                (
                    transport.DISCONNECT_PROTOCOL_ERROR,
                    b"bad packet length 262160 (the limit is 262144)",
                )
            ],
        )
        self.assertLess(server.input_waiting, 64 * 1024)

    def test_forged_packet(self) -> None:
        for cipher in (b"aes128-gcm@openssh.com", b"chacha20-poly1305@openssh.com"):
            client = AEADClient()
            server, pump = make_pair(client, [cipher])
            body = b"\x04\x02" + NS(b"hi") + bytes(4)
            body += bytes(-len(body) % 16)
            sealer = client.currentEncryptions.sealer
            sealed = bytearray(
                b"".join(sealer.seal(client.outgoingPacketSequence, body))
            )
            sealed[-1] ^= 1
            server.dataReceived(bytes(sealed))
            pump.flush()
            self.assertEqual(
                client.errors, [(transport.DISCONNECT_MAC_ERROR, b"bad MAC")]
            )
            self.assertEqual(server.ignored, [])


class ConchInternalsTests(SynchronousTestCase):
    """What the packet layer takes from Conch 26.10 beyond its public API."""

    def test_transport_internals(self) -> None:
        base = transport.SSHTransportBase
        self.assertEqual(base._KEY_EXCHANGE_NONE, "_KEY_EXCHANGE_NONE")
        gate = base()._allowedKeyExchangeMessageType
        self.assertFalse(gate(transport.MSG_SERVICE_REQUEST))
        self.assertTrue(gate(transport.MSG_KEXDH_INIT))
        self.assertTrue(gate(transport.MSG_NEWKEYS))
        for name in ("_blockedByKeyExchange", "_keyExchangeState", "buf"):
            self.assertTrue(hasattr(base, name), name)
        self.assertIn(b"none", transport.SSHCiphers.cipherMap)
        self.assertIn(b"none", transport.SSHCiphers.macMap)

    def test_first_block_and_negotiation(self) -> None:
        """
        Conch keeps the decrypted first block of a packet it waits for as
        C{first} (its length is what L{PacketLayer.packet_length} reads),
        and its KEXINIT handling sets C{nextEncryptions} and keeps the
        payload in C{otherKexInitPayload}.
        """
        client = PlainClient()
        server, pump = make_pair(client, [b"aes128-ctr"])
        client.sendPacket(transport.MSG_IGNORE, NS(bytes(5000)))
        wire = b"".join(client.transport.stream)
        client.transport.stream = []
        server.dataReceived(wire[:16])
        self.assertEqual(
            server.packet_length(), struct.unpack(">L", server.first[:4])[0]
        )
        self.assertEqual(server.bytes_needed(), len(wire) - 16)
        server.dataReceived(wire[16:])
        self.assertEqual(server.ignored, [NS(bytes(5000))])
        self.assertTrue(server.otherKexInitPayload.startswith(b"\x14"))
        self.assertIsInstance(server.nextEncryptions, transport.SSHCiphers)


# --------------------------------------------------------------------------
# Strict key exchange broken by a client, over a real socket
# --------------------------------------------------------------------------


def clear_packet(payload: bytes) -> bytes:
    """A packet in clear (no cipher yet), padded to 8 bytes."""
    padding = 8 - (5 + len(payload)) % 8
    if padding < 4:
        padding += 8
    return (
        struct.pack(">LB", 1 + len(payload) + padding, padding)
        + payload
        + bytes(padding)
    )


def kexinit(strict: bool) -> bytes:
    kex = b"curve25519-sha256" + (b"," + STRICT_KEX_CLIENT if strict else b"")
    lists = [kex, b"ssh-ed25519", b"aes128-gcm@openssh.com", b"aes128-gcm@openssh.com"]
    lists += [b"hmac-sha2-256"] * 2 + [b"none"] * 2 + [b""] * 2
    return clear_packet(
        bytes((transport.MSG_KEXINIT,))
        + bytes(16)
        + b"".join(NS(n) for n in lists)
        + bytes(5)
    )


IGNORE = clear_packet(bytes((transport.MSG_IGNORE,)) + NS(b"x"))


class StrictKexTests(SSHServerMixin, TestCase):
    @defer.inlineCallbacks
    def disconnect_reason(self, sent: bytes) -> Any:
        port = self.start_server()
        seen = yield self.in_thread(
            raw_server_packets, port, packets=2, after_kexinit=sent
        )
        self.assertEqual(len(seen["packets"]), 2, seen)
        return parse_disconnect(seen["packets"][1])

    @defer.inlineCallbacks
    def test_kexinit_not_first(self) -> Any:
        reason = yield self.disconnect_reason(IGNORE + kexinit(strict=True))
        self.assertEqual(
            reason,
            (
                transport.DISCONNECT_PROTOCOL_ERROR,
                "strict key exchange: KEXINIT was not the first packet",
            ),
        )

    @defer.inlineCallbacks
    def test_unexpected_message_during_key_exchange(self) -> Any:
        reason = yield self.disconnect_reason(kexinit(strict=True) + IGNORE)
        self.assertEqual(
            reason,
            (
                transport.DISCONNECT_PROTOCOL_ERROR,
                "strict key exchange: unexpected message 2",
            ),
        )

    @defer.inlineCallbacks
    def test_malformed_client_key(self) -> Any:
        """
        A curve25519 public value of the wrong length is the client's error:
        a KEY_EXCHANGE_FAILED disconnect and a warning, no traceback (Conch
        let cryptography's ValueError drop the connection).
        """
        kexdh = clear_packet(bytes((transport.MSG_KEXDH_INIT,)) + NS(b"\x01\x02\x03"))
        reason = yield self.disconnect_reason(kexinit(strict=True) + kexdh)
        self.assertEqual(
            reason,
            (transport.DISCONNECT_KEY_EXCHANGE_FAILED, "bad key exchange value"),
        )
        self.assertIn("bad key exchange value", self.log_text())
        self.assertCleanLog()

    @defer.inlineCallbacks
    def test_not_strict_without_the_client_marker(self) -> Any:
        """
        Without the client's marker an IGNORE before KEXINIT is allowed:
        the key exchange goes on (the server answers KEXDH_INIT).
        """
        port = self.start_server()
        public = X25519PrivateKey.generate().public_key().public_bytes_raw()
        kexdh = clear_packet(bytes((transport.MSG_KEXDH_INIT,)) + NS(public))
        seen = yield self.in_thread(
            raw_server_packets,
            port,
            packets=2,
            after_kexinit=IGNORE + kexinit(strict=False) + kexdh,
        )
        self.assertEqual(seen["packets"][1][0], transport.MSG_KEXDH_REPLY)
