"""
The SSH packet layer Conch lacks: AEAD ciphers (L{cosgw.frontends.sftp.aead})
and strict key exchange, as L{PacketLayer}, a mixin for a Conch transport
(the gateway's server transport; the tests' client too).

What it overrides in Conch 26.10's L{SSHTransportBase} (pinned by
tests/test_sftp_aead.py):

  - C{ssh_KEXINIT}: Conch negotiates a cipher and a MAC per direction and
    disconnects when either finds no match; a direction with an AEAD
    cipher has no MAC (OpenSSH ignores the MAC lists then).  Conch sees
    the client's KEXINIT with a matching MAC list in such a direction
    (the payload kept for the exchange hash stays the client's own), and
    the negotiated names become a L{GatewayCiphers} (C{nextEncryptions},
    which Conch's C{_keySetup} keys).
  - C{sendPacket} and C{getPacket}: a direction whose current cipher is
    AEAD is framed here (the rest is Conch's), copying less:
    L{PacketLayer.send_parts} joins a payload's parts once, into the
    packet, and L{PacketLayer.read_sealed} reads packets from the
    transport's own queue rather than Conch's buffer.  Conch's
    key-exchange gate (messages other than the exchange's own wait in
    C{_blockedByKeyExchange} until NEWKEYS) is kept.
  - Strict key exchange (OpenSSH's PROTOCOL section 1.10, the answer to
    Terrapin, CVE-2023-48795, which breaks chacha20-poly1305 and
    encrypt-then-MAC modes without it): the first KEXINIT offers
    C{kex-strict-s-v00@openssh.com}; with a client that offers
    C{kex-strict-c-v00@openssh.com}, a KEXINIT that is not the client's
    first packet, or any message other than the exchange's own before the
    first NEWKEYS, ends the connection, and each NEWKEYS sent or received
    starts that direction's sequence numbers again at 0.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional, Union

from twisted.conch.ssh import connection, transport
from twisted.conch.ssh.common import NS, ffs, getNS

from cosgw.frontends.sftp.aead import (
    AEAD_CIPHERS,
    TAG_LENGTH,
    GatewayCiphers,
    PacketCipher,
)
from cosgw.frontends.sftp.flow import ChunkQueue, OutputWatch

__all__ = ["STRICT_KEX_CLIENT", "STRICT_KEX_SERVER", "PacketLayer"]

#: The pseudo key exchanges of strict key exchange.
STRICT_KEX_CLIENT = b"kex-strict-c-v00@openssh.com"
STRICT_KEX_SERVER = b"kex-strict-s-v00@openssh.com"

#: The longest packet accepted unless the transport says less (Conch's).
_MAX_PACKET_LENGTH = 1024 * 1024

_LENGTH = struct.Struct(">L")
_RANDOM_POOL = 4096
#: What Conch's packet adds to its payload at most: the length, the
#: padding length, padding (up to a block and 3 bytes) and a MAC (64 bytes
#: for hmac-sha2-512).
_CONCH_OVERHEAD = 4 + 1 + 35 + 64

if TYPE_CHECKING:
    _Transport = transport.SSHTransportBase
else:
    _Transport = object


def _exchange_message(message: int) -> bool:
    """What may arrive during a strict initial key exchange."""
    return message in (
        transport.MSG_DISCONNECT,
        transport.MSG_KEXINIT,
        transport.MSG_NEWKEYS,
    ) or (30 <= message <= 49)


class PacketLayer(_Transport):
    """
    AEAD ciphers and strict key exchange for a Conch
    L{transport.SSHTransportBase} subclass (list this class first).
    """

    #: The longest packet_length accepted in an AEAD direction.
    max_packet_length = _MAX_PACKET_LENGTH

    #: The peer offered strict key exchange in its first KEXINIT.
    strict_kex = False
    #: No NEWKEYS has been received yet.
    _initial_kex = True
    _first_kexinit_sent = False
    _kexinit_received = False
    #: The packet_length of the AEAD packet being read, once decoded.
    _aead_length: Optional[int] = None
    _random_pool = b""
    _random_used = 0

    # -- key exchange -------------------------------------------------------

    def sendKexInit(self) -> None:
        if self._first_kexinit_sent:
            super().sendKexInit()
            return
        self._first_kexinit_sent = True
        offered = self.supportedKeyExchanges
        marker = STRICT_KEX_CLIENT if self.isClient else STRICT_KEX_SERVER
        self.supportedKeyExchanges = [*offered, marker]
        try:
            super().sendKexInit()
        finally:
            self.supportedKeyExchanges = offered

    def ssh_KEXINIT(self, packet: bytes) -> None:
        strings = getNS(packet[16:], 10)
        names = [s.split(b",") for s in strings[:-1]]
        if not self._kexinit_received:
            self._kexinit_received = True
            peer = STRICT_KEX_SERVER if self.isClient else STRICT_KEX_CLIENT
            self.strict_kex = peer in names[0]
            if self.strict_kex and self.incomingPacketSequence != 1:
                self.sendDisconnect(
                    transport.DISCONNECT_PROTOCOL_ERROR,
                    b"strict key exchange: KEXINIT was not the first packet",
                )
                return
        before = getattr(self, "nextEncryptions", None)
        super().ssh_KEXINIT(self._with_aead_macs(packet, names))
        self.otherKexInitPayload = bytes((transport.MSG_KEXINIT,)) + packet
        chosen = getattr(self, "nextEncryptions", None)
        if chosen is before or chosen is None:
            return  # disconnected
        if chosen.outCipType in AEAD_CIPHERS or chosen.inCipType in AEAD_CIPHERS:
            self.nextEncryptions = GatewayCiphers(
                chosen.outCipType,
                chosen.inCipType,
                chosen.outMACType,
                chosen.inMACType,
            )

    def _with_aead_macs(self, packet: bytes, names: list[list[bytes]]) -> bytes:
        """
        C{packet} (a KEXINIT's payload, C{names} its name-lists) as Conch is
        to negotiate it: a direction whose cipher will be AEAD and whose MAC
        list has none of ours gets our first MAC instead, so that Conch
        does not disconnect for a MAC the direction will not use.
        """
        changed = False
        for cipher_list, mac_list in ((2, 4), (3, 5)):
            peer_ciphers, peer_macs = names[cipher_list], names[mac_list]
            if self.isClient:
                cipher = ffs(self.supportedCiphers, peer_ciphers)
                mac = ffs(self.supportedMACs, peer_macs)
            else:
                cipher = ffs(peer_ciphers, self.supportedCiphers)
                mac = ffs(peer_macs, self.supportedMACs)
            if cipher in AEAD_CIPHERS and mac is None and self.supportedMACs:
                names[mac_list] = [self.supportedMACs[0]]
                changed = True
        if not changed:
            return packet
        rest = getNS(packet[16:], 10)[-1]
        lists = b"".join(NS(b",".join(n)) for n in names)
        return packet[:16] + lists + rest

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        # Conch's server and client transports define it, not their base.
        super().ssh_NEWKEYS(packet)  # type: ignore[misc]
        self._initial_kex = False
        if self.strict_kex:
            self.incomingPacketSequence = 0

    def dispatchMessage(
        self, messageNum: int, payload: Union[bytes, memoryview]
    ) -> None:
        if self.strict_kex and self._initial_kex and not _exchange_message(messageNum):
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR,
                f"strict key exchange: unexpected message {messageNum}".encode(),
            )
            return
        super().dispatchMessage(messageNum, payload)

    # -- packets ------------------------------------------------------------

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        sealer = getattr(self.currentEncryptions, "sealer", None)
        if sealer is None:
            super().sendPacket(messageType, payload)
            # Conch's packet: at most a block of padding and a MAC more.
            self._wrote(len(payload) + _CONCH_OVERHEAD)
        else:
            self.send_parts(messageType, (payload,))
        if messageType == transport.MSG_NEWKEYS and self.strict_kex:
            self.outgoingPacketSequence = 0

    def send_parts(
        self, messageType: int, parts: Sequence[Union[bytes, memoryview]]
    ) -> None:
        """
        Send a packet whose payload is C{parts} joined: with an AEAD
        cipher, joined once, into the packet (Conch's own path copies a
        payload four times).
        """
        self.send_packets(messageType, (parts,))

    def send_packets(
        self,
        messageType: int,
        payloads: Sequence[Sequence[Union[bytes, memoryview]]],
    ) -> None:
        """
        Send a packet of C{messageType} for each of C{payloads} (a payload
        in parts, joined once, into its packet).  With an AEAD cipher they
        reach the TCP transport in one write: the packets of a download's
        turn (a reply of 255 KiB is eight packets of 32 KiB) cost one call
        into Twisted and one count of what was written, not one per packet.
        """
        sealer = getattr(self.currentEncryptions, "sealer", None)
        if sealer is None:
            for parts in payloads:
                self.sendPacket(messageType, b"".join(parts))
            return
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE:
            if not self._allowedKeyExchangeMessageType(messageType):
                # Conch's key-exchange gate: sent after NEWKEYS.
                self._blockedByKeyExchange.extend(
                    (messageType, b"".join(parts)) for parts in payloads
                )
                return
        size = sealer.block_size
        seal = sealer.seal
        random = self._random
        sequence = self.outgoingPacketSequence
        wire: list[bytes] = []
        for parts in payloads:
            # Padding length, payload and at least 4 bytes of padding, a
            # multiple of the cipher's block size.
            length = 2 + sum(map(len, parts))
            padding = size - length % size
            if padding < 4:
                padding += size
            body = b"".join((bytes((padding, messageType)), *parts, random(padding)))
            wire += seal(sequence, body)
            sequence += 1
        self.outgoingPacketSequence = sequence
        assert self.transport is not None
        self.transport.writeSequence(wire)
        self._wrote(sum(map(len, wire)))

    def _wrote(self, size: int) -> None:
        """
        Tell the transport's L{OutputWatch} (the gateway's transport has
        one) that C{size} more bytes wait in the TCP transport's buffer.
        """
        watch: Optional[OutputWatch] = getattr(self, "_write_side", None)
        if watch is not None:
            watch.wrote(size)

    def _random(self, n: int) -> bytes:
        """
        C{n} random bytes (n < 256) for padding, from a pool drawn 4 KiB at
        a time: a system call per packet costs more than the padding is
        worth (AEAD encrypts and authenticates it; RFC 4253 asks for random
        padding all the same).
        """
        start = self._random_used
        if start + n > len(self._random_pool):
            self._random_pool, start = os.urandom(_RANDOM_POOL), 0
        self._random_used = start + n
        return self._random_pool[start : start + n]

    def packet_length(self) -> Optional[int]:
        """The packet_length of the packet being read, once known."""
        if getattr(self.currentEncryptions, "opener", None) is not None:
            return self._aead_length
        first = getattr(self, "first", None)
        if first is None:
            return None
        (length,) = _LENGTH.unpack(first[:4])
        return int(length)

    def bytes_needed(self) -> int:
        """
        How many more bytes the packet being read needs: what completes its
        length (the first block for Conch, which decrypts it first), or the
        rest of the packet and its MAC or tag.
        """
        encryptions = self.currentEncryptions
        have = len(self.buf)
        length = self.packet_length()
        if length is None:
            aead = getattr(encryptions, "opener", None) is not None
            return max(1, (4 if aead else encryptions.decBlockSize) - have)
        return max(1, 4 + length + encryptions.verifyDigestSize - have)

    def getPacket(self) -> Optional[bytes]:
        opener = getattr(self.currentEncryptions, "opener", None)
        if opener is None:
            return super().getPacket()
        if len(self.buf) < 4:
            return None
        length = self._sealed_length(opener, self.buf[:4])
        if length is None:
            return None
        end = 4 + length + TAG_LENGTH
        if len(self.buf) < end:
            return None
        packet, self.buf = (
            (self.buf, b"")
            if len(self.buf) == end
            else (self.buf[:end], self.buf[end:])
        )
        payload = self._open_sealed(opener, packet, views=False)
        return None if payload is None else bytes(payload)

    def read_sealed(
        self, opener: PacketCipher, queue: ChunkQueue
    ) -> Union[None, bytes, memoryview]:
        """
        The next packet's payload from C{queue} (bytes received, none of
        them fed to Conch) when the incoming cipher is C{opener} (the
        current L{GatewayCiphers.opener}) and the packet is complete; None
        when it is not complete yet, or the connection was ended (a bad
        length, tag or padding).

        This is Conch's C{dataReceived} and C{getPacket} without their
        copies: the packet is taken from the queue once and decrypted; the
        payload of channel data is a view of the decrypted packet.
        """
        if len(queue) < 4:
            return None
        length = self._sealed_length(opener, queue.peek(4))
        if length is None or len(queue) < 4 + length + TAG_LENGTH:
            return None
        return self._open_sealed(opener, queue.take(4 + length + TAG_LENGTH))

    def _sealed_length(self, opener: PacketCipher, head: bytes) -> Optional[int]:
        """
        The packet_length of the AEAD packet beginning with C{head},
        decrypted once per packet; None if the connection was ended for it.
        """
        length = self._aead_length
        if length is not None:
            return length
        length = opener.length(self.incomingPacketSequence, head)
        problem = None
        if length > self.max_packet_length:
            problem = f"(the limit is {self.max_packet_length})"
        elif length % opener.block_size or length < opener.block_size:
            problem = f"(not a multiple of {opener.block_size})"
        if problem is not None:
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR,
                f"bad packet length {length} {problem}".encode(),
            )
            return None
        self._aead_length = length
        return length

    def _open_sealed(
        self, opener: PacketCipher, packet: bytes, views: bool = True
    ) -> Union[None, bytes, memoryview]:
        """
        The payload of a whole AEAD packet, or None if the connection was
        ended for it (a forged tag, bad padding).  With C{views}, channel
        data comes as a view of the decrypted packet (its handlers take
        views); anything else as bytes.
        """
        self._aead_length = None
        body = opener.open(self.incomingPacketSequence, packet)
        if body is None:
            self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")
            return None
        padding = body[0]
        if padding < 4 or padding + 2 > len(body):
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad padding")
            return None
        self.incomingPacketSequence += 1
        end = len(body) - padding
        if views and body[1] == connection.MSG_CHANNEL_DATA:
            return memoryview(body)[1:end]
        return body[1:end]
