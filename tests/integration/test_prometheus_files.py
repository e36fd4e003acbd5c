"""docker/prometheus/ and docker/grafana/: Prometheus's own checker accepts the scrape config and
the alert rules, the rules fire on the series they watch (``promtool test rules``), and every
metric name the dashboard and the alerts query is one the code exports (the workers'
``workers.metrics`` and the autoscaler's ``ScalingMetrics``)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from workers.autoscaler import ScalingMetrics
from workers.metrics import exported_series, series_names

pytestmark = pytest.mark.integration

PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = REPO / "docker" / "prometheus"
GRAFANA = REPO / "docker" / "grafana"
NAME = re.compile(r"\baidist_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_sum", "_count")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def _exported() -> set[str]:
    return exported_series() | series_names(ScalingMetrics("gpu").registry)


def _names(expression: str) -> set[str]:
    """The aidist metric names an expression queries, as the code declares them."""
    found = set()
    for queried in NAME.findall(expression):
        bases = [queried.removesuffix(s) for s in SUFFIXES if queried.endswith(s)]
        found.add(next((base for base in bases if base in _exported()), queried))
    return found


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "aidist.json").read_text())
    return loaded


def _alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_config_and_the_rules() -> None:
    config = _promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    rules = _promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_every_queried_name_is_exported() -> None:
    dashboard = _dashboard()
    expressions = [target["expr"] for panel in _panels(dashboard["panels"])
                   for target in panel.get("targets", [])]
    expressions += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    expressions += [rule["expr"] for rule in _alerts()]
    used = set().union(*map(_names, expressions))
    assert used - _exported() == set()
    # the panels the dashboard promises, by what they query
    assert {"aidist_jobs_total", "aidist_job_run_seconds", "aidist_job_queue_wait_seconds",
            "aidist_backlog_seconds", "aidist_desired_workers", "aidist_workers",
            "aidist_batch_size", "aidist_cache_hits_total", "aidist_cache_misses_total"} <= used


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (datasource,) = provisioned["datasources"]
    uids = {panel["datasource"]["uid"] for panel in _panels(_dashboard()["panels"])
            if "datasource" in panel}
    assert uids == {datasource["uid"]}
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "aidist.yaml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]


# Series over time, in promtool's notation, and the alerts they must (and must not) raise.
RULE_TESTS: dict[str, Any] = {
    "rule_files": [str(PROMETHEUS / "alerts.yml")],
    "evaluation_interval": "1m",
    "tests": [{
        "interval": "1m",
        "input_series": [
            # cpu: 1 of 10 jobs fails (above 5%); gpu: none fails
            {"series": 'aidist_jobs_total{pool="cpu",target="normalize",status="succeeded"}',
             "values": "0+90x30"},
            {"series": 'aidist_jobs_total{pool="cpu",target="normalize",status="failed"}',
             "values": "0+10x30"},
            {"series": 'aidist_jobs_total{pool="gpu",target="minilm",status="succeeded"}',
             "values": "0+100x30"},
            {"series": 'aidist_jobs_total{pool="gpu",target="minilm",status="failed"}',
             "values": "0x30"},
            {"series": "aidist_dead_lettered_total", "values": "0x10 1x20"},
            # gpu: a backlog and no ready worker; cpu: a backlog and a ready worker
            {"series": 'aidist_backlog_jobs{pool="gpu"}', "values": "50x30"},
            {"series": 'aidist_workers_ready{pool="gpu"}', "values": "0x30"},
            {"series": 'aidist_backlog_jobs{pool="cpu"}', "values": "50x30"},
            {"series": 'aidist_workers_ready{pool="cpu"}', "values": "1x30"},
            {"series": 'aidist_backlog_seconds{pool="cpu"}', "values": "10x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "AidistJobFailureRatio", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "pool": "cpu", "target": "normalize"},
                 "exp_annotations": {"summary": "normalize: 10% of jobs fail"}},
            ]},
            {"eval_time": "12m", "alertname": "AidistDeadLettersGrowing", "exp_alerts": [
                {"exp_labels": {"severity": "warning"},
                 "exp_annotations": {"summary": "1 job(s) dead-lettered in the last 15 minutes"}},
            ]},
            {"eval_time": "28m", "alertname": "AidistDeadLettersGrowing", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "AidistPoolNoReadyWorker", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "pool": "gpu"},
                 "exp_annotations": {"summary": "pool gpu has no ready worker"}},
            ]},
            {"eval_time": "10m", "alertname": "AidistBacklogAboveTarget", "exp_alerts": []},
        ],
    }],
}


def test_the_alerts_fire_on_what_they_watch(tmp_path: Path) -> None:
    descriptions = {rule["alert"]: rule["annotations"].get("description") for rule in _alerts()}
    rule_tests = copy.deepcopy(RULE_TESTS)
    for case in rule_tests["tests"][0]["alert_rule_test"]:  # the summaries above, verbatim
        for alert in case["exp_alerts"]:
            if descriptions[case["alertname"]] is not None:
                alert["exp_annotations"]["description"] = descriptions[case["alertname"]]
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(yaml.safe_dump(rule_tests))
    result = _promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
