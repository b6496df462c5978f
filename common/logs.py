"""One log format for the cloud and the gateway: a JSON object per line, or plain text when the
output is a terminal (a person reading it).

Context travels in ``contextvars`` set where Pulse learns it (``bind``): the HTTP request id (the
cloud's middleware, from ``X-Request-ID`` or made up), the tenant (once a token is verified), the
gateway (from its client certificate), the device. Every record logged inside that context carries
them; a record's own ``extra={"device": ...}`` wins. Fields: ``ts`` (UTC, ISO 8601 with
milliseconds), ``level``, ``logger``, ``msg``, then ``request_id``, ``tenant``, ``gateway``,
``device`` where known, and ``exc`` (the traceback) for exceptions."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

FIELDS = ("request_id", "tenant", "gateway", "device")
_HANDLER = "pulse"
_context: dict[str, contextvars.ContextVar[str | None]] = {f: contextvars.ContextVar(f"pulse_log_{f}", default=None) for f in FIELDS}


def bind(**values: object) -> None:
    """Set context fields (request_id, tenant, gateway, device) for what follows in this task."""
    for key, value in values.items():
        _context[key].set(None if value is None else str(value))


@contextmanager
def bound(**values: object) -> Iterator[None]:
    """Context fields for the block only."""
    tokens = [(key, _context[key].set(None if value is None else str(value))) for key, value in values.items()]
    try:
        yield
    finally:
        for key, token in reversed(tokens):
            _context[key].reset(token)


def context() -> dict[str, str]:
    return {f: v for f in FIELDS if (v := _context[f].get()) is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(context())
        for f in FIELDS:
            if (value := record.__dict__.get(f)) is not None:
                doc[f] = str(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, with the context fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {**context(), **{f: str(v) for f in FIELDS if (v := record.__dict__.get(f)) is not None}}
        if not fields:
            return line
        head, sep, tail = line.partition("\n")
        return head + " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]" + sep + tail


def configure(level: str | int = "INFO", *, stream: IO[str] | None = None, fmt: str = "auto") -> logging.Handler:
    """Log to ``stream`` (stderr) at ``level``: ``fmt`` "json", "text", or "auto" (text on a
    terminal, JSON otherwise). Replaces the handler an earlier call installed (others, such as a
    test runner's, stay); returns the new one."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(out, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # httpx logs every request at INFO with its full URL: for Slack and Teams channels the URL is the
    # credential, and notification attempts are recorded with their outcome anyway (notify_attempts).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler


def log_tail(log: Path, start_at: int = 0, lines: int = 3) -> str:
    """The last ``lines`` lines a process wrote to ``log`` after byte ``start_at``, on one line."""
    try:
        with log.open("rb") as f:
            f.seek(start_at)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    said = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(said[-lines:])
