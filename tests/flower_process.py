"""Starting `aidist flower` as a user does, for the tests that look at it (over HTTP in
tests/e2e/test_flower.py, in a browser in tests/e2e/test_flower_browser.py)."""

from __future__ import annotations

import base64
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from aidist.config import Settings
from tests.conftest import aidist_command, settings_env, wait_for

USER = "ops"
LISTENING = re.compile(r"flower on http://([^/]+):(\d+)/")


@dataclass
class FlowerProcess:
    """A running `aidist flower`, its log file and the port it listens on."""

    process: subprocess.Popen[bytes]
    log_path: Path
    port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def environment(settings: Settings) -> dict[str, str]:
    """What `aidist flower` runs with: these settings, and no stray FLOWER_* or credentials from
    the test's own environment."""
    env = settings_env(settings)
    for name in [n for n in env if n.startswith("FLOWER_")]:
        del env[name]
    if settings.flower_basic_auth is None:
        env.pop("AIDIST_FLOWER_BASIC_AUTH", None)
    if settings.flower_db is None:  # not one state file per test namespace in ~/.cache
        env["AIDIST_FLOWER_DB"] = str(Path(tempfile.gettempdir()) / "aidist-test-flower"
                                      / f"{settings.namespace}.db")
    return env


def get(url: str, credentials: str | None = None) -> tuple[int, bytes]:
    """Status and body of a GET (a connection refused counts as status 0)."""
    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(credentials.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def start_flower(settings: Settings, log_dir: Path, *args: str) -> FlowerProcess:
    """Start `aidist flower --port 0 ARGS` (the kernel picks the port, read back from its log)
    and wait until it answers /healthcheck."""
    log_path = log_dir / f"flower-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as handle:
        process = subprocess.Popen([aidist_command(), "flower", "--port", "0", *args],
                                   env=environment(settings), cwd=log_dir, stdout=handle,
                                   stderr=subprocess.STDOUT)

    def listening() -> int:
        if process.poll() is not None:
            pytest.fail(f"aidist flower exited with {process.returncode}:\n"
                        f"{log_path.read_text()[-3000:]}")
        found = LISTENING.search(log_path.read_text(errors="replace"))
        return int(found.group(2)) if found else 0

    port = int(str(wait_for(listening, timeout=60, message="aidist flower to listen")))
    flower = FlowerProcess(process, log_path, port)
    wait_for(lambda: get(flower.url("/healthcheck"))[0] == 200, timeout=30,
             message="flower's /healthcheck")
    return flower
