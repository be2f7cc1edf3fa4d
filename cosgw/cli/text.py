"""
What the C{cosgw} command reads from its arguments and writes for people:
durations, sizes, times and tables.

Names shown in a table (users, object keys, addresses) come from clients or
from other writers of a bucket; they pass through L{for_reply} so that a
control character can neither forge a line nor drive the terminal.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Optional

from cosgw.escaping import for_reply

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """
    Seconds from C{"90"}, C{"90s"}, C{"30m"}, C{"2h"}, C{"7d"}, C{"1w"} or a
    sum of them (C{"1h30m"}), as an operator writes an age.

    @raise ValueError: if C{text} is not such a duration.
    """
    text = text.strip()
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _SECONDS[match.group(2).lower()]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 30m, 2h, 7d)")
    return total


def format_duration(seconds: float) -> str:
    """A length of time in its two largest units: C{"45s"}, C{"3m05s"},
    C{"2h10m"}, C{"3d04h"}."""
    s = max(int(seconds), 0)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


def format_bytes(size: Optional[int]) -> str:
    """A byte count with a binary unit, to three significant digits."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{size} B"
    return f"{value:.3g} {unit}"


def format_time(when: float) -> str:
    """A moment in the local time zone, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def format_address(host: str, port: Optional[int]) -> str:
    """C{host:port}, with an IPv6 address in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """
    Left-aligned columns under C{headers}, two spaces apart; every cell is
    shown with its control characters replaced by C{?}.
    """
    cells = [[for_reply(str(cell)) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in cells
    ]
    return "\n".join(lines)
