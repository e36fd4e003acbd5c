"""AsyncClient mirrors Client call for call: the README promises "the same calls with await", and a
method added to one class alone is exactly how the two drift apart. No services needed: this only
inspects the classes."""

from __future__ import annotations

import inspect

from producers import AsyncClient, AsyncJob, Client, Job

# Public methods one class has and the other deliberately lacks, with the reason. Empty today: the
# context managers are dunders (``__enter__``/``__aenter__``) and so are outside the comparison.
ONLY_SYNC: dict[str, str] = {}
ONLY_ASYNC: dict[str, str] = {}


def _public_methods(cls: type) -> set[str]:
    return {name for name, member in inspect.getmembers(cls)
            if not name.startswith("_") and callable(member)}


def _parameters(function: object) -> list[tuple[str, object, object]]:
    """Names, kinds and defaults; annotations differ on purpose (``Job`` vs ``AsyncJob``)."""
    assert callable(function)
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_async_client_has_every_public_method_of_client() -> None:
    sync, asynchronous = _public_methods(Client), _public_methods(AsyncClient)
    assert sync - asynchronous == set(ONLY_SYNC)
    assert asynchronous - sync == set(ONLY_ASYNC)


def test_async_client_methods_take_the_same_parameters() -> None:
    for name in _public_methods(Client) & _public_methods(AsyncClient):
        assert _parameters(getattr(AsyncClient, name)) == _parameters(getattr(Client, name)), name


def test_async_client_methods_are_awaitable_or_async_iterators() -> None:
    for name in _public_methods(AsyncClient):
        method = getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method), name


def test_async_job_mirrors_job() -> None:
    # Methods only: Job's plain attributes (kind, target, cache_key) are on ``AsyncJob.job``.
    assert _public_methods(Job) == _public_methods(AsyncJob)
    for name in _public_methods(AsyncJob):
        assert _parameters(getattr(AsyncJob, name)) == _parameters(getattr(Job, name)), name


def test_async_client_is_built_with_the_same_arguments() -> None:
    # the injected store, cache and publisher too, so aidist.testing's doubles serve both
    assert _parameters(AsyncClient.__init__) == _parameters(Client.__init__)
