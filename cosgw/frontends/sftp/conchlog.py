"""
The logger given to Conch's classes in place of their own.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

__all__ = ["ConchLogger"]


class ConchLogger(Logger):
    """
    The logger for Conch's classes: its warnings and errors pass, its debug
    and info events (one per packet, window adjustment or SFTP request) are
    dropped before they are even built; twistd's own observer would format
    and write every one of them.
    """

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    def info(self, *args: Any, **kwargs: Any) -> None:
        pass
