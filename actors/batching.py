"""Turning validated events into columnar :class:`EventBatch` messages (pure code)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from actors.events import Event
from actors.murmur import encode_strings
from runtime.messages import INTERACTION, ITEM_UPSERT, EventBatch, take_optional


def batch_from_events(
    events: Sequence[Event],
    rank_eval: np.ndarray | None = None,
    seq: int = -1,
    prescore: Sequence[float] | None = None,
) -> EventBatch:
    """One columnar batch; item upserts stay in stream order with ``kind == ITEM_UPSERT``.

    ``prescore``: per event, its probability when first scored (NOT_SCORED: none), or None."""
    n = len(events)
    if prescore is not None and len(prescore) != n:
        raise ValueError(f"{len(prescore)} prescores for {n} events")
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
    upsert = np.fromiter((e.is_upsert for e in events), bool, n)
    seen = np.fromiter((e.seen for e in events), bool, n)
    lifecycle, expires_at = _lifecycle_columns(events)
    return EventBatch(
        seq=seq,
        users=[e.user or "" for e in events],
        items=[e.item for e in events],
        kind=np.where(upsert, ITEM_UPSERT, INTERACTION).astype(np.uint8),
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
        prescore=np.asarray(prescore if prescore is not None else (), np.float64),
        seen=seen if not seen.all() else np.zeros(0, bool),
        lifecycle=lifecycle,
        expires_at=expires_at,
    )


def _lifecycle_columns(events: Sequence[Event]) -> tuple[np.ndarray, np.ndarray]:
    """The LIFECYCLE_* bits and expiry times of item upserts (both empty when none has any)."""
    changes = [(i, e.lifecycle) for i, e in enumerate(events) if e.lifecycle is not None]
    if not changes:
        return np.zeros(0, np.uint8), np.zeros(0, np.float64)
    bits = np.zeros(len(events), np.uint8)
    expires_at = np.full(len(events), np.inf)
    for i, change in changes:
        bits[i] = change.code()
        if change.expires_at is not None:
            expires_at[i] = change.expires_at
    return bits, expires_at


def slice_strings(data: np.ndarray, offsets: np.ndarray, lo: int, hi: int) -> list[str]:
    """Decode entries lo..hi of a (UTF-8 buffer, offsets) string column."""
    return [bytes(data[offsets[i] : offsets[i + 1]]).decode("utf-8") for i in range(lo, hi)]


def csr_gather(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For CSR rows ``rows`` (any order, repeats allowed): the new row pointer and the
    positions of their entries in the old arrays, without a Python loop per row."""
    counts = np.diff(ptr)[rows]
    new_ptr = np.zeros(rows.size + 1, np.int64)
    np.cumsum(counts, out=new_ptr[1:])
    starts = np.asarray(ptr, np.int64)[rows]
    return new_ptr, np.repeat(starts - new_ptr[:-1], counts) + np.arange(int(new_ptr[-1]))


def take_strings(
    data: np.ndarray, offsets: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Entries ``rows`` of a (UTF-8 buffer, offsets) string column, as a new column."""
    new_offsets, gather = csr_gather(offsets, rows)
    if gather.size == 0:
        return np.zeros(0, np.uint8), new_offsets
    return np.asarray(data)[gather], new_offsets


def take_events(batch: EventBatch, rows: np.ndarray) -> EventBatch:
    """The events ``rows`` of a batch (in that order) as a new batch with the same metadata."""
    rows = np.asarray(rows, np.int64)
    ptr, entries = csr_gather(batch.feat_ptr, rows)
    feat_data, feat_off = take_strings(batch.feat_data, batch.feat_off, entries)
    columns = [take_strings(d, o, rows) for d, o in zip(batch.col_data, batch.col_off, strict=True)]
    return EventBatch(
        seq=batch.seq,
        users=[batch.users[i] for i in rows] if batch.users else [],
        items=[batch.items[i] for i in rows] if batch.items else [],
        kind=batch.kind[rows],
        ts=batch.ts[rows],
        label=batch.label[rows],
        weight=batch.weight[rows],
        rank_eval=batch.rank_eval[rows],
        created_at=batch.created_at,
        source_partition=batch.source_partition,
        source_offset=batch.source_offset,
        items_upto=list(batch.items_upto),
        namespaces=list(batch.namespaces),
        feat_ptr=ptr,
        feat_ns=batch.feat_ns[entries],
        feat_data=feat_data,
        feat_off=feat_off,
        feat_x=batch.feat_x[entries],
        col_names=list(batch.col_names),
        col_data=[d for d, _ in columns],
        col_off=[o for _, o in columns],
        prescore=take_optional(batch.prescore, rows),
        seen=take_optional(batch.seen, rows),
        lifecycle=take_optional(batch.lifecycle, rows),
        expires_at=take_optional(batch.expires_at, rows),
    )


def split_at_rankings(batch: EventBatch) -> list[EventBatch]:
    """The batch cut before each event it ranks, the first event aside.

    A batch's rankings score the catalog with the weights as of the batch's start (the
    learning inside a batch is per event, the catalog's scores are not), so an event
    ranked in the middle of a batch would not see the events before it.  Starting a
    batch at every ranked event makes each ranking see every earlier event, whatever
    the batch size; batches without rankings stay whole.
    """
    cuts = np.flatnonzero(batch.rank_eval[1:]) + 1
    if cuts.size == 0:
        return [batch]
    bounds = [0, *cuts.tolist(), len(batch)]
    return [take_events(batch, np.arange(lo, hi, dtype=np.int64)) for lo, hi in pairwise(bounds)]
