"""A module-level app for Celery's own command line only, e.g.
``celery -A workers.celery_app inspect active_queues`` or ``celery -A workers.celery_app flower``.
aidist's code never imports it; ``aidist worker`` builds its app with the factory."""

from __future__ import annotations

from aidist.config import Settings
from models import build_registry
from workers.app import create_app
from workers.runtime import RuntimeHolder

_settings = Settings()
app = create_app(
    _settings,
    build_registry(_settings.plugins, max_input_chars=_settings.max_input_chars),
    RuntimeHolder(_settings, device=_settings.device),
)
