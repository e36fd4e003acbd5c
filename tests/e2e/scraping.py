"""Reading a worker's ``/metrics`` and ``/healthz`` over HTTP, as Prometheus and a kubelet do."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(port: int, path: str, auth: str | None) -> tuple[int, str]:
    """(status, body) of ``GET http://127.0.0.1:port/path``, with basic auth if given."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int, auth: str) -> tuple[Series, dict[str, set[str]]]:
    """Every sample of ``/metrics`` by (name, labels), and the label names of each series (by
    the name a query uses: a counter's with ``_total``, a histogram's without ``_bucket``)."""
    status, body = get(port, "/metrics", auth)
    assert status == 200, body
    samples: Series = {}
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        found = labels.setdefault(name, set())
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
            found.update(label for label in sample.labels if label != "le")
    return samples, labels


def value(samples: Series, name: str, **labels: str) -> float:
    """One sample's value (0 if it is absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
