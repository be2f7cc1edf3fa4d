"""
Reading a user's SSH public keys: C{authorized_keys} lines, from a key's
value or from a file, each checked and normalised to C{"type base64"}.

A key that cannot log in should stop the gateway at start, not surprise
the user at login, so every key is parsed now with Twisted's own key parser,
the one the SFTP frontend verifies signatures with.  That parser is
imported only when a file has keys: the rest of L{cosgw.config} imports
only the standard library, because the twistd plugin and the command-line
tools import it and it must never install a reactor
(C{twisted.conch.ssh.keys} installs none).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from cosgw.config.ini import Section

#: What starts an authorized_keys line without options: a key type.  A line
#: that starts with something else but has a key type later has options.
_SSH_KEY_TYPE_RE = re.compile(r"^(?:ssh|ecdsa|sk)-[A-Za-z0-9@.-]+$")
_PUBLIC_KEY_EXPECTED = "an OpenSSH public key 'type base64 [comment]'"
MIN_RSA_BITS = 2048


def load_authorized_keys(sec: Section, base: Path) -> tuple[str, ...]:
    """
    The keys of C{authorized_keys} (one per line of the value) and of the
    file C{authorized_keys_file} names (relative to C{base}), in that order,
    each once.
    """
    keys = []
    text = sec.raw("authorized_keys")
    if text:
        keys += parse_authorized_keys(
            sec, "authorized_keys", text.splitlines(), "of the value"
        )
    key = "authorized_keys_file"
    path = sec.path(key, base)
    if path is not None:
        try:
            content = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            sec.fail(key, "an existing authorized_keys file", path)
        except UnicodeDecodeError:
            sec.fail(key, "an authorized_keys file of UTF-8 text", path)
        except OSError as e:
            reason = e.strerror or e.__class__.__name__
            sec.fail(key, f"a readable authorized_keys file ({reason})", path)
        keys += parse_authorized_keys(sec, key, content.splitlines(), f"of {path}")
    return tuple(dict.fromkeys(keys))


def parse_authorized_keys(
    sec: Section, key: str, lines: Iterable[str], where: str
) -> list[str]:
    """
    Read authorized_keys lines (blank lines and C{#} comments skipped) into
    normalised C{"type base64"} keys; C{where} (C{"of the value"}, C{"of
    /path"}) says which lines an error's line number counts.
    """
    keys = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(_public_key(sec, key, line, f"on line {number} {where}"))
    return keys


def _public_key(sec: Section, key: str, line: str, where: str) -> str:
    """
    Check one C{type base64 [comment]} line with Twisted's key parser and
    return C{"type base64"}.  Refused: an options field (cosgw does not
    apply C{from=}, C{command=} and the like, so it must not seem to), DSA
    keys, RSA keys under L{MIN_RSA_BITS} bits, security-key and certificate
    types (Twisted cannot verify their signatures), and a type that is not
    the one inside the key data.
    """
    fields = line.split()
    kind = fields[0]
    if not _SSH_KEY_TYPE_RE.match(kind):
        if any(_SSH_KEY_TYPE_RE.match(word) for word in fields[1:]):
            sec.fail(
                key,
                f"'type base64 [comment]' {where}, without options (cosgw does"
                " not support from=, command= and the like)",
                kind,
            )
        sec.fail(key, f"{_PUBLIC_KEY_EXPECTED} {where}", line)
    if len(fields) < 2:
        sec.fail(key, f"{_PUBLIC_KEY_EXPECTED} {where}", line)
    if kind == "ssh-dss":
        sec.fail(key, f"an Ed25519, ECDSA or RSA key {where} (DSA is too weak)", kind)
    if kind.startswith("sk-") or "-cert-" in kind:
        sec.fail(
            key,
            f"an Ed25519, ECDSA or RSA key {where} (security-key and"
            " certificate keys are not supported)",
            kind,
        )
    normalised = f"{kind} {fields[1]}"
    # Imported here, not at the top: the package must stay cheap to import
    # (see the module docstring), and only configs with keys need it.
    from twisted.conch.ssh.keys import Key

    try:
        parsed = Key.fromString(normalised.encode("ascii"))
    except Exception:
        # Bad base64 or key data raises BadKeyError, binascii.Error,
        # struct.error, ValueError or IndexError: all mean the same here.
        sec.fail(key, f"{_PUBLIC_KEY_EXPECTED} {where}", normalised)
    if parsed.sshType() != kind.encode("ascii"):
        actual = parsed.sshType().decode("ascii")
        sec.fail(key, f"a key {where} whose type matches its data ({actual!r})", kind)
    if parsed.type() == "RSA" and parsed.size() < MIN_RSA_BITS:
        sec.fail(
            key,
            f"an RSA key of at least {MIN_RSA_BITS} bits {where}",
            f"{kind} ({parsed.size()} bits)",
        )
    return normalised
