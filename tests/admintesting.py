"""
What the admin listener's tests share: plain HTTP requests as operators'
tools make them (run them off the reactor thread with C{in_thread}), the
metrics as Prometheus parses them, and a headless Chromium.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from prometheus_client.parser import text_string_to_metric_families

#: Where Debian's chromium and chromium-driver put the browser and driver.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def request(
    port: int,
    path: str,
    method: str = "GET",
    auth: Optional[tuple[str, str]] = None,
    headers: Optional[Mapping[str, str]] = None,
    host: str = "127.0.0.1",
) -> Answer:
    """One HTTP request to the admin listener (blocking: use in a thread)."""
    req = urllib.request.Request(
        f"http://{host}:{port}{path}", method=method, headers=dict(headers or {})
    )
    if method == "POST":
        req.data = b""
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as answer:
            return Answer(answer.status, answer.read(), dict(answer.headers))
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.read(), dict(e.headers))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of a scrape, parsed by prometheus_client's own parser:
    C{(name, sorted labels) -> value}.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scrape: Mapping[Any, float], name: str, **labels: str) -> float:
    """One sample of a parsed scrape; 0 when absent (a counter not yet used)."""
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def browser(window: tuple[int, int] = (1280, 900)) -> Any:
    """
    A headless Chromium driven by selenium, through the driver Debian
    installs (so selenium never looks for one on the network).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={window[0]},{window[1]}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
