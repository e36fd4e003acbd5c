"""The Kubernetes manifests in docker/k8s/: valid for Kubernetes (kubernetes-validate, strict) and
for KEDA (its CRD's OpenAPI schema, vendored in tests/k8s/), wired to settings that exist and to
Secrets for every URL and credential, with commands the real CLI accepts, and KEDA triggers whose
query is the one ``db.backlog.keda_query`` renders, run here against a real Postgres with a known
backlog to check the replica count KEDA would ask for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer.core
import typer.main
import yaml
from sqlalchemy import text

from aidist import cli
from aidist.config import Settings
from aidist.jobs import JobStatus
from db import setup as db_setup
from db.backlog import BacklogStore, ServiceStat, keda_query
from db.store import JobStore
from models import build_registry
from tests.conftest import REPO
from tests.integration.conftest import NewJobFactory

pytestmark = pytest.mark.integration

K8S = REPO / "docker" / "k8s"
KEDA_CRDS = REPO / "tests" / "k8s"
SECRETS_EXAMPLE = "secrets.example.yaml"
# The oldest Kubernetes minor still commonly run, and the newest the pinned validator ships.
KUBERNETES_VERSIONS = ("1.33", kubernetes_validate.latest_version())
DEFAULT_SECONDS_PER_JOB = Settings.model_fields["autoscale_seconds_per_job"].default
DEFAULT_JOB_TIME_LIMIT_S = Settings.model_fields["job_time_limit_s"].default
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[tuple[str, Doc]]:
    """(file name, document) of every manifest in docker/k8s/ but the kustomization."""
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml"))
            if path.name != "kustomization.yaml" for doc in load(path)]


def find(kind: str, name: str) -> Doc:
    found = [doc for _, doc in manifests()
             if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in docker/k8s/, found {len(found)}"
    return found[0]


def of_kind(kind: str) -> list[Doc]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def containers(deployment: Doc) -> list[Doc]:
    listed: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    return listed


def cli_params(command: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``command`` (``aidist SUB ...``) with the real CLI, without running it: a typo in
    an option fails here, not in a crash-looping pod."""
    assert command[0] == "aidist"
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    context = group.context_class(group, info_name="aidist")
    name, sub, rest = group.resolve_command(context, command[1:])
    assert name is not None and sub is not None
    return name, sub.make_context(name, rest, parent=context).params


def worker_pool(deployment: Doc) -> tuple[str, int]:
    """The pool a worker Deployment runs and the job-running processes one pod has."""
    name, params = cli_params(containers(deployment)[0]["command"])
    assert name == "worker"
    processes = 1 if params["pool"] == "gpu" else params["concurrency"]
    assert isinstance(processes, int), "a cpu-pool Deployment must say --concurrency N"
    return params["pool"], processes


def pool_models(pool: str) -> list[str]:
    return [spec.name for spec in build_registry().specs() if spec.pool == pool]


def trigger(scaled_object: Doc) -> Doc:
    triggers: list[Doc] = scaled_object["spec"]["triggers"]
    assert [t["type"] for t in triggers] == ["postgresql"]
    return triggers[0]


def keda_replicas(value: float, target: float) -> int:
    """The pod count KEDA's HPA asks for (metricType AverageValue): KEDA hands the value over as a
    Quantity in milli-units, and the HPA takes ceil(value / target)."""
    return math.ceil(round(value, 3) / target)


# --- the files -------------------------------------------------------------------------------


def test_kustomization_applies_every_manifest_but_the_secrets_example() -> None:
    kustomization = load(K8S / "kustomization.yaml")[0]
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert SECRETS_EXAMPLE in files
    assert set(kustomization["resources"]) == files - {SECRETS_EXAMPLE}
    assert kustomization["namespace"] == "aidist"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_manifests_validate_strictly_against_kubernetes(version: str) -> None:
    validated: list[str] = []
    for name, doc in manifests():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {path}: {exc.message}")
        validated.append(doc["kind"])
    assert sorted(validated) == sorted(["Namespace", "ConfigMap", "Secret", "Secret", "Secret",
                                        "Deployment", "Deployment", "Deployment", "Service"])

    # The validator is strict: an unknown field would not pass.
    typo = find("Deployment", "aidist-gpu")
    typo = {**typo, "spec": {**typo["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)


# --- KEDA's CRD schema -----------------------------------------------------------------------


def strict(schema: Doc) -> Doc:
    """A CRD's OpenAPI schema as the API server's strict field validation applies it (kubectl's
    default): an object that lists its properties takes no others, unless it says
    x-kubernetes-preserve-unknown-fields or gives additionalProperties."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {key: strict(sub) for key, sub in out["properties"].items()}
        if ("additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    return out


def keda_validator(kind: str) -> jsonschema.protocols.Validator:
    plural = {"ScaledObject": "scaledobjects", "TriggerAuthentication": "triggerauthentications"}
    crd = load(KEDA_CRDS / f"keda.sh_{plural[kind]}.yaml")[0]
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    assert version["served"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    validator_class = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


def check_metadata(doc: Doc) -> None:
    """A CRD schema leaves metadata open (the API server checks it as ObjectMeta)."""
    metadata = doc["metadata"]
    assert set(metadata) <= {"name", "namespace", "labels", "annotations"}
    assert DNS_LABEL.match(metadata["name"]), metadata["name"]


def test_keda_objects_validate_against_keda_crd_schemas() -> None:
    keda = [doc for _, doc in manifests() if doc["apiVersion"].startswith("keda.sh/")]
    assert sorted(doc["kind"] for doc in keda) == [
        "ScaledObject", "ScaledObject", "TriggerAuthentication"]
    validators = {kind: keda_validator(kind) for kind in ("ScaledObject", "TriggerAuthentication")}
    for doc in keda:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        errors = [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
                  for e in validators[doc["kind"]].iter_errors(doc)]
        assert errors == [], f"{doc['kind']} {doc['metadata']['name']}: {errors}"
        check_metadata(doc)

    for scaled in of_kind("ScaledObject"):
        spec = scaled["spec"]
        # The CRD's CEL rule, which jsonschema does not evaluate.
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["minReplicaCount"] == 0  # scale to zero
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60  # no flapping
        assert 1 <= spec["pollingInterval"] <= 30
        assert spec["cooldownPeriod"] >= spec["pollingInterval"]

    # The schema is applied strictly: a misspelt field or a number where KEDA wants a string
    # would be rejected.
    scaled = of_kind("ScaledObject")[0]
    bad_trigger = {**trigger(scaled), "metadata": {**trigger(scaled)["metadata"],
                                                   "targetQueryValue": 30}}
    assert not validators["ScaledObject"].is_valid(
        {**scaled, "spec": {**scaled["spec"], "triggers": [bad_trigger]}})
    assert not validators["ScaledObject"].is_valid(
        {**scaled, "spec": {**scaled["spec"], "minReplicas": 0}})


def test_scaled_objects_reference_what_the_manifests_define() -> None:
    auth_names = {doc["metadata"]["name"] for doc in of_kind("TriggerAuthentication")}
    targets = set()
    for scaled in of_kind("ScaledObject"):
        deployment = find("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        targets.add(worker_pool(deployment)[0])
        assert trigger(scaled)["authenticationRef"]["name"] in auth_names
    assert targets == {"gpu", "cpu"}


# --- the query and the target ----------------------------------------------------------------


def test_trigger_query_is_what_db_backlog_renders_for_the_pools_models() -> None:
    for scaled in of_kind("ScaledObject"):
        pool, _ = worker_pool(find("Deployment", scaled["spec"]["scaleTargetRef"]["name"]))
        expected = keda_query(pool_models(pool), DEFAULT_SECONDS_PER_JOB)
        indented = "\n".join("          " + line for line in expected.splitlines())
        assert trigger(scaled)["metadata"]["query"] == expected, (
            f"the {pool} pool's query in docker/k8s/keda.yaml differs from db.backlog.keda_query;"
            f" paste this under `query: |-`:\n{indented}")


def test_targets_are_per_pod_so_the_cpu_pool_multiplies_by_its_concurrency() -> None:
    per_process = set()
    for scaled in of_kind("ScaledObject"):
        _, processes = worker_pool(find("Deployment", scaled["spec"]["scaleTargetRef"]["name"]))
        target = float(trigger(scaled)["metadata"]["targetQueryValue"])
        per_process.add(target / processes)
        assert float(trigger(scaled)["metadata"]["activationTargetQueryValue"]) == 0.0
    assert per_process == {30.0}  # both pools: 30 s of backlog per worker process


# --- the worker Deployments ------------------------------------------------------------------


def test_gpu_pool_runs_one_worker_per_gpu_with_a_grace_period_above_the_longest_batch() -> None:
    gpu = find("Deployment", "aidist-gpu")
    (container,) = containers(gpu)
    assert container["command"] == ["aidist", "worker", "--pool", "gpu", "--device", "cuda:0"]
    assert container["image"] == "aidist:gpu"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    config = find("ConfigMap", "aidist-config")["data"]
    time_limit = float(config.get("AIDIST_JOB_TIME_LIMIT_S", DEFAULT_JOB_TIME_LIMIT_S))
    for deployment in (gpu, find("Deployment", "aidist-cpu")):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > time_limit
        (worker,) = containers(deployment)
        # SIGTERM (Celery's warm shutdown) drains; no hook delays it, and no probe invents an
        # endpoint the worker does not serve.
        assert not {"lifecycle", "readinessProbe", "livenessProbe"} & set(worker)


def test_commands_parse_with_the_real_cli() -> None:
    seen = {}
    for deployment in of_kind("Deployment"):
        name, params = cli_params(containers(deployment)[0]["command"])
        seen[deployment["metadata"]["name"]] = (name, params)
    assert seen["aidist-cpu"][0] == "worker" and seen["aidist-cpu"][1]["pool"] == "cpu"
    assert seen["aidist-flower"] == ("flower", {"port": 5555, "address": "0.0.0.0",
                                                "no_auth": False})
    flower = find("Deployment", "aidist-flower")
    (container,) = containers(flower)
    assert container["ports"][0]["containerPort"] == 5555
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert find("Service", "aidist-flower")["spec"]["selector"] == \
        flower["spec"]["template"]["metadata"]["labels"]


# --- settings and secrets --------------------------------------------------------------------


def env_of(deployment: Doc) -> list[Doc]:
    env: list[Doc] = containers(deployment)[0].get("env", [])
    return env


def test_every_aidist_variable_is_a_setting_and_secrets_come_from_secrets() -> None:
    fields = set(Settings.model_fields)
    config = find("ConfigMap", "aidist-config")["data"]
    names = list(config) + [e["name"] for d in of_kind("Deployment") for e in env_of(d)]
    aidist_names = [n for n in names if n.startswith("AIDIST_")]
    assert aidist_names
    unknown = [n for n in aidist_names if n.removeprefix("AIDIST_").lower() not in fields]
    assert unknown == [], f"not settings of aidist.config.Settings: {unknown}"
    for value in config.values():
        assert "://" not in value, "URLs (with their passwords) belong in a Secret"

    example = {doc["metadata"]["name"]: set(doc["stringData"]) for doc in of_kind("Secret")}
    referenced = []
    for deployment in of_kind("Deployment"):
        for entry in env_of(deployment):
            if entry["name"].endswith(("_URL", "_BASIC_AUTH")):
                assert "value" not in entry, f"{entry['name']} inline in a manifest"
                referenced.append(entry["valueFrom"]["secretKeyRef"])
            if "valueFrom" in entry:
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["key"] in example.get(ref["name"], set()), ref
    for auth in of_kind("TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in example.get(ref["name"], set()), ref
    assert {r["name"] for r in referenced} == {"aidist-services", "aidist-flower"}
    worker_env = {e["name"] for e in env_of(find("Deployment", "aidist-gpu"))}
    assert "AIDIST_FLOWER_BASIC_AUTH" not in worker_env  # each pod gets only what it needs


# --- the query against a real Postgres -------------------------------------------------------


@pytest.fixture
def backlog_store(scratch_database_url: str) -> Iterator[JobStore]:
    """A migrated database of this test's own (dropped after)."""
    db_setup.upgrade(scratch_database_url)
    store = JobStore.connect(scratch_database_url)
    try:
        yield store
    finally:
        store.close()


def run_trigger(store: JobStore, scaled: Doc) -> float:
    """The trigger's query text, exactly as written in the manifest."""
    with store.engine.connect() as connection:
        value = connection.execute(text(trigger(scaled)["metadata"]["query"])).scalar_one()
    return float(value)


def add_jobs(store: JobStore, new_job: NewJobFactory, target: str, *, count: int,
             status: JobStatus) -> None:
    kind = build_registry().get(target).kind
    store.insert_jobs([new_job(target=target, kind=kind, status=status, version="v-test")
                       for _ in range(count)])


def test_trigger_queries_give_the_expected_replicas_for_a_known_backlog(
        backlog_store: JobStore, new_job: NewJobFactory) -> None:
    gpu, cpu = find("ScaledObject", "aidist-gpu"), find("ScaledObject", "aidist-cpu")
    # 600 minilm jobs waiting (500 queued, 100 running), measured by two workers at 0.1 s a job
    # (30 busy seconds over 300 jobs) with a 10 s cold start: 600 x 0.1 + 10 = 70 s.
    add_jobs(backlog_store, new_job, "minilm", count=500, status=JobStatus.QUEUED)
    add_jobs(backlog_store, new_job, "minilm", count=100, status=JobStatus.RUNNING)
    add_jobs(backlog_store, new_job, "minilm", count=300, status=JobStatus.SUCCEEDED)
    BacklogStore(backlog_store.engine).record([
        ServiceStat("gpu-1@pod-a", "minilm", "gpu", jobs=200.0, busy_s=20.0, cold_start_s=10.0),
        ServiceStat("gpu-2@pod-b", "minilm", "gpu", jobs=100.0, busy_s=10.0, cold_start_s=8.0),
    ])
    # 4,800 preprocessing jobs, never measured: the default 0.05 s each = 240 s of one process.
    add_jobs(backlog_store, new_job, "tokenize", count=4000, status=JobStatus.QUEUED)
    add_jobs(backlog_store, new_job, "chunk", count=800, status=JobStatus.RUNNING)
    add_jobs(backlog_store, new_job, "normalize", count=50, status=JobStatus.FAILED)

    gpu_seconds, cpu_seconds = run_trigger(backlog_store, gpu), run_trigger(backlog_store, cpu)
    assert gpu_seconds == pytest.approx(70.0)
    assert cpu_seconds == pytest.approx(4800 * DEFAULT_SECONDS_PER_JOB)
    gpu_target = float(trigger(gpu)["metadata"]["targetQueryValue"])
    cpu_target = float(trigger(cpu)["metadata"]["targetQueryValue"])
    assert (gpu_target, cpu_target) == (30.0, 120.0)
    assert keda_replicas(gpu_seconds, gpu_target) == 3  # 70 s / 30 s per pod
    assert keda_replicas(cpu_seconds, cpu_target) == 2  # 240 s / (4 processes x 30 s)
    # What aidist's own supervisor reads is the same number.
    backlog = BacklogStore(backlog_store.engine)
    assert backlog.backlog_seconds(pool_models("gpu"), DEFAULT_SECONDS_PER_JOB) == \
        pytest.approx(gpu_seconds)


def test_an_empty_backlog_gives_zero_so_keda_scales_to_zero(
        backlog_store: JobStore, new_job: NewJobFactory) -> None:
    # Finished jobs and a measured cold start, but nothing queued or running.
    add_jobs(backlog_store, new_job, "minilm", count=20, status=JobStatus.SUCCEEDED)
    add_jobs(backlog_store, new_job, "tokenize", count=20, status=JobStatus.CANCELLED)
    BacklogStore(backlog_store.engine).record([
        ServiceStat("gpu-1@pod-a", "minilm", "gpu", jobs=10.0, busy_s=1.0, cold_start_s=10.0)])
    for scaled in of_kind("ScaledObject"):
        value = run_trigger(backlog_store, scaled)
        assert value == 0.0
        activation = float(trigger(scaled)["metadata"]["activationTargetQueryValue"])
        assert not value > activation  # KEDA deactivates: 0 pods after the cooldown
        assert keda_replicas(value, float(trigger(scaled)["metadata"]["targetQueryValue"])) == 0
    # One queued job wakes its pool: active, and one pod (the cold start alone is 10 s).
    add_jobs(backlog_store, new_job, "minilm", count=1, status=JobStatus.QUEUED)
    gpu = find("ScaledObject", "aidist-gpu")
    value = run_trigger(backlog_store, gpu)
    assert value == pytest.approx(10.1)
    assert keda_replicas(value, float(trigger(gpu)["metadata"]["targetQueryValue"])) == 1
    assert run_trigger(backlog_store, find("ScaledObject", "aidist-cpu")) == 0.0
