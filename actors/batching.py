"""Turning validated events into columnar :class:`EventBatch` messages (pure code)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from actors.events import Event
from actors.hashing import encode_strings
from runtime.messages import EventBatch


def batch_from_events(
    events: Sequence[Event], rank_eval: np.ndarray | None = None, seq: int = -1
) -> EventBatch:
    """One columnar batch; item upserts stay in stream order with ``kind == 1``."""
    n = len(events)
    ns_index: dict[str, int] = {}
    feat_ns: list[int] = []
    feat_val: list[str] = []
    feat_x: list[float] = []
    ptr = np.zeros(n + 1, np.int64)
    for r, event in enumerate(events):
        for namespace, value, x in event.features:
            code = ns_index.get(namespace)
            if code is None:
                code = ns_index[namespace] = len(ns_index)
            feat_ns.append(code)
            feat_val.append(value)
            feat_x.append(x)
        ptr[r + 1] = len(feat_ns)
    data, offsets = encode_strings(feat_val)
    return EventBatch(
        seq=seq,
        users=[e.user or "" for e in events],
        items=[e.item for e in events],
        kind=np.fromiter((e.is_upsert for e in events), np.uint8, n),
        ts=np.fromiter((e.ts for e in events), np.float64, n),
        label=np.fromiter((e.label for e in events), np.int8, n),
        weight=np.fromiter((e.weight for e in events), np.float64, n),
        rank_eval=np.zeros(n, bool) if rank_eval is None else np.asarray(rank_eval, bool),
        namespaces=list(ns_index),
        feat_ptr=ptr,
        feat_ns=np.asarray(feat_ns, np.uint32),
        feat_data=data,
        feat_off=offsets,
        feat_x=np.asarray(feat_x, np.float64),
    )


def slice_strings(data: np.ndarray, offsets: np.ndarray, lo: int, hi: int) -> list[str]:
    """Decode entries lo..hi of a (UTF-8 buffer, offsets) string column."""
    return [bytes(data[offsets[i] : offsets[i + 1]]).decode("utf-8") for i in range(lo, hi)]
