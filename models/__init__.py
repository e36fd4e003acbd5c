"""Models and preprocessing ops: the registry and the built-ins. Knows nothing of queues or
databases."""

from models.builtin import build_registry
from models.registry import LoadContext, ModelInfo, ModelSpec, Registry, Runner

__all__ = ["LoadContext", "ModelInfo", "ModelSpec", "Registry", "Runner", "build_registry"]
