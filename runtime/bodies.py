"""Request bodies of events decoded strictly, one bad event never costing the rest.

JSON objects with a duplicated key are refused (the last value would win silently),
and so is nesting deeper than Python's decoder can follow (it raises RecursionError,
which is not a ValueError).  When a JSON array as a whole fails for either reason,
its top-level elements are cut apart by a scanner that only tracks brackets and
strings, and each is decoded alone: the bad ones become :class:`Unparsable` records
(a per-event rejection with the reason and a dead letter), the good ones are learned.
NDJSON is decoded line by line with the same rules.  :func:`loads` is how every other
JSON input is read too: the recommend query's ``context`` and ``filter``, each line of a
JSONL replay or import, a JSON search space of ``freshrank tune``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from actors.events import Unparsable
from runtime.codec import unique_map
from runtime.errors import BadInput

PAYLOAD_BYTES = 8192
NESTED = "nested too deeply"


class DuplicateKey(BadInput, ValueError):
    """A JSON object names one key twice."""


def _repeated_key(key: str) -> DuplicateKey:
    return DuplicateKey(f"duplicate key {key!r}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return unique_map(pairs, _repeated_key)


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses duplicated keys (DuplicateKey) and turns too deep a
    nesting into a ValueError."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError(NESTED) from None


def _reason(error: ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    return str(error)[:200]


def top_level_elements(text: str) -> Iterator[str]:
    """The source text of each element of the JSON array ``text`` (ValueError when it
    is not an array with balanced brackets); the elements themselves are not decoded."""
    start = text.find("[")
    if start < 0 or text[:start].strip():
        raise ValueError("body is not a JSON array")
    depth, in_string, escaped, begin = 0, False, False, start + 1
    for at in range(start + 1, len(text)):
        char = text[at]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}" and depth > 0:
            depth -= 1
        elif char == "," and depth == 0:
            yield text[begin:at]
            begin = at + 1
        elif char == "]":
            if text[begin:at].strip():
                yield text[begin:at]
            if text[at + 1 :].strip():
                raise ValueError("text after the JSON array")
            return
    raise ValueError("unterminated JSON array")


def _element(source: str, index: int) -> Any:
    try:
        return loads(source)
    except ValueError as error:
        return Unparsable(
            f"event {index}: not valid JSON: {_reason(error)}", source[:PAYLOAD_BYTES]
        )


def parse_json_array(body: bytes) -> list[Any]:
    """A JSON array of events (or one event object), as objects or Unparsable records."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"body is not valid UTF-8 (byte {error.start})") from None
    try:
        data = loads(text)
    except DuplicateKey as error:
        if text.lstrip().startswith("{"):
            return [Unparsable(f"event 0: not valid JSON: {error}", text[:PAYLOAD_BYTES])]
        data = _per_element(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"body is not valid JSON: {_reason(error)}") from None
    except ValueError as error:  # too deep, or an integer over 4300 digits
        if not text.lstrip().startswith("["):
            raise ValueError(f"body is not valid JSON: {error}") from None
        data = _per_element(text)
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise ValueError(
            f"body must be a JSON array of events (or one event object), got {type(data).__name__}"
        )
    return data


def _per_element(text: str) -> list[Any]:
    try:
        elements = list(top_level_elements(text))
    except ValueError as error:
        raise ValueError(f"body is not valid JSON: {error}") from None
    decoded = [_element(source, index) for index, source in enumerate(elements)]
    if all(isinstance(d, Unparsable) for d in decoded) and len(decoded) <= 1:
        reason = decoded[0].reason.split(": ", 2)[-1] if decoded else "empty"
        raise ValueError(f"body is not valid JSON: {reason}")
    return decoded


def parse_ndjson(body: bytes) -> list[Any]:
    """One event per line, each decoded alone: a bad line is an Unparsable record."""
    out: list[Any] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        payload = line[:PAYLOAD_BYTES].decode("utf-8", "replace")
        try:
            out.append(loads(line.decode("utf-8")))
        except UnicodeDecodeError:
            out.append(Unparsable(f"line {number}: not valid UTF-8", payload))
        except ValueError as error:
            reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)[:200]
            out.append(Unparsable(f"line {number}: not valid JSON: {reason}", payload))
    return out
