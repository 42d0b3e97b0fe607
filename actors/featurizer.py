"""The featurizing stage ("hasher" in statistics): events in, hashed user-side features
and catalog rows out.

The pure :class:`Featurizer` does the work (with the hash functions of
``actors/murmur.py``); :class:`HasherActor` only wraps it.
It is the single writer of the catalog and of user profiles.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.batching import csr_gather, slice_strings
from actors.events import Feature
from actors.features import (
    ITEM_NS,
    USER_NS,
    BaseFeatures,
    Catalog,
    FeatureSpace,
    UserState,
    with_history,
)
from actors.murmur import encode_strings, hash_columns, hash_slices_one_seed
from runtime.actor import Actor
from runtime.messages import (
    INTERACTION,
    ITEM_UPSERT,
    LIFECYCLE_DELETE,
    LIFECYCLE_KEEP_FEATURES,
    EventBatch,
    FeatureBatch,
    take_optional,
)
from runtime.transport import Channel

ITEM_PREFIX = "i."
PROFILE_PREFIX = "u."


def _feature_name(namespace: str, value: str, x: float) -> str:
    return f"{namespace}={value}" if value else f"{namespace}={x:g}"


KEEP, SKIP = -2, -1  # an item event that leaves its row as it is; one that writes no row


@dataclass
class ItemWrite:
    """An item's features as an event writes them to the catalog."""

    ns: np.ndarray
    raw: np.ndarray
    x: np.ndarray
    names: list[str]


@dataclass
class PreparedBatch:
    """A batch's feature entries hashed, and each item event's catalog write (an
    :class:`ItemWrite`, KEEP or SKIP), worked out before anything is written:
    ``changes_known_rows`` says whether a write changes a row the catalog has, which
    the trainer may still read for earlier batches."""

    entry_ns: np.ndarray
    raw: np.ndarray
    item_side: np.ndarray
    writes: list[ItemWrite | int] = field(default_factory=list)
    changes_known_rows: bool = False


class Featurizer:
    """Hashes an :class:`EventBatch`, upserts items into the catalog, records user profiles."""

    def __init__(self, space: FeatureSpace, catalog: Catalog, users: UserState) -> None:
        self.space = space
        self.catalog = catalog
        self.users = users
        self.upserts = 0

    def user_row(self, user: str, user_side: Sequence[Feature]) -> BaseFeatures:
        """One user's row as training builds it: user id, user/context features, recent items."""
        space = self.space
        entries = [(USER_NS, user, 1.0), *user_side]
        row = BaseFeatures(
            np.array([0, len(entries)], np.int64),
            np.array([space.ns_hash(ns) for ns, _, _ in entries], np.uint32),
            np.array([space.value_hash(ns, value) for ns, value, _ in entries], np.uint32),
            np.array([x for _, _, x in entries], np.float64),
        )
        return with_history(space, self.catalog, self.users, user, row)[0]

    def _hash_ids(self, ids: list[str], namespace: str) -> np.ndarray:
        data, offsets = encode_strings(ids)
        return hash_slices_one_seed(data, offsets, self.space.ns_hash(namespace))

    def prepare(self, batch: EventBatch) -> PreparedBatch:
        """The batch's entries hashed and its catalog writes worked out, nothing written yet."""
        ns_hash = np.array([self.space.ns_hash(ns) for ns in batch.namespaces], np.uint32)
        entry_ns = ns_hash[batch.feat_ns] if batch.feat_ns.size else np.zeros(0, np.uint32)
        raw = self.space.hash_values(entry_ns, batch.feat_data, batch.feat_off)
        item_side_ns = np.array([ns.startswith(ITEM_PREFIX) for ns in batch.namespaces], bool)
        item_side = item_side_ns[batch.feat_ns] if batch.feat_ns.size else np.zeros(0, bool)
        prepared = PreparedBatch(entry_ns, raw, item_side)
        if batch.items:
            self._plan_catalog(batch, prepared)
        return prepared

    def featurize(self, batch: EventBatch, prepared: PreparedBatch | None = None) -> FeatureBatch:
        """Write the batch's items to the catalog and its users' profiles; its features."""
        p = self.prepare(batch) if prepared is None else prepared
        entry_ns, raw, item_side = p.entry_ns, p.raw, p.item_side
        n = len(batch)
        item_rows = np.full(n, -1, np.int64)
        if batch.items:
            self._update_catalog(batch, p.writes, item_rows)
        dense = self._hash_dense(batch)
        keep = np.flatnonzero(batch.kind == INTERACTION)
        if dense.size and not batch.users and not batch.items and not batch.feat_ns.size:
            user = BaseFeatures(np.zeros(keep.size + 1, np.int64), *_empty_entries())
            dense = dense[keep]
        else:
            user = self._user_side(batch, entry_ns, raw, ~item_side, dense)
            user = take_rows(user, keep)
            dense = np.zeros((0, 0), np.uint32)
            self._update_profiles(batch, entry_ns, raw)
        return FeatureBatch(
            seq=batch.seq,
            users=[batch.users[i] for i in keep] if batch.users else [],
            item_rows=item_rows[keep],
            ts=batch.ts[keep],
            label=batch.label[keep],
            weight=batch.weight[keep],
            rank_eval=batch.rank_eval[keep],
            user_ptr=user.ptr,
            user_ns=user.ns,
            user_raw=user.raw,
            user_x=user.x,
            created_at=batch.created_at,
            source_partition=batch.source_partition,
            source_offset=batch.source_offset,
            dense=dense,
            prescore=take_optional(batch.prescore, keep),
            seen=take_optional(batch.seen, keep),
        )

    def _hash_dense(self, batch: EventBatch) -> np.ndarray:
        seeds = [self.space.ns_hash(name) for name in batch.col_names]
        return hash_columns(list(zip(batch.col_data, batch.col_off, strict=True)), seeds)

    def _plan_catalog(self, batch: EventBatch, prepared: PreparedBatch) -> None:
        """Each item event's write, in stream order (see :class:`PreparedBatch`)."""
        entry_ns, raw, item_side = prepared.entry_ns, prepared.raw, prepared.item_side
        item_raw = self._hash_ids(batch.items, ITEM_NS)
        item_ns = np.uint32(self.space.ns_hash(ITEM_NS))
        ptr = batch.feat_ptr
        lifecycle = batch.lifecycle.tolist() if batch.lifecycle.size else [0] * len(batch)
        created: set[str] = set()  # items new in this batch: later events find them
        written: set[str] = set()  # items this batch writes: later writes are not compared
        # item-side entries per event, counted at once: most events have none
        below = np.concatenate(([0], np.cumsum(item_side, dtype=np.int64)))
        item_entries = (below[ptr[1:]] - below[ptr[:-1]]).tolist()
        upserts = (batch.kind == ITEM_UPSERT).tolist()
        no_entries = np.zeros(0, np.int64)
        for r, item in enumerate(batch.items):
            lo, hi = int(ptr[r]), int(ptr[r + 1])
            sel = np.flatnonzero(item_side[lo:hi]) + lo if item_entries[r] else no_entries
            row = self.catalog.rows.get(item)
            upsert, code = upserts[r], lifecycle[r]
            keep = code & (LIFECYCLE_DELETE | LIFECYCLE_KEEP_FEATURES)
            if (row is not None or item in created) and sel.size == 0 and (not upsert or keep):
                prepared.writes.append(KEEP)  # the features stay as they are
                continue
            if upsert and code & LIFECYCLE_DELETE:
                prepared.writes.append(SKIP)  # an item never seen is not created to be deleted
                continue
            ns = np.concatenate(([item_ns], entry_ns[sel])).astype(np.uint32)
            hashed = np.concatenate(([item_raw[r]], raw[sel])).astype(np.uint32)
            x = np.concatenate(([1.0], batch.feat_x[sel]))
            if (
                row is not None
                and item not in written
                and not self.catalog.differs(row, ns, hashed, x)
            ):
                prepared.writes.append(KEEP)  # the same features again (most events repeat them)
                continue
            names = [f"{ITEM_NS}={item}", *self._names(batch, sel)]
            prepared.writes.append(ItemWrite(ns, hashed, x, names))
            written.add(item)
            if row is None:
                created.add(item)
            else:  # a known row changes (or changed earlier in this batch)
                prepared.changes_known_rows = True

    @staticmethod
    def _names(batch: EventBatch, sel: np.ndarray) -> list[str]:
        values = [
            slice_strings(batch.feat_data, batch.feat_off, int(e), int(e) + 1)[0] for e in sel
        ]
        return [
            _feature_name(batch.namespaces[batch.feat_ns[e]], v, float(batch.feat_x[e]))
            for e, v in zip(sel, values, strict=True)
        ]

    def _update_catalog(
        self, batch: EventBatch, writes: list[ItemWrite | int], item_rows: np.ndarray
    ) -> None:
        lifecycle = batch.lifecycle.tolist() if batch.lifecycle.size else [0] * len(batch)
        for r, (item, write) in enumerate(zip(batch.items, writes, strict=True)):
            if isinstance(write, ItemWrite):
                item_rows[r] = self.catalog.upsert(
                    item, batch.seq, write.ns, write.raw, write.x, write.names
                )
            elif write == KEEP:
                item_rows[r] = self.catalog.rows[item]
            if batch.kind[r] == ITEM_UPSERT:
                self.upserts += 1
                if item_rows[r] >= 0:  # any upsert brings a deleted item back, unless it deletes
                    expires = float(batch.expires_at[r]) if batch.expires_at.size else np.inf
                    self.catalog.change_lifecycle(int(item_rows[r]), lifecycle[r], expires)

    def _user_side(
        self,
        batch: EventBatch,
        entry_ns: np.ndarray,
        raw: np.ndarray,
        user_side: np.ndarray,
        dense: np.ndarray,
    ) -> BaseFeatures:
        """User id + user/context entries (+ dense columns) per event, CSR in event order."""
        n = len(batch)
        entry_rows = np.repeat(np.arange(n), np.diff(batch.feat_ptr))
        parts_rows = [entry_rows[user_side]]
        parts_ns = [entry_ns[user_side]]
        parts_raw = [raw[user_side]]
        parts_x = [batch.feat_x[user_side]]
        if batch.users:
            has_user = np.array([bool(u) for u in batch.users])
            ids = self._hash_ids(batch.users, USER_NS)
            rows = np.flatnonzero(has_user)
            parts_rows.insert(0, rows)
            parts_ns.insert(0, np.full(rows.size, self.space.ns_hash(USER_NS), np.uint32))
            parts_raw.insert(0, ids[rows])
            parts_x.insert(0, np.ones(rows.size))
        if dense.size:
            col_ns = np.array([self.space.ns_hash(c) for c in batch.col_names], np.uint32)
            parts_rows.append(np.repeat(np.arange(n), dense.shape[1]))
            parts_ns.append(np.tile(col_ns, n))
            parts_raw.append(dense.reshape(-1))
            parts_x.append(np.ones(dense.size))
        rows_all = np.concatenate(parts_rows)
        order = np.argsort(rows_all, kind="stable")
        ptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(rows_all, minlength=n), out=ptr[1:])
        return BaseFeatures(
            ptr,
            np.concatenate(parts_ns).astype(np.uint32)[order],
            np.concatenate(parts_raw).astype(np.uint32)[order],
            np.concatenate(parts_x).astype(np.float64)[order],
        )

    def _update_profiles(self, batch: EventBatch, entry_ns: np.ndarray, raw: np.ndarray) -> None:
        """Remember each user's latest ``u.*`` features so recommendations can use them."""
        profile_ns = [ns.startswith(PROFILE_PREFIX) for ns in batch.namespaces]
        if not any(profile_ns) or not batch.users:
            return
        is_profile = np.array(profile_ns, bool)[batch.feat_ns]
        ptr = batch.feat_ptr
        cumulative = np.concatenate(([0], np.cumsum(is_profile)))
        carries = (batch.kind == INTERACTION) & (cumulative[ptr[1:]] > cumulative[ptr[:-1]])
        latest = {batch.users[r]: r for r in np.flatnonzero(carries).tolist()}  # the last wins
        # every chosen row's profile entries gathered at once, in row order
        entry_row = np.repeat(np.arange(len(batch)), np.diff(ptr))
        chosen = np.zeros(len(batch), bool)
        chosen[list(latest.values())] = True
        picked = np.flatnonzero(is_profile & chosen[entry_row])
        first = np.searchsorted(entry_row[picked], np.arange(len(batch) + 1))
        ns_all, raw_all, x_all = entry_ns[picked], raw[picked], batch.feat_x[picked]
        for user, r in latest.items():
            lo, hi = int(first[r]), int(first[r + 1])
            if not user or self._same_profile(user, ns_all[lo:hi], raw_all[lo:hi], x_all[lo:hi]):
                continue
            self.users.profiles[user] = BaseFeatures(
                np.array([0, hi - lo], np.int64),
                ns_all[lo:hi].copy(),
                raw_all[lo:hi].copy(),
                x_all[lo:hi].copy(),
            )
            self.users.profile_names[user] = self._names(batch, picked[lo:hi])

    def _same_profile(self, user: str, ns: np.ndarray, raw: np.ndarray, x: np.ndarray) -> bool:
        """Whether ``user``'s stored profile has exactly these hashed entries: most events
        repeat their user's features, and then the stored profile and its names stay."""
        held = self.users.profiles.get(user)
        return (
            held is not None
            and held.ns.tobytes() == ns.tobytes()
            and held.raw.tobytes() == raw.tobytes()
            and held.x.tobytes() == x.tobytes()
        )


def _empty_entries() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.float64)


def take_rows(base: BaseFeatures, rows: np.ndarray) -> BaseFeatures:
    """The CSR rows ``rows`` (in that order, repeats allowed) as a new BaseFeatures."""
    ptr, entry = csr_gather(base.ptr, rows)
    return BaseFeatures(ptr, base.ns[entry], base.raw[entry], base.x[entry])


class HasherActor(Actor):
    """Reads :class:`EventBatch` messages, sends :class:`FeatureBatch` messages.

    ``learned(seq)`` returns once batch ``seq`` is learned: a batch that changes a
    known item's features or any item's lifecycle waits until every batch before it
    is learned, so the trainer learns each batch with the catalog as of that batch
    (not of one the hasher has run ahead to): how far the hasher runs ahead never
    changes what is learned, and a replay learns exactly what the live run did."""

    def __init__(
        self,
        featurizer: Featurizer,
        inbox: Channel,
        out: Channel,
        learned: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__("hasher", inbox)
        self.featurizer = featurizer
        self.out = out
        self.learned = learned
        self.events = 0

    async def handle(self, message: EventBatch) -> None:
        self.events += len(message)
        prepared = self.featurizer.prepare(message)
        if self.learned is not None and (message.lifecycle.any() or prepared.changes_known_rows):
            await self.learned(message.seq - 1)
        await self.out.send(self.featurizer.featurize(message, prepared))

    def statistics(self) -> dict[str, Any]:
        return {
            **super().statistics(),
            "events": self.events,
            "upserts": self.featurizer.upserts,
            "catalog_items": len(self.featurizer.catalog),
        }
