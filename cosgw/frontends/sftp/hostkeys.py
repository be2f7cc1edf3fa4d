"""
The gateway's SSH host keys: loaded from the configured files, or generated
once in the state directory and reused on every later start, so clients'
known_hosts stay valid.

This blocks (file I/O, RSA generation): it runs at start-up, before the
reactor does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.ssh import keys
from twisted.logger import Logger

from cosgw.auth.files import create_exclusively
from cosgw.auth.keys import check_key_strength, fingerprint
from cosgw.privileges import as_gateway_user, private_directory

__all__ = ["GENERATED_HOST_KEYS", "load_host_keys"]

log = Logger(namespace="cosgw.ssh")

#: RSA host keys generated at first start, as OpenSSH's ssh-keygen -A makes.
_GENERATED_RSA_BITS = 3072


def _new_ed25519() -> Any:
    return ed25519.Ed25519PrivateKey.generate()


def _new_rsa() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=_GENERATED_RSA_BITS)


#: The host keys generated in the state directory when none are configured:
#: file name and key maker, in the order they are loaded.
GENERATED_HOST_KEYS: tuple[tuple[str, Callable[[], Any]], ...] = (
    ("ssh_host_ed25519_key", _new_ed25519),
    ("ssh_host_rsa_key", _new_rsa),
)


def _load_host_key(path: Path) -> keys.Key:
    """
    Read one private host key (OpenSSH, PEM or PuTTY format).

    @raise ValueError: one line naming C{path}: unreadable, not a private
        key, protected by a passphrase, or too weak.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(
            f"SSH host key {path}: cannot be read: {e.strerror or e}"
        ) from None
    try:
        key = keys.Key.fromString(data)
    except keys.EncryptedKeyError:
        raise ValueError(
            f"SSH host key {path}: protected by a passphrase;"
            " the gateway needs it without one (ssh-keygen -p -N '')"
        ) from None
    except Exception:
        raise ValueError(
            f"SSH host key {path}: not an SSH private key cosgw can read"
        ) from None
    if key.isPublic():
        raise ValueError(
            f"SSH host key {path}: a public key; give the private key file"
        )
    check_key_strength(key, f"SSH host key {path}")
    return key


def _generated_host_key(
    state_dir: Path, name: str, make: Callable[[], Any]
) -> keys.Key:
    """
    The host key C{state_dir/name}, generated first if it does not exist.

    A new key is written to a temporary file (mode 0600) and linked into
    place, so a crash never leaves half a key and an existing key, or one a
    concurrent start wrote first, is never overwritten.
    """
    path = state_dir / name
    if not path.exists():
        private = make()
        text = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode("ascii")
        with as_gateway_user():
            created = create_exclusively(path, text)
        if created:
            key = keys.Key(private)
            log.info(
                "Generated SSH host key {path} ({fingerprint})",
                path=str(path),
                fingerprint=fingerprint(key),
            )
            return key
    return _load_host_key(path)


def load_host_keys(paths: Sequence[Path], state_dir: Path) -> dict[bytes, keys.Key]:
    """
    The gateway's SSH host keys, as C{{key.sshType(): private Key}}.

    With C{paths}, each file is loaded.  Without, the keys of
    L{GENERATED_HOST_KEYS} in C{state_dir} are used, generated at the first
    start (Ed25519 and RSA 3072, OpenSSH private format, mode 0600, in a
    state directory of mode 0700) and the same ones on every later start, so
    clients' known_hosts stay valid.  They belong to whoever runs this: the
    gateway's user (L{cosgw.privileges}).

    This blocks (file I/O, RSA generation): call it at start-up, before the
    reactor runs.

    @raise ValueError: one line naming the file: unreadable, not a private
        key, passphrase-protected, ssh-dss, RSA under 2048 bits, or a second
        key of a type already loaded.
    """
    loaded: list[tuple[Path, keys.Key]] = []
    if paths:
        for p in paths:
            path = Path(p)
            loaded.append((path, _load_host_key(path)))
    else:
        state_dir = private_directory(Path(state_dir))
        for name, make in GENERATED_HOST_KEYS:
            loaded.append(
                (state_dir / name, _generated_host_key(state_dir, name, make))
            )
    host_keys: dict[bytes, keys.Key] = {}
    for path, key in loaded:
        key_type = key.sshType()
        if key_type in host_keys:
            raise ValueError(
                f"SSH host key {path}: a second {key_type.decode('ascii')} key;"
                " give at most one key of each type"
            )
        host_keys[key_type] = key
    return host_keys
