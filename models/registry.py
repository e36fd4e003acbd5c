"""The model registry: what can run, how to validate its input, and how a worker loads it.

The registry never imports torch: a client validates submissions against it and stays light. A spec
names its loader as ``"module:function"``; only a worker that runs the model imports that module.
Users extend it with plugin modules (``AIDIST_PLUGINS``) that define ``register_models(registry)``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from aidist.errors import ConfigError, InvalidInput, ModelLoadError, UnknownModel
from aidist.jobs import JobKind
from models.inputs import DEFAULT_MAX_BYTES, ShapePattern, check_declaration, check_value


class Runner(Protocol):
    """A loaded model or op: turns a batch of inputs into one output per input, in order."""

    def __call__(self, inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]: ...


class MeasuresInputs(Protocol):
    """A runner may also say how long each input is in the units it pads by (tokens, for a text
    model): a worker sorts a flush by that before cutting it into batches, so the inputs of one
    batch pad alike. Without it, texts are sorted by characters, a poor proxy for tokens on short
    texts (measured on the bench's sentences: 7.8 % of a flush's tokens were padding sorted by
    characters, 2.7 % sorted by tokens). ``workers.model_runs`` finds it with ``getattr``."""

    def lengths(self, inputs: Sequence[Any]) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class LoadContext:
    """What a loader needs to place the model: device, threads, dtype."""

    device: str = "cpu"
    torch_threads: int = 0
    dtype: str = "float32"


ENTRY_POINT_GROUP = "aidist.models"

Loader = Callable[[LoadContext], Runner]
ParamsValidator = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A registered model or preprocessing op.

    ``input_type`` says what it takes (``models.inputs``): ``text`` (str, the default), ``bytes``,
    ``image`` (PNG/JPEG bytes or an HxWxC uint8 array), ``tensor`` (a numpy array; accepted
    ``input_dtypes`` such as ``("float32",)``, none = any numeric, and an ``input_shape``
    pattern such as ``(3, None, None)``, None = any size there) or ``json``. Inputs other than
    text are limited to ``max_input_bytes`` (text to ``max_input_chars``); an output whose
    encoding exceeds ``max_output_bytes`` fails its job with a message.
    """

    name: str
    kind: JobKind
    loader: str | Loader
    version: str | Callable[[], str]
    pool: str = "gpu"
    max_batch_size: int = 64
    max_input_chars: int | None = None
    description: str = ""
    validate_params: ParamsValidator | None = None
    warmup_inputs: tuple[Any, ...] = field(default_factory=tuple)
    max_delay_ms: float | None = None
    dtype: str = "float32"
    thread_safe: bool = False
    input_type: str = "text"
    input_dtypes: tuple[str, ...] = ()
    input_shape: ShapePattern | None = None
    max_input_bytes: int = DEFAULT_MAX_BYTES
    max_output_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        check_declaration(self.name, self.input_type, dtypes=self.input_dtypes,
                          shape=self.input_shape, max_input_bytes=self.max_input_bytes,
                          max_output_bytes=self.max_output_bytes)

    def load(self, context: LoadContext) -> Runner:
        """Import and call the loader; any failure becomes ``ModelLoadError``."""
        try:
            loader = resolve_callable(self.loader) if isinstance(self.loader, str) else self.loader
            return loader(context)
        except Exception as exc:
            raise ModelLoadError(f"model {self.name!r} failed to load: {exc}") from exc


def resolve_callable(path: str) -> Any:
    """Resolve ``"package.module:attribute"`` to the object it names."""
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise ConfigError(f"loader {path!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What ``client.models()`` and ``aidist models`` show."""

    name: str
    version: str
    kind: str
    pool: str
    device: str
    max_batch_size: int
    description: str
    loaded_on: tuple[str, ...] = ()
    not_ready_on: tuple[str, ...] = ()
    input_type: str = "text"  # what it takes: text, bytes, image, tensor or json


class Registry:
    """Specs by name, with input validation and lazily computed versions."""

    def __init__(self, *, max_input_chars: int = 100_000) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()
        self.max_input_chars = max_input_chars

    def register(self, spec: ModelSpec) -> ModelSpec:
        """Add a spec; a name can be registered once."""
        if spec.name in self._specs:
            raise ConfigError(f"model or op {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    def get(self, name: str, kind: JobKind | None = None) -> ModelSpec:
        """The spec for ``name``; ``UnknownModel`` (listing the known names) if absent."""
        spec = self._specs.get(name) if isinstance(name, str) else None
        if spec is None or (kind is not None and spec.kind is not kind):
            known = [s.name for s in self._specs.values() if kind is None or s.kind is kind]
            raise UnknownModel(str(name), known)
        return spec

    def names(self) -> set[str]:
        """Every registered name."""
        return set(self._specs)

    def specs(self, kind: JobKind | None = None) -> list[ModelSpec]:
        """All specs (of one kind if given), by name."""
        return sorted(
            (s for s in self._specs.values() if kind is None or s.kind is kind),
            key=lambda s: s.name,
        )

    def version(self, name: str) -> str:
        """The version (weights digest) of ``name``, computed once per process."""
        with self._lock:
            cached = self._versions.get(name)
            if cached is None:
                spec = self.get(name)
                cached = spec.version if isinstance(spec.version, str) else spec.version()
                self._versions[name] = cached
            return cached

    def validate(
        self, spec: ModelSpec, value: Any, params: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Check one input and the params; returns the params to use. Raises ``InvalidInput``."""
        self.validate_input(spec, value)
        return self.validate_params(spec, params)

    def validate_input(self, spec: ModelSpec, value: Any) -> None:
        """Check one input against the spec's input type: text not blank and within
        ``max_input_chars``; any other type as ``models.inputs`` checks it (type, dtype, shape,
        decodable image, ``max_input_bytes``). Raises ``InvalidInput`` naming what was
        expected."""
        if spec.input_type != "text":
            check_value(spec.name, spec.input_type, value, dtypes=spec.input_dtypes,
                        shape=spec.input_shape, max_bytes=spec.max_input_bytes)
            return
        limit = spec.max_input_chars or self.max_input_chars
        if not isinstance(value, str):
            raise InvalidInput(
                f"{spec.name} takes text (str), got {type(value).__name__}; "
                "decode bytes first and pass one string per job"
            )
        if not value.strip():
            raise InvalidInput(f"{spec.name} got an empty input; pass non-blank text")
        if len(value) > limit:
            raise InvalidInput(
                f"{spec.name} input has {len(value)} characters, the limit is {limit}; "
                "split it (the 'chunk' op does this) or raise AIDIST_MAX_INPUT_CHARS"
            )

    def validate_params(self, spec: ModelSpec, params: dict[str, Any] | None) -> dict[str, Any]:
        """Check params; returns the canonical params to use. Raises ``InvalidInput``."""
        if params is not None and not isinstance(params, dict):
            raise InvalidInput(f"params must be a dict, got {type(params).__name__}")
        checked = dict(params or {})
        if spec.validate_params is not None:
            checked = spec.validate_params(checked)
        elif checked:
            raise InvalidInput(f"{spec.name} takes no params, got {sorted(checked)}")
        return checked

    def info(self, default_device: str) -> list[ModelInfo]:
        """One ``ModelInfo`` per spec."""
        return [
            ModelInfo(
                name=spec.name,
                version=self.version(spec.name),
                kind=spec.kind.value,
                pool=spec.pool,
                device=default_device if spec.pool == "gpu" else "cpu",
                max_batch_size=spec.max_batch_size,
                description=spec.description,
                input_type=spec.input_type,
            )
            for spec in self.specs()
        ]

    def load_plugins(self, modules: Sequence[str]) -> None:
        """Import each plugin module and call its ``register_models(registry)``, then every
        installed package's ``aidist.models`` entry point (a ``register_models``-like function)."""
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                hook = entry_point.load()
            except Exception as exc:
                raise ConfigError(
                    f"entry point {entry_point.name!r} ({entry_point.value}) failed to load: {exc}"
                ) from exc
            hook(self)
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise ConfigError(
                    f"plugin module {module_name!r} cannot be imported: {exc}"
                ) from exc
            hook = getattr(module, "register_models", None)
            if not callable(hook):
                raise ConfigError(
                    f"plugin module {module_name!r} has no register_models(registry) function"
                )
            hook(self)
