"""Log lines: one format for the engine's and uvicorn's loggers, chosen by the `log_format` setting.

- `text`: for people at a terminal: `2026-11-27T13:46:42.372Z INFO flowengine.runs run.created run=... flow=...`
- `logfmt`: `time=... level=info logger=flowengine.runs msg=run.created run=... flow=...`
- `json`: one object per line, the same keys.

Structured fields travel in a record's `fields` attribute (`log.info("run.created", extra={"fields": {...}})`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import msgspec

LogFormat = Literal["text", "logfmt", "json"]
_encode = msgspec.json.Encoder().encode


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(getattr(record, "fields", None) or {})
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, _version, status = record.args
        fields.update(client=client, method=method, path=path, status=status)
    return fields


class Formatter(logging.Formatter):
    def __init__(self, style: LogFormat = "text") -> None:
        super().__init__()
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line: dict[str, Any] = {"time": stamp, "level": record.levelname.lower(), "logger": record.name}
        line["msg"] = record.getMessage()
        line.update(fields_of(record))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        if self.style == "json":
            return _encode(line).decode()
        if self.style == "logfmt":
            return " ".join(f"{key}={_logfmt(value)}" for key, value in line.items())
        head = f"{stamp} {record.levelname} {record.name}: {line.pop('msg')}"
        rest = " ".join(f"{key}={_logfmt(value)}" for key, value in list(line.items())[3:] if key != "error")
        tail = f"\n{line['error']}" if "error" in line else ""
        return f"{head} {rest}".rstrip() + tail


def _logfmt(value: Any) -> str:
    text = value if isinstance(value, str) else _encode(value).decode()
    if text and not any(c in text for c in ' "=\n\\'):
        return text
    return _encode(text).decode()


def logging_config(level: str, style: LogFormat) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the engine and uvicorn (uvicorn.run(log_config=...))."""
    handler = {"class": "logging.StreamHandler", "formatter": "flowengine", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"flowengine": {"()": Formatter, "style": style}},
        "handlers": {"default": handler},
        "loggers": {
            "flowengine": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["default"], "level": level.upper(), "propagate": False},
        },
    }
