"""
Reading a configuration file's text and its INI sections.

configparser's errors quote the offending line, which may hold a secret, and
its getters know nothing of cosgw's bounds and units; L{parse_ini} and
L{Section} stand between it and the loaders so that every error is one line
naming the file, section and key, and never shows a secret.  L{Section} also
records which keys were read: what is left over is a typo (cosgw's format)
or a key cosgw ignores (V5's).
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NoReturn

from cosgw.config.model import ConfigError
from cosgw.config.values import CONTROL_RE, format_size, parse_bool, parse_size

_V5_DETECT_RE = re.compile(r"^[ \t]*\[[ \t]*COS_ACCOUNT", re.IGNORECASE | re.MULTILINE)
# A section name nothing will use: turns configparser's DEFAULT section off,
# so a [DEFAULT] in the file is just another (unknown) section.
_NO_DEFAULT_SECTION = "\x00no default section"
_MISSING = object()


def looks_like_v5(text: str) -> bool:
    """Any C{[COS_ACCOUNT...]} section makes a file V5's: cosgw's own format
    has no such section, and every V5 file has at least one."""
    return _V5_DETECT_RE.search(text) is not None


def read_text(source: Path, label: str) -> str:
    """Read the file as UTF-8 (a BOM is fine); V5 files may be GB18030."""
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{label}: no such file", path=label) from None
    except OSError as e:
        raise ConfigError(
            f"{label}: cannot read: {e.strerror or e.__class__.__name__}", path=label
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        utf8_error = e
    # Chinese editors save V5 files (whose comments are Chinese) as GBK;
    # V5 on Python 2 read bytes and never noticed.  Only V5 files get this
    # leniency: cosgw's own format is UTF-8.
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        text = None
    if text is not None and looks_like_v5(text):
        return text
    line = data[: utf8_error.start].count(b"\n") + 1
    raise ConfigError(f"{label}: line {line}: expected UTF-8 text", path=label)


def parse_ini(text: str, label: str, *, v5: bool) -> configparser.RawConfigParser:
    """
    Parse INI text, turning configparser's errors into one-line
    L{ConfigError}s that give the line number but never the line (it could
    hold a secret).
    """
    if v5:
        # As Python 2's RawConfigParser, which V5 used: "=" or ":", ";" after
        # whitespace starts a comment, a repeated key or section is merged.
        parser = configparser.RawConfigParser(
            delimiters=("=", ":"),
            comment_prefixes=("#", ";"),
            inline_comment_prefixes=(";",),
            strict=False,
            empty_lines_in_values=False,
            default_section=_NO_DEFAULT_SECTION,
        )
    else:
        # Whole-line comments only: "#" or ";" inside a value (a password,
        # an endpoint string) is part of the value.
        parser = configparser.RawConfigParser(
            delimiters=("=",),
            comment_prefixes=("#", ";"),
            inline_comment_prefixes=None,
            strict=True,
            empty_lines_in_values=False,
            default_section=_NO_DEFAULT_SECTION,
        )
    try:
        parser.read_string(text, source=label)
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            f"{label}: line {e.lineno}: expected a [section] header first",
            path=label,
        ) from None
    except configparser.DuplicateSectionError as e:
        raise ConfigError(
            f"{label}: [{e.section}]: defined again at line {e.lineno};"
            " expected each section once",
            path=label,
            section=str(e.section),
        ) from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(
            f"{label}: [{e.section}] {e.option}: set again at line {e.lineno};"
            " expected each key once per section",
            path=label,
            section=str(e.section),
            key=str(e.option),
        ) from None
    except configparser.ParsingError as e:
        lines = ", ".join(str(lineno) for lineno, _ in e.errors)
        raise ConfigError(
            f"{label}: line {lines}: expected '[section]' or 'key = value'",
            path=label,
        ) from None
    except configparser.Error as e:  # anything else configparser may add
        raise ConfigError(
            f"{label}: cannot parse: {e.__class__.__name__}", path=label
        ) from None
    return parser


def _quote(value: str) -> str:
    """A value for an error message: quoted, one line, not too long."""
    if len(value) > 80:
        value = value[:77] + "..."
    return repr(value)


class Section:
    """
    One section's values, with typed getters that raise L{ConfigError}s
    naming the file, section and key, and a record of which keys were read
    (what is left is unknown).
    """

    def __init__(
        self,
        label: str,
        name: str,
        values: Mapping[str, str],
        secrets: Iterable[str] = (),
    ) -> None:
        self.label = label
        self.name = name
        self._values = dict(values)
        self._secrets = frozenset(secrets)
        self._used: set[str] = set()

    # -- errors --------------------------------------------------------------

    def fail(self, key: str | None, expected: str, got: object = _MISSING) -> NoReturn:
        """Raise the one-line error for C{key}: what was expected, and got."""
        where = f"{self.label}: [{self.name}]"
        if key is not None:
            where += f" {key}"
        if got is _MISSING:
            message = f"{where}: expected {expected}"
        elif key in self._secrets:
            message = f"{where}: expected {expected} (the value is not shown)"
        else:
            message = f"{where}: expected {expected}, got {_quote(str(got))}"
        raise ConfigError(message, path=self.label, section=self.name, key=key)

    def missing(self, key: str, expected: str) -> NoReturn:
        """Raise the error for a required key that is absent or empty."""
        raise ConfigError(
            f"{self.label}: [{self.name}] {key}: missing; expected {expected}",
            path=self.label,
            section=self.name,
            key=key,
        )

    # -- raw access ----------------------------------------------------------

    def has(self, key: str) -> bool:
        return key in self._values

    def raw(self, key: str) -> str | None:
        """The value as written (stripped), or None when the key is absent."""
        self._used.add(key)
        value = self._values.get(key)
        return None if value is None else value.strip()

    def text(self, key: str) -> str | None:
        """The value, or None when the key is absent or empty."""
        value = self.raw(key)
        return value or None

    def require(self, key: str, expected: str) -> str:
        value = self.text(key)
        if value is None:
            self.missing(key, expected)
        return value

    def unused(self) -> list[str]:
        return [key for key in self._values if key not in self._used]

    def keys(self) -> list[str]:
        return list(self._values)

    # -- typed access --------------------------------------------------------

    def integer(
        self, key: str, default: int, minimum: int, maximum: int | None = None
    ) -> int:
        value = self.text(key)
        if value is None:
            return default
        bounds = f"an integer >= {minimum}"
        if maximum is not None:
            bounds = f"an integer from {minimum} to {maximum}"
        try:
            number = int(value)
        except ValueError:
            self.fail(key, bounds, value)
        if number < minimum or (maximum is not None and number > maximum):
            self.fail(key, bounds, value)
        return number

    def size(
        self, key: str, default: int | None, minimum: int, maximum: int
    ) -> int | None:
        value = self.text(key)
        if value is None:
            return default
        expected = (
            f"a size from {format_size(minimum)} to {format_size(maximum)}"
            " (bytes, or a number with K, M, G or T)"
        )
        try:
            size = parse_size(value)
        except ValueError:
            self.fail(key, expected, value)
        if not minimum <= size <= maximum:
            self.fail(key, expected, value)
        return size

    def boolean(self, key: str, default: bool) -> bool:
        value = self.text(key)
        if value is None:
            return default
        try:
            return parse_bool(value)
        except ValueError:
            self.fail(key, "yes/no, true/false, on/off or 1/0", value)

    def number(self, key: str, default: float, minimum: float, maximum: float) -> float:
        """A decimal number such as C{"1"} or C{"0.25"}, within bounds."""
        value = self.text(key)
        if value is None:
            return default
        expected = f"a number from {minimum:g} to {maximum:g}"
        try:
            number = float(value)
        except ValueError:
            self.fail(key, expected, value)
        # "not (a <= x <= b)" also refuses nan, which compares false.
        if not minimum <= number <= maximum:
            self.fail(key, expected, value)
        return number

    def words(self, key: str) -> list[str]:
        """The value split at blanks, commas and new lines (none if absent)."""
        value = self.text(key)
        if value is None:
            return []
        return [word for word in re.split(r"[\s,]+", value) if word]

    def path(self, key: str, base: Path) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        return self._resolve(key, base, value)

    def paths(self, key: str, base: Path) -> list[Path]:
        """Paths separated by blanks, commas or new lines (none if absent)."""
        return [self._resolve(key, base, word) for word in self.words(key)]

    def _resolve(self, key: str, base: Path, value: str) -> Path:
        if CONTROL_RE.search(value):
            self.fail(key, "a path without control characters", value)
        return base / Path(value).expanduser()
