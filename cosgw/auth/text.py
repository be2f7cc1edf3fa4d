"""
User names and passwords as text, whichever protocol brought them.

Twisted's FTP decodes the USER/PASS bytes as latin-1; Conch hands over raw
bytes.  Accounts are text, so an account must be the same account whatever
protocol the client speaks: this module undoes both.
"""

from __future__ import annotations

from typing import Any, Union

__all__ = ["decode_bytes", "text_candidates"]


def decode_bytes(data: bytes) -> str:
    """
    UTF-8, as SSH (RFC 4252 section 5) and modern FTP clients (RFC 2640)
    send; latin-1 for anything else, so no byte string is unrepresentable.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def text_candidates(value: Union[str, bytes, Any]) -> list[str]:
    """
    The texts a client may have meant by C{value}, most likely first.

    Conch hands over bytes: decode them as UTF-8.  Twisted's FTP decodes the
    command line as latin-1, so a UTF-8 client's C{"josé"} arrives as
    C{"josÃ©"}: a str that survives C{encode("latin-1").decode("utf-8")} is
    tried that way first, then as it came (a latin-1 client's C{"josé"}).
    """
    if isinstance(value, bytes):
        return [decode_bytes(value)]
    if not isinstance(value, str):
        return []
    try:
        redecoded = value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return [value]
    if redecoded == value:
        return [value]
    return [redecoded, value]
