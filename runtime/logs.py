"""Process logging: text or JSON lines, request ids, and secrets kept out.

Every record logged while an HTTP request is handled carries that request's id
(a context variable set by the HTTP layer), in both formats.  JSON lines hold one
object per line: ``ts``, ``level``, ``logger``, ``msg``, ``request_id`` and, on
access lines, ``method``, ``path``, ``status`` and ``duration_ms``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any, TextIO

REQUEST_ID: ContextVar[str | None] = ContextVar("freshrank_request_id", default=None)
MAX_REQUEST_ID_LEN = 128
ACCESS_FIELDS = ("method", "path", "status", "duration_ms")
REDACTED = "[REDACTED]"
# whatever follows a Bearer scheme or an Authorization header name is a credential
_CREDENTIAL = re.compile(r"(?i)(bearer\s+|authorization\s*[:=]\s*)[^\s,;\"']+")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def request_id_from(incoming: str | None) -> str:
    """The client's ``X-Request-ID`` when it is sane (1..128 printable ASCII), else a new id.

    A client id is kept so one request can be followed across services; an insane one
    (too long, control characters, non-ASCII) would let a client forge or break log lines.
    """
    if incoming and len(incoming) <= MAX_REQUEST_ID_LEN and incoming.isascii():
        if all(33 <= ord(c) <= 126 for c in incoming):
            return incoming
    return uuid.uuid4().hex


def printable(text: str, limit: int = 256) -> str:
    """Client-controlled text for a text log line: no newlines or escapes to forge lines."""
    clipped = text[:limit]
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), clipped)


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being handled (None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class RedactFilter(logging.Filter):
    """Replaces known secrets and anything shaped like a credential in the final message."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return _CREDENTIAL.sub(lambda m: m.group(1) + REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # the traceback text is formatted once and cached: redact that cache
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key in ACCESS_FIELDS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with ``[request <id>]`` when the record belongs to a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id:
            head, sep, tail = line.partition("\n")  # keep a traceback below the first line
            line = f"{head} [request {request_id}]{sep}{tail}"
        return line


def _iso_utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def make_handler(
    log_format: str, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> logging.Handler:
    """A stream handler with the format, request ids and redaction of ``secrets``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactFilter(secrets))
    return handler


def configure_logging(
    log_format: str = "text", secrets: Iterable[str] = (), level: int = logging.INFO
) -> None:
    """Route every logger of the process through one handler (replacing earlier ones)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(log_format, secrets))
    root.setLevel(level)
