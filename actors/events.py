"""The event schema and its validation: pure functions, no asyncio.

An event is a JSON/msgpack object::

    {"user": "u42", "item": "i7", "ts": 1700000000.5, "label": 1, "weight": 1.0,
     "user_features": {"age": "25-34"},
     "item_features": {"genre": ["drama", "war"], "price": 12.5},
     "context": {"device": "mobile"}}

Only ``item`` is always required; ``user`` is required for an interaction, and an
object without ``user`` is an item upsert for the catalog.  ``label`` 1/0 is an
explicit positive/negative; no label is an implicit positive.  Feature values are
strings, finite numbers, booleans or lists of strings.

Validation never raises anything but :class:`InvalidEvent`, whose message is the
reason a client or a dead-letter record gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

IMPLICIT = -1
FEATURE_GROUPS = {"user_features": "u.", "item_features": "i.", "context": "c."}
KNOWN_KEYS = frozenset({"user", "item", "ts", "label", "weight", *FEATURE_GROUPS})

Feature = tuple[str, str, float]
"""(namespace, categorical value, numeric value): ``("i.genre", "war", 1.0)``, ``("i.price", "", 12.5)``."""


class InvalidEvent(ValueError):
    """An event that cannot be learned; the message says why."""


@dataclass(frozen=True)
class Unparsable:
    """A record that failed to parse (broken JSON line, bad UTF-8): rejected with ``reason``."""

    reason: str
    payload: str


@dataclass(frozen=True)
class EventLimits:
    """Caps on untrusted input, so one hostile event cannot exhaust memory or time."""

    max_id_len: int = 256
    max_string_len: int = 1024
    max_features: int = 1000
    max_list_len: int = 256
    max_name_len: int = 64


@dataclass
class Event:
    """A validated event.  ``user is None`` marks an item upsert."""

    user: str | None
    item: str
    ts: float = math.nan
    label: int = IMPLICIT
    weight: float = 1.0
    features: list[Feature] = field(default_factory=list)

    @property
    def is_upsert(self) -> bool:
        return self.user is None


def _check_unicode(text: str, where: str) -> str:
    """Reject lone surrogates (JSON allows the escape ``\\ud800``) before they reach UTF-8 encoders."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(f"{where} is not valid UTF-8 text (lone surrogate)") from None
    return text


def _to_float(value: int | float, where: str) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise InvalidEvent(f"{where} is out of the floating-point range") from None
    if not math.isfinite(number):
        raise InvalidEvent(f"{where} must be finite, got {value!r}")
    return number


def _check_id(obj: dict[str, Any], key: str, limits: EventLimits) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(f"'{key}' must be a string or integer, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise InvalidEvent(f"'{key}' must not be empty")
    if len(text) > limits.max_id_len:
        raise InvalidEvent(
            f"'{key}' is {len(text)} characters long, the limit is {limits.max_id_len}"
        )
    return _check_unicode(text, f"'{key}'")


def _finite_number(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"'{key}' must be a number, got {type(value).__name__}")
    return _to_float(value, f"'{key}'")


def _label(obj: dict[str, Any]) -> int:
    value = obj.get("label")
    if value is None:
        return IMPLICIT
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    raise InvalidEvent(
        f"'label' must be 0 or 1 (or absent for an implicit positive), got {value!r}"
    )


def _check_string(value: str, where: str, limits: EventLimits) -> str:
    if len(value) > limits.max_string_len:
        raise InvalidEvent(
            f"{where} is {len(value)} characters long, the limit is {limits.max_string_len}"
        )
    return _check_unicode(value, where)


def _group_features(
    group: str, prefix: str, raw: Any, limits: EventLimits, out: list[Feature]
) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise InvalidEvent(f"'{group}' must be an object, got {type(raw).__name__}")
    for name, value in raw.items():
        if not isinstance(name, str) or not name or len(name) > limits.max_name_len:
            raise InvalidEvent(f"'{group}' has an invalid feature name {str(name)[:80]!r}")
        _check_unicode(name, f"a feature name in '{group}'")
        namespace = prefix + name
        where = f"{group}.{name}"
        if isinstance(value, bool):
            out.append((namespace, "true" if value else "false", 1.0))
        elif isinstance(value, str):
            out.append((namespace, _check_string(value, where, limits), 1.0))
        elif isinstance(value, int | float):
            out.append((namespace, "", _to_float(value, where)))
        elif isinstance(value, list):
            if len(value) > limits.max_list_len:
                raise InvalidEvent(
                    f"{where} has {len(value)} values, the limit is {limits.max_list_len}"
                )
            for element in value:
                if not isinstance(element, str):
                    raise InvalidEvent(
                        f"{where} must be a list of strings, found {type(element).__name__}"
                    )
                out.append((namespace, _check_string(element, where, limits), 1.0))
        else:
            raise InvalidEvent(
                f"{where} must be a string, number or list of strings, got {type(value).__name__}"
            )
        if len(out) > limits.max_features:
            raise InvalidEvent(f"the event has more than {limits.max_features} features")


def validate_event(obj: Any, limits: EventLimits = EventLimits()) -> Event:
    """Check one decoded JSON/msgpack value against the schema and normalise it."""
    if isinstance(obj, Unparsable):
        raise InvalidEvent(obj.reason)
    if not isinstance(obj, dict):
        raise InvalidEvent(f"an event must be an object, got {type(obj).__name__}")
    unknown = [str(k) for k in obj if k not in KNOWN_KEYS]
    if unknown:
        raise InvalidEvent(f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
    item = _check_id(obj, "item", limits)
    if item is None:
        raise InvalidEvent("'item' is required")
    user = _check_id(obj, "user", limits)
    ts = _finite_number(obj, "ts")
    weight = _finite_number(obj, "weight")
    if weight is not None and weight < 0:
        raise InvalidEvent(f"'weight' must be >= 0, got {weight}")
    label = _label(obj)
    features: list[Feature] = []
    for group, prefix in FEATURE_GROUPS.items():
        _group_features(group, prefix, obj.get(group), limits, features)
    if user is None and (label != IMPLICIT or "context" in obj or "user_features" in obj):
        raise InvalidEvent("'user' is required for an interaction (only item upserts omit it)")
    return Event(
        user=user,
        item=item,
        ts=math.nan if ts is None else ts,
        label=label,
        weight=1.0 if weight is None else weight,
        features=features,
    )
