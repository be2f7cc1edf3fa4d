"""
The AEAD packet ciphers of OpenSSH, which Conch lacks (Twisted issue 6967):
C{aes128-gcm@openssh.com}, C{aes256-gcm@openssh.com} and
C{chacha20-poly1305@openssh.com}, each one call into the C{cryptography}
library per packet where Conch's aes-ctr with hmac-sha2 costs a cipher
call, an HMAC and several copies.

An AEAD cipher authenticates the packet itself, so no MAC is negotiated
for its direction (OpenSSH shows the MAC as C{<implicit>} and ignores the
MAC lists); and the packet length, which Conch encrypts with the rest,
travels apart:

  - AES-GCM (RFC 5647 as OpenSSH does it, its PROTOCOL section 1.6): the
    length is sent in clear and authenticated as the additional data; the
    12-byte nonce is the 4 fixed bytes of the derived IV followed by an
    8-byte invocation counter, taken from the IV's last 8 bytes and
    incremented after every packet; a 16-byte tag follows.  What follows
    the length (padding length, payload, padding) is a multiple of 16.
  - chacha20-poly1305@openssh.com (OpenSSH's PROTOCOL.chacha20poly1305):
    64 bytes of key, the first 32 (K_2) for the packet, the last 32 (K_1)
    for the length; both ChaCha20 with a 64-bit block counter and, as the
    64-bit nonce, the packet's sequence number (big-endian).  The length is
    encrypted with K_1 from block 0; the Poly1305 key is the first 32 bytes
    of K_2's block 0, the packet is encrypted from block 1, and the tag
    covers the encrypted length and packet.  The packet is a multiple of 8.

L{GatewayCiphers} carries these into Conch's L{SSHCiphers} (Conch keeps
what it implements, an AEAD direction gets a L{PacketCipher});
L{cosgw.frontends.sftp.packets} sends and reads the packets.
"""

from __future__ import annotations

import struct
from typing import Optional, Protocol, Union

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305
from twisted.conch.ssh.transport import SSHCiphers

__all__ = [
    "AEAD_CIPHERS",
    "IMPLICIT_MAC",
    "TAG_LENGTH",
    "AESGCMPacket",
    "ChaChaPolyPacket",
    "GatewayCiphers",
    "PacketCipher",
    "packet_cipher",
]

Buffer = Union[bytes, memoryview]

#: The AEAD ciphers and their key lengths.
AEAD_CIPHERS: dict[bytes, int] = {
    b"chacha20-poly1305@openssh.com": 64,
    b"aes256-gcm@openssh.com": 32,
    b"aes128-gcm@openssh.com": 16,
}
#: The MAC of an AEAD direction, as OpenSSH names it.
IMPLICIT_MAC = b"<implicit>"
#: Bytes of the tag after each packet.
TAG_LENGTH = 16

_GCM_IV_LENGTH = 12
_COUNTER_MASK = (1 << 64) - 1
_SEQUENCE_MASK = (1 << 32) - 1
_ZERO_BLOCK = bytes(64)
_LENGTH = struct.Struct(">L")


class PacketCipher(Protocol):
    """One direction's AEAD: seals or opens whole packets, in order."""

    #: What follows the length field is a multiple of this.
    block_size: int

    def length(self, sequence: int, head: bytes) -> int:
        """The packet_length field of the packet C{sequence} begins with
        C{head} (its first 4 bytes as received)."""

    def seal(self, sequence: int, body: bytes) -> list[bytes]:
        """The packet C{sequence} on the wire, in pieces (written as they
        are, not joined): its length field, C{body} (padding length,
        payload, padding) encrypted, the tag."""

    def open(self, sequence: int, packet: Buffer) -> Optional[bytes]:
        """C{body} of the packet C{sequence} (C{packet} as received, tag
        included), or None if it is not authentic."""


class AESGCMPacket:
    """aes128-gcm@openssh.com and aes256-gcm@openssh.com, one direction."""

    block_size = 16

    def __init__(self, key: bytes, iv: bytes) -> None:
        if len(key) not in (16, 32) or len(iv) < _GCM_IV_LENGTH:
            raise ValueError("AES-GCM needs a 16 or 32 byte key and a 12 byte IV")
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:_GCM_IV_LENGTH], "big")

    def _nonce(self) -> bytes:
        """This packet's nonce; the next packet gets the next one."""
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & _COUNTER_MASK
        return nonce

    def length(self, sequence: int, head: bytes) -> int:
        (length,) = _LENGTH.unpack(head[:4])
        return int(length)

    def seal(self, sequence: int, body: bytes) -> list[bytes]:
        head = _LENGTH.pack(len(body))
        return [head, self._aead.encrypt(self._nonce(), body, head)]

    def open(self, sequence: int, packet: Buffer) -> Optional[bytes]:
        view = memoryview(packet)
        try:
            return self._aead.decrypt(self._nonce(), view[4:], view[:4])
        except InvalidTag:
            return None


class ChaChaPolyPacket:
    """
    chacha20-poly1305@openssh.com, one direction.

    Each packet has its own nonce (its sequence number), so each needs its
    own two ChaCha20 streams; the two contexts are made once and moved to
    the packet's nonce (C{reset_nonce}, cryptography 43), not made anew:
    sealing a small packet took 13 us with new contexts, 5 us so, and a
    32 KiB packet 25 us instead of 16.
    """

    block_size = 8

    def __init__(self, key: bytes) -> None:
        if len(key) < 64:
            raise ValueError("chacha20-poly1305 needs 64 bytes of key")
        # ChaCha20 is its own inverse: an encryptor context serves both
        # ways.
        self._main = self._context(key[:32])
        self._header = self._context(key[32:64])

    @staticmethod
    def _context(key: bytes) -> CipherContext:
        return Cipher(algorithms.ChaCha20(key, _nonce(0)), mode=None).encryptor()

    @staticmethod
    def _at(stream: CipherContext, nonce: bytes) -> CipherContext:
        """C{stream} moved to block 0 of the packet with C{nonce}."""
        stream.reset_nonce(nonce)
        return stream

    def length(self, sequence: int, head: bytes) -> int:
        header = self._at(self._header, _nonce(sequence))
        (length,) = _LENGTH.unpack(header.update(head[:4]))
        return int(length)

    def seal(self, sequence: int, body: bytes) -> list[bytes]:
        nonce = _nonce(sequence)
        head = self._at(self._header, nonce).update(_LENGTH.pack(len(body)))
        stream = self._at(self._main, nonce)
        mac = Poly1305(stream.update(_ZERO_BLOCK)[:32])
        encrypted = stream.update(body)
        mac.update(head)
        mac.update(encrypted)
        return [head, encrypted, mac.finalize()]

    def open(self, sequence: int, packet: Buffer) -> Optional[bytes]:
        view = memoryview(packet)
        stream = self._at(self._main, _nonce(sequence))
        mac = Poly1305(stream.update(_ZERO_BLOCK)[:32])
        mac.update(view[:-TAG_LENGTH])
        try:
            mac.verify(bytes(view[-TAG_LENGTH:]))
        except InvalidSignature:
            return None
        return stream.update(view[4:-TAG_LENGTH])


def _nonce(sequence: int) -> bytes:
    """
    cryptography's 16-byte ChaCha20 nonce: the block counter (little
    endian), block 0, then the sequence number as OpenSSH's 64-bit
    big-endian nonce.
    """
    return bytes(8) + (sequence & _SEQUENCE_MASK).to_bytes(8, "big")


def packet_cipher(name: bytes, key: bytes, iv: bytes) -> PacketCipher:
    """
    The L{PacketCipher} C{name} with the derived C{key} and C{iv} (Conch
    derives more than enough of each; the cipher takes what it needs).

    @raise KeyError: C{name} is not an AEAD cipher.
    """
    key_length = AEAD_CIPHERS[name]
    if name == b"chacha20-poly1305@openssh.com":
        return ChaChaPolyPacket(key[:key_length])
    return AESGCMPacket(key[:key_length], iv[:_GCM_IV_LENGTH])


class GatewayCiphers(SSHCiphers):
    """
    Conch's L{SSHCiphers} where either direction may use an AEAD cipher:
    L{sealer} (outgoing) and L{opener} (incoming) are that direction's
    L{PacketCipher}, None where Conch's own cipher and MAC serve.
    """

    def __init__(self, outCip: bytes, inCip: bytes, outMac: bytes, inMac: bytes):
        super().__init__(
            outCip,
            inCip,
            IMPLICIT_MAC if outCip in AEAD_CIPHERS else outMac,
            IMPLICIT_MAC if inCip in AEAD_CIPHERS else inMac,
        )
        self.sealer: Optional[PacketCipher] = None
        self.opener: Optional[PacketCipher] = None

    def setKeys(
        self,
        outIV: bytes,
        outKey: bytes,
        inIV: bytes,
        inKey: bytes,
        outInteg: bytes,
        inInteg: bytes,
    ) -> None:
        # Conch sets up the directions it implements; an AEAD direction is
        # its "none" cipher and MAC meanwhile, then gets its PacketCipher.
        names = (self.outCipType, self.inCipType, self.outMACType, self.inMACType)
        sealing, opening = names[0] in AEAD_CIPHERS, names[1] in AEAD_CIPHERS
        if sealing:
            self.outCipType = self.outMACType = b"none"
        if opening:
            self.inCipType = self.inMACType = b"none"
        try:
            super().setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg)
        finally:
            self.outCipType, self.inCipType, self.outMACType, self.inMACType = names
        if sealing:
            self.sealer = packet_cipher(self.outCipType, outKey, outIV)
            self.encBlockSize = self.sealer.block_size
        if opening:
            self.opener = packet_cipher(self.inCipType, inKey, inIV)
            self.decBlockSize = self.opener.block_size
            self.verifyDigestSize = TAG_LENGTH
