"""The OpenAPI 3 document of the HTTP API, served at ``GET /v1/openapi.json``.

Written by hand (aiohttp has no schema of its own); limits come from the config so
the document states the bounds this server enforces.  tests/test_openapi.py fuzzes a
live server against it with schemathesis: every answer must be documented and match.
"""

from __future__ import annotations

import copy
from typing import Any

from actors.events import MAX_EXPIRES_AT
from actors.exploration import MAX_SCALE
from runtime.config import Config
from runtime.front import ITEMS_OFFSET_MAX, ITEMS_PAGE_DEFAULT, ITEMS_PAGE_MAX

JSON = "application/json"
NDJSON = "application/x-ndjson"
MSGPACK = "application/msgpack"
# also accepted, listed in the text only (each documented type multiplies a fuzzer's cases)
ALIASES = "application/jsonl, application/ndjson, application/x-msgpack, text/plain (JSON)"
OPENAPI_VERSION = "3.0.3"
REF = "#/components/schemas/"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": REF + name}


def _header(description: str, schema: Schema) -> Schema:
    return {"description": description, "schema": schema}


HEADERS: dict[str, Schema] = {
    "X-Request-ID": _header(
        "The request's id: the client's X-Request-ID when sane (1..128 printable ASCII "
        "characters), else a new one; log lines of the request carry it",
        {"type": "string", "minLength": 1, "maxLength": 128},
    ),
    "Retry-After": _header("Seconds to wait before retrying", {"type": "integer", "minimum": 0}),
    "WWW-Authenticate": _header("The authentication scheme: Bearer", {"type": "string"}),
    "Allow": _header("The methods the path accepts", {"type": "string"}),
}


def _response(
    description: str,
    schema: Schema | None = None,
    media_type: str = JSON,
    headers: tuple[str, ...] = (),
) -> Schema:
    names = ("X-Request-ID", *headers)
    response: Schema = {
        "description": description,
        "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in names},
    }
    if schema is not None:
        response["content"] = {media_type: {"schema": schema}}
    return response


def _error(description: str, *headers: str, schema: str = "Error") -> Schema:
    return _response(description, _ref(schema), headers=headers)


UNAUTHORIZED = _error(
    "Missing or wrong bearer token (only when a token is configured)", "WWW-Authenticate"
)
BUSY = _error(
    "Too many requests in progress (http.max_connections), or the pipeline crashed",
    "Retry-After",
)


def _event(description: str, required: list[str], properties: Schema) -> Schema:
    return {
        "type": "object",
        "description": description,
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


IDENTIFIER_STRING: Schema = {"type": "string", "minLength": 1, "maxLength": 256}
IDENTIFIER: Schema = {"oneOf": [IDENTIFIER_STRING, {"type": "integer"}]}
TS: Schema = {"type": "number", "description": "Event time, seconds since the epoch"}
WEIGHT: Schema = {"type": "number", "minimum": 0}
SCALE: Schema = {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": MAX_SCALE}
LABEL: Schema = {"type": "integer", "enum": [0, 1], "description": "Absent: implicit positive"}
COMMON: Schema = {"user": IDENTIFIER, "item": IDENTIFIER, "ts": TS, "weight": WEIGHT}
FEATURES: Schema = {
    name: _ref("Features") for name in ("user_features", "item_features", "context")
}

ERROR_SCHEMA: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "Why the request was refused"},
            "reason": {"type": "string", "description": "A stable name for the cause"},
            "retry_after_s": {"type": "integer", "minimum": 0},
        },
    },
}

EVENT_KIND_SCHEMAS: dict[str, Schema] = {
    "Interaction": _event(
        "A user interacted with an item; no label: an implicit positive. A type gives "
        "the label and weight the event does not give itself, and whether the item is seen",
        ["user", "item"],
        {**COMMON, "label": LABEL, "type": _ref("FeedbackType"), **FEATURES},
    ),
    "ItemUpsert": _event(
        "Adds or updates a catalog item; any upsert brings a deleted item back. Without "
        "item_features an upsert that changes the lifecycle keeps the item's features",
        ["item"],
        {
            "item": IDENTIFIER,
            "ts": TS,
            "weight": WEIGHT,
            "item_features": _ref("Features"),
            "hidden": {"type": "boolean", "description": "Never recommended nor sampled"},
            "available": {"type": "boolean", "description": "false: as hidden (out of stock)"},
            "expires_at": {
                "type": "number",
                "nullable": True,
                "minimum": 0,
                "maximum": MAX_EXPIRES_AT,
                "description": "Unix seconds from which the item is never recommended (wall "
                "clock) nor sampled (event time); null: no expiry",
            },
        },
    ),
    "ItemDeletion": _event(
        "Removes an item from serving and sampling, until an upsert brings it back",
        ["item", "deleted"],
        {"item": IDENTIFIER, "ts": TS, "deleted": {"type": "boolean", "enum": [True]}},
    ),
    "Impression": _event(
        "An item shown to a user; labelled 1 by a click with its impression_id, else 0",
        ["event", "impression_id", "user", "item"],
        {
            **COMMON,
            **FEATURES,
            "event": {"type": "string", "enum": ["impression"]},
            "impression_id": IDENTIFIER_STRING,
        },
    ),
    "Outcome": _event(
        "A click or conversion on an earlier impression (user and item must match it)",
        ["event", "impression_id"],
        {
            "user": IDENTIFIER,
            "item": IDENTIFIER,
            "ts": TS,
            "event": {"type": "string", "enum": ["click", "conversion"]},
            "impression_id": IDENTIFIER_STRING,
        },
    ),
}

FORGOTTEN_COUNTS: dict[str, Schema] = {
    name: {"type": "integer", "minimum": 0}
    for name in ("items_seen", "recent_items", "open_impressions", "resolved_impressions",
                 "pending_evaluations", "parameters_reset")
}  # fmt: skip

ANSWER_SCHEMAS: dict[str, Schema] = {
    "IngestResult": {
        "type": "object",
        "required": ["accepted", "rejected", "errors", "learned"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "errors": {
                "type": "array",
                "description": "One entry per rejected event (also kept as a dead letter)",
                "items": {
                    "type": "object",
                    "required": ["index", "reason"],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "reason": {"type": "string"},
                    },
                },
            },
            "learned": {"type": "boolean", "description": "The accepted events are learned"},
        },
    },
    "Explanation": {
        "type": "object",
        "required": ["feature", "contribution"],
        "properties": {
            "feature": {"type": "string"},
            "contribution": {"type": "number"},
            "part": {"type": "string", "enum": ["linear", "factor", "signal"]},
        },
    },
    "RankedItem": {
        "type": "object",
        "required": ["item", "score"],
        "properties": {
            "item": {"type": "string"},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "explanation": {"type": "array", "items": _ref("Explanation")},
            "team": {
                "type": "string",
                "description": "Interleaving: the variant whose ranking this item came from",
            },
        },
    },
    "Recommendation": {
        "type": "object",
        "required": ["user", "k", "items"],
        "properties": {
            "user": {"type": "string"},
            "k": {"type": "integer", "minimum": 1},
            "items": {"type": "array", "items": _ref("RankedItem")},
            "variant": {
                "type": "string",
                "description": "The experiment variant that ranked the items ('interleaved': "
                "a team draft of the two); present only with an [experiments] section",
            },
        },
    },
    "SessionRecommendation": {
        "type": "object",
        "required": ["user", "k", "items", "ignored_session_items"],
        "properties": {
            "user": {"type": "string", "nullable": True},
            "k": {"type": "integer", "minimum": 1},
            "items": {"type": "array", "items": _ref("RankedItem")},
            "ignored_session_items": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Session item ids the catalog does not have",
            },
            "variant": {
                "type": "string",
                "description": "The experiment variant that ranked the items ('interleaved': "
                "a team draft of the two); present only with an [experiments] section",
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "failed"]},
            "seq": {"type": "integer"},
            "learned_seq": {"type": "integer", "nullable": True},
            "error": {"type": "string"},
        },
    },
    "ItemLifecycle": {
        "type": "object",
        "required": ["hidden", "available", "expires_at", "expired", "deleted"],
        "properties": {
            "item": {"type": "string"},
            "hidden": {"type": "boolean"},
            "available": {"type": "boolean"},
            "expires_at": {"type": "number", "nullable": True},
            "expired": {"type": "boolean", "description": "expires_at has passed (wall clock)"},
            "deleted": {"type": "boolean"},
        },
    },
    "ItemDeleted": {
        "type": "object",
        "required": ["item", "deleted"],
        "properties": {"item": {"type": "string"}, "deleted": {"type": "boolean"}},
    },
    "UserForgotten": {
        "type": "object",
        "required": ["user", "forgotten"],
        "properties": {
            "user": {"type": "string"},
            "forgotten": {
                "type": "object",
                "description": "What was removed: counts of the user's state",
                "properties": {"profile": {"type": "boolean"}, **FORGOTTEN_COUNTS},
            },
        },
    },
    "Statistics": {
        "type": "object",
        "description": "Counters and gauges of every actor (shape may grow); see also /metrics",
    },
}


def _feature_schemas(config: Config) -> dict[str, Schema]:
    """The schemas that state the config's ingest limits."""
    limits = config.ingest
    string = {"type": "string", "maxLength": limits.max_string_len}
    return {
        "FeatureValue": {
            "description": "A categorical string, a finite number, a boolean or a list of strings",
            "anyOf": [
                string,
                {"type": "number"},
                {"type": "boolean"},
                {"type": "array", "items": string, "maxItems": 256},
            ],
        },
        "Features": {
            "type": "object",
            "maxProperties": limits.max_features_per_event,
            "additionalProperties": _ref("FeatureValue"),
        },
        "Event": {
            "description": "An interaction (with user), an item upsert (without user), or an "
            "impression / click / conversion joined by impression_id (delayed labels). At most "
            f"{limits.max_features_per_event} features in all (each list element counts).",
            "oneOf": [
                _ref("Interaction"),
                _ref("ItemUpsert"),
                _ref("ItemDeletion"),
                _ref("Impression"),
                _ref("Outcome"),
            ],
        },
    }


def _feedback_schema(config: Config) -> dict[str, Schema]:
    """The configured feedback types ([feedback.types.<name>]) and what each is learned as."""
    types = config.feedback.types
    learned = "; ".join(
        f"{name}: label {kind.label}, weight {kind.weight:g}, {'seen' if kind.seen else 'not seen'}"
        for name, kind in sorted(types.items())
    )
    return {
        "FeedbackType": {
            "type": "string",
            "enum": sorted(types),
            "description": "A configured feedback type (label 1: a positive with sampled "
            "negatives, 0: an explicit negative; seen: not recommended to the user again). "
            + learned,
        }
    }


FILTER_VALUES: Schema = {
    "description": "A value or a list of values (strings or integers)",
    "anyOf": [
        {"type": "string"},
        {"type": "integer"},
        {
            "type": "array",
            "minItems": 1,
            "maxItems": 256,
            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        },
    ],
}


def _by_feature(values: Schema) -> Schema:
    return {
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": values,
    }


FILTER_SCHEMA: dict[str, Schema] = {
    "ItemFilter": {
        "type": "object",
        "description": "Only items whose own features (item_features) pass: include (for "
        "each feature, one of the values), exclude (none of them), range (a numeric feature "
        "within [lo, hi]; null: open; an item without it is left out), max_per (at most N "
        "items per value of a feature in the answer: diversity), seen_returns_after_s (the "
        "items the user met may return this many seconds after they last met them)",
        "additionalProperties": False,
        "properties": {
            "include": _by_feature(FILTER_VALUES),
            "exclude": _by_feature(FILTER_VALUES),
            "range": _by_feature(
                {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": 2,
                    "items": {"type": "number", "nullable": True},
                }
            ),
            "max_per": _by_feature({"type": "integer", "minimum": 1, "maximum": 1000}),
            "seen_returns_after_s": {"type": "number", "minimum": 0},
        },
    }
}


def _schemas(config: Config) -> dict[str, Schema]:
    # a copy: a caller may edit its document without changing the next one
    return copy.deepcopy(
        {
            **ERROR_SCHEMA,
            **_feature_schemas(config),
            **_feedback_schema(config),
            **FILTER_SCHEMA,
            **EVENT_KIND_SCHEMAS,
            **ANSWER_SCHEMAS,
        }
    )


def _events(config: Config) -> Schema:
    limits = config.ingest
    batch = {
        "oneOf": [
            {
                "type": "array",
                "items": _ref("Event"),
                "minItems": 1,
                "maxItems": limits.max_events_per_request,
            },
            _ref("Event"),
        ]
    }
    text = {"type": "string", "description": "One JSON event per line (blank lines skipped)"}
    binary = {"type": "string", "format": "binary", "description": "A msgpack array of events"}
    content = {JSON: {"schema": batch}, NDJSON: {"schema": text}, MSGPACK: {"schema": binary}}
    return {
        "post": {
            "operationId": "postEvents",
            "summary": "Ingest events (interactions, item upserts, impressions, clicks)",
            "description": "Bad events are rejected one by one with a reason (and kept as dead "
            "letters); the good events of the same request are still learned.",
            "parameters": [
                {
                    "name": "wait",
                    "in": "query",
                    "description": "Answer once the accepted events are learned (default true)",
                    "schema": {"type": "boolean", "default": True},
                }
            ],
            "requestBody": {
                "required": True,
                "description": f"At most {limits.max_body_bytes} bytes and "
                f"{limits.max_events_per_request} events. Also accepted: {ALIASES}.",
                "content": content,
            },
            "responses": {
                "200": _response("At least one event accepted", _ref("IngestResult")),
                "400": _error("Empty body, or a body that does not parse"),
                "401": UNAUTHORIZED,
                "408": _error("Body not received within http.body_timeout_s"),
                "413": _error("Body over ingest.max_body_bytes or too many events"),
                "415": _error("Unsupported content type"),
                "422": _response("No event accepted: every one is invalid", _ref("IngestResult")),
                "429": _error("Ingest overloaded (admission control)", "Retry-After"),
                "503": _error(
                    "Too many requests in progress (http.max_connections), the pipeline "
                    "crashed, or the event journal cannot be written (disk full): nothing "
                    "of the request was accepted",
                    "Retry-After",
                ),
            },
        }
    }


def _bad_query() -> Schema:
    """A 400 with a reason; a request line over 8190 bytes (a huge ``candidates`` or
    ``context``) is refused by aiohttp's parser before the app sees it, in plain text."""
    response = _error(
        "A missing or invalid parameter, only unknown candidates, or (plain text) a "
        "request line over 8190 bytes"
    )
    response["content"]["text/plain"] = {"schema": {"type": "string"}}
    return response


def _recommend_body(config: Config) -> Schema:
    http = config.http
    ids = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 256}}
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "A known 'user', an anonymous visitor's 'session', or both",
        "properties": {
            "user": {"type": "string", "maxLength": 256},
            "session": {
                **ids,
                "maxItems": http.max_candidates,
                "description": "Item ids the visitor just interacted with, oldest first: "
                "ranked with (signals, recent-item features, excluded as seen), not learned",
            },
            "k": {"type": "integer", "minimum": 1, "maximum": http.max_k, "default": 10},
            "candidates": {**ids, "minItems": 1, "maxItems": http.max_candidates},
            "exclude": {
                **ids,
                "maxItems": http.max_candidates,
                "description": "Item ids never to recommend in this answer (unknown ids ignored)",
            },
            "filter": _ref("ItemFilter"),
            "context": {"allOf": [_ref("Features"), {"maxProperties": http.max_context_keys}]},
            "explain": {"type": "boolean", "default": False},
            "explore": {"type": "string", "enum": ["off", "thompson", "epsilon"]},
            "scale": SCALE,
            "epsilon": {"type": "number"},
            "variant": {
                "type": "string",
                "minLength": 1,
                "maxLength": 256,
                "description": VARIANT_OVERRIDE,
            },
        },
    }


def _recommend(config: Config) -> Schema:
    return {
        "post": {
            "operationId": "recommendSession",
            "summary": "Top-k items for a visitor's session (anonymous or a known user)",
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": _recommend_body(config)}},
            },
            "responses": {
                "200": _response("Ranked items, best first", _ref("SessionRecommendation")),
                "400": _error("A missing, unknown or invalid field"),
                "401": UNAUTHORIZED,
                "501": NO_EXPERIMENTS_HERE,
                "503": BUSY,
            },
        },
        "get": {
            "operationId": "recommend",
            "summary": "Top-k items for a user with the model as it is now",
            "parameters": _recommend_parameters(config),
            "responses": {
                "200": _response("Ranked items, best first", _ref("Recommendation")),
                "400": _bad_query(),
                "401": UNAUTHORIZED,
                "413": _error("Too many candidates or context features"),
                "501": NO_EXPERIMENTS_HERE,
                "503": BUSY,
            },
        },
    }


def _recommend_parameters(config: Config) -> list[Schema]:
    http = config.http
    integer_k = {"type": "integer", "minimum": 1, "maximum": http.max_k, "default": 10}
    context = {
        "name": "context",
        "in": "query",
        "description": f"Request context features as a JSON object "
        f"(at most {http.max_context_keys})",
        "content": {
            JSON: {
                "schema": {"allOf": [_ref("Features"), {"maxProperties": http.max_context_keys}]}
            }
        },
    }
    item_filter = {
        "name": "filter",
        "in": "query",
        "description": "Only items whose own features pass, as a JSON object (ItemFilter)",
        "content": {JSON: {"schema": _ref("ItemFilter")}},
    }
    return [
        item_filter,
        _query(
            "user",
            "The user id",
            {"type": "string", "minLength": 1, "maxLength": 256},
            required=True,
        ),
        _query("k", "How many items", integer_k),
        _query(
            "candidates",
            "Comma-separated item ids to rank instead of the catalog "
            f"(at most {http.max_candidates})",
            {"type": "string"},
        ),
        _query(
            "exclude",
            "Comma-separated item ids never to recommend in this answer (unknown ids "
            f"ignored; at most {http.max_candidates})",
            {"type": "string"},
        ),
        context,
        _query(
            "explain",
            "Add the top feature contributions per item",
            {"type": "boolean", "default": False},
        ),
        *_exploration_parameters(),
        _query("variant", VARIANT_OVERRIDE, {"type": "string", "minLength": 1}),
    ]


VARIANT_OVERRIDE = (
    "An [experiments] variant to rank with instead of the user's (for debugging; 400 "
    "when unknown or without experiments)"
)
NO_EXPERIMENTS_HERE = _error("A cluster ranker given 'variant': experiments are not built there")


def _experiments() -> Schema:
    operation = _get(
        "experiments",
        "Per variant: progressive HR@k and NDCG@k, click-through, interleaving wins",
        _response(
            "Each metric as {value, low, high, n}: the 95% interval is Wilson's for rates "
            "(HR, click-through, win rate) and the normal approximation for NDCG; progressive "
            "metrics evaluate each variant's model on every event (every variant learns "
            "from every event), click-through counts the impressions of the variant's users "
            "(interleaving: of the items its team picked)",
            {"type": "object"},
        ),
    )
    operation["get"]["responses"]["404"] = _error("No [experiments] section in the config")
    return operation


def _exploration_parameters() -> list[Schema]:
    return [
        _query(
            "explore",
            "Exploration policy for this request",
            {"type": "string", "enum": ["off", "thompson", "epsilon"]},
        ),
        _query(
            "scale",
            "Thompson sampling: posterior std multiplier (explore=thompson)",
            SCALE,
        ),
        _query(
            "epsilon",
            "Share of slots explored (explore=epsilon)",
            {"type": "number", "minimum": 0, "maximum": 1},
        ),
    ]


def _get(operation_id: str, summary: str, ok: Schema, secured: bool = True) -> Schema:
    responses: dict[str, Schema] = {"200": ok}
    if secured:
        responses["401"] = UNAUTHORIZED
        responses["503"] = BUSY
    operation: Schema = {"operationId": operation_id, "summary": summary, "responses": responses}
    if not secured:
        operation["security"] = []
    return {"get": operation}


def _query(name: str, description: str, schema: Schema, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "required": required,
        "schema": schema,
    }


def _items() -> Schema:
    page = {
        "type": "object",
        "required": ["total", "offset", "next_offset", "items"],
        "properties": {
            "total": {"type": "integer", "description": "Items in the catalog now"},
            "offset": {"type": "integer"},
            "next_offset": {"type": "integer", "nullable": True,
                            "description": "The offset of the next page; null after the last"},
            "items": {"type": "array", "items": _ref("ItemUpsert"),
                      "description": "Each item as the upsert that recreates it, in the "
                      "order the catalog first saw them"},
        },
    }  # fmt: skip
    operation = _get("listItems", "The catalog, a page at a time (freshrank export catalog)",
                     _response("A page of items", page))  # fmt: skip
    offset = {"type": "integer", "minimum": 0, "maximum": ITEMS_OFFSET_MAX, "default": 0}
    limit = {"type": "integer", "minimum": 1, "maximum": ITEMS_PAGE_MAX,
             "default": ITEMS_PAGE_DEFAULT}  # fmt: skip
    operation["get"]["parameters"] = [
        _query("offset", "The first item's position; new items join at the end", offset),
        _query("limit", "How many items at most", limit),
    ]
    operation["get"]["responses"]["400"] = _bad_query()
    return operation


def _similar(config: Config) -> Schema:
    neighbours = {
        "type": "object",
        "required": ["item", "k", "similar"],
        "properties": {
            "item": {"type": "string"},
            "k": {"type": "integer"},
            "similar": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["item", "score"],
                    "properties": {"item": {"type": "string"}, "score": {"type": "number"}},
                },
            },
        },
    }
    operation = _get("similar", "The item's neighbours by co-occurrence, best first",
                     _response("Neighbours with their cosine scores", neighbours))  # fmt: skip
    return _of_one_item(config, operation, "How many neighbours")


def _of_one_item(config: Config, operation: Schema, k_means: str) -> Schema:
    """An operation on ``/v1/items/{item}...`` with ``?k=``: 400 for a bad k, 404 for an
    item not in the catalog."""
    k = {"type": "integer", "minimum": 1, "maximum": config.http.max_k, "default": 10}
    item = {"name": "item", "in": "path", "required": True, "description": "The item id",
            "schema": {"type": "string", "minLength": 1}}  # fmt: skip
    operation["get"]["parameters"] = [item, _query("k", k_means, k)]
    operation["get"]["responses"]["400"] = _bad_query()
    operation["get"]["responses"]["404"] = _error("The item is not in the catalog")
    return operation


def _item(config: Config) -> Schema:
    scored = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["item", "score"],
            "properties": {"item": {"type": "string"}, "score": {"type": "number"}},
        },
    }
    feature = {
        "type": "object",
        "required": ["feature", "value", "weight"],
        "properties": {"feature": {"type": "string"}, "value": {"type": "number"},
                       "weight": {"type": "number"}},
    }  # fmt: skip
    exposure = {
        "type": "object",
        "required": ["shown"],
        "description": "shown: recommendation answers the item was in since start; "
        "interactions: events learned; trend_*: the decayed count relative to the top item's",
        "additionalProperties": {"type": "number"},
    }
    inspected = {
        "type": "object",
        "required": ["item", "k", "features", "neighbours", "successors", "exposure"],
        "properties": {
            "item": {"type": "string"},
            "k": {"type": "integer"},
            "features": {"type": "array", "items": feature,
                         "description": "The item's features, largest |weight × value| first"},
            "neighbours": {**scored, "description": "kNN neighbours by cosine, best first"},
            "successors": {**scored, "description": "Items most often next (share of the "
                           "distance-weighted transitions), best first"},
            "exposure": exposure,
            "lifecycle": _ref("ItemLifecycle"),
        },
    }  # fmt: skip
    operation = _get("inspectItem", "What the model knows of one item",
                     _response("Features, neighbours, successors and exposure", inspected))  # fmt: skip
    operation = _of_one_item(config, operation, "How many neighbours and successors")
    deletion = _change("deleteItem", "Remove the item from serving and sampling (until an "
                       "upsert of the same id brings it back)", "ItemDeleted")  # fmt: skip
    return {**operation, "delete": deletion}


ITEM_PATH = {"name": "item", "in": "path", "required": True, "description": "The item id",
             "schema": {"type": "string", "minLength": 1}}  # fmt: skip


def _change(operation_id: str, summary: str, answer: str, what: str = "item") -> Schema:
    """An operation that changes one item (or forgets one user): 404 when unknown."""
    path = ITEM_PATH if what == "item" else {**ITEM_PATH, "name": "user",
                                             "description": "The user id"}  # fmt: skip
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [path],
        "responses": {
            "200": _response("Done, in effect for the next request", _ref(answer)),
            "400": _error("An unknown query parameter"),
            "401": UNAUTHORIZED,
            "404": _error(f"The {what} is not known (or already deleted)"),
            "503": BUSY,
        },
    }


def _hide(hidden: bool) -> Schema:
    verb = "Hide" if hidden else "Unhide"
    summary = (
        "Never recommend the item nor sample it as a negative, until it is unhidden"
        if hidden
        else "Recommend and sample the hidden item again"
    )
    return {"post": _change(f"{verb.lower()}Item", summary, "ItemLifecycle")}


def _forget() -> Schema:
    operation = _change("forgetUser", "Forget a user (a privacy request): history, seen "
                        "items, profile, impressions, the user id's own weights", "UserForgotten",
                        what="user")  # fmt: skip
    operation["responses"]["501"] = _error("A cluster ranker: users cannot be forgotten there")
    return {"delete": operation}


def _health() -> Schema:
    ok = _response("Running", _ref("Health"))
    health = _get("health", "Liveness: ok, or failed after an actor crash", ok, secured=False)
    health["get"]["responses"]["503"] = _response("An actor crashed", _ref("Health"))
    return health


def _metrics(public: bool) -> Schema:
    text = _response("Metrics", {"type": "string"}, media_type="text/plain")
    metrics = _get("metrics", "Prometheus metrics (text exposition format)", text)
    del metrics["get"]["responses"]["503"]  # exempt from http.max_connections
    if public:
        del metrics["get"]["responses"]["401"]
        metrics["get"]["security"] = []
    return metrics


def _dashboard() -> dict[str, Schema]:
    page = _response("The page", {"type": "string"}, media_type="text/html")
    index = _get(
        "dashboard",
        "The live dashboard (a browser sends the token as the freshrank_token cookie)",
        page,
    )
    static = _get(
        "dashboardFile",
        "The dashboard's static files",
        _response("The file", {"type": "string", "format": "binary"}, "*/*"),
    )
    static["get"]["parameters"] = [
        {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    # aiohttp's file responses find a missing file while sending: a 404 without a body
    static["get"]["responses"]["404"] = _response("No such file (no body)")
    series = _get(
        "dashboardSeries",
        "Time series for the dashboard charts",
        _response(
            "Series newer than since, from the history kept since the process started "
            "(at most 2,000 points: longer spans are averaged in runs, the newest kept)",
            {"type": "object"},
        ),
    )
    series["get"]["parameters"] = [
        _query(
            "since",
            "Unix seconds: only samples newer than this (0: the whole history)",
            {"type": "number"},
        )
    ]
    series["get"]["responses"]["400"] = _error("'since' is not a number")
    top = _get(
        "dashboardTop",
        "The items interacted with most recently",
        _response("Top items", {"type": "object"}),
    )
    top["get"]["parameters"] = [
        _query("k", "How many items", {"type": "integer", "minimum": 1, "maximum": 100})
    ]
    top["get"]["responses"]["400"] = _error("'k' is not an integer in range")
    return {
        "/": index,
        "/static/{file}": static,
        "/v1/dashboard/series": series,
        "/v1/dashboard/top": top,
    }


def _link(operation_id: str, description: str, body: Any = None, **parameters: str) -> Schema:
    """An OpenAPI link: ``parameters`` name the target's parameters and ``body`` its body,
    each value a runtime expression on this request or its response."""
    link: Schema = {"operationId": operation_id, "description": description}
    if parameters:
        link["parameters"] = parameters
    if body is not None:
        link["requestBody"] = body
    return link


def _ingest_links() -> dict[str, Schema]:
    """What a client does next with the ids it just sent: the ingest answer carries none,
    so each link reads the request, as a batch (``#/0/...``) or as a single event."""
    links: dict[str, Schema] = {}
    for form, at in (("Batch", "$request.body#/0/"), ("Event", "$request.body#/")):
        user, item = at + "user", at + "item"
        links[f"RecommendFor{form}User"] = _link("recommend", "Rank for its user", user=user)
        links[f"SessionOf{form}Item"] = _link(
            "recommendSession",
            "Rank for its user with its item as the session",
            body={"user": user, "session": [item]},
        )
        links[f"Inspect{form}Item"] = _link("inspectItem", "Inspect its item", item=item)
        links[f"{form}ItemNeighbours"] = _link("similar", "Its item's neighbours", item=item)
        click = {
            "event": "click",
            "impression_id": at + "impression_id",
            "user": user,
            "item": item,
        }
        links[f"ClickOn{form}Impression"] = _link(
            "postEvents", "A click on its impression", body=[click] if form == "Batch" else click
        )
    return links


def _item_links(pointer: str, what: str) -> dict[str, Schema]:
    """Links from an answer naming an item at ``pointer`` to the operations on that item."""
    item = "$response.body#" + pointer
    return {
        "InspectItem": _link("inspectItem", f"Inspect the {what}", item=item),
        "ItemNeighbours": _link("similar", f"The {what}'s neighbours", item=item),
    }


def _add_links(paths: dict[str, Schema]) -> None:
    """How one answer feeds the next request; schemathesis follows these links in the
    stateful fuzz of tests/test_openapi.py."""
    top = "/items/0/item"
    session_of_top = _link(
        "recommendSession",
        "Rank for the same user with the top item as the session",
        body={"user": "$response.body#/user", "session": ["$response.body#" + top]},
    )
    candidate = _link("recommend", "Rank the item for a user", candidates="$response.body#/item")
    links = {
        ("/v1/events", "post"): _ingest_links(),
        ("/v1/recommend", "get"): {
            **_item_links(top, "top item"),
            "SessionOfTopItem": session_of_top,
        },
        ("/v1/recommend", "post"): _item_links(top, "top item"),
        ("/v1/items/{item}/similar", "get"): _item_links("/similar/0/item", "nearest neighbour"),
        ("/v1/items/{item}", "get"): {
            **_item_links("/successors/0/item", "item most often next"),
            "RankAsCandidate": candidate,
        },
    }
    for (path, method), operation_links in links.items():
        paths[path][method]["responses"]["200"]["links"] = operation_links


def build_openapi(config: Config) -> dict[str, Any]:
    """The document for a server running with ``config``."""
    stats = _get("stats", "Statistics of every actor", _response("Statistics", _ref("Statistics")))
    document = _response("OpenAPI 3 document", {"type": "object"})
    paths = {
        "/v1/events": _events(config),
        "/v1/recommend": _recommend(config),
        "/v1/items": _items(),
        "/v1/items/{item}/similar": _similar(config),
        "/v1/items/{item}": _item(config),
        "/v1/items/{item}/hide": _hide(True),
        "/v1/items/{item}/unhide": _hide(False),
        "/v1/users/{user}": _forget(),
        "/v1/healthz": _health(),
        "/v1/stats": stats,
        "/v1/experiments": _experiments(),
        "/metrics": _metrics(config.http.metrics_public),
        "/v1/openapi.json": _get("openapi", "This document", document),
        **_dashboard(),
    }
    _add_links(paths)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "freshrank",
            "version": "1",
            "description": "Real-time recommender: ingest events, get fresh rankings. Every "
            'error is JSON {"error": reason}; every response carries X-Request-ID.',
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(config),
            "headers": HEADERS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "http.token (or $FRESHRANK_TOKEN); not required when none "
                    "is set (loopback only). GET requests may send it as the freshrank_token "
                    "cookie instead.",
                }
            },
        },
        "security": [{"bearer": []}],
    }
