"""``aidist flower``: Flower 2.2, the Celery web monitor, for aidist's own Celery app, behind HTTP
basic auth.

Flower lets whoever reaches it shut down, grow and shrink workers and read task arguments, so it
asks for credentials (``AIDIST_FLOWER_BASIC_AUTH=user:password``) unless the operator turns that
off explicitly, and then only on loopback, like every HTTP endpoint aidist opens (see
``workers.metrics_http``). The credentials reach Flower through its options object in this
process, never through a command line (``ps`` and ``/proc/<pid>/cmdline`` show argv to every user
of the host) and never in a log line.

Flower runs in this process (``flower.app.Flower``) rather than through ``celery flower``, so no
``flowerconfig.py`` from the working directory is executed and nothing else sets its options.
It does not turn task events on (Flower's ``enable_events`` broadcast would override
``AIDIST_TASK_EVENTS``): workers send them by default, and an operator who turned them off keeps
them off. It keeps its task history across restarts (``--persistent``, ``AIDIST_FLOWER_DB``) and
reads queue depths, the dead-letter queue's included, from RabbitMQ's management API
(``AIDIST_FLOWER_BROKER_API``, else derived from the broker URL; ``make`` enables the plugin).
Flower's own ``/healthcheck`` answers without credentials (a Kubernetes probe needs that); its
``/metrics`` does too, as Flower serves it for Prometheus.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from flower.app import Flower
from flower.options import default_options
from flower.urls import settings as flower_web_settings
from flower.views.broker import BrokerView
from pydantic import SecretStr

from aidist.config import Settings, redact_url
from aidist.errors import ConfigError
from aidist.transport import dead_letter_queue
from models import build_registry
from workers.app import create_app
from workers.metrics_http import is_loopback
from workers.runtime import RuntimeHolder

log = logging.getLogger("aidist.flower")
SETTING = "AIDIST_FLOWER_BASIC_AUTH"
MANAGEMENT_PORT = 15672
STATE_SAVE_MS = 60_000


def check_flower_auth(address: str, credentials: SecretStr | None, no_auth: bool) -> None:
    """Refuse to serve Flower without credentials, unless told ``--no-auth`` on loopback."""
    if no_auth and not is_loopback(address):
        raise ConfigError(f"--no-auth is only allowed on loopback (127.0.0.1, ::1), not "
                          f"{address!r}; set {SETTING}=user:password to serve other hosts")
    if not no_auth and credentials is None:
        raise ConfigError(f"Flower needs credentials: set {SETTING}=user:password (HTTP basic "
                          "auth; browsers and the API then ask for them), or pass --no-auth to "
                          "serve on loopback only")


def flower_db_path(settings: Settings) -> Path:
    """Where Flower keeps its task history (``AIDIST_FLOWER_DB``, else one file per namespace
    under ``~/.cache/aidist``), the directory created private: Flower writes it with shelve."""
    path = Path(settings.flower_db or Path.home() / ".cache" / "aidist"
                / f"flower-{settings.namespace}.db").expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def broker_api_url(settings: Settings) -> str:
    """The RabbitMQ management API that Flower's Broker page reads (queue depths, the
    dead-letter queue included): ``AIDIST_FLOWER_BROKER_API``, else the broker URL's host and
    credentials on the management port."""
    if settings.flower_broker_api is not None:
        return settings.flower_broker_api.get_secret_value()
    parts = urlsplit(settings.broker_url)
    user = unquote(parts.username or "guest")
    password = unquote(parts.password or "guest")
    return f"http://{quote(user)}:{quote(password)}@{parts.hostname or '127.0.0.1'}:" \
           f"{MANAGEMENT_PORT}/api/"


def _options(settings: Settings, *, port: int, address: str, no_auth: bool) -> Any:
    """Flower's (tornado's) options object, set here rather than parsed from argv or FLOWER_*."""
    options = default_options
    options.port = port
    options.address = address
    options.enable_events = False
    options.persistent = True
    options.db = str(flower_db_path(settings))
    options.state_save_interval = STATE_SAVE_MS  # not only at exit: a killed Flower keeps most
    options.broker_api = broker_api_url(settings)
    if settings.flower_basic_auth is not None and not no_auth:
        options.basic_auth = [settings.flower_basic_auth.get_secret_value()]
    else:
        options.basic_auth = []
    return options


class BrokerPage(BrokerView):  # type: ignore[misc]
    """Flower's Broker page, listing aidist's dead-letter queue too: Flower shows only queues
    some worker consumes, and nothing consumes the dead letters (they wait for an operator)."""

    def initialize(self, extra_queues: Sequence[str] = ()) -> None:
        self.extra_queues = list(extra_queues)

    def get_active_queue_names(self) -> list[str]:
        names: list[str] = super().get_active_queue_names()
        return sorted(set(names) | set(self.extra_queues))


def _quiet_access_log() -> None:
    """As ``celery flower`` does: one line per HTTP request is noise in a pod's log."""
    access = logging.getLogger("tornado.access")
    access.addHandler(logging.NullHandler())
    access.propagate = False


def _stop(web: Any, signum: int) -> None:
    log.info("signal %d: stopping", signum)
    web.stop()


def run_flower(settings: Settings, *, port: int, address: str, no_auth: bool) -> None:
    """Serve Flower on ``address:port`` (port 0 picks a free one) until SIGTERM or SIGINT."""
    check_flower_auth(address, settings.flower_basic_auth, no_auth)
    logging.basicConfig(level=logging.INFO,
                        format="[%(asctime)s: %(levelname)s/flower] %(message)s")
    _quiet_access_log()
    registry = build_registry(settings.plugins, max_input_chars=settings.max_input_chars)
    celery_app = create_app(settings, registry, RuntimeHolder(settings, device="cpu"))
    options = _options(settings, port=port, address=address, no_auth=no_auth)
    web = Flower(capp=celery_app, options=options, **{**flower_web_settings, "debug": False})
    # added rules take precedence over Flower's own (tornado inserts them before its defaults)
    web.add_handlers(r".*", [(r"/broker", BrokerPage,
                              {"extra_queues": [dead_letter_queue(settings.namespace)]})])
    try:
        bound = web.start_http_server()
    except OSError as exc:
        raise ConfigError(f"cannot serve Flower on {address}:{port}: {exc}") from exc

    loop = web.io_loop.asyncio_loop
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop, web, signum)
    log.info("flower on http://%s:%d/ (%s), broker %s", address, bound,
             "no auth, loopback" if no_auth else "basic auth", redact_url(settings.broker_url))
    web.start()
    log.info("stopped")
