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
once with L{host_key_algorithms}.  Group exchange needs primes, read once
from OpenSSH's moduli file by L{load_gex_primes}.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from twisted.conch.openssh_compat.primes import parseModuliFile
from twisted.conch.ssh import keys
from twisted.logger import Logger

__all__ = [
    "CIPHERS",
    "GEX_PREFIX",
    "KEY_EXCHANGES",
    "MACS",
    "MIN_GEX_BITS",
    "SIGNATURE_ALGORITHMS",
    "host_key_algorithms",
    "keep",
    "load_gex_primes",
    "without_group_exchange",
]

log = Logger(namespace="cosgw.ssh")

# What we are willing to offer, in our order of preference (the client's
# order decides the negotiation, RFC 4253 section 7.1).  Each list is
# intersected with what this Conch implements.

#: AEAD ciphers first should Conch ever implement them (then it must also
#: implement strict key exchange, or chacha20 and -etm MACs are open to
#: Terrapin, CVE-2023-48795; ctr with plain hmac-sha2 is not).
CIPHERS = (
    b"chacha20-poly1305@openssh.com",
    b"aes256-gcm@openssh.com",
    b"aes128-gcm@openssh.com",
    b"aes256-ctr",
    b"aes192-ctr",
    b"aes128-ctr",
)
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
    # Only when the factory has primes (load_gex_primes).
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


#: The key exchanges that need the factory's primes (RFC 4419).
GEX_PREFIX = b"diffie-hellman-group-exchange-"

#: DH group-exchange primes smaller than this are dropped from the moduli
#: file (RFC 8270 sets the minimum at 2048 bits).
MIN_GEX_BITS = 2048


def without_group_exchange(names: Iterable[bytes]) -> list[bytes]:
    """C{names} but the key exchanges that need primes (RFC 4419)."""
    return [name for name in names if not name.startswith(GEX_PREFIX)]


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


def load_gex_primes(path: Path) -> Optional[dict[int, list[tuple[int, int]]]]:
    """
    DH group-exchange primes of at least L{MIN_GEX_BITS} bits from the
    moduli file C{path}, or None (no group exchange) when it is missing,
    unreadable or has none that large.  Blocking; for start-up.
    """
    if not path.exists():
        return None
    try:
        primes = parseModuliFile(str(path))
    except (OSError, ValueError) as e:
        log.warn(
            "Cannot read {path} ({error}); DH group exchange disabled",
            path=str(path),
            error=str(e),
        )
        return None
    primes = {bits: groups for bits, groups in primes.items() if bits >= MIN_GEX_BITS}
    return primes or None
