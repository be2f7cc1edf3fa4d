"""
Running the C{cosgw} command as an operator does, in a process of its own,
and the configs and stores the tests of L{cosgw.cli} give it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Any, Optional

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Secrets in the configs the tests write: no output may show them.
SECRET_KEY = "SUPERSECRETKEYVALUE"
PASSWORD = "SUPERSECRETPASSWORD"


def cosgw(
    *args: str,
    stdin: str = "",
    env: Optional[dict[str, str]] = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run C{python -m cosgw.cli ARGS} and return what it did."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT)] + [p for p in [environ.get("PYTHONPATH")] if p]
    )
    environ.pop("COSGW_ADMIN_PASSWORD", None)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cosgw.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
    )


def temporary_directory(testcase: Any) -> Path:
    path = Path(tempfile.mkdtemp(prefix="cosgw-cli-"))
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


def write_config(directory: Path, text: str, name: str = "cosgw.ini") -> Path:
    """C{text} (dedented) as the file C{name} in C{directory}."""
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def cos_section(server: Any, bucket: str, secret_key: Optional[str] = None) -> str:
    """The keys of a COS storage on the test server (tests/cosserver.py)."""
    return textwrap.dedent(
        f"""
        type = cos
        bucket = {bucket}
        region = {server.region}
        endpoint = http://127.0.0.1:{server.port}
        secret_id = {server.secret_id}
        secret_key = {secret_key or server.secret_key}
        """
    )


def new_bucket(server: Any) -> str:
    """A fresh bucket on the test server."""
    return str(server.create_bucket("cli" + uuid.uuid4().hex[:12]))
