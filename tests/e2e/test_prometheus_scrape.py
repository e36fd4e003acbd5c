"""A real Prometheus scrapes a running worker with basic auth, and its query API returns the
worker's series with the counts the worker recorded."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from aidist.config import Settings
from aidist.processes import warm_stop
from db import ResultCache
from producers import Client
from tests.conftest import delete_queues, free_port, make_settings, start_worker, wait_for

pytestmark = pytest.mark.e2e
PROMETHEUS = "/usr/bin/prometheus"
USER, PASSWORD = "scraper", "prometheus-secret"
JOBS = 12


def _config(worker_port: int, password_file: Path) -> str:
    return json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "aidist-worker",
            "basic_auth": {"username": USER, "password_file": str(password_file)},
            "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
        }],
    })


def _query(port: int, expression: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode(
        {"query": expression})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except OSError:  # not listening yet
        return []
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_a_worker_with_credentials(settings: Settings,
                                                     tmp_path: Path) -> None:
    own = make_settings(**{**settings.model_dump(), "namespace": f"{settings.namespace}p",
                           "metrics_basic_auth": f"{USER}:{PASSWORD}"})
    worker_port, prometheus_port = free_port(), free_port()
    worker = start_worker(own, "cpu", tmp_path, "--concurrency", "1", "--models", "normalize",
                          "--metrics-port", str(worker_port), serving=["normalize"])
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    config = tmp_path / "prometheus.yml"
    config.write_text(_config(worker_port, password_file))
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
        stdout=(tmp_path / "prometheus.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        with Client(own) as client:
            for job in client.preprocess_many("normalize", [f" {uuid.uuid4().hex} {i} "
                                                            for i in range(JOBS)]):
                job.result(timeout=60)
        up = 'up{job="aidist-worker"} == 1'
        wait_for(lambda: _query(prometheus_port, up), timeout=60, interval=0.5,
                 message="Prometheus to scrape the worker with its credentials")
        counted = 'aidist_jobs_total{pool="cpu",target="normalize",status="succeeded"}'
        wait_for(lambda: any(float(s["value"][1]) == JOBS
                             for s in _query(prometheus_port, counted)),
                 timeout=60, interval=0.5, message=f"{JOBS} jobs in Prometheus")
        series = {s["metric"]["status"] for s in _query(prometheus_port, "aidist_jobs_total")}
        assert series == {"succeeded", "failed", "cancelled", "expired"}
    finally:
        assert warm_stop(server, 30) == 0, (tmp_path / "prometheus.log").read_text()
        assert worker.stop() == 0
        delete_queues(own)
        ResultCache.connect(own.redis_url, own.namespace).delete_namespace()
