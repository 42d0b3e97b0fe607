"""Item lifecycle and forgetting users: what an operator does besides ingest and recommend.

Every front (the embedded System, a cluster ranker) holds one :class:`Lifecycle` as
``front.lifecycle``; ``runtime/http.py`` serves it and embedding code calls it::

    await system.lifecycle.hide_item("i7")        # never recommended nor sampled
    await system.lifecycle.update_item("i7", available=False, expires_at=1.7e9)
    await system.lifecycle.delete_item("i7")      # gone until an upsert brings it back
    await system.lifecycle.forget_user("u42")     # a privacy request

Changing an item is sending an item upsert through the front's own ingest (validated,
journaled and replayed like any event; in cluster mode published on the items topic,
so every replica follows it), answered once it is in effect.  Forgetting a user is
the front's ``forget``: the embedded System's :meth:`Persistence.forget_user`; a
cluster ranker has none and answers 501.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from actors.features import Catalog
from actors.ranker import UnknownItem
from runtime.errors import BadInput, BadRequest
from runtime.front import IngestResult

Ingest = Callable[..., Awaitable[IngestResult]]
Forget = Callable[[str], Awaitable[dict[str, Any]]]


class NotSupportedHere(BadInput, NotImplementedError):
    """An operation this kind of front cannot do (forgetting a user on a cluster ranker)."""

    http_status = 501


FORGET_IN_CLUSTER = (
    "forgetting a user is not supported in cluster mode: the user's state lives in every "
    "trainer and ranker that followed their events, and the events topic cannot forget "
    "them; run the embedded daemon (freshrank run) for privacy deletions"
)


class Lifecycle:
    """Hide, unhide, update and delete items (as item upserts), forget users."""

    def __init__(
        self,
        ingest: Ingest,
        catalog: Catalog,
        clock: Callable[[], float],
        forget: Forget | None = None,
    ) -> None:
        self._ingest = ingest
        self.catalog = catalog
        self.clock = clock
        self._forget = forget
        self.counters = dict.fromkeys(("items_changed", "items_deleted", "users_forgotten"), 0)

    async def hide_item(self, item: str) -> dict[str, Any]:
        """Never recommend the item nor sample it as a negative, until it is unhidden."""
        return await self.update_item(item, hidden=True)

    async def unhide_item(self, item: str) -> dict[str, Any]:
        return await self.update_item(item, hidden=False)

    async def update_item(self, item: str, **changes: Any) -> dict[str, Any]:
        """Change an item's ``hidden``, ``available`` or ``expires_at`` (Unix seconds; None:
        no expiry), keeping its features; its lifecycle afterwards.  UnknownItem for an
        item the catalog does not have (or deleted): add one with an item upsert event."""
        unknown = sorted(set(changes) - {"hidden", "available", "expires_at"})
        if unknown:
            raise BadRequest(f"an item's lifecycle has no {', '.join(unknown)}")
        self._known(item)
        await self._send({"item": item, **changes})
        self.counters["items_changed"] += 1
        row = self._known(item)
        return {"item": item, **self.catalog.lifecycle(row, self.clock())}

    async def delete_item(self, item: str) -> dict[str, Any]:
        """Remove the item from serving and sampling for good: it answers as unknown until
        an item upsert of the same id brings it back (live, with that upsert's features)."""
        self._known(item)
        await self._send({"item": item, "deleted": True})
        self.counters["items_deleted"] += 1
        return {"item": item, "deleted": True}

    async def forget_user(self, user: str) -> dict[str, Any]:
        """Remove everything the model keeps keyed by the user (``actors/forget.py``);
        ``{"user", "forgotten": what was removed}``.  UnknownUser when there is nothing."""
        if self._forget is None:
            raise NotSupportedHere(FORGET_IN_CLUSTER)
        removed = await self._forget(user)
        self.counters["users_forgotten"] += 1
        return {"user": user, "forgotten": removed}

    def statistics(self) -> dict[str, Any]:
        """This process's lifecycle requests and the catalog's lifecycle now."""
        return {**self.counters, "catalog": self.catalog.lifecycle_counts(self.clock())}

    def _known(self, item: str) -> int:
        row = self.catalog.live_row(item)
        if row is None:
            raise UnknownItem(f"unknown item {item[:64]!r}")
        return row

    async def _send(self, upsert: dict[str, Any]) -> None:
        result: IngestResult = await self._ingest([upsert], wait=True, source="lifecycle")
        if result.rejected:
            raise BadRequest(_reasons(result.errors))


def _reasons(errors: Iterable[dict[str, Any]]) -> str:
    return "; ".join(str(e.get("reason", e)) for e in errors)
