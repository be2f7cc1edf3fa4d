"""
The SSH algorithms the gateway is willing to use.

Conch offers 3des-cbc, the cbc modes, hmac-sha1, hmac-md5,
diffie-hellman-group14-sha1, group-exchange-sha1, zlib, ssh-dss and ssh-rsa
(SHA-1) signatures.  The transport keeps only the modern ones by filtering
Conch's own lists with L{keep}, so a Conch that lacks one of ours still
works and one that adds a weak one does not get it offered.

The host-key list is not the transport's class attribute: Conch's
C{SSHFactory.buildProtocol} builds it for every connection from the loaded
keys, and an RSA key brings C{ssh-rsa} with it, so the factory computes it
once with L{host_key_algorithms}.  Group exchange hands out the groups of
L{GEX_GROUPS}, never those of OpenSSH's moduli file (see there why).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from twisted.conch.ssh import keys

__all__ = [
    "CIPHERS",
    "GEX_GROUPS",
    "KEY_EXCHANGES",
    "MACS",
    "SIGNATURE_ALGORITHMS",
    "describe",
    "host_key_algorithms",
    "keep",
]

# What we are willing to offer, in our order of preference (the client's
# order decides the negotiation, RFC 4253 section 7.1).  Each list is
# intersected with what this Conch implements.

#: The AEAD ciphers first: one call into cryptography per packet (they are
#: L{cosgw.frontends.sftp.aead}'s, Conch has none), safe from Terrapin
#: (CVE-2023-48795) through strict key exchange
#: (L{cosgw.frontends.sftp.packets}).  The client's order decides: OpenSSH
#: picks chacha20-poly1305, Go's x/crypto and rclone aes128-gcm, paramiko
#: aes128-ctr.
CIPHERS = (
    b"chacha20-poly1305@openssh.com",
    b"aes256-gcm@openssh.com",
    b"aes128-gcm@openssh.com",
    b"aes256-ctr",
    b"aes192-ctr",
    b"aes128-ctr",
)
#: The -etm MACs are kept should Conch ever implement them (strict key
#: exchange covers them too); with an AEAD cipher no MAC is used.
MACS = (
    b"hmac-sha2-512-etm@openssh.com",
    b"hmac-sha2-256-etm@openssh.com",
    b"hmac-sha2-512",
    b"hmac-sha2-256",
)
KEY_EXCHANGES = (
    b"mlkem768x25519-sha256",
    b"sntrup761x25519-sha512",
    b"sntrup761x25519-sha512@openssh.com",
    b"curve25519-sha256",
    b"curve25519-sha256@libssh.org",
    b"ecdh-sha2-nistp256",
    b"ecdh-sha2-nistp384",
    b"ecdh-sha2-nistp521",
    # With the groups of GEX_GROUPS only.
    b"diffie-hellman-group-exchange-sha256",
    b"diffie-hellman-group16-sha512",
    b"diffie-hellman-group18-sha512",
    b"diffie-hellman-group14-sha256",
)
#: Signature algorithms, for host keys and user keys alike.  Never ssh-rsa
#: (RSA with SHA-1) nor ssh-dss.
SIGNATURE_ALGORITHMS = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)


def keep(offered: Iterable[bytes], wanted: Sequence[bytes]) -> list[bytes]:
    """The names in C{wanted} that C{offered} has, in C{wanted}'s order."""
    available = set(offered)
    return [name for name in wanted if name in available]


def host_key_algorithms(
    host_keys: Iterable[keys.Key], offered: Sequence[bytes]
) -> list[bytes]:
    """The signature algorithms the host keys allow that C{offered} has."""
    allowed = [
        algorithm
        for key in host_keys
        for algorithm in key.supportedSignatureAlgorithms()
    ]
    return keep(allowed, offered)


# The MODP groups of RFC 3526 (generator 2), section 3 (2048 bits), 4 (3072)
# and 5 (4096).
_MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
_MODP_3072 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)
_MODP_4096 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
    16,
)

#: The groups diffie-hellman-group-exchange-sha256 hands out, by size, in
#: the form of C{SSHFactory.primes}: the RFC 3526 groups up to 4096 bits,
#: not the moduli file OpenSSH uses (/etc/ssh/moduli).
#:
#: The key exchange runs on the reactor, and what it costs there depends on
#: the group, not on its size alone (measured with cryptography 50 on a
#: 2-core VM; thread CPU time of Conch's server steps: parameters, key,
#: peer key, shared secret).  cryptography checks that p and (p-1)/2 are
#: prime each time it builds DH parameters or a peer's public key, and its
#: OpenSSL skips that check only for groups it knows by name, such as
#: these:
#:
#:   - moduli-file groups: 0.4 s (2048 bits), 6.7 s (4096), 49 s (8192) per
#:     key exchange, with the GIL held throughout, so a thread pool would
#:     not have kept the reactor serving; OpenSSH's client asks for 8192;
#:   - RFC 3526 groups: 0.5 ms (2048), 1.3 ms (3072), 2.6 ms (4096),
#:     5.7 ms (6144), 11.8 ms (8192); curve25519 takes 0.08 ms.
#:
#: So an unauthenticated client can make the reactor do no more than about
#: 3 ms of group-exchange work per connection (RSA host-key signing costs
#: as much), and clients asking for more than 4096 bits get 4096 (Conch
#: hands out the size closest to the one asked for; OpenSSH accepts
#: 2048-8192).  RFC 8270 sets the minimum at 2048 bits.
GEX_GROUPS: dict[int, list[tuple[int, int]]] = {
    2048: [(2, _MODP_2048)],
    3072: [(2, _MODP_3072)],
    4096: [(2, _MODP_4096)],
}


def describe(ciphers: Any, strict: bool) -> str:
    """
    The ciphers and MACs in use (a Conch C{SSHCiphers}), for the log: the
    client's direction first when the two differ.
    """

    def direction(cipher: bytes, mac: bytes) -> str:
        return f"cipher {cipher.decode('ascii')} (MAC {mac.decode('ascii')})"

    incoming = direction(ciphers.inCipType, ciphers.inMACType)
    outgoing = direction(ciphers.outCipType, ciphers.outMACType)
    text = incoming if incoming == outgoing else f"{incoming} in, {outgoing} out"
    return text + (", strict key exchange" if strict else "")
