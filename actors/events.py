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

Feedback types: ``"type": "dislike"`` names one of the configured
:class:`FeedbackType` s (``[feedback.types.<name>]``, defaults
:data:`DEFAULT_FEEDBACK_TYPES`), which supplies the label, weight and whether the
item counts as seen; a ``label`` or ``weight`` the event gives itself wins.  Mapped
here, at parse time, so the learning path only ever sees the label and weight columns.

An item upsert may also change the item's lifecycle: ``hidden`` and ``available``
(booleans), ``expires_at`` (Unix seconds, ``null``: no expiry) or ``"deleted": true``
(:class:`ItemLifecycle`); without ``item_features`` such an upsert keeps the item's
features.

Delayed labels (see ``actors/delayed.py``): ``"event": "impression"`` with an
``impression_id`` (and ``user``, ``item``, features) is learned once its label is
known: 1 when an ``"event": "click"`` (or ``"conversion"``) with the same
``impression_id`` arrives within the window, else 0.  A click needs only the
``impression_id``; a ``user``/``item`` on it must match the impression's.

Validation never raises anything but :class:`InvalidEvent`, whose message is the
reason a client or a dead-letter record gets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import BadInput
from runtime.messages import (
    IMPLICIT,
    LIFECYCLE_AVAILABLE,
    LIFECYCLE_DELETE,
    LIFECYCLE_EXPIRES,
    LIFECYCLE_HIDE,
    LIFECYCLE_KEEP_FEATURES,
    LIFECYCLE_UNAVAILABLE,
    LIFECYCLE_UNHIDE,
    NEGATIVE,
    POSITIVE,
)

FEATURE_GROUPS = {"user_features": "u.", "item_features": "i.", "context": "c."}
IMPRESSION = "impression"
OUTCOMES = frozenset({"click", "conversion"})
EVENT_KINDS = (IMPRESSION, "click", "conversion")
LIFECYCLE_KEYS = ("hidden", "available", "expires_at", "deleted")
KNOWN_KEYS = frozenset(
    {"user", "item", "ts", "label", "weight", "type", "event", "impression_id",
     *FEATURE_GROUPS, *LIFECYCLE_KEYS}
)  # fmt: skip
MAX_EXPIRES_AT = 1e11  # Unix seconds in the year 5138: a larger value is milliseconds


@dataclass(frozen=True)
class FeedbackType:
    """What an event of one ``type`` is learned as: ``label`` 1 a positive (learned like
    an event without a label, with sampled negatives), 0 an explicit negative;
    ``weight`` its sample weight; ``seen``: the item is not recommended to the user again."""

    label: int = 1
    weight: float = 1.0
    seen: bool = True


# A click is what an event without a type is today.  A view is a weaker positive the
# user may still act on, so it stays recommendable; like and purchase are stronger
# positives; skip and dislike are explicit negatives, never recommended again.
DEFAULT_FEEDBACK_TYPES: dict[str, FeedbackType] = {
    "view": FeedbackType(label=1, weight=0.5, seen=False),
    "click": FeedbackType(label=1, weight=1.0, seen=True),
    "like": FeedbackType(label=1, weight=2.0, seen=True),
    "purchase": FeedbackType(label=1, weight=3.0, seen=True),
    "skip": FeedbackType(label=0, weight=0.5, seen=True),
    "dislike": FeedbackType(label=0, weight=2.0, seen=True),
}

Feature = tuple[str, str, float]
"""(namespace, categorical value, numeric value): ``("i.genre", "war", 1.0)``, ``("i.price", "", 12.5)``."""


class InvalidEvent(BadInput, ValueError):
    """An event that cannot be learned; the message says why."""


@dataclass(frozen=True)
class Unparsable:
    """A record that failed to parse (broken JSON line, bad UTF-8): rejected with ``reason``."""

    reason: str
    payload: str


@dataclass(frozen=True)
class TimeBounds:
    """Plausible event times: an implausible ``ts`` (milliseconds sent as seconds, 1e300)
    is refused instead of moving the trends and the delayed-label watermark."""

    min_ts: float = 0.0
    max_ahead_s: float = 86_400.0

    def problem(self, ts: float, now: float) -> str | None:
        """Why ``ts`` is refused at server time ``now``, or None (an absent ts is fine)."""
        if math.isnan(ts):
            return None
        if ts > now + self.max_ahead_s:
            hint = " (milliseconds? ts is in seconds)" if 1e3 * now / 2 < ts < 1e3 * now * 2 else ""
            return (
                f"'ts' {ts:.6g} is {ts - now:.3g} s ahead of the server's clock, more than "
                f"ingest.max_ahead_s = {self.max_ahead_s:g}{hint}"
            )
        if ts < self.min_ts:
            return f"'ts' {ts:.6g} is before ingest.min_ts = {self.min_ts:g}"
        return None


@dataclass(frozen=True)
class EventLimits:
    """Caps on untrusted input, so one hostile event cannot exhaust memory or time."""

    max_id_len: int = 256
    max_string_len: int = 1024
    max_features: int = 1000
    max_list_len: int = 256
    max_name_len: int = 64
    # a bigger numeric feature or weight makes the squared gradients overflow float64
    # (FTRL's n, then NaN predictions); real features are scaled well below this
    max_abs_value: float = 1e9
    max_weight: float = 1e6
    # impressions and clicks need a joiner (System.ingest has one); elsewhere (file replay,
    # cluster ingest) they are rejected rather than learned as plain events
    delayed_labels: bool = False
    feedback_types: Mapping[str, FeedbackType] = field(
        default_factory=lambda: dict(DEFAULT_FEEDBACK_TYPES), hash=False
    )


@dataclass(frozen=True)
class ItemLifecycle:
    """What an item upsert changes of its item's lifecycle: None leaves a state as it is.

    ``expires_at`` is Unix seconds (``math.inf``: no expiry, the JSON ``null``);
    ``deleted`` removes the item from serving and sampling (any later upsert of the id
    brings it back); ``keep_features``: the upsert has no ``item_features``, so the
    item keeps the features it has (a plain upsert replaces them)."""

    hidden: bool | None = None
    available: bool | None = None
    expires_at: float | None = None
    deleted: bool = False
    keep_features: bool = False

    def code(self) -> int:
        """The LIFECYCLE_* bits of :class:`runtime.messages.EventBatch`'s column."""
        bits = LIFECYCLE_DELETE if self.deleted else 0
        if self.hidden is not None:
            bits |= LIFECYCLE_HIDE if self.hidden else LIFECYCLE_UNHIDE
        if self.available is not None:
            bits |= LIFECYCLE_AVAILABLE if self.available else LIFECYCLE_UNAVAILABLE
        if self.expires_at is not None:
            bits |= LIFECYCLE_EXPIRES
        return bits | (LIFECYCLE_KEEP_FEATURES if self.keep_features else 0)


@dataclass
class Event:
    """A validated event.  ``user is None`` marks an item upsert (unless ``event`` is set).

    ``event`` is None for a plain event, else ``"impression"``, ``"click"`` or
    ``"conversion"`` (a click or conversion may have no user and ``item == ""``).
    ``seen``: the item joins the user's seen items (not recommended to them again).
    """

    user: str | None
    item: str
    ts: float = math.nan
    label: int = IMPLICIT
    weight: float = 1.0
    features: list[Feature] = field(default_factory=list)
    event: str | None = None
    impression_id: str | None = None
    seen: bool = True
    lifecycle: ItemLifecycle | None = None  # an item upsert's lifecycle changes

    @property
    def is_upsert(self) -> bool:
        return self.user is None and self.event is None


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


def _feedback_type(obj: dict[str, Any], limits: EventLimits) -> FeedbackType | None:
    value = obj.get("type")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"'type' must be a string, got {type(value).__name__}")
    known = limits.feedback_types
    if value not in known:
        raise InvalidEvent(
            "'type' must name a configured feedback type ([feedback.types.<name>]): "
            f"{value[:80]!r} is not one of {', '.join(sorted(known))}"
        )
    return known[value]


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
            number = _to_float(value, where)
            if abs(number) > limits.max_abs_value:
                raise InvalidEvent(
                    f"{where} is {number:g}, numeric features must be within "
                    f"±{limits.max_abs_value:g} (scale or bucket it)"
                )
            out.append((namespace, "", number))
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


def _event_kind(obj: dict[str, Any]) -> str | None:
    value = obj.get("event")
    if value is None or value in EVENT_KINDS:
        return value
    raise InvalidEvent(f"'event' must be one of {', '.join(EVENT_KINDS)}, got {str(value)[:80]!r}")


def _check_delayed(
    kind: str | None, impression_id: str | None, user: str | None, obj: dict[str, Any]
) -> None:
    """The combinations of fields an impression or a click/conversion may have."""
    if kind is None:
        if impression_id is not None:
            raise InvalidEvent("'impression_id' needs 'event' (impression, click or conversion)")
        return
    if impression_id is None:
        raise InvalidEvent(f"a {kind} event needs 'impression_id'")
    for key in ("label", "type"):
        if obj.get(key) is not None:
            raise InvalidEvent(
                f"'{key}' is not allowed on a {kind} event: "
                "its label comes from joining clicks to impressions"
            )
    if kind == IMPRESSION:
        if user is None:
            raise InvalidEvent("an impression needs 'user'")
        return
    extra = sorted(k for k in ("weight", *FEATURE_GROUPS) if obj.get(k) is not None)
    if extra:
        raise InvalidEvent(
            f"a {kind} carries no {', '.join(extra)}: the learned example is its impression's"
        )


def _flag(obj: dict[str, Any], key: str) -> bool | None:
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidEvent(f"'{key}' must be true or false, got {str(value)[:80]!r}")


def _expires_at(obj: dict[str, Any]) -> float | None:
    """Unix seconds; ``null`` is no expiry (``math.inf``); absent: None."""
    if "expires_at" not in obj:
        return None
    value = obj["expires_at"]
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(
            "'expires_at' must be a number of Unix seconds (or null: no expiry), "
            f"got {type(value).__name__}"
        )
    number = _to_float(value, "'expires_at'")
    if number < 0:
        raise InvalidEvent(f"'expires_at' must be Unix seconds >= 0, got {number:g}")
    if number > MAX_EXPIRES_AT:
        raise InvalidEvent(
            f"'expires_at' {number:.6g} is after the year 5000 (milliseconds? it is in seconds)"
        )
    return number


def _lifecycle(obj: dict[str, Any], upsert: bool) -> ItemLifecycle | None:
    """An item upsert's ``hidden``, ``available``, ``expires_at`` and ``deleted``."""
    # a null is an absent key, except for expires_at, where it clears the expiry
    given = [
        k for k in LIFECYCLE_KEYS if obj.get(k) is not None or (k == "expires_at" and k in obj)
    ]
    if not given:
        return None
    if not upsert:
        raise InvalidEvent(
            f"{', '.join(repr(k) for k in given)} only on an item upsert "
            "(an event with 'item' and without 'user' or 'event')"
        )
    deleted = obj.get("deleted")
    if deleted is not None and deleted is not True:
        raise InvalidEvent(
            f"'deleted' can only be true, got {str(deleted)[:80]!r} "
            "(an upsert without it brings a deleted item back)"
        )
    extra = [k for k in given if k != "deleted"]
    extra += ["item_features"] if obj.get("item_features") is not None else []
    if deleted and extra:
        raise InvalidEvent(f"a deletion ('deleted': true) carries no {', '.join(extra)}")
    return ItemLifecycle(
        hidden=_flag(obj, "hidden"),
        available=_flag(obj, "available"),
        expires_at=_expires_at(obj),
        deleted=bool(deleted),
        keep_features=obj.get("item_features") is None,
    )


def validate_event(obj: Any, limits: EventLimits = EventLimits()) -> Event:
    """Check one decoded JSON/msgpack value against the schema and normalise it."""
    if isinstance(obj, Unparsable):
        raise InvalidEvent(obj.reason)
    if not isinstance(obj, dict):
        raise InvalidEvent(f"an event must be an object, got {type(obj).__name__}")
    unknown = [str(k) for k in obj if k not in KNOWN_KEYS]
    if unknown:
        raise InvalidEvent(f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
    kind = _event_kind(obj)
    impression_id = _check_id(obj, "impression_id", limits)
    if (kind is not None or impression_id is not None) and not limits.delayed_labels:
        raise InvalidEvent(
            "delayed labels ('event', 'impression_id') are not joined on this input path; "
            "send them to the System's ingest (freshrank run, POST /v1/events)"
        )
    item = _check_id(obj, "item", limits)
    if item is None and kind not in OUTCOMES:
        raise InvalidEvent("'item' is required")
    user = _check_id(obj, "user", limits)
    ts = _finite_number(obj, "ts")
    weight = _finite_number(obj, "weight")
    if weight is not None and not 0 <= weight <= limits.max_weight:
        raise InvalidEvent(f"'weight' must be in 0..{limits.max_weight:g}, got {weight:g}")
    label = _label(obj)
    typed = _feedback_type(obj, limits)
    features: list[Feature] = []
    for group, prefix in FEATURE_GROUPS.items():
        _group_features(group, prefix, obj.get(group), limits, features)
    _check_delayed(kind, impression_id, user, obj)
    interaction = (
        label != IMPLICIT or typed is not None or "context" in obj or "user_features" in obj
    )
    if kind is None and user is None and interaction:
        raise InvalidEvent("'user' is required for an interaction (only item upserts omit it)")
    lifecycle = _lifecycle(obj, upsert=kind is None and user is None)
    event = Event(
        user=user,
        item=item or "",
        ts=math.nan if ts is None else ts,
        label=label,
        weight=1.0 if weight is None else weight,
        features=features,
        event=kind,
        impression_id=impression_id,
        lifecycle=lifecycle,
    )
    return event if typed is None else _typed(event, typed, obj)


def _typed(event: Event, typed: FeedbackType, obj: dict[str, Any]) -> Event:
    """The type's label and weight where the event gives none itself, and its ``seen``."""
    if obj.get("label") is None:
        event.label = IMPLICIT if typed.label == POSITIVE else NEGATIVE
    if obj.get("weight") is None:
        event.weight = typed.weight
    event.seen = typed.seen
    return event


GROUP_OF_PREFIX = {prefix: group for group, prefix in FEATURE_GROUPS.items()}


def event_object(event: Event) -> dict[str, Any]:
    """A plain event or item upsert as ``POST /v1/events`` takes it (``validate_event``
    of the result is ``event`` again): several values of one feature become a list."""
    obj: dict[str, Any] = {"item": event.item}
    if event.user is not None:
        obj["user"] = event.user
    if not math.isnan(event.ts):
        obj["ts"] = event.ts
    if event.label != IMPLICIT:
        obj["label"] = event.label
    if event.weight != 1.0:
        obj["weight"] = event.weight
    for namespace, value, number in event.features:
        group, name = GROUP_OF_PREFIX[namespace[:2]], namespace[2:]
        features = obj.setdefault(group, {})
        if not value:
            features[name] = number
        elif name in features:
            known = features[name]
            features[name] = [*known, value] if isinstance(known, list) else [known, value]
        else:
            features[name] = value
    return obj
