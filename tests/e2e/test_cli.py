"""The `aidist` and `celery` command lines, run as a user would run them."""

from __future__ import annotations

import json
import subprocess

import pytest

from aidist.config import Settings
from tests.conftest import aidist_command, make_settings, settings_env

pytestmark = pytest.mark.e2e


def _run(settings: Settings, *args: str, stdin: str | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aidist_command(), *args], input=stdin, capture_output=True, text=True,
                          env=settings_env(settings), timeout=timeout, check=False)


def test_submit_reads_lines_from_stdin_and_prints_json_lines(workers: object,
                                                             settings: Settings) -> None:
    done = _run(settings, "submit", "flaky", "-", stdin="first line\n\nsecond, longer line\n"
                "this one goes boom\n")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [line["status"] for line in lines] == ["succeeded", "succeeded", "failed"]
    assert [line.get("result") for line in lines[:2]] == [len("first line"),
                                                          len("second, longer line")]
    assert "flaky model refuses" in lines[2]["error"]
    assert "3/3" in done.stderr  # the progress bar


def test_submit_single_input_then_jobs_show_and_ls(workers: object, settings: Settings) -> None:
    done = _run(settings, "submit", "normalize", "  Some   TEXT ", "--params",
                '{"lowercase": true}')
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(x) for x in done.stdout.splitlines() if x.strip()]
    assert line["result"] == "some text"
    shown = _run(settings, "jobs", "show", line["id"])
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout and "normalize" in shown.stdout
    listed = _run(settings, "jobs", "ls", "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    assert line["id"][:8] in listed.stdout


def test_models_lists_builtins(settings: Settings) -> None:
    done = _run(settings, "models")
    assert done.returncode == 0, done.stderr
    for name in ("minilm", "toy-classifier", "tokenize", "chunk", "normalize"):
        assert name in done.stdout
    inputs = {cells[1].strip(): cells[3].strip() for cells in
              (line.split("│") for line in done.stdout.splitlines()) if len(cells) > 4}
    assert (inputs["toy-vision"], inputs["image"], inputs["minilm"]) == ("tensor", "image", "text")


def test_unknown_model_and_bad_input_are_one_line_errors(settings: Settings) -> None:
    unknown = _run(settings, "submit", "no-such-model", "text")
    assert unknown.returncode == 2
    assert "unknown model or op 'no-such-model'" in unknown.stderr
    assert "minilm" in unknown.stderr and "Traceback" not in unknown.stderr
    params = _run(settings, "submit", "chunk", "text", "--params", '{"size": 0}')
    assert params.returncode == 2 and "size" in params.stderr
    assert "Traceback" not in params.stderr


@pytest.mark.parametrize(
    ("field", "url", "service"),
    [
        ("broker_url", "amqp://guest:secret@127.0.0.1:1//", "RabbitMQ"),
        ("redis_url", "redis://127.0.0.1:1/0", "Redis"),
        ("database_url", "postgresql+psycopg://postgres:secret@127.0.0.1:1/aidist", "PostgreSQL"),
    ],
)
def test_service_down_is_named_quickly_without_traceback(settings: Settings, field: str,
                                                         url: str, service: str) -> None:
    broken = make_settings(**{**settings.model_dump(), field: url})
    # the bound, 10 s, plus 5 s for the interpreter to start: past it, TimeoutExpired
    done = _run(broken, "submit", "toy-classifier", "hello", timeout=10 + 5)
    assert done.returncode == 3
    assert f"{service} is unavailable at" in done.stderr
    assert "127.0.0.1:1" in done.stderr and "secret" not in done.stderr
    assert "Traceback" not in done.stderr


def test_celery_inspect_sees_aidist_workers(workers: object, settings: Settings) -> None:
    celery = aidist_command().rsplit("/", 1)[0] + "/celery"
    done = subprocess.run([celery, "-A", "workers.celery_app", "inspect", "active_queues",
                           "--timeout", "10", "--json"], capture_output=True, text=True,
                          env=settings_env(settings), timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    replies = json.loads(done.stdout)
    queues = {q["name"] for reply in replies.values() for q in reply}
    assert f"{settings.namespace}.infer.minilm" in queues
    assert f"{settings.namespace}.preprocess.tokenize" in queues
