"""`aidist flower`, run as a user runs it: basic auth on by default from AIDIST_FLOWER_BASIC_AUTH,
credentials never in argv or logs, refusals that name the setting, --no-auth on loopback only,
and Flower seeing aidist's own workers."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from aidist.config import Settings
from aidist.jobs import JobKind
from aidist.processes import warm_stop
from aidist.transport import dead_letter_queue, queue_name
from tests.conftest import WorkerProcess, aidist_command, make_settings, wait_for
from tests.flower_process import USER, FlowerProcess, environment, get, start_flower

pytestmark = pytest.mark.e2e


def run_flower(settings: Settings, tmp_path: Path, *args: str
               ) -> subprocess.CompletedProcess[str]:
    """`aidist flower ARGS` expected to refuse, so to exit on its own."""
    return subprocess.run([aidist_command(), "flower", "--port", "0", *args],
                          env=environment(settings), cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def password() -> str:
    return f"pw-{uuid.uuid4().hex}"


@pytest.fixture
def flower(tmp_path: Path, password: str) -> Iterator[FlowerProcess]:
    settings = make_settings(namespace=f"fl{uuid.uuid4().hex[:10]}",
                             flower_basic_auth=SecretStr(f"{USER}:{password}"))
    started = start_flower(settings, tmp_path)
    yield started
    assert warm_stop(started.process, timeout=30) == 0


def test_flower_asks_for_the_configured_credentials(flower: FlowerProcess,
                                                    password: str) -> None:
    assert get(flower.url("/workers"))[0] == 401
    assert get(flower.url("/workers"), f"{USER}:wrong-{password}")[0] == 401
    assert get(flower.url("/api/workers"))[0] == 401
    status, body = get(flower.url("/workers"), f"{USER}:{password}")
    assert status == 200
    assert b"Flower" in body
    # The probe the Kubernetes manifest uses answers without credentials.
    assert get(flower.url("/healthcheck")) == (200, b"OK")


def test_credentials_never_appear_in_argv_or_the_log(flower: FlowerProcess,
                                                     password: str) -> None:
    pid = flower.process.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    ps = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True,
                        text=True, check=True).stdout
    assert "flower" in cmdline and "flower" in ps  # the right process
    assert password not in cmdline
    assert password not in ps
    assert get(flower.url("/workers"), f"{USER}:{password}")[0] == 200
    assert get(flower.url("/workers"), f"{USER}:nope")[0] == 401
    assert "basic auth" in flower.log()
    assert password not in flower.log()


def test_without_credentials_it_refuses_to_start_and_names_the_setting(tmp_path: Path) -> None:
    settings = make_settings(namespace=f"fl{uuid.uuid4().hex[:10]}", flower_basic_auth=None)
    done = run_flower(settings, tmp_path)
    assert done.returncode == 2
    assert "AIDIST_FLOWER_BASIC_AUTH=user:password" in done.stderr
    assert "Traceback" not in done.stderr

    env = {**environment(settings), "AIDIST_FLOWER_BASIC_AUTH": "no-colon-secret"}
    malformed = subprocess.run([aidist_command(), "flower"], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=60, check=False)
    assert malformed.returncode == 2
    assert "AIDIST_FLOWER_BASIC_AUTH" in malformed.stderr
    assert "user:password" in malformed.stderr
    assert "no-colon-secret" not in malformed.stderr


def test_no_auth_is_refused_off_loopback(tmp_path: Path, password: str) -> None:
    for settings in (make_settings(flower_basic_auth=None),
                     make_settings(flower_basic_auth=SecretStr(f"{USER}:{password}"))):
        done = run_flower(settings, tmp_path, "--no-auth", "--address", "0.0.0.0")
        assert done.returncode == 2
        assert "only allowed on loopback" in done.stderr
        assert "AIDIST_FLOWER_BASIC_AUTH" in done.stderr


def test_no_auth_on_loopback_serves_without_credentials(tmp_path: Path) -> None:
    settings = make_settings(namespace=f"fl{uuid.uuid4().hex[:10]}", flower_basic_auth=None)
    started = start_flower(settings, tmp_path, "--no-auth", "--address", "127.0.0.1")
    try:
        assert get(started.url("/workers"))[0] == 200
        assert "no auth, loopback" in started.log()
    finally:
        assert warm_stop(started.process, timeout=30) == 0


def test_flower_sees_aidist_workers_and_their_queues(workers: dict[str, WorkerProcess],
                                                     settings: Settings, tmp_path: Path,
                                                     password: str) -> None:
    with_auth = make_settings(**{**settings.model_dump(),
                                 "flower_basic_auth": SecretStr(f"{USER}:{password}")})
    started = start_flower(with_auth, tmp_path)
    host = socket.gethostname()
    nodes = {pool: worker.node(settings) for pool, worker in workers.items()}
    # stable names: a slot of the pool on this host, with the test namespace (not the pid)
    for pool, node in nodes.items():
        assert re.fullmatch(rf"{pool}-\d+\.{settings.namespace}@{re.escape(host)}", node), node
    expected = {"gpu": queue_name(settings.namespace, JobKind.INFER, "minilm"),
                "cpu": queue_name(settings.namespace, JobKind.PREPROCESS, "tokenize")}
    try:
        def queues_seen() -> bool:
            status, body = get(started.url("/api/workers?refresh=1"), f"{USER}:{password}")
            listed = json.loads(body) if status == 200 else {}
            return all(expected[pool] in {q["name"] for q in
                                          listed.get(node, {}).get("active_queues") or []}
                       for pool, node in nodes.items())

        assert wait_for(queues_seen, timeout=60,
                        message="Flower to list the session's workers and their queues")
    finally:
        assert warm_stop(started.process, timeout=30) == 0


def test_the_broker_page_shows_queue_depths_and_the_dead_letters_and_state_persists(
        workers: dict[str, WorkerProcess], settings: Settings, tmp_path: Path,
        password: str) -> None:
    """With RabbitMQ's management plugin on (scripts/services.sh enables it), the Broker page
    lists aidist's queues, the dead-letter queue included; Flower keeps its task history in
    AIDIST_FLOWER_DB across restarts."""
    db = tmp_path / "state" / "flower.db"
    with_auth = make_settings(**{**settings.model_dump(), "flower_db": str(db),
                                 "flower_basic_auth": SecretStr(f"{USER}:{password}")})
    started = start_flower(with_auth, tmp_path)
    try:
        def broker_page() -> str:
            status, body = get(started.url("/broker"), f"{USER}:{password}")
            text = body.decode(errors="replace")
            return text if status == 200 and dead_letter_queue(settings.namespace) in text else ""

        page = wait_for(broker_page, timeout=60, message="the dead-letter queue on /broker")
        assert queue_name(settings.namespace, JobKind.INFER, "minilm") in page
        assert password not in started.log()
    finally:
        assert warm_stop(started.process, timeout=30) == 0
    assert list(db.parent.iterdir())  # the state Flower saved on its way out
    assert db.parent.stat().st_mode & 0o077 == 0  # private: Flower writes it with shelve
