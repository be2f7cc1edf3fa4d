"""
TLS for FTPS: the server's certificate and the one context that both the
control connection and every data connection use.

Sharing one L{CertificateOptions} (with its one OpenSSL context and session
cache) between control and data is what lets a client resume its control
connection's TLS session on a data connection; Twisted turns the session
cache off by default (reference: twisted-conch-cos-facts.md, b).  Protocol
versions start at TLS 1.2 and the ciphers are the forward-secret AEAD ones.

TLS 1.3 session tickets (RFC 8446 4.6.1) go out on the control connection,
whose replies every client reads: they are what a data connection resumes
under TLS 1.3.  A data connection holds its own tickets back until it sends
something else (see L{_DataTLSTransport}): an uploading client (lftp and
FileZilla over GnuTLS) never reads its data connection, and closing a
socket with unread bytes makes the kernel send a reset instead of a FIN,
which can destroy the upload's last bytes before the gateway reads them.
OpenSSL's own switch, C{SSL_CTX_set_num_tickets}, is not in pyOpenSSL or
cryptography's bindings (and would stop TLS 1.3 resumption altogether).

The embedded default has no certificate configured: one is generated at
first start (ECDSA P-256, self-signed, ten years), kept in the state
directory, and its SHA-256 fingerprint logged so a client can pin it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.SSL import _ffi, _lib
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.privileges import as_gateway_user, private_directory

# The namespace these lines had before the FTP package existed.
log = Logger(namespace="cosgw.tls")

CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"

#: Forward-secret AEAD suites for TLS 1.2 (TLS 1.3's are fixed by OpenSSL).
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True)
class ServerTLS:
    """What the FTP frontend needs to speak TLS."""

    options: ssl.CertificateOptions
    fingerprint: str
    #: The chain's certificates' fingerprints, in order: with
    #: C{fingerprint}, what tells a reloaded certificate from the old one.
    chain: tuple[str, ...] = ()

    def wrap_data(self, factory: Any, clock: Any) -> TLSMemoryBIOFactory:
        """
        Like L{wrap}, for PROT P data connections: their TLS 1.3 session
        tickets wait until the gateway sends something else on them.
        """
        wrapped = _ServerTLSFactory(self.options, False, factory, clock)
        wrapped.protocol = _DataTLSTransport
        return wrapped


def wrap_current(factory: Any, clock: Any = None) -> TLSMemoryBIOFactory:
    """
    A factory whose connections speak TLS (as the server) first, each with
    the L{ServerTLS} that C{factory.tls} is when it connects: the control
    connections of implicit FTPS.  A config reload swaps C{factory.tls};
    connections already open keep the one they began with.

    @param clock: when small writes are flushed; None: the global reactor.
    """
    return _ServerTLSFactory(_CurrentTLS(factory), False, factory, clock)


@implementer(IOpenSSLServerConnectionCreator)
class _CurrentTLS:
    """Each new connection's TLS from its factory's C{tls} at that moment."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        tls: ServerTLS = self._factory.tls
        return SSL.Connection(tls.options.getContext(), None)


class _ServerTLSFactory(TLSMemoryBIOFactory):
    """
    TLSMemoryBIOFactory that lets the wrapped factory refuse a connection
    (return None), as a passive data factory does for a stranger's address.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)


#: Bytes of post-handshake messages a data connection holds back at most:
#: its tickets take a few hundred; a client that keeps asking for key
#: updates gets them sent rather than buffered without limit.
HELD_TICKETS_LIMIT = 16 * 1024

#: Plaintext a data connection hands OpenSSL per call: sixteen records
#: encrypted in one call, with the plaintext and ciphertext still in the
#: CPU's cache (one call per MiB is slower, one per record much slower).
WRITE_SLICE = 256 * 1024

#: Largest plaintext per TLS record (RFC 8446 5.1), and an upper bound on
#: what a record adds to it (header, explicit nonce, tag, content type).
RECORD_SIZE = 2**14
_RECORD_OVERHEAD = 64


#: Where data connections decrypt what one read from the socket brought,
#: before it is copied out as one piece: one buffer for the gateway, since
#: TLS runs on the reactor thread only and nothing else runs in between.
_PLAINTEXT = bytearray(2**20 + 4 * RECORD_SIZE)
_PLAINTEXT_VIEW = memoryview(_PLAINTEXT)


class _DataTLSTransport(TLSMemoryBIOProtocol):
    """
    The TLS layer of a PROT P data connection, built for throughput and for
    clients that never read an upload's connection.

    Throughput: Twisted's layer moves each 16 KiB record on its own (a
    slice copy, an encryption call, a read of the memory BIO and a write to
    the socket per record going out; a delivery to the protocol per record
    coming in), which made FTPS downloads run at half FTP's speed.  Here a
    write is cut into L{WRITE_SLICE} views without copying, each encrypted
    by one call (OpenSSL's partial writes are turned off for the
    connection, so one SSL_write takes the whole slice), and its ciphertext
    read out of the memory BIO and written to the socket at once; what
    arrives is decrypted record by record (OpenSSL gives one per call)
    straight into one buffer, and delivered as one piece per read from the
    socket.  Backpressure is unchanged: the socket's buffer pauses the
    producer, and a delivery is at most what one read from the socket
    brought.

    Session tickets: under TLS 1.3 OpenSSL writes them as soon as the
    handshake ends; here they are held until the gateway writes data (a
    download: they precede it, and the client reads them with it) or
    closes (after an upload: they precede the close_notify, which the
    client's close_notify has already answered).  So an uploading client
    that never reads has nothing unread when it closes, and its close is a
    FIN, not a reset.

    No write aggregation (Twisted's BufferingTLSTransport): a data
    connection writes in large chunks.  This overrides three methods of
    C{TLSMemoryBIOProtocol} (Twisted 26.10): C{_write} (application bytes
    into OpenSSL), C{_flushSendBIO} (TLS output to the socket) and
    C{_flushReceiveBIO} (TLS input to the protocol), and reads
    C{_handshakeDone}, C{_lostTLSConnection} and C{_aborted}; of pyOpenSSL
    (26.4) it uses the binding (C{SSL_clear_mode}, C{SSL_read}), the
    connection's C{_ssl} and its C{_raise_ssl_error}.
    tests/test_ftps_tickets.py and tests/test_ftps_records.py pin the
    behaviour.
    """

    #: Still no data written, nor more held than the limit.
    _may_hold = True
    _held_size = 0

    def __init__(self, factory: Any, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._held: list[bytes] = []

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        connection = self._tlsConnection
        if connection is not None:
            # pyOpenSSL turns partial writes on for every connection, which
            # makes SSL_write stop after one record.  With a memory BIO a
            # write never blocks on the socket, so the whole slice goes in.
            _lib.SSL_clear_mode(connection._ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)  # noqa: SLF001

    def write(self, data: bytes) -> None:
        self._may_hold = False
        super().write(data)

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def _write(self, data: Any) -> None:
        if self._lostTLSConnection:
            return
        view = memoryview(data)
        done = 0
        while done < len(view):
            piece = view[done : done + WRITE_SLICE]
            try:
                # Without partial writes: all of it, or an exception.
                self._tlsConnection.send(piece)
            except SSL.WantReadError:
                # OpenSSL must read first (a renegotiation): the same bytes
                # go again from here, in the same slices, once it has.
                self._bufferedWrite(bytes(view[done:]))
                break
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
                break
            done += len(piece)
            self._flushSendBIO(len(piece))

    def _holding(self) -> bool:
        """Whether TLS output now is post-handshake messages to hold back."""
        connection = self._tlsConnection
        return (
            self._may_hold
            and self._handshakeDone
            and connection.get_protocol_version() == SSL.TLS1_3_VERSION
            and not connection.get_shutdown() & SSL.SENT_SHUTDOWN
        )

    def _flushSendBIO(self, plaintext: int = 0) -> None:
        """
        Send everything OpenSSL has written to the memory BIO, in one write
        to the socket (Twisted reads 32 KiB per call), unless it is tickets
        to hold back.

        @param plaintext: application bytes just encrypted, to size the read.
        """
        size = max(plaintext + (plaintext // RECORD_SIZE + 1) * _RECORD_OVERHEAD, 2**15)
        out = []
        while True:
            try:
                chunk = self._tlsConnection.bio_read(size)
            except SSL.WantReadError:
                break
            out.append(chunk)
            if len(chunk) < size:
                break  # a memory BIO hands out all it holds: none left
        if self._holding():
            self._held.extend(out)
            self._held_size += sum(map(len, out))
            if self._held_size <= HELD_TICKETS_LIMIT:
                return
            self._may_hold = False
            out = []
        if self._held:
            out[:0], self._held = self._held, []
        if out:
            assert self.transport is not None
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _flushReceiveBIO(self) -> None:
        """
        Decrypt everything the memory BIO holds and deliver it as one
        piece, then end TLS if the client did (close_notify) or on an error,
        as Twisted does.  Records are decrypted straight into L{_PLAINTEXT}
        (pyOpenSSL's C{recv} allocates, copies and checks for errors once
        per record) and copied out before anything else runs.
        """
        connection = self._tlsConnection
        pieces: list[bytes] = []
        closed, failure = False, None
        if not self._lostTLSConnection:
            size, filled = len(_PLAINTEXT), 0
            with _ffi.from_buffer(_PLAINTEXT) as room:
                while True:
                    if size - filled < RECORD_SIZE:
                        pieces.append(bytes(_PLAINTEXT_VIEW[:filled]))
                        filled = 0
                    read = _lib.SSL_read(connection._ssl, room + filled, size - filled)  # noqa: SLF001
                    if read > 0:
                        filled += read
                        continue
                    try:
                        connection._raise_ssl_error(connection._ssl, read)  # noqa: SLF001
                    except SSL.WantReadError:
                        pass
                    except SSL.ZeroReturnError:
                        closed = True
                    except SSL.Error:
                        failure = Failure()
                    break
            if filled:
                pieces.append(bytes(_PLAINTEXT_VIEW[:filled]))
        self._deliver(pieces)
        if closed:
            self._shutdownTLS()
            # None: the protocol's connectionLost gets the transport's reason.
            self._tlsShutdownFinished(None)
        elif failure is not None:
            self._tlsShutdownFinished(failure)
        self._flushSendBIO()

    def _deliver(self, pieces: list[bytes]) -> None:
        """Hand what was decrypted to the protocol, as one piece; empty it."""
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        if data and not self._aborted:
            ProtocolWrapper.dataReceived(self, data)


def generate_self_signed(state_dir: Path) -> tuple[Path, Path]:
    """
    Make a self-signed certificate and key in C{state_dir} (0700; key
    0600), unless both are already there.  They belong to whoever runs this:
    the gateway's user (L{cosgw.privileges}).  Blocking; for start-up.
    """
    state_dir = private_directory(state_dir)
    cert_path, key_path = state_dir / CERT_FILE, state_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cosgw")])
    hosts = {socket.gethostname(), "localhost"}
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(h) for h in sorted(hosts)]
                + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_bytes = certificate.public_bytes(serialization.Encoding.PEM)
    temp = key_path.with_suffix(".tmp")
    with as_gateway_user():
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_bytes)
        os.replace(temp, key_path)
        cert_path.write_bytes(cert_bytes)
    log.info("generated a self-signed TLS certificate in {path}", path=cert_path)
    return cert_path, key_path


class TLSFileError(ValueError):
    """
    A TLS file that cannot be used; C{which} says which of the files
    (C{"certificate"}, C{"key"} or C{"chain"}), for the config key.
    """

    def __init__(self, which: str, message: str) -> None:
        super().__init__(message)
        self.which = which


_Parsed = TypeVar("_Parsed")


def _load(path: Path, which: str, parse: Callable[[bytes], _Parsed]) -> _Parsed:
    """C{parse} of the PEM file C{path}, the TLS C{which} file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TLSFileError(which, f"cannot read {path}: {e.strerror or e}") from None
    try:
        return parse(data)
    except (ValueError, TypeError) as e:
        raise TLSFileError(which, f"{path}: not a PEM {which} ({e})") from None


def load_server_tls(
    certificate: Path, key: Path, chain: Optional[Path] = None
) -> ServerTLS:
    """
    Read a PEM certificate, its key and an optional chain into the one
    context control and data connections share.

    @raise TLSFileError: a file is unreadable or the key does not match.
    """
    cert = _load(certificate, "certificate", x509.load_pem_x509_certificate)
    pkey = _load(
        key, "key", lambda data: serialization.load_pem_private_key(data, None)
    )
    extra = (
        _load(chain, "chain", x509.load_pem_x509_certificates)
        if chain is not None
        else []
    )
    # Twisted's stubs name pyOpenSSL's PKey/X509, but CertificateOptions
    # takes cryptography's key and certificate objects as well (pyOpenSSL
    # deprecated its own); converting would only add work.
    options = ssl.CertificateOptions(
        privateKey=pkey,  # type: ignore[arg-type]
        certificate=cert,  # type: ignore[arg-type]
        extraCertChain=extra or None,  # type: ignore[arg-type]
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        enableSessions=True,
    )
    try:
        options.getContext()  # fails now, not at the first client, on a mismatch
    except SSL.Error as e:
        raise TLSFileError(
            "key", f"{key}: does not match the certificate {certificate}: {e}"
        ) from None
    return ServerTLS(options, _fingerprint(cert), tuple(map(_fingerprint, extra)))


def _fingerprint(cert: x509.Certificate) -> str:
    """C{cert}'s SHA-256 fingerprint, as clients show it (C{AB:CD:...})."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def session_reused(transport: Any) -> bool:
    """
    Whether a TLS connection resumed an earlier session.  pyOpenSSL has no
    public call for it; SSL_session_reused through its binding is the one
    way (reference: twisted-conch-cos-facts.md, b).
    """
    connection = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(connection, SSL.Connection):
        return False
    return bool(_lib.SSL_session_reused(connection._ssl))  # noqa: SLF001
