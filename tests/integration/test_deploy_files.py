"""The container files in docker/ and the top level: both Dockerfiles pass hadolint with nothing
to report (an ignore pragma only with its reason above it), build what the images need and run as
a non-root user with an exec-form entrypoint; .dockerignore lets through exactly what they copy;
docker/compose.yaml passes a real Compose implementation (Debian's docker-compose, `config`), and
its parsed result has the start order, healthchecks, grace periods and GPU reservation the
deployment relies on, with commands the real CLI accepts and healthchecks that work against a
real aidist metrics endpoint. No Docker engine here: nothing is built or started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from aidist import cli
from aidist.config import Settings
from tests.conftest import REPO
from tests.integration.test_k8s_manifests import cli_params
from workers.batching import SHUTDOWN_GRACE_S
from workers.metrics_http import serve_metrics

pytestmark = pytest.mark.integration

DOCKER = REPO / "docker"
DOCKERFILES = (DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu")
COMPOSE = DOCKER / "compose.yaml"
HADOLINT = Path(sys.executable).parent / "hadolint"
PASSWORDS = {"RABBITMQ_PASSWORD": "rabbit1", "POSTGRES_PASSWORD": "postgres1",
             "AIDIST_FLOWER_BASIC_AUTH": "ops:flower1", "METRICS_PASSWORD": "metrics1",
             "GRAFANA_ADMIN_PASSWORD": "grafana1"}
METRICS_CREDENTIALS = f"aidist:{PASSWORDS['METRICS_PASSWORD']}"
LONG_RUNNING = {"rabbitmq", "redis", "postgres", "gpu-worker", "cpu-worker", "autoscale-cpu",
                "autoscale-gpu", "flower", "prometheus", "grafana"}
AIDIST_SERVICES = {"migrate", "gpu-worker", "cpu-worker", "autoscale-cpu", "autoscale-gpu",
                   "flower"}
DRAINING = {"gpu-worker", "cpu-worker", "autoscale-cpu", "autoscale-gpu"}
GPU_SERVICES = {"gpu-worker", "autoscale-gpu"}
JOB_TIME_LIMIT_S = float(Settings.model_fields["job_time_limit_s"].default)
Doc = dict[str, Any]


# --- Dockerfiles -----------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last:]


def torch_pin() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if d.startswith("torch==")]
    assert len(pins) == 1
    return str(pins[0])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path, tmp_path: Path) -> None:
    config = tmp_path / "hadolint.yaml"  # not a user's or the checkout's own config
    config.write_text("{}\n")
    done = subprocess.run([str(HADOLINT), "--config", str(config), "--format", "json",
                           str(dockerfile)], capture_output=True, text=True, timeout=60,
                          check=False)
    findings = json.loads(done.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']} {f['code']} {f['level']}: {f['message']}"
                                     for f in findings)
    assert done.returncode == 0, done.stderr
    # Every rule switched off says why, on the comment line above the pragma.
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            reason = lines[number - 1]
            assert reason.startswith("#") and len(reason) > 30, f"line {number + 1}: no reason"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_multi_stage_non_root_with_exec_form_entrypoint(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    assert sum(keyword == "FROM" for keyword, _ in steps) == 2
    final = final_stage(dockerfile)
    body = " ".join(args for _, args in final)
    assert "COPY" in [k for k, _ in final] and "--from=build /opt/aidist /opt/aidist" in body
    for tool in ("pip install", "gcc", "g++", "build-essential", "python3-venv", "python3-dev"):
        assert tool not in body, f"{tool} in the final stage"
    user = [args for keyword, args in final if keyword == "USER"]
    assert user and re.fullmatch(r"[1-9]\d{3,}(:\d+)?", user[-1]), user
    for keyword in ("ENTRYPOINT", "CMD"):
        args = [a for k, a in final if k == keyword]
        assert len(args) == 1 and isinstance(json.loads(args[0]), list), f"{keyword}: {args}"
    entrypoint = json.loads(next(a for k, a in final if k == "ENTRYPOINT"))
    command = json.loads(next(a for k, a in final if k == "CMD"))
    assert entrypoint == ["aidist"]
    name, params = cli_params(["aidist", *command])
    assert name == "worker" and params["pool"] == dockerfile.suffix.lstrip(".")
    # MiniLM comes in its wheel: nothing may reach for a model hub at run time.
    assert "HF_HUB_OFFLINE=1" in body


def test_cpu_image_pins_the_cpu_build_of_torch_from_the_cpu_index() -> None:
    text = " ".join(args for _, args in instructions(DOCKERFILES[0]))
    assert f"{torch_pin()}+cpu" in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "python:3.11-slim" in text


def test_gpu_image_pins_cuda_torch_on_a_cuda_base_and_runs_one_solo_worker() -> None:
    steps = instructions(DOCKERFILES[1])
    bases = [args for keyword, args in steps if keyword == "FROM"]
    assert all(re.match(r"nvidia/cuda:13\.\d+\.\d+-(base|runtime)-ubuntu", b) for b in bases)
    text = " ".join(args for _, args in steps)
    assert f"{torch_pin()} " in text and "+cpu" not in text
    command = json.loads(next(a for k, a in final_stage(DOCKERFILES[1]) if k == "CMD"))
    _, params = cli_params(["aidist", *command])
    # The gpu pool is Celery's solo pool: no fork after CUDA, one process for its one GPU.
    assert params["pool"] == "gpu" and params["device"] == "cuda:0"


def test_dockerignore_sends_exactly_what_the_dockerfiles_copy() -> None:
    patterns = [line for line in (REPO / ".dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    assert patterns[0] == "*"  # an allowlist: a new file stays out unless named
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for dockerfile in DOCKERFILES:
        for keyword, args in instructions(dockerfile):
            if keyword == "COPY" and not args.startswith("--from"):
                copied.update(args.split()[:-1])
    assert copied == allowed
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {p.rstrip("*") for p in packages["packages"]["find"]["include"]} <= allowed
    assert "**/.env" in patterns


# --- compose ---------------------------------------------------------------------------------


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    assert found, "docker-compose is missing: run scripts/tools.sh (make test does)"
    return found


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "empty.env"  # so that a docker/.env of a developer plays no part
    env_file.write_text("")
    clean = {k: v for k, v in os.environ.items() if k not in PASSWORDS}
    return subprocess.run([docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE),
                           "config"], env={**clean, **env}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Doc:
    done = compose_config(tmp_path_factory.mktemp("compose"), PASSWORDS)
    assert done.returncode == 0, done.stderr
    parsed: Doc = yaml.safe_load(done.stdout)
    return parsed


def seconds(duration: str) -> float:
    """Compose's duration ("11m", "1m30s", "300s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def test_compose_refuses_to_start_without_its_passwords(tmp_path: Path) -> None:
    for missing in PASSWORDS:
        done = compose_config(tmp_path, {k: v for k, v in PASSWORDS.items() if k != missing})
        assert done.returncode != 0 and missing in done.stderr, (missing, done.stderr)


def test_compose_has_every_service_with_its_start_order(compose: Doc) -> None:
    services: dict[str, Doc] = compose["services"]
    assert set(services) == LONG_RUNNING | {"migrate"}
    assert "management" in services["rabbitmq"]["image"]
    migrate = services["migrate"]
    assert migrate["restart"] == "no" and "healthcheck" not in migrate
    assert migrate["command"] == ["db", "upgrade"]
    db_group = typer.main.get_command(cli.app).commands["db"]  # type: ignore[attr-defined]
    assert "upgrade" in db_group.commands
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in AIDIST_SERVICES - {"migrate", "flower"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        for needed in ("rabbitmq", "redis", "postgres"):
            assert depends[needed] == {"condition": "service_healthy"}, (name, needed)
    for name, service in services.items():
        for condition in service.get("depends_on", {}).values():
            assert condition["condition"] in ("service_healthy",
                                              "service_completed_successfully"), name
    assert "postgres-data" in compose["volumes"]
    assert any(v.startswith("postgres-data:/var/lib/postgresql/data")
               for v in services["postgres"]["volumes"])


def test_compose_long_running_services_have_healthchecks_and_drain(compose: Doc) -> None:
    services: dict[str, Doc] = compose["services"]
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert services[name]["restart"] == "unless-stopped", name
    longest_stop = JOB_TIME_LIMIT_S + SHUTDOWN_GRACE_S
    for name in DRAINING:
        assert seconds(services[name]["stop_grace_period"]) >= longest_stop, name
        assert services[name]["environment"]["AIDIST_JOB_TIME_LIMIT_S"] == str(
            int(JOB_TIME_LIMIT_S))


def test_compose_commands_are_the_real_cli_and_the_gpu_is_reserved(compose: Doc) -> None:
    services: dict[str, Doc] = compose["services"]
    for name in AIDIST_SERVICES:
        service = services[name]
        image = "aidist:gpu" if name in GPU_SERVICES else "aidist:cpu"
        assert service["image"] == image and service["build"]["dockerfile"].endswith(
            f"Dockerfile.{image.split(':')[1]}"), name
        cli_params(["aidist", *service["command"]])
        assert set(service["environment"]) >= {"AIDIST_BROKER_URL", "AIDIST_REDIS_URL",
                                                "AIDIST_DATABASE_URL"}, name
    for name in GPU_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
        _, gpu = cli_params(["aidist", *services[name]["command"]])
        assert gpu["pool"] == "gpu" and gpu["device"] == "cuda:0", name
    assert services["autoscale-gpu"]["profiles"] == ["autoscale-gpu"]  # gpu-worker's stand-in
    _, scaler = cli_params(["aidist", *services["autoscale-cpu"]["command"]])
    assert scaler["pool"] == "cpu" and scaler["metrics_port"] == 9401
    _, flower = cli_params(["aidist", *services["flower"]["command"]])
    assert flower["address"] == "0.0.0.0" and not flower["no_auth"]
    assert services["flower"]["environment"]["AIDIST_FLOWER_BASIC_AUTH"] == PASSWORDS[
        "AIDIST_FLOWER_BASIC_AUTH"]
    for service in services.values():  # published on loopback only
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def run_healthcheck(test: list[str], env: dict[str, str]) -> int:
    assert test[:2] == ["CMD", "python"]
    return subprocess.run([sys.executable, *test[2:]], env={**os.environ, **env},
                          capture_output=True, timeout=60, check=False).returncode


def test_worker_and_autoscaler_healthchecks_ask_a_real_healthz(compose: Doc) -> None:
    credentials = METRICS_CREDENTIALS
    ready = {"value": True}
    server = serve_metrics(CollectorRegistry(), host="127.0.0.1", port=0,
                           credentials=SecretStr(credentials),
                           healthy=lambda: (ready["value"], "test"))
    try:
        assert compose["services"]["cpu-worker"]["environment"][
            "AIDIST_METRICS_BASIC_AUTH"] == credentials
        worker = compose["services"]["cpu-worker"]["healthcheck"]["test"]
        env = {"AIDIST_WORKER_METRICS_PORT": str(server.port),
               "AIDIST_METRICS_BASIC_AUTH": credentials}
        assert run_healthcheck(worker, env) == 0
        assert run_healthcheck(worker, {**env, "AIDIST_METRICS_BASIC_AUTH": "aidist:wrong"}) != 0
        ready["value"] = False  # models not warm yet: 503
        assert run_healthcheck(worker, env) != 0
        ready["value"] = True
        scaler = [part.replace("127.0.0.1:9401/", f"127.0.0.1:{server.port}/")
                  for part in compose["services"]["autoscale-cpu"]["healthcheck"]["test"]]
        assert scaler != compose["services"]["autoscale-cpu"]["healthcheck"]["test"]
        assert run_healthcheck(scaler, env) == 0
    finally:
        server.close()


def bind_mounts(service: Doc) -> dict[str, str]:
    """A service's bind mounts: target in the container -> source on the host."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])
            if v.startswith("/")}


def test_prometheus_scrapes_what_compose_runs_with_its_secret(compose: Doc) -> None:
    services: dict[str, Doc] = compose["services"]
    prometheus = services["prometheus"]
    mounts = bind_mounts(prometheus)
    assert {Path(source) for source in mounts.values()} == {
        DOCKER / "prometheus" / "prometheus.yml", DOCKER / "prometheus" / "alerts.yml"}
    config_target = "/etc/prometheus/prometheus.yml"
    assert f"--config.file={config_target}" in prometheus["command"]
    config = yaml.safe_load(Path(mounts[config_target]).read_text())
    for rule_file in config["rule_files"]:  # relative to the config file's folder
        assert str(Path(config_target).parent / rule_file) in mounts, rule_file
    secret_targets = {s["target"] for s in prometheus["secrets"]}
    assert compose["secrets"]["metrics_password"]["file"] == str(
        DOCKER / "secrets" / "metrics_password")
    metrics_user = METRICS_CREDENTIALS.partition(":")[0]
    for job in config["scrape_configs"]:
        if "basic_auth" in job:
            assert job["basic_auth"]["username"] == metrics_user, job["job_name"]
            assert job["basic_auth"]["password_file"] in secret_targets, job["job_name"]
        for group in job["static_configs"]:
            for target in group["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in services, f"{job['job_name']} scrapes {host}, not in compose"
                command = services[host]["command"]
                environment = services[host]["environment"]
                served = (environment.get("AIDIST_WORKER_METRICS_PORT")
                          or cli_params(["aidist", *command])[1].get("metrics_port")
                          or cli_params(["aidist", *command])[1].get("port"))
                assert str(served) == port, target
                if "basic_auth" in job:
                    assert environment["AIDIST_METRICS_BASIC_AUTH"] == METRICS_CREDENTIALS
                    assert cli_params(["aidist", *command])[1]["metrics_host"] == "0.0.0.0"


def test_grafana_gets_the_provisioning_and_dashboards_it_points_at(compose: Doc) -> None:
    mounts = bind_mounts(compose["services"]["grafana"])
    grafana = DOCKER / "grafana"
    assert Path(mounts["/etc/grafana/provisioning"]) == grafana / "provisioning"
    dashboards_target = next(t for t, s in mounts.items() if Path(s) == grafana / "dashboards")
    assert (grafana / "dashboards" / "aidist.json").is_file()
    providers = [p for f in (grafana / "provisioning" / "dashboards").glob("*.y*ml")
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers and all(p["options"]["path"] == dashboards_target for p in providers)
    sources = [s for f in (grafana / "provisioning" / "datasources").glob("*.y*ml")
               for s in yaml.safe_load(f.read_text())["datasources"]]
    assert [s["url"] for s in sources if s["type"] == "prometheus"] == ["http://prometheus:9090"]
