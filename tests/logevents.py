"""Collecting the log events of one namespace during a test."""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase


class LogEvents:
    """The log events of C{namespace}, from now until the test ends."""

    def __init__(self, case: SynchronousTestCase, namespace: str) -> None:
        self.namespace = namespace
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)
        case.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == self.namespace:
            self.events.append(event)

    def at(self, level: LogLevel) -> list[dict[str, Any]]:
        return [e for e in self.events if e["log_level"] is level]
