"""Worker log lines: Celery's text format, or one JSON object per line for log shippers
(``AIDIST_LOG_FORMAT=json``).

Lines about a batch carry its id, model, size and time as fields (``batch``, ``target``,
``jobs``, ``ms``), lines about one job its ``job_id``, so a log store can follow one job or one
batch without parsing prose. In JSON mode Celery is told not to take over the root logger
(``worker_hijack_root_logger``), and this handler is the root's only one: Celery's own loggers
propagate to it, in the main process and in the prefork children (they inherit it by fork).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
FIELDS = ("batch", "target", "jobs", "ms", "job_id", "succeeded", "failed")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, process, message, the
    aidist fields the record carries, and the exception text if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(log_format: str, loglevel: str) -> None:
    """Set up the root logger before Celery starts: text (Celery then installs its own format
    when its worker starts) or JSON (kept: Celery is told not to hijack the root logger)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(loglevel.upper())
    # Python warnings (Celery's warning about running as root, say) become log records too,
    # so that in JSON mode every line is JSON; Celery's banner is off there (``--quiet``).
    logging.captureWarnings(log_format == "json")
