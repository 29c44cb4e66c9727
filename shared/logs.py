"""Structured logs: one JSON object per line, carrying the trace and request ids of the work that logged it.

``SWITCHYARD_TELEMETRY__LOG_FORMAT=json`` turns it on (the bootstrap calls
``use_json_logs``). A line has ``ts``, ``level``, ``logger``, ``message``,
``service`` and, inside a request's work, ``trace_id``, ``span_id`` and
``request_id``: a log search by trace id finds the same request as the
tracing backend, with or without an exporter (without one, the ids are
those of the ``traceparent`` carried through the bus). Log messages never
contain prompt or completion text, so neither do these lines.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

from shared.telemetry import Telemetry


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with the ids ``fields`` returns for the current task."""

    def __init__(self, fields: Callable[[], dict[str, str]], service: str) -> None:
        super().__init__()
        self.fields = fields
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
            **self.fields(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def use_json_logs(service: str, telemetry: Telemetry | None = None, logger: logging.Logger | None = None) -> None:
    """Every handler of ``logger`` (the root logger by default) writes JSON lines from now on, with the ids of
    ``telemetry``'s current work (none until there is a ``Telemetry``: the bootstrap calls this again then)."""
    target = logger or logging.getLogger()
    if not target.handlers:
        target.addHandler(logging.StreamHandler())
    fields = telemetry.log_fields if telemetry is not None else dict
    for handler in target.handlers:
        handler.setFormatter(JsonFormatter(fields, service))
