"""The body of ``POST /v1/recommend``: who asks (a known user, an anonymous visitor's
session of item ids, or both) and how to rank, checked field by field.

Every mistake is a :class:`BadRequest` (400) that names the field; nothing is ignored
silently (an unknown key is an error, not a default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.filters import ItemFilter
from runtime.bodies import loads
from runtime.config import HTTPConfig
from runtime.errors import BadRequest

FIELDS = (
    "user", "session", "k", "candidates", "exclude", "filter", "context", "explain", "explore",
    "scale", "epsilon", "variant",
)  # fmt: skip
MAX_ID_CHARS = 256


@dataclass
class RecommendRequest:
    user: str = ""  # "" for an anonymous visitor
    session: list[str] = field(default_factory=list)
    k: int = 10
    candidates: list[str] | None = None
    exclude: list[str] = field(default_factory=list)  # item ids never to recommend
    item_filter: ItemFilter | None = None  # by the items' features
    context: dict[str, Any] | None = None
    explain: bool = False
    exploration: dict[str, Any] = field(default_factory=dict)  # explore, scale, epsilon
    variant: str | None = None  # an experiment variant instead of the user's (debugging)


def parse_recommend_request(body: bytes, limits: HTTPConfig) -> RecommendRequest:
    """The request in a JSON body, or BadRequest naming what is wrong."""
    try:
        data = loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the body must be a JSON object (UTF-8)") from None
    except ValueError as error:
        raise BadRequest(f"the body must be a JSON object: {str(error)[:200]}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown[:5]}; the fields are {list(FIELDS)}")
    request = RecommendRequest(
        user=_text(data.get("user", ""), "user", allow_empty=True),
        session=_ids(data.get("session", []), "session", limits.max_candidates),
        k=_integer(data.get("k", 10), "k", limits.max_k),
        explain=_flag(data.get("explain", False), "explain"),
        exclude=_ids(data.get("exclude", []), "exclude", limits.max_candidates),
    )
    if not request.user and not request.session:
        raise BadRequest("give a 'user', a 'session' of item ids, or both")
    if "candidates" in data:
        request.candidates = _ids(data["candidates"], "candidates", limits.max_candidates)
        if not request.candidates:
            raise BadRequest("'candidates' must not be empty")
    if "context" in data:
        request.context = _context(data["context"], limits.max_context_keys)
    if "filter" in data:
        request.item_filter = item_filter(data["filter"])
    request.exploration = _exploration(data)
    if "variant" in data:
        request.variant = _text(data["variant"], "variant")
    return request


def item_filter(value: Any) -> ItemFilter:
    """A request's ``filter`` object (actors/filters.py), or BadRequest with the reason."""
    try:
        return ItemFilter.from_dict(value)
    except ValueError as error:
        raise BadRequest(str(error)) from None


def _text(value: Any, name: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS or not (value or allow_empty):
        raise BadRequest(f"'{name}' must be a string of 1..{MAX_ID_CHARS} characters")
    return value


def _ids(value: Any, name: str, limit: int) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f"'{name}' must be a list of item ids")
    if len(value) > limit:
        raise BadRequest(f"'{name}' has {len(value)} ids, the limit is {limit}")
    return [_text(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _integer(value: Any, name: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise BadRequest(f"'{name}' must be an integer in 1..{high}, got {str(value)[:40]}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false")
    return value


def _context(value: Any, limit: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest("'context' must be a JSON object")
    if len(value) > limit:
        raise BadRequest(f"{len(value)} context features, the limit is {limit}")
    return value


def _exploration(data: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if "explore" in data:
        params["explore"] = _text(data["explore"], "explore")
    for name in ("scale", "epsilon"):
        if name in data:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequest(f"'{name}' must be a number")
            try:
                params[name] = float(value)
            except OverflowError:  # JSON integers have no bound; floats do
                raise BadRequest(f"'{name}' is a number past the float range") from None
    return params
