"""Settings: one typed object, read once from the environment (``AIDIST_*``) or a ``.env`` file.

Callers build ``Settings()`` once at the edge (CLI, ``Client()``) and pass it down; nothing below
reads the environment itself.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aidist.errors import ConfigError


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def settings_problems(exc: ValidationError) -> str:
    """One line per rejected setting, as the environment variable a user would set."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        name = "_".join(str(part) for part in error["loc"][:1]).upper() or "(settings)"
        lines.append(f"AIDIST_{name} ({name.lower()}): {error['msg']}")
    return "invalid settings, fix these variables (or .env entries): " + "; ".join(lines)


#: The shortest retention other than 0: a client told its job finished reads the result within
#: moments, and a prune must never take a row from under that read.
MIN_RETENTION_S = 60.0


class Settings(BaseSettings):
    """Everything configurable, with defaults that work on a single machine."""

    model_config = SettingsConfigDict(
        env_prefix="AIDIST_", env_file=".env", extra="ignore", frozen=True
    )

    def __init__(self, **values: Any) -> None:
        """Read the settings; a value that is not acceptable raises ``ConfigError`` naming the
        variable and the rule (never the value: it may be a secret)."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(settings_problems(exc)) from exc

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/aidist"

    namespace: str = Field(
        default="aidist",
        pattern=r"^[a-z][a-z0-9_-]{0,40}$",
        description="Prefix of queue names and Redis keys; lets several deployments share servers.",
    )
    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules imported at start-up that register models with models.register.",
    )

    connect_timeout_s: float = Field(default=5.0, gt=0)
    broker_heartbeat_s: float = Field(
        default=60.0, ge=0, le=600,
        description="Workers: AMQP heartbeat with RabbitMQ. A worker whose host vanishes (power "
                    "lost, link cut: no FIN ever arrives) is noticed by the broker 2-3 times "
                    "this long after its last data, and its unacked messages go to the other "
                    "workers (measured 29 s at 10, 177 s at Celery's default of 120, which "
                    "RabbitMQ negotiates down to its own 60). Flushes run on runner threads, so "
                    "heartbeats go on during a long batch. 60 keeps RabbitMQ's default; lower "
                    "it (10) where hosts may vanish. 0 = no heartbeat.")
    publish_retry_s: float = Field(
        default=15.0, ge=0,
        description="Client: how long a publish is retried when the broker fails mid-submit "
                    "(a restart); past it the call returns and the jobs, already recorded, wait "
                    "for a worker's sweeper to publish them. A broker that is down before a "
                    "submit fails it at once, with nothing recorded.")
    result_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    pack_size: int = Field(
        default=128, ge=1, le=10_000, description="Jobs per message when packing."
    )
    max_input_chars: int = Field(default=100_000, gt=0)
    max_jobs_per_call: int = Field(default=100_000, gt=0)

    prefetch_multiplier: int = Field(default=2, ge=1, le=64)
    batch_max_delay_ms: float = Field(
        default=10.0, ge=0, le=10_000,
        description="gpu pool: longest a job waits for others to share its batch.")
    batch_idle_ms: float = Field(
        default=2.0, ge=0, le=10_000,
        description="gpu pool: flush early once no message has arrived for this long.")
    batch_pipeline: bool | None = Field(
        default=None,
        description="gpu pool: run batch_runners flushes at once on threads of their own while "
                    "the consumer gathers the next. Unset: on where a worker runs model calls "
                    "side by side on a CPU (measured +4-17% there), off on a GPU (measured -12 to "
                    "-24% with two at batch 128-256 on an H200: the threads contend for the GIL). "
                    "Off, flushes still run on one thread of their own, one at a time: the "
                    "consumer's thread never runs a model, so heartbeats and control replies "
                    "flow during a batch.")
    batch_runners: int = Field(
        default=2, ge=1, le=8,
        description="gpu pool, pipelined: flushes in flight at once; with 2, one flush's claim "
                    "and result writes overlap the other's model calls.")
    batch_flush_batches: int = Field(
        default=4, ge=1, le=64,
        description="gpu pool: batches of its own model a flush gathers (sorted by length).")
    batch_max_chars: int = Field(
        default=400_000, gt=0, description="gpu pool: flush once inputs total this many chars.")
    batch_prefetch: int = Field(
        default=256, ge=1, le=65_535,
        description="gpu pool: unacked messages in flight (bounded, never unlimited).")
    device: str = Field(default="cpu", description="Default torch device of gpu-pool workers.")
    max_attempts: int = Field(
        default=8, ge=1, le=1000,
        description="Runs a job may start (its first run, and every takeover after a worker "
                    "death or redelivery, count) before it is failed instead of run again.")
    transient_retries: int = Field(
        default=3, ge=0, le=20,
        description="Retries (exponential backoff with jitter) of a model call that raised "
                    "aidist.errors.TransientError, before its jobs fail.")
    durable_results: bool = Field(
        default=True,
        description="Keep a copy of each result in its Postgres row, so a flushed or restarted "
                    "Redis costs a read, not a second run of the model.")
    job_time_limit_s: float = Field(
        default=600.0, gt=0, le=1700,
        description="Longest one batch (or cpu-pool message) may run. Past it the worker process "
                    "exits so its messages go to another run (the attempt budget ends a job "
                    "that always hangs). Below RabbitMQ's consumer_timeout (30 min).")
    sweep_after_s: float = Field(
        default=30.0, gt=0,
        description="A queued job whose message was never confirmed sent is published by a "
                    "worker's sweeper after this long (its client or the broker died between).")
    sweep_interval_s: float = Field(
        default=10.0, gt=0, description="How often each worker runs the sweeper.")
    task_events: bool = Field(
        default=True,
        description="Workers send Celery task events, so Flower shows their tasks: three per "
                    "job message (a packed message carries up to pack_size jobs), a gpu worker "
                    "sending a flush's together in one message; their cost on throughput is "
                    "measured in `make bench` (events scenario). A running Flower does not turn "
                    "them on: this setting decides.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Worker log lines: text, or json (one object per line, for log shippers).")
    flower_db: str | None = Field(
        default=None,
        description="`aidist flower`: file where Flower keeps its task history across restarts "
                    "(Flower's --persistent); unset = ~/.cache/aidist/flower-<namespace>.db. "
                    "Flower writes it with Python's shelve (pickle): keep it private.")
    flower_broker_api: SecretStr | None = Field(
        default=None,
        description="`aidist flower`: RabbitMQ management API URL for the Broker page (queue "
                    "depths, the dead-letter queue included); unset = the broker URL's host "
                    "and credentials on port 15672.")
    worker_startup_wait_s: float | None = Field(
        default=None, ge=0,
        description="How long a starting worker waits for RabbitMQ, PostgreSQL and Redis to "
                    "answer (logging every few seconds) before it exits with ServiceUnavailable; "
                    "unset = as long as it takes (a supervisor may start it during a restart), "
                    "0 = fail at once.")
    load_failure_grace_s: float = Field(
        default=300.0, ge=0,
        description="How long jobs of a model no worker could load wait before they fail.")
    torch_threads: int = Field(
        default=0, ge=0,
        description="Torch threads per model call; 0 = the CPU cores divided among batch_threads.")
    batch_threads: int = Field(
        default=0, ge=0, le=64,
        description="Model calls a gpu-pool worker on a CPU device runs side by side, each on "
                    "its own part of a batch; 0 = one per core when every model it serves is "
                    "thread_safe, else 1. On a CUDA device 0 means 1.")

    metrics_basic_auth: SecretStr | None = Field(
        default=None,
        description="user:password that /metrics and /healthz ask for (HTTP basic auth). "
                    "Without it a metrics endpoint refuses to start unless told --no-auth on "
                    "loopback.")
    worker_metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Port of `aidist worker`'s /metrics and /healthz when --metrics-port is not "
                    "given (so a Procfile or compose file can set it); unset = no endpoint.")
    flower_basic_auth: SecretStr | None = Field(
        default=None,
        description="user:password that `aidist flower` asks for (HTTP basic auth). Without it "
                    "Flower refuses to start unless told --no-auth on loopback.")
    autoscale_seconds_per_job: float = Field(
        default=0.05, gt=0,
        description="Autoscaler: seconds a job is assumed to take until workers have measured "
                    "the model (worker_stats).")
    autoscale_poll_s: float = Field(
        default=0.5, gt=0, le=30,
        description="Autoscaler: how often the backlog is read (a burst is seen within it).")
    autoscale_cooldown_s: float = Field(
        default=30.0, ge=0,
        description="Autoscaler: a lower worker count is only acted on once it has been "
                    "enough for this long (no flapping); scaling up is immediate.")
    blob_url: str | None = Field(
        default=None,
        description="Where inputs and outputs above inline_max_bytes are kept (content-"
                    "addressed: identical payloads are stored once): file:///dir, a directory "
                    "every client and worker of the deployment can read and write (one host, "
                    "or a shared volume), or s3://bucket/prefix on any S3-compatible store "
                    "(the bucket must exist; credentials, endpoint and region from "
                    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL and "
                    "AWS_DEFAULT_REGION, or boto3's other sources). One location per database: "
                    "prune deletes the blobs no row of its database references. Unset = "
                    "file://~/.local/share/aidist/blobs/<namespace>.")
    inline_max_bytes: int = Field(
        default=256 * 1024, ge=0,
        description="An encoded input or output larger than this (bytes) goes to the blob "
                    "store, and its message, row and cached result carry a reference instead.")
    max_message_bytes: int = Field(
        default=16 * 1024 * 1024, ge=64 * 1024,
        description="Largest message a client or worker publishes (bytes, its job entries "
                    "together). Jobs submitted together are packed into as many messages as "
                    "this needs; one job whose entry alone is larger is refused at submit "
                    "(MessageTooLarge), and a pipeline step output too large for it fails its "
                    "job. Keep it below RabbitMQ's max_message_size (128 MiB on 3.x, 16 MiB "
                    "on 4.x).")

    retention_s: float = Field(
        default=7 * 24 * 3600.0, ge=0,
        description="Finished jobs (their rows, history and the blobs no other row references) "
                    "are deleted this long after they ended, by every worker's sweeper and by "
                    "`aidist db prune`; queued and running jobs never are. Keep it at least "
                    "result_ttl_s (a cached result's row outlives it) and longer than any "
                    "client waits to read a result. 0 = keep for ever; else at least 60.")
    prune_per_sweep: int = Field(
        default=10_000, ge=1,
        description="Most finished jobs one sweeper pass deletes (in transactions of 1,000), "
                    "so a pass never holds the sweeper long; the rest go in the next passes.")

    @field_validator("retention_s")
    @classmethod
    def _retention_floor(cls, value: float) -> float:
        if 0 < value < MIN_RETENTION_S:
            raise ValueError(f"0 (keep for ever) or at least {MIN_RETENTION_S:g} seconds")
        return value

    @field_validator("metrics_basic_auth", "flower_basic_auth")
    @classmethod
    def _user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, _, password = value.get_secret_value().partition(":")
            if not user or not password:
                raise ValueError("expected user:password")
        return value

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def __repr_args__(self) -> Any:
        # Settings end up in logs and tracebacks: never with the passwords inside the URLs.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name is not None and name.endswith("_url") else value

    def as_env(self) -> dict[str, str]:
        """These settings as ``AIDIST_*`` variables, to hand to a child process (a worker)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:  # unset: the child takes the default too
                continue
            plain = value.get_secret_value() if isinstance(value, SecretStr) else value
            text = ",".join(plain) if isinstance(plain, list) else str(plain)
            env[f"AIDIST_{name.upper()}"] = text
        return env
