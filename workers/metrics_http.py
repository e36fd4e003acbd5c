"""``/metrics`` (Prometheus text format) and ``/healthz`` behind HTTP basic auth.

Every HTTP endpoint aidist opens asks for credentials (``AIDIST_METRICS_BASIC_AUTH=user:password``)
unless the operator turns that off explicitly, and then only on loopback: metrics name models,
pools and hosts, and an open port on a cluster network is how such things leak. prometheus-client
renders the metrics (``make_wsgi_app``); the standard library's WSGI server serves them from a
daemon thread; a small WSGI wrapper checks the credentials in constant time.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from pydantic import SecretStr

from aidist.errors import ConfigError

log = logging.getLogger("aidist.metrics")
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_auth_choice(host: str, credentials: SecretStr | None, no_auth: bool) -> None:
    """Refuse an endpoint without credentials, unless ``no_auth`` on loopback."""
    if no_auth and not is_loopback(host):
        raise ConfigError(f"--no-auth is only allowed on loopback (127.0.0.1, ::1), not {host!r}; "
                          "set AIDIST_METRICS_BASIC_AUTH=user:password to serve other hosts")
    if not no_auth and credentials is None:
        raise ConfigError("the metrics endpoint needs credentials: set "
                          "AIDIST_METRICS_BASIC_AUTH=user:password (Prometheus sends them with "
                          "basic_auth in its scrape config), or pass --no-auth on loopback")


class _BasicAuth:
    """WSGI middleware: 401 unless the request carries the configured user:password."""

    def __init__(self, app: WSGIApp, credentials: SecretStr) -> None:
        self.app = app
        self.expected = b"Basic " + base64.b64encode(credentials.get_secret_value().encode())

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(given, self.expected):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="aidist"'),
                                                ("Content-Type", "text/plain")])
            return [b"authentication required\n"]
        return self.app(environ, start_response)


def _routes(registry: CollectorRegistry, healthy: Callable[[], tuple[bool, str]]) -> WSGIApp:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok, detail = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])
            return [f"{'ok' if ok else 'not ready'}: {detail}\n".encode()]
        if environ.get("PATH_INFO") in ("/metrics", "/"):
            served: Iterable[bytes] = metrics(environ, start_response)
            return served
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class MetricsServer:
    """A running endpoint; ``close()`` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(registry: CollectorRegistry, *, host: str, port: int,
                  credentials: SecretStr | None, no_auth: bool = False,
                  healthy: Callable[[], tuple[bool, str]] = lambda: (True, "up")
                  ) -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` (and ``/healthz``) from a daemon
    thread; port 0 picks a free one."""
    check_auth_choice(host, credentials, no_auth)
    app = _routes(registry, healthy)
    if credentials is not None and not no_auth:
        app = _BasicAuth(app, credentials)
    try:
        server = make_server(host, port, app, server_class=_ThreadingServer,
                             handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    thread = threading.Thread(target=server.serve_forever, name="aidist-metrics", daemon=True)
    thread.start()
    log.info("metrics on http://%s:%d/metrics (%s)", host, server.server_port,
             "no auth, loopback" if no_auth else "basic auth")
    return MetricsServer(server, thread)
