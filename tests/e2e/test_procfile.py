"""The top-level Procfile, run the way a user runs it: `honcho start` in a directory with a .env,
against a database that does not exist yet (the release step creates and migrates it), jobs of
both pools through the client, Flower behind its credentials, then Ctrl-C (SIGINT to honcho) and
nothing of the stack left running.

Also the reason the Procfile can migrate from several lines at once: concurrent `aidist db
upgrade`s on one fresh database take turns (db/setup.py's advisory lock) and all succeed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import make_url

from aidist.config import Settings
from aidist.processes import children_of
from aidist.transport import queue_name, queue_stats
from db.store import JobStore
from models import build_registry
from producers import Client
from tests.conftest import (
    BASE,
    REPO,
    aidist_command,
    make_settings,
    remove_everything_of,
    wait_for,
)
from tests.flower_process import USER, get

pytestmark = pytest.mark.e2e

VENV_BIN = Path(aidist_command()).parent
FLOWER_LISTENING = re.compile(r"flower\.1\s*\|.*flower on http://[^/]+:(\d+)/")
Process = tuple[int, str]  # pid and its start time (/proc/PID/stat field 22): pids get reused


def fresh_settings() -> Settings:
    """A namespace of its own and a database nobody has created: only the release step will."""
    database_url = make_url(BASE.database_url).set(
        database=f"aidist_procfile_{uuid.uuid4().hex[:10]}").render_as_string(hide_password=False)
    return make_settings(database_url=database_url, namespace=f"p{uuid.uuid4().hex[:10]}",
                         plugins=[])


@pytest.fixture
def stack_settings() -> Iterator[Settings]:
    settings = fresh_settings()
    yield settings
    remove_everything_of(settings)


def honcho_environment() -> dict[str, str]:
    """The caller's environment without aidist's or Flower's variables (the .env says them all),
    with the venv's `aidist` first on PATH, as in an activated venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIDIST_", "FLOWER_", "PYTHONPATH"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_dotenv(directory: Path, settings: Settings, password: str) -> None:
    lines = [f"{name}={value}" for name, value in settings.as_env().items()]
    lines += [f"AIDIST_FLOWER_BASIC_AUTH={USER}:{password}", "FLOWER_PORT=0"]
    (directory / ".env").write_text("\n".join(lines) + "\n")


def started_at(pid: int) -> str | None:
    """The process's start time, or None once it is gone (a zombie counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:  # it exited meanwhile
        return ""


def process_tree(root: int) -> set[Process]:
    """``root`` and every descendant, each with its start time."""
    found: set[Process] = set()
    pending = [root]
    while pending:
        pid = pending.pop()
        start = started_at(pid)
        if start is not None:
            found.add((pid, start))
            pending.extend(children_of(pid))
    return found


def still_running(processes: set[Process]) -> set[Process]:
    return {(pid, start) for pid, start in processes if started_at(pid) == start}


def consuming(settings: Settings, honcho: subprocess.Popen[bytes], log: Path) -> bool:
    """Every queue of both pools has a consumer (both workers loaded their models)."""
    if honcho.poll() is not None:
        pytest.fail(f"honcho exited with {honcho.returncode}:\n{log.read_text()[-4000:]}")
    registry = build_registry([])
    queues = [queue_name(settings.namespace, spec.kind, spec.name) for spec in registry.specs()]
    return all(stat.consumers > 0 for stat in queue_stats(settings.broker_url, queues))


def test_honcho_runs_the_stack_and_ctrl_c_stops_all_of_it(stack_settings: Settings,
                                                          tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    write_dotenv(tmp_path, stack_settings, password)
    log = tmp_path / "honcho.log"
    with log.open("wb") as handle:
        honcho = subprocess.Popen(
            [str(VENV_BIN / "honcho"), "--no-colour", "start", "-f", str(REPO / "Procfile")],
            cwd=tmp_path, env=honcho_environment(), stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True)
    stack: set[Process] = set()
    try:
        wait_for(lambda: consuming(stack_settings, honcho, log), timeout=240, interval=0.25,
                 message="both pools to consume their queues")
        found = wait_for(lambda: FLOWER_LISTENING.search(log.read_text(errors="replace")),
                         timeout=60, message="Flower's listening line")
        assert isinstance(found, re.Match)
        flower = f"http://127.0.0.1:{found.group(1)}/api/workers"
        stack = process_tree(honcho.pid)
        names = [command_line(pid) for pid, _ in stack]
        assert sum("tail -f /dev/null" in name for name in names) == 1, names
        # honcho, its runner per line, the four lines' processes, the cpu pool's children
        assert len(stack) >= 1 + 4 + 4 + 2, names

        assert get(flower)[0] == 401
        assert get(flower, f"{USER}:{password}")[0] == 200

        text = f"deployed with honcho {uuid.uuid4().hex}"
        with Client(stack_settings) as client:
            embedding = client.infer("minilm", text)
            cleaned = client.preprocess("normalize", f"  Hello\t {text}  ")
            vector = np.asarray(embedding.result(timeout=120))
            assert cleaned.result(timeout=120) == f"Hello {text}"
        assert vector.shape == (384,) and vector.dtype == np.float32
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
        store = JobStore.connect(stack_settings.database_url)
        try:
            records = [store.get(embedding.id), store.get(cleaned.id)]
        finally:
            store.close()
        assert all(r.worker and not r.cache_hit for r in records), records
        assert records[0].worker != records[1].worker  # one job per pool

        os.kill(honcho.pid, signal.SIGINT)
        assert honcho.wait(timeout=120) == 130, log.read_text()[-4000:]
        wait_for(lambda: not still_running(stack), timeout=30,
                 message="every process of the stack to exit")
        output = log.read_text(errors="replace")
        # One line created the database; every line that uses it saw it at head before starting.
        assert output.count("created and migrated to head") == 1, output[-4000:]
        for line in ("release", "worker_gpu", "worker_cpu"):
            assert re.search(rf"{line}\.1\s*\|.*migrated to head", output), line
        for line in ("release", "worker_gpu", "worker_cpu", "flower"):
            assert f"sending SIGTERM to {line}.1" in output, output[-4000:]
    finally:
        if honcho.poll() is None:
            os.kill(honcho.pid, signal.SIGINT)
            honcho.wait(timeout=120)
        for pid, _ in still_running(stack):  # only what this test started
            os.kill(pid, signal.SIGKILL)


def test_concurrent_upgrades_of_a_fresh_database_take_turns(stack_settings: Settings,
                                                            tmp_path: Path) -> None:
    env = {**honcho_environment(), **stack_settings.as_env()}
    runs = [subprocess.Popen([aidist_command(), "db", "upgrade"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(4)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
    assert sum("created and migrated" in output for output in outputs) == 1, outputs
